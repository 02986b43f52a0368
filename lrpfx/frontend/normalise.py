"""Graph normalisation shared by both front-ends: rewrite ops into the ones the classification knows.

Each pass keeps the forward's meaning exactly and only changes how it is spelled:

* :func:`functionalize_aten_inplace` — ATen in-place ops (``add_``, ``mul_``, ``div_`` on a tensor that is not
  a view) become their out-of-place overloads, as the fx front-end's in :mod:`lrpfx.frontend.fx`;
* :func:`batch_norm_calls` — export's ``_native_batch_norm_legit_no_training`` (a tuple) as ``aten.batch_norm``;
* :func:`named_tuple_fields` — ``torch.max(x, dim).values`` / ``.indices`` as items 0 / 1;
* :func:`fills_in_range` — a constant filled with a float its dtype cannot hold (``torch.tensor(finfo(float64)
  .min)`` made in the default float32) holds ``±inf``, as in eager mode, where export's ``full`` would raise;
* :func:`decompose_baddbmm` — ``baddbmm(c, a, b, beta, alpha)`` (Bloom's ALiBi attention scores) as
  ``alpha·(a @ b) + beta·c``, so the attention rules apply to the product and the bias is a summand;
* :func:`collapse_spelled_activations` — an elementwise function of one tensor written out in pieces, where
  the tensor meets itself again (``0.5·x·(1 + tanh(c·(x + 0.044715·x³)))``, ``x·sigmoid(1.702·x)``), as one
  :class:`SpelledActivation` call: an activation (Pass), not the rules of its pieces.
"""
from __future__ import annotations

import math
import operator
from typing import Dict, List, Optional, Set

import torch
import torch.fx as fx
from torch import nn

from .. import meta_keys
from ..errors import UnsupportedOpError
from ..graph.analyses import constant_by_design
from ..graph.decompose import decompose_unknown_ops
from ..graph.nodes import op_name, source_line
from ..graph.registry import REGISTRY

aten = torch.ops.aten

# ---- constants ----------------------------------------------------------------------------------------------
_FILLS = (aten.full.default, aten.scalar_tensor.default)


def fills_in_range(gm: fx.GraphModule) -> bool:
    """Give constant fills that overflow their dtype the value eager mode gives them, ``±inf`` (see the module
    docstring); True when the graph changed."""
    changed = False
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in _FILLS:
            continue
        position = 1 if n.target is aten.full.default else 0
        value = n.args[position] if len(n.args) > position else None
        dtype = n.kwargs.get("dtype") or getattr(n.meta.get("val"), "dtype", None) or torch.get_default_dtype()
        if isinstance(value, float) and dtype.is_floating_point and math.isfinite(value) \
                and abs(value) > torch.finfo(dtype).max:
            n.args = n.args[:position] + (math.copysign(math.inf, value),) + n.args[position + 1:]
            changed = True
    return changed


# ---- ATen in-place ops ------------------------------------------------------------------------------------------


def _out_of_place(target) -> Optional[torch._ops.OpOverload]:
    """``aten.add_.Tensor`` -> ``aten.add.Tensor``; None when the op does not write its first argument or has no
    out-of-place twin."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    schema = target._schema
    if not schema.arguments or schema.arguments[0].alias_info is None or not schema.arguments[0].alias_info.is_write:
        return None
    name = target._opname
    if not name.endswith("_") or name.endswith("__"):
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, target._overloadname, None) if packet is not None else None


def functionalize_aten_inplace(gm: fx.GraphModule) -> bool:
    """Run ATen in-place ops out of place (reads after the op read its result; export records them so already).
    An in-place op on a view of an activation does so too when nothing reads the view's base afterwards."""
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    from_inputs = _depending_on_inputs(gm)
    changed = False
    for n in list(gm.graph.nodes):
        twin = _out_of_place(n.target) if n.op == "call_function" else None
        if twin is None or not n.args or not isinstance(n.args[0], fx.Node):
            continue
        target = n.args[0]
        chain = [target]
        while chain[-1].op == "call_function" and REGISTRY.is_view(chain[-1]) \
                and chain[-1].args and isinstance(chain[-1].args[0], fx.Node):
            chain.append(chain[-1].args[0])
        if len(chain) > 1:
            # a view: the op changes its base too. On a constant (BEiT fills index tables this way) it stays in
            # place. On an activation it runs out of place when only the view is read afterwards (its readers
            # then read the result); were the base read again, that would change the model's meaning
            base = chain[-1]
            if base not in from_inputs or not _is_float(base):
                continue
            if any(order[u] > order[n] for c in chain[1:] for u in c.users if u not in chain and u is not n):
                raise UnsupportedOpError(
                    f"node '{n.name}' ({n.target}){source_line(n)} changes a view of '{base.name}' in place, and "
                    f"'{base.name}' is read again later; lrpfx runs in-place ops out of place, which would change "
                    "the model's meaning here: write this op out of place")
        for user in list(target.users):
            if user is not n and order[user] > order[n]:
                user.replace_input_with(target, n)
        n.target = twin
        changed = True
    return changed


