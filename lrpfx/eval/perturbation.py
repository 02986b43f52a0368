"""Pixel flipping and region perturbation: the target's score as pixels or patches are deleted in order of
relevance (MoRF: most relevant first, LeRF: least relevant first, or random), and the areas under the curves.

Every function here runs on the model's device, with perturbed inputs batched through the model, and takes
inputs ``[B, C, *spatial]`` (channel axis 1: a pixel is deleted in every channel) or ``[B, features]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..progress import model_device

ORDERS = ("morf", "lerf", "random")


def flipping_curve(model: nn.Module, x: torch.Tensor, order_scores: torch.Tensor, target: torch.Tensor,
                   steps: int = 16, baseline: float = 0.0) -> torch.Tensor:
    """Target logit after deleting pixels in decreasing ``order_scores`` order, ``steps`` chunks at a time.

    ``order_scores`` has one score per pixel (``[B, H, W]`` or ``[B, *x.shape[2:]]``); deleting sets every channel
    of a pixel to ``baseline``. Returns ``[B, steps + 1]`` logits (column 0: nothing deleted): the most-relevant-
    first :func:`perturbation_curve` with one-pixel patches and this order.
    """
    per_pixel = order_scores.reshape(x.shape[0], 1, *x.shape[2:])  # one channel: the scores as they are
    return perturbation_curve(model, x, per_pixel, target, order="morf", steps=steps, baseline=baseline)


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


def pixel_scores(relevance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One score per pixel ``[B, *spatial]``: relevance summed over channels (inputs of 3 or more dims)."""
    return relevance.sum(1) if x.dim() >= 3 else relevance


def resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
    if target is None:
        with torch.no_grad():
            return model(x).argmax(-1)
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
    return torch.as_tensor(target, device=x.device).long().view(-1).expand(x.shape[0])


