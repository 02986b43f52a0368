"""Arithmetic on a rule function's own temporaries: in place where that is safe, out of place otherwise.

Rule functions write over tensors they made themselves (a fresh quotient, a transposed product) to save one
activation-sized allocation per step. That is safe only while nothing watches: when autograd records (the
differentiable program, docs/functional.md) the op that made a temporary may keep it for its backward, and
``out=`` has no derivative; under :mod:`torch.func` transforms a batched value cannot be written into an
unbatched temporary. There these helpers compute the same numbers out of place. Grad mode and the transforms are
per thread, so the choice needs no global switch.
"""
from __future__ import annotations

import torch


def overwritable() -> bool:
    """Whether a step may write over its own temporaries now."""
    if torch.compiler.is_compiling():  # the compiler sees no transform of ours; it reads grad mode itself
        return not torch.is_grad_enabled()
    return not (torch.is_grad_enabled() or torch._C._are_functorch_transforms_active())


def mul(temporary: torch.Tensor, other) -> torch.Tensor:
    """``temporary * other``, written over ``temporary`` where allowed."""
    return temporary.mul_(other) if overwritable() else temporary * other


def add(temporary: torch.Tensor, other) -> torch.Tensor:
    """``temporary + other``, written over ``temporary`` where allowed."""
    return temporary.add_(other) if overwritable() else temporary + other


def sub(temporary: torch.Tensor, other) -> torch.Tensor:
    """``temporary - other``, written over ``temporary`` where allowed."""
    return temporary.sub_(other) if overwritable() else temporary - other


def rsub(other: torch.Tensor, temporary: torch.Tensor) -> torch.Tensor:
    """``other - temporary``, written over ``temporary`` where allowed."""
    return torch.sub(other, temporary, out=temporary) if overwritable() else other - temporary


def masked_fill(temporary: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    """``temporary`` with ``value`` where ``mask``, written over ``temporary`` where allowed."""
    return temporary.masked_fill_(mask, value) if overwritable() else temporary.masked_fill(mask, value)


def scatter_add(temporary: torch.Tensor, dim: int, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """``temporary`` plus ``src`` scattered along ``dim`` at ``index``, written over ``temporary`` where allowed."""
    if overwritable():
        return temporary.scatter_add_(dim, index, src)
    return temporary.scatter_add(dim, index, src)
