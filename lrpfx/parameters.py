"""Relevance of parameters: how much of the explained output each weight and bias of an affine layer carries.

An affine rule splits the relevance ``R_j`` of an output into contributions ``c_ji`` of the inputs (and one of
the bias); the input's relevance sums them over ``j``. The same contributions belong to the weight ``w_ji`` that
makes them: summed over the batch (and over the positions a convolution slides over) they are the weight's
relevance. Under LRP-epsilon ``c_ji = w_ji x_i R_j / stab(z_j)``, so ``R_w = w ⊙ Σ_batch (x ⊗ s)`` with
``s = R / stab(z)``: the weight's VJP of the layer applied to ``s``, times the weight; the bias gets
``R_b = b ⊙ Σ s``. The other rules split ``z`` into signed terms, each a (modified weight, input part, quotient)
triple — gamma's ``(w + γw⁺) x⁺``, alpha-beta's ``w⁺x⁺``, ... — and a parameter gets the terms it makes
(:func:`_terms`). ``R`` is the relevance program's own relevance at the layer's output, and ``x`` comes from a run
of the recorded graph, so every affine node counts: modules, functional ``F.linear`` calls (the in-projection
of ``nn.MultiheadAttention``), layers called several times (their uses add up). With a BatchNorm folded into
a layer's rule the rule splits the folded map: the layer's weights get the folded weights' relevance, the
BatchNorm's bias the folded bias's (as for the layer fused by ``torch.nn.utils.fusion.fuse_conv_bn_eval``).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import reduce
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.fx as fx
from torch import nn

from . import pipeline, rebind
from .api import Explainer, Explanation, split_inputs, _signature
from .composites import single
from .errors import RuleError, TargetError
from .kinds import WEIGHTED_KINDS
from .locks import eval_mode
from .program.builder import intermediate_keys
from .rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus
from .rules.affine import fold_batchnorm
from .rules.layers import ConvTranspose
from .rules.stabilize import divide
from .parameter_units import ParameterRelevance, attention_heads, layer_units
from .parameter_units import per_head, per_unit  # noqa: F401 (lrpfx.parameters.per_unit)

SUPPORTED = (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Flat, WSquare)
SUPPORTED_NAMES = ", ".join(r.name for r in SUPPORTED)


class Fold(NamedTuple):
    """A BatchNorm folded into an affine node's rule: its statistics (the model's tensors) and parameter names."""

    mean: torch.Tensor
    var: torch.Tensor
    weight: Optional[str]
    bias: Optional[str]
    eps: float


class AffineUse(NamedTuple):
    """One call of an affine op in the recorded graph: where its input, relevance and parameters are."""

    node: str  # the graph node
    key: str  # its key in Explanation.intermediate (the BatchNorm's when one is folded in)
    x: fx.Node
    layer: object  # the layer spec (lrpfx.rules.layers)
    weight: str  # parameter names in the model
    bias: Optional[str]
    rule: object
    fold: Optional[Fold] = None


@dataclass
class _Plan:
    """What parameter relevance needs of a model and input signature: the recorded graph and its affine uses."""

    state: rebind.ModelState
    gm: fx.GraphModule
    uses: List[AffineUse]


_plans: "weakref.WeakKeyDictionary[Explainer, Dict[tuple, _Plan]]" = weakref.WeakKeyDictionary()


def explain_parameters(explainer: Explainer, x, target=None, intermediate: bool = False) -> Explanation:
    """``explainer(x, target=target)`` with ``.parameters`` filled in: a
    :class:`~lrpfx.parameter_units.ParameterRelevance` ``{name: relevance}`` for the weight and bias of every
    Linear and Conv op, shaped like the parameter and summed over the batch (what
    ``Explainer(...)(x, parameters=True)`` returns)."""
    inputs = split_inputs(x)
    plan = _plan(explainer, inputs)
    explanation = explainer(x, target=target, intermediate=True)
    values = _inputs_of(plan, explainer.model, inputs)
    params = dict(explainer.model.named_parameters())
    found: Dict[str, torch.Tensor] = {}
    for use in plan.uses:
        r = explanation.intermediate[use.key]
        if not isinstance(r, torch.Tensor) or r.shape != _output_shape(use, values, params):
            raise RuleError(f"affine node '{use.node}' has no relevance of its own output shaped like it; "
                            "parameter relevance cannot be taken there")
        w = params[use.weight].detach()
        b = params[use.bias].detach() if use.bias is not None else None
        bias_name = use.bias
        if use.fold is not None:  # the rule splits the folded map's contributions (lrpfx.rules.affine)
            w, b = _folded(use, w, b, params)
            bias_name = use.fold.bias or use.bias
        rw, rb = use_relevance(use.rule, use.layer, values[use.x.name], w, b, r, node=use.node)
        _add(found, use.weight, rw)
        if bias_name is not None:
            _add(found, bias_name, rb)
    units = layer_units(explainer.model, plan.uses)
    explanation.parameters = ParameterRelevance(found, units, attention_heads(explainer.model))
    if not intermediate:
        explanation.intermediate = {}
    return explanation


def parameter_relevance(model: nn.Module, x: torch.Tensor, target=None, *, eps: float = 0.0) -> ParameterRelevance:
    """``{name: relevance}`` for the weight and bias of every Linear and Conv op of ``model`` under LRP-epsilon
    with ``eps`` everywhere (LRP-0 by default). ``target`` as for :class:`~lrpfx.Explainer`."""
    return explain_parameters(Explainer(model, single(Epsilon(eps))), x, target).parameters


def _folded(use: AffineUse, w, b, params):
    """Weight and bias of ``BatchNorm(affine(x))`` as one map: ``w_ji·scale_j`` is still one weight's
    contribution, the folded bias ``(b - μ)·scale + β`` the BatchNorm's bias's."""
    f = use.fold
    bn_weight = params[f.weight].detach() if f.weight is not None else None
    bn_bias = params[f.bias].detach() if f.bias is not None else None
    return fold_batchnorm(w, b, f.mean, f.var, bn_weight, bn_bias, eps=f.eps,
                          channel_axis=1 if isinstance(use.layer, ConvTranspose) else 0)


def _add(found: Dict[str, torch.Tensor], name: str, value: torch.Tensor) -> None:
    found[name] = found[name] + value if name in found else value


# ---- the rules' contribution splits ---------------------------------------------------------------------------
def use_relevance(rule, layer, x, w, b, r, node: str = "?") -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Relevance of the weight and bias of one affine call under ``rule``: the sum of the contributions each
    parameter makes to the rule's split of the output relevance ``r``."""
    rw, rb = torch.zeros_like(w), None if b is None else torch.zeros_like(b)
    for weight_factor, x_part, bias_factor, s in _terms(rule, layer, x, w, b, r, node):
        gw, gb = _outer(layer, x_part, w, b, s)
        rw = rw + weight_factor * gw
        if b is not None and bias_factor is not None:
            rb = rb + bias_factor * gb
    return rw, rb


