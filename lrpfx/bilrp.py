"""BiLRP (Eberle et al. 2022): explain the similarity ``⟨φ(a), φ(b)⟩`` of an embedding model ``φ`` by pairs of
input features, ``BiLRP[i, j] = Σ_d R_d(a)[i] · R_d(b)[j]`` with ``R_d`` the relevance of embedding dimension d.

Every dimension's relevance comes from one program run per chunk of dimensions (the initial relevances
``φ_d(x)·e_d`` along the target axis, :func:`lrpfx.targets.several`), not from a loop over dimensions; chunks
bound the memory, ``chunk`` dimensions at a time. Under conservative rules (``rule="zero"`` on a bias-free model)
each ``R_d(x)`` sums to ``φ_d(x)``, so the pair relevances sum to the similarity.

Two-tower models (CLIP, SigLIP: ``⟨φ(image), ψ(text)⟩``) pass the second tower as ``model_b``; :class:`Tower`
makes one tower of a Hugging Face model (``get_image_features``, ``get_text_features``) an embedding model.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

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


Pool = Callable[[torch.Tensor], torch.Tensor]


def bilrp(model: nn.Module, a, b, rule="zero", *, chunk: int = 64, pool: Union[None, Pool, Tuple[Pool, Pool]] = None,
          explainer: Optional[Explainer] = None, model_b: Optional[nn.Module] = None, **options) -> torch.Tensor:
    """Pair relevances ``[B, *a_features, *b_features]`` of the similarities ``⟨φ(a_k), φ(b_k)⟩`` of ``B`` pairs.

    ``model`` maps a batch to embeddings ``[B, D]``; ``a`` and ``b`` are batches of the same size (their sample
    shapes may differ, then the program is built once for each). ``model_b``: a second tower for ``b`` (then
    the similarity is ``⟨φ(a_k), ψ(b_k)⟩``; both embed into the same ``D``). ``a`` and ``b`` may be dicts of named
    inputs (``{"input_ids": ..., "attention_mask": ...}``): token ids are explained at their embeddings, and
    their hidden axis is summed (one relevance per token) unless ``pool`` says otherwise. ``pool`` (or a pair of
    them, for ``a`` and ``b``) maps a relevance ``[B, K, *x]`` to ``[B, K, *features]`` before the pairing (e.g.
    ``lambda r: r.sum(2)`` sums image channels), keeping the result small. ``explainer`` reuses a built
    :class:`~lrpfx.Explainer` for ``model`` (its rule then applies); ``options`` go to new ones."""
    if chunk < 1:
        raise InputError(f"chunk must be >= 1, got {chunk}")
    firsts = [split_inputs(x).tensors[0] for x in (a, b)]
    if firsts[0].shape[0] != firsts[1].shape[0]:
        raise InputError(f"a and b must hold the same number of samples (pairs), got {firsts[0].shape[0]} and "
                         f"{firsts[1].shape[0]}")
    explainer = explainer or Explainer(model, rule, **options)
    explainer_b = explainer if model_b is None else Explainer(model_b, explainer.composite, **options)
    pools = pool if isinstance(pool, tuple) else (pool, pool)
    sides = [(explainer, a, pools[0] or _default_pool(firsts[0])), (explainer_b, b, pools[1] or _default_pool(firsts[1]))]
    for side, x, _ in sides:
        side._check_inputs(split_inputs(x).tensors)
    dims = [_embedding_size(side, x) for side, x, _ in sides]
    if dims[0] != dims[1]:
        raise InputError(f"the towers embed into different sizes ({dims[0]} and {dims[1]}): a similarity needs one")
    total = None
    for start in range(0, dims[0], chunk):
        part = range(start, min(start + chunk, dims[0]))
        ra, rb = (side_pool(dimension_relevances(side, x, part)) for side, x, side_pool in sides)
        pairs = torch.einsum("bdi,bdj->bij", ra.flatten(2), rb.flatten(2))
        total = pairs if total is None else total + pairs
    return total.view(firsts[0].shape[0], *ra.shape[2:], *rb.shape[2:])


def _default_pool(first: torch.Tensor) -> Pool:
    """Token ids are explained at their embeddings ``[B, K, T, H]``: one relevance per token by default."""
    return (lambda r: r) if first.is_floating_point() else (lambda r: r.sum(-1))


class Tower(nn.Module):
    """One tower of a two-tower model as an embedding model: ``getattr(model, method)(...)`` reduced to its
    embedding ``[B, D]`` (a tensor, or a Hugging Face output's ``pooler_output``), e.g.
    ``Tower(clip, "get_image_features")``. The model is held, not copied."""

    def __init__(self, model: nn.Module, method: str):
        super().__init__()
        if not callable(getattr(model, method, None)):
            raise InputError(f"{type(model).__name__} has no method {method!r} to make a tower of")
        self.model, self.method = model, method

    def forward(self, *args, **kwargs) -> torch.Tensor:
        out = getattr(self.model, self.method)(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out
        pooled = getattr(out, "pooler_output", None)
        if isinstance(pooled, torch.Tensor):
            return pooled
        raise InputError(f"{type(self.model).__name__}.{self.method} returned {type(out).__name__}, neither a tensor "
                         "nor an output with pooler_output: wrap the tower in a module that returns [B, D]")


def _embedding_size(explainer: Explainer, x: torch.Tensor) -> int:
    """The embedding size, from the output shape recorded when the program (for initial relevances) is built."""
    shape = explainer._entry(split_inputs(x), False, True).out_shape
    if len(shape) != 2:
        raise InputError(f"BiLRP needs an embedding output [batch, dims], got shape {tuple(shape)}")
    return shape[1]
