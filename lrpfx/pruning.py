"""Pruning by relevance: a copy of a model with its least relevant units masked.

:func:`prune` scores each unit (output channel, neuron or attention head, :mod:`lrpfx.parameter_units`) by a
parameter relevance ``{name: tensor}`` — from ``Explainer(...)(x, parameters=True)`` or summed over a data set by
``explain_dataset(..., parameters=True)`` — and zeroes the weights and bias of the units with the smallest
``|relevance|``. The same call prunes by any other per-parameter score: ``{n: p.abs()}`` for weight magnitude,
random tensors for a random order.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, Iterable, Mapping, Optional

import torch
from torch import nn

from .errors import InputError
from .parameter_units import (UNIT_KINDS, Heads, ParameterRelevance, Unit, attention_heads, head_sums,
                              matching, module_units, unit_sums)

SCOPES = ("layer", "global")


def prune(model: nn.Module, relevance: Mapping[str, torch.Tensor], fraction: float, unit: str = "channel", *,
          scope: str = "layer", keep: Optional[Iterable[str]] = None,
          heads: Optional[Mapping[str, int]] = None) -> nn.Module:
    """A copy of ``model`` with the ``fraction`` least relevant units of kind ``unit`` masked; ``model`` itself
    is not changed.

    ``relevance`` maps parameter names of ``model`` to tensors shaped like them (a parameter relevance, or any
    per-parameter score). A unit's score is ``|Σ|`` of its entries: an output ``"channel"`` of a Conv or a
    ``"neuron"`` of a Linear (its weight slice and bias entry), or an attention ``"head"`` (its input columns of
    the output projection, :mod:`lrpfx.parameter_units`). Masking sets those weights and bias entries to zero;
    shapes stay as they are (nothing is removed), so the copy runs and explains like the model. A zeroed unit
    outputs 0 (a BatchNorm folded into its layer is masked with it, :class:`~lrpfx.parameter_units.Unit`); a
    normalisation that is not folded adds its constant.

    ``scope="layer"`` masks ``floor(fraction · n)`` units in each layer of ``n`` units; ``"global"`` ranks all
    units of the kind together (scores of different layers must then be comparable, as relevance is). ``keep``:
    layer names (globs) never pruned; by default the layer called last (the classifier) when ``relevance`` is
    from ``parameters=True``, else the last Linear/Conv module. ``heads`` as for
    :func:`lrpfx.parameter_units.attention_heads`.
    """
    if unit not in UNIT_KINDS:
        raise InputError(f"unit must be one of {UNIT_KINDS}, got {unit!r}")
    if scope not in SCOPES:
        raise InputError(f"scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise InputError(f"fraction must be a number in [0, 1) (the share of units to mask), got {fraction!r}")
    check_relevance(model, relevance)
    groups = _groups(model, relevance, unit, keep, heads)
    masked = select(_scores(relevance, groups), fraction, scope)
    pruned = copy.deepcopy(model)
    with torch.no_grad():
        params = dict(pruned.named_parameters())
        for name, indices in masked.items():
            _mask(params, groups[name], indices)
    return pruned


def check_relevance(model: nn.Module, relevance: Mapping[str, torch.Tensor]) -> None:
    """Every entry of ``relevance`` names a parameter of ``model`` and has its shape."""
    if not isinstance(relevance, Mapping) or not relevance:
        raise InputError("relevance must be a non-empty dict {parameter name: tensor} (e.g. "
                         "Explainer(model)(x, parameters=True).parameters)")
    params = dict(model.named_parameters())
    for name, value in relevance.items():
        if name not in params:
            raise InputError(f"relevance holds '{name}', which is not a parameter of this model: is it the "
                             "relevance of another model? Compute it for this one")
        if not isinstance(value, torch.Tensor) or value.shape != params[name].shape:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"relevance of '{name}' has shape {shape}, the parameter {tuple(params[name].shape)}: "
                             "is it the relevance of another model?")


def _groups(model, relevance, unit: str, keep, heads) -> Dict[str, object]:
    """The layers (or attention blocks) whose units may be masked, by name."""
    if unit == "head":
        groups: Dict[str, object] = {n: b for n, b in attention_heads(model, heads).items()
                                     if b.out_weight in relevance}
    else:
        units = relevance.units if isinstance(relevance, ParameterRelevance) else module_units(model)
        groups = {n: u for n, u in units.items() if u.kind == unit and u.weight in relevance}
        if keep is None:
            keep = [relevance.last_layer] if isinstance(relevance, ParameterRelevance) and relevance.last_layer \
                else list(module_units(model))[-1:]
    for name in matching(list(groups), keep or ()):
        del groups[name]
    if not groups:
        raise InputError(f"the model has no {unit}s to prune that the relevance covers (and keep= leaves): "
                         f"choose another unit of {UNIT_KINDS}")
    return groups


def _scores(relevance, groups) -> Dict[str, torch.Tensor]:
    return {name: (head_sums(relevance, g) if isinstance(g, Heads) else unit_sums(relevance, g)).abs().double()
            for name, g in groups.items()}


def select(scores: Mapping[str, torch.Tensor], fraction: float, scope: str = "layer") -> Dict[str, torch.Tensor]:
    """``{layer: indices}`` of the units to mask: the lowest scores, ``floor(fraction · n)`` per layer
    (``scope="layer"``) or of all units together (``"global"``); ties go to the lower index."""
    if scope == "layer":
        return {name: _lowest(s, math.floor(fraction * s.numel())) for name, s in scores.items()}
    names = list(scores)
    flat = torch.cat([scores[n].cpu() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    position = torch.cat([torch.arange(scores[n].numel()) for n in names])
    chosen = _lowest(flat, math.floor(fraction * flat.numel()))
    return {n: position[chosen[owner[chosen] == i]].sort().values for i, n in enumerate(names)}


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    order = torch.sort(scores.cpu(), stable=True).indices
    return order[:count].sort().values


def _mask(params: Dict[str, nn.Parameter], group, indices: torch.Tensor) -> None:
    if indices.numel() == 0:
        return
    if isinstance(group, Heads):
        w = params[group.out_weight]
        width = w.shape[-1] // group.num_heads
        columns = (indices[:, None] * width + torch.arange(width)).flatten().to(w.device)
        w[:, columns] = 0
        return
    assert isinstance(group, Unit)
    params[group.weight].index_fill_(group.axis, indices.to(params[group.weight].device), 0)
    for name in ((group.bias,) if group.bias is not None else ()) + group.also:
        params[name].index_fill_(0, indices.to(params[name].device), 0)