def _outer(layer, x, w, b, s):
    """``Σ_batch x ⊗ s`` shaped like the weight and ``Σ s`` shaped like the bias: the VJP of the layer with
    respect to its parameters (the layer is linear in them, so the point they are taken at does not matter)."""
    if b is None:
        _, pullback = torch.func.vjp(lambda w_: layer.forward(x, w_), w)
        return pullback(s)[0], None
    _, pullback = torch.func.vjp(lambda w_, b_: layer.forward(x, w_, b_), w, b)
    return pullback(s)


def _terms(rule, layer, x, w, b, r, node):
    """The rule's split of ``z`` as ``(weight factor, input part, bias factor, quotient s)`` terms: the weight's
    relevance is ``Σ factor ⊙ outer(part, s)``, the bias's ``Σ bias factor ⊙ Σ s``; their sum over outputs
    is ``Σ r`` wherever the rule conserves."""
    pos, neg = (lambda t: t.clamp(min=0)), (lambda t: t.clamp(max=0))
    keep = b is not None and not getattr(rule, "zero_bias", False)

    def z_of(*parts, bias=None):
        out = sum(layer.forward(xp, wp) for xp, wp in parts)
        return out if bias is None else out + layer.bias_view(bias)

    if isinstance(rule, Epsilon):
        s = divide(r, z_of((x, w), bias=b if keep else None), rule.eps)
        return [(w, x, b if keep else None, s)]
    if isinstance(rule, Gamma):
        g, z = rule.gamma, layer.forward(x, w, b)
        w_up, w_down = w + g * pos(w), w + g * neg(w)
        b_up, b_down = (b + g * pos(b), b + g * neg(b)) if keep else (None, None)
        s_up = torch.where(z > 0, divide(r, z_of((pos(x), w_up), (neg(x), w_down), bias=b_up), rule.eps), 0.0)
        s_down = torch.where(z < 0, divide(r, z_of((pos(x), w_down), (neg(x), w_up), bias=b_down), rule.eps), 0.0)
        return [(w_up, pos(x), b_up, s_up), (w_down, neg(x), None, s_up),
                (w_down, pos(x), b_down, s_down), (w_up, neg(x), None, s_down)]
    if isinstance(rule, (AlphaBeta, ZPlus)):
        alpha, beta = (rule.alpha, rule.beta) if isinstance(rule, AlphaBeta) else (1.0, 0.0)
        wp, wn = pos(w), neg(w)
        bp, bn = (pos(b), neg(b)) if keep else (None, None)
        s_p = alpha * divide(r, z_of((pos(x), wp), (neg(x), wn), bias=bp), rule.eps)
        terms = [(wp, pos(x), bp, s_p), (wn, neg(x), None, s_p)]
        if beta != 0:
            s_n = -beta * divide(r, z_of((pos(x), wn), (neg(x), wp), bias=bn), rule.eps)
            terms += [(wn, pos(x), bn, s_n), (wp, neg(x), None, s_n)]
        return terms
    if isinstance(rule, ZBox):
        low = torch.as_tensor(rule.low, dtype=x.dtype, device=x.device).expand_as(x)
        high = torch.as_tensor(rule.high, dtype=x.dtype, device=x.device).expand_as(x)
        s = divide(r, z_of((x, w), (low, -pos(w)), (high, -neg(w))), rule.eps)
        return [(w, x, None, s), (-pos(w), low, None, s), (-neg(w), high, None, s)]
    if isinstance(rule, Flat):  # every connection of the receptive field gets an equal share
        ones = torch.ones_like(w)
        s = divide(r, layer.forward(torch.ones_like(x), ones), rule.eps)
        return [(ones, torch.ones_like(x), None, s)]
    if isinstance(rule, WSquare):
        squared_bias = b * b if keep else None
        s = divide(r, z_of((torch.ones_like(x), w * w), bias=squared_bias), rule.eps)
        return [(w * w, torch.ones_like(x), squared_bias, s)]
    raise RuleError(f"affine node '{node}' has rule {rule.describe()}, which splits no relevance among the "
                    f"layer's contributions; parameter relevance is defined for the rules {SUPPORTED_NAMES}: "
                    f"assign one of them to it, e.g. Composite(by_name={{'{node}': Epsilon()}})")


