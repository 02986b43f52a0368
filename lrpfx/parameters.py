"""Relevance of parameters: how much of the explained output each weight and bias of an affine layer carries.

Under LRP-epsilon an affine layer ``z_j = Σ_i w_ji x_i + b_j`` hands the relevance ``R_j`` of its output to the
contributions ``w_ji x_i`` in proportion, ``w_ji x_i R_j / stab(z_j)``; the input's relevance sums them over
``j``, the weight's over the batch (and over the positions a convolution slides over). So
``R_w = w ⊙ Σ_batch (x ⊗ s)`` with ``s = R / stab(z)``, the weight's VJP of the layer applied to ``s``, and the
bias's ``R_b = b ⊙ Σ s``. ``R`` comes from the relevance program (its intermediate relevance at the layer's output),
``x`` from a forward pass of a copy of the model that shares its tensors (the user's model gets no hooks).
"""
from __future__ import annotations

from typing import Dict

import torch
from torch import nn

from .api import Explainer
from .composites import single
from .errors import RuleError
from .rebind import module_copy
from .rules import Epsilon
from .rules.stabilize import divide

AFFINE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def parameter_relevance(model: nn.Module, x: torch.Tensor, target=None, *, eps: float = 0.0) -> Dict[str, torch.Tensor]:
    """``{name: relevance}`` for the weight and bias of every Linear and Conv layer of ``model`` (each shaped like
    its parameter, summed over the batch), under LRP-epsilon with ``eps`` on those layers (LRP-0 by default).
    ``target`` as for :class:`~lrpfx.Explainer`."""
    explainer = Explainer(model, single(Epsilon(eps)))
    explanation = explainer(x, target=target, intermediate=True)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, AFFINE)}
    inputs = _layer_inputs(model, x, layers)
    result: Dict[str, torch.Tensor] = {}
    for name, layer in layers.items():
        if name not in inputs:
            continue  # not called by this forward
        if name not in explanation.intermediate:
            raise RuleError(f"layer '{name}' has no relevance of its own output (a BatchNorm folded into it, or it "
                            "is called more than once): parameter relevance needs each affine layer called once, "
                            "unfolded")
        result.update(_layer_relevance(name, layer, inputs[name], explanation.intermediate[name], eps))
    return result


def _layer_inputs(model: nn.Module, x: torch.Tensor, layers: Dict[str, nn.Module]) -> Dict[str, torch.Tensor]:
    """Each layer's input in a forward pass of a copy of ``model`` (shared tensors, hooks on the copy only)."""
    twin = module_copy(model)
    seen: Dict[str, torch.Tensor] = {}
    twins = dict(twin.named_modules())
    for name in layers:
        twins[name].register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0]))
    twin.eval()  # the copy's flags only: the model's stay as they are
    with torch.no_grad():
        twin(x)
    return seen


def _layer_relevance(name: str, layer: nn.Module, x: torch.Tensor, r: torch.Tensor, eps: float):
    """``R_w = w ⊙ vjp_w(s)`` and ``R_b = b ⊙ Σ s`` with ``s = r / stab(z)``."""
    with torch.no_grad():
        s = divide(r, layer(x), eps)  # 0 where z == 0 under LRP-0
    weight = layer.weight.detach().requires_grad_()
    with torch.enable_grad():
        out = torch.func.functional_call(layer, {"weight": weight}, (x,))
        (vjp,) = torch.autograd.grad(out, weight, grad_outputs=s)
    found = {f"{name}.weight": layer.weight.detach() * vjp}
    if layer.bias is not None:
        axes = [d for d in range(s.dim()) if d != (s.dim() - 1 if isinstance(layer, nn.Linear) else 1)]
        found[f"{name}.bias"] = layer.bias.detach() * s.sum(axes)
    return found
