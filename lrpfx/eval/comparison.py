"""Comparing rules on a data set: perturbation areas, conservation and the randomisation check per rule, as
one table."""
from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..api import Explainer
from ..data.sources import iter_batches
from ..progress import model_device
from .perturbation import region_perturbation, resolve_target
from .randomization import randomization_check
from .table import text_table


EVALUATION_COLUMNS = (
    ("rule", "rule"),
    ("morf_auc", "MoRF AUC (lower better)"),
    ("lerf_auc", "LeRF AUC (higher better)"),
    ("auc_difference", "LeRF-MoRF (higher better)"),
    ("conservation", "input sum R / initial R"),
    ("randomized_top", "rho top layer random"),
    ("randomized_all", "rho all random"),
    ("seconds", "seconds"),
)


class EvaluationTable(list):
    """One dict per rule (keys: :data:`EVALUATION_COLUMNS`); prints as an aligned table, ``to_markdown()``."""

    def _cells(self) -> List[Tuple[str, ...]]:
        out = []
        for row in self:
            cells = []
            for key, _ in EVALUATION_COLUMNS:
                v = row.get(key)
                cells.append(str(v) if isinstance(v, str) else "-" if v is None or v != v else
                             f"{v:.1f}" if key == "seconds" else f"{v:+.3f}" if key.startswith("rand") else f"{v:.3f}")
            out.append(tuple(cells))
        return out

    def __str__(self) -> str:
        return text_table([tuple(h for _, h in EVALUATION_COLUMNS)] + self._cells())

    def to_markdown(self) -> str:
        lines = ["| " + " | ".join(h for _, h in EVALUATION_COLUMNS) + " |",
                 "|" + "---|" * len(EVALUATION_COLUMNS)]
        lines += ["| " + " | ".join(c) + " |" for c in self._cells()]
        return "\n".join(lines)


def evaluate_rules(model: nn.Module, data, rules: Sequence, *, target=None, batch_size: int = 64,
                   limit: Optional[int] = None, patch_size=1, steps: Optional[int] = None, baseline=0.0,
                   score: str = "logit", randomization_samples: int = 32, seed: int = 0,
                   **explainer_options) -> EvaluationTable:
    """Compare ``rules`` on ``data`` (a tensor, ``(x, y)`` tensors, a data set, or a DataLoader or list of
    batches; at most ``limit`` samples, read once, one batch in memory at a time): mean MoRF and LeRF areas
    and their difference (:func:`region_perturbation`), the mean ratio of input relevance to the initial
    relevance (conservation), and the mean Spearman correlation after randomising the top layer and all layers
    (:func:`randomization_check`, on the first ``randomization_samples`` samples; 0 skips it). ``target``:
    None (argmax), an int or ``"label"``."""
    device = model_device(model)
    explainers = [Explainer(model, rule, **explainer_options) for rule in rules]
    sums = [{"morf_auc": 0.0, "lerf_auc": 0.0, "conservation": 0.0, "seconds": 0.0} for _ in rules]
    count = 0
    kept_x, kept_t = [], []   # the samples of the randomisation check
    for bx, by in iter_batches(data, batch_size, limit):
        bx = bx.to(device)
        t = _batch_target(model, bx, None if by is None else by.to(device), target)
        if sum(len(k) for k in kept_x) < randomization_samples:
            kept_x.append(bx[:randomization_samples - sum(len(k) for k in kept_x)])
            kept_t.append(t[:len(kept_x[-1])])
        for explainer, acc in zip(explainers, sums):
            started = time.perf_counter()
            result = explainer(bx, target=t)
            p = region_perturbation(model, bx, result.relevance, t, patch_size=patch_size, steps=steps,
                                    baseline=baseline, score=score, batch_size=max(batch_size, bx.shape[0]),
                                    seed=seed)
            start_one = getattr(explainer.composite, "start", "logit") == "one"
            start = 1.0 if start_one else result.output.gather(1, t.view(-1, 1)).squeeze(1)
            acc["morf_auc"] += p.morf_auc.sum().item()
            acc["lerf_auc"] += p.lerf_auc.sum().item()
            acc["conservation"] += (result.relevance.flatten(1).sum(1) / start).sum().item()
            acc["seconds"] += time.perf_counter() - started
        count += bx.shape[0]
    if count == 0:
        raise ValueError("evaluate_rules: the data yielded no samples")
    table = EvaluationTable()
    for rule, explainer, acc in zip(rules, explainers, sums):
        row = {"rule": rule if isinstance(rule, str) else getattr(explainer.composite, "label", str(rule)),
               "morf_auc": acc["morf_auc"] / count, "lerf_auc": acc["lerf_auc"] / count}
        row["auc_difference"] = row["lerf_auc"] - row["morf_auc"]
        row["conservation"] = acc["conservation"] / count
        row["randomized_top"] = row["randomized_all"] = None
        row["samples"] = count
        if randomization_samples > 0:
            started = time.perf_counter()
            check = randomization_check(model, torch.cat(kept_x), rule, torch.cat(kept_t), seed=seed,
                                        **explainer_options)
            acc["seconds"] += time.perf_counter() - started
            means = check.mean()
            if len(means) > 1:
                row["randomized_top"], row["randomized_all"] = means[1], means[-1]
        row["seconds"] = acc["seconds"]
        table.append(row)
    return table


def _batch_target(model: nn.Module, x: torch.Tensor, labels: Optional[torch.Tensor], target) -> torch.Tensor:
    if isinstance(target, str):
        if target != "label" or labels is None:
            raise ValueError("target='label' needs data of (input, label) pairs" if target == "label" else
                             f"target must be None, an int or 'label', got {target!r}")
        return labels.long()
    return resolve_target(model, x, target)
