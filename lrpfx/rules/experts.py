"""Rules for the grouped products of mixture-of-experts blocks (``grouped_mm``; Mixtral, Qwen3-MoE).

``grouped_mm(x, w, offs)`` multiplies the rows of ``x`` that were routed to expert ``e`` — rows
``offs[e-1]:offs[e]`` after sorting by expert — by that expert's matrix ``w[e]``. It is linear in ``x`` with
constant weights, so the epsilon rule applies row by row: ``R_x = x · (r / stab(z)) @ w[e]ᵀ``. Rows past
``offs[-1]`` (tokens routed nowhere) get no relevance. A token reaches this op once per expert that ran for it
(a gather before the op), so its relevance is the sum over those experts.
"""
from __future__ import annotations

import torch

from . import temporaries
from .stabilize import divide


def grouped_transpose(s: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """``s`` pulled back through ``grouped_mm(·, w, offs)``: row block ``e`` times ``w[e]ᵀ``. ``s`` may carry
    leading target axes."""
    out = s.new_zeros((*s.shape[:-1], w.shape[-2]))
    start = 0
    for e, end in enumerate(offs.tolist()):
        if end > start:
            out[..., start:end, :] = s[..., start:end, :] @ w[e].transpose(-1, -2)
        start = end
    return out


def grouped_epsilon(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor, z: torch.Tensor, r: torch.Tensor, *,
                    eps: float) -> torch.Tensor:
    """LRP-epsilon through a grouped product (no bias): ``x · Wᵀ (r / stab(z))`` per expert block."""
    return temporaries.mul(grouped_transpose(divide(r, z, eps), w, offs), x)
