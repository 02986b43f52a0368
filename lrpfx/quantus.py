"""lrpfx as an explanation function for Quantus (https://github.com/understandable-machine-intelligence-lab/Quantus).

``explain_func(model, inputs, targets, **kwargs)`` follows Quantus's contract: numpy (or torch) inputs in, a numpy
relevance shaped like the inputs out, with the channel axis summed as Quantus's own ``quantus.explain`` does
(``reduce_axes=(1,)``, ``keepdims=True`` by default; ``reduce_axes=()`` keeps every axis)::

    import quantus
    from lrpfx.quantus import explain_func

    metric = quantus.FaithfulnessCorrelation(nr_runs=20, subset_size=8)
    scores = metric(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                    explain_func_kwargs={"rule": "epsilon-plus-flat"})

``explain_func_kwargs`` take lrpfx's ``rule=`` (a preset or rule string, a rule, a Composite) and the options of
:class:`lrpfx.Explainer` (``start``, ``leaf_modules``, ``output``, ``compile``, ...). ``start="one"`` starts from
the one-hot target as Quantus's Zennit path does; lrpfx's default starts from the target logit.

Quantus calls the function thousands of times with small batches, and its randomisation tests (MPRT) pass deep
copies of the model with re-initialised layers. Programs are therefore cached per model *structure* (module tree
and configuration, tensor names, shapes, dtypes, devices): a private copy of the first model of a structure is
traced once, and every call points that program at the tensors of the model actually passed
(:mod:`lrpfx.rebind`), so a copy is always explained with its own weights. A model the program cannot be rebound
to (one holding unregistered tensors) gets a program of its own; the last 16 of each kind are cached.
Quantus itself is not needed to import this module.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from . import rebind
from .api import Explainer
from .errors import InputError, TargetError

# Explainer's keyword options, passed through from explain_func_kwargs
EXPLAINER_OPTIONS = ("rule", "compile", "mode", "leaf_modules", "output", "start", "allow_nonfinite", "patterns",
                     "frontend")
# Quantus's own conventions, understood here
QUANTUS_OPTIONS = ("reduce_axes", "keepdims", "channel_first", "softmax", "device")
DEFAULT_RULE = "epsilon-plus-flat"
MAX_STRUCTURES = 16


def explain_func(model: nn.Module, inputs, targets, **kwargs) -> np.ndarray:
    """Relevance of ``inputs`` for ``targets`` (class indices, one per sample), as a numpy array shaped like
    ``inputs`` with ``reduce_axes`` summed (default ``(1,)``, the channel axis; kept as size 1 unless
    ``keepdims=False``). Inputs of fewer than 3 axes are returned unreduced, as Quantus's explain does."""
    options, reduce_axes, keepdims = _split_kwargs(kwargs)
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = _as_input(model, inputs)
    target = _as_target(targets, x.shape[0])
    relevance = _relevance(model, x, target, options)
    return _reduce(relevance.detach().cpu().numpy(), reduce_axes, keepdims)


# ---- arguments ------------------------------------------------------------------------------------------------
def _split_kwargs(kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Tuple[int, ...], bool]:
    unknown = sorted(set(kwargs) - set(EXPLAINER_OPTIONS) - set(QUANTUS_OPTIONS))
    if unknown:
        raise InputError(
            f"lrpfx's explain_func got unknown keyword(s) {unknown}: it takes rule= (e.g. 'epsilon-plus-flat', "
            f"'epsilon-gamma-box' or a lrpfx Composite) and the Explainer options "
            f"{', '.join(EXPLAINER_OPTIONS[1:])}, plus Quantus's {', '.join(QUANTUS_OPTIONS)}")
    if kwargs.get("softmax"):
        raise InputError("softmax=True asks to explain the softmax probabilities; LRP explains the logits: pass "
                         "softmax=False (or leave it out) in explain_func_kwargs")
    options = {k: v for k, v in kwargs.items() if k in EXPLAINER_OPTIONS}
    options.setdefault("rule", DEFAULT_RULE)
    reduce_axes = kwargs.get("reduce_axes", (1,))
    if reduce_axes is None:
        reduce_axes = ()
    if isinstance(reduce_axes, int):
        reduce_axes = (reduce_axes,)
    return options, tuple(reduce_axes), bool(kwargs.get("keepdims", True))


def _first_tensor(model: nn.Module) -> Optional[torch.Tensor]:
    return next(iter(model.parameters()), next(iter(model.buffers()), None))


