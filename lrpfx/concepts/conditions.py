"""Concepts and conditions: what a condition names, and how it becomes masks and gates of a relevance program.

A *concept* is a set of features of one node's value: a channel of a conv output, a unit of a linear output, an
attention head (a block of the hidden axis), or any mask a function returns. A *condition* is a dict
``{"y": class, node_name: concept indices, ...}``; the relevance arriving at each named node is multiplied by the
concept's mask before it propagates on.

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

import difflib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Mapping, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx

from ..errors import InputError, TargetError
from ..graph.classify import NodeInfo
from ..program.builder import intermediate_keys

OUTPUT_KEY = "y"


# ---- concepts -------------------------------------------------------------------------------------------------
class Concept:
    """A way to cut one node's value (shape without the batch axis) into numbered concepts."""

    def size(self, shape: Tuple[int, ...]) -> int:
        raise NotImplementedError

    def mask(self, indices: Sequence[int], shape: Tuple[int, ...]) -> torch.Tensor:
        """1 on the features of ``indices``, 0 elsewhere, broadcastable to ``shape``."""
        raise NotImplementedError

    def per_concept(self, r: torch.Tensor, shape: Tuple[int, ...], reduce: str = "sum") -> torch.Tensor:
        """``r`` ``[..., *shape]`` reduced over each concept's extent: ``[..., size]``."""
        raise NotImplementedError

    def __getitem__(self, indices) -> "Selection":
        return Selection(self, _as_indices(indices, "the concept selection"))


@dataclass(frozen=True)
class Selection:
    """Concept indices with the concept that defines them: ``Heads(4)[1]``, ``Channels()[3, 7]``."""

    concept: Concept
    indices: Tuple[int, ...]


@dataclass(frozen=True)
class Channels(Concept):
    """One concept per index along ``axis`` of the value (counted without the batch axis when non-negative:
    ``axis=0`` is the channel axis of ``[B, C, H, W]``; ``-1`` the last axis, e.g. units of ``[B, T, F]``)."""

    axis: int = 0

    def _axis(self, shape) -> int:
        axis = self.axis if self.axis >= 0 else len(shape) + self.axis
        if not 0 <= axis < len(shape):
            raise InputError(f"concept axis {self.axis} does not exist in a value of shape {tuple(shape)}")
        return axis

    def size(self, shape):
        return shape[self._axis(shape)]

    def mask(self, indices, shape):
        axis = self._axis(shape)
        m = torch.zeros(shape[axis])
        m[list(indices)] = 1.0
        return m.view(*[shape[axis] if i == axis else 1 for i in range(len(shape))])

    def per_concept(self, r, shape, reduce="sum"):
        axis = r.dim() - len(shape) + self._axis(shape)
        r = r.movedim(axis, -1)
        lead = r.shape[:r.dim() - len(shape)]
        flat = r.reshape(*lead, -1, r.shape[-1])
        return flat.sum(-2) if reduce == "sum" else flat.amax(-2)


def Units() -> Channels:
    """Units of a linear output (the last axis)."""
    return Channels(axis=-1)


@dataclass(frozen=True)
class Heads(Concept):
    """``heads`` equal contiguous blocks of the last axis: the heads of an attention output ``[B, T, H * D]``."""

    heads: int

    def _width(self, shape) -> int:
        if shape[-1] % self.heads:
            raise InputError(f"Heads({self.heads}) cannot split a last axis of size {shape[-1]} into equal heads")
        return shape[-1] // self.heads

    def size(self, shape):
        self._width(shape)
        return self.heads

    def mask(self, indices, shape):
        m = torch.zeros(self.heads)
        m[list(indices)] = 1.0
        m = m.repeat_interleave(self._width(shape))
        return m.view(*([1] * (len(shape) - 1)), shape[-1])

    def per_concept(self, r, shape, reduce="sum"):
        r = r.unflatten(-1, (self.heads, self._width(shape))).movedim(-2, -1)
        lead = r.shape[:r.dim() - len(shape) - 1]
        flat = r.reshape(*lead, -1, self.heads)
        return flat.sum(-2) if reduce == "sum" else flat.amax(-2)


@dataclass(frozen=True)
class MaskFunction(Concept):
    """Any concept: ``fn(indices, shape)`` returns a 0/1 (or weighting) tensor broadcastable to ``shape`` (the
    value's shape without the batch axis); ``count`` is the number of concepts."""

    fn: Callable
    count: int

    def size(self, shape):
        return self.count

    def mask(self, indices, shape):
        m = torch.as_tensor(self.fn(tuple(indices), tuple(shape)), dtype=torch.float64)
        try:
            torch.broadcast_shapes(m.shape, tuple(shape))
        except RuntimeError:
            raise InputError(f"the mask function returned shape {tuple(m.shape)}, which does not broadcast to the "
                             f"node's value shape {tuple(shape)} (without the batch axis)")
        return m

    def per_concept(self, r, shape, reduce="sum"):
        cols = []
        for i in range(self.count):
            masked = r * self.mask([i], shape).to(r)
            flat = masked.flatten(r.dim() - len(shape))
            cols.append(flat.sum(-1) if reduce == "sum" else flat.amax(-1))
        return torch.stack(cols, -1)


