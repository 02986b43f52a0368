"""Analyses of the traced graph before rules are chosen: which nodes carry relevance (activations), which values
are constants by design (statistics, shape-only ops, routers, nodes a composite holds), whether the output depends
on an input through something lrpfx does not track, and which inputs it does not depend on at all.
"""
from __future__ import annotations

import fnmatch
from typing import Dict, List, Optional

import torch
import torch.fx as fx
from torch import nn

from ..errors import UnsupportedOpError, unmatched_pattern
from .nodes import call_arg, node_path, op_name, source_line
from .readers import exponent
from .recurrent import is_recurrent
from .by_design import STATISTIC
from .registry import REGISTRY
from .. import meta_keys

aten = torch.ops.aten

_EMBEDDING_FUNCTIONS = {torch.nn.functional.embedding: 1, aten.embedding.default: 0}  # -> position of the weight
_NORMALISER_NAMES = {"rsqrt", "sqrt", "reciprocal"}  # of a statistic: 1/sigma-like values
_REDUCTION_NAMES = {"mean", "sum", "var", "std"}
_THROUGH_NAMES = {"add", "clamp", "clamp_min", "to", "_to_copy", "float", "double", "mul", "pow", "expand"}
# a mixture-of-experts router: top-k of gate probabilities
_ROUTER_SCORE_NAMES = {"softmax", "_softmax", "sigmoid"}


def activation_nodes(gm: fx.GraphModule) -> Dict[fx.Node, bool]:
    """Nodes that carry relevance: float tensors (or tuples of them) computed from a float input placeholder or
    from an embedding of integer inputs (token ids), on a path to the output.

    Statistics that rescale a tensor (``rsqrt(mean(x²) + eps)`` of RMSNorm, variances, norms) count as
    constants: normalisations are explained with their scale held fixed (docs/rules.md).
    """
    active: Dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        info = n.meta.get(meta_keys.VALUE)
        floaty = info is not None and (info.is_float_tensor or (
            info.tuple_len is not None and info.dtype is not None and info.dtype.is_floating_point
            and (not info.nested or is_recurrent(gm, n))))  # a nested tuple only where a rule reads it
        if not floaty or n.op == "output":
            continue
        if n.op == "placeholder" or embedding_source(gm, n) is not None:
            active[n] = True
        elif any(a in active for a in n.all_input_nodes) and not constant_by_design(n, active):
            active[n] = True
    return _on_path_to_output(gm, active)




