"""BiLRP (Eberle et al. 2022): explain the similarity ``⟨φ(a), φ(b)⟩`` of an embedding model ``φ`` by pairs of
input features, ``BiLRP[i, j] = Σ_d R_d(a)[i] · R_d(b)[j]`` with ``R_d`` the relevance of embedding dimension d.

Every dimension's relevance comes from one program run per chunk of dimensions (the initial relevances
``φ_d(x)·e_d`` along the target axis, :func:`lrpfx.targets.several`), not from a loop over dimensions; chunks
bound the memory, ``chunk`` dimensions at a time. Under conservative rules (``rule="zero"`` on a bias-free model)
each ``R_d(x)`` sums to ``φ_d(x)``, so the pair relevances sum to the similarity.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .api import Explainer, split_inputs
from .errors import InputError
from .targets import several


def dimension_relevances(explainer: Explainer, x: torch.Tensor, dims: range) -> torch.Tensor:
    """``[B, len(dims), *x]``: the relevance of embedding dimensions ``dims`` for ``x``, starting from each
    dimension's value (``φ_d(x)`` at ``d``, zeros elsewhere), in one pass."""
    def initial(output: torch.Tensor) -> torch.Tensor:
        if output.dim() != 2:
            raise InputError(f"BiLRP needs an embedding output [batch, dims], got shape {tuple(output.shape)}")
        index = torch.tensor(list(dims), device=output.device)
        onehot = (index[:, None] == torch.arange(output.shape[1], device=output.device)).to(output.dtype)
        return output[:, None, :] * onehot  # [B, K, D]
    return several(explainer, x, initial)[1]


def bilrp(model: nn.Module, a: torch.Tensor, b: torch.Tensor, rule="zero", *, chunk: int = 64,
          pool: Optional[Callable[[torch.Tensor], torch.Tensor]] = None, explainer: Optional[Explainer] = None,
          **options) -> torch.Tensor:
    """Pair relevances ``[B, *a_features, *b_features]`` of the similarities ``⟨φ(a_k), φ(b_k)⟩`` of ``B`` pairs.

    ``model`` maps a batch to embeddings ``[B, D]``; ``a`` and ``b`` are batches of the same size (their sample
    shapes may differ, then the program is built once for each). ``pool`` maps a relevance ``[B, K, *x]`` to
    ``[B, K, *features]`` before the pairing (e.g. ``lambda r: r.sum(2)`` sums image channels), keeping the
    result small. ``explainer`` reuses a built :class:`~lrpfx.Explainer` (its rule then applies); ``options``
    go to a new one."""
    if a.shape[0] != b.shape[0]:
        raise InputError(f"a and b must hold the same number of samples (pairs), got {a.shape[0]} and {b.shape[0]}")
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    explainer = explainer or Explainer(model, rule, **options)
    explainer._check_inputs((a, b))
    dims = _embedding_size(explainer, a)
    pool = pool or (lambda r: r)
    total = None
    for start in range(0, dims, chunk):
        part = range(start, min(start + chunk, dims))
        ra, rb = (pool(dimension_relevances(explainer, x, part)) for x in (a, b))
        pairs = torch.einsum("bdi,bdj->bij", ra.flatten(2), rb.flatten(2))
        total = pairs if total is None else total + pairs
    return total.view(a.shape[0], *ra.shape[2:], *rb.shape[2:])


def _embedding_size(explainer: Explainer, x: torch.Tensor) -> int:
    """The embedding size, from the output shape recorded when the program (for initial relevances) is built."""
    shape = explainer._entry(split_inputs(x), False, True).out_shape
    if len(shape) != 2:
        raise InputError(f"BiLRP needs an embedding output [batch, dims], got shape {tuple(shape)}")
    return shape[1]
