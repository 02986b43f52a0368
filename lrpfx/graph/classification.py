"""Classification: every node that carries relevance gets a :class:`~lrpfx.graph.kinds.NodeInfo` — its kind and
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
from .nodes import call_arg, op_label, op_name, out_of_place_method
from .readers import Call
from .recurrent import recurrent_call
from .registry import REGISTRY, ANY, FIRST


def classify(gm: fx.GraphModule) -> Dict[fx.Node, NodeInfo]:
    """A :class:`NodeInfo` for every activation node of ``gm`` (``Kind.UNKNOWN`` where no registry row fits)."""
    active = activation_nodes(gm)
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
        info.activations = acts
        info.name = n.meta.get("lrpfx_module", info.name)  # export front-end: the op's module path
        info.module = info.module if info.module is not None else n.meta.get("lrpfx_module_object")
        infos[n] = info
    for info in infos.values():
        if info.kind == Kind.MATMUL:
            info.facts = replace(info.facts, softmax_operand=_softmax_operand(info, infos))
    return infos


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
