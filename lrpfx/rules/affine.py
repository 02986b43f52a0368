"""Affine relevance rules as pure functions (docs/rules.md).

Every function takes the layer input ``x``, the weight ``w`` and bias ``b`` the layer used (after BatchNorm
folding), the forward output ``z`` (bias included) and the incoming relevance ``r`` (shaped like ``z``), and
returns the relevance of ``x``. ``layer`` is a spec from :mod:`lrpfx.rules.layers`. Nothing is mutated and no
autograd graph is needed. ``x_nonneg=True`` is a promise from the graph analysis that ``x >= 0``
everywhere (a ReLU output, say); the rules then skip the products with ``x⁻`` that are known to be zero.
"""
from __future__ import annotations

from typing import Optional

import torch

from . import temporaries
from .stabilize import divide, divide_nonneg, quotient_into


def _pos(t):
    return t.clamp(min=0)


def _neg(t):
    return t.clamp(max=0)


def _unbiased(layer, z, b):
    """The layer output without its bias, ``x·W``, taken from the forward's ``z`` (no extra product)."""
    return z if b is None else z - layer.bias_view(b)


def _add_bias(layer, t, b):
    return t if b is None else t + layer.bias_view(b)


def epsilon(x, w, b, z, r, *, layer, eps: float, zero_bias: bool = False, positive_only: bool = False,
            z_is_relu: bool = False, out_scale: Optional[torch.Tensor] = None):
    """LRP-epsilon: ``x * Wᵀ (r / stab(z))``; with ``zero_bias`` the bias is left out of ``z``.

    ``positive_only=True`` is the graph's proof that ``r`` is zero wherever ``z <= 0``; there the quotient is 0
    whatever the (positive) denominator, so ``stab(z)`` may be taken as ``max(z, 0) + eps``: one pass less.
    ``z_is_relu=True``: the ``z`` passed is already ``max(z, 0)`` (the ReLU's output), so no pass at all.
    ``out_scale``: a per-output-channel factor of the weight not folded into ``w`` (a BatchNorm's scale; ``b`` is
    then the folded bias): ``(W·s)ᵀq = Wᵀ(s·q)``.
    """
    if zero_bias:
        z = _unbiased(layer, z, b)
    if positive_only and eps > 0 and not zero_bias:
        s = quotient_into(r, z + eps if z_is_relu else temporaries.add(z.clamp(min=0), eps))
    else:
        s = divide(r, z, eps)
    if out_scale is not None:
        s = temporaries.mul(s, layer.bias_view(out_scale))  # s is a fresh quotient: ours to overwrite
    return temporaries.mul(layer.transpose(s, w, x.shape), x)  # in place on the fresh transpose


def epsilon_per_value(w, b, z, r, x, *, layer, out_scale: Optional[torch.Tensor] = None):
    """LRP-0 in the modified-gradient form: ``Wᵀ(r / z)``, the input's relevance divided by the input (so
    ``epsilon(x, w, b, z, r, eps=0) = x * epsilon_per_value(...)``). ``z=None``: ``r`` is already relevance per
    output value, and the step is the plain transposed map, as the gradient's. ``b`` is given only to be left out
    of ``z`` (zero_bias). ``x`` is the input's :class:`~lrpfx.rules.structural.Described` (only its shape is read).

    Where ``z == 0`` exactly, the form passes ``r`` on as the gradient does, where :func:`epsilon` gives 0.
    """
    s = r if z is None else divide(r, z if b is None else _unbiased(layer, z, b), 0.0)
    if out_scale is not None:
        s = s * layer.bias_view(out_scale)
    return layer.transpose(s, w, x.shape)


def _split_terms(layer, x, w_for_pos_x, w_for_neg_x, bias, r, eps, x_nonneg, positive_part):
    """One sign part of z+/alpha-beta: ``z = x⁺·Wa + x⁻·Wb + bias``, relevance back along the same terms.

    ``positive_part``: ``Wa = W⁺`` and the bias is ``b⁺``, so with ``x >= 0`` every term and ``z`` are ``>= 0``.
    """
    if x_nonneg:
        z = layer.forward(x, w_for_pos_x, bias)
        divider = divide_nonneg if positive_part else divide
        return temporaries.mul(layer.transpose(divider(r, z, eps), w_for_pos_x, x.shape), x)
    xp, xn = _pos(x), _neg(x)
    z = _add_bias(layer, layer.forward(xp, w_for_pos_x) + layer.forward(xn, w_for_neg_x), bias)
    s = divide(r, z, eps)
    return xp * layer.transpose(s, w_for_pos_x, x.shape) + xn * layer.transpose(s, w_for_neg_x, x.shape)


