"""Independent float64 matrix-form reference for the affine LRP rules (docs/rules.md, "Rules for affine nodes").

Nothing here imports lrpfx. A layer ``f(x) = x·W + b`` (Linear, Conv*, ConvTranspose*) is turned into a dense
matrix ``M`` of shape ``[n_in, n_out]`` per sample (``z_j = Σ_i x_i M_ij + b_j``) by pushing the identity basis
through the bias-free layer. ``W⁺``/``W⁻`` are the matrices of the *same layer with clamped weights*
(``W.clamp(min=0)`` / ``W.clamp(max=0)``), never clamped matrix entries, so the reference also holds for padding
modes where one input position meets several kernel taps. Every rule is then plain matrix algebra on flattened
samples: ``X [B, n_in]``, ``R [B, n_out]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

DTYPE = torch.float64


# ---- the layer as matrices ------------------------------------------------------------------------------------
def _call(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    params = {"weight": weight}
    if layer.bias is not None:
        params["bias"] = torch.zeros_like(layer.bias) if bias is None else bias
    return functional_call(layer, params, (x,))


def layer_matrix(layer: nn.Module, in_shape, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``M [n_in, n_out]`` of the bias-free layer with ``weight`` (default: its own), by the identity basis."""
    weight = layer.weight.detach() if weight is None else weight
    n_in = math.prod(in_shape)
    basis = torch.eye(n_in, dtype=DTYPE).reshape(n_in, *in_shape)
    with torch.no_grad():
        return _call(layer, basis, weight, None).reshape(n_in, -1)


