"""Front-end: trace a model into a ``torch.fx`` graph.

The tracer keeps ``torch.nn`` modules whole (plus any the user names) and records each node's source line, so
that later errors can point at the user's code. What every node produces is recorded by
:mod:`lrpfx.frontend.common`, for both front-ends.
"""
from __future__ import annotations

import inspect
import operator
from typing import Callable, Iterable, Optional

import torch.fx as fx
from torch import nn

from ..errors import InputError, OutputError, TraceError, UnsupportedOpError, torch_message
from ..graph.nodes import source_line
from ..graph.recurrent import packing_error, packs_sequences
from ..graph.registry import REGISTRY
from .common import failure_location
from .functions import functions_as_nodes
from .inplace import functionalize_fx_writes, item_assignment_recorded
from .quantized import dequantize_fx, is_quantized_layer
from .spectral import fuse_real_spectra

class LrpfxTracer(fx.Tracer):
    """``torch.fx`` tracer that keeps torch.nn modules, the user's named modules or types, and the module classes
    of registered ops (:func:`lrpfx.register_op`) as leaves; registered functions are recorded as one call."""

    def __init__(self, leaf_modules: Iterable = ()):
        # a registered autograd.Function class is kept whole by functions_as_nodes, not wrapped
        super().__init__(autowrap_functions=tuple(f for f in REGISTRY.functions() if not isinstance(f, type)))
        self.record_stack_traces = True
        self.leaf_names = frozenset(m for m in leaf_modules if isinstance(m, str))
        self.leaf_types = tuple(m for m in leaf_modules if isinstance(m, type)) + REGISTRY.modules()

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name in self.leaf_names or (self.leaf_types and isinstance(m, self.leaf_types)):
            return True
        if is_quantized_layer(m):  # one call, rewritten into a linear layer of its dequantized weight
            return True
        return super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module, num_inputs: int, leaf_modules: Iterable = (),
          output: Optional[Callable] = None) -> fx.GraphModule:
    """Symbolically trace ``model`` with ``num_inputs`` positional tensor inputs into a GraphModule.

    Arguments of ``forward`` after the first ``num_inputs`` are fixed to their defaults. ``output`` selects the
    tensor to explain when ``forward`` returns a tuple or dict. Raises :class:`TraceError` with the user's
    source line when tracing fails.
    """
    tracer = LrpfxTracer(leaf_modules)
    concrete = _defaults_after(model, num_inputs)
    before = _attribute_names(model)
    try:
        with functions_as_nodes(tracer), item_assignment_recorded():
            graph = tracer.trace(model, concrete_args=concrete or None)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as exc:  # fx raises TraceError, TypeError, AttributeError, ... from the user's code
        if packs_sequences(exc):
            raise packing_error(failure_location(exc)) from exc
        raise TraceError(_trace_failure_message(model, exc)) from exc
    finally:
        _remove_added_attributes(model, before)
    _inline_fixed_arguments(gm, concrete)
    dequantize_fx(gm, model)  # quantized Linears: linear layers of a weight dequantized where it is read
    functionalize_fx_writes(gm, REGISTRY.is_view)  # buf[i] = v: a new buffer, before in-place ops are read as such
    functionalize_inplace(gm)  # first: dead-code elimination would drop in-place statements whose result is unused
    fuse_real_spectra(gm)
    _select_output(gm, output)
    return gm


def _inline_fixed_arguments(gm: fx.GraphModule, fixed: dict) -> None:
    """fx keeps a placeholder (and a guard) for every argument fixed to its default; the program's inputs must be
    the explained inputs only (an extra placeholder would swallow the target), so the value goes in its place."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    extra = placeholders[len(placeholders) - len(fixed):] if fixed else []
    for node, value in zip(extra, fixed.values()):
        for user in list(node.users):
            if user.op == "call_function" and user.target is operator.eq:  # the guard's check: value == default
                for guard in list(user.users):
                    gm.graph.erase_node(guard)
                gm.graph.erase_node(user)
            else:
                user.args = fx.node.map_arg(user.args, lambda a: value if a is node else a)
                user.kwargs = fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)
        gm.graph.erase_node(node)
    if extra:
        gm.recompile()


def _attribute_names(model: nn.Module) -> dict:
    return {store: set(getattr(model, store)) for store in ("__dict__", "_parameters", "_buffers", "_modules")}


def _remove_added_attributes(model: nn.Module, before: dict) -> None:
    """fx stores tensors that forward creates or closes over (``_tensor_constant0``) on the traced root, i.e. the
    user's model; the GraphModule has its own copies by now, so take them off again: the model is never changed."""
    for store, names in before.items():
        table = getattr(model, store)
        for name in set(table) - names:
            del table[name]


_INPLACE_OPERATORS = {operator.iadd, operator.isub, operator.imul, operator.itruediv}