def zplus(x, w, b, z, r, *, layer, eps: float, zero_bias: bool = False, x_nonneg: bool = False):
    """LRP-z+: ``z⁺ = x⁺W⁺ + x⁻W⁻ + b⁺``, relevance along the positive contributions only."""
    bias = None if (b is None or zero_bias) else _pos(b)
    return _split_terms(layer, x, _pos(w), _neg(w), bias, r, eps, x_nonneg, positive_part=True)


def alpha_beta(x, w, b, z, r, *, layer, alpha: float, beta: float, eps: float, zero_bias: bool = False,
               x_nonneg: bool = False):
    """LRP-alpha-beta with the bias split by sign and counted once on each side (docs/rules.md)."""
    wp, wn = _pos(w), _neg(w)
    keep_bias = b is not None and not zero_bias
    r_pos = _split_terms(layer, x, wp, wn, _pos(b) if keep_bias else None, r, eps, x_nonneg, positive_part=True)
    if beta == 0:
        return alpha * r_pos if alpha != 1 else r_pos
    r_neg = _split_terms(layer, x, wn, wp, _neg(b) if keep_bias else None, r, eps, x_nonneg, positive_part=False)
    return alpha * r_pos - beta * r_neg


def gamma(x, w, b, z, r, *, layer, gamma: float, eps: float, zero_bias: bool = False, x_nonneg: bool = False,
          positive_only: bool = False, z_is_relu: bool = False):
    """Generalized LRP-gamma (docs/rules.md), sign-aware; positions with ``z == 0`` pass no relevance.

    With ``x >= 0`` the products collapse. Let ``zz = xW + b`` (``xW`` with ``zero_bias``) be the forward's output
    and ``t = xW⁺ + b⁺`` (``xW⁺`` with ``zero_bias``); then the denominators are ``zz + γ·t`` where ``z > 0`` and
    ``zz + γ·(zz - t)`` where ``z < 0``: one extra forward product and two transposed products.
    ``positive_only=True`` is the graph's proof that ``r`` is zero wherever ``z <= 0`` (a ReLU follows); the
    negative branch is then exactly zero and skipped. ``z_is_relu=True`` (only with ``positive_only`` and a kept
    bias): the ``z`` passed is ``max(z, 0)``, equal to ``z`` wherever the result is not masked to 0.
    """
    w_pos = _pos(w)
    w_up = w + gamma * w_pos
    w_down = w + gamma * (w - w_pos)  # w + γ·w⁻
    positive = z > 0
    if x_nonneg:
        keep_bias = b is not None and not zero_bias
        zz = z if (b is None or keep_bias) else _unbiased(layer, z, b)
        t = layer.forward(x, w_pos, _pos(b) if keep_bias else None)
        if positive_only:
            # where z > 0 the denominator zz + γt is positive (t >= 0): a plain "+ eps" is the stabiliser
            divider = divide if zero_bias else divide_nonneg  # without the bias, xW can be < 0 where z > 0
            s_up = torch.where(positive, divider(r, temporaries.add(temporaries.mul(t, gamma), zz), eps), 0.0)  # t is ours
            return temporaries.mul(layer.transpose(s_up, w_up, x.shape), x)
        z_gamma = torch.add(zz, torch.where(positive, t, zz - t), alpha=gamma)
        s = divide(r, z_gamma, eps)
        s_up, s_down = torch.where(positive, s, 0.0), torch.where(z < 0, s, 0.0)
        return x * (layer.transpose(s_up, w_up, x.shape) + layer.transpose(s_down, w_down, x.shape))
    if b is None or zero_bias:
        b_up = b_down = None
    else:
        b_up, b_down = b + gamma * _pos(b), b + gamma * _neg(b)
    xp, xn = _pos(x), _neg(x)
    z_up = _add_bias(layer, layer.forward(xp, w_up) + layer.forward(xn, w_down), b_up)
    s_up = torch.where(positive, divide(r, z_up, eps), 0.0)
    if positive_only:
        return xp * layer.transpose(s_up, w_up, x.shape) + xn * layer.transpose(s_up, w_down, x.shape)
    z_down = _add_bias(layer, layer.forward(xp, w_down) + layer.forward(xn, w_up), b_down)
    s_down = torch.where(z < 0, divide(r, z_down, eps), 0.0)
    to_pos_x = layer.transpose(s_up, w_up, x.shape) + layer.transpose(s_down, w_down, x.shape)
    to_neg_x = layer.transpose(s_up, w_down, x.shape) + layer.transpose(s_down, w_up, x.shape)
    return xp * to_pos_x + xn * to_neg_x


