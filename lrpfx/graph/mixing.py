"""Readers of linear maps without parameters: each tells a map that *copies* values (every output element is one
input element, or a constant) from one that *mixes* them (an output element is a weighted sum of several).

A copy is kind ``structural`` and routes relevance by its vector-Jacobian product ``Jᵀ R``; a mix is kind
``reduce`` like a sum, and gets the proportional rule ``x ⊙ Jᵀ(R ⊘ stab(z))`` (``Norm`` with the composite's
epsilon), which is LRP's affine rule without a bias. With ``eps = 0`` both equal gradient × input wherever the
relevance arriving is ``z ⊙ g``; ``Jᵀ R`` on a mix would not (it weighs each output's relevance by the
interpolation weights, not by the inputs' contributions).
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.fx as fx
from torch import nn

from ..kinds import Kind, Moves, NodeInfo
from .nodes import op_name
from .readers import Call, matmul as read_matmul

aten = torch.ops.aten

_NEAREST = ("nearest", "nearest-exact")


def _copy(info: NodeInfo) -> bool:
    info.kind, info.facts = Kind.STRUCTURAL, Moves(reshape=False, copies=True, keeps_sign=True)
    return True


def _mix(info: NodeInfo, keeps_sign: bool = True) -> bool:
    """``keeps_sign``: the map's weights are non-negative, so a non-negative input gives a non-negative output
    (a bicubic kernel or an einsum with a constant of any sign does not)."""
    info.kind, info.facts, info.nonneg = Kind.REDUCE, Moves(copies=False, keeps_sign=keeps_sign), False
    return True


def interpolate_call(info: NodeInfo, call: Call) -> bool:
    """``F.interpolate``: nearest copies, linear/bilinear/bicubic/trilinear/area mix neighbours."""
    mode = call.arg(2, "mode", "nearest")
    return _copy(info) if mode in _NEAREST else _mix(info, "cubic" not in mode)


def upsample_module(info: NodeInfo, call: Call) -> bool:
    """``nn.Upsample`` and its bilinear/nearest subclasses, by their mode."""
    mode = call.module.mode
    return _copy(info) if mode in _NEAREST else _mix(info, "cubic" not in mode)


def upsample_aten(info: NodeInfo, call: Call) -> bool:
    """``aten.upsample_<mode>{1,2,3}d``: the mode is in the op's name."""
    name = op_name(call.node)
    return _copy(info) if "nearest" in name else _mix(info, "cubic" not in name)


def copies(info: NodeInfo, call: Call) -> bool:
    """Ops whose outputs are input elements or zeros (``unfold``: im2col, sliding windows)."""
    return _copy(info)


def mixes(info: NodeInfo, call: Call) -> bool:
    """Ops linear in their one activation input that sum several elements into one (``fold``: col2im, ``cumsum``)."""
    return len(call.acts) == 1 and _mix(info)


def einsum_call(info: NodeInfo, call: Call) -> bool:
    """``einsum`` with one activation operand is linear in it; with several it is a product of activations, which
    this row leaves to the others (it stays unknown)."""
    return len(call.acts) == 1 and _mix(info, keeps_sign=False)


def index_put(info: NodeInfo, call: Call) -> bool:
    """``index_put(buf, indices, values)`` writes (copies) the values; with ``accumulate`` it adds them (a sum)."""
    return _mix(info) if call.arg(3, "accumulate", False) else _copy(info)


def product(info: NodeInfo, call: Call) -> bool:
    """``a @ b``: a product of two activations is kind ``matmul`` (the attention rules); with one operand a
    constant it is a linear map of the other, which mixes values (kind ``reduce``)."""
    if not read_matmul(info, call):
        return False
    if sum(info.facts.active) == 1:
        _mix(info, keeps_sign=False)
    return True


def extremum(info: NodeInfo, call: Call) -> bool:
    """``torch.max(a, b)``, ``maximum``, ``minimum``: elementwise, each output is one operand's element, so the
    winner takes the relevance (kind ``max_pool`` without windows: routed by the op's gradient at the recorded
    values). A constant operand may bring a value of either sign."""
    operands = list(call.node.args[:2])
    if len(operands) != 2 or not any(isinstance(o, fx.Node) and o in call.active for o in operands) \
            or isinstance(operands[1], (int, bool)) or not isinstance(operands[1], fx.Node):
        return False
    active = [not call.is_constant(o) for o in operands]
    info.kind, info.facts = Kind.MAX_POOL, Moves(reshape=False, copies=True, keeps_sign=all(active))
    return True


def quotient(info: NodeInfo, call: Call) -> bool:
    """``a / c`` with a constant ``c`` scales ``a``; ``a / b`` of two activations (linear attention's normaliser)
    holds the denominator constant, so it scales the numerator too, which takes all the relevance."""
    operands = list(call.node.args[:2])
    if len(operands) != 2 or call.is_constant(operands[0]) or call.node.kwargs.get("rounding_mode") is not None:
        return False
    info.x = operands[0]
    return True


class RealSpectrum:
    """``fn_k(... fn_1(x) ...).real`` for the recorded transforms ``(fn, args after the first, kwargs)``.
    Compares and hashes like the class, so one registry row matches every instance."""

    __name__ = "real_of_fft"
    __qualname__ = "real_of_fft"

    def __init__(self, steps: Tuple):
        self.steps = steps

    def __call__(self, x):
        for fn, rest, kwargs in self.steps:
            x = fn(x, *rest, **kwargs)
        return x.real

    def __eq__(self, other):
        return other is RealSpectrum or (isinstance(other, RealSpectrum) and other.steps == self.steps)

    def __hash__(self):
        return hash(RealSpectrum)

    def __repr__(self):
        return "real_of_fft(" + ", ".join(getattr(fn, "__name__", str(fn)) for fn, _, _ in self.steps) + ")"


UPSAMPLE_MODULES = (nn.Upsample,)  # UpsamplingNearest2d, UpsamplingBilinear2d are subclasses
UPSAMPLE_ATEN = tuple(getattr(aten, name).vec for name in (
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "upsample_linear1d", "upsample_bilinear2d",
    "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_bilinear2d_aa", "_upsample_bicubic2d_aa")) + tuple(
    getattr(aten, name).default for name in (
        "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_linear1d", "upsample_bilinear2d",
        "upsample_trilinear3d", "upsample_bicubic2d"))

