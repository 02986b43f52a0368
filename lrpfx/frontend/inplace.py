"""Writes into views as data flow: ``buf[:, t] = v``, ``buf[:, t].copy_(v)`` and ``buf[2:] += v`` (ATen:
``copy_``/``add_`` on a ``select``/``slice`` of ``buf``) become out-of-place scatters that return the new ``buf``,
and every later read of ``buf`` (or of a view of it taken before the write) reads the new value.

So a buffer filled in place with values computed from the inputs (RWKV's time mixing, a forward substitution)
carries their relevance like any other value; the scatters are copies (kind ``structural``). A write this pass
cannot spell out of place — into a view other than select/slice chains — is refused with the node and its source
line where the value written depends on the inputs: keeping the buffer as a constant would silently drop the
relevance that flows through it.
"""
from __future__ import annotations

from typing import Dict, List, Set

import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from ..graph.nodes import op_name
from .fx import source_line

aten = torch.ops.aten

# view op -> its scatter (the out-of-place write through that view), with the view's arguments after the source
_SCATTERS = {aten.select.int: aten.select_scatter.default, aten.slice.Tensor: aten.slice_scatter.default,
             aten.diagonal.default: aten.diagonal_scatter.default}
# ops that only alias their input whole (the write reaches the base unchanged in shape)
_WHOLE_ALIASES = {aten.alias.default, aten.detach.default}


def functionalize_view_writes(gm: fx.GraphModule, from_inputs: Set[fx.Node], out_of_place) -> bool:
    """Rewrite every in-place write into a view (see the module docstring); ``from_inputs``: nodes whose values
    depend on the inputs; ``out_of_place(target)``: the out-of-place twin of an in-place ATen op, or None."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        twin = out_of_place(n.target)
        chain = _view_chain(n.args[0])
        if twin is None or not chain:
            continue
        if not any(a in from_inputs for a in [*n.all_input_nodes, chain[-1].args[0]]):
            continue  # a constant filled with constants (index tables): left as it is
        if not all(v.target in _SCATTERS or v.target in _WHOLE_ALIASES for v in chain):
            if chain[-1].args[0] in from_inputs:
                continue  # an activation changed through a view: the in-place pass decides (frontend/normalise.py)
            raise UnsupportedOpError(
                f"node '{n.name}' ({n.target}){source_line(n)} writes in place into a view "
                f"({', '.join(op_name(v) for v in chain)}) of '{chain[-1].args[0].name}', with values computed "
                "from the inputs; lrpfx spells such writes out of place only through select/slice views: "
                "write the buffer out of place (torch.stack or torch.cat the pieces)")
        _check_no_stale_views(n, chain, order)
        from_inputs.update(_rewrite(gm, n, twin, chain, order))
        changed = True
    return changed


def _view_chain(target: fx.Node) -> List[fx.Node]:
    """The view nodes from ``target`` down to (not including) the tensor they view, nearest first."""
    chain = []
    node = target
    while node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload) and node.args \
            and isinstance(node.args[0], fx.Node) and _is_view(node.target):
        chain.append(node)
        node = node.args[0]
    return chain


def _is_view(target: torch._ops.OpOverload) -> bool:
    """An op whose output aliases its first argument (its schema says so)."""
    schema = target._schema
    returns = schema.returns
    return bool(returns) and returns[0].alias_info is not None and not returns[0].alias_info.is_write \
        and bool(schema.arguments) and schema.arguments[0].alias_info is not None


def _written(g: fx.Graph, n: fx.Node, twin, view: fx.Node) -> fx.Node:
    """The new value of the view: ``twin(view, ...)``; for ``copy_`` the source, cast and broadcast to the view
    (``aten.copy`` has no derivative to replay)."""
    view_value, meta = view.meta.get("val"), {k: v for k, v in n.meta.items() if k in ("stack_trace",
                                                                                      "nn_module_stack")}
    if n.target is not aten.copy_.default:
        written = g.call_function(twin, tuple(n.args), dict(n.kwargs))
        written.meta.update({**meta, "val": view_value})
        return written
    written, value = n.args[1], n.args[1].meta.get("val")
    if value is not None and view_value is not None and value.dtype != view_value.dtype:
        written = g.call_function(aten._to_copy.default, (written,), {"dtype": view_value.dtype})
        written.meta.update({**meta, "val": value.to(view_value.dtype)})
    if value is not None and view_value is not None and tuple(value.shape) != tuple(view_value.shape):
        written = g.call_function(aten.expand.default, (written, list(view_value.shape)))
        written.meta.update({**meta, "val": view_value})
    return written


def _check_no_stale_views(n: fx.Node, chain: List[fx.Node], order: Dict[fx.Node, int]) -> None:
    """Another view of the buffer, taken before the write and read after it, would see the write in eager
    PyTorch; out of place it would not: refuse rather than change the model's meaning."""
    for base in [v.args[0] for v in chain]:
        for other in base.users:
            if other in chain or order.get(other, len(order)) > order[n] or not _is_view_node(other):
                continue
            if any(order.get(u, -1) > order[n] for u in other.users):
                raise UnsupportedOpError(
                    f"node '{n.name}' ({n.target}){source_line(n)} writes in place into '{base.name}', and the view "
                    f"'{other.name}' of it, taken before the write, is read after it; write the buffer out of place "
                    "(torch.stack or torch.cat the pieces)")


def _is_view_node(n: fx.Node) -> bool:
    return n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and _is_view(n.target)


def _rewrite(gm: fx.GraphModule, n: fx.Node, twin, chain: List[fx.Node], order: Dict[fx.Node, int]) -> List[fx.Node]:
    """Replace the write ``n`` by scatters up the view chain; returns the new values."""
    g = gm.graph
    with g.inserting_before(n.next):  # in order, right after the write
        written = _written(g, n, twin, chain[0])  # the view's new value
        new_values = {chain[0]: written}
        value = written
        for view in chain:
            base = view.args[0]
            if view.target in _WHOLE_ALIASES:
                new = value
            else:
                new = g.call_function(_SCATTERS[view.target], (base, value, *view.args[1:]), dict(view.kwargs))
                new.meta.update({k: v for k, v in base.meta.items() if k in ("val",)})
                new.meta.update({k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack")})
            new_values[base] = new
            value = new
    # every read after the write sees the new values (the base, and views of it taken before the write)
    for old, new in new_values.items():
        for user in list(old.users):
            if user is not n and user not in new_values.values() and order.get(user, -1) > order[n] \
                    and user not in chain:
                user.replace_input_with(old, new)
    for user in list(n.users):
        user.replace_input_with(n, written)
    g.erase_node(n)
    return list(new_values.values())
