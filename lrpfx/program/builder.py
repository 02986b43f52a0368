"""Build the relevance program: the forward graph followed by one relevance step per node, in reverse.

Input: the traced GraphModule, the classified nodes (:mod:`lrpfx.graph.classification`, annotated by :mod:`lrpfx.graph.canonize`) and
one rule per node (:mod:`lrpfx.composites`). Output: a new ``fx.GraphModule`` with inputs ``(*inputs, target)``
that returns ``(output, input_relevances)`` — plus a dict of intermediate relevances when asked. Each relevance
step is a call of a pure rule function (or, for ops replayed by their VJP, of a :class:`Replay` module), so the
program's code reads as the algorithm. Parameters are shared with the user's model, never copied or modified.
"""
from __future__ import annotations

import copy
import operator
import sys
import types
from collections import defaultdict
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.fx as fx

from .. import meta_keys
from ..errors import RuleError
from ..frontend.quantized import is_dequantized
from ..graph.nodes import OUT_OF_PLACE_FUNCTIONS, attribute, out_of_place_method
from ..kinds import Kind, NodeInfo
from ..rules import Rule, structural
from . import emit
from .emit_attention import forward_fused, fused_attentions
from .steps import FunctionStep, MethodCall, add_relevance, fill_tuple, gate_relevance, times_value
from .targets import initial_relevance


def _importable(fn) -> bool:
    """Whether generated code can name ``fn`` (a function reachable from its module by its qualified name)."""
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    obj = module
    for part in getattr(fn, "__qualname__", "<").split("."):
        obj = getattr(obj, part, None)
    return obj is fn or not isinstance(fn, types.FunctionType)


# the forms a program can take (lrpfx.pipeline.build_program)
FORMS = ("per-value", "relevance", "differentiable")