def _depending_on_inputs(gm: fx.GraphModule) -> Set[fx.Node]:
    """Nodes whose values depend on the inputs' values (not on their shapes only: ``x.new_zeros(...)``)."""
    found: Set[fx.Node] = set()
    for n in gm.graph.nodes:
        if n.op == "placeholder" or (any(a in found for a in n.all_input_nodes) and not constant_by_design(n, found)):
            found.add(n)
    return found


def _is_float(n: fx.Node) -> bool:
    value = n.meta.get("val")
    return isinstance(value, torch.Tensor) and value.dtype.is_floating_point


def batch_norm_calls(gm: fx.GraphModule) -> bool:
    """``_native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)[0]`` as ``aten.batch_norm``."""
    changed = False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target is not aten._native_batch_norm_legit_no_training.default:
            continue
        items = list(n.users)
        if not all(u.target is operator.getitem and u.args[1] == 0 for u in items):
            continue  # the saved statistics are read: leave it (it stays an op without a rule, named)
        x, weight, bias, mean, var, momentum, eps = n.args[:7]
        with gm.graph.inserting_before(n):
            call = gm.graph.call_function(aten.batch_norm.default,
                                          (x, weight, bias, mean, var, False, momentum, eps, False))
        call.meta = dict(items[0].meta) if items else dict(n.meta)
        for u in items:
            u.replace_all_uses_with(call)
            gm.graph.erase_node(u)
        gm.graph.erase_node(n)
        changed = True
    return changed


# ---- named tuples (fx) ----------------------------------------------------------------------------------------
_FIELDS = {"values": 0, "indices": 1}


def named_tuple_fields(gm: fx.GraphModule) -> bool:
    """``getattr(torch.max(x, 1), "values")`` as ``torch.max(x, 1)[0]``: one tuple-item rule for both spellings."""
    changed = False
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target is getattr and len(n.args) == 2 and n.args[1] in _FIELDS:
            source = n.args[0]
            value = source.meta.get(meta_keys.VALUE) if isinstance(source, fx.Node) else None
            if value is not None and value.tuple_len is not None:
                n.target, n.args = operator.getitem, (source, _FIELDS[n.args[1]])
                changed = True
    return changed


# ---- baddbmm --------------------------------------------------------------------------------------------------
def decompose_baddbmm(gm: fx.GraphModule) -> bool:
    """``baddbmm(c, a, b, beta=β, alpha=α)`` as ``α·(a @ b) + β·c`` (what the fused kernel computes)."""
    changed = False
    g = gm.graph
    for n in list(g.nodes):
        fused = (n.op == "call_function" and n.target in (torch.baddbmm, aten.baddbmm.default)) or (
            n.op == "call_method" and n.target == "baddbmm")
        if not fused or len(n.args) < 3:
            continue
        shift, a, b = n.args[:3]
        beta, alpha = n.kwargs.get("beta", 1), n.kwargs.get("alpha", 1)
        if isinstance(beta, fx.Node) or isinstance(alpha, fx.Node) or set(n.kwargs) - {"beta", "alpha"}:
            continue
        with g.inserting_before(n):
            new = [g.call_function(torch.matmul, (a, b))]
            if alpha != 1:
                new.append(g.call_function(torch.mul, (new[-1], alpha)))
            if beta != 0:
                product = new[-1]
                if beta != 1:
                    shift = g.call_function(torch.mul, (shift, beta))
                    new.append(shift)
                new.append(g.call_function(torch.add, (product, shift)))
        for m in new:
            m.meta["stack_trace"] = n.meta.get("stack_trace")
            m.meta["nn_module_stack"] = n.meta.get("nn_module_stack")
        n.replace_all_uses_with(new[-1])
        g.erase_node(n)
        changed = True
    return changed


# ---- spelled-out activations ----------------------------------------------------------------------------------
def _pointwise(n: fx.Node) -> bool:
    """An elementwise call, as registry rows say (``OpSpec.pointwise``)."""
    return n.op in ("call_function", "call_method") and REGISTRY.is_pointwise(n)


class SpelledActivation(nn.Module):
    """An elementwise function of one tensor that the model writes out in pieces, kept as one activation.

    It holds the pieces as a small graph (not a registered submodule: it has no parameters, only numbers)."""

    def __init__(self, fn: fx.GraphModule, label: str):
        super().__init__()
        object.__setattr__(self, "fn", fn)
        self.label = label
        try:  # f(0) = 0 matters to the relevance-support analysis (lrpfx.graph.canonize)
            with torch.no_grad():
                self.lrpfx_zero_at_zero = bool(fn(torch.zeros((), dtype=torch.float64)) == 0)
        except Exception:  # a piece that needs a shaped input: do not promise anything
            self.lrpfx_zero_at_zero = False

    def forward(self, x):
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.label


