"""A relevance program as a ``torch.export.ExportedProgram`` (:func:`to_exported`) with no lrpfx (nor model) code
left in it: only ATen ops and tensors, so ``torch.export.load(path).module()(x)`` runs anywhere torch runs.
"""
from __future__ import annotations

import warnings
from typing import Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch import nn

from .. import meta_keys
from ..errors import InputError
from .nodes import num_inputs


def example_inputs_for(program) -> Tuple[torch.Tensor, ...]:
    """Example inputs shaped like the ones the program was built for (random values; only shapes and dtypes
    matter for export), from the shapes recorded on its input nodes."""
    gm = program.graph_module
    param = next(iter(gm.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    inputs = []
    for n in gm.graph.nodes:
        if n.op != "placeholder" or n.name == "target":
            continue
        info = n.meta.get(meta_keys.VALUE)
        shape, dtype = getattr(info, "shape", None), getattr(info, "dtype", None)
        if shape is None or dtype is None:
            raise InputError(f"the program does not record the shape of its input '{n.name}': pass "
                             f"example_inputs=(x, ...) to save it as .pt2")
        if dtype.is_floating_point:
            inputs.append(torch.randn(shape, dtype=dtype, device=device))
        else:
            inputs.append(torch.zeros(shape, dtype=dtype, device=device))
    return tuple(inputs)


def to_exported(program, example_inputs: Optional[Sequence[torch.Tensor]] = None, *,
                target_input: bool = False, dynamic_batch: bool = True) -> "torch.export.ExportedProgram":
    """``torch.export`` the program; the result holds no lrpfx or model code, only ATen ops and tensors.

    The exported module takes the model's inputs and explains the argmax class, or with ``target_input=True``
    takes one more input, an int64 tensor ``[B]`` of class indices. It returns ``(output, (relevance, ...))``.
    Shapes are those of ``example_inputs`` (default: the shapes the program was built for) except the batch
    axis, which stays free with ``dynamic_batch`` (falls back to the example's batch size if the model
    specialises on it).

    How: ``torch.export`` (torch 2.14) does not trace ``torch.func.vjp``, which the program's ``Replay`` steps
    use (max and average pooling, structural ops): it exports without an error, but the values inside the VJP
    become constant FakeTensors and the exported module returns FakeTensors. The program is therefore first
    flattened to ATen ops with ``make_fx`` (which traces ``torch.func`` transforms), then exported.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    inputs = tuple(inputs) if inputs is not None else example_inputs_for(program)
    want = num_inputs(program) + (1 if target_input else 0)
    if len(inputs) != want:
        raise InputError(f"the program takes {num_inputs(program)} input(s)"
                         f"{' plus a target tensor' if target_input else ''}; got {len(inputs)} example input(s)")
    if target_input and (inputs[-1].is_floating_point() or inputs[-1].dim() != 1):
        raise InputError("with target_input=True the last example input is the target: an int64 tensor [B]")
    if dynamic_batch:
        try:
            return _export(program, inputs, target_input, dynamic=True)
        except Exception as exc:  # the model specialises on its batch size: export that size
            warnings.warn(f"exporting with a free batch axis failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); exported for batch size "
                          f"{inputs[0].shape[0]} only", stacklevel=2)
    return _export(program, inputs, target_input, dynamic=False)


def _export(program, inputs, target_input: bool, dynamic: bool):
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = program.graph_module
    if target_input:
        def run(*args):
            return gm(*args[:-1], args[-1])
    else:
        def run(*args):
            return gm(*args, None)
    if dynamic and inputs[0].shape[0] == 1:  # symbolic tracing specialises a size-1 axis: trace batch 2
        inputs = tuple(torch.cat([t, t]) for t in inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = make_fx(run, tracing_mode="symbolic" if dynamic else "fake", pre_dispatch=False,
                       _allow_non_fake_inputs=True)(*inputs)
        _freeze(flat)
        shapes = None
        if dynamic:
            batch = torch.export.Dim("batch")
            shapes = (tuple({0: batch} for _ in inputs),)
        return torch.export.export(_Flat(flat), inputs, dynamic_shapes=shapes)


def _freeze(gm: fx.GraphModule) -> None:
    """make_fx keeps the model's parameters as parameters of the flat graph: make them plain buffers, so the
    exported module computes relevances without recording an autograd graph."""
    for name, value in list(gm._parameters.items()):
        del gm._parameters[name]
        gm.register_buffer(name, value.detach())


class _Flat(nn.Module):
    """Holds the ATen-level graph so that ``torch.export`` sees a module with plain positional inputs."""

    def __init__(self, graph: fx.GraphModule):
        super().__init__()
        self.graph_module = graph

    def forward(self, *inputs):
        return self.graph_module(*inputs)
