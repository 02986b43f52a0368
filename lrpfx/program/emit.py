"""Emitters: the relevance step(s) one rule writes for one node, registered per (rule class, node kind).

``ProgramBuilder.step_for`` looks the emitter up (:func:`find_emitter`: the rule's class and its bases, the node's
kind before ``"*"``) and calls ``emitter(builder, info, rule, r)``; the emitter adds calls of pure rule functions
to the program and hands each input its share with ``builder.contribute``. A rule of your own needs no emitter
when it sets ``function`` (:mod:`lrpfx.rules.base`); :func:`emitter` registers one where it needs more.
"""
from __future__ import annotations

import math
import operator
from typing import Callable, Dict, Optional, Tuple

import torch.fx as fx

from .. import meta_keys
from ..errors import RuleError
from ..frontend.functions import backward_vjp, is_function_call
from ..graph.canonize import plain_relu
from ..graph.nodes import parameter_of, source_line
from ..kinds import WEIGHTED_KINDS, Kind, NodeInfo
from ..rules import (Epsilon, Gradient, MulUniform, Norm, NormIdentity, Pass, PatternAttribution, PatternNet, Rule,
                     Structural, WinnerTakesAll, affine, elementwise, experts, structural)
from ..rules.layers import AvgPool, ChannelAffine

Emitter = Callable[..., None]
EMITTERS: Dict[Tuple[type, str], Emitter] = {}
ANY_KIND = "*"


def emitter(rule_types, *kinds, per_value: Optional[Callable[..., bool]] = None):
    """Register the decorated ``fn(builder, info, rule, r)`` for rules of ``rule_types`` on nodes of ``kinds``
    (none: any kind). ``per_value(builder, info, rule)``: where it holds, the emitter also takes ``r`` in the
    modified-gradient form (relevance per value of the node, ``builder.is_per_value(r)``)."""
    rule_types = rule_types if isinstance(rule_types, tuple) else (rule_types,)

    def register(fn):
        fn.per_value = per_value
        for rule_type in rule_types:
            for kind in kinds or (ANY_KIND,):
                EMITTERS[(rule_type, str(kind))] = fn
        return fn
    return register


def find_emitter(rule: Rule, kind: str) -> Optional[Emitter]:
    """The most specific emitter: the rule's own class before its bases, the node's kind before any kind."""
    for cls in type(rule).__mro__:
        for key in ((cls, str(kind)), (cls, ANY_KIND)):
            if key in EMITTERS:
                return EMITTERS[key]
    return None


def takes_per_value(step: Emitter, b, info: NodeInfo) -> bool:
    """Whether ``step`` takes the relevance of ``info``'s node in the modified-gradient form."""
    test = getattr(step, "per_value", None)
    return b.modified_gradient and test is not None and test(b, info, b.rules.get(info.node))


def lrp0(b, rule: Rule) -> bool:
    """Whether the step of ``rule`` gives relevance per value: an epsilon-type rule with ``eps = 0`` (LRP-0 on
    affine maps, sums, pools, norms and bilinear products), whose steps are exact in that form (``R = x ⊙ G``
    with ``G`` carried like a gradient: ``Wᵀ G`` for an affine map, the same ``G`` for each summand)."""
    return b.modified_gradient and rule is not None and rule.exact_per_value and rule.eps == 0


def cannot_apply(info: NodeInfo, rule: Rule) -> RuleError:
    return RuleError(f"rule {rule.describe()} cannot apply to node '{info.node.name}' of kind '{info.kind}'"
                     f"{source_line(info.node)}")


# ---- affine maps -----------------------------------------------------------------------------------------------
def affine_step(b, info: NodeInfo, rule: Rule, w, bias, layer, x: fx.Node, r: fx.Node,
                z: Optional[fx.Node] = None, out_scale: Optional[fx.Node] = None) -> None:
    """One call of the rule's affine function ``(x, weight, bias, z, r, *, layer, ...)``."""
    n = info.node
    z = b.env[n] if z is None else z
    if lrp0(b, rule):  # Wᵀ(r / z) as the input's relevance per value: the product with x is left to who needs it
        per_value_in = b.is_per_value(r)
        args = [w, bias if rule.zero_bias and not per_value_in else None, None if per_value_in else z, r,
                b.described(x)]
        b.contribute(x, b.call(affine.epsilon_per_value, args, {"layer": layer, "out_scale": out_scale},
                               name=f"g_{n.name}_in"), per_value=True)
        return
    args = [b.env[x], w, bias, z, r]
    kwargs = {"layer": layer, **rule.arguments()}
    if out_scale is not None:
        kwargs["out_scale"] = out_scale
    if getattr(rule, "input_sign", False):
        kwargs["x_nonneg"] = b.infos[x].nonneg
    if getattr(rule, "positive_shortcut", False) and info.positive_only:
        kwargs["positive_only"] = True
        if info.relu_output is not None and rule.divides_by_relu():
            args[3], kwargs["z_is_relu"] = b.env[info.relu_output], True  # relu(z) in place of z: one pass less
    args += [_bound(b, n, which, value) for which, value in rule.extra_inputs()]
    b.contribute(x, b.call(rule.function, args, kwargs, name=f"r_{n.name}_in"))