def patch_ids(spatial: Sequence[int], patch_size, device=None) -> Tuple[torch.Tensor, int]:
    """The patch of every pixel (flattened ``spatial``, row-major) for non-overlapping patches of
    ``patch_size`` (an int or one size per spatial axis; border patches may be smaller), and the patch count."""
    sizes = (patch_size,) * len(spatial) if isinstance(patch_size, int) else tuple(patch_size)
    if len(sizes) != len(spatial) or any(int(p) < 1 for p in sizes):
        raise ValueError(f"patch_size must be a positive int or one per spatial axis {tuple(spatial)}, "
                         f"got {patch_size!r}")
    grid = [math.ceil(s / p) for s, p in zip(spatial, sizes)]
    coords = torch.meshgrid(*[torch.arange(s, device=device) // p for s, p in zip(spatial, sizes)], indexing="ij")
    ids = torch.zeros(spatial, dtype=torch.long, device=device)
    for c, g in zip(coords, grid):
        ids = ids * g + c
    return ids.reshape(-1), math.prod(grid)


def _baseline(x: torch.Tensor, baseline, seed: int) -> torch.Tensor:
    """What deleted pixels are set to, shaped like ``x``: a constant, ``"zero"``, ``"mean"`` (per sample and
    channel), ``"uniform"`` (seeded noise within each sample's value range) or a tensor broadcastable to x."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x.device, x.dtype).expand_as(x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if baseline == "zero":
        return torch.zeros_like(x)
    if baseline == "mean":
        dims = tuple(range(2, x.dim())) if x.dim() >= 3 else (1,)
        return x.mean(dims, keepdim=True).expand_as(x)
    if baseline == "uniform":
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(x.shape, generator=g, dtype=torch.float64).to(x.device, x.dtype)
        flat = x.flatten(1)
        low = flat.min(1).values.view(-1, *([1] * (x.dim() - 1)))
        high = flat.max(1).values.view(-1, *([1] * (x.dim() - 1)))
        return low + u * (high - low)
    raise ValueError(f"baseline must be a number, 'zero', 'mean', 'uniform' or a tensor, got {baseline!r}")


def _patch_rank(scores: torch.Tensor, ids: torch.Tensor, num_patches: int, order: str, seed: int) -> torch.Tensor:
    """``[B, P]``: the step at which each patch is deleted (0 first) in ``order``."""
    b = scores.shape[0]
    patch = torch.zeros(b, num_patches, dtype=torch.float64, device=scores.device)
    patch.index_add_(1, ids, scores.reshape(b, -1).to(torch.float64))
    if order == "random":
        g = torch.Generator().manual_seed(seed)
        patch = torch.rand(patch.shape, generator=g, dtype=torch.float64).to(patch.device)
    elif order not in ("morf", "lerf"):
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    sorted_ids = patch.argsort(dim=1, descending=order != "lerf", stable=True)
    rank = torch.empty_like(sorted_ids)
    rank.scatter_(1, sorted_ids, torch.arange(num_patches, device=scores.device).expand(b, num_patches))
    return rank


def _cuts(num_patches: int, steps: Optional[int], device) -> torch.Tensor:
    steps = min(num_patches, 32) if steps is None else steps
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(0, num_patches, steps + 1, dtype=torch.float64).round().long().to(device)


def _score(out: torch.Tensor, target: torch.Tensor, score: str) -> torch.Tensor:
    if score == "probability":
        out = out.softmax(-1)
    elif score != "logit":
        raise ValueError(f"score must be 'logit' or 'probability', got {score!r}")
    return out.gather(-1, target.view(-1, 1, 1).expand(out.shape[0], out.shape[1], 1)).squeeze(-1)


def perturbation_curve(model: nn.Module, x: torch.Tensor, relevance: torch.Tensor, target=None, *,
                       order: str = "morf", patch_size=1, steps: Optional[int] = None, baseline=0.0,
                       score: str = "logit", batch_size: int = 64, seed: int = 0) -> torch.Tensor:
    """The target's score while patches are deleted in ``order`` (``"morf"``: most relevant first, ``"lerf"``:
    least relevant first, ``"random"``).

    Patch relevance is the sum of the relevance in the patch (summed over channels); ``steps`` deletion steps
    (default: one per patch, at most 32) each delete an equal share of the patches, and a deleted patch takes
    the ``baseline`` values. Returns ``[B, steps + 1]`` (column 0: nothing deleted); perturbed inputs go through
    the model ``batch_size`` at a time, on the model's device.
    """
    device = model_device(model)
    x, relevance = x.to(device), relevance.to(device)
    target = resolve_target(model, x, target)
    spatial = tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])
    ids, num_patches = patch_ids(spatial, patch_size, device)
    rank = _patch_rank(pixel_scores(relevance, x), ids, num_patches, order, seed)
    pixel_rank = rank[:, ids]  # [B, pixels]: the step rank of each pixel's patch
    cuts = _cuts(num_patches, steps, device)
    base = _baseline(x, baseline, seed).unsqueeze(1)
    b = x.shape[0]
    channel = (1,) if x.dim() >= 3 else ()
    per_call = max(1, batch_size // b)
    curves = []
    with torch.no_grad():
        for s in range(0, len(cuts), per_call):
            cut = cuts[s:s + per_call]
            deleted = (pixel_rank.unsqueeze(1) < cut.view(1, -1, 1)).view(b, len(cut), *channel, *spatial)
            perturbed = torch.where(deleted, base, x.unsqueeze(1))
            out = model(perturbed.flatten(0, 1)).view(b, len(cut), -1)
            curves.append(_score(out, target, score))
    return torch.cat(curves, 1)


def auc(curve: torch.Tensor, fractions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Area under each curve ``[B, S + 1]`` over the fraction deleted (evenly spaced on [0, 1] by default)."""
    if fractions is None:
        fractions = torch.linspace(0, 1, curve.shape[1], dtype=curve.dtype, device=curve.device)
    return torch.trapezoid(curve, x=fractions.to(curve.device, curve.dtype), dim=1)


@dataclass
class PerturbationResult:
    """MoRF and LeRF curves ``[B, S + 1]`` over ``fractions`` (share of patches deleted), and their areas.
    ``auc_difference`` = LeRF AUC - MoRF AUC per sample: larger is more faithful."""

    fractions: torch.Tensor
    morf: torch.Tensor
    lerf: torch.Tensor

    @property
    def morf_auc(self) -> torch.Tensor:
        return auc(self.morf, self.fractions)

    @property
    def lerf_auc(self) -> torch.Tensor:
        return auc(self.lerf, self.fractions)

    @property
    def auc_difference(self) -> torch.Tensor:
        return self.lerf_auc - self.morf_auc

    def summary(self) -> Dict[str, float]:
        return {"morf_auc": self.morf_auc.mean().item(), "lerf_auc": self.lerf_auc.mean().item(),
                "auc_difference": self.auc_difference.mean().item()}


def region_perturbation(model: nn.Module, x: torch.Tensor, relevance: torch.Tensor, target=None, *,
                        patch_size=1, steps: Optional[int] = None, baseline=0.0, score: str = "logit",
                        batch_size: int = 64, seed: int = 0) -> PerturbationResult:
    """Region perturbation (Samek et al.): MoRF and LeRF curves of the target's score as patches of
    ``patch_size`` pixels are deleted in order of relevance, with their areas (see :func:`perturbation_curve`
    for the options; ``patch_size=1`` is pixel flipping)."""
    device = model_device(model)
    x = x.to(device)
    target = resolve_target(model, x, target)
    options = dict(patch_size=patch_size, steps=steps, baseline=baseline, score=score, batch_size=batch_size,
                   seed=seed)
    morf = perturbation_curve(model, x, relevance, target, order="morf", **options)
    lerf = perturbation_curve(model, x, relevance, target, order="lerf", **options)
    spatial = tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])
    _, num_patches = patch_ids(spatial, patch_size)
    fractions = _cuts(num_patches, steps, device).to(morf.dtype) / num_patches
    return PerturbationResult(fractions, morf, lerf)
