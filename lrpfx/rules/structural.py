"""Relevance routing through ops without parameters, by their own vector-Jacobian product.

:class:`Replay` re-runs one node's function under :func:`torch.func.vjp` and applies the pullback to the
relevance: exact and conserving for structural ops (view, permute, cat, split, getitem, pad, ...), the gradient
for anything else (``Gradient`` rule, winner-takes-all max pooling). In ``norm`` mode it is the Norm rule
``x · Jᵀ(r / stab(z))`` for linear parameter-free ops (sums, means, average pooling).
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import nn

from . import temporaries
from .stabilize import divide
from ..errors import UnsupportedOpError


class Described(NamedTuple):
    """What a relevance step needs to know about a value whose numbers it never reads: shape, dtype, device.

    Steps of linear ops (views, permutes, slices, products split by counts, ...) take this instead of the value,
    so the program frees the value as soon as the forward is done with it.
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    def dim(self) -> int:
        return len(self.shape)

    def stand_in(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.dtype, device=self.device)


def describe(x: torch.Tensor) -> Described:
    return Described(x.shape, x.dtype, x.device)


class Replay(nn.Module):
    """One node's function, replayed for its VJP.

    ``call(*values)`` rebuilds the node's call from ``values`` — the runtime values of the node's graph
    arguments in order — and the static ``args``/``kwargs`` templates, where :class:`Slot` marks graph values.
    ``active`` lists the positions in ``values`` that carry relevance (activations); only those are
    differentiated. The module holds no parameters of its own (a module target is the user's module, shared).
    """

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, active: Sequence[int], describe: str,
                 norm_eps: Optional[float] = None, linear: bool = False):
        super().__init__()
        self.fn = fn
        self.args_template = args
        self.kwargs_template = kwargs
        self.active = tuple(active)
        self.describe = describe
        self.norm_eps = norm_eps
        # a linear op's VJP does not depend on the point: its active values arrive as Described stand-ins
        self.linear = linear

    def extra_repr(self) -> str:
        mode = "gradient" if self.norm_eps is None else f"norm, eps={self.norm_eps}"
        mode += ", linear" if self.linear else ""
        return f"{self.describe}, {mode}"

    def _call(self, values):
        args = _fill(self.args_template, values)
        kwargs = _fill(self.kwargs_template, values)
        out = self.fn(*args, **kwargs)
        return tuple(out) if isinstance(out, list) else out  # ATen's split returns a list; relevance is a tuple

    def forward(self, r, *values) -> Tuple[torch.Tensor, ...]:
        values = list(values)
        active_values = [values[i].stand_in() if self.linear else values[i] for i in self.active]

        def replay(*acts):
            for i, a in zip(self.active, acts):
                values[i] = a
            return _float_parts(self._call(values))

        if isinstance(r, tuple):  # a tuple result (values, indices): relevance flows through the float parts only
            r = _float_parts(r)
        try:
            z, pullback = torch.func.vjp(replay, *active_values)
            first = r[0] if isinstance(r, tuple) else r
            first_z = z[0] if isinstance(z, tuple) else z
            if first.dim() > first_z.dim():  # several targets at once: pull each back (vmap over the target axis)
                pullback = _quietly(torch.func.vmap(pullback))
            if self.norm_eps is None:
                return tuple(pullback(r))
            grads = pullback(divide(r, z, self.norm_eps))
        except RuntimeError as exc:  # an op without a usable derivative (a fused kernel, an integer op, ...)
            raise UnsupportedOpError(
                f"the relevance step of {self.describe} replays the op to differentiate it, and PyTorch could not: "
                f"{exc}. Assign this node another rule (Pass() for an elementwise op) or rewrite the op") from exc
        return tuple(a * g for a, g in zip(active_values, grads))


def _quietly(fn: Callable) -> Callable:
    """``fn`` without torch's notice that an op (``masked_scatter``'s backward) has no batching rule: vmap then
    loops over the targets, which is correct, and the user has nothing to act on."""
    def call(*args):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            return fn(*args)
    return call


def _float_parts(value):
    """A tuple result without its integer/boolean parts (indices, masks), which carry no relevance."""
    if isinstance(value, tuple):
        return tuple(v for v in value if not isinstance(v, torch.Tensor) or v.is_floating_point() or v.is_complex())
    return value


class Slot:
    """Placeholder in a Replay template for the i-th graph value."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __repr__(self):
        return f"Slot({self.index})"


def _fill(template: Any, values) -> Any:
    if isinstance(template, Slot):
        return values[template.index]
    if isinstance(template, tuple):
        return tuple(_fill(t, values) for t in template)
    if isinstance(template, list):
        return [_fill(t, values) for t in template]
    if isinstance(template, dict):
        return {k: _fill(v, values) for k, v in template.items()}
    if isinstance(template, slice):
        return slice(_fill(template.start, values), _fill(template.stop, values), _fill(template.step, values))
    return template


def reshape_back(x, r, z):
    """Relevance through view/reshape/flatten/unflatten: the same numbers in the input's shape (``x`` and ``z``
    may be :class:`Described`)."""
    return r.reshape(*r.shape[:r.dim() - z.dim()], *x.shape)


def max_pool_with_winners(x, *, pool):
    """The pooling's values and, per output element, the flat spatial index of the input element it took, from
    one pass: the forward keeps the winners, so the relevance step pools nothing again."""
    return pool.pool_with_winners(x)


def max_pool_wta(x, r, winners=None, *, pool):
    """Winner-takes-all through max pooling: each output's relevance goes to the input element that won it
    (summed where one element wins several overlapping windows). Closed form of the pooling's gradient.
    ``winners`` are the indices the forward took (:func:`max_pool_with_winners`; ``x`` may then be
    :class:`Described`); without them they are found again from ``x``."""
    index = (pool.winners(x) if winners is None else winners).flatten(2)  # [B, C, L_out], flat spatial indices
    lead = r.shape[:r.dim() - x.dim()]
    flat_r = r.reshape(*lead, *index.shape)
    out = r.new_zeros((*lead, *x.shape[:2], math.prod(x.shape[2:])))
    out = temporaries.scatter_add(out, -1, index.expand(*lead, *index.shape), flat_r)
    return out.view(*lead, *x.shape)
