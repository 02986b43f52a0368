"""Custom ``torch.autograd.Function``s as one node each, named by their class.

Tracing a ``Function`` through its ``forward`` would give its pieces rules and drop its ``backward`` (a
straight-through estimator, a custom kernel's gradient) without a word. While the fx front-end traces, each
``Fn.apply(...)`` on traced values is recorded as one call of :class:`FunctionCall`; classification finds no row
for it (unless the user registered the class with :func:`lrpfx.register_op`), so it is refused with the fix, or
explained by its own backward under ``Gradient()`` (:func:`backward_vjp`). The export front-end cannot keep it
whole: it traces through the forward, as before, and warns, naming the class and the fx front-end's fix.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import List, Tuple

import torch
import torch.fx as fx

from ..errors import LrpfxWarning

_Function = torch.autograd.Function


class FunctionCall:
    """A call of ``cls.apply``: the target of a graph node. Compares and hashes like ``cls``, so a row that
    :func:`lrpfx.register_op` registered for the class matches the node."""

    def __init__(self, cls: type):
        self.cls = cls
        self.__name__ = f"{cls.__name__}.apply"
        self.__qualname__ = self.__name__
        self.__module__ = cls.__module__

    def __call__(self, *args, **kwargs):
        return self.cls.apply(*args, **kwargs)

    def __eq__(self, other):
        return other is self.cls or (isinstance(other, FunctionCall) and other.cls is self.cls)

    def __hash__(self):
        return hash(self.cls)

    def __repr__(self):
        return f"{self.cls.__qualname__} (a custom torch.autograd.Function)"


def is_function_call(n: fx.Node) -> bool:
    return n.op == "call_function" and isinstance(n.target, FunctionCall)


@contextlib.contextmanager
def _apply_replaced(make_apply):
    """``torch.autograd.Function.apply`` replaced by ``make_apply(original)`` while the block runs."""
    original = _Function.__dict__["apply"]
    _Function.apply = classmethod(make_apply(original.__get__))
    try:
        yield
    finally:
        _Function.apply = original


def functions_as_nodes(tracer: fx.Tracer):
    """While tracing with ``tracer``: ``Fn.apply`` on proxies records one :class:`FunctionCall` node."""
    def make_apply(bind):
        def apply(cls, *args, **kwargs):
            values = list(args) + list(kwargs.values())
            if not _is_torchs(cls) and any(isinstance(v, fx.Proxy) for v in values):
                return tracer.create_proxy("call_function", FunctionCall(cls), args, kwargs)
            return bind(None, cls)(*args, **kwargs)
        return apply

    return _apply_replaced(make_apply)


def functions_named_on_export():
    """While exporting: a custom Function is traced through its forward (export inlines it), with a warning that
    names its class, once per class: its backward is not used, and the fx front-end keeps it as one node."""
    named = set()

    def make_apply(bind):
        def apply(cls, *args, **kwargs):
            # hqq's matmul Functions: the export front-end replaces their HQQLinear with the linear of its weight
            if not _is_torchs(cls) and not cls.__module__.startswith("hqq.") and cls not in named \
                    and (torch.compiler.is_exporting() or _fake(args)):
                named.add(cls)
                warnings.warn(
                    f"the model calls {cls.__qualname__}.apply, a custom torch.autograd.Function: the export "
                    "front-end traces through its forward (its ops get their rules) and does not use its backward. "
                    f"With frontend='fx' it is one node named '{_node_name(cls)}': assign it Gradient() (relevance by "
                    f"its own backward) with Composite(by_name={{'{_node_name(cls)}': Gradient()}}), or teach lrpfx "
                    f"the op with lrpfx.register_op({cls.__name__}, kind=...)", LrpfxWarning, stacklevel=2)
            return bind(None, cls)(*args, **kwargs)
        return apply

    return _apply_replaced(make_apply)


def _is_torchs(cls: type) -> bool:
    """torch's own Functions (checkpointing, ...) are traced as before."""
    return cls.__module__.split(".")[0] == "torch"


def _fake(args) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return any(isinstance(a, FakeTensor) for a in args)


def _node_name(cls: type) -> str:
    """The name fx gives the node of a FunctionCall (its ``__name__``, snake-cased)."""
    return fx.graph._snake_case(f"{cls.__name__}.apply".replace(".", "_"))


def backward_vjp(call: FunctionCall, r: torch.Tensor, *values, active: Tuple[int, ...] = ()) -> Tuple:
    """``Gradient()`` on a custom Function: its own backward applied to ``r`` (the vector-Jacobian product the
    user's ``backward`` defines), for each active argument. Several targets at once (``r`` with a leading target
    axis) are pulled back one by one."""
    values = list(values)
    with torch.enable_grad():
        leaves = [values[i].detach().requires_grad_(True) for i in active]
        for i, leaf in zip(active, leaves):
            values[i] = leaf
        out = call(*values)
        first = out[0] if isinstance(out, tuple) else out
        if r.dim() > first.dim():
            pulled = [_pull(first, leaves, r_k) for r_k in r.unbind(0)]
            return tuple(torch.stack(parts) for parts in zip(*pulled))
        return tuple(_pull(first, leaves, r))


def _pull(out: torch.Tensor, leaves: List[torch.Tensor], r: torch.Tensor) -> List[torch.Tensor]:
    grads = torch.autograd.grad(out, leaves, r, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(leaf) if g is None else g.detach() for leaf, g in zip(leaves, grads)]
