"""Build the relevance program: the forward graph followed by one relevance step per node, in reverse.

Input: the traced GraphModule, the classified nodes (:mod:`lrpfx.graph.classify`, annotated by :mod:`lrpfx.graph.canonize`) and
one rule per node (:mod:`lrpfx.composites`). Output: a new ``fx.GraphModule`` with inputs ``(*inputs, target)``
that returns ``(output, input_relevances)`` — plus a dict of intermediate relevances when asked. Each relevance
step is a call of a pure rule function (or, for ops replayed by their VJP, of a :class:`Replay` module), so the
program's code reads as the algorithm. Parameters are shared with the user's model, never copied or modified.
"""
from __future__ import annotations

import copy
import math
import operator
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from .. import rules as R
from ..errors import RuleError
from ..graph.classify import OUT_OF_PLACE_FUNCTIONS, NodeInfo, attribute, out_of_place_method, parameter_of
from ..rules import affine, attention, elementwise, experts, recurrent, structural
from ..rules.layers import AvgPool, ChannelAffine
from .targets import initial_relevance
from ..frontend.fx import source_line

_AFFINE_FUNCTIONS = {R.Epsilon: affine.epsilon, R.Gamma: affine.gamma, R.ZPlus: affine.zplus,
                     R.AlphaBeta: affine.alpha_beta, R.Flat: affine.flat, R.WSquare: affine.wsquare,
                     R.Gradient: affine.gradient}


