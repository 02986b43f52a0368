"""Second front-end: ``torch.export`` for models ``torch.fx`` cannot trace (Hugging Face transformers, attention).

``torch.export`` runs the model on example inputs and records an ATen-level graph (``aten.linear``,
``aten.scaled_dot_product_attention``, RMSNorm as ``pow``/``mean``/``rsqrt``/``mul``, ...) with the module path
of every op in ``nn_module_stack``. :func:`export_graph` turns it into the same kind of ``fx.GraphModule`` the fx
front-end gives, so one classification (:mod:`lrpfx.graph.classification`) and one program builder serve both:

* the model is called with named inputs (``input_ids``, ``attention_mask``, ``pixel_values``, ...) and fixed
  options (``use_cache=False``), and reduced to the one tensor to explain (``output=``, default: the logits,
  the last position's logits for a causal LM), so the graph has one output;
* export's own guard and assertion nodes go; ops that are the one computation of a module carry that module's
  path (so rules can be assigned by name and intermediate relevances are keyed by module);
* activation modules whose code export spelled out (GPT-2's tanh-GELU) and the user's ``leaf_modules`` are
  collapsed back into one call of the module;
* fused attention is split into its steps (:func:`decompose_attention`), ``addmm`` with a parameter becomes
  ``linear``; ATen in-place ops, decomposed BatchNorm calls, ``baddbmm`` and spelled-out activations are
  rewritten by :mod:`lrpfx.frontend.normalise`.

The batch axis and the axes of integer inputs (sequence length) are exported as dynamic where the model allows
it, so one program serves other batch sizes and lengths (:func:`dynamic_axes`; ``Explainer(dynamic=True)``
makes every axis dynamic); :func:`input_shape_pattern` says which axes stayed fixed.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import logging
import operator
import warnings
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from .. import meta_keys
from ..errors import LrpfxError, OutputError, TraceError, UnsupportedOpError, torch_message
from .attention import decompose_attention
from .functions import functions_named_on_export
from .inplace import functionalize_view_writes
from .multimodal import static_options, static_tracing
from .quantized import check_exportable, dequantize_export
from .spectral import fuse_real_spectra
from .normalise import _depending_on_inputs as depending_on_inputs, _out_of_place as out_of_place
from .normalise import (batch_norm_calls, collapse_spelled_activations, decompose_baddbmm, fills_in_range,
                        functionalize_aten_inplace)
from ..graph.decompose import decompose_unknown_ops
from ..graph.nodes import attribute, source_line
from ..graph.recurrent import is_recurrent
from ..graph.registry import REGISTRY, is_activation_module
from .common import calls_of, failure_location, values_from_export

aten = torch.ops.aten
_ROOT = "model"  # the user's model inside the wrapper that export sees


class _Call(nn.Module):
    """The user's model called with named (or positional) tensors and fixed options, reduced to one tensor."""

    def __init__(self, model: nn.Module, names: Optional[Sequence[str]], options: Dict[str, Any],
                 output: Optional[Callable]):
        super().__init__()
        self.model = model
        self.names, self.options, self.select = names, options, output or default_output

    def forward(self, *tensors):
        if self.names is None:
            out = self.model(*tensors, **self.options)
        else:
            out = self.model(**dict(zip(self.names, tensors)), **self.options)
        return self.select(out)


def default_output(out):
    """The tensor to explain: a tensor as is; a model output's ``logits`` — for ``[B, T, V]`` logits (a causal
    language model) those of the last position; a two-tower model's ``logits_per_image`` (CLIP, SigLIP:
    ``[images, texts]``, so the class is a text)."""
    logits = out
    if not isinstance(out, torch.Tensor):
        logits = next((_field(out, name) for name in ("logits", "logits_per_image") if _field(out, name) is not None),
                      None)
    if not isinstance(logits, torch.Tensor):
        raise OutputError(
            f"the model returns {type(out).__name__}, not a tensor or an output with .logits: pass an output= "
            "selector, e.g. output=lambda out: out.last_hidden_state[:, 0].sum(-1, keepdim=True)")
    return logits[:, -1] if logits.dim() == 3 else logits


def _field(out, name: str):
    return out.get(name) if isinstance(out, dict) else getattr(out, name, None)