class ProgramBuilder:
    """Writes one relevance program. Used once: ``ProgramBuilder(...).build()``."""

    def __init__(self, gm: fx.GraphModule, infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, Rule], *,
                 start: str, times_input: bool, intermediate, form: str = "per-value", masked: Sequence[fx.Node] = (),
                 gated_edges: Sequence[tuple] = (), gated_nodes: Sequence[fx.Node] = (), values: Sequence[fx.Node] = (),
                 blocks: Optional[Dict[fx.Node, str]] = None):
        """``form`` (:data:`FORMS`): ``"per-value"``, LRP-0-type steps hand on relevance per value (the modified
        gradient) where exact; ``"relevance"`` everywhere; ``"differentiable"``, that to run with autograd on.
        ``intermediate``: True (every node), False, or a set of nodes whose relevance is returned. The rest is
        for conditional relevance (:mod:`lrpfx.concepts`): the program then takes an input ``conditions``, a tuple
        of one mask per ``masked`` node (multiplied into the relevance arriving there), then one gate ``[K]`` per
        ``gated_edges`` (consumer, producer) contribution and one per ``gated_nodes`` relevance; ``values`` are
        nodes whose forward values are returned as a last output. ``blocks`` (node -> block,
        :mod:`lrpfx.program.checkpoint`): the relevance pass runs each block's forward again before its steps, so
        the forward keeps only the values that leave a block."""
        if form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {form!r}")
        self.gm, self.infos, self.rules, self.form = gm, infos, rules, form
        # read by the emitters (lrpfx.program.emit): whether steps may take and give relevance per value
        self.modified_gradient = form == "per-value"
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
        # contributions in the modified-gradient form: relevance = the node's value ⊙ this (docs/architecture.md)
        self.contrib_per_value: Dict[fx.Node, List[fx.Node]] = defaultdict(list)
        self.per_value: set = set()  # program nodes that hold relevance per value, not relevance
        self.descriptions: Dict[fx.Node, fx.Node] = {}
        self.causal_checks: Dict[tuple, fx.Node] = {}  # an attention's masks -> whether they are the causal pattern
        self.fused_forward: Dict[fx.Node, fx.Node] = {}  # a fused attention -> its kernel's forward results
        self.blocks, self.entered = blocks or {}, set()
        self.rerun: List[fx.Node] = []  # program nodes that run a block's forward again
        self.recomputed: Dict[tuple, fx.Node] = {}  # (step, node): a dense weight computed where the step reads it
        self.target: Optional[fx.Node] = None
        self.tuple_contrib: Dict[fx.Node, Dict[int, List[fx.Node]]] = defaultdict(lambda: defaultdict(list))

    # ---- helpers ------------------------------------------------------------------------------------------
    def call(self, fn, args, kwargs=None, name=None) -> fx.Node:
        if not _importable(fn):  # a rule function defined in a notebook or an exec'd snippet: a module step
            path = f"steps.{name or fn.__name__}"
            self.attrs[path] = FunctionStep(fn, kwargs or {})
            node = self.graph.call_module(path, tuple(args))
            if name:
                node.name = name
            return node
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
            return self.recompute(source) if is_dequantized(source) else self.env[source]
        if isinstance(source, str):
            return self.attr("params." + source, attribute(self.gm, source))
        raise TypeError(f"unexpected parameter source {source!r}")

    def recompute(self, n: fx.Node) -> fx.Node:
        """Original node ``n`` computed once more for the step being written: a quantized layer's dense weight
        (:mod:`lrpfx.frontend.quantized`), so the forward frees its copy and one layer's is alive at a time."""
        key = (self.emitting, n)
        if key not in self.recomputed:
            self.recomputed[key] = self.graph.node_copy(n, lambda a: self.env[a])
        return self.recomputed[key]

    def contribute(self, node: fx.Node, relevance: fx.Node, per_value: bool = False) -> None:
        """Hand ``node`` a share of relevance; ``per_value=True``: the share is relevance divided by ``node``'s
        value (the modified gradient ``G`` with ``R = value ⊙ G``), which saves the product with the value when
        the step that receives it can take ``G`` itself."""
        gate = self.edge_gates.get((self.emitting, node))
        if gate is not None:  # this contribution bypasses a conditioned node (a gate is linear: same in both forms)
            relevance = self.call(gate_relevance, [relevance, self.condition(gate)],
                                  {"ndim": len(node.meta[meta_keys.VALUE].shape)})
        (self.contrib_per_value if per_value else self.contrib)[node].append(relevance)

    def is_per_value(self, r: fx.Node) -> bool:
        return r in self.per_value

    def condition(self, i: int) -> fx.Node:
        if i not in self.condition_items:
            self.condition_items[i] = self.call(operator.getitem, [self.conditions, i], name=f"condition_{i}")
        return self.condition_items[i]

    def conditioned(self, n: fx.Node, r: fx.Node) -> fx.Node:
        """The relevance at ``n`` times its condition mask, or gated where it bypasses a condition."""
        per_value = self.is_per_value(r)  # masks and gates are linear: the form stays
        if n in self.masked:
            r = self.call(operator.mul, [r, self.condition(self.masked[n])], name=f"r_{n.name}_masked")
        if n in self.node_gates:
            r = self.call(gate_relevance, [r, self.condition(self.node_gates[n])],
                          {"ndim": len(n.meta[meta_keys.VALUE].shape)}, name=f"r_{n.name}_gated")
        if per_value:
            self.per_value.add(r)
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
        self.fused = fused_attentions(self)  # attentions whose relevance is one step: one kernel call forward, too
        self.split_steps = {s for f in self.fused.values() for s in f.chain}
        for n in self.gm.graph.nodes:
            if n.op == "placeholder" or n in self.split_steps:
                continue
            if n.op == "output":
                output = n.args[0]
                continue
            self.env[n] = self._forward_copy(n)
        return inputs, target, output

    def _forward_copy(self, n: fx.Node) -> fx.Node:
        if n in self.fused:
            return forward_fused(self, self.fused[n])
        if n.op == "get_attr":
            return self.attr("params." + n.target, attribute(self.gm, n.target))
        new = self.graph.node_copy(n, lambda a: self.env[a])
        self._make_out_of_place(new)
        return new

    def enter_block(self, block: str) -> None:
        """Run a checkpointed block's forward once more, here in the relevance pass, and point its nodes at the
        new values: the forward's are freed after their last forward use, the new ones after the block's steps."""
        self.entered.add(block)
        for n in self.gm.graph.nodes:
            if self.blocks.get(n) == block and n not in self.split_steps and n.op != "get_attr":
                self.env[n] = self._forward_copy(n)
                self.rerun.append(self.env[n])

    def _drop_unused_reruns(self) -> None:
        """A block's values no step reads (statistics held constant, what relevance never reaches) need not run."""
        for node in reversed(self.rerun):
            if not node.users:
                self.graph.erase_node(node)

    def reapply(self, n: fx.Node, replace: Dict[fx.Node, fx.Node], name: str) -> fx.Node:
        """Original node ``n``'s op once more, out of place, on ``replace``d arguments (the rest: forward values)."""
        new = self.graph.node_copy(n, lambda a: replace.get(a) or self.env[a])
        new.name = name
        self._make_out_of_place(new)
        return new

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
    def collect(self, n: fx.Node, per_value: bool = False) -> Optional[fx.Node]:
        """The total relevance of node ``n``'s value: the sum over its consumers' contributions. ``per_value``:
        the step takes the modified gradient, so return that where every contribution has that form."""
        parts = list(self.contrib.get(n, ()))
        gradients = self.contrib_per_value.get(n, ())
        if gradients:
            g = self._sum(list(gradients), add=add_relevance)
            if per_value and not parts and n not in self.tuple_contrib:
                self.per_value.add(g)
                return g
            parts.append(self._times_value(n, g))
        if n in self.tuple_contrib:  # pieces taken one by one; the whole tuple may be consumed as well (cat)
            pieces = self.tuple_contrib[n]
            present = tuple(sorted(pieces))
            summed = [self._sum(pieces[i], add=add_relevance) for i in present]
            filled = self.call(fill_tuple, [self.env[n], *summed], {"present": present}, name=f"r_{n.name}")
            return self._sum([filled, *parts], add=add_relevance)
        if not parts:
            return None
        return self._sum(parts, add=add_relevance)

    def relevance_of(self, n: fx.Node, r: fx.Node) -> fx.Node:
        """``r`` as relevance for the user (intermediate relevances): relevance per value times ``n``'s value,
        0 at infinite values; relevance as it is."""
        return self._times_value(n, r, finite=True) if self.is_per_value(r) else r

    def _times_value(self, n: fx.Node, g: fx.Node, finite: bool = False) -> fx.Node:
        return self.call(times_value, [g, self.env[n]], {"finite": True} if finite else None, name=f"r_{n.name}")

    def reached(self, n: fx.Node) -> bool:
        """Whether any relevance arrived at ``n``."""
        return bool(self.contrib.get(n) or self.contrib_per_value.get(n) or n in self.tuple_contrib)

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
            block = self.blocks.get(n)
            if block is not None and block not in self.entered and self.reached(n):
                self.enter_block(block)
            if info is None or not self.reached(n):
                continue
            step = None if info.kind == Kind.EMBEDDING else self.step_for(info)
            r = self.collect(n, per_value=step is not None and emit.takes_per_value(step, self, info))
            if info.kind == Kind.EMBEDDING:  # where relevance stops: it is the ids' relevance, [..., H]
                r = recorded[n] = self._times_input(n, r)
                embedded[info.facts.source].append(r)
                continue
            r = self.conditioned(n, r)
            if self.intermediate is True or (self.intermediate and n in self.intermediate):
                recorded[n] = self.relevance_of(n, r)
            self.emitting = n
            step(self, info, self.rules.get(n), r)
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
        self._drop_unused_reruns()
        self.graph.lint()
        return fx.GraphModule(self.attrs, self.graph, class_name="RelevanceProgram")

    # ---- one relevance step per node: the emitter registered for its rule and kind (lrpfx.program.emit) ----
    def step_for(self, info: NodeInfo) -> emit.Emitter:
        """The emitter that writes node ``info``'s relevance step(s)."""
        n = info.node
        if n.op == "call_function" and n.target is operator.getitem and self.is_tuple_node(n.args[0]):
            return lambda b, info, rule, r: b.emit_tuple_item(info.node, r)  # a piece of a tuple, whatever the rule
        if info.kind == Kind.BATCHNORM and info.fold_from is not None:
            return emit.emit_folded  # the producer's rule on the folded map
        rule = self.rules[n]
        step = emit.find_emitter(rule, info.kind)
        if step is None:  # assignment validation should have caught this
            raise emit.cannot_apply(info, rule)
        return step

    @staticmethod
    def is_tuple_node(node) -> bool:
        return isinstance(node, fx.Node) and node.meta.get(meta_keys.VALUE) is not None \
            and node.meta[meta_keys.VALUE].tuple_len is not None

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
        positions = range(source.meta[meta_keys.VALUE].tuple_len)
        if isinstance(index, slice):
            for j, i in enumerate(positions[index]):
                self.tuple_contrib[source][i].append(self.call(operator.getitem, [r, j]))
        else:
            self.tuple_contrib[source][positions[index]].append(r)

    def replay(self, info: NodeInfo, r: fx.Node, norm_eps: Optional[float] = None, fn=None) -> None:
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
        linear = norm_eps is None and info.kind == Kind.STRUCTURAL and all(
            graph_values[i].meta[meta_keys.VALUE].is_tensor for i in active)
        replay = structural.Replay(fn, args, kwargs, active, describe=info.op, norm_eps=norm_eps, linear=linear)
        path = f"steps.{n.name}"
        self.attrs[path] = replay
        values = [self.described(v) if linear and i in active else self.env[v] for i, v in enumerate(graph_values)]
        pulled = self.graph.call_module(path, (r, *values))
        pulled.name = f"r_{n.name}_in"
        per_value = self.is_per_value(r)  # only where the op copies elements (emit.takes_per_value)
        for j, i in enumerate(active):
            self.contribute(graph_values[i], self.call(operator.getitem, [pulled, j]), per_value=per_value)


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
