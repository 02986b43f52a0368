"""HQQ's quantized Linear (``hqq.core.quantize.HQQLinear``, which hqq's ``AutoHQQHFModel`` and transformers'
``HqqConfig`` install): a module, not a tensor subclass, that keeps its packed weight, scales and zeros and
computes ``x @ dequantize().T + bias``.

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
    """An HQQLinear, or a layer of one of hqq's inference backends (its own packing and kernels: refused).
    hqq's LoRA wrappers are not: they are traced through like any module, down to their HQQLinear."""
    return is_hqq_linear(module) or any(c.__module__.startswith("hqq.backends.") for c in type(module).__mro__)


def is_hqq_linear(module: nn.Module) -> bool:
    return any(c.__name__ == "HQQLinear" and c.__module__ == "hqq.core.quantize" for c in type(module).__mro__)


def check_hqq_layer(name: str, module: nn.Module) -> None:
    """Refuse an HQQ layer that is not an HQQLinear computing ``x @ dequantize().T + bias``, saying what to do."""
    if not is_hqq_linear(module):
        raise UnsupportedOpError(
            f"{name} is a layer of an hqq inference backend (hqq.utils.patching.prepare_for_inference), with its "
            "own weight packing and kernel: lrpfx explains hqq's HQQLinear layers only. Fix: explain the model as "
            "quantized (before prepare_for_inference), with HQQLinear's PyTorch backend")
    if not getattr(module, "ready", False) or getattr(module, "W_q", None) is None:
        raise UnsupportedOpError(f"{name} has no quantized weight yet (initialize=False). Fix: call its "
                                 "initialize() or load its state dict before explaining")
    if "forward" in module.__dict__:
        raise UnsupportedOpError(
            f"{name} has a forward of its own, set on the layer (hqq's prepare_for_inference does this): lrpfx "
            "cannot tell that it is x @ dequantize().T + bias. Fix: explain the model before prepare_for_inference, "
            "or remove it (del layer.forward) so that HQQLinear's own forward runs")
    backend = getattr(type(module).forward, "__name__", "")
    if backend not in _LINEAR_FORWARDS:
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
