"""The plan of a set of conditions: which nodes a relevance program masks and which contributions it gates,
resolved on the traced graph, and the per-call masks and gates.

Paths (zennit-crp's ``exclude_parallel=True``, its default): a conditional heatmap holds only the relevance that
flows *through* the conditioned nodes. Relevance that reaches the nodes below a conditioned node by another path
(a residual add handing relevance straight to its skip input, a parallel branch) is dropped, so the heatmaps of
all concepts of a node that every path crosses (a VGG layer, a ResNet block output, a transformer's residual
stream) sum to the unconditional heatmap. Conditioned nodes of one condition that lie on one path are all
required (relevance must pass through each, top to bottom); conditioned nodes in *parallel* branches (a residual
branch and its skip, two heads' branches) are alternatives: relevance passing through any of them is kept, each
masked by its own concept, so the condition's heatmap is the sum of the branches' conditional heatmaps.
In the program this is one 0/1 gate per condition on every contribution that enters a conditioned node's
ancestors without passing through it (see :meth:`ConditionPlan.builder_options`).
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, FrozenSet, List, Sequence, Set, Tuple

import torch
import torch.fx as fx

from .. import meta_keys
from ..errors import InputError, close_names
from ..kinds import NodeInfo, consumers_of
from ..program.builder import intermediate_keys
from .conditions import Concept, Condition, default_concept


@dataclass
class Layout:
    """What a built conditional program expects, by name: filled in when the program is built."""

    masked: List[Tuple[str, Tuple[int, ...], Concept]] = field(default_factory=list)  # name, value shape, default
    gates: int = 0  # edge gates then node gates
    zero_gates: Dict[FrozenSet[str], FrozenSet[int]] = field(default_factory=dict)  # per node set: gates set to 0
    ndim: Dict[str, int] = field(default_factory=dict)  # recorded node -> value dims (without a condition axis)
    shapes: Dict[str, Tuple[int, ...]] = field(default_factory=dict)  # recorded node -> value shape (no batch)
    concepts: Dict[str, Concept] = field(default_factory=dict)  # recorded node -> default concept
    rename: Dict[str, str] = field(default_factory=dict)  # the program's key of a recorded node -> name asked for
    lower: Dict[str, List[str]] = field(default_factory=dict)  # conditioned/recorded node -> conv/linear below it

    @property
    def has_conditions(self) -> bool:
        return bool(self.masked) or self.gates > 0


@dataclass(frozen=True)
class ConditionPlan:
    """The structure of a set of conditions (hashable: it keys the Explainer's program cache): the conditioned
    nodes, the distinct node sets of the conditions, the nodes whose relevance and values are returned."""

    masked: Tuple[str, ...]
    groups: Tuple[FrozenSet[str], ...]
    record: Any  # True (every node), False, or a tuple of names
    values: Tuple[str, ...] = ()
    layouts: Dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def layout(self) -> Layout:
        return self.layouts[self]

    def builder_options(self, gm: fx.GraphModule, infos: Dict[fx.Node, NodeInfo]) -> Dict[str, Any]:
        """Resolve names to nodes, check them, and find the gated contributions (see the module docstring)."""
        lookup = node_lookup(infos)
        output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
        reached = _ancestors([output], infos) | {output}
        resolve = lambda name: resolve_node(name, lookup, gm, infos, reached)  # noqa: E731
        masked = [resolve(name) for name in self.masked]
        keys = intermediate_keys(infos)
        layout = Layout()
        layout.masked = [(name, tuple(n.meta[meta_keys.VALUE].shape[1:]), default_concept(infos[n], infos))
                         for name, n in zip(self.masked, masked)]
        by_name = dict(zip(self.masked, masked))
        for name, n in by_name.items():
            layout.lower[name] = [keys[m] for m in nearest_affine_below(n, infos) if m in keys]
        edges: Dict[tuple, Set[FrozenSet[str]]] = {}
        nodes: Dict[fx.Node, Set[FrozenSet[str]]] = {}
        consumers = consumers_of(infos)
        for group in self.groups:
            for level in _levels([by_name[name] for name in sorted(group)], infos):
                _bypasses(level, infos, consumers, group, edges, nodes)
        edge_list, node_list = list(edges), list(nodes)
        layout.gates = len(edge_list) + len(node_list)
        for group in self.groups:
            layout.zero_gates[group] = frozenset(
                i for i, groups in enumerate([*edges.values(), *nodes.values()]) if group in groups)
        if self.record is True:
            named = {keys[n]: n for n in infos if n in keys}
        else:
            named = {name: resolve(name) for name in (self.record or ())}
        values = [resolve(name) for name in self.values]
        named.update(zip(self.values, values))
        for name, n in named.items():
            shape = tuple(n.meta[meta_keys.VALUE].shape[1:])
            layout.ndim[name] = len(shape) + 1
            layout.shapes[name] = shape
            layout.concepts[name] = default_concept(infos[n], infos)
            layout.rename[keys[n]] = name  # the program reports a folded conv under its BatchNorm's key
            layout.lower[name] = [keys[m] for m in nearest_affine_below(n, infos) if m in keys]
        record = set(infos) if self.record is True else {named[name] for name in (self.record or ())}
        self.layouts[self] = layout
        return {"intermediate": record if self.record is not True else True, "masked": masked,
                "gated_edges": edge_list, "gated_nodes": node_list, "values": values}

    def tensors(self, conditions: Sequence[Condition], dtype, device) -> Tuple[torch.Tensor, ...]:
        """The program's ``conditions`` input for these conditions: masks ``[K, 1, ...]``, then gates ``[K]``."""
        layout = self.layout
        K = len(conditions)
        masks = []
        for name, shape, default in layout.masked:
            per_condition = []
            for k, cond in enumerate(conditions):
                selection = dict(cond.nodes).get(name)
                if selection is None:
                    per_condition.append(torch.ones([1] * len(shape), dtype=torch.float64))
                    continue
                concept = selection.concept or default
                count = concept.size(shape)
                bad = [i for i in selection.indices if not -count <= i < count]
                if bad:
                    raise InputError(f"condition {k}: concept index {bad[0]} is out of range for node '{name}', "
                                     f"which has {count} concepts (0..{count - 1}) under {concept}")
                per_condition.append(concept.mask(selection.indices, shape).to(torch.float64))
            target_shape = torch.broadcast_shapes(*[m.shape for m in per_condition])
            stacked = torch.stack([m.expand(target_shape) for m in per_condition])
            masks.append(stacked.unsqueeze(1).to(dtype=dtype, device=device))  # [K, 1 (batch), ...]
        gates = torch.ones(layout.gates, K, dtype=dtype, device=device)
        for k, cond in enumerate(conditions):
            zero = layout.zero_gates.get(cond.names, ())
            gates[list(zero), k] = 0.0
        return (*masks, *gates.unbind(0))


def plan_for(conditions: Sequence[Condition], record, values: Sequence[str], layouts: Dict) -> ConditionPlan:
    masked: List[str] = []
    for cond in conditions:
        for name in cond.names:
            if name not in masked:
                masked.append(name)
    groups = tuple(sorted({cond.names for cond in conditions if cond.names}, key=sorted))
    record = record if isinstance(record, bool) else tuple(record)
    return ConditionPlan(tuple(sorted(masked)), groups, record, tuple(values), layouts)


# ---- graph analysis -------------------------------------------------------------------------------------------
def node_lookup(infos: Dict[fx.Node, NodeInfo]) -> Dict[str, fx.Node]:
    """Names a condition may use: the keys of ``intermediate`` and the fx node names; a Conv/Linear folded into
    the BatchNorm after it stands for that BatchNorm (the relevance at both outputs is the same)."""
    lookup: Dict[str, fx.Node] = {}
    for n, info in infos.items():
        target = info.folded_into if info.folded_into is not None else n
        lookup.setdefault(n.name, target)
    for n, key in intermediate_keys(infos).items():
        lookup[key] = n
    for n, info in infos.items():
        if info.folded_into is not None:
            lookup.setdefault(info.name, info.folded_into)
    return lookup


def resolve_node(name: str, lookup: Dict[str, fx.Node], gm: fx.GraphModule, infos, reached) -> fx.Node:
    node = lookup.get(name)
    if node is None:
        graph_names = {n.name for n in gm.graph.nodes} | {str(n.target) for n in gm.graph.nodes
                                                        if n.op in ("call_module", "get_attr")}
        if name in graph_names:
            raise InputError(f"node '{name}' carries no relevance: its value does not depend on the input (a "
                             f"constant, a parameter or a mask); condition on a node between the input and the output")
        raise InputError(f"unknown node '{name}'; {close_names(name, lookup)}. Node names are the keys of "
                         f"Explainer(...)(x, intermediate=True).intermediate")
    info = infos[node]
    if info.kind in ("input", "embedding"):
        raise InputError(f"node '{name}' is an input or embedding, where relevance stops: condition on an inner node "
                         f"(its heatmap is the explanation itself)")
    if node not in reached:
        raise InputError(f"node '{name}' carries no relevance: the explained output does not depend on it")
    return node


def _ancestors(nodes: Sequence[fx.Node], infos) -> Set[fx.Node]:
    """Activation nodes whose value the given nodes read, directly or not (not the nodes themselves)."""
    seen: Set[fx.Node] = set()
    stack = [a for n in nodes for a in n.all_input_nodes]
    while stack:
        n = stack.pop()
        if n in seen or n not in infos:
            continue
        seen.add(n)
        stack.extend(n.all_input_nodes)
    return seen


AFFINE_KINDS = ("conv", "conv_transpose", "linear")


def nearest_affine_below(node: fx.Node, infos) -> List[fx.Node]:
    """The conv/linear nodes nearest below ``node`` (a folded one as its BatchNorm), latest in execution first."""
    order = {n: i for i, n in enumerate(infos)}
    found: Set[fx.Node] = set()
    seen: Set[fx.Node] = set()
    stack = [a for a in node.all_input_nodes if a in infos]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        info = infos[n]
        if info.kind in AFFINE_KINDS or info.fold_from is not None:
            found.add(info.folded_into if info.folded_into is not None else n)
            continue
        stack.extend(a for a in n.all_input_nodes if a in infos)
    return sorted(found, key=lambda n: -order[n])


def _levels(nodes: List[fx.Node], infos) -> List[FrozenSet[fx.Node]]:
    """For each conditioned node, it and the conditioned nodes parallel to it (neither reads the other): a path
    must cross one node of every level."""
    anc = {n: _ancestors([n], infos) for n in nodes}
    levels = {frozenset([n] + [m for m in nodes if m is not n and m not in anc[n] and n not in anc[m]])
              for n in nodes}
    return list(levels)


def _bypasses(level: FrozenSet[fx.Node], infos, consumers, group, edges, nodes) -> None:
    """Contributions entering ``level``'s ancestors without crossing it, and relevance of endpoints (inputs,
    embeddings) outside its ancestors: gated to zero for conditions on ``group``."""
    below = _ancestors(list(level), infos)
    for n in infos:
        endpoint = infos[n].kind in ("input", "embedding")
        if n not in below and not endpoint:
            continue
        for c in consumers[n]:
            if c in level or (c in below and n in below):
                continue
            if _reads_tuple_piece(c, n):  # tuple pieces are collected apart from contributions: gate the piece
                nodes.setdefault(c, set()).add(group)
            else:
                edges.setdefault((c, n), set()).add(group)


def _reads_tuple_piece(c: fx.Node, n: fx.Node) -> bool:
    value = n.meta.get(meta_keys.VALUE)
    return c.op == "call_function" and c.target is operator.getitem and value is not None \
        and value.tuple_len is not None
