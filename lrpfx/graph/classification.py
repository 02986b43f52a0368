"""Classification: every node that carries relevance gets a :class:`~lrpfx.kinds.NodeInfo` — its kind and
typed facts — from the op registry (:mod:`lrpfx.graph.registry`).

Activation nodes are float tensors computed from the inputs (:func:`~lrpfx.graph.analyses.activation_nodes`);
everything else (parameters, shapes, sizes, statistics) is a constant and carries no relevance.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Dict, Optional

import torch.fx as fx

from .analyses import activation_nodes, embedding_source, _EMBEDDING_FUNCTIONS
from ..kinds import Kind, Lookup, NodeInfo, OpSpec, Recurrence
from ..errors import UnsupportedOpError
from ..frontend.functions import is_function_call
from .probing import apply_probe
from .nodes import call_arg, op_label, op_name, out_of_place_method, source_line
from .readers import Call
from .recurrent import recurrent_call
from .registry import REGISTRY, ANY, FIRST
from .. import meta_keys


def classify(gm: fx.GraphModule) -> Dict[fx.Node, NodeInfo]:
    """A :class:`NodeInfo` for every activation node of ``gm`` (``Kind.UNKNOWN`` where no registry row fits)."""
    active = activation_nodes(gm)
    if not active and (error := _nothing_tracked(gm)) is not None:
        raise error
    infos: Dict[fx.Node, NodeInfo] = {}
    for n in gm.graph.nodes:
        if n not in active:
            continue
        acts = [a for a in n.all_input_nodes if a in active]
        if n.op == "placeholder":
            info = NodeInfo(n, Kind.INPUT, n.name, "input")
        elif (source := embedding_source(gm, n)) is not None:
            info = _embedding(gm, n, source)
        elif (call := recurrent_call(gm, n)) is not None:
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            info = NodeInfo(n, Kind.RECURRENT, n.target if module is not None else n.name,
                            type(module).__name__ if module is not None else op_label(n), module=module,
                            layer=call.spec, x=call.x, weight=call.weights, facts=Recurrence(call.hx))
        elif n.op in ("call_module", "call_function", "call_method"):
            info = _from_registry(gm, n, Call(n, gm.get_submodule(n.target) if n.op == "call_module" else None,
                                              acts, active, gm))
        else:
            info = NodeInfo(n, Kind.UNKNOWN, n.name, n.op)
        if info.kind == Kind.UNKNOWN and n.op != "placeholder" and not is_function_call(n):
            info = apply_probe(gm, info)  # what no row knows: its class by its values, or it stays unknown
        info.activations = acts
        info.name = n.meta.get(meta_keys.MODULE, info.name)  # export front-end: the op's module path
        info.module = info.module if info.module is not None else n.meta.get(meta_keys.MODULE_OBJECT)
        infos[n] = info
    for info in infos.values():
        if info.kind == Kind.MATMUL:
            info.facts = replace(info.facts, softmax_operand=_softmax_operand(info, infos))
    return infos


def _nothing_tracked(gm: fx.GraphModule) -> Optional[UnsupportedOpError]:
    """No value carries relevance although the output depends on the inputs' values: they reach it only through
    integer computations (token ids hashed or cast in ways lrpfx does not follow). Names where the float
    computation starts; None where the output does not depend on the inputs at all."""
    upstream, stack = set(), [n for n in gm.graph.nodes if n.op == "output"]
    while stack:
        node = stack.pop()
        for a in node.all_input_nodes:
            if a not in upstream:
                upstream.add(a)
                stack.append(a)
    from_inputs, start = set(), None
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            from_inputs.add(n)
        elif n.op != "output" and any(a in from_inputs for a in n.all_input_nodes) and op_name(n) not in (
                "size", "sym_size", "zeros_like", "ones_like", "empty_like", "new_zeros", "new_ones", "new_empty"):
            from_inputs.add(n)
            value = n.meta.get(meta_keys.VALUE)
            if start is None and n in upstream and value is not None and value.holds_float:
                start = n
    if start is None:
        return None
    return UnsupportedOpError(
        "no value of the model carries relevance: its inputs reach the output only through integer or boolean "
        "computations lrpfx does not follow (relevance starts at float inputs and at embeddings of token ids). The "
        f"float computation starts at node '{start.name}'{source_line(start)}. "
        "Pass the float values (the embeddings' outputs) as the model's input, or look the ids up with nn.Embedding "
        "directly")


def _from_registry(gm: fx.GraphModule, n: fx.Node, call: Call) -> NodeInfo:
    """The first registry row whose inputs fit and whose reader accepts the call; ``unknown`` if none does."""
    module = call.module
    if module is not None:
        name, label = n.target, type(module).__name__
    else:
        name = n.name
        label = f"Tensor.{out_of_place_method(n.target)}" if n.op == "call_method" else op_label(n)
    single = call.acts[0] if len(call.acts) == 1 else None
    for row in REGISTRY.candidates(n.op, n.target, op_name(n), module):
        x = _input(row, call, single)
        if x is False:
            continue
        info = NodeInfo(n, row.kind, name, label, module=module, x=x, nonneg=row.nonneg, facts=row.default_facts(),
                        spec=row)
        if row.read is None or row.read(info, call):
            return info
        if row in REGISTRY.user or row.names:
            continue  # a long-tail or user row that declines leaves the node to the other rows
        break
    return NodeInfo(n, Kind.UNKNOWN, name, label, module=module, x=single,
                    spec=REGISTRY.refusal(n.op, n.target, op_name(n)))  # the reason, where lrpfx has one


def _input(row: OpSpec, call: Call, single: Optional[fx.Node]):
    """The node's activation input as the row reads it, None where it has several, False if the row does not fit."""
    if row.inputs == ANY:
        return single
    first = call.first
    if row.inputs == FIRST:
        return first if isinstance(first, fx.Node) and first in call.active else False
    return single if single is not None and first is single else False


def _embedding(gm: fx.GraphModule, n: fx.Node, source: fx.Node) -> NodeInfo:
    """A lookup of token ids: where relevance stops (reported as the ids' relevance, shaped [..., H])."""
    if n.op == "call_module":
        info = NodeInfo(n, Kind.EMBEDDING, n.target, "Embedding", module=gm.get_submodule(n.target))
        info.weight = f"{n.target}.weight"
    else:
        info = NodeInfo(n, Kind.EMBEDDING, n.name, op_label(n))
        info.weight = call_arg(n, _EMBEDDING_FUNCTIONS[n.target], "weight")
    info.facts = Lookup(source)
    return info


def _softmax_operand(info: NodeInfo, infos: Dict[fx.Node, NodeInfo]) -> Optional[int]:
    """Which operand of a product is a softmax output (attention weights), through copies and casts."""
    for index, operand in enumerate(info.node.args[:2]):
        node = operand
        while isinstance(node, fx.Node) and node in infos and infos[node].kind in (Kind.IDENTITY, Kind.STRUCTURAL) \
                and infos[node].x is not None:
            node = infos[node].x
        if isinstance(node, fx.Node) and node in infos and infos[node].kind == Kind.SOFTMAX:
            return index
    return None
