"""Describing a run (model structure and weights, rule, target, store, data length, shard size) and its
fingerprint: the hash that decides whether shards on disk belong to this run and can be reused."""
from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, List

import torch
from torch import nn

from ..errors import TargetError
from ..patterns import structure_hash

# the run-description keys that must agree before an existing folder is resumed
RUN_KEYS = ("model", "rule", "target", "store", "dataset", "shard_size")


def _update_tensor(h, name: str, t: torch.Tensor) -> None:
    t = t.detach().to("cpu").contiguous()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.reshape(-1).view(torch.uint8).numpy())


def tensors_sha256(tensors: Dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes of ``tensors`` in name order (independent of file layout)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        _update_tensor(h, name, tensors[name])
    return h.hexdigest()


def weights_sha256(model: nn.Module) -> str:
    """sha256 of the model's state dict (parameters and buffers): the same structure with other weights is
    another model."""
    return tensors_sha256({k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)})


def _value_text(value: Any) -> str:
    """A deterministic description of a rule or composite field (no memory addresses, tensors by hash)."""
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}:{tensors_sha256({'t': value})[:12]}"
    if hasattr(value, "describe") and callable(value.describe):
        text = value.describe()
        patterns = getattr(value, "patterns", None)
        inner = getattr(patterns, "patterns", None)
        if isinstance(inner, dict):  # fitted patterns: their values decide the explanation
            text += f"[patterns {tensors_sha256(inner)[:12]}]"
        return text
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_value_text(v) for v in value) + ")"
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    if callable(value):
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def describe_composite(composite) -> str:
    """The composite as text: every field, rules with their parameters (stable across processes)."""
    fields_ = getattr(composite, "__dataclass_fields__", None)
    if fields_ is None:
        return _value_text(composite)
    return ", ".join(f"{name}={_value_text(getattr(composite, name))}" for name in fields_)


def describe_target(target) -> str:
    if target is None:
        return "argmax"
    if isinstance(target, str):
        if target != "label":
            raise TargetError(f"target must be None, an int, 'label', a sequence per sample or a callable, got "
                              f"{target!r}")
        return target
    if isinstance(target, bool):
        raise TargetError("target must be None, an int, 'label', a sequence per sample or a callable, not a bool")
    if isinstance(target, int):
        return f"class {target}"
    if callable(target):
        return f"callable {_value_text(target)}"
    t = torch.as_tensor(target)
    return f"per-sample {tensors_sha256({'target': t})[:16]}"


def describe_run(model: nn.Module, composite, target, store: str, length: int, shard_size: int,
                 dataset_class: str) -> Dict[str, Any]:
    return {
        "model": {"class": type(model).__name__, "structure": structure_hash(model),
                  "weights_sha256": weights_sha256(model)},
        "rule": {"label": getattr(composite, "label", str(composite)), "description": describe_composite(composite)},
        "target": describe_target(target),
        "store": store,
        "dataset": {"class": dataset_class, "length": length},
        "shard_size": shard_size,
    }


def fingerprint(run: Dict[str, Any]) -> str:
    """A short hash of the parts of a run that must agree for shards to be reused."""
    core = {k: run[k] for k in RUN_KEYS}
    core["dataset"] = {"length": run["dataset"]["length"]}  # a renamed dataset class is the same data
    if run.get("parameters"):  # only when asked: runs without it keep their fingerprint
        core["parameters"] = True
    return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()[:16]


def run_differences(old: Dict[str, Any], new: Dict[str, Any]) -> List[str]:
    """Human-readable differences between two run descriptions (empty when shards can be reused)."""
    out = []
    om, nm = old.get("model", {}), new["model"]
    if om.get("structure") != nm["structure"]:
        out.append(f"a different model ({om.get('class')} {om.get('structure')}, this is {nm['class']} "
                   f"{nm['structure']})")
    elif om.get("weights_sha256") != nm["weights_sha256"]:
        out.append("the same model structure with different weights")
    orule, nrule = old.get("rule", {}), new["rule"]
    if orule.get("description") != nrule["description"]:
        out.append(f"a different rule ({orule.get('label')!r}, this is {nrule['label']!r})")
    for key, what in (("target", "target"), ("store", "store dtype"), ("shard_size", "shard size")):
        if old.get(key) != new[key]:
            out.append(f"a different {what} ({old.get(key)!r}, this is {new[key]!r})")
    if bool(old.get("parameters")) != bool(new.get("parameters")):
        out.append(f"parameter relevance {'stored' if old.get('parameters') else 'not stored'} (this run "
                   f"{'stores' if new.get('parameters') else 'does not store'} it)")
    if old.get("dataset", {}).get("length") != new["dataset"]["length"]:
        out.append(f"a data set of another length ({old.get('dataset', {}).get('length')}, this has "
                   f"{new['dataset']['length']})")
    return out
