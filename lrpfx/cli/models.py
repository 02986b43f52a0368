"""Loading the model of ``--model SPEC`` (``torchvision:NAME``, ``module.path:factory``, ``file.py:factory``) with
the weights of ``--weights`` (a torchvision weights name or a state-dict file)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, NamedTuple, Optional

import torch
from torch import nn

from .arguments import import_attribute
from .errors import CliError


class LoadedModel(NamedTuple):
    model: Any
    description: str
    transforms: Any  # a torchvision weights preset, or None
    categories: Optional[List[str]]


def load_model(spec: str, weights: Optional[str] = None, device: str = "cpu") -> LoadedModel:
    """The model named by ``spec`` (``torchvision:NAME`` or ``module.path:factory`` / ``file.py:factory``), in
    eval mode on ``device``, with weights from ``weights`` (a torchvision weights name or a state-dict file)."""
    if ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        hint = ""
        if ":" not in spec and _torchvision_has(spec):
            hint = f"; did you mean --model torchvision:{spec}?"
        raise CliError(f"--model takes 'torchvision:NAME' or 'module.path:factory', got '{spec}'{hint}")
    source, name = spec.rsplit(":", 1)
    torch.manual_seed(0)  # random weights (no --weights) are the same on every run of the same command
    if source == "torchvision":
        loaded = _torchvision_model(name, weights)
    else:
        loaded = _factory_model(source, name, spec)
        if weights is not None:
            _load_state_dict(loaded.model, _weights_file(weights, spec))
            loaded = loaded._replace(description=f"{spec} (weights {weights})")
    model = loaded.model.to(torch.device(device)).eval()
    return loaded._replace(model=model)


def _torchvision_has(name: str) -> bool:
    try:
        import torchvision  # optional and slow to import: only for torchvision:NAME

        return name in torchvision.models.list_models()
    except Exception:
        return False


def _torchvision_model(name: str, weights: Optional[str]) -> LoadedModel:
    try:
        import torchvision  # optional and slow to import: only for torchvision:NAME
    except ImportError as exc:
        raise CliError("--model torchvision:... needs torchvision: pip install torchvision") from exc
    if name not in torchvision.models.list_models():
        close = [m for m in torchvision.models.list_models() if name.lower() in m][:5]
        raise CliError(f"torchvision has no model '{name}'"
                       + (f" (close: {', '.join(close)})" if close else "; see torchvision.models.list_models()"))
    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:
        enum = None
    default = getattr(enum, "DEFAULT", None) if enum is not None else None
    categories = (default.meta.get("categories") if default is not None else None)
    if weights is None:
        return LoadedModel(torchvision.models.get_model(name, weights=None), f"torchvision:{name} (random weights)",
                           None, categories)
    if _looks_like_file(weights):
        model = torchvision.models.get_model(name, weights=None)
        _load_state_dict(model, _weights_file(weights, f"torchvision:{name}"))
        return LoadedModel(model, f"torchvision:{name} (weights {weights})", None, categories)
    if enum is None:
        raise CliError(f"torchvision:{name} has no named weights; pass a state-dict file with --weights")
    member = weights.split(".")[-1]
    if member.upper() == "DEFAULT":
        chosen = enum.DEFAULT
    elif member in enum.__members__:
        chosen = enum[member]
    else:
        raise CliError(f"torchvision:{name} has no weights '{weights}': use DEFAULT, "
                       f"{', '.join(enum.__members__)}, or a state-dict file")
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except Exception as exc:
        raise CliError(f"could not load the weights {chosen} ({' '.join(str(exc).split())}); torchvision downloads "
                       f"them on first use, which needs network: download once elsewhere and pass the file with "
                       f"--weights path.pth") from exc
    return LoadedModel(model, f"torchvision:{name} (weights {chosen})", chosen.transforms,
                       chosen.meta.get("categories"))


def _looks_like_file(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or Path(weights).suffix.lower() in (".pt", ".pth", ".bin", ".ckpt")
            or Path(weights).exists())


def _weights_file(weights: str, spec: str) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise CliError(f"weights file not found: {weights}" + ("" if _looks_like_file(weights) else
                       f" (named weights such as DEFAULT exist only for torchvision models, not {spec})"))
    return path


def _load_state_dict(model, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"cannot read the weights file {path} as a state dict: {' '.join(str(exc).split())[:300]}")
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CliError(f"{path} does not hold a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [" ".join(line.split()) for line in str(exc).strip().splitlines()[1:] if line.strip()]
        detail = "; ".join(lines[:2]) + (f"; and {len(lines) - 2} more" if len(lines) > 2 else "")
        raise CliError(f"the weights in {path} do not fit {type(model).__name__}: {detail}") from exc
    if missing or unexpected:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {what} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise CliError(f"the weights in {path} do not fit {type(model).__name__}: {'; '.join(parts)}")


def _factory_model(source: str, name: str, spec: str) -> LoadedModel:
    obj: Any = import_attribute(spec, "--model")
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise CliError(f"--model {spec}: '{name}' is neither an nn.Module nor a factory")
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise CliError(f"--model {spec}: the factory returned {type(obj).__name__}, not an nn.Module")
    return LoadedModel(obj, spec, None, None)

