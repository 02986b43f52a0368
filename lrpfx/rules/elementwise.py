"""Relevance rules for sums, products and normalisations (docs/rules.md) as pure functions."""
from __future__ import annotations

from typing import Tuple

import torch

from .stabilize import divide, quotient_into


def split_sum(z, r, *terms, signs: Tuple[int, ...], eps: float = 0.0, zero_bias: bool = False,
              z_is_relu: bool = False, per_value: bool = False, r_per_value: bool = False) -> Tuple[torch.Tensor, ...]:
    """Relevance of each summand of ``z = Σ sign_k · t_k (+ constants)``: ``R_k = sign_k · t_k · r / stab(z)``.

    ``signs`` holds -1 for a subtracted term (``a - b``). Constants that are part of ``z`` but not in ``terms``
    act as a bias and keep their share, unless ``zero_bias`` drops them from ``z``. Each result is summed down
    to its term's shape where it was broadcast. ``z_is_relu=True`` (``eps > 0``): the graph proved ``r`` zero
    wherever ``z <= 0`` and passes ``max(z, 0)``; ``stab(z)`` is then ``z + eps`` wherever it matters.

    ``per_value=True`` gives each summand's relevance per value, ``R_k / t_k = ± r / stab(z)`` (the
    modified-gradient form, exact with ``eps = 0``): the terms are then only read for their shapes, and with
    ``r_per_value`` ``r`` is already ``R / z``.
    """
    if r_per_value:
        s = r
    else:
        if zero_bias:
            z = sum(t if sign > 0 else -t for t, sign in zip(terms, signs)).expand(z.shape)
        s = quotient_into(r, z + eps) if z_is_relu else divide(r, z, eps)
    keep = target_axes(r, z)
    shares = (s if per_value else t * s for t in terms)
    return tuple(_sum_to(share if sign > 0 else -share, t.shape, keep) for share, t, sign in zip(shares, terms, signs))


def mul_uniform_per_value(g, a, b) -> Tuple[torch.Tensor, torch.Tensor]:
    """:func:`mul_uniform` of ``a * b`` for a relevance given per output value ``g``: ``R_a = a·b·g / 2``,
    so per value of ``a`` it is ``b·g / 2`` (and ``a·g / 2`` for ``b``), summed back where broadcast."""
    keep = g.dim() - max(a.dim(), b.dim())
    half = g * 0.5
    return _sum_to(half * b, a.shape, keep), _sum_to(half * a, b.shape, keep)


def relu_per_value(y, g):
    """The identity rule through a plain ReLU for relevance per output value ``g``: per input value it is ``g``
    where the ReLU passed its input (``y > 0``) and 0 where it cut it."""
    return torch.where(y > 0, g, torch.zeros((), dtype=g.dtype, device=g.device))


def _sum_to(t: torch.Tensor, shape, keep: int = 0) -> torch.Tensor:
    """Undo broadcasting: sum ``t`` over the axes that were expanded to reach its shape.

    The first ``keep`` axes of ``t`` (the target axis of a multi-target relevance) are kept as they are.
    """
    shape = tuple(t.shape[:keep]) + tuple(shape)
    if tuple(t.shape) == shape:
        return t
    lead = t.dim() - len(shape)
    t = t.sum(dim=tuple(range(keep, keep + lead))) if lead > 0 else t
    axes = tuple(i for i, n in enumerate(shape) if i >= keep and n == 1 and t.shape[i] != 1)
    return t.sum(dim=axes, keepdim=True) if axes else t


def target_axes(r: torch.Tensor, like: torch.Tensor) -> int:
    """1 if ``r`` is a multi-target relevance for a value shaped like ``like`` (extra leading axis), else 0."""
    return r.dim() - like.dim()


def mul_uniform(r, *operands) -> Tuple[torch.Tensor, ...]:
    """Product of ``n`` activations: each gets ``r / n`` (summed back to its shape where it was broadcast)."""
    share = r / len(operands)
    keep = r.dim() - max(t.dim() for t in operands)
    return tuple(_sum_to(share, t.shape, keep) for t in operands)


def pass_to(r, x, z):
    """Identity rule where the op broadcast ``x`` to the output ``z``'s shape: ``r`` summed back to ``x``."""
    return _sum_to(r, x.shape, target_axes(r, z))


def layer_norm(x, w, b, z, r, *, normalized_ndim: int, ln_eps: float, eps: float, zero_bias: bool = False,
               centered: bool = True, groups: int = 0):
    """LayerNorm/RMSNorm as a linear map with the standard deviation held constant.

    ``y = (x - mean(x)) / σ · w + b`` is linear in ``x`` once ``σ`` is a constant; the epsilon rule on that map
    is ``R_in = x · Jᵀ(r / stab(y))`` with ``Jᵀ s = c - mean(c)``, ``c = s·w/σ`` (no centring for RMSNorm).
    GroupNorm (``groups > 0``) is the same map with the mean and ``σ`` taken per group of channels.
    """
    if zero_bias and b is not None:
        z = z - (_per_channel(b, x) if groups else b)
    return x * _norm_transpose(divide(r, z, eps), x, w, normalized_ndim, ln_eps, centered, groups)


def layer_norm_per_value(x, w, z, r, *, normalized_ndim: int, ln_eps: float, centered: bool = True,
                         groups: int = 0):
    """:func:`layer_norm` with ``eps = 0`` in the modified-gradient form: ``Jᵀ(r / y)``, the input's relevance
    divided by the input; ``z=None``: ``r`` is already per output value."""
    return _norm_transpose(r if z is None else divide(r, z, 0.0), x, w, normalized_ndim, ln_eps, centered, groups)


def _per_channel(t, x):
    """A per-channel tensor (GroupNorm's weight or bias) shaped to broadcast along ``x``'s axis 1."""
    return t.reshape(-1, *[1] * (x.dim() - 2))


def _group_norm_transpose(s, x, w, ln_eps, groups):
    """``Jᵀ s`` of GroupNorm with each group's standard deviation held constant; ``s`` may carry leading target
    axes, so the groups are formed from its own leading shape."""
    sigma = torch.sqrt(x.reshape(x.shape[0], groups, -1).var(dim=-1, keepdim=True, unbiased=False) + ln_eps)
    c = s if w is None else s * _per_channel(w, x)
    lead = s.shape[:s.dim() - x.dim() + 1]
    c = c.reshape(*lead, groups, -1) / sigma
    return (c - c.mean(dim=-1, keepdim=True)).reshape(s.shape)


def _norm_transpose(s, x, w, normalized_ndim, ln_eps, centered, groups=0):
    """``Jᵀ s`` of the normalisation with its standard deviation held constant."""
    if groups:
        return _group_norm_transpose(s, x, w, ln_eps, groups)
    dims = tuple(range(-normalized_ndim, 0))  # negative: s may carry a leading target axis
    if centered:
        sigma = torch.sqrt(x.var(dim=dims, keepdim=True, unbiased=False) + ln_eps)
    else:
        sigma = torch.sqrt(x.pow(2).mean(dim=dims, keepdim=True) + ln_eps)
    c = s / sigma if w is None else s * w / sigma
    if centered:
        c = c - c.mean(dim=dims, keepdim=True)
    return c