def default_concept(info: NodeInfo, infos: Mapping[fx.Node, NodeInfo]) -> Concept:
    """Channels of conv-like values (axis 1 of ``[B, C, ...]``), units (last axis) of linear and token values."""
    shape = tuple(info.shape)
    if len(shape) <= 2 or len(shape) >= 4:
        return Channels(0)
    # [B, C, L] from a 1-d convolution, or [B, T, F] tokens: look for the nearest affine producer
    node: Optional[NodeInfo] = info
    for _ in range(64):
        if node is None:
            break
        if node.kind in ("conv", "conv_transpose"):
            return Channels(0)
        if node.kind in ("linear", "embedding", "layer_norm", "matmul", "input"):
            return Channels(-1)
        source = node.x if node.x is not None else next(iter(node.activations), None)
        node = infos.get(source) if source is not None else None
    return Channels(-1)


# ---- conditions -------------------------------------------------------------------------------------------------
def _as_indices(value, where: str) -> Tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dim() > 1:
            raise InputError(f"{where}: concept indices must be integers in a flat list or a 1-d LongTensor, got a "
                             f"tensor of shape {tuple(value.shape)} and dtype {value.dtype} (conditions of mixed "
                             f"shapes: give one flat list of indices per node)")
        value = value.tolist()
    if isinstance(value, bool):
        raise InputError(f"{where}: concept indices must be integers, got a bool")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple, range)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value):
        return tuple(value)
    raise InputError(f"{where}: concept indices must be an int or a non-empty flat list of ints, got {value!r} "
                     f"(conditions of mixed shapes: nested lists or per-sample indices are not supported; give one "
                     f"condition per concept set)")


@dataclass(frozen=True)
class Condition:
    """One parsed condition: the output class (None: the call's ``target``) and per node a selection."""

    y: Optional[int]
    nodes: Tuple[Tuple[str, Selection], ...]

    @property
    def names(self) -> FrozenSet[str]:
        return frozenset(name for name, _ in self.nodes)


def parse_conditions(conditions) -> List[Condition]:
    if isinstance(conditions, Mapping):
        conditions = [conditions]
    if not isinstance(conditions, (list, tuple)) or not conditions:
        raise InputError(f"conditions must be a non-empty list of dicts such as [{{'y': 3, 'features.28': [50]}}], "
                         f"got {type(conditions).__name__}")
    parsed = []
    for k, cond in enumerate(conditions):
        if not isinstance(cond, Mapping):
            raise InputError(f"condition {k} must be a dict {{'y': class, node: indices}}, got {type(cond).__name__}")
        y = cond.get(OUTPUT_KEY)
        if y is not None:
            y = _as_indices(y, f"condition {k}, 'y'")
            if len(y) != 1:
                raise TargetError(f"condition {k}: 'y' must name one class, got {list(y)}; use one condition per "
                                  f"class and add their heatmaps")
            y = y[0]
        nodes = []
        for name, value in cond.items():
            if name == OUTPUT_KEY:
                continue
            if not isinstance(name, str):
                raise InputError(f"condition {k}: node names must be strings, got {name!r}")
            if isinstance(value, Selection):
                nodes.append((name, value))
            else:
                nodes.append((name, Selection(None, _as_indices(value, f"condition {k}, node '{name}'"))))
        parsed.append(Condition(y, tuple(sorted(nodes, key=lambda item: item[0]))))
    return parsed


# ---- the plan: what the program needs, and the per-call masks and gates ---------------------------------------
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
        layout.masked = [(name, tuple(n.meta["lrpfx_value"].shape[1:]), default_concept(infos[n], infos))
                         for name, n in zip(self.masked, masked)]
        by_name = dict(zip(self.masked, masked))
        for name, n in by_name.items():
            layout.lower[name] = [keys[m] for m in nearest_affine_below(n, infos) if m in keys]
        edges: Dict[tuple, Set[FrozenSet[str]]] = {}
        nodes: Dict[fx.Node, Set[FrozenSet[str]]] = {}
        consumers = _consumers(infos)
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
            shape = tuple(n.meta["lrpfx_value"].shape[1:])
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
        close = difflib.get_close_matches(name, list(lookup), n=5, cutoff=0.5)
        hint = f"; close matches: {close}" if close else ""
        raise InputError(f"unknown node '{name}'{hint}. Node names are the keys of "
                         f"Explainer(...)(x, intermediate=True).intermediate")
    info = infos[node]
    if info.kind in ("input", "embedding"):
        raise InputError(f"node '{name}' is an input or embedding, where relevance stops: condition on an inner node "
                         f"(its heatmap is the explanation itself)")
    if node not in reached:
        raise InputError(f"node '{name}' carries no relevance: the explained output does not depend on it")
    return node


def _consumers(infos) -> Dict[fx.Node, List[fx.Node]]:
    """Per node, the activation nodes that read it; a Conv/Linear folded into a BatchNorm reads as that BatchNorm
    (the BatchNorm's step hands the relevance straight to the conv's input)."""
    consumers: Dict[fx.Node, List[fx.Node]] = {n: [] for n in infos}
    for n, info in infos.items():
        reader = info.folded_into if info.folded_into is not None else n
        for a in n.all_input_nodes:
            if a in infos and infos[a].folded_into is None and reader not in consumers[a]:
                consumers[a].append(reader)
    return consumers


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
    import operator
    value = n.meta.get("lrpfx_value")
    return c.op == "call_function" and c.target is operator.getitem and value is not None \
        and value.tuple_len is not None
