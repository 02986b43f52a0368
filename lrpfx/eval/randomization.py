"""Spearman rank correlation (ties averaged) and the cascading model-parameter randomisation check."""
from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..api import Explainer
from ..progress import model_device
from .perturbation import pixel_scores, resolve_target
from .table import text_table


def average_ranks(v: torch.Tensor) -> torch.Tensor:
    """Ranks (0-based) of each row of ``v [B, n]``, ties sharing their average rank (as Spearman needs)."""
    b, n = v.shape
    sorted_v, order = v.sort(dim=1, stable=True)
    new_group = torch.ones_like(sorted_v, dtype=torch.long)
    new_group[:, 1:] = (sorted_v[:, 1:] != sorted_v[:, :-1]).long()
    group = new_group.cumsum(1) - 1                                     # [B, n] tie-group id, per row
    position = torch.arange(n, device=v.device, dtype=torch.float64).expand(b, n)
    first = torch.full((b, n), float(n), dtype=torch.float64, device=v.device).scatter_reduce(
        1, group, position, reduce="amin")
    last = torch.full((b, n), -1.0, dtype=torch.float64, device=v.device).scatter_reduce(
        1, group, position, reduce="amax")
    mean_rank = ((first + last) / 2).gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation between the rows of ``a`` and ``b`` (flattened past the batch axis), with
    ties averaged; NaN for a constant row."""
    ra, rb = average_ranks(a.flatten(1)), average_ranks(b.flatten(1))
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.square().sum(1) * rb.square().sum(1)).sqrt()
    return torch.where(denominator > 0, (ra * rb).sum(1) / denominator.clamp_min(1e-300),
                       torch.full_like(denominator, float("nan")))


def randomizable_layers(model: nn.Module) -> List[str]:
    """Names of the modules with a weight matrix or kernel of their own (Linear, Conv, ...), in registration
    order."""
    names = []
    for name, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if name and weight is not None and weight.dim() >= 2:
            names.append(name)
    return names


def _randomize(module: nn.Module, seed: int) -> None:
    """Re-initialise ``module``'s own parameters, seeded: its ``reset_parameters`` (the initialiser's
    distribution) when it has one, else Gaussians with each parameter's standard deviation."""
    params = list(module.parameters(recurse=False))
    devices = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        else:
            for p in params:
                p.copy_(torch.randn_like(p) * (p.std() if p.numel() > 1 else p.abs()))


@dataclass
class RandomizationResult:
    """Cascading model-parameter randomisation (Adebayo et al.): ``layers[i]`` is the layer randomised at step
    ``i + 1`` (top-down, cumulative); ``correlation[i]`` ``[B]`` is the Spearman correlation between each
    sample's heatmap for the trained model and after steps ``1..i`` (row 0: nothing randomised, 1), and
    ``correlation_abs`` the same for absolute heatmaps. Falling correlations mean the explanation depends on
    the parameters, as it should."""

    layers: List[str]
    correlation: torch.Tensor
    correlation_abs: torch.Tensor

    def mean(self, absolute: bool = False) -> List[float]:
        c = self.correlation_abs if absolute else self.correlation
        return [float(v) for v in c.nanmean(1)]

    def __str__(self) -> str:
        rows = [("randomised up to", "spearman", "spearman |R|")]
        for name, m, a in zip(["(none)"] + self.layers, self.mean(), self.mean(True)):
            rows.append((name, f"{m:+.3f}", f"{a:+.3f}"))
        return text_table(rows)


def randomization_check(model: nn.Module, x: torch.Tensor, rule="epsilon-plus-flat", target=None, *,
                        layers: Optional[Sequence[str]] = None, seed: int = 0,
                        **explainer_options) -> RandomizationResult:
    """Explain ``x`` with the trained model, then randomise its layers one after another from the top
    (``layers``: names, randomised in the given order; default all Linear/Conv layers, last first) and compare
    each explanation with the original by Spearman rank correlation. The target stays the trained model's
    (``target``, default its argmax); ``model`` itself is not changed (a copy is randomised)."""
    device = model_device(model)
    x = x.to(device)
    target = resolve_target(model, x, target)
    original = pixel_scores(Explainer(model, rule, **explainer_options)(x, target=target).relevance, x)
    order = list(layers) if layers is not None else randomizable_layers(model)[::-1]
    copy = deepcopy(model)
    modules = dict(copy.named_modules())
    missing = [name for name in order if name not in modules]
    if missing:
        raise ValueError(f"no such layers in the model: {', '.join(missing)}")
    ones = torch.ones(x.shape[0], dtype=torch.float64, device=device)
    signed, absolute = [ones], [ones]
    for step, name in enumerate(order, 1):
        _randomize(modules[name], seed + step)
        # a fresh explainer per step: nothing cached from the previous parameters can leak in
        r = pixel_scores(Explainer(copy, rule, **explainer_options)(x, target=target).relevance, x)
        signed.append(spearman(original, r).to(torch.float64))
        absolute.append(spearman(original.abs(), r.abs()).to(torch.float64))
    return RandomizationResult(order, torch.stack(signed), torch.stack(absolute))
