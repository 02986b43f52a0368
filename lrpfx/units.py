"""Relevance per attention head and per hidden neuron, from one run that keeps the attention fused.

A head's relevance is the relevance of its output ``A V`` (``[B, H, T, D]``), summed over its positions and
features: what the head hands to the output projection, which mixes the heads. A neuron's relevance is that of
one unit of the hidden layer an MLP's down projection reads (after its activation or gate). The program records
only these values; every other step runs as in a plain call, so a fused attention stays one step (asking for
``intermediate=True`` instead would record the attention's inner steps and split it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
import torch.fx as fx

from . import meta_keys
from .errors import InputError
from .kinds import Kind, NodeInfo, consumers_of
from .program.builder import intermediate_keys

_HIDDEN = (Kind.ACTIVATION, Kind.MUL)  # what a down projection reads: an activation's output or a gate's product


@dataclass(frozen=True)
class UnitLayout:
    """Which recorded values are heads (by their key: the name reported for them) and which are neurons, and
    the number of axes each value has (batch included), to sum the relevance per unit."""

    heads: Dict[str, str] = field(default_factory=dict)  # program key -> reported name
    neurons: Dict[str, str] = field(default_factory=dict)
    ndim: Dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class UnitPlan:
    """Records the attention outputs and the down projections' inputs (hashable: keys the program cache)."""

    layouts: Dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def layout(self) -> UnitLayout:
        return self.layouts[self]

    def builder_options(self, gm: fx.GraphModule, infos: Dict[fx.Node, NodeInfo]) -> Dict:
        keys = intermediate_keys(infos)
        consumers = consumers_of(infos)
        layout = UnitLayout()
        recorded = set()
        for n, info in infos.items():
            if n not in keys:
                continue
            if _is_attention_output(info):
                projection = _projection_after(n, infos, consumers)
                layout.heads[keys[n]] = keys[projection].rsplit(".", 1)[0] if projection in keys and \
                    "." in keys[projection] else keys[n]
            elif info.kind == Kind.LINEAR and info.x in keys and infos[info.x].kind in _HIDDEN:
                layout.neurons[keys[info.x]] = keys[n]
                n = info.x
            else:
                continue
            recorded.add(n)
            layout.ndim[keys[n]] = len(n.meta[meta_keys.VALUE].shape)
        self.layouts[self] = layout
        return {"intermediate": recorded}


@dataclass
class UnitRelevance:
    """``heads[name]``: ``[B, H]`` relevance per head of the attention ``name`` (``[B, H, T]`` with
    ``per_token=True``); ``neurons[name]``: ``[B, N]`` relevance per input unit of the projection ``name``
    (``[B, T, N]`` per token). With several targets a ``K`` axis follows the batch. ``explanation``: the run's
    input relevance and output."""

    heads: Dict[str, torch.Tensor]
    neurons: Dict[str, torch.Tensor]
    explanation: object


def unit_relevance(explainer, x, target=None, *, targets=None, per_token: bool = False) -> UnitRelevance:
    """Relevance per attention head and per hidden neuron of ``explainer``'s model for ``x`` (one run; see the
    module docstring). ``target``/``targets`` as for :class:`~lrpfx.Explainer`."""
    plan = UnitPlan(explainer.__dict__.setdefault("_unit_layouts", {}))  # equal plans share one layout per model
    e = explainer._explain(x, target, targets, True, plan)
    layout = plan.layout
    if not layout.heads and not layout.neurons:
        raise InputError("the model has no attention (a softmax times values, [B, H, T, D]) and no projection "
                         "that reads an activation: nothing to report per head or neuron; for channels of a "
                         "convolution use lrpfx.concepts")
    heads = {name: _per_unit(e.intermediate[key], layout.ndim[key], unit_axis=1, keep_tokens=per_token)
             for key, name in layout.heads.items()}
    neurons = {name: _per_unit(e.intermediate[key], layout.ndim[key], unit_axis=-1, keep_tokens=per_token)
               for key, name in layout.neurons.items()}
    e.intermediate.clear()  # the recorded values are reported per unit, not as a partial intermediate dict
    return UnitRelevance(heads, neurons, e)


def _per_unit(r: torch.Tensor, ndim: int, unit_axis: int, keep_tokens: bool) -> torch.Tensor:
    """Sum ``r`` (a value of ``ndim`` axes, possibly with a target axis after the batch) to one number per unit
    (and per token where asked). Heads: ``[B, H, T, D]``; neurons: ``[B, (T,) N]``."""
    lead = r.dim() - ndim + 1  # batch (and target) axes
    if unit_axis == 1:  # heads: sum the features, then the positions unless kept
        r = r.sum(-1)
        return r if keep_tokens else r.sum(-1)
    axes = tuple(range(lead, r.dim() - 1))
    if keep_tokens or not axes:
        return r
    return r.sum(axes)


def _is_attention_output(info: NodeInfo) -> bool:
    """``A V`` with ``A`` a softmax: the heads' outputs, ``[B, H, T, D]``."""
    return info.kind == Kind.MATMUL and info.facts is not None and info.facts.softmax_operand == 0 \
        and len(info.node.meta[meta_keys.VALUE].shape) == 4


def _projection_after(n: fx.Node, infos, consumers) -> Optional[fx.Node]:
    """The linear map the heads' outputs reach through moves and copies (the output projection), if any."""
    while len(consumers[n]) == 1:
        n = consumers[n][0]
        if infos[n].kind == Kind.LINEAR:
            return n
        if infos[n].kind != Kind.STRUCTURAL:
            return None
    return None