# ---- the recorded graph: affine uses and their inputs ---------------------------------------------------------
def _plan(explainer: Explainer, inputs) -> _Plan:
    """The affine uses of ``explainer``'s model for inputs like ``inputs``, cached per explainer and signature
    while the model's structure and tensors stay the same."""
    state = rebind.model_state(explainer.model)
    plans = _plans.setdefault(explainer, {})
    key = _signature(inputs)
    plan = plans.get(key)
    if plan is None or not state.same(plan.state):
        plan = plans[key] = _build_plan(explainer, inputs, state)
    return plan


def _build_plan(explainer: Explainer, inputs, state) -> _Plan:
    """Record, classify and assign as the Explainer's build does (:func:`lrpfx.pipeline.assign`) to learn each
    affine node's rule, input and parameters."""
    model = explainer.model
    with eval_mode(model):
        gm, _ = pipeline.front_end(model, inputs.tensors, inputs.names, dict(inputs.options), explainer.frontend,
                                   explainer.leaf_modules, explainer.output, explainer.dynamic,
                                   explainer.composite)
    _, infos, rules, _ = pipeline.assign(gm, explainer.composite)
    keys = intermediate_keys(infos)
    names = {id(t): name for name, t in model.named_parameters()}
    uses = []
    for node, info in infos.items():
        if info.kind not in WEIGHTED_KINDS or info.layer is None or node not in rules:
            continue
        weight = _parameter_name(gm, model, names, info.weight, info.name)
        bias = None if info.bias is None else _parameter_name(gm, model, names, info.bias, info.name)
        fold, key = None, keys.get(node)
        if info.folded_into is not None:
            fold, key = _fold(gm, model, names, infos[info.folded_into]), keys[info.folded_into]
        uses.append(AffineUse(node.name, key, info.x, info.layer, weight, bias, rules[node], fold))
    return _Plan(state, gm, uses)