def layer_matrix_jacobian(layer: nn.Module, in_shape, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same matrix by ``torch.autograd.functional.jacobian`` (a cross-check of :func:`layer_matrix`)."""
    weight = layer.weight.detach() if weight is None else weight
    n_in = math.prod(in_shape)

    def f(v):
        return _call(layer, v.reshape(1, *in_shape), weight, None).reshape(-1)

    return torch.autograd.functional.jacobian(f, torch.zeros(n_in, dtype=DTYPE), vectorize=True).T


def bias_vector(layer: nn.Module, in_shape, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The per-output bias ``b_j`` (``[n_out]``) of the layer when its bias parameter is ``bias``."""
    zero_in = torch.zeros(1, *in_shape, dtype=DTYPE)
    with torch.no_grad():
        out = _call(layer, zero_in, layer.weight.detach(), bias)
    if bias is None:
        return torch.zeros(out.numel(), dtype=DTYPE)
    return out.reshape(-1)


@dataclass
class Matrices:
    """Dense per-sample matrices of one layer. ``b`` is ``None`` for a layer without bias."""

    M: torch.Tensor       # W            [n_in, n_out]
    Mp: torch.Tensor      # W⁺ (layer with W.clamp(min=0))
    Mn: torch.Tensor      # W⁻ (layer with W.clamp(max=0))
    Mones: torch.Tensor   # layer with all weights 1
    Msq: torch.Tensor     # layer with W²
    b: Optional[torch.Tensor]
    bp: Optional[torch.Tensor]
    bn: Optional[torch.Tensor]
    bsq: Optional[torch.Tensor]
    in_shape: tuple
    out_shape: tuple


def matrices(layer: nn.Module, in_shape) -> Matrices:
    in_shape = tuple(in_shape)
    w = layer.weight.detach()
    mk = lambda weight: layer_matrix(layer, in_shape, weight)  # noqa: E731
    with torch.no_grad():
        out_shape = tuple(layer(torch.zeros(1, *in_shape, dtype=DTYPE)).shape[1:])
    b = layer.bias.detach() if layer.bias is not None else None
    bv = (lambda t: bias_vector(layer, in_shape, t)) if b is not None else (lambda t: None)
    return Matrices(
        M=mk(w), Mp=mk(w.clamp(min=0)), Mn=mk(w.clamp(max=0)), Mones=mk(torch.ones_like(w)), Msq=mk(w * w),
        b=bv(b), bp=bv(None if b is None else b.clamp(min=0)), bn=bv(None if b is None else b.clamp(max=0)),
        bsq=bv(None if b is None else b * b), in_shape=in_shape, out_shape=out_shape,
    )


# ---- stabiliser -------------------------------------------------------------------------------------------
def stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """``z + eps·sign0(z)``, ``sign0(0) = +1``."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def div(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``r / stab(z)``; for ``eps == 0`` a zero denominator passes nothing (lrpfx's documented choice)."""
    d = stab(z, eps)
    safe = torch.where(d == 0, torch.ones_like(d), d)
    return torch.where(d == 0, torch.zeros_like(r), r / safe)


def _add(z, b):
    return z if b is None else z + b


# ---- rules (X: [B, n_in], R: [B, n_out], result [B, n_in]) ---------------------------------------------------------
def epsilon(m: Matrices, X, R, eps: float, zero_bias: bool = False):
    z = _add(X @ m.M, None if zero_bias else m.b)
    return X * (div(R, z, eps) @ m.M.T)


def _split(Xp, Xn, A, B, bias, R, eps):
    """``z = x⁺·A + x⁻·B + bias``; ``R_in = x⁺·(A s) + x⁻·(B s)``."""
    z = _add(Xp @ A + Xn @ B, bias)
    s = div(R, z, eps)
    return Xp * (s @ A.T) + Xn * (s @ B.T)


def zplus(m: Matrices, X, R, eps: float = 1e-6, zero_bias: bool = False):
    Xp, Xn = X.clamp(min=0), X.clamp(max=0)
    return _split(Xp, Xn, m.Mp, m.Mn, None if zero_bias else m.bp, R, eps)


def alpha_beta(m: Matrices, X, R, alpha: float, beta: float, eps: float = 1e-6, zero_bias: bool = False):
    Xp, Xn = X.clamp(min=0), X.clamp(max=0)
    r_pos = _split(Xp, Xn, m.Mp, m.Mn, None if zero_bias else m.bp, R, eps)
    r_neg = _split(Xp, Xn, m.Mn, m.Mp, None if zero_bias else m.bn, R, eps)
    return alpha * r_pos - beta * r_neg


def gamma(m: Matrices, X, R, gamma: float, eps: float = 1e-6, zero_bias: bool = False):
    """Generalized gamma; the sign mask comes from the unmodified output ``z`` (bias included, as in Zennit)."""
    Xp, Xn = X.clamp(min=0), X.clamp(max=0)
    z = _add(X @ m.M, m.b)
    up, down = m.M + gamma * m.Mp, m.M + gamma * m.Mn
    if zero_bias or m.b is None:
        b_up = b_down = None
    else:
        b_up, b_down = m.b + gamma * m.bp, m.b + gamma * m.bn
    z_up = _add(Xp @ up + Xn @ down, b_up)
    z_down = _add(Xp @ down + Xn @ up, b_down)
    s_up = torch.where(z > 0, div(R, z_up, eps), torch.zeros_like(R))
    s_down = torch.where(z < 0, div(R, z_down, eps), torch.zeros_like(R))
    return Xp * (s_up @ up.T + s_down @ down.T) + Xn * (s_up @ down.T + s_down @ up.T)


def zbox(m: Matrices, X, R, low, high, eps: float = 1e-6):
    """``low``/``high``: ``[n_in]`` or ``[B, n_in]`` bounds; the bias cancels."""
    z = X @ m.M - low @ m.Mp - high @ m.Mn
    s = div(R, z, eps)
    return X * (s @ m.M.T) - low * (s @ m.Mp.T) - high * (s @ m.Mn.T)


def flat(m: Matrices, X, R, eps: float = 1e-6):
    ones = torch.ones_like(X)
    z = ones @ m.Mones
    return div(R, z, eps) @ m.Mones.T


def wsquare(m: Matrices, X, R, eps: float = 1e-6, zero_bias: bool = False):
    ones = torch.ones_like(X)
    z = _add(ones @ m.Msq, None if zero_bias else m.bsq)
    return div(R, z, eps) @ m.Msq.T