def _tensor_meta(n: fx.Node):
    """``(shape, dtype)`` of a node's tensor value from a recording run or from export, else None."""
    value = n.meta.get(meta_keys.VALUE)
    if value is not None:
        return (tuple(value.shape), value.dtype) if value.is_tensor else None
    value = n.meta.get("val")
    return (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else None


def _elementwise_of(n: fx.Node, root: Dict[fx.Node, Optional[fx.Node]]) -> Optional[fx.Node]:
    """The one tensor ``n`` is an elementwise function of (through earlier pointwise nodes), or None."""
    if not _pointwise(n):
        return None
    sources = set()
    for a in n.all_input_nodes:
        if a.op == "get_attr" or (a in root and root[a] is None):
            return None  # parameters and buffers: keep the node (its module or rule may need them)
        sources.add(root.get(a) or a)
    if len(sources) != 1 or any(isinstance(v, (list, tuple, dict)) for v in (*n.args, *n.kwargs.values())):
        return None
    (source,) = sources
    here, there = _tensor_meta(n), _tensor_meta(source)
    if here is None or there is None or here[0] != there[0] or not here[1].is_floating_point:
        return None
    return source


def collapse_spelled_activations(gm: fx.GraphModule) -> bool:
    """Replace each elementwise region of one source tensor, in which the source meets itself again (a product
    or sum of two of its functions), by one :class:`SpelledActivation` call. Returns whether anything changed."""
    root: Dict[fx.Node, Optional[fx.Node]] = {}
    meets: Set[fx.Node] = set()
    for n in gm.graph.nodes:
        source = _elementwise_of(n, root)
        if source is None:
            if _pointwise(n):
                root[n] = None
            continue
        root[n] = source
        if sum(isinstance(a, fx.Node) for a in (*n.args, *n.kwargs.values())) >= 2:
            meets.add(n)
    changed = False
    for region in _regions(root, meets):
        for sub, out in _closed_parts(region, meets):
            _collapse_region(gm, sub, out, root[out])
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed


def _regions(root, meets) -> List[List[fx.Node]]:
    """Connected groups of pointwise nodes of one source that contain a meeting point, in graph order."""
    parent: Dict[fx.Node, fx.Node] = {}

    def find(a):
        while parent[a] is not a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    members = [n for n, s in root.items() if s is not None]
    for n in members:
        parent[n] = n
    for n in members:
        for a in n.all_input_nodes:
            if a in parent and root[a] is root[n]:
                parent[find(a)] = find(n)
    groups: Dict[fx.Node, List[fx.Node]] = {}
    for n in members:
        groups.setdefault(find(n), []).append(n)
    return [g for g in groups.values() if any(n in meets for n in g)]


def _closed_parts(region: List[fx.Node], meets) -> List[tuple]:
    """Sub-regions with exactly one value used outside: the region itself, or, when several of its values are
    used outside, the ancestors of each such value that nothing else reads."""
    inside = set(region)
    outputs = [n for n in region if any(u not in inside for u in n.users)]
    if len(outputs) == 1:
        return [(region, outputs[0])]
    parts, taken = [], set()
    for out in reversed(outputs):
        sub, stack = {out}, [out]
        while stack:
            for a in stack.pop().all_input_nodes:
                if a in inside and a not in sub and a not in taken:
                    sub.add(a)
                    stack.append(a)
        if any(n in meets for n in sub) and all(set(n.users) <= sub for n in sub if n is not out):
            parts.append(([n for n in region if n in sub], out))
            taken |= sub
    return parts


def _collapse_region(gm: fx.GraphModule, nodes: List[fx.Node], out: fx.Node, source: fx.Node) -> None:
    graph = fx.Graph()
    env = {source: graph.placeholder("x")}
    for n in nodes:
        env[n] = graph.node_copy(n, lambda a: env[a])
    graph.output(env[out])
    fn = fx.GraphModule(nn.Module(), graph, class_name="SpelledActivationFn")
    label = " -> ".join(op_name(n) for n in nodes)
    target = f"spelled_activation_{out.name}"
    gm.add_submodule(target, SpelledActivation(fn, label))
    with gm.graph.inserting_after(out):
        call = gm.graph.call_module(target, (source,))
    call.meta = {k: v for k, v in out.meta.items() if k in ("val", meta_keys.VALUE, "stack_trace", "nn_module_stack")}
    out.replace_all_uses_with(call)
    for n in reversed(nodes):
        gm.graph.erase_node(n)


def normalise(gm: fx.GraphModule) -> bool:
    """The passes both front-ends run once the values are known; True when the graph changed (its values must
    then be recorded again)."""
    changed = named_tuple_fields(gm)
    changed = decompose_baddbmm(gm) or changed
    changed = decompose_unknown_ops(gm) or changed  # before collapsing: the pieces may be spelled activations
    changed = collapse_spelled_activations(gm) or changed
    if changed:
        gm.graph.lint()
        gm.recompile()
    return changed
