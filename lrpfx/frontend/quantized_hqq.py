"""HQQ's quantized Linear (``hqq.core.quantize.HQQLinear``, also what transformers' ``HqqConfig`` loads): a module,
not a tensor subclass, that keeps its packed weight, scales and zeros and computes ``x @ dequantize().T + bias``.

lrpfx reads it as the linear layer of ``layer.dequantize()`` (:mod:`lrpfx.frontend.quantized` puts that call in the
graph where the weight is read). Known by its class, without importing hqq: a model without HQQ layers never
pays hqq's import.
"""
from __future__ import annotations

from torch import nn

from ..errors import UnsupportedOpError

# HQQLinear's forwards (HQQBackend values) that multiply the input by the dequantized weight, nothing more
_LINEAR_FORWARDS = frozenset({"forward_pytorch_backprop", "forward_pytorch_backprop_compile", "forward_pytorch",
                              "forward_pytorch_compile", "forward_aten_backprop", "forward_aten"})
_BACKEND_FIX = ("Fix: HQQLinear.set_backend(HQQBackend.PYTORCH) (from hqq.core.quantize) before explaining, "
                "and switch back afterwards")


def is_hqq_layer(module: nn.Module) -> bool:
    """A module whose class comes from the hqq package (HQQLinear, its LoRA wrapper, its inference backends)."""
    return any(c.__module__.split(".")[0] == "hqq" for c in type(module).__mro__)


def is_hqq_linear(module: nn.Module) -> bool:
    return any(c.__name__ == "HQQLinear" and c.__module__ == "hqq.core.quantize" for c in type(module).__mro__)


def check_hqq_layer(name: str, module: nn.Module) -> None:
    """Refuse an HQQ layer that is not HQQLinear computing ``x @ dequantize().T + bias``, saying what to do."""
    kind = type(module).__name__
    if not is_hqq_linear(module):
        raise UnsupportedOpError(
            f"{name} is hqq's {kind}, not its HQQLinear: lrpfx explains HQQLinear layers only (an inference backend's "
            "layer from hqq.utils.patching.prepare_for_inference or a LoRA wrapper computes something else). "
            "Fix: explain the model as loaded or quantized, before prepare_for_inference (or with the LoRA merged)")
    if not getattr(module, "ready", False) or getattr(module, "W_q", None) is None:
        raise UnsupportedOpError(f"{name} has no quantized weight yet (initialize=False). Fix: call its "
                                 "initialize() or load its state dict before explaining")
    forward = module.__dict__.get("forward") or type(module).forward
    backend = getattr(forward, "__name__", repr(forward))
    if "forward" in module.__dict__ or backend not in _LINEAR_FORWARDS:
        what = ("quantizes its input to int8 as well (HQQBackend.ATEN_FORWARD_INT8)" if backend == "forward_aten_int8"
                else f"runs the forward '{backend}', which lrpfx does not know as x @ dequantize().T + bias")
        raise UnsupportedOpError(f"{name} {what}: that is not the linear map of a dense weight that LRP's linear "
                                 f"rule explains. {_BACKEND_FIX}")


class HQQWeight(nn.Module):
    """What the graph reads an HQQ layer's dense weight from: ``dequantize()`` of the layer, which it refers to
    without owning it (moving or copying the program leaves the user's layer alone)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        object.__setattr__(self, "layer", layer)  # not a submodule

    def dequantize(self):
        return self.layer.dequantize()

    def extra_repr(self) -> str:
        return type(self.layer).__name__


def hqq_attributes(gm, path: str, layer: nn.Module):
    """``attr(kind)``: a ``get_attr`` node of ``gm`` for the layer's weight (its :class:`HQQWeight`) or its bias
    (a plain tensor attribute of HQQLinear, registered on ``gm`` as a buffer), each added to ``gm`` once."""
    stem = path.replace(".", "_")

    def attr(kind: str):
        name = f"hqq_{kind}_{stem}"
        if name not in gm._modules and name not in gm._buffers:
            if kind == "weight":
                gm.add_module(name, HQQWeight(layer))
            else:
                gm.register_buffer(name, getattr(layer, kind))
        return gm.graph.get_attr(name)
    return attr
