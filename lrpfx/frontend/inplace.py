"""Writes into a buffer as data flow.

Export front-end: ``buf[:, t] = v``, ``buf[:, t].copy_(v)`` and ``buf[2:] += v`` (ATen: ``copy_``/``add_`` on a
``select``/``slice`` of ``buf``) become out-of-place scatters that return the new ``buf``, and every later read of
``buf`` (or of a view of it taken before the write) reads the new value. fx front-end: ``buf[index] = v`` is
recorded as ``operator.setitem`` and becomes ``write_at(buf, index, v)``, likewise.

So a buffer filled in place with values computed from the inputs (RWKV's time mixing, a forward substitution)
carries their relevance like any other value; the writes are copies (kind ``structural``). A write this module
cannot spell out of place is refused with the node and its source line where the value written depends on the
inputs: keeping the buffer as a constant would silently drop the relevance that flows through it.
"""
from __future__ import annotations

import contextlib
import operator
from typing import Dict, List, Set

import torch
import torch.fx as fx

from ..errors import UnsupportedOpError
from ..graph.nodes import OUT_OF_PLACE_FUNCTIONS, op_name, out_of_place_method, source_line
from ..rules.writes import write_at

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


# ---- fx front-end: ``buf[index] = value`` is recorded as operator.setitem, then written out of place ------------
@contextlib.contextmanager
def item_assignment_recorded():
    """While tracing: ``proxy[index] = value`` records an ``operator.setitem`` node (fx has no such node)."""
    had = "__setitem__" in fx.Proxy.__dict__

    def setitem(self, index, value):
        self.tracer.create_proxy("call_function", operator.setitem, (self, index, value), {})

    fx.Proxy.__setitem__ = setitem
    try:
        yield
    finally:
        if not had:
            del fx.Proxy.__setitem__


def functionalize_fx_writes(gm: fx.GraphModule, is_view) -> bool:
    """``setitem(buf, index, value)`` and ``buf[index].copy_(value)`` as ``write_at(buf, index, value)``: a new
    buffer every later read of ``buf`` reads. A write into a view of another tensor is refused, naming it."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    changed = False
    for n in list(gm.graph.nodes):
        write = _fx_write(n)
        if write is None:
            continue
        base, index, value = write
        if is_view(base):
            raise UnsupportedOpError(
                f"node '{n.name}'{source_line(n)} writes into '{base.name}', a view of another tensor; lrpfx spells "
                "writes out of place only into a tensor itself: write the buffer out of place (torch.stack or "
                "torch.cat the pieces)")
        _out_of_place_update(value, base, index)
        with gm.graph.inserting_before(n):
            new = gm.graph.call_function(write_at, (base, index, value))
        new.meta.update({k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack")})
        for user in list(base.users):
            if user is not new and user is not n and order.get(user, -1) > order[n]:
                user.replace_input_with(base, new)
        for user in list(n.users):
            user.replace_input_with(n, new)
        view = n.args[0] if n.op == "call_method" else None
        gm.graph.erase_node(n)
        if view is not None and not view.users:
            gm.graph.erase_node(view)
        changed = True
    if changed:
        gm.recompile()
    return changed


def _out_of_place_update(value, base: fx.Node, index) -> None:
    """``buf[index] += v`` is ``t = buf[index]; t += v; buf[index] = t``: the in-place update of the view is
    written back by the write itself, so it runs out of place (and the view's base is not changed twice)."""
    if not isinstance(value, fx.Node) or not value.args or not isinstance(value.args[0], fx.Node):
        return
    view = value.args[0]
    if not (view.op == "call_function" and view.target is operator.getitem and view.args[0] is base
            and view.args[1] == index):
        return
    if value.op == "call_function" and value.target in OUT_OF_PLACE_FUNCTIONS:
        value.target = OUT_OF_PLACE_FUNCTIONS[value.target]
    elif value.op == "call_method" and value.target.endswith("_") and not value.target.endswith("__"):
        value.target = out_of_place_method(value.target)


def _fx_write(n: fx.Node):
    """``(base, index, value)`` of ``base[index] = value`` or ``base[index].copy_(value)``, else None."""
    if n.op == "call_function" and n.target is operator.setitem and isinstance(n.args[0], fx.Node):
        return n.args[0], n.args[1], n.args[2]
    if n.op == "call_method" and n.target == "copy_" and len(n.args) == 2 and isinstance(n.args[0], fx.Node):
        view = n.args[0]
        if view.op == "call_function" and view.target is operator.getitem and len(view.users) == 1 \
                and isinstance(view.args[0], fx.Node):
            return view.args[0], view.args[1], n.args[1]
    return None