def _mutated_input(gm: fx.GraphModule, n: fx.Node) -> Optional[fx.Node]:
    """The graph value an in-place op overwrites, or None."""
    first = n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None
    if n.op == "call_module" and getattr(gm.get_submodule(n.target), "inplace", False):
        return first
    if n.op == "call_function" and (n.kwargs.get("inplace") or n.target in _INPLACE_OPERATORS):
        return first
    if n.op == "call_method" and n.target.endswith("_") and not n.target.endswith("__"):
        return first
    return None


def functionalize_inplace(gm: fx.GraphModule) -> None:
    """Make every read after an in-place op read the op's result, so the graph means the same when the program
    runs the op out of place (it must: relevance steps read values the in-place op would overwrite).

    An in-place op on a view of a tensor that is read again later would change that tensor too; that aliasing is
    refused with a clear error rather than explained wrongly.
    """
    order = {n: i for i, n in enumerate(gm.graph.nodes)}
    for n in list(gm.graph.nodes):
        target = _mutated_input(gm, n)
        if target is None:
            continue
        chain = [target]
        while REGISTRY.is_view(chain[-1]) and chain[-1].args and isinstance(chain[-1].args[0], fx.Node):
            chain.append(chain[-1].args[0])
        for base in chain[1:]:
            if any(order[u] > order[n] for u in base.users if u not in chain):
                raise UnsupportedOpError(
                    f"node '{n.name}'{source_line(n)} changes a view of '{base.name}' in place, and '{base.name}' "
                    "is read again later; lrpfx runs in-place ops out of place, which would change the model's "
                    "meaning here: write this op out of place (e.g. inplace=False)")
        for user in list(target.users):
            if user is not n and order[user] > order[n]:
                user.replace_input_with(target, n)
    gm.recompile()


def _defaults_after(model: nn.Module, num_inputs: int) -> dict:
    params = [p for p in inspect.signature(model.forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(params) < num_inputs and not any(
            p.kind == p.VAR_POSITIONAL for p in inspect.signature(model.forward).parameters.values()):
        raise InputError(f"{type(model).__name__}.forward takes {len(params)} positional inputs, "
                         f"but {num_inputs} were given")
    concrete = {}
    for p in params[num_inputs:]:
        if p.default is p.empty:
            raise InputError(f"{type(model).__name__}.forward needs the input '{p.name}' as well: "
                             f"pass all required inputs as a tuple, e.g. explain(model, (x, {p.name}))")
        concrete[p.name] = p.default
    return concrete


def _trace_failure_message(model: nn.Module, exc: BaseException) -> str:
    where = failure_location(exc)
    return (
        f"could not trace {type(model).__name__} with torch.fx: {type(exc).__name__}: {torch_message(exc)}{where}\n"
        "Ways out: (1) if this is data-dependent control flow (an `if` or loop on tensor values), mark the "
        "module that contains it as a leaf, e.g. explain(..., leaf_modules=['block.name']) or "
        "leaf_modules=[MyBlock], and give that leaf a rule with Composite(by_name={'block.name': Pass()}); "
        "(2) rewrite the branch with tensor ops (torch.where) or move it out of forward."
    )


def apply_selector(gm: fx.GraphModule, output: Callable, result):
    """``output(result)`` recorded into the graph: the selector runs on fx proxies of the traced output, so one
    that computes (``o[0][:, :2]``, ``o.sum(dim=(2, 3))``, ``torch.cat(o, 1)``) becomes nodes before the output."""
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    tracer = fx.proxy.GraphAppendingTracer(gm.graph)
    tracer.record_stack_traces = True
    proxies = fx.node.map_arg(result, lambda n: fx.Proxy(n, tracer))
    try:
        with gm.graph.inserting_before(out_node):
            selected = output(proxies)
    except Exception as exc:
        raise OutputError(f"the output= selector failed on the traced output {result!r}: {type(exc).__name__}: "
                          f"{exc}{failure_location(exc)}\nA selector picks or computes the tensor to explain from "
                          "what forward returns, e.g. output=lambda out: out[0] or output=lambda out: out['logits']"
                          ) from exc
    return fx.node.map_aggregate(selected, lambda v: v.node if isinstance(v, fx.Proxy) else v)


def _select_output(gm: fx.GraphModule, output: Optional[Callable]) -> None:
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    result = out_node.args[0]
    if output is not None:
        result = apply_selector(gm, output, result)
    if not isinstance(result, fx.Node):
        raise OutputError(
            f"{gm.__class__.__name__}.forward returns {type(result).__name__} {result!r}, not one tensor: pass an "
            "output= selector that picks the tensor to explain, e.g. output=lambda out: out[0] or "
            "output=lambda out: out['logits']"
        )
    out_node.args = (result,)
    gm.graph.eliminate_dead_code()
    gm.recompile()