def _fold(gm, model, names: Dict[int, str], bn) -> Fold:
    stats = bn.facts
    optional = lambda ref: None if ref is None else _parameter_name(gm, model, names, ref, bn.name)  # noqa: E731
    return Fold(_tensor(gm, model, stats.mean), _tensor(gm, model, stats.var), optional(stats.weight),
                optional(stats.bias), float(stats.eps))


def _tensor(gm, model, ref) -> torch.Tensor:
    """A tensor the graph reads: a path in the model, or a get_attr node of the recorded graph."""
    if isinstance(ref, str):
        return reduce(getattr, ref.split("."), model).detach()
    return reduce(getattr, ref.target.split("."), gm).detach()


def _parameter_name(gm, model, names: Dict[int, str], ref, layer: str) -> str:
    """The model's name of a parameter an affine node uses (a path string, or a get_attr node)."""
    if isinstance(ref, str) and ref in dict(model.named_parameters()):
        return ref
    if isinstance(ref, fx.Node) and ref.op == "get_attr":
        tensor = reduce(getattr, ref.target.split("."), gm)
        if id(tensor) in names:
            return names[id(tensor)]
    raise RuleError(f"the weight or bias of affine node '{layer}' ({ref}) is not a parameter of the model (a "
                    "computed or constant tensor): parameter relevance is defined for the model's parameters")


def _inputs_of(plan: _Plan, model: nn.Module, inputs) -> Dict[str, torch.Tensor]:
    """The value of each affine use's input in a run of the recorded graph on ``inputs``."""
    wanted = {use.x.name for use in plan.uses}
    seen: Dict[str, torch.Tensor] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, n):
            value = super().run_node(n)
            if n.name in wanted:
                seen[n.name] = value.detach()
            return value

    with eval_mode(model), torch.no_grad():  # an fx graph calls the model's modules; an exported one is in eval
        Recorder(plan.gm).run(*inputs.tensors)
    return seen


def _output_shape(use: AffineUse, values, params) -> torch.Size:
    with torch.no_grad():
        return use.layer.forward(values[use.x.name], params[use.weight]).shape


def check_parameter_call(targets, conditions) -> None:
    """``parameters=True`` explains one target per sample."""
    if targets is not None or conditions is not None:
        raise TargetError("parameters=True sums the parameter relevance of one target per sample: pass target=, "
                          "not targets= or conditions= (explain each target in its own call)")