class MethodCall:
    """``MethodCall("view")(x, 2, -1)`` is ``x.view(2, -1)``: a Tensor method as a plain function."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, self_, *args, **kwargs):
        return getattr(self_, self.name)(*args, **kwargs)

    def __repr__(self):
        return f"Tensor.{self.name}"


def fill_tuple(values, *relevances, present: tuple):
    """Relevance of a tuple-valued node: given pieces at ``present`` indices, zeros elsewhere. An item may itself
    be a flat tuple (an LSTM's ``(out, (h, c))``)."""
    pieces = dict(zip(present, relevances))
    r, v = relevances[0], values[present[0]]
    while isinstance(r, tuple):
        r, v = r[0], v[0]
    lead = r.shape[:r.dim() - v.dim()]
    return tuple(pieces[i] if i in pieces else _zeros_like_value(v, lead) for i, v in enumerate(values))


def _zeros_like_value(v, lead):
    if isinstance(v, (tuple, list)):
        return tuple(_zeros_like_value(u, lead) for u in v)
    return v.new_zeros((*lead, *v.shape))


def add_relevance(a, b):
    """Sum of two relevances of one value: tensors, or (nested) tuples of them for tuple-valued nodes."""
    if isinstance(a, tuple):
        return tuple(add_relevance(x, y) for x, y in zip(a, b))
    return a + b


def gate_relevance(r, gate: torch.Tensor, *, ndim: int):
    """Conditional relevance (:mod:`lrpfx.concepts`): ``r`` times a per-condition gate ``[K]`` of 0/1, broadcast
    over a value of ``ndim`` axes; ``r`` gains the leading condition axis if it had none."""
    return r * gate.view(-1, *([1] * ndim)).to(r.dtype)


def rule_kwargs(rule: R.Rule) -> Dict[str, Any]:
    """The hyper-parameters of an affine rule as keyword arguments of its rule function."""
    if isinstance(rule, R.AlphaBeta):
        return {"alpha": float(rule.alpha), "beta": float(rule.beta), "eps": rule.eps, "zero_bias": rule.zero_bias}
    if isinstance(rule, R.Gamma):
        return {"gamma": float(rule.gamma), "eps": rule.eps, "zero_bias": rule.zero_bias}
    if isinstance(rule, (R.Epsilon, R.ZPlus, R.WSquare)):
        return {"eps": float(rule.eps), "zero_bias": rule.zero_bias}
    if isinstance(rule, (R.Flat, R.ZBox)):
        return {"eps": float(rule.eps)}
    return {}


class ProgramBuilder:
    """Writes one relevance program. Used once: ``ProgramBuilder(...).build()``."""

    def __init__(self, gm: fx.GraphModule, infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, R.Rule], *,
                 start: str, times_input: bool, intermediate, masked: Sequence[fx.Node] = (),
                 gated_edges: Sequence[tuple] = (), gated_nodes: Sequence[fx.Node] = (), values: Sequence[fx.Node] = ()):
        """``intermediate``: True (every node), False, or a set of nodes whose relevance is returned. The rest is
        for conditional relevance (:mod:`lrpfx.concepts`): the program then takes an input ``conditions``, a tuple
        of one mask per ``masked`` node (multiplied into the relevance arriving there), then one gate ``[K]`` per
        ``gated_edges`` (consumer, producer) contribution and one per ``gated_nodes`` relevance; ``values`` are
        nodes whose forward values are returned as a last output."""
        self.gm, self.infos, self.rules = gm, infos, rules
        self.masked = {n: i for i, n in enumerate(masked)}
        self.edge_gates = {e: len(masked) + i for i, e in enumerate(gated_edges)}
        self.node_gates = {n: len(masked) + len(gated_edges) + i for i, n in enumerate(gated_nodes)}
        self.values, self.conditions, self.emitting = tuple(values), None, None
        self.condition_items: Dict[int, fx.Node] = {}
        self.start, self.times_input, self.intermediate = start, times_input, intermediate
        self.graph = fx.Graph()
        self.env: Dict[fx.Node, fx.Node] = {}
        self.attrs: Dict[str, Any] = {}
        self.attr_nodes: Dict[str, fx.Node] = {}
        self.contrib: Dict[fx.Node, List[fx.Node]] = defaultdict(list)
        self.descriptions: Dict[fx.Node, fx.Node] = {}
        self.target: Optional[fx.Node] = None
        self.tuple_contrib: Dict[fx.Node, Dict[int, List[fx.Node]]] = defaultdict(lambda: defaultdict(list))

    # ---- helpers ------------------------------------------------------------------------------------------
    def call(self, fn, args, kwargs=None, name=None) -> fx.Node:
        return self.graph.create_node("call_function", fn, tuple(args), kwargs or {}, name=name)

    def attr(self, path: str, value: Any) -> fx.Node:
        if path not in self.attr_nodes:
            self.attrs[path] = value
            self.attr_nodes[path] = self.graph.get_attr(path)
        return self.attr_nodes[path]

    def value(self, source) -> Optional[fx.Node]:
        """A graph value for a parameter path (``"features.0.weight"``), an original node, or None."""
        if source is None:
            return None
        if isinstance(source, fx.Node):
            return self.env[source]
        if isinstance(source, str):
            return self.attr("params." + source, attribute(self.gm, source))
        raise TypeError(f"unexpected parameter source {source!r}")

    def contribute(self, node: fx.Node, relevance: fx.Node) -> None:
        gate = self.edge_gates.get((self.emitting, node))
        if gate is not None:  # this contribution bypasses a conditioned node
            relevance = self.call(gate_relevance, [relevance, self.condition(gate)],
                                  {"ndim": len(node.meta["lrpfx_value"].shape)})
        self.contrib[node].append(relevance)

    def condition(self, i: int) -> fx.Node:
        if i not in self.condition_items:
            self.condition_items[i] = self.call(operator.getitem, [self.conditions, i], name=f"condition_{i}")
        return self.condition_items[i]

    def conditioned(self, n: fx.Node, r: fx.Node) -> fx.Node:
        """The relevance at ``n`` times its condition mask, or gated where it bypasses a condition."""
        if n in self.masked:
            r = self.call(operator.mul, [r, self.condition(self.masked[n])], name=f"r_{n.name}_masked")
        if n in self.node_gates:
            r = self.call(gate_relevance, [r, self.condition(self.node_gates[n])],
                          {"ndim": len(n.meta["lrpfx_value"].shape)}, name=f"r_{n.name}_gated")
        return r

    def after(self, n: fx.Node, fn, args, kwargs=None, name=None) -> fx.Node:
        """A node computed in the forward, right after original node ``n``'s value: a step that needs only a
        summary of the value (its shape, a per-row statistic) then does not keep the value alive."""
        anchor = self.env[n]
        if anchor.op == "placeholder":
            anchor = self.target  # the last placeholder
        with self.graph.inserting_after(anchor):
            return self.graph.create_node("call_function", fn, tuple(args), kwargs or {}, name=name)

    def described(self, n: fx.Node) -> fx.Node:
        """Shape, dtype and device of ``n``'s value (:class:`structural.Described`), taken in the forward."""
        if n not in self.descriptions:
            self.descriptions[n] = self.after(n, structural.describe, [self.env[n]], name=f"{n.name}_described")
        return self.descriptions[n]

    # ---- forward -----------------------------------------------------------------------------------------
    def copy_forward(self):
        inputs = [n for n in self.gm.graph.nodes if n.op == "placeholder"]
        for n in inputs:  # first: the target placeholder (it has a default) must follow them
            self.env[n] = self.graph.node_copy(n, lambda a: self.env[a])
        if self.masked or self.edge_gates or self.node_gates:
            self.conditions = self.graph.placeholder("conditions")
        target = self.target = self.graph.placeholder("target", default_value=None)
        output = None
        for n in self.gm.graph.nodes:
            if n.op == "placeholder":
                continue
            elif n.op == "get_attr":
                new = self.attr("params." + n.target, attribute(self.gm, n.target))
            elif n.op == "output":
                output = n.args[0]
                continue
            else:
                new = self.graph.node_copy(n, lambda a: self.env[a])
                self._make_out_of_place(new)
            self.env[n] = new
        return inputs, target, output

    def _make_out_of_place(self, new: fx.Node) -> None:
        """In-place ops would overwrite values the relevance steps still read; run them out of place."""
        if new.op == "call_module":
            module = self.gm.get_submodule(new.target)
            if getattr(module, "inplace", False):
                module = copy.copy(module)  # shallow: shares parameters, only the flag differs
                module.inplace = False
            self.attrs[new.target] = module
        elif new.op == "call_function":
            new.target = OUT_OF_PLACE_FUNCTIONS.get(new.target, new.target)
            if new.kwargs.get("inplace"):
                new.kwargs = {**new.kwargs, "inplace": False}
        elif new.op == "call_method":
            new.target = out_of_place_method(new.target)

    # ---- relevance ---------------------------------------------------------------------------------------
    def collect(self, n: fx.Node) -> Optional[fx.Node]:
        """The total relevance of node ``n``'s value: the sum over its consumers' contributions."""
        parts = list(self.contrib.get(n, ()))
        if n in self.tuple_contrib:  # pieces taken one by one; the whole tuple may be consumed as well (cat)
            pieces = self.tuple_contrib[n]
            present = tuple(sorted(pieces))
            summed = [self._sum(pieces[i], add=add_relevance) for i in present]
            filled = self.call(fill_tuple, [self.env[n], *summed], {"present": present}, name=f"r_{n.name}")
            return self._sum([filled, *parts], add=add_relevance)
        if not parts:
            return None
        return self._sum(parts, add=add_relevance)

    def _input_relevance(self, n: fx.Node, embedded: Optional[List[fx.Node]]) -> Optional[fx.Node]:
        """An input's relevance: that of its embeddings for token ids; zeros for a float input nothing reached;
        None for an input that carries none (a mask)."""
        if embedded:
            return self._sum(embedded)
        r = self.collect(n)
        if r is None and n in self.infos:
            r = self.call(torch.zeros_like, [self.env[n]], name=f"r_{n.name}")
        return None if r is None else self._times_input(n, r)

    def _times_input(self, n: fx.Node, r: fx.Node) -> fx.Node:
        if not self.times_input:
            return r
        return self.call(operator.mul, [r, self.env[n]], name=f"r_{n.name}_times_input")

    def _sum(self, parts: List[fx.Node], add=operator.add) -> fx.Node:
        total = parts[0]
        for p in parts[1:]:
            total = self.call(add, [total, p])
        return total

    def build(self) -> fx.GraphModule:
        inputs, target, output = self.copy_forward()
        r_out = self.call(initial_relevance, [self.env[output], target], {"start": self.start}, name="r_output")
        self.contribute(output, r_out)
        recorded: Dict[fx.Node, fx.Node] = {}
        input_relevance: Dict[fx.Node, Optional[fx.Node]] = {}
        embedded: Dict[fx.Node, List[fx.Node]] = defaultdict(list)  # token-id input -> its embeddings' relevance
        for n in reversed(list(self.gm.graph.nodes)):
            info = self.infos.get(n)
            if n.op == "placeholder":
                r = input_relevance[n] = self._input_relevance(n, embedded.get(n))
                if info is not None:
                    recorded[n] = r
                continue
            r = self.collect(n) if info is not None else None
            if r is None:
                continue
            if info.kind == "embedding":  # where relevance stops: it is the ids' relevance, [..., H]
                r = recorded[n] = self._times_input(n, r)
                embedded[info.extra["source"]].append(r)
                continue
            r = self.conditioned(n, r)
            recorded[n] = r
            self.emitting = n
            self.emit(info, r)
        outputs = (self.env[output], tuple(input_relevance.get(n) for n in inputs))
        if self.intermediate:
            keys = intermediate_keys(self.infos)
            ordered = {keys[n]: recorded[n] for n in self.gm.graph.nodes if n in recorded and n in keys
                       and (self.intermediate is True or n in self.intermediate)}
            outputs = outputs + (ordered,)
        if self.values:
            keys = intermediate_keys(self.infos)
            outputs = outputs + ({keys[n]: self.env[n] for n in self.values},)
        self.graph.output(outputs)
        self.graph.lint()
        return fx.GraphModule(self.attrs, self.graph, class_name="RelevanceProgram")

    # ---- one relevance step per kind ------------------------------------------------------------------------
    def emit(self, info: NodeInfo, r: fx.Node) -> None:
        rule = self.rules[info.node]
        kind = info.kind
        n = info.node
        if n.op == "call_function" and n.target is operator.getitem and _is_tuple_node(n.args[0]):
            self.emit_tuple_item(n, r)
            return
        if kind == "batchnorm" and info.fold_from is not None:
            self.emit_folded(info, r)
        elif isinstance(rule, R.PatternNet):
            self.emit_pattern(info, rule, r)
        elif kind == "linear" and info.layer is None:  # no layer spec (a grouped expert product): by its VJP
            self.emit_linear_map(info, rule, r)
        elif kind in ("linear", "conv", "conv_transpose") and not isinstance(rule, (R.Pass, R.Structural)):
            self.emit_affine(info, rule, self.value(info.weight), self.value(info.bias), info.layer, info.x, r)
        elif kind == "batchnorm" and isinstance(rule, tuple(_AFFINE_FUNCTIONS) + (R.ZBox,)) \
                and not isinstance(rule, R.Gradient):
            self.emit_channel_affine(info, rule, r)
        elif isinstance(rule, R.Pass):
            if self.infos[info.x].shape == info.shape:
                self.contribute(info.x, r)  # the identity rule is no step at all
            else:
                self.contribute(info.x, self.call(elementwise.pass_to, [r, self.described(info.x),
                                                                        self.described(n)], name=f"r_{n.name}_in"))
        elif kind == "add" and isinstance(rule, (R.Norm, R.Epsilon)):
            self.emit_sum(info, rule, r)
        elif kind == "softmax" and isinstance(rule, R.Softmax):
            dim = info.extra["dim"]
            lse = self.after(n, attention.log_normaliser, [self.env[info.x], self.env[n]], {"dim": dim},
                             name=f"{n.name}_lse")
            self.contribute(info.x, self.call(attention.softmax_from_output, [self.env[n], lse, r], {"dim": dim},
                                              name=f"r_{n.name}_in"))
        elif kind == "matmul" and isinstance(rule, (R.MatmulUniform, R.ConstantAttention)):
            self.emit_matmul(info, rule, r)
        elif kind == "recurrent" and isinstance(rule, R.RecurrentLRP):
            self.emit_recurrent(info, rule, r)
        elif kind == "mul" and isinstance(rule, R.MulUniform):
            operands = list(n.args[:2])
            shares = self.call(elementwise.mul_uniform, [r, *[self.described(o) for o in operands]],
                               name=f"r_{n.name}_in")
            for i, operand in enumerate(operands):
                self.contribute(operand, self.call(operator.getitem, [shares, i]))
        elif kind == "layer_norm" and isinstance(rule, R.NormIdentity):
            self.contribute(info.x, self.call(
                elementwise.layer_norm,
                [self.env[info.x], self.value(info.weight), self.value(info.bias), self.env[n], r],
                {"normalized_ndim": info.extra["normalized_ndim"], "ln_eps": float(info.extra["ln_eps"]),
                 "eps": rule.eps, "zero_bias": rule.zero_bias, "centered": info.extra.get("centered", True)},
                name=f"r_{n.name}_in"))
        elif kind == "structural" and info.extra.get("reshape") and isinstance(rule, (R.Structural, R.Gradient)):
            self.contribute(info.x, self.call(structural.reshape_back, [self.described(info.x), r, self.described(n)],
                                              name=f"r_{n.name}_in"))
        elif kind == "max_pool" and isinstance(rule, R.Norm):
            self.contribute(info.x, self.call(affine.norm, [self.env[info.x], r],
                                              {"layer": _max_pool_as_avg(info), "eps": rule.eps},
                                              name=f"r_{n.name}_in"))
        elif kind == "max_pool" and info.layer is not None and isinstance(rule, (R.WinnerTakesAll, R.Structural,
                                                                                    R.Gradient)):
            args = [self.env[info.x], r] if _is_tuple_node(n) else [self.described(info.x), r, self.pool_winners(info)]
            self.contribute(info.x, self.call(structural.max_pool_wta, args, {"pool": info.layer},
                                              name=f"r_{n.name}_in"))
        elif kind == "avg_pool" and info.layer is not None and isinstance(rule, (R.Norm, R.Epsilon)):
            self.contribute(info.x, self.call(affine.epsilon, [self.env[info.x], None, None, self.env[n], r],
                                              {"layer": info.layer, "eps": rule.eps}, name=f"r_{n.name}_in"))
        elif kind in ("avg_pool", "reduce") and isinstance(rule, (R.Norm, R.Epsilon)):
            self.emit_replay(info, r, norm_eps=rule.eps)
        elif isinstance(rule, (R.Structural, R.Gradient, R.WinnerTakesAll)):
            self.emit_replay(info, r)
        else:  # assignment validation should have caught this
            raise RuleError(f"rule {rule.describe()} cannot apply to node '{n.name}' of kind '{kind}'"
                            f"{source_line(n)}")

    def pool_winners(self, info: NodeInfo) -> fx.Node:
        """The winners of a max pooling, taken by the forward's own pooling (which then returns them too): the
        relevance step neither pools again nor keeps the pooling's input."""
        n, old = info.node, self.env[info.node]
        with self.graph.inserting_before(old):
            pair = self.call(structural.max_pool_with_winners, [self.env[info.x]], {"pool": info.layer},
                             name=f"{n.name}_with_winners")
            values = self.call(operator.getitem, [pair, 0], name=f"{n.name}_pooled")
            winners = self.call(operator.getitem, [pair, 1], name=f"{n.name}_winners")
        old.replace_all_uses_with(values)
        self.graph.erase_node(old)
        self.env[n] = values
        return winners

    def emit_tuple_item(self, n: fx.Node, r: fx.Node) -> None:
        """``pieces[i]`` or ``pieces[a:b:c]`` of a tuple-valued node (split, chunk, unbind): the relevance goes to
        the pieces it names, with negative indices and slices resolved against the tuple's recorded length."""
        source, index = n.args[0], n.args[1]
        positions = range(source.meta["lrpfx_value"].tuple_len)
        if isinstance(index, slice):
            for j, i in enumerate(positions[index]):
                self.tuple_contrib[source][i].append(self.call(operator.getitem, [r, j]))
        else:
            self.tuple_contrib[source][positions[index]].append(r)

    def emit_affine(self, info: NodeInfo, rule: R.Rule, w, b, layer, x: fx.Node, r: fx.Node,
                    z: Optional[fx.Node] = None, out_scale: Optional[fx.Node] = None) -> None:
        n = info.node
        z = self.env[n] if z is None else z
        args = [self.env[x], w, b, z, r]
        kwargs = {"layer": layer, **rule_kwargs(rule)}
        if out_scale is not None:
            kwargs["out_scale"] = out_scale
        if isinstance(rule, (R.Gamma, R.ZPlus, R.AlphaBeta)):
            kwargs["x_nonneg"] = self.infos[x].nonneg
        if isinstance(rule, (R.Gamma, R.Epsilon)) and info.positive_only:
            kwargs["positive_only"] = True
            relu = info.extra.get("relu_output")
            if relu is not None and not rule.zero_bias and (isinstance(rule, R.Gamma) or rule.eps > 0):
                args[3], kwargs["z_is_relu"] = self.env[relu], True  # relu(z) in place of z: one pass less
        if isinstance(rule, R.ZBox):
            args += [self._bound(n, "low", rule.low), self._bound(n, "high", rule.high)]
            fn = affine.zbox
        else:
            fn = _AFFINE_FUNCTIONS[type(rule)]
        self.contribute(x, self.call(fn, args, kwargs, name=f"r_{n.name}_in"))

    def emit_pattern(self, info: NodeInfo, rule: R.PatternNet, r: fx.Node) -> None:
        n = info.node
        if info.name not in rule.patterns:
            raise RuleError(f"no pattern for layer '{info.name}'{source_line(n)}: the patterns were fitted on another "
                            "model; fit them again with lrpfx.fit_patterns(model, loader)")
        w = self.value(info.weight)
        weight = parameter_of(self.gm, info.weight)
        a = rule.patterns[info.name]
        if weight is not None:
            if a.shape != weight.shape:
                raise RuleError(f"the pattern of '{info.name}' has shape {tuple(a.shape)}, its weight "
                                f"{tuple(weight.shape)}: fit the patterns again on this model")
            a = a.to(weight)
        pattern_node = self.attr(f"constants.{n.name}_pattern", a)
        self.contribute(info.x, self.call(affine.pattern, [self.env[info.x], w, pattern_node, r],
                                          {"layer": info.layer, "attribution": isinstance(rule, R.PatternAttribution)},
                                          name=f"r_{n.name}_in"))

    def _bound(self, n: fx.Node, which: str, bound):
        if isinstance(bound, torch.Tensor):
            return self.attr(f"constants.{n.name}_{which}", bound)
        return float(bound)

    def emit_folded(self, bn: NodeInfo, r: fx.Node) -> None:
        """Conv/Linear followed by BatchNorm: one affine step with weights folded in the graph on every call."""
        producer = bn.fold_from
        rule = self.rules[producer.node]
        e = bn.extra
        if isinstance(rule, R.Epsilon) and _weight_outweighs_output(self.gm, producer, bn):
            # Wᵀ(s·q) = (W·s)ᵀq: scaling the quotient per channel costs less than folding every weight
            scale_bias = self.call(affine.batchnorm_output_scale,
                                   [self.value(producer.bias), self.value(e["mean"]), self.value(e["var"]),
                                    self.value(e["bn_weight"]), self.value(e["bn_bias"])], {"eps": float(e["eps"])},
                                   name=f"{producer.node.name}_bn_scale")
            scale = self.call(operator.getitem, [scale_bias, 0], name=f"{producer.node.name}_bn_scale_only")
            b = self.call(operator.getitem, [scale_bias, 1], name=f"{producer.node.name}_folded_bias")
            self.emit_affine(bn, rule, self.value(producer.weight), b, producer.layer, producer.x, r,
                             z=self.env[bn.node], out_scale=scale)
            return
        folded = self.call(
            affine.fold_batchnorm,
            [self.value(producer.weight), self.value(producer.bias), self.value(e["mean"]), self.value(e["var"]),
             self.value(e["bn_weight"]), self.value(e["bn_bias"])],
            {"eps": float(e["eps"]), "channel_axis": 1 if producer.kind == "conv_transpose" else 0},
            name=f"{producer.node.name}_folded")
        w = self.call(operator.getitem, [folded, 0], name=f"{producer.node.name}_folded_weight")
        b = self.call(operator.getitem, [folded, 1], name=f"{producer.node.name}_folded_bias")
        if isinstance(rule, (R.Pass, R.Structural)):
            raise RuleError(f"rule {rule.describe()} cannot apply to affine node '{producer.name}'")
        self.emit_affine(bn, rule, w, b, producer.layer, producer.x, r, z=self.env[bn.node])

    def emit_linear_map(self, info: NodeInfo, rule: R.Rule, r: fx.Node) -> None:
        """The grouped product of a mixture-of-experts block (:mod:`lrpfx.rules.experts`): epsilon per expert."""
        n, x, offs, w = info.node, self.env[info.x], self.env[info.extra["offs"]], self.value(info.weight)
        if isinstance(rule, R.Epsilon):
            self.contribute(info.x, self.call(experts.grouped_epsilon, [x, w, offs, self.env[n], r],
                                              {"eps": rule.eps}, name=f"r_{n.name}_in"))
        elif isinstance(rule, R.Gradient):
            self.contribute(info.x, self.call(experts.grouped_transpose, [r, w, offs], name=f"r_{n.name}_in"))
        else:
            raise RuleError(f"rule {rule.describe()} cannot apply to node '{info.name}' ({info.op})"
                            f"{source_line(n)}: it is a linear map without a layer lrpfx can modify; assign "
                            f"Epsilon() or Gradient() with Composite(by_name={{'{info.name}': Epsilon()}})")

    def emit_channel_affine(self, info: NodeInfo, rule: R.Rule, r: fx.Node) -> None:
        """An unfolded BatchNorm as the per-channel affine map ``x·scale + shift`` under an affine rule."""
        if isinstance(rule, R.Epsilon) and rule.zero_bias and rule.eps == 0:
            # one input per output: LRP-0 without the shift gives it the whole relevance, also where x·scale = 0
            self.contribute(info.x, r)
            return
        e = info.extra
        scale_shift = self.call(affine.batchnorm_scale_shift,
                                [self.value(e["mean"]), self.value(e["var"]), self.value(e["bn_weight"]),
                                 self.value(e["bn_bias"])], {"eps": float(e["eps"])}, name=f"{info.node.name}_affine")
        w = self.call(operator.getitem, [scale_shift, 0])
        b = self.call(operator.getitem, [scale_shift, 1])
        self.emit_affine(info, rule, w, b, ChannelAffine(len(info.shape)), info.x, r)

    def emit_sum(self, info: NodeInfo, rule: R.Rule, r: fx.Node) -> None:
        n = info.node
        terms, signs = info.extra["terms"], info.extra["signs"]
        options = {"signs": signs, "eps": rule.eps}
        if getattr(rule, "zero_bias", False) and len(terms) < len(n.args[:2]):
            options["zero_bias"] = True  # a constant summand is there to drop
        z, relu = self.env[n], info.extra.get("relu_output")
        if relu is not None and rule.eps > 0 and not options.get("zero_bias"):
            z, options["z_is_relu"] = self.env[relu], True  # r vanishes where z <= 0: divide by relu(z) + eps
        shares = self.call(elementwise.split_sum, [z, r, *[self.env[t] for t in terms]], options,
                           name=f"r_{n.name}_in")
        for i, term in enumerate(terms):
            self.contribute(term, self.call(operator.getitem, [shares, i]))

    def emit_matmul(self, info: NodeInfo, rule: R.Rule, r: fx.Node) -> None:
        n = info.node
        active = info.extra["active"]
        weights = info.extra.get("softmax_operand")
        if isinstance(rule, R.ConstantAttention) and weights is not None:
            active = tuple(flag and i != weights for i, flag in enumerate(active))  # attention weights: constant
        a, b = n.args[:2]
        sizes = [math.prod(self.infos[v].shape) if v in self.infos else 0 for v in (n, a, b)]
        z = None if sizes[0] > sizes[1] + sizes[2] else self.env[n]  # recompute attention scores, don't keep them
        shares = self.call(attention.matmul, [self.env[a], self.env[b], z, r],
                           {"active": active, "eps": rule.eps}, name=f"r_{n.name}_in")
        for i, operand in enumerate((a, b)):
            if active[i]:
                self.contribute(operand, self.call(operator.getitem, [shares, i]))

    def emit_recurrent(self, info: NodeInfo, rule: R.Rule, r: fx.Node) -> None:
        """An LSTM/GRU/RNN in one step (:func:`lrpfx.rules.recurrent.recurrent`): relevance of the input sequence
        and of the initial state, which arrives as the layer took it (None, one node, or a tuple of nodes)."""
        n, hx = info.node, info.extra["hx"]
        shares = self.call(recurrent.recurrent, [self.env[info.x], fx.node.map_arg(hx, lambda a: self.env[a]),
                                                 [self.value(w) for w in info.weight], r],
                           {"spec": info.layer, "eps": rule.eps, "zero_bias": rule.zero_bias}, name=f"r_{n.name}_in")
        if info.x in self.infos:
            self.contribute(info.x, self.call(operator.getitem, [shares, 0]))
        if isinstance(hx, fx.Node) and hx in self.infos:
            self.contribute(hx, self.call(operator.getitem, [shares, 1]))
        elif isinstance(hx, tuple) and any(h in self.infos for h in hx):
            r_hx = self.call(operator.getitem, [shares, 1])
            for j, h in enumerate(hx):
                if h in self.infos:
                    self.contribute(h, self.call(operator.getitem, [r_hx, j]))

    def emit_replay(self, info: NodeInfo, r: fx.Node, norm_eps: Optional[float] = None, fn=None) -> None:
        """Relevance by the node's own VJP (gradient mode) or as ``x · Jᵀ(r / stab(z))`` (norm mode)."""
        n = info.node
        graph_values: List[fx.Node] = []

        def slot(a: fx.Node):
            graph_values.append(a)
            return structural.Slot(len(graph_values) - 1)

        if fn is None:
            args, kwargs = fx.node.map_arg(n.args, slot), fx.node.map_arg(n.kwargs, slot)
            if kwargs.get("inplace"):
                kwargs = {**kwargs, "inplace": False}  # a replay must not overwrite the forward's values
            fn = _node_function(self.gm, n, self.attrs)
        else:
            args, kwargs = (slot(info.x),), {}
        active = [i for i, v in enumerate(graph_values) if v in self.infos]
        # structural ops are linear in their activations: the VJP needs their shapes, not their values
        linear = norm_eps is None and info.kind == "structural" and all(
            graph_values[i].meta["lrpfx_value"].is_tensor for i in active)
        replay = structural.Replay(fn, args, kwargs, active, describe=info.op, norm_eps=norm_eps, linear=linear)
        path = f"steps.{n.name}"
        self.attrs[path] = replay
        values = [self.described(v) if linear and i in active else self.env[v] for i, v in enumerate(graph_values)]
        pulled = self.graph.call_module(path, (r, *values))
        pulled.name = f"r_{n.name}_in"
        for j, i in enumerate(active):
            self.contribute(graph_values[i], self.call(operator.getitem, [pulled, j]))


