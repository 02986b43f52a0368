"""Inputs of vision-language models that a traced program cannot take as tensors.

Qwen2-VL-style models loop in Python over the grid of every image (``image_grid_thw``: frames, rows and columns
of patches) to split the vision tower's attention per image and to place the rotary positions, and they derive
the text model's 3-D positions (M-RoPE) from the token ids. Under ``torch.export`` both are data-dependent
control flow. The answers:

* grid inputs (:data:`STATIC_VALUE_INPUTS`) are fixed options, not traced tensors: the program is specialised
  to their values, and their values are part of the program's cache key, so another grid gets a program of its
  own (as another image size does). While exporting they are :class:`StaticValues`: what the model computes from
  them alone (split sizes, sequence offsets, rotary positions) is computed for real, outside the tracer, so
  ``.tolist()`` and ``.item()`` give numbers and the results enter the graph as constants; so do tensors made
  from Python numbers alone meanwhile (``torch.arange(h * w)``, ``torch.tensor(offsets)``: Qwen2.5-VL's window
  index), as :func:`static_tracing` arranges;
* the 3-D positions are computed before tracing, by the model's own ``get_rope_index``, and passed as
  ``position_ids`` (integers: they carry no relevance, and one program serves any token ids).
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Dict, Mapping, Optional

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import _disable_current_modes

from ..errors import InputError

# integer tensors whose values the model reads as Python numbers (loops, splits, shapes), with their columns
GRID_INPUTS = ("image_grid_thw", "video_grid_thw")  # (frames, rows, columns) of patches: Qwen-VL's positions
STATIC_VALUE_INPUTS = {**{name: "frames, rows, columns of patches" for name in GRID_INPUTS},
                       "image_sizes": "height, width in pixels"}  # LLaVA-NeXT/OneVision, Mistral 3: tiles, crops


def is_static_value(name: str, value: Any) -> bool:
    """Whether a named input is a tensor the program is specialised to by value (an image grid, image sizes)."""
    return name in STATIC_VALUE_INPUTS and isinstance(value, torch.Tensor)


def check_static_value(name: str, value: torch.Tensor) -> None:
    columns = STATIC_VALUE_INPUTS[name]
    if value.is_floating_point() or value.dim() != 2 or value.shape[1] != len(columns.split(",")):
        raise InputError(f"{name} must be an integer tensor [images, {len(columns.split(','))}] ({columns}, as the "
                         f"processor returns it), got {value.dtype} of shape {tuple(value.shape)}")


def option_key(value: Any) -> Any:
    """A fixed option as it enters a cache key: a tensor by its values (its repr would summarise a large one)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), tuple(value.flatten().tolist()))
    return value


def with_positions(model: nn.Module, named: Mapping[str, Any]) -> Mapping[str, Any]:
    """``named`` with ``position_ids`` from the model's ``get_rope_index`` where the model computes 3-D positions
    from token ids and image grids and the caller gave none; otherwise ``named`` unchanged."""
    for name in STATIC_VALUE_INPUTS:
        if is_static_value(name, named.get(name)):
            check_static_value(name, named[name])
    if named.get("position_ids") is not None or not any(named.get(k) is not None for k in GRID_INPUTS):
        return named
    owner = _rope_index_owner(model)
    if owner is None or named.get("input_ids") is None:
        return named
    wanted = inspect.signature(owner.get_rope_index).parameters
    args = {k: v for k, v in named.items() if k in wanted and isinstance(v, torch.Tensor)}
    if "mm_token_type_ids" in wanted and args.get("mm_token_type_ids") is None:
        raise InputError(
            f"{type(model).__name__} places image tokens by mm_token_type_ids (0 text, 1 image, 2 video, as the "
            "processor returns it): pass it with the inputs, e.g. "
            "'mm_token_type_ids': (input_ids == model.config.image_token_id).int()")
    with torch.no_grad():
        positions, _ = owner.get_rope_index(**args)
    return {**named, "position_ids": positions}


def _rope_index_owner(model: nn.Module) -> Optional[nn.Module]:
    for module in model.modules():
        if callable(getattr(module, "get_rope_index", None)):
            return module
    return None


class StaticValues(torch.Tensor):
    """A tensor whose values are known while tracing: an op whose tensor arguments are all static runs on the
    real values, outside export's fake and proxy modes, and gives static results; an op that also takes a traced
    tensor sees a plain tensor (a constant of the graph)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        plain_args, plain_kwargs = pytree.tree_map_only(StaticValues, _plain, (args, kwargs))
        if all(isinstance(t, StaticValues) for t in tensors):
            with _disable_current_modes(), torch._C.DisableTorchFunctionSubclass():
                out = func(*plain_args, **plain_kwargs)
            return pytree.tree_map_only(torch.Tensor, _static, out)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*plain_args, **plain_kwargs)


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor)


def _static(t: torch.Tensor) -> torch.Tensor:
    return t if isinstance(t, StaticValues) else t.as_subclass(StaticValues)


def static_options(options: Dict[str, Any]) -> Dict[str, Any]:
    """Fixed options with the static-valued tensors (image grids) wrapped for tracing."""
    return {k: _static(v.detach()) if is_static_value(k, v) else v for k, v in options.items()}


# tensors made from Python values: with no traced argument, their values are known
_FACTORIES = (torch.arange, torch.tensor, torch.as_tensor, torch.zeros, torch.ones, torch.full, torch.linspace)


class _StaticFactories(TorchFunctionMode):
    """While tracing with static values: a factory call whose arguments are all plain Python values (no tensor, no
    symbolic size) makes a :class:`StaticValues` tensor, computed for real."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and all(_plain_value(v) for v in pytree.tree_leaves((args, kwargs))):
            with _disable_current_modes():
                return _static(func(*args, **kwargs))
        return func(*args, **kwargs)


def _plain_value(v: Any) -> bool:
    return isinstance(v, (bool, int, float, str, torch.dtype, torch.device, type(None))) and not isinstance(
        v, torch.SymInt)


@contextlib.contextmanager
def static_tracing(options: Dict[str, Any]):
    """Around an export with static-valued options: tensors made from Python values are static too."""
    if not any(is_static_value(k, v) for k, v in options.items()):
        yield
        return
    with _StaticFactories():
        yield
