"""Faithfulness metrics: pixel flipping (most-relevant-first against random order) and conservation."""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


def flipping_curve(model: nn.Module, x: torch.Tensor, order_scores: torch.Tensor, target: torch.Tensor,
                   steps: int = 16, baseline: float = 0.0) -> torch.Tensor:
    """Target logit after deleting pixels in decreasing ``order_scores`` order, ``steps`` chunks at a time.

    ``order_scores`` has one score per pixel (``[B, H, W]`` or ``[B, *x.shape[2:]]``); deleting sets every channel
    of a pixel to ``baseline``. Returns ``[B, steps + 1]`` logits (column 0: nothing deleted). All perturbed
    inputs of a sample go through the model in one batch.
    """
    b = x.shape[0]
    flat = order_scores.reshape(b, -1)
    n = flat.shape[1]
    rank = torch.empty_like(flat, dtype=torch.long)
    rank.scatter_(1, flat.argsort(dim=1, descending=True), torch.arange(n, device=x.device).expand(b, n))
    cut = torch.linspace(0, n, steps + 1, device=x.device).round().long()  # pixels deleted after each step
    deleted = rank.unsqueeze(1) < cut.view(1, -1, 1)  # [B, steps+1, n]
    mask = deleted.view(b, steps + 1, 1, *x.shape[2:])
    perturbed = torch.where(mask, torch.as_tensor(baseline, dtype=x.dtype, device=x.device), x.unsqueeze(1))
    with torch.no_grad():
        out = model(perturbed.flatten(0, 1)).view(b, steps + 1, -1)
    return out.gather(2, target.view(b, 1, 1).expand(b, steps + 1, 1)).squeeze(2)


def pixel_flipping(model: nn.Module, x: torch.Tensor, relevance: torch.Tensor, target: Optional[torch.Tensor] = None,
                   steps: int = 16, baseline: float = 0.0, seed: int = 0) -> Dict[str, torch.Tensor]:
    """Most-relevant-first deletion against random deletion.

    Returns the two curves (``morf``, ``random``, ``[B, steps + 1]``) and ``area``: the mean over samples of the
    area between them (random minus MoRF, normalised to the unit interval). A positive area means deleting the
    pixels the explanation calls relevant lowers the target logit faster than chance.
    """
    with torch.no_grad():
        if target is None:
            target = model(x).argmax(1)
    scores = relevance.sum(1)  # over channels
    morf = flipping_curve(model, x, scores, target, steps, baseline)
    g = torch.Generator(device="cpu").manual_seed(seed)
    random_scores = torch.rand(scores.shape, generator=g).to(scores.device)
    rand = flipping_curve(model, x, random_scores, target, steps, baseline)
    area = torch.trapezoid(rand - morf, dx=1.0 / steps, dim=1).mean()
    return {"morf": morf, "random": rand, "area": area}


def conservation(explanation, output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per intermediate node: relevance sum divided by the target logit (1 means conserved), per sample."""
    logit = output.gather(1, target.view(-1, 1)).squeeze(1)
    return {name: r.flatten(1).sum(1) / logit for name, r in explanation.intermediate.items()}