def _weight_outweighs_output(gm: fx.GraphModule, producer: NodeInfo, bn: NodeInfo) -> bool:
    """Whether the weight of a conv/linear followed by BatchNorm has more numbers than the layer's output (at the
    traced batch size): then the BatchNorm scale goes on the quotient, not into a freshly folded weight."""
    weight = parameter_of(gm, producer.weight)
    return producer.kind in ("conv", "linear") and weight is not None and weight.numel() > math.prod(bn.shape)


def _max_pool_as_avg(info: NodeInfo) -> AvgPool:
    """Max pooling read as average pooling over the same windows (the Norm alternative in docs/rules.md)."""
    pool = info.layer
    if pool is None or pool.adaptive or any(d != 1 for d in pool.dilation):
        raise RuleError(f"Norm() on max pooling needs plain windows without dilation; node '{info.name}' is "
                        f"{info.op}: use WinnerTakesAll() there")
    return AvgPool(pool.dim, pool.kernel_size, pool.stride, pool.padding, pool.ceil_mode)


def _is_tuple_node(node) -> bool:
    return isinstance(node, fx.Node) and node.meta.get("lrpfx_value") is not None \
        and node.meta["lrpfx_value"].tuple_len is not None


def _node_function(gm: fx.GraphModule, n: fx.Node, attrs: Dict[str, Any]):
    if n.op == "call_function":
        return OUT_OF_PLACE_FUNCTIONS.get(n.target, n.target)
    if n.op == "call_method":
        return MethodCall(out_of_place_method(n.target))
    if n.op == "call_module":
        return attrs.get(n.target) or gm.get_submodule(n.target)
    raise RuleError(f"node '{n.name}' ({n.op}) cannot be replayed")


def intermediate_keys(infos: Dict[fx.Node, NodeInfo]) -> Dict[fx.Node, str]:
    """Key of each node in ``Explanation.intermediate``: the module's qualified name if it is called once."""
    counts: Dict[str, int] = defaultdict(int)
    for info in infos.values():
        counts[info.name] += 1
    return {n: (info.name if counts[info.name] == 1 else n.name) for n, info in infos.items()
            if info.folded_into is None}
