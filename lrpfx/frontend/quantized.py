"""Quantized weights (torchao's ``quantize_``): a Linear whose weight is a quantized tensor subclass is explained
as the linear layer ``linear(x, dequantized(W), b)``, so the Linear rule applies. bitsandbytes' 4-bit Linear and
HQQ's ``HQQLinear`` (:mod:`lrpfx.frontend.quantized_hqq`) are read the same way.

Both front-ends rewrite such a layer into that form: fx keeps the module whole (one ``call_module`` node), torch.export
records the subclass's kernel spelled out on its inner tensors (``mm`` on the integer data, times the scales).
The dense weight is a node of the graph, computed from the quantized one where it is read: the forward's copy is
freed after the forward's linear, and each relevance step computes its own (:func:`is_dequantized`), so no more
than one layer's dense weight is alive at a time and the model is never dequantized as a whole.

Only weight-only quantization is a linear map of the input: a layer that quantizes its input as well (dynamic
activation quantization) or scales it first is refused, naming the layer and the fix.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import meta_keys
from ..errors import UnsupportedOpError
from .common import calls_of
from .normalise import _depending_on_inputs as depending_on_inputs
from .quantized_hqq import check_hqq_layer, hqq_attributes, is_hqq_layer

aten = torch.ops.aten

# attributes of torchao's weight tensors that, when set, make the layer do more to its input than a matmul
_INPUT_TRANSFORMS = ("act_quant_kwargs", "activation_quantization", "act_pre_scale", "input_quant_func")


def dequantized(weight) -> torch.Tensor:
    """The dense weight a quantized weight stands for: the quantized tensor's own ``dequantize()``, bitsandbytes'
    ``dequantize_4bit`` for its 4-bit parameters, or an HQQ layer's ``dequantize()`` (through its
    :class:`~lrpfx.frontend.quantized_hqq.HQQWeight`: the layer keeps the packed weight, scales and zeros)."""
    if _is_bitsandbytes(weight):
        import bitsandbytes.functional as bnb_functional  # optional: only a model quantized with it gets here
        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state)
    return weight.dequantize()


def is_dequantized(node) -> bool:
    """Whether a graph node computes a dense weight from a quantized one (the program recomputes it per step)."""
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target is dequantized


def _is_bitsandbytes(tensor) -> bool:
    return type(tensor).__module__.startswith("bitsandbytes")


def is_quantized(tensor) -> bool:
    """A tensor subclass standing for a weight (torchao's ``Int8Tensor``, ``IntxUnpackedToInt8Tensor``,
    bitsandbytes' ``Params4bit`` ...), not a plain tensor or parameter."""
    return isinstance(tensor, torch.Tensor) and type(tensor) not in (torch.Tensor, nn.Parameter) \
        and (hasattr(type(tensor), "__tensor_flatten__") or _is_bitsandbytes(tensor))


def is_quantized_layer(module: nn.Module) -> bool:
    """A module that owns a quantized parameter, or an HQQ layer (the fx front-end keeps it whole)."""
    return any(is_quantized(p) for p in module._parameters.values()) or is_hqq_layer(module)


def quantized_layers(model: nn.Module) -> Dict[str, nn.Module]:
    """The model's modules that own a quantized parameter, by path; each is checked (:func:`check_layer`)."""
    layers = {}
    for path, module in model.named_modules():
        if is_quantized_layer(module):
            check_layer(path, module)
            layers[path] = module
    return layers


def check_layer(path: str, module: nn.Module) -> None:
    """Refuse a quantized layer lrpfx cannot explain as a linear layer with a dense weight, saying what to do."""
    name = f"layer '{path or type(module).__name__}' ({type(module).__name__})"
    if is_hqq_layer(module):
        check_hqq_layer(name, module)
        _check_dense(name, module, module, "Fix: leave that layer out of the HQQ quantization")
        return
    weight = module._parameters.get("weight")
    leave_out = f"leave it out of quantize_ with filter_fn=lambda module, name: name != '{path}'"
    fix = ("Fix: quantize that layer weight-only (torchao's Int8WeightOnlyConfig, or IntxWeightOnlyConfig for int4 "
           f"on CPU), or {leave_out}")
    if _is_bitsandbytes(weight):
        _check_bitsandbytes(name, module, weight, leave_out)
    else:
        _check_torchao(name, module, weight, fix, leave_out)
    _check_dense(name, module, weight, fix)


def _check_dense(name: str, module: nn.Module, weight, fix: str) -> None:
    dense, shape = dequantized(weight), (module.out_features, module.in_features)
    if type(dense) is not torch.Tensor or tuple(dense.shape) != shape or not dense.is_floating_point():
        raise UnsupportedOpError(f"{name}: its {type(weight).__name__} weight dequantizes to "
                                 f"{type(dense).__name__} of shape {tuple(dense.shape)}, not a float tensor of the "
                                 f"layer's shape {shape}. {fix}")


def _check_torchao(name: str, module: nn.Module, weight, fix: str, leave_out: str) -> None:
    if not isinstance(module, nn.Linear) or type(module).forward is not nn.Linear.forward:
        raise UnsupportedOpError(f"{name} holds a quantized parameter; lrpfx explains quantized torch.nn.Linear "
                                 f"layers (with Linear's own forward) only. Fix: {leave_out}")
    others = [k for k, p in module._parameters.items() if k != "weight" and is_quantized(p)]
    if others:
        raise UnsupportedOpError(f"{name} has a quantized {others[0]}; lrpfx reads quantized weights only. {fix}")
    kind = type(weight).__name__
    if not callable(getattr(weight, "dequantize", None)) or type(weight).dequantize is torch.Tensor.dequantize:
        raise UnsupportedOpError(f"{name} has a weight of type {kind}, a tensor subclass without dequantize(): "
                                 f"lrpfx cannot read it as a dense weight. {fix}")
    for attribute in _INPUT_TRANSFORMS:
        if getattr(weight, attribute, None) is not None:
            raise UnsupportedOpError(
                f"{name} has a weight of type {kind} with {attribute} set: the layer quantizes or rescales its "
                f"input, so it is not the linear map of a dense weight that LRP's linear rule explains. {fix}")


def _check_bitsandbytes(name: str, module: nn.Module, weight, leave_out: str) -> None:
    """bitsandbytes' 4-bit Linear dequantizes its weight and multiplies in float: a linear layer. Its 8-bit
    Linear (LLM.int8) quantizes the input as well."""
    if getattr(weight, "quant_state", None) is None or not isinstance(module, nn.Linear):
        raise UnsupportedOpError(
            f"{name} has a bitsandbytes weight of type {type(weight).__name__}: lrpfx explains bitsandbytes' 4-bit "
            "Linear (Linear4bit: the weight dequantized for a float matmul) only; the 8-bit Linear quantizes its "
            "input too, which is not the linear map of a dense weight. Fix: load the model in 4 bit "
            "(load_in_4bit), or keep that layer in float (llm_int8_skip_modules)")


# ---- fx: a quantized Linear is one call_module node --------------------------------------------------------------
def dequantize_fx(gm: fx.GraphModule, model: nn.Module) -> bool:
    """Rewrite each call of a quantized Linear into ``linear(x, dequantized(weight), bias)``."""
    layers = quantized_layers(model)
    changed = False
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target in layers:
            module = layers[n.target]
            attr = hqq_attributes(gm, n.target, module) if is_hqq_layer(module) \
                else lambda kind: gm.graph.get_attr(f"{n.target}.{kind}")
            _replace(gm, n, n.args[0], n.target, module, F.linear, attr)
            changed = True
    if changed:
        gm.recompile()
    return changed


def _replace(gm: fx.GraphModule, n: fx.Node, x: fx.Node, path: str, module: nn.Linear, linear,
             attr) -> fx.Node:
    """``linear(x, dequantized(W), b)`` in place of ``n``, carrying the module's path (by_name, by_type)."""
    with gm.graph.inserting_before(n):
        dense = gm.graph.call_function(dequantized, (attr("weight"),))
        bias = attr("bias") if module.bias is not None else None
        new = gm.graph.call_function(linear, (x, dense, bias))
    new.meta.update({k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack", "val")})
    new.meta[meta_keys.MODULE] = path
    new.meta[meta_keys.MODULE_OBJECT] = module
    n.replace_all_uses_with(new)
    gm.graph.erase_node(n)
    return dense


def check_exportable(model: nn.Module) -> None:
    """bitsandbytes' parameters cannot be traced by torch.export (they are rebuilt on fake tensors): say so."""
    for path, module in quantized_layers(model).items():
        if _is_bitsandbytes(getattr(module, "weight", None)):
            raise UnsupportedOpError(
                f"layer '{path}' ({type(module).__name__}) holds a bitsandbytes weight, which torch.export cannot "
                "trace: explain this model with frontend='fx' (the layer is kept whole there), or quantize it with "
                "torchao (Int8WeightOnlyConfig, IntxWeightOnlyConfig), which both front-ends read")


# ---- torch.export: a quantized Linear is its kernel on the subclass's inner tensors ------------------------------
def dequantize_export(gm: fx.GraphModule, model: nn.Module, module_path, root: str) -> bool:
    """Replace the ops each call of a quantized Linear exported into (``module_path(node)`` gives a node's module
    paths, outermost first) by ``aten.linear(x, dequantized(weight), bias)``."""
    layers = quantized_layers(model)
    if not layers:
        return False
    attrs = {id(t): n for n in gm.graph.nodes if n.op == "get_attr"
             for t in (_attribute(gm, n.target),) if t is not None}
    groups: Dict[str, List[fx.Node]] = {}
    for n in gm.graph.nodes:
        paths = module_path(n) if n.op == "call_function" else ()
        path = next((p for p in paths if p in layers), None)
        if path is not None:
            groups.setdefault(path, []).append(n)
    data = depending_on_inputs(gm)
    for path, nodes in groups.items():
        module = layers[path]
        for call in calls_of(nodes):
            x, out = _ends(call, path, data)

            def attr(kind, module=module):
                if is_hqq_layer(module):
                    return hqq_attributes(gm, path, module)(kind)
                tensor = getattr(module, kind)
                if id(tensor) in attrs:
                    return attrs[id(tensor)]
                target = f"{root}.{path}.{kind}" if root else f"{path}.{kind}"
                return gm.graph.get_attr(target)

            dense = _replace(gm, out, x, path, module, aten.linear.default, attr)
            _fake_value(dense, (module.out_features, module.in_features), out)
            for n in reversed(call):
                if n is not out and not n.users:
                    gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    return True


def _attribute(gm: fx.GraphModule, target: str) -> Optional[torch.Tensor]:
    try:
        value = gm
        for part in target.split("."):
            value = getattr(value, part)
    except AttributeError:
        return None
    return value if isinstance(value, torch.Tensor) else None


def _ends(call: List[fx.Node], path: str, data: set) -> Tuple[fx.Node, fx.Node]:
    """The one tensor entering one call of the layer from the inputs (not its weight's pieces, not a symbolic
    size) and the one value leaving it."""
    inside = set(call)
    inputs = list(dict.fromkeys(a for n in call for a in n.all_input_nodes if a not in inside and a in data
                                and isinstance(a.meta.get("val"), torch.Tensor)))
    outputs = [n for n in call if any(u not in inside for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedOpError(
            f"the quantized layer '{path}' exported as ops with {len(inputs)} tensor inputs and {len(outputs)} "
            "outputs, not one of each: lrpfx cannot tell its input and output apart. Explain it with "
            "frontend='fx', or leave the layer out of quantize_ (filter_fn)")
    return inputs[0], outputs[0]


def _fake_value(dense: fx.Node, shape: Tuple[int, int], like: fx.Node) -> None:
    """Export's record of the dense weight (a fake tensor in export's mode, of the layer's output dtype), so no
    extra run is needed."""
    value = like.meta.get("val")
    mode = getattr(value, "fake_mode", None)
    if mode is not None:
        with mode:
            dense.meta["val"] = torch.empty(shape, dtype=value.dtype, device=value.device)