def hold_constant(gm: fx.GraphModule, patterns, must_match: bool = True) -> None:
    """Mark the nodes matching ``patterns`` (qualified-name globs, or functions of the graph that return the
    nodes to hold with what they are: :func:`lrpfx.graph.scans.scan_parameters`) as constants; a glob that matches
    nothing is an error naming close matches (a pattern written for another model would otherwise do nothing)."""
    names = {n: node_path(n) for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")}
    for pattern in patterns:
        if callable(pattern):  # a recogniser: a function of the graph giving the nodes to hold, with what they are
            for n, what in pattern(gm).items():
                n.meta[meta_keys.HELD] = what
            continue
        matched = [n for n, name in names.items() if fnmatch.fnmatchcase(name, pattern)]
        if not matched and must_match:
            raise unmatched_pattern("constants", pattern, names.values())
        for n in matched:
            n.meta[meta_keys.HELD] = pattern


def constant_by_design(n: fx.Node, active) -> bool:
    """A value computed from activations that carries no relevance: a statistic (a normalisation's scale), a
    shape-only op, a router's top-k weights, an op of a constant that reads an activation's shape or dtype, or a
    node a composite holds constant (:func:`hold_constant`)."""
    return n.meta.get(meta_keys.HELD) is not None or is_statistic(n) or _constant_row(n) or is_routing(n) or (
        _shaped_like(n) and bool(n.args) and not (isinstance(n.args[0], fx.Node) and n.args[0] in active))


def _shaped_like(n: fx.Node) -> bool:
    return any(row.shaped_like for row in REGISTRY.own_rows(n))


def _constant_row(n: fx.Node) -> bool:
    """A registry row says the value carries no relevance (a shape, an index, random numbers, a statistic)."""
    return REGISTRY.constant(n.op, n.target, op_name(n)) is not None


def is_routing(n: fx.Node) -> bool:
    """Top-k of a gate's probabilities (softmax or sigmoid, through casts and views): a mixture-of-experts router.
    Its routing weights count as constants (as in LXT), so a token's relevance flows only through the experts
    that ran for it, scaled by their fixed weights."""
    if op_name(n) != "topk":
        return False
    source = n.args[0] if n.args else None
    for _ in range(8):
        if not isinstance(source, fx.Node):
            return False
        if op_name(source) in _ROUTER_SCORE_NAMES:
            return True
        if not REGISTRY.passes_values(source) or not source.args:
            return False
        source = source.args[0]
    return False


def _on_path_to_output(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> Dict[fx.Node, bool]:
    """Drop active nodes whose value reaches the output only through constants (a statistic's inputs)."""
    live = set()
    for n in reversed(list(gm.graph.nodes)):
        if n.op == "placeholder" and n in active:
            live.add(n)  # inputs always get a relevance, zeros if nothing reaches them
        elif n in active and any(u.op == "output" or u in live for u in n.users):
            live.add(n)
    return {n: True for n in active if n in live}


def untracked_dependency(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> Optional[fx.Node]:
    """The first node through which the output depends on an input's values although lrpfx does not track it
    (a nested-tuple result, say), or None. Such a node would silently cut the relevance to zero.

    Values that are held constant by design do not count: statistics (the scale of a normalisation), shape-only
    ops, and integer or boolean values (indices, masks, routing decisions carry no relevance).
    """
    depends = set()
    for n in gm.graph.nodes:
        value = n.meta.get(meta_keys.VALUE)
        if n.op == "output" or value is None or not value.holds_float:
            continue
        if n in active and (n.op == "placeholder" or embedding_source(gm, n) is not None):
            depends.add(n)
        elif any(a in depends for a in n.all_input_nodes) and not constant_by_design(n, depends):
            depends.add(n)
    live = _upstream_of_output(gm, depends)  # dependent nodes on a dependent path to the output
    return next((n for n in gm.graph.nodes if n in live and n not in active), None)


def unreached_inputs(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> List[fx.Node]:
    """Input placeholders that carry relevance but on which the output does not depend (their relevance is
    zero by the model's structure)."""
    reached = _upstream_of_output(gm, active, through=lambda n: [embedding_source(gm, n)])
    return [n for n in gm.graph.nodes if n.op == "placeholder" and n in active and n not in reached]


def _upstream_of_output(gm: fx.GraphModule, allowed, through=lambda n: ()) -> set:
    """Nodes in ``allowed`` from which the output is reached through ``allowed`` nodes only (``through(n)`` adds
    inputs that are not graph arguments, such as the token ids behind an embedding)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    reached, frontier = set(), [a for a in output.all_input_nodes if a in allowed]
    while frontier:
        n = frontier.pop()
        if n not in reached:
            reached.add(n)
            frontier.extend(a for a in n.all_input_nodes if a in allowed)
            frontier.extend(a for a in through(n) if a is not None)
    return reached


def is_statistic(n: fx.Node) -> bool:
    """A variance, a norm, or ``1/sqrt`` of a mean/sum (possibly shifted by an epsilon)."""
    name = op_name(n)
    row = REGISTRY.constant(n.op, n.target, name)
    if row is not None and row.constant == STATISTIC:
        return True
    if name not in _NORMALISER_NAMES and not (name == "pow" and exponent(n) in (0.5, -0.5)):  # pow(s, 0.5): CLIP
        return False
    source = n.args[0] if n.args else None
    for _ in range(8):
        if not isinstance(source, fx.Node):
            return False
        name = op_name(source)
        if name in _REDUCTION_NAMES:
            return True
        if name not in _THROUGH_NAMES or not source.args:
            return False
        source = next((a for a in source.args if isinstance(a, fx.Node)), None)
    return False


def embedding_source(gm: fx.GraphModule, n: fx.Node) -> Optional[fx.Node]:
    """For an embedding lookup of a model input (token ids, possibly reshaped), that input's placeholder."""
    if n.op == "call_module":
        if not isinstance(gm.get_submodule(n.target), nn.Embedding):
            return None
        indices = n.args[0] if n.args else None
    elif n.op == "call_function" and n.target in _EMBEDDING_FUNCTIONS:
        indices = call_arg(n, 1 - _EMBEDDING_FUNCTIONS[n.target], "input")
    else:
        return None
    lookup, hashed = indices, False
    for _ in range(16):  # through .to(), .view() and friends (ops that keep the ids' values) and integer arithmetic
        if not isinstance(indices, fx.Node) or indices.op == "placeholder":
            break
        name = op_name(indices)
        operands = [a for a in indices.args if isinstance(a, fx.Node)]
        if name in _ID_ARITHMETIC_NAMES and len(operands) == 1:
            indices, hashed = operands[0], True  # hashed ids: a function of each id (with constants)
            continue
        if not REGISTRY.passes_values(indices):
            return None  # e.g. positions from arange(size(ids)): depend on the ids' shape, not their values
        indices = indices.args[0] if indices.args else None
    if not (isinstance(indices, fx.Node) and indices.op == "placeholder"):
        return None
    if hashed and _shape(lookup) != _shape(indices):
        raise UnsupportedOpError(
            f"the embedding '{node_path(n)}'{source_line(n)} looks up ids computed from input '{indices.name}' by "
            f"integer arithmetic, shaped {_shape(lookup)} where the input is {_shape(indices)}: its relevance cannot "
            "be reported per token. Compute the looked-up ids outside the model and pass them as an input")
    return indices


# integer arithmetic on token ids with constants (hashing into several embedding tables)
_ID_ARITHMETIC_NAMES = {"mul", "add", "sub", "remainder", "fmod", "mod", "floor_divide", "floordiv", "bitwise_xor",
                        "bitwise_and", "bitwise_or", "xor", "and_", "or_", "lshift", "rshift",
                        "bitwise_left_shift", "bitwise_right_shift", "__xor__", "__and__", "__or__", "abs"}


def _shape(n: fx.Node):
    value = n.meta.get(meta_keys.VALUE)
    shape = getattr(value, "shape", None)
    if shape is None and isinstance(n.meta.get("val"), torch.Tensor):
        shape = n.meta["val"].shape
    return None if shape is None else tuple(shape)


