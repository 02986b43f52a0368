"""Conservation: the relevance sum at each node divided by the target logit (per sample, or as a per-layer
report over many samples); 1 means conserved."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List

import torch
from torch import nn

from ..api import Explainer
from ..progress import model_device
from .perturbation import resolve_target
from .table import text_table


def conservation(explanation, output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per intermediate node: relevance sum divided by the target logit (1 means conserved), per sample."""
    logit = output.gather(1, target.view(-1, 1)).squeeze(1)
    return {name: r.flatten(1).sum(1) / logit for name, r in explanation.intermediate.items()}


@dataclass
class ConservationRow:
    layer: str
    mean: float
    std: float
    min: float
    max: float


class ConservationReport(list):
    """Rows of :class:`ConservationRow`: per node, the relevance sum divided by the initial relevance (the
    target logit, or 1 for one-hot starts), over the samples; 1 everywhere is exact conservation."""

    def __str__(self) -> str:
        rows = [("layer", "mean", "std", "min", "max")]
        rows += [(r.layer, f"{r.mean:.4f}", f"{r.std:.4f}", f"{r.min:.4f}", f"{r.max:.4f}") for r in self]
        return text_table(rows)

    def as_dicts(self) -> List[Dict[str, float]]:
        return [dict(r.__dict__) for r in self]


def conservation_report(model: nn.Module, x: torch.Tensor, rule="epsilon-plus-flat", target=None, *,
                        batch_size: int = 64, **explainer_options) -> ConservationReport:
    """Conservation at every node of the relevance program (execution order, the input first) for ``x``,
    explained ``batch_size`` samples at a time on the model's device."""
    explainer = Explainer(model, rule, **explainer_options)
    start_one = getattr(explainer.composite, "start", "logit") == "one"
    device = model_device(model)
    ratios: Dict[str, List[torch.Tensor]] = {}
    for chunk in x.split(batch_size):
        chunk = chunk.to(device)
        t = resolve_target(model, chunk, target)
        result = explainer(chunk, target=t, intermediate=True)
        start = torch.ones_like(t, dtype=result.output.dtype) if start_one else \
            result.output.gather(1, t.view(-1, 1)).squeeze(1)
        for name, r in result.intermediate.items():
            ratios.setdefault(name, []).append((r.flatten(1).sum(1) / start).to(torch.float64))
    report = ConservationReport()
    for name, parts in ratios.items():
        v = torch.cat(parts)
        report.append(ConservationRow(name, v.mean().item(), v.std().item() if v.numel() > 1 else 0.0,
                                      v.min().item(), v.max().item()))
    return report
