"""Faithfulness metrics: pixel flipping and region perturbation (MoRF/LeRF curves and their areas),
conservation (per sample and per layer), the model-parameter randomisation check, and a table comparing rules.
"""
from __future__ import annotations

import math
import time
from copy import deepcopy
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..progress import model_device


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


def conservation(explanation, output: torch.Tensor, target: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Per intermediate node: relevance sum divided by the target logit (1 means conserved), per sample."""
    logit = output.gather(1, target.view(-1, 1)).squeeze(1)
    return {name: r.flatten(1).sum(1) / logit for name, r in explanation.intermediate.items()}


# ---- region perturbation: MoRF / LeRF curves and their areas ------------------------------------------------
# Every function below runs on the model's device, with perturbed inputs batched through the model, and takes
# inputs ``[B, C, *spatial]`` (channel axis 1: a pixel is deleted in every channel) or ``[B, features]``.

ORDERS = ("morf", "lerf", "random")


def _pixel_scores(relevance: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """One score per pixel ``[B, *spatial]``: relevance summed over channels (inputs of 3 or more dims)."""
    return relevance.sum(1) if x.dim() >= 3 else relevance


def _resolve_target(model: nn.Module, x: torch.Tensor, target) -> torch.Tensor:
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
    target = _resolve_target(model, x, target)
    spatial = tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])
    ids, num_patches = patch_ids(spatial, patch_size, device)
    rank = _patch_rank(_pixel_scores(relevance, x), ids, num_patches, order, seed)
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
    target = _resolve_target(model, x, target)
    options = dict(patch_size=patch_size, steps=steps, baseline=baseline, score=score, batch_size=batch_size,
                   seed=seed)
    morf = perturbation_curve(model, x, relevance, target, order="morf", **options)
    lerf = perturbation_curve(model, x, relevance, target, order="lerf", **options)
    spatial = tuple(x.shape[2:]) if x.dim() >= 3 else tuple(x.shape[1:])
    _, num_patches = patch_ids(spatial, patch_size)
    fractions = _cuts(num_patches, steps, device).to(morf.dtype) / num_patches
    return PerturbationResult(fractions, morf, lerf)


# ---- rank correlation and the model-parameter randomisation check -------------------------------------------
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
        return _table(rows)


def randomization_check(model: nn.Module, x: torch.Tensor, rule="epsilon-plus-flat", target=None, *,
                        layers: Optional[Sequence[str]] = None, seed: int = 0,
                        **explainer_options) -> RandomizationResult:
    """Explain ``x`` with the trained model, then randomise its layers one after another from the top
    (``layers``: names, randomised in the given order; default all Linear/Conv layers, last first) and compare
    each explanation with the original by Spearman rank correlation. The target stays the trained model's
    (``target``, default its argmax); ``model`` itself is not changed (a copy is randomised)."""
    from ..api import Explainer

    device = model_device(model)
    x = x.to(device)
    target = _resolve_target(model, x, target)
    original = _pixel_scores(Explainer(model, rule, **explainer_options)(x, target=target).relevance, x)
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
        r = _pixel_scores(Explainer(copy, rule, **explainer_options)(x, target=target).relevance, x)
        signed.append(spearman(original, r).to(torch.float64))
        absolute.append(spearman(original.abs(), r.abs()).to(torch.float64))
    return RandomizationResult(order, torch.stack(signed), torch.stack(absolute))


# ---- conservation per layer -----------------------------------------------------------------------------------
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
        return _table(rows)

    def as_dicts(self) -> List[Dict[str, float]]:
        return [dict(r.__dict__) for r in self]


def conservation_report(model: nn.Module, x: torch.Tensor, rule="epsilon-plus-flat", target=None, *,
                        batch_size: int = 64, **explainer_options) -> ConservationReport:
    """Conservation at every node of the relevance program (execution order, the input first) for ``x``,
    explained ``batch_size`` samples at a time on the model's device."""
    from ..api import Explainer

    explainer = Explainer(model, rule, **explainer_options)
    start_one = getattr(explainer.composite, "start", "logit") == "one"
    device = model_device(model)
    ratios: Dict[str, List[torch.Tensor]] = {}
    for chunk in x.split(batch_size):
        chunk = chunk.to(device)
        t = _resolve_target(model, chunk, target)
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


# ---- comparing rules on a data set ---------------------------------------------------------------------------
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
        return _table([tuple(h for _, h in EVALUATION_COLUMNS)] + self._cells())

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
    from ..api import Explainer
    from ..data.dataset import iter_batches

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
    return _resolve_target(model, x, target)


def _table(rows: List[Tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
