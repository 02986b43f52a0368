"""Explanation-guided training (docs/training.md): a penalty on the share of relevance a model gives to a region
it should not use, computed by the differentiable relevance program so that it trains the weights.

"Right for the right reasons" (Ross et al. 2017) penalises input gradients inside an annotated mask; here the
penalised quantity is the model's LRP relevance itself, normalised per sample, so the penalty reads as "the
share of the explanation that lands on the confounder" and does not depend on the logits' scale.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .api import Explainer
from .errors import InputError


class GuidedRelevance(NamedTuple):
    """One run of the differentiable program: the model ``output`` and the input ``relevance`` (both with
    gradients w.r.t. the parameters), the per-sample ``share`` ``[B]`` of relevance inside the mask and the
    ``penalty``, its mean over the batch."""

    output: torch.Tensor
    relevance: torch.Tensor
    share: torch.Tensor
    penalty: torch.Tensor


def relevance_share(relevance: torch.Tensor, mask: torch.Tensor, power: float = 1.0,
                    eps: float = 1e-12) -> torch.Tensor:
    """Per sample, ``Σ mask ⊙ |R|^power / Σ |R|^power``: the share of the relevance's magnitude inside ``mask``
    (bool or float weights, broadcastable to ``relevance``), in [0, 1] for a 0/1 mask. A sample whose relevance
    is all zero has share 0 (``eps`` keeps the quotient finite)."""
    mask = _checked_mask(mask, relevance)
    magnitude = relevance.abs() ** power
    inside = (magnitude * mask.to(magnitude.dtype)).flatten(1).sum(1)
    return inside / (magnitude.flatten(1).sum(1) + eps)


def relevance_penalty(explainer: Explainer, x: torch.Tensor, mask: torch.Tensor, target=None,
                      power: float = 1.0) -> GuidedRelevance:
    """Explain ``x`` once with a differentiable ``explainer`` (``Explainer(model, rule, differentiable=True)``)
    and measure the share of relevance inside ``mask`` (:func:`relevance_share`). The output comes from the same
    run, so a training step needs no second forward::

        guided = lrpfx.relevance_penalty(explainer, x, mask, target=y)
        loss = F.cross_entropy(guided.output, y) + lam * guided.penalty
        loss.backward()

    ``target`` is as for :class:`~lrpfx.Explainer` (the label is the usual choice: the explanation of the class
    the model is trained to predict); ``power=2`` penalises the squared relevance (large values more)."""
    if not isinstance(explainer, Explainer):
        raise InputError(f"relevance_penalty takes an lrpfx.Explainer, got {type(explainer).__name__}: build one "
                         "once, outside the training loop, with Explainer(model, rule, differentiable=True)")
    if not explainer.differentiable:
        raise InputError("the explainer's relevance has no gradients, so the penalty would not train the model: "
                         "build it with Explainer(model, rule, differentiable=True)")
    if not isinstance(x, torch.Tensor):
        raise InputError(f"relevance_penalty takes one input tensor, got {type(x).__name__}")
    if power <= 0:
        raise InputError(f"power must be > 0 (1: absolute relevance, 2: squared), got {power!r}")
    explanation = explainer(x, target=target)
    share = relevance_share(explanation.relevance, mask, power)
    return GuidedRelevance(explanation.output, explanation.relevance, share, share.mean())


def _checked_mask(mask, relevance: torch.Tensor) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor):
        raise InputError(f"mask must be a tensor (bool or 0/1 float) shaped like the input, got "
                         f"{type(mask).__name__}")
    try:
        shape = torch.broadcast_shapes(mask.shape, relevance.shape)
    except RuntimeError:
        shape = None
    if shape != relevance.shape:
        raise InputError(f"mask of shape {tuple(mask.shape)} does not broadcast to the relevance "
                         f"{tuple(relevance.shape)} (the input's shape): pass one mask per sample, or one for all "
                         "samples with a batch axis of 1")
    return mask.to(relevance.device)