def fixed_options(model: nn.Module) -> Dict[str, Any]:
    """Keyword options every explanation needs: no key/value cache (it is an extra output, not the logits)."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return {}
    return {"use_cache": False} if "use_cache" in params else {}


def dynamic_axes(inputs: Sequence[torch.Tensor], dynamic: Optional[bool] = None):
    """``dynamic_shapes`` for ``torch.export``: which input axes may vary in the exported program.

    ``None`` (the default): the batch axis of every input and every axis of integer inputs (token ids, masks,
    positions: the sequence length), so one program serves other batch sizes and lengths; the other axes of
    float inputs (image, audio and feature sizes) stay fixed, because exporting them symbolically costs minutes
    (window partitions, strided convolutions: Hugging Face Swin 70-115 s against 1.7 s at 64 px), and a new
    size simply gets a program of its own. ``True``: every axis; ``False``: none. Export still keeps an axis
    fixed where the model needs it fixed."""
    if dynamic is False:
        return None

    def axes(t: torch.Tensor):
        every = dynamic is True or not t.is_floating_point()
        Dim = torch.export.Dim
        return tuple(Dim.AUTO if (i == 0 or every) else Dim.STATIC for i in range(t.dim()))

    return (tuple(axes(t) for t in inputs),)


@contextlib.contextmanager
def quiet_torch():
    """torch.export's messages for its own developers, silenced while lrpfx exports: log lines (axis
    specialisations, symbols without user code), the partial graph it prints on a failure (once per retry), and
    warnings about module attributes it sees assigned (an RNN's ``_flat_weights``). What matters reaches the
    user as lrpfx's own error; anything else written to stderr meanwhile is passed on."""
    torch_logger = logging.getLogger("torch")
    level, torch_logger.level = torch_logger.level, logging.CRITICAL
    captured, dumps = io.StringIO(), []
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(captured):
            warnings.filterwarnings("ignore", message=".*_flat_weights")
            yield
    except Exception as exc:
        dumps.append(str(getattr(exc, "partial_fx_graph", "")))
        raise
    finally:
        torch_logger.setLevel(level)
        text = captured.getvalue()
        for dump in filter(None, dumps):
            text = text.replace(dump, "")
        if text.strip():
            sys.stderr.write(text)


def widen_unit_axes(inputs: Sequence[torch.Tensor], dynamic) -> Tuple[torch.Tensor, ...]:
    """The example inputs with every dynamic axis of size 1 repeated to size 2. torch.export fixes an axis whose
    example size is 0 or 1, so a first call with one sample would pin the batch size; the program recorded on
    the wider example serves size 1 as well (only shapes are traced, never these values)."""
    if dynamic is None:
        return tuple(inputs)
    widened = []
    for t, axes in zip(inputs, dynamic[0]):
        for i, axis in enumerate(axes):
            if axis is not torch.export.Dim.STATIC and t.shape[i] == 1:
                t = torch.cat([t, t], dim=i)
        widened.append(t)
    return tuple(widened)


def export_graph(model: nn.Module, names: Optional[Sequence[str]], inputs: Sequence[torch.Tensor],
                 options: Dict[str, Any], leaf_modules: Iterable = (), output: Optional[Callable] = None,
                 dynamic: Optional[bool] = None) -> fx.GraphModule:
    """``model`` exported on ``inputs`` and normalised for classification (see the module docstring);
    ``dynamic`` says which input axes may vary (:func:`dynamic_axes`)."""
    check_exportable(model)
    wrapper = _Call(model, names, {**fixed_options(model), **static_options(options)}, output)
    dynamic = dynamic_axes(inputs, dynamic)
    try:
        with quiet_torch(), functions_named_on_export(), static_tracing(options):
            try:
                program = torch.export.export(wrapper, widen_unit_axes(inputs, dynamic), dynamic_shapes=dynamic,
                                              strict=False)
                if not _serves_inputs(program, inputs):  # the model fixed an axis the example widened from 1
                    program = torch.export.export(wrapper, tuple(inputs), dynamic_shapes=dynamic, strict=False)
            except LrpfxError:
                raise
            except Exception:  # some models only export for fixed shapes
                program = torch.export.export(wrapper, tuple(inputs), strict=False)
    except LrpfxError:
        raise
    except Exception as exc:  # export raises many types from deep inside the user's code
        raise TraceError(_export_failure_message(model, exc)) from exc
    gm = program.module()
    gm.meta[meta_keys.MODULE_ROOT] = _ROOT  # module paths in nn_module_stack start with the wrapper's name
    gm.graph._codegen = fx.graph.CodeGen()  # plain positional inputs and one output, no pytree wrapping
    _drop_guards(gm)
    fills_in_range(gm)
    inline_autocast_regions(gm)
    fuse_real_spectra(gm)
    functionalize_view_writes(gm, depending_on_inputs(gm), out_of_place)
    functionalize_aten_inplace(gm)
    batch_norm_calls(gm)
    dequantize_export(gm, model, _module_path, _ROOT)
    _name_module_ops(gm, model)
    collapse_leaves(gm, model, leaf_modules)
    collapse_spelled_activations(gm)
    decompose_attention(gm)
    decompose_baddbmm(gm)
    _addmm_as_linear(gm)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    if values_from_export(gm) and decompose_unknown_ops(gm):  # ops no row names, as their Core ATen pieces
        collapse_spelled_activations(gm)
    return gm


def inline_autocast_regions(gm: fx.GraphModule) -> bool:
    """Export keeps a ``with torch.autocast(..., enabled=False)`` block (rotary embeddings in float32) as one call
    of ``higher_order.wrap_with_autocast`` on a submodule; its ops are the model's own, so they are inlined. A
    region that enables autocast would run at another precision inlined: refused, naming it."""
    wrap = getattr(torch.ops.higher_order, "wrap_with_autocast", None)
    changed = True
    while changed:
        changed = False
        for n in list(gm.graph.nodes):
            if wrap is None or n.op != "call_function" or n.target is not wrap:
                continue
            if n.args[2]:
                raise UnsupportedOpError(
                    f"node '{n.name}'{source_line(n)} runs a block under torch.autocast(enabled=True) inside the "
                    "model: lrpfx explains at one precision; run the model under autocast from outside, or not at all")
            _inline(gm, n, getattr(gm, n.args[4].target), n.args[5:])
            changed = True
    return changed


def _inline(gm: fx.GraphModule, n: fx.Node, sub: fx.GraphModule, operands) -> None:
    """Copy ``sub``'s graph in place of the call ``n`` (whose users take items of its tuple result)."""
    placeholders = [p for p in sub.graph.nodes if p.op == "placeholder"]
    values = dict(zip(placeholders, operands))
    result = None
    with gm.graph.inserting_before(n):
        for node in sub.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                result = fx.node.map_arg(node.args[0], values.get)
                break
            if node.op == "get_attr":
                name = f"{n.args[4].target}_{node.target}".replace(".", "_")
                setattr(gm, name, attribute(sub, node.target))
                values[node] = gm.graph.get_attr(name)
                continue
            values[node] = gm.graph.node_copy(node, values.get)
    items = result if isinstance(result, (tuple, list)) else (result,)
    for user in list(n.users):
        if user.target is operator.getitem:
            user.replace_all_uses_with(items[user.args[1]])
            gm.graph.erase_node(user)
        else:
            user.replace_input_with(n, items[0] if len(items) == 1 else result)
    gm.graph.erase_node(n)


def input_shape_pattern(gm: fx.GraphModule) -> Tuple[Tuple[Optional[int], ...], ...]:
    """Per input, its shape with ``None`` for the axes export kept dynamic: the shapes the program serves."""
    pattern = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            pattern.append(_shape_pattern(n.meta.get("val")))
    return tuple(pattern)


def _shape_pattern(value) -> Tuple[Optional[int], ...]:
    """A shape with ``None`` for symbolic sizes; a size export specialised (a symbol fixed to a number, e.g. a
    batch axis the model splits into a Python list) counts as fixed."""
    def fixed(d):
        if isinstance(d, torch.SymInt) and d.node.expr.is_number:
            return int(d.node.expr)
        return d if isinstance(d, int) else None
    return tuple(fixed(d) for d in getattr(value, "shape", ()))


def _serves_inputs(program, inputs: Sequence[torch.Tensor]) -> bool:
    """Whether an exported program takes inputs of these shapes (its user inputs' fixed axes match)."""
    by_name = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = [by_name.get(name) for name in program.graph_signature.user_inputs]
    return len(specs) == len(inputs) and all(
        spec is not None and all(d is None or d == size for d, size in zip(_shape_pattern(spec.meta.get("val")),
                                                                           t.shape))
        for spec, t in zip(specs, inputs))


def _export_failure_message(model: nn.Module, exc: BaseException) -> str:
    head = "\n".join(line for line in torch_message(exc).splitlines()[:6] if line.strip())
    return (f"could not export {type(model).__name__} with torch.export: {type(exc).__name__}: {head}"
            f"{failure_location(exc)}\n"
            "Ways out: replace data-dependent Python control flow (an `if` on tensor values) by tensor ops "
            "(torch.where), or keep that module whole with leaf_modules=[...] and give it a rule by name.")


# ---- clean-up -----------------------------------------------------------------------------------------------
def _drop_guards(gm: fx.GraphModule) -> None:
    """Remove export's input guards and tensor-metadata assertions (the program checks its inputs itself)."""
    for n in reversed(list(gm.graph.nodes)):
        is_guard = n.op == "call_module" and n.target == "_guards_fn"
        is_assert = n.op == "call_function" and getattr(n.target, "__name__", "").startswith("_assert")
        if (is_guard or is_assert) and not n.users:
            gm.graph.erase_node(n)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    result = output.args[0]
    if isinstance(result, (tuple, list)) and len(result) == 1:
        output.args = (result[0],)


def _module_path(n: fx.Node) -> Tuple[str, ...]:
    """Module paths of ``n`` from the outermost to the innermost, relative to the user's model."""
    paths = []
    for path, _ in (n.meta.get("nn_module_stack") or {}).values():
        if path == _ROOT or path.startswith(_ROOT + "."):
            paths.append(path[len(_ROOT) + 1:])
    return tuple(paths)


def _computes(n: fx.Node) -> bool:
    """A module's one op that reads its parameters (registry rows say which); a recurrent layer exports as one
    fused op, which carries the module's path (``rnn``, not ``gru``)."""
    return REGISTRY.is_parametrised(n) or is_recurrent(None, n)


def _name_module_ops(gm: fx.GraphModule, model: nn.Module) -> None:
    """Give the one parametrised op of a module (a Linear's ``linear``, a LayerNorm's ``layer_norm``) the
    module's path and object, so composites match it by name and type as in the fx front-end."""
    by_scope: Dict[str, List[fx.Node]] = {}
    for n in gm.graph.nodes:
        paths = _module_path(n)
        if n.op == "call_function" and paths and paths[-1] and _computes(n):
            by_scope.setdefault(paths[-1], []).append(n)
    for path, nodes in by_scope.items():
        if len(nodes) == 1:
            nodes[0].meta[meta_keys.MODULE] = path
            nodes[0].meta[meta_keys.MODULE_OBJECT] = model.get_submodule(path)


# ---- leaves ---------------------------------------------------------------------------------------------------
def collapse_leaves(gm: fx.GraphModule, model: nn.Module, leaf_modules: Iterable = ()) -> None:
    """Replace the ops of each leaf module by one call of the module: activation modules export spelled out
    (so they get the activation rule, not the rules of their pieces) and the user's ``leaf_modules``."""
    names = {m for m in leaf_modules if isinstance(m, str)}
    types = tuple(m for m in leaf_modules if isinstance(m, type)) + REGISTRY.modules()  # registered ops: whole

    def requested(path: str) -> bool:
        return path in names or bool(types and isinstance(model.get_submodule(path), types))

    groups: Dict[str, List[fx.Node]] = {}  # outermost leaf module -> its ops, in graph order
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        path = next((p for p in _module_path(n)
                     if p and (requested(p) or is_activation_module(model.get_submodule(p)))), None)
        if path is not None:
            groups.setdefault(path, []).append(n)
    for path, nodes in groups.items():
        for call in calls_of(nodes):  # a module called several times (ALBERT's shared layer): each call apart
            if requested(path) or len(call) > 1:  # an activation exported as one op needs no collapsing
                _collapse(gm, model, path, call, strict=requested(path))


def _collapse(gm: fx.GraphModule, model: nn.Module, path: str, nodes: List[fx.Node], strict: bool) -> None:
    inside = set(nodes)
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes
                                if a not in inside and a.op != "get_attr"))
    outputs = [n for n in nodes if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        if strict:
            raise UnsupportedOpError(
                f"leaf module '{path}' takes {len(inputs)} tensor inputs and gives {len(outputs)} outputs in the "
                "exported graph; with torch.export only modules with one input and one output can stay whole")
        return
    target = f"{_ROOT}.{path}"
    gm.add_submodule(target, model.get_submodule(path))
    with gm.graph.inserting_after(outputs[0]):
        call = gm.graph.call_module(target, (inputs[0],))
    call.meta[meta_keys.MODULE] = path
    call.meta["stack_trace"] = outputs[0].meta.get("stack_trace")
    call.meta["val"] = outputs[0].meta.get("val")
    if not is_activation_module(model.get_submodule(path)):
        # the module may return more than the one tensor the graph used (a tuple): only running it tells
        call.meta[meta_keys.WHOLE_MODULE] = True
    outputs[0].replace_all_uses_with(call)
    for n in reversed(nodes):
        gm.graph.erase_node(n)


# ---- attention ------------------------------------------------------------------------------------------------
def _addmm_as_linear(gm: fx.GraphModule) -> None:
    """``addmm(b, x, W)`` / ``mm(x, W)`` with a parameter ``W`` (GPT-2's Conv1D) as ``linear(x, Wᵀ, b)``."""
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in (aten.addmm.default, aten.mm.default):
            continue
        if n.target is aten.addmm.default:
            if n.kwargs.get("beta", 1) != 1 or n.kwargs.get("alpha", 1) != 1:
                continue
            bias, x, weight = n.args[:3]
        else:
            (x, weight), bias = n.args[:2], None
        if not (isinstance(weight, fx.Node) and weight.op == "get_attr"):
            continue
        with gm.graph.inserting_before(n):
            transposed = gm.graph.call_function(aten.t.default, (weight,))
            linear = gm.graph.call_function(aten.linear.default, (x, transposed, bias))
        linear.meta = dict(n.meta)
        n.replace_all_uses_with(linear)
        gm.graph.erase_node(n)
