"""The denominator stabiliser shared by every rule that divides by an output."""
import torch

from . import temporaries


def divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``r / (z + eps * sign0(z))`` with ``sign0(0) = +1``, so a non-zero eps never divides by zero; with
    ``eps == 0`` positions where ``z == 0`` give 0 instead of inf/NaN."""
    if eps > 0:
        shift = torch.tensor(eps, dtype=z.dtype, device=z.device)
        denominator = torch.where(z >= 0, shift, -shift)
        denominator = temporaries.add(denominator, z)  # in place on our own temporary where allowed
        return quotient_into(r, denominator)
    nonzero = z != 0
    return torch.where(nonzero, r / torch.where(nonzero, z, torch.ones_like(z)), torch.zeros_like(r))


def divide_nonneg(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """:func:`divide` for a ``z`` known to be ``>= 0`` (z+ of non-negative inputs, say): the stabiliser's sign is
    +1 everywhere, so it is one addition. Equal to ``divide(r, z, eps)`` whenever ``z >= 0``."""
    if eps > 0:
        return r / (z + eps)
    return divide(r, z, eps)


def quotient_into(r: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``r / denominator``, written over ``denominator`` (a temporary of the caller's) where that is safe: one
    allocation of an activation-sized tensor less per step. Otherwise (a target axis to broadcast, another
    dtype, autograd, functorch or a compiler watching) a fresh quotient."""
    if torch.compiler.is_compiling() or r.shape != denominator.shape or r.dtype != denominator.dtype \
            or torch._C._are_functorch_transforms_active() \
            or (torch.is_grad_enabled() and (r.requires_grad or denominator.requires_grad)):
        return r / denominator
    return torch.div(r, denominator, out=denominator)
