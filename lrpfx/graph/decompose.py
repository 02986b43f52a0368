"""Decompose before refusing: an op no registry row names is rewritten into torch's Core ATen opset with torch's
own decomposition table (``torch._decomp.core_aten_decompositions``), and its pieces are classified instead.

An op is rewritten only when every piece is something lrpfx knows — a registry row, or a value that carries no
relevance (an integer or boolean index, a shape, a constant); otherwise it stays whole and is refused under its
own name, which is the name the user wrote. The pieces keep the op's source line and module path.
"""
from __future__ import annotations

import operator
from functools import lru_cache
from typing import Dict, List, Optional

import torch
import torch.fx as fx

from .nodes import attribute, op_name
from .registry import REGISTRY
from .. import meta_keys

aten = torch.ops.aten
_SKIPPED = {operator.getitem, getattr}
_VIEWS = {aten.view.default, aten._unsafe_view.default}


@lru_cache(maxsize=1)
def core_table() -> Dict:
    from torch._decomp import core_aten_decompositions
    return dict(core_aten_decompositions())


def decompose_unknown_ops(gm: fx.GraphModule) -> bool:
    """:func:`decompose_unknown` on the activation nodes that no registry row describes."""
    from .classification import classify
    from ..kinds import Kind
    unknown = [info.node for info in classify(gm).values() if info.kind == Kind.UNKNOWN]
    return bool(unknown) and decompose_unknown(gm, unknown)


def decompose_unknown(gm: fx.GraphModule, unknown: List[fx.Node]) -> bool:
    """Replace each node of ``unknown`` (activation nodes no row describes) whose Core ATen decomposition has
    only known pieces by those pieces. Needs the nodes' recorded values (``meta[meta_keys.VALUE]``). Returns
    whether the graph changed (its values must then be recorded again)."""
    changed = False
    for n in unknown:
        pieces = _decomposition(gm, n)
        if pieces is not None and all(_known(p) for p in pieces.graph.nodes):
            _splice(gm, n, pieces)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _example(value) -> Optional[torch.Tensor]:
    """A tensor of the recorded shape and dtype (values do not matter to a decomposition)."""
    if value is None or not value.is_tensor:
        return None
    if value.dtype.is_floating_point or value.dtype.is_complex:
        return torch.randn(value.shape, dtype=value.dtype)
    return torch.zeros(value.shape, dtype=value.dtype)


def _decomposition(gm: fx.GraphModule, n: fx.Node) -> Optional[fx.GraphModule]:
    """The node's op traced into Core ATen on tensors of its arguments' shapes (symbolic sizes, so the pieces
    serve every size the node does), or None where it cannot be."""
    if not _torch_op(n):
        return None
    value = n.meta.get(meta_keys.VALUE)
    if value is None or not value.is_float_tensor:
        return None
    operands = [a for a in n.all_input_nodes]
    examples = []
    for a in operands:
        if a.op == "get_attr":
            examples.append(attribute(gm, a.target))
        else:
            examples.append(_example(a.meta.get(meta_keys.VALUE)))
    if any(e is None for e in examples):
        return None
    slot = {a: i for i, a in enumerate(operands)}

    def run(*tensors):
        args = fx.node.map_arg(n.args, lambda a: tensors[slot[a]])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: tensors[slot[a]])
        if n.op == "call_method":
            return getattr(args[0], n.target)(*args[1:], **kwargs)
        return n.target(*args, **kwargs)

    from torch.fx.experimental.proxy_tensor import make_fx
    try:
        traced = make_fx(run, decomposition_table=core_table(), tracing_mode="symbolic")(*examples)
    except Exception:  # an op that does not trace on example tensors (data-dependent shapes, say)
        return None
    output = next(p for p in traced.graph.nodes if p.op == "output")
    if not isinstance(output.args[0], fx.Node) or output.args[0].op == "placeholder":
        return None
    pieces = [p for p in traced.graph.nodes if p.op == "call_function"]
    if len(pieces) == 1 and pieces[0].target is n.target:
        return None  # nothing to decompose: it is its own Core ATen op (a torch function may become its ATen op)
    return traced


def _torch_op(n: fx.Node) -> bool:
    """A Tensor method, an ATen op or a torch function: an op torch can decompose. A library's or the user's own
    function that fx kept whole (torchvision's windowed attention) is not one: it is neither an op nor cheap to
    trace, and it stays for a rule by name or the torch.export front-end."""
    if n.op == "call_method":
        return True
    if n.op != "call_function" or n.target in _SKIPPED:
        return False
    module = getattr(n.target, "__module__", None) or ""
    return isinstance(n.target, torch._ops.OpOverload) or module == "torch" or module.startswith("torch.")


def _known(piece: fx.Node) -> bool:
    """A piece lrpfx can classify: one a row names, or one whose value carries no relevance."""
    if piece.op != "call_function":
        return True
    value = piece.meta.get("val")
    if not (isinstance(value, torch.Tensor) and value.dtype.is_floating_point):
        return True  # an index, a mask, a size
    if not any(_floating(a) for a in piece.all_input_nodes):
        return True  # made from sizes and numbers only: a constant
    name = op_name(piece)
    return bool(REGISTRY.candidates("call_function", piece.target, name, None)) or \
        REGISTRY.constant("call_function", piece.target, name) is not None


def _floating(n: fx.Node) -> bool:
    value = n.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def _splice(gm: fx.GraphModule, n: fx.Node, traced: fx.GraphModule) -> None:
    from ..frontend.common import _describe
    placeholders = [p for p in traced.graph.nodes if p.op == "placeholder"]
    env = dict(zip(placeholders, n.all_input_nodes))
    result = None
    with gm.graph.inserting_before(n):
        for p in traced.graph.nodes:
            if p.op == "call_function":
                copy = gm.graph.node_copy(p, lambda a: env[a])
                if copy.target in _VIEWS:  # traced on contiguous examples: the real operand may not be
                    copy.target = aten.reshape.default
                value = p.meta.get("val")
                copy.meta = {k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack")}
                if value is not None:  # the front-ends record the values again; until then, the traced ones
                    copy.meta[meta_keys.VALUE] = _describe(value)
                copy.meta[meta_keys.DECOMPOSED] = op_name(n)
                env[p] = copy
            elif p.op == "get_attr":  # a constant the decomposition made (a filler, an index table)
                name = f"lrpfx_{n.name}_{p.target}"
                gm.register_buffer(name, getattr(traced, p.target))
                env[p] = gm.graph.get_attr(name)
            elif p.op == "output":
                result = env[p.args[0]]
    n.replace_all_uses_with(result)
    gm.graph.erase_node(n)