def _bound(b, n: fx.Node, which: str, bound):
    if hasattr(bound, "shape"):
        return b.attr(f"constants.{n.name}_{which}", bound)
    return float(bound)


def _affine_per_value(bias) -> Callable[..., bool]:
    """LRP-0 on an affine map takes relevance per output value unless a bias it holds must leave ``z``."""
    return lambda b, info, rule: lrp0(b, rule) and not (rule.zero_bias and bias(b, info) is not None)


@emitter((Rule, Gradient), *WEIGHTED_KINDS, per_value=_affine_per_value(lambda b, info: info.bias))
def emit_weighted(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """Linear, conv, conv_transpose: the rule's affine function; a grouped expert product has no layer spec."""
    if info.layer is None:
        return emit_grouped(b, info, rule, r)
    if rule.function is None:
        raise cannot_apply(info, rule)
    affine_step(b, info, rule, b.value(info.weight), b.value(info.bias), info.layer, info.x, r)


def emit_grouped(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """The grouped product of a mixture-of-experts block (:mod:`lrpfx.rules.experts`): epsilon per expert."""
    n, x, offs, w = info.node, b.env[info.x], b.env[info.facts.offs], b.value(info.weight)
    if rule.epsilon_quotient:
        b.contribute(info.x, b.call(experts.grouped_epsilon, [x, w, offs, b.env[n], r], {"eps": rule.eps},
                                    name=f"r_{n.name}_in"))
    elif rule.follows_gradient:
        b.contribute(info.x, b.call(experts.grouped_transpose, [r, w, offs], name=f"r_{n.name}_in"))
    else:
        raise RuleError(f"rule {rule.describe()} cannot apply to node '{info.name}' ({info.op})"
                        f"{source_line(n)}: it is a linear map without a layer lrpfx can modify; assign "
                        f"Epsilon() or Gradient() with Composite(by_name={{'{info.name}': Epsilon()}})")


def emit_folded(b, bn: NodeInfo, _rule, r: fx.Node) -> None:
    """Conv/Linear followed by BatchNorm: one affine step with weights folded in the graph on every call (with
    the producer's rule: the BatchNorm's own is not used)."""
    producer = bn.fold_from
    rule, s = b.rules[producer.node], bn.facts
    stats = [b.value(s.mean), b.value(s.var), b.value(s.weight), b.value(s.bias)]
    if rule.epsilon_quotient and _weight_outweighs_output(b.gm, producer, bn):
        # Wᵀ(s·q) = (W·s)ᵀq: scaling the quotient per channel costs less than folding every weight
        scale_bias = b.call(affine.batchnorm_output_scale, [b.value(producer.bias), *stats], {"eps": float(s.eps)},
                            name=f"{producer.node.name}_bn_scale")
        scale = b.call(operator.getitem, [scale_bias, 0], name=f"{producer.node.name}_bn_scale_only")
        bias = b.call(operator.getitem, [scale_bias, 1], name=f"{producer.node.name}_folded_bias")
        affine_step(b, bn, rule, b.value(producer.weight), bias, producer.layer, producer.x, r, z=b.env[bn.node],
                    out_scale=scale)
        return
    folded = b.call(affine.fold_batchnorm, [b.value(producer.weight), b.value(producer.bias), *stats],
                    {"eps": float(s.eps), "channel_axis": 1 if producer.kind == Kind.CONV_TRANSPOSE else 0},
                    name=f"{producer.node.name}_folded")
    w = b.call(operator.getitem, [folded, 0], name=f"{producer.node.name}_folded_weight")
    bias = b.call(operator.getitem, [folded, 1], name=f"{producer.node.name}_folded_bias")
    affine_step(b, bn, rule, w, bias, producer.layer, producer.x, r, z=b.env[bn.node])


emit_folded.per_value = lambda b, bn, _rule: lrp0(b, b.rules[bn.fold_from.node]) \
    and not b.rules[bn.fold_from.node].zero_bias  # the folded map always has a bias


def _weight_outweighs_output(gm: fx.GraphModule, producer: NodeInfo, bn: NodeInfo) -> bool:
    """Whether the weight of a conv/linear followed by BatchNorm has more numbers than the layer's output (at the
    traced batch size): then the BatchNorm scale goes on the quotient, not into a freshly folded weight."""
    weight = parameter_of(gm, producer.weight)
    return producer.kind in (Kind.CONV, Kind.LINEAR) and weight is not None and weight.numel() > math.prod(bn.shape)


@emitter(Rule, Kind.BATCHNORM, per_value=lambda b, info, rule: lrp0(b, rule) and not rule.zero_bias)
def emit_channel_affine(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """An unfolded BatchNorm as the per-channel affine map ``x·scale + shift`` under an affine rule."""
    if rule.function is None:
        raise cannot_apply(info, rule)
    if rule.epsilon_quotient and rule.zero_bias and rule.eps == 0:
        # one input per output: LRP-0 without the shift gives it the whole relevance, also where x·scale = 0
        b.contribute(info.x, r)
        return
    s = info.facts
    scale_shift = b.call(affine.batchnorm_scale_shift, [b.value(s.mean), b.value(s.var), b.value(s.weight),
                                                        b.value(s.bias)], {"eps": float(s.eps)},
                         name=f"{info.node.name}_affine")
    w = b.call(operator.getitem, [scale_shift, 0])
    shift = b.call(operator.getitem, [scale_shift, 1])
    affine_step(b, info, rule, w, shift, ChannelAffine(len(info.shape)), info.x, r)


@emitter((PatternNet, PatternAttribution))
def emit_pattern(b, info: NodeInfo, rule: PatternNet, r: fx.Node) -> None:
    n = info.node
    if info.name not in rule.patterns:
        raise RuleError(f"no pattern for layer '{info.name}'{source_line(n)}: the patterns were fitted on another "
                        "model; fit them again with lrpfx.fit_patterns(model, loader)")
    w = b.value(info.weight)
    weight = parameter_of(b.gm, info.weight)
    a = rule.patterns[info.name]
    if weight is not None:
        if a.shape != weight.shape:
            raise RuleError(f"the pattern of '{info.name}' has shape {tuple(a.shape)}, its weight "
                            f"{tuple(weight.shape)}: fit the patterns again on this model")
        a = a.to(weight)
    pattern_node = b.attr(f"constants.{n.name}_pattern", a)
    b.contribute(info.x, b.call(affine.pattern, [b.env[info.x], w, pattern_node, r],
                                {"layer": info.layer, "attribution": rule.attribution},
                                name=f"r_{n.name}_in"))


# ---- elementwise, sums and pooling -----------------------------------------------------------------------------
def _keeps_dtype(b, info: NodeInfo) -> bool:
    """Whether the node's activation inputs have its dtype: through a cast, relevance per value would take the
    rounding of the cast value with it (``x ≠ y`` by one rounding), relevance does not."""
    dtype = info.node.meta[meta_keys.VALUE].dtype
    return all(a.meta[meta_keys.VALUE].dtype == dtype for a in info.node.all_input_nodes if a in b.infos)


def _pass_per_value(b, info: NodeInfo, rule: Rule) -> bool:
    """Relevance handed on unchanged is, per value, ``G·y/x``: ``G`` for identities, ``G`` where a plain ReLU
    passed its input, ``f(G)`` for a product or quotient with a constant ``f(x) = c·x``."""
    if b.infos[info.x].shape != info.shape or not _keeps_dtype(b, info):
        return False
    return info.kind in (Kind.IDENTITY, Kind.SCALE) or (
        info.kind == Kind.ACTIVATION and info.facts is not None and info.facts.relu and plain_relu(info, info.x))


@emitter(Pass, per_value=_pass_per_value)
def emit_pass(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    n = info.node
    if b.is_per_value(r):
        if info.kind == Kind.ACTIVATION:
            r = b.call(elementwise.relu_per_value, [b.env[n], r], name=f"g_{n.name}_in")
        elif info.kind == Kind.SCALE:  # the op itself on G in place of x: c·G, G/c, -G
            r = b.reapply(n, {info.x: r}, name=f"g_{n.name}_in")
        b.contribute(info.x, r, per_value=True)
    elif b.infos[info.x].shape == info.shape:
        b.contribute(info.x, r)  # the identity rule is no step at all
    else:
        b.contribute(info.x, b.call(elementwise.pass_to, [r, b.described(info.x), b.described(n)],
                                    name=f"r_{n.name}_in"))


def _drops_constant(info: NodeInfo, rule: Rule) -> bool:
    """zero_bias on a sum with a constant summand: the constant leaves ``z``."""
    return getattr(rule, "zero_bias", False) and len(info.facts.terms) < len(info.node.args[:2])


def _sum_per_value(b, info: NodeInfo, rule: Rule) -> bool:
    return lrp0(b, rule) and not _drops_constant(info, rule)


@emitter((Norm, Epsilon), Kind.ADD, per_value=_sum_per_value)
def emit_sum(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    n = info.node
    terms, signs = info.facts.terms, info.facts.signs
    if _sum_per_value(b, info, rule):  # every summand gets r / z per value
        per_value_in = b.is_per_value(r)
        shares = b.call(elementwise.split_sum,
                        [b.described(n) if per_value_in else b.env[n], r, *[b.described(t) for t in terms]],
                        {"signs": signs, "per_value": True, "r_per_value": per_value_in}, name=f"g_{n.name}_in")
        for i, term in enumerate(terms):
            b.contribute(term, b.call(operator.getitem, [shares, i]), per_value=True)
        return
    options = {"signs": signs, "eps": rule.eps}
    if _drops_constant(info, rule):
        options["zero_bias"] = True  # a constant summand is there to drop
    z = b.env[n]
    if info.relu_output is not None and rule.eps > 0 and not options.get("zero_bias"):
        z, options["z_is_relu"] = b.env[info.relu_output], True  # r vanishes where z <= 0: divide by relu(z) + eps
    shares = b.call(elementwise.split_sum, [z, r, *[b.env[t] for t in terms]], options, name=f"r_{n.name}_in")
    for i, term in enumerate(terms):
        b.contribute(term, b.call(operator.getitem, [shares, i]))


@emitter(MulUniform, Kind.MUL, per_value=lambda b, info, rule: True)
def emit_mul(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    operands = list(info.node.args[:2])
    per_value = b.is_per_value(r)
    if per_value:  # per value of one factor, the other factor's half: no product with the output needed
        shares = b.call(elementwise.mul_uniform_per_value, [r, *[b.env[o] for o in operands]],
                        name=f"g_{info.node.name}_in")
    else:
        shares = b.call(elementwise.mul_uniform, [r, *[b.described(o) for o in operands]],
                        name=f"r_{info.node.name}_in")
    for i, operand in enumerate(operands):
        b.contribute(operand, b.call(operator.getitem, [shares, i]), per_value=per_value)


_layer_norm_per_value = _affine_per_value(lambda b, info: info.bias)  # the norm's shift is its bias


@emitter(NormIdentity, Kind.LAYER_NORM, per_value=_layer_norm_per_value)
def emit_layer_norm(b, info: NodeInfo, rule: NormIdentity, r: fx.Node) -> None:
    f = info.facts
    if _layer_norm_per_value(b, info, rule):
        per_value_in = b.is_per_value(r)
        b.contribute(info.x, b.call(
            elementwise.layer_norm_per_value, [b.env[info.x], b.value(info.weight), None if per_value_in else
                                               b.env[info.node], r],
            {"normalized_ndim": f.ndim, "ln_eps": float(f.eps), "centered": f.centered, "groups": f.groups},
            name=f"g_{info.node.name}_in"), per_value=True)
        return
    b.contribute(info.x, b.call(
        elementwise.layer_norm, [b.env[info.x], b.value(info.weight), b.value(info.bias), b.env[info.node], r],
        {"normalized_ndim": f.ndim, "ln_eps": float(f.eps), "eps": rule.eps, "zero_bias": rule.zero_bias,
         "centered": f.centered, "groups": f.groups}, name=f"r_{info.node.name}_in"))


@emitter((Norm, Epsilon), Kind.AVG_POOL, per_value=lambda b, info, rule: lrp0(b, rule) and info.layer is not None)
def emit_avg_pool(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    if info.layer is None:
        return b.replay(info, r, norm_eps=rule.eps)
    if lrp0(b, rule):
        return affine_step(b, info, rule, None, None, info.layer, info.x, r)
    b.contribute(info.x, b.call(affine.epsilon, [b.env[info.x], None, None, b.env[info.node], r],
                                {"layer": info.layer, "eps": rule.eps}, name=f"r_{info.node.name}_in"))


@emitter((Norm, Epsilon), Kind.REDUCE)
def emit_reduce(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """Sums, means and other linear maps that mix values (interpolation, fold, cumsum, einsum or matmul with a
    constant): the proportional rule ``x ⊙ Jᵀ(R ⊘ stab(z))``, LRP's affine rule without a bias."""
    b.replay(info, r, norm_eps=rule.eps)


@emitter(Norm, Kind.MAX_POOL)
def emit_max_pool_as_avg(b, info: NodeInfo, rule: Norm, r: fx.Node) -> None:
    """Max pooling read as average pooling over the same windows (the Norm alternative in docs/rules.md)."""
    pool = info.layer
    if pool is None or pool.adaptive or any(d != 1 for d in pool.dilation):
        raise RuleError(f"Norm() on max pooling needs plain windows without dilation; node '{info.name}' is "
                        f"{info.op}: use WinnerTakesAll() there")
    layer = AvgPool(pool.dim, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)
    b.contribute(info.x, b.call(affine.norm, [b.env[info.x], r], {"layer": layer, "eps": rule.eps},
                                name=f"r_{info.node.name}_in"))


@emitter((WinnerTakesAll, Structural, Gradient), Kind.MAX_POOL, per_value=lambda b, info, rule: _keeps_dtype(b, info))
def emit_max_pool(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """All of a window's relevance to its maximum; the winners come from the forward's own pooling. The winner
    is copied to the output, so relevance per value is routed the same way."""
    if info.layer is None:  # max/min/top-k over an axis: routed by the op's own gradient
        return b.replay(info, r)
    n = info.node
    args = [b.env[info.x], r] if b.is_tuple_node(n) else [b.described(info.x), r, b.pool_winners(info)]
    b.contribute(info.x, b.call(structural.max_pool_wta, args, {"pool": info.layer}, name=f"r_{n.name}_in"),
                 per_value=b.is_per_value(r))


@emitter((Structural, Gradient), Kind.STRUCTURAL,
         per_value=lambda b, info, rule: info.facts.copies and _keeps_dtype(b, info))
def emit_structural(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """Moves and copies route relevance back by their VJP; for an op that copies elements the same VJP routes
    relevance per value (each output element is one input element)."""
    if not info.facts.reshape:
        return b.replay(info, r)
    b.contribute(info.x, b.call(structural.reshape_back, [b.described(info.x), r, b.described(info.node)],
                                name=f"r_{info.node.name}_in"), per_value=b.is_per_value(r))


@emitter((Structural, Gradient, WinnerTakesAll))
def emit_replay(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    if rule.follows_gradient and is_function_call(info.node):
        return emit_backward(b, info, r)
    b.replay(info, r)


def emit_backward(b, info: NodeInfo, r: fx.Node) -> None:
    """``Gradient()`` on a custom ``torch.autograd.Function``: the vector-Jacobian product of its own backward."""
    n = info.node
    values = list(n.args)
    if n.kwargs or not all(isinstance(v, fx.Node) or not isinstance(v, (list, tuple, dict)) for v in values):
        raise RuleError(f"Gradient() on '{info.name}'{source_line(n)} needs its tensors as positional arguments")
    active = tuple(i for i, v in enumerate(values) if isinstance(v, fx.Node) and v in b.infos)
    pulled = b.call(backward_vjp, [b.attr(f"functions.{n.name}", n.target), r,
                                   *[b.env[v] if isinstance(v, fx.Node) else v for v in values]],
                    {"active": active}, name=f"r_{n.name}_in")
    for j, i in enumerate(active):
        b.contribute(values[i], b.call(operator.getitem, [pulled, j]))


# ---- rules of one pure function (users' rules) -------------------------------------------------------------------
@emitter(Rule)
def emit_function(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    """A rule that brings its own pure ``function(x, out, r, **arguments)`` for a single-input node."""
    if rule.function is None or info.x is None:
        raise cannot_apply(info, rule)
    n = info.node
    b.contribute(info.x, b.call(rule.function, [b.env[info.x], b.env[n], r], rule.arguments(),
                                name=f"r_{n.name}_in"))


# the attention and recurrence emitters live in their own module; importing it registers them
from . import emit_attention  # noqa: E402,F401