def zbox(x, w, b, z, r, low, high, *, layer, eps: float):
    """LRP-z^B: ``z = xW - lW⁺ - hW⁻`` (the bias cancels), for inputs bounded by ``low <= x <= high``."""
    low = torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(x)
    high = torch.as_tensor(high, dtype=x.dtype, device=x.device).expand_as(x)
    wp, wn = _pos(w), _neg(w)
    zb = _unbiased(layer, z, b) - layer.forward(low, wp) - layer.forward(high, wn)
    s = divide(r, zb, eps)
    return (x * layer.transpose(s, w, x.shape) - low * layer.transpose(s, wp, x.shape)
            - high * layer.transpose(s, wn, x.shape))


def flat(x, w, b, z, r, *, layer, eps: float):
    """LRP-flat: inputs and weights replaced by ones, no bias; relevance spread over the receptive field."""
    ones_w = torch.ones_like(w)
    zf = layer.forward(torch.ones_like(x), ones_w)
    return layer.transpose(divide(r, zf, eps), ones_w, x.shape)


def wsquare(x, w, b, z, r, *, layer, eps: float, zero_bias: bool = False):
    """LRP-w²: input replaced by ones, weight and bias squared."""
    w2 = w * w
    bias = None if (b is None or zero_bias) else b * b
    zw = _add_bias(layer, layer.forward(torch.ones_like(x), w2), bias)
    return layer.transpose(divide(r, zw, eps), w2, x.shape)


def norm(x, r, *, layer, eps: float):
    """The Norm rule on a parameter-free linear map (average pooling): ``x · Jᵀ(r / stab(f(x)))``, with the
    denominator recomputed — used where the node's own output is another map's (max pooling as average)."""
    return epsilon(x, None, None, layer.forward(x), r, layer=layer, eps=eps)


def pattern(x, w, a, r, *, layer, attribution: bool):
    """PatternNet (``attribution=False``: the pattern ``A`` replaces ``W`` in the transposed layer) or
    PatternAttribution (``W * A`` replaces ``W``); the bias is ignored and nothing is multiplied by ``x``."""
    return layer.transpose(r, w * a if attribution else a, x.shape)


def gradient(x, w, b, z, r, *, layer):
    """The plain gradient through the affine node: ``Wᵀ r``."""
    return layer.transpose(r, w, x.shape)


def fold_batchnorm(w, b: Optional[torch.Tensor], mean, var, bn_weight, bn_bias, *, eps: float,
                   channel_axis: int = 0):
    """Weight and bias of ``BatchNorm(affine(x))`` as one affine map, computed fresh on every call.

    ``W' = W·s`` and ``b' = (b - μ)·s + β`` with ``s = γ / sqrt(var + eps)``; ``channel_axis`` is the weight
    axis of the output channels (0 for Linear/Conv, 1 for ConvTranspose).
    """
    scale = torch.rsqrt(var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    shape = [1] * w.dim()
    shape[channel_axis] = -1
    if w.dim() > 1 and channel_axis == 1 and w.shape[1] != scale.shape[0]:
        # grouped transposed convolution: output channels are (groups, out_per_group)
        groups = scale.shape[0] // w.shape[1]
        w_grouped = w.view(groups, w.shape[0] // groups, *w.shape[1:])
        w_folded = (w_grouped * scale.view(groups, 1, -1, *([1] * (w.dim() - 2)))).view_as(w)
    else:
        w_folded = w * scale.view(shape)
    b_folded = -mean * scale if b is None else (b - mean) * scale
    if bn_bias is not None:
        b_folded = b_folded + bn_bias
    return w_folded, b_folded


def batchnorm_output_scale(b: Optional[torch.Tensor], mean, var, bn_weight, bn_bias, *, eps: float):
    """``(s, b')`` of ``BatchNorm(affine(x))`` without touching the weight: the per-channel scale
    ``s = γ / sqrt(var + eps)`` and the folded bias ``b' = (b - μ)·s + β`` (:func:`fold_batchnorm`)."""
    scale = torch.rsqrt(var + eps)
    if bn_weight is not None:
        scale = scale * bn_weight
    b_folded = -mean * scale if b is None else (b - mean) * scale
    if bn_bias is not None:
        b_folded = b_folded + bn_bias
    return scale, b_folded


def batchnorm_scale_shift(mean, var, bn_weight, bn_bias, *, eps: float):
    """An (unfolded) BatchNorm in eval mode as ``x * scale + shift`` per channel."""
    return fold_batchnorm(torch.ones_like(mean), None, mean, var, bn_weight, bn_bias, eps=eps)
