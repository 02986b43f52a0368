"""Explanations of other quantities than one logit: several initial relevances in one pass, and the contrastive
presets CLRP (Gu et al. 2018) and SGLRP (Iwana et al. 2019) (docs/functional.md).

Every LRP rule is linear in the relevance it receives (the forward values fix the rule's coefficients), so a
combination of initial relevances has the same combination of relevances: a contrastive explanation is two
initial relevances, a target and a *dual*, explained together along the target axis of one program run.
"""
from __future__ import annotations

from typing import Tuple

import torch

from . import locks
from .api import Explainer, Inputs, _primary_input, split_inputs
from .errors import TargetError
from .locks import eval_mode


def several(explainer: Explainer, x: Inputs, initial) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(output, relevance)`` for ``K`` initial relevances at once: ``initial`` is a tensor ``[B, K, *out]`` (or a
    function of the output giving one) and ``relevance`` is ``[B, K, *x]``, one explanation per initial relevance,
    from one forward pass and one relevance pass over a leading target axis. ``x`` is one tensor or a dict of
    named inputs (then ``relevance`` is that of the main input, as ``Explanation.relevance``)."""
    inputs = split_inputs(x)
    if inputs.names is None and len(inputs.tensors) != 1:
        raise TargetError("several initial relevances take one positional input tensor or a dict of named inputs")
    explainer._check_inputs(inputs.tensors)
    entry = explainer._entry(inputs, False, True)  # the program for float initial relevances
    first = inputs.tensors[0]
    if callable(initial):  # held constant: no gradient flows through the choice of initial relevance
        initial = initial(_output(explainer, entry, inputs))
    expected = (first.shape[0], None, *entry.out_shape[1:])
    if not isinstance(initial, torch.Tensor) or not initial.is_floating_point() or initial.dim() != len(expected) \
            or any(e is not None and e != n for e, n in zip(expected, initial.shape)):
        raise TargetError(f"initial relevances must be a float tensor [batch, K, *output] = "
                          f"[{first.shape[0]}, K, {', '.join(map(str, entry.out_shape[1:]))}], got "
                          f"{tuple(initial.shape) if isinstance(initial, torch.Tensor) else type(initial).__name__}")
    grad = torch.enable_grad() if explainer.differentiable else torch.no_grad()
    start = initial.to(first if first.is_floating_point() else _float_dtype(explainer)).movedim(1, 0)
    with locks.running(), eval_mode(explainer.model), grad:
        output, relevances = entry.run(*inputs.tensors, start)[:2]
    named = dict(zip(inputs.names or (), relevances))
    relevance = relevances[0] if inputs.names is None else named[_primary_input(named)]
    return output, relevance.movedim(0, 1)


def _float_dtype(explainer: Explainer) -> torch.dtype:
    """The dtype of the model's float parameters: initial relevances of a model of token ids take it."""
    return next((p.dtype for p in explainer.model.parameters() if p.is_floating_point()), torch.get_default_dtype())


def _output(explainer: Explainer, entry, inputs) -> torch.Tensor:
    """The output the program explains: the model's on one tensor; for named inputs, the program's own forward
    (it applies the inputs' options and the output selection) with a zero initial relevance."""
    with torch.no_grad(), eval_mode(explainer.model):
        if inputs.names is None:
            return explainer.model(inputs.tensors[0])
        zero = torch.zeros(1, inputs.tensors[0].shape[0], *entry.out_shape[1:], dtype=_float_dtype(explainer))
        with locks.running():
            return entry.run(*inputs.tensors, zero)[0]


def _target_index(output: torch.Tensor, target) -> torch.Tensor:
    if output.dim() != 2:
        raise TargetError(f"contrastive targets need a [batch, classes] output, got shape {tuple(output.shape)}")
    if target is None:
        return output.argmax(-1)
    index = torch.as_tensor(target, device=output.device).long().expand(output.shape[0])
    if bool(((index < 0) | (index >= output.shape[1])).any()):
        raise TargetError(f"target class out of range: the model has {output.shape[1]} outputs")
    return index


def clrp_initial(output: torch.Tensor, target=None) -> torch.Tensor:
    """CLRP's two initial relevances ``[B, 2, C]``: the target logit at the target, and the dual virtual class
    "every other class" (weights and bias the mean of the other classes') as the other logits over ``C - 1``.
    Under LRP-0 on the output layer the dual's relevance is exactly that of the virtual class's neuron."""
    index = _target_index(output, target)
    onehot = (index.unsqueeze(-1) == torch.arange(output.shape[1], device=output.device)).to(output.dtype)
    return torch.stack([output * onehot, output * (1 - onehot) / (output.shape[1] - 1)], dim=1)


def sglrp_initial(output: torch.Tensor, target=None) -> torch.Tensor:
    """SGLRP's two initial relevances ``[B, 2, C]``, the softmax gradient ``∂ŷ_t/∂z`` split by sign: the target
    part ``ŷ_t(1 - ŷ_t)`` at ``t`` and the dual ``ŷ_t·ŷ_n`` at every ``n ≠ t``."""
    index = _target_index(output, target)
    p = torch.softmax(output, dim=-1)
    onehot = (index.unsqueeze(-1) == torch.arange(output.shape[1], device=output.device)).to(output.dtype)
    p_t = (p * onehot).sum(-1, keepdim=True)
    return torch.stack([onehot * p_t * (1 - p_t), (1 - onehot) * p_t * p], dim=1)


def clrp(explainer: Explainer, x: Inputs, target=None) -> torch.Tensor:
    """Contrastive LRP (Gu et al. 2018, the dual "all other classes"): ``max(0, R_target - R_dual)``, shaped like
    ``x``. ``target``: a class index, a LongTensor ``[B]`` or None (the prediction)."""
    _, relevance = several(explainer, x, lambda out: clrp_initial(out, target))
    return (relevance[:, 0] - relevance[:, 1]).clamp(min=0)


def sglrp(explainer: Explainer, x: Inputs, target=None) -> torch.Tensor:
    """Softmax-gradient LRP (Iwana et al. 2019): ``R_target - R_dual``, shaped like ``x``; by linearity the LRP of
    the softmax gradient ``∂ŷ_t/∂z`` taken as the initial relevance."""
    _, relevance = several(explainer, x, lambda out: sglrp_initial(out, target))
    return relevance[:, 0] - relevance[:, 1]


def contrastive(explainer: Explainer, x: Inputs, target=None, method: str = "clrp") -> torch.Tensor:
    """:func:`clrp` or :func:`sglrp` by name."""
    methods = {"clrp": clrp, "sglrp": sglrp}
    if method not in methods:
        raise TargetError(f"method must be one of {sorted(methods)}, got {method!r}")
    return methods[method](explainer, x, target)


__all__ = ["several", "clrp", "sglrp", "contrastive", "clrp_initial", "sglrp_initial"]
