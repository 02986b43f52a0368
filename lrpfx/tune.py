"""Tuning a rule's parameter per layer group for faithfulness (docs/training.md).

:func:`tune` starts from a preset, takes the conv/linear layers the preset gives the family's rule (Gamma for
``family="gamma"``, Epsilon for ``"epsilon"``), cuts them into groups (each layer, or the lower / middle / upper
thirds in execution order) and searches each group's parameter over ``candidates`` by greedy coordinate ascent
on a faithfulness score of the tuning data: one group at a time, the others held, the best value kept.

Every candidate composite gets one :class:`~lrpfx.Explainer` (one program build, timed in the report) that
explains every batch; a composite met twice (a later sweep) is scored from the cache. The score's pieces that do
not depend on the explanation (targets, the random-order curve of pixel flipping) are computed once per batch.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import graph, pipeline
from .api import Explainer
from .assign import choose_rules
from .composites import AUTO, Composite, as_composite
from .data.sources import iter_batches
from .errors import InputError
from .eval.perturbation import flipping_curve, region_perturbation, resolve_target
from .eval.table import text_table
from .kinds import WEIGHTED_KINDS
from .progress import model_device
from .rules import Epsilon, Gamma, Rule


@dataclass(frozen=True)
class Family:
    """A rule class, the parameter tuned, the preset that assigns it, and default candidates."""

    rule: type
    parameter: str
    preset: str
    candidates: Tuple[float, ...]


FAMILIES: Dict[str, Family] = {
    "gamma": Family(Gamma, "gamma", "gamma", (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)),
    "epsilon": Family(Epsilon, "eps", "epsilon", (1e-6, 1e-3, 1e-2, 0.1, 0.3, 1.0)),
}
METRICS = ("pixel-flipping", "aopc", "auc-difference")
GROUP_NAMES = {1: ("all",), 2: ("lower", "upper"), 3: ("lower", "middle", "upper")}


@dataclass
class TuneResult:
    """What :func:`tune` found. ``composite`` is the best composite (the preset with ``by_name`` entries for the
    tuned layers), ``values`` the chosen parameter per group (None: the preset's rules kept), ``groups`` the
    layers of each group, ``score`` its score on the tuning data and ``preset_score`` the preset's. ``trials``
    holds one row per composite scored, in order (``group``, ``value``, ``values``, ``score``); ``build_seconds``
    and ``score_seconds`` split the time between building programs (one per composite) and scoring."""

    composite: Composite
    values: Dict[str, Optional[float]]
    groups: Dict[str, Tuple[str, ...]]
    score: float
    preset_score: float
    metric: str
    family: str
    trials: List[Dict[str, Any]] = field(default_factory=list)
    build_seconds: float = 0.0
    score_seconds: float = 0.0

    def __str__(self) -> str:
        rows = [("group", "layers", "value")] + [
            (g, ", ".join(layers), "preset" if self.values[g] is None else f"{self.values[g]:g}")
            for g, layers in self.groups.items()]
        return (f"{self.family} tuned for {self.metric}: {self.score:.4f} (preset {self.preset_score:.4f}), "
                f"{len(self.trials)} composites scored, {self.build_seconds:.1f} s building programs, "
                f"{self.score_seconds:.1f} s scoring\n" + text_table(rows))


def tune(model: nn.Module, data, family: str = "gamma", per: str = "group", metric: Union[str, Callable] =
         "pixel-flipping", candidates: Optional[Sequence[float]] = None, *, preset=None, groups: int = 3,
         target=None, sweeps: int = 1, batch_size: int = 64, limit: Optional[int] = None, steps: int = 16,
         **explainer_options) -> TuneResult:
    """Search the ``family``'s parameter (``"gamma"``: Gamma's gamma, ``"epsilon"``: Epsilon's eps) per layer
    (``per="layer"``) or per group of layers (``per="group"``: ``groups`` contiguous groups in execution order,
    lower / middle / upper for 3) to maximise ``metric`` on ``data``, starting from ``preset`` (default: the
    family's rule on every conv and linear layer, ``"gamma"`` or ``"epsilon"``).

    ``data``: a tensor, ``(x, y)`` tensors, a data set or a DataLoader (``limit`` samples, ``batch_size`` at a
    time). ``metric`` (higher is better): ``"pixel-flipping"`` (area between random and most-relevant-first
    deletion, :func:`lrpfx.eval.pixel_flipping`), ``"aopc"`` (mean drop of the target logit along the
    most-relevant-first curve), ``"auc-difference"`` (LeRF AUC - MoRF AUC, :func:`lrpfx.eval.region_perturbation`)
    or a callable ``metric(model, x, relevance, target) -> float``, averaged over batches by size. ``target``:
    None (the model's argmax), an int or ``"label"``. ``steps``: deletion steps of the built-in metrics.
    ``sweeps``: passes over the groups. ``explainer_options`` go to each :class:`~lrpfx.Explainer`.
    """
    spec = _family(family)
    values_tried = _candidates(spec, candidates)
    if per not in ("layer", "group"):
        raise InputError(f"per must be 'layer' or 'group', got {per!r}")
    if not isinstance(groups, int) or groups < 1 or not isinstance(sweeps, int) or sweeps < 1:
        raise InputError(f"groups and sweeps must be positive ints, got groups={groups!r}, sweeps={sweeps!r}")
    batches = _batches(model, data, target, batch_size, limit)
    base, layers = _tuned_layers(model, batches[0][0], as_composite(preset if preset is not None else spec.preset),
                                 spec, explainer_options)
    named_groups = _groups(layers, per, groups)
    scorer = _Scorer(model, batches, metric, steps, explainer_options)

    def composite_of(state: Dict[str, Optional[float]]) -> Composite:
        return _composite(base, spec, named_groups, state)

    state: Dict[str, Optional[float]] = {g: None for g in named_groups}
    preset_score = best = scorer(base)
    trials = [{"group": None, "value": None, "values": dict(state), "score": preset_score}]
    for _ in range(sweeps):
        for g in named_groups:
            for value in values_tried:
                trial = {**state, g: value}
                score = scorer(composite_of(trial))
                trials.append({"group": g, "value": value, "values": trial, "score": score})
                if score > best:
                    best, state = score, trial
    layer_names = {g: tuple(name for name, _, _ in members) for g, members in named_groups.items()}
    metric_name = metric if isinstance(metric, str) else getattr(metric, "__name__", "metric")
    return TuneResult(composite_of(state), state, layer_names, best, preset_score, metric_name, family, trials,
                      scorer.build_seconds, scorer.score_seconds)


def faithfulness(model: nn.Module, data, rule, metric: Union[str, Callable] = "pixel-flipping", *, target=None,
                 batch_size: int = 64, limit: Optional[int] = None, steps: int = 16, **explainer_options) -> float:
    """The score :func:`tune` gives one rule or composite on ``data`` (same arguments): to compare a tuned
    composite with others on held-out data."""
    batches = _batches(model, data, target, batch_size, limit)
    return _Scorer(model, batches, metric, steps, explainer_options)(as_composite(rule))


def _batches(model, data, target, batch_size, limit) -> List[Tuple[torch.Tensor, torch.Tensor]]:
    """``(x, target)`` per batch on the model's device, read once."""
    device = model_device(model)
    batches = [(x.to(device), _target(model, x.to(device), y, target))
               for x, y in iter_batches(data, batch_size, limit)]
    if not batches:
        raise InputError("no data: pass a tensor, (x, y) tensors, a data set or a DataLoader with samples")
    return batches


# ---- what is tuned ------------------------------------------------------------------------------------------
def _family(family: str) -> Family:
    if family not in FAMILIES:
        raise InputError(f"unknown family {family!r}: tune searches one of {', '.join(FAMILIES)} "
                         "(Gamma's gamma or Epsilon's eps)")
    return FAMILIES[family]


def _candidates(spec: Family, candidates) -> Tuple[float, ...]:
    values = spec.candidates if candidates is None else tuple(candidates)
    if not values:
        raise InputError(f"candidates is empty: pass the {spec.parameter} values to try, e.g. "
                         f"candidates={list(spec.candidates[:4])}")
    for v in values:
        spec.rule(**{spec.parameter: v})  # the rule's own check: a RuleError naming the bad value
    return tuple(float(v) for v in values)


def _tuned_layers(model: nn.Module, x: torch.Tensor, base: Composite, spec: Family,
                  explainer_options) -> Tuple[Composite, List[Tuple[str, str, Rule]]]:
    """The preset (``"auto"`` resolved for this model) and ``(layer name, node name, preset rule)`` of the
    conv/linear nodes it gives the family's rule, in execution order."""
    options = {k: explainer_options[k] for k in ("frontend", "leaf_modules", "output") if k in explainer_options}
    gm = pipeline.graph_of(model, x, composite=base, **options)
    if base is AUTO:  # tuned entries are added to the preset the model would get, not to "auto"
        base = pipeline.default_composite(gm)[0]
    graph.hold_constant(gm, base.constants, base.constants_must_match)
    infos = graph.classify(gm)
    rules, _ = choose_rules(infos, base)
    layers = [(infos[n].name, n.name, rule) for n, rule in rules.items()
              if infos[n].kind in WEIGHTED_KINDS and isinstance(rule, spec.rule)]
    if not layers:
        raise InputError(f"the preset {base.label!r} gives no conv or linear layer of this model a "
                         f"{spec.rule.__name__} rule, so there is nothing to tune: pass preset= a composite that "
                         f"does (e.g. preset={spec.preset!r})")
    return base, layers


def _groups(layers, per: str, groups: int) -> Dict[str, List[Tuple[str, str, Rule]]]:
    if per == "layer":
        return {name: [(name, node, rule)] for name, node, rule in layers}
    count = min(groups, len(layers))
    names = GROUP_NAMES.get(count, tuple(f"group {i + 1}" for i in range(count)))
    bounds = [round(i * len(layers) / count) for i in range(count + 1)]
    return {names[i]: layers[bounds[i]:bounds[i + 1]] for i in range(count)}


def _composite(base: Composite, spec: Family, named_groups, state) -> Composite:
    """The preset with the family's parameter set per group; a layer whose rule is unchanged gets no entry, so
    the state of the preset's own values is the preset itself."""
    overrides = []
    for g, value in state.items():
        for _, node, rule in named_groups[g] if value is not None else ():
            changed = dataclasses.replace(rule, **{spec.parameter: value})
            if changed != rule:
                overrides.append((node, changed))
    if not overrides:
        return base
    label = f"{base.label}, tuned {spec.parameter}"
    return dataclasses.replace(base, by_name=tuple(overrides) + tuple(base.by_name), label=label)


# ---- scoring ------------------------------------------------------------------------------------------------
def _target(model: nn.Module, x: torch.Tensor, labels, target) -> torch.Tensor:
    if isinstance(target, str):
        if target != "label":
            raise InputError(f"target must be None, an int or 'label', got {target!r}")
        if labels is None:
            raise InputError("target='label' needs labels: pass data as (x, y) or a data set of (input, label)")
        return labels.to(x.device).long()
    return resolve_target(model, x, target)


class _Scorer:
    """The metric of a composite on every batch, weighted by batch size; one Explainer per composite."""

    def __init__(self, model, batches, metric, steps: int, explainer_options):
        if not callable(metric) and metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}: use one of {', '.join(METRICS)} or a callable "
                             "metric(model, x, relevance, target) -> float (higher is better)")
        if metric in ("pixel-flipping", "aopc") and batches[0][0].dim() < 3:
            raise InputError(f"metric {metric!r} deletes pixels of [B, C, *spatial] inputs; the input has shape "
                             f"{tuple(batches[0][0].shape)}: use metric='auc-difference' (it takes [B, features]) "
                             "or a callable")
        self.model, self.batches, self.metric, self.steps = model, batches, metric, steps
        self.options = explainer_options
        self.cache: Dict[Composite, float] = {}
        self.random_curves: Dict[int, torch.Tensor] = {}
        self.build_seconds = self.score_seconds = 0.0

    def __call__(self, composite: Composite) -> float:
        if composite not in self.cache:
            self.cache[composite] = self._score(composite)
        return self.cache[composite]

    def _score(self, composite: Composite) -> float:
        explainer = Explainer(self.model, composite, **self.options)
        started = time.perf_counter()
        explainer.program(self.batches[0][0])
        built = time.perf_counter()
        total, count = 0.0, 0
        for i, (x, t) in enumerate(self.batches):
            relevance = explainer(x, target=t).relevance
            raw = self._batch_score(i, x, relevance, t)
            value = _number(raw)
            if value is None or not math.isfinite(value):
                shown = f"a tensor of shape {tuple(raw.shape)}" if value is None and torch.is_tensor(raw) else raw
                raise InputError(f"the metric returned {shown} for composite {composite.label!r} on batch {i}: "
                                 "a score must be one finite number (a float or a one-element tensor; check the "
                                 "metric for divisions by zero or empty inputs)")
            total, count = total + value * x.shape[0], count + x.shape[0]
        self.build_seconds += built - started
        self.score_seconds += time.perf_counter() - built
        return total / count

    def _batch_score(self, i: int, x, relevance, t):
        if callable(self.metric):
            return self.metric(self.model, x, relevance, t)
        if self.metric == "auc-difference":
            return region_perturbation(self.model, x, relevance, t, steps=self.steps).auc_difference.mean()
        morf = flipping_curve(self.model, x, relevance.sum(1), t, self.steps)
        if self.metric == "aopc":
            return (morf[:, :1] - morf).mean(1).mean()
        return torch.trapezoid(self._random_curve(i, x, relevance, t) - morf, dx=1.0 / self.steps, dim=1).mean()

    def _random_curve(self, i: int, x, relevance, t) -> torch.Tensor:
        """Random-order deletion as :func:`lrpfx.eval.pixel_flipping` draws it (seed 0): the same for every
        composite, so drawn once per batch."""
        if i not in self.random_curves:
            scores = torch.rand(relevance.sum(1).shape, generator=torch.Generator().manual_seed(0))
            self.random_curves[i] = flipping_curve(self.model, x, scores.to(x.device), t, self.steps)
        return self.random_curves[i]


def _number(value) -> Optional[float]:
    """A metric's value as a float, or None when it is not one number."""
    try:
        return float(value)
    except (TypeError, ValueError, RuntimeError):
        return None
