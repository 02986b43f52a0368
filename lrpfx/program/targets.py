"""The initial relevance at the model output (docs/rules.md, initial relevance)."""
from __future__ import annotations

from typing import Optional

import torch


def initial_relevance(output: torch.Tensor, target: Optional[torch.Tensor], *, start: str) -> torch.Tensor:
    """Relevance to start from.

    ``target`` is None (argmax per sample), an int64 tensor ``[B]`` of class indices, an int64 tensor ``[B, K]``
    of K classes per sample (the result then has a leading target axis, ``[K, B, C]``), or a float tensor shaped
    like ``output`` that is used as the initial relevance as is. For class indices, ``start="logit"`` starts
    from the target logit (``output * onehot``) and ``start="one"`` from the one-hot vector (TorchLRP's choice).
    """
    if target is not None and target.is_floating_point():
        return target
    index = output.argmax(dim=-1) if target is None else target
    # a comparison, not F.one_hot: that reads the indices' range, which torch.func.vmap cannot follow
    onehot = (index.unsqueeze(-1) == torch.arange(output.shape[-1], device=output.device)).to(output.dtype)
    if index.dim() == 2:  # [B, K]: K targets per sample, explained together along a leading axis [K, B, C]
        onehot = onehot.transpose(0, 1)
    return output * onehot if start == "logit" else onehot