def _as_input(model: nn.Module, inputs) -> torch.Tensor:
    """A tensor on the model's device; float data in the model's dtype (Quantus hands float32 numpy arrays
    whatever the model's precision)."""
    if isinstance(inputs, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(inputs))
    elif isinstance(inputs, torch.Tensor):
        x = inputs.detach()
    else:
        raise InputError(f"inputs must be a numpy array or a torch tensor [batch, ...], got {type(inputs).__name__}")
    if x.dim() == 0 or x.shape[0] == 0:
        raise InputError(f"inputs must have a non-empty batch axis, got shape {tuple(x.shape)}")
    ref = _first_tensor(model)
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype if x.is_floating_point() else x.dtype)
    return x


def _as_target(targets, batch: int) -> Optional[torch.Tensor]:
    """Class indices as a LongTensor [batch] (None: each sample's argmax)."""
    if targets is None:
        return None
    t = torch.as_tensor(np.asarray(targets.cpu() if isinstance(targets, torch.Tensor) else targets))
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TargetError(f"targets must be integer class indices (one per sample), got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.dim() != 1 or t.shape[0] != batch:
        raise TargetError(f"targets must hold one class index per sample, shape ({batch},), got {tuple(t.shape)}")
    return t.long()


def _reduce(a: np.ndarray, axes: Sequence[int], keepdims: bool) -> np.ndarray:
    if not axes or a.ndim < 3:
        return a
    normalised = []
    for axis in axes:
        if not isinstance(axis, (int, np.integer)) or not -a.ndim <= axis < a.ndim:
            raise InputError(f"reduce_axes entry {axis!r} is not an axis of the {a.ndim}-d relevance "
                             f"(shape {a.shape})")
        normalised.append(int(axis) % a.ndim)
    if 0 in normalised:
        raise InputError("reduce_axes must not include the batch axis 0: pass e.g. reduce_axes=(1,) (channels)")
    return a.sum(axis=tuple(normalised), keepdims=keepdims)


# ---- programs, one per model structure ---------------------------------------------------------------------------
class _Shared:
    """One Explainer on a private copy of the first model of a structure; each call rebinds its program to the
    tensors of the model passed."""

    def __init__(self, model: nn.Module, options: Dict[str, Any]):
        self.template = rebind.module_copy(model)
        self.explainer = Explainer(self.template, **options)
        self.slots: Dict[int, Optional[list]] = {}  # id(program graph) -> its tensor references (None: not rebindable)
        self.lock = threading.Lock()

    def __call__(self, model: nn.Module, x: torch.Tensor, target) -> Optional[torch.Tensor]:
        """The relevance for ``model``, or None when the program cannot be rebound (the caller builds per model)."""
        with self.lock:
            program = self.explainer.program(x).graph_module
            key = id(program)
            if key not in self.slots:
                self.slots[key] = rebind.slots(program, self.template)
            found = self.slots[key]
            if found is None:
                return None
            rebind.bind(found, rebind.named_tensors(model))
            return self.explainer(x, target=target).relevance


_LOCK = threading.Lock()
_SHARED: "OrderedDict[tuple, _Shared]" = OrderedDict()
# models no program can be rebound to: (id(model), options) -> its Explainer (which keeps the model, hence the id)
_PER_MODEL: "OrderedDict[tuple, Explainer]" = OrderedDict()


def _options_key(options: Dict[str, Any]) -> tuple:
    def hashable(v):
        if isinstance(v, list):
            v = tuple(v)
        try:
            hash(v)
            return v
        except TypeError:
            return ("id", id(v))  # the entry keeps the object alive through its Explainer, so the id stays unique
    return tuple(sorted((k, hashable(v)) for k, v in options.items()))


def _relevance(model: nn.Module, x: torch.Tensor, target, options: Dict[str, Any]) -> torch.Tensor:
    okey = _options_key(options)
    structure = rebind.structure_key(model)
    if structure is not None:
        key = (structure, okey)
        with _LOCK:
            shared = _SHARED.get(key)
            if shared is None:
                shared = _Shared(model, options)  # validates the options (RuleError for an unknown rule)
                _SHARED[key] = shared
                while len(_SHARED) > MAX_STRUCTURES:
                    _SHARED.popitem(last=False)
            _SHARED.move_to_end(key)
        relevance = shared(model, x, target)
        if relevance is not None:
            return relevance
    key = (id(model), okey)
    with _LOCK:
        explainer = _PER_MODEL.get(key)
        if explainer is None:
            explainer = _PER_MODEL[key] = Explainer(model, **options)
            while len(_PER_MODEL) > MAX_STRUCTURES:
                _PER_MODEL.popitem(last=False)
        _PER_MODEL.move_to_end(key)
    return explainer(x, target=target).relevance


def clear_cache() -> None:
    """Forget every cached program (a cache entry keeps its model's tensors alive)."""
    with _LOCK:
        _SHARED.clear()
        _PER_MODEL.clear()


def cache_info() -> Dict[str, int]:
    """How many structures share a program, and how many models have one of their own."""
    with _LOCK:
        return {"structures": len(_SHARED), "per_model": len(_PER_MODEL)}
