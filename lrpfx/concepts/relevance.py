"""Conditional relevance and concept relevance, run through an :class:`lrpfx.Explainer`'s relevance program.

``explain_conditions`` runs K conditions as one relevance pass with a leading condition axis (the same axis as
``targets=``): the masks ``[K, 1, ...]`` multiply the relevance at the conditioned nodes, so the part of the pass
above them runs once when all conditions share their class, and only the part below carries the K axis.
Conditions are run ``batch_size`` at a time; each chunk is one call of the program (its forward included).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..api import (Explanation, _check_target, _check_targets, _primary_input, _token_ids, check_output,
                   split_inputs)
from ..locks import eval_mode, running
from ..errors import InputError, TargetError
from .conditions import Concept, Condition, parse_conditions
from .plan import ConditionPlan, plan_for


def explain_conditions(explainer, x, conditions, *, target=None, targets=None, intermediate=False,
                       batch_size: Optional[int] = None, values: Sequence[str] = ()) -> Explanation:
    """Conditional relevance of ``x`` for each condition, ``relevance[:, k]`` for ``conditions[k]``.

    ``conditions``: a list of dicts ``{"y": class, node: indices, ...}`` (``"y"`` may be left out: the class is
    then ``target``, the argmax when that is None). Indices are concept numbers of the node's default concept
    (channels of ``[B, C, ...]`` values, units of the last axis of linear and token values) or a selection of
    another concept (``Heads(4)[1]``, ``Channels(axis=-1)[7]``, ``MaskFunction(fn, n)[i]``).
    ``intermediate``: True, or the names of the nodes whose relevance is returned (``[B, K, ...]``);
    ``values``: names of nodes whose forward values are returned in ``activations`` (``[B, ...]``).
    ``batch_size``: conditions per relevance pass (all at once by default).
    """
    return _explain(explainer, x, conditions, target, targets, intermediate, batch_size, values)[0]


def _explain(explainer, x, conditions, target, targets, intermediate, batch_size, values):
    if targets is not None:
        raise TargetError("conditions= takes the class of each condition from its 'y' entry; do not pass targets=")
    parsed = parse_conditions(conditions)
    if batch_size is not None and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                   or batch_size < 1):
        raise InputError(f"the condition batch size must be a positive int, got {batch_size!r}")
    inputs = split_inputs(x)
    explainer._check_inputs(inputs.tensors)
    layouts = explainer.__dict__.setdefault("_condition_layouts", {})
    plan = plan_for(parsed, intermediate, values, layouts)
    entry = explainer._entry(inputs, False, False, plan)
    step = batch_size or len(parsed)
    chunks = [_run_chunk(explainer, entry, plan, inputs, parsed[i:i + step], target)
              for i in range(0, len(parsed), step)]
    return _assemble(chunks, inputs, plan), plan


def _chunk_target(chunk: Sequence[Condition], target, out_shape, batch: int, device):
    """One class (or None) for all conditions of a chunk when they agree — the pass above the masks then runs
    once — else a ``[B, K]`` class matrix."""
    ys = [cond.y for cond in chunk]
    if all(y == ys[0] for y in ys):
        return _check_target(ys[0] if ys[0] is not None else target, out_shape, batch, device)
    if any(y is None for y in ys):
        if target is None or (isinstance(target, torch.Tensor) and target.numel() != 1):
            raise TargetError("some conditions name a class 'y' and some do not: give every condition a 'y' or "
                              "pass one class as target=")
        ys = [int(target) if y is None else y for y in ys]
    return _check_targets(torch.tensor(ys).unsqueeze(0).expand(batch, -1), out_shape, batch, device)


def _run_chunk(explainer, entry, plan: ConditionPlan, inputs, chunk, target):
    first = inputs.tensors[0]
    batch = first.shape[0]
    t = _chunk_target(chunk, target, entry.out_shape, batch, first.device)
    param = next(iter(explainer.model.parameters()), None)
    dtype = param.dtype if param is not None else first.dtype
    args = list(inputs.tensors)
    if plan.layout.has_conditions:
        args.append(plan.tensors(chunk, dtype, first.device))
    with running(), eval_mode(explainer.model), torch.no_grad():
        result = entry.run(*args, t)
    output, relevances = result[0], list(result[1])
    check_output(output, explainer.allow_nonfinite)
    rest = list(result[2:])
    rename = plan.layout.rename
    inter = {rename.get(k, k): v for k, v in rest.pop(0).items()} if plan.record else {}
    vals = {rename.get(k, k): v for k, v in rest.pop(0).items()} if plan.values else {}
    K = len(chunk)
    relevances = [None if r is None else _with_condition_axis(r, _relevance_ndim(x, r), K)
                  for x, r in zip(inputs.tensors, relevances)]
    inter = {name: _with_condition_axis(r, plan.layout.ndim[name], K) for name, r in inter.items()}
    return output, relevances, inter, vals


def _relevance_ndim(x: torch.Tensor, r: torch.Tensor) -> int:
    """Dims of one input's relevance without a condition axis (token ids: the embedding's, one more)."""
    return x.dim() if x.is_floating_point() else x.dim() + 1


def _with_condition_axis(r: torch.Tensor, ndim: int, K: int) -> torch.Tensor:
    """``[K, B, ...]`` -> ``[B, K, ...]``; a relevance no condition reached (``[B, ...]``) repeated K times."""
    if r.dim() == ndim:
        return r.unsqueeze(1).expand(r.shape[0], K, *r.shape[1:])
    return r.movedim(0, 1)


def _assemble(chunks, inputs, plan) -> Explanation:
    output = chunks[0][0]
    cat = lambda parts: None if parts[0] is None else torch.cat(parts, dim=1)  # noqa: E731
    relevances = [cat([c[1][i] for c in chunks]) for i in range(len(chunks[0][1]))]
    inter = {name: cat([c[2][name] for c in chunks]) for name in chunks[0][2]}
    vals = chunks[0][3]
    if inputs.names is None:
        relevance = relevances[0] if len(relevances) == 1 else tuple(relevances)
        return Explanation(relevance, output, inter, token_ids=_token_ids(inputs.tensors[0], relevances[0]),
                           activations=vals)
    named = dict(zip(inputs.names, relevances))
    main = _primary_input(named)
    return Explanation(named[main], output, inter, inputs=named,
                       token_ids=_token_ids(dict(zip(inputs.names, inputs.tensors))[main], named[main]),
                       activations=vals)


# ---- concept relevance ----------------------------------------------------------------------------------------
@dataclass
class ConceptRelevance:
    """Per layer: ``relevance[name]`` ``[B, (K,) n]`` — each concept's relevance summed over its extent —, and
    ``activation[name]`` ``[B, n]`` — each concept's peak activation (max over its extent)."""

    relevance: Dict[str, torch.Tensor]
    activation: Dict[str, torch.Tensor]
    explanation: Explanation = field(repr=False)

    def top(self, layer: str, k: int = 5, by: str = "relevance") -> Tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` largest concepts per sample (and condition): ``(values, indices)``."""
        table = {"relevance": self.relevance, "activation": self.activation}.get(by)
        if table is None:
            raise InputError(f"by must be 'relevance' or 'activation', got {by!r}")
        if layer not in table:
            raise InputError(f"layer '{layer}' was not asked for; layers: {list(table)}")
        scores = table[layer]
        return scores.topk(min(k, scores.shape[-1]), dim=-1)


def concept_relevance(explainer, x, layers: Sequence[str], *, target=None, conditions=None,
                      concepts: Optional[Dict[str, Concept]] = None, batch_size: Optional[int] = None,
                      ) -> ConceptRelevance:
    """Relevance and activation of every concept of ``layers`` in one pass: for the class ``target`` (None:
    argmax), or under ``conditions`` (then ``relevance[name]`` is ``[B, K, n]``). ``concepts`` overrides a
    layer's default concept (channels of conv values, units of linear and token values)."""
    layers = list(layers)
    if not layers:
        raise InputError("layers must name at least one node")
    squeeze = conditions is None
    if conditions is None:
        conditions = [{}]
    e, plan = _explain(explainer, x, conditions, target, None, tuple(layers), batch_size, tuple(layers))
    layout = plan.layout
    relevance, activation = {}, {}
    for name in layers:
        shape = layout.shapes[name]
        concept = (concepts or {}).get(name) or layout.concepts[name]
        r = concept.per_concept(e.intermediate[name], shape, "sum")
        relevance[name] = r[:, 0] if squeeze else r
        activation[name] = concept.per_concept(e.activations[name], shape, "max")
    return ConceptRelevance(relevance, activation, e)
