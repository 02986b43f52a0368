"""Run a built relevance program on the tensors of another model with the same structure.

A relevance program holds the parameters and buffers of the model it was built from by reference (the program's
``params.*`` attributes and the module calls of its forward). Rebinding points those references at the tensors
of another model of the same structure, so that one build serves many models: the deep copies with re-initialised
layers of a model-randomisation test, or a wrapper's buffers that change from call to call. Only references
change; no tensor is copied or written.

The program must hold nothing else that came from the model: :func:`slots` refuses (returns None) a program
holding a tensor it cannot trace back to a named parameter or buffer, and the caller then builds per model.
"""
from __future__ import annotations

import copy
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import nn

_STORES = ("_parameters", "_buffers")
# program namespaces whose tensors lrpfx made itself (rule constants such as ZBox bounds or fitted patterns)
_OWN_PREFIXES = ("constants",)


class Slot(NamedTuple):
    """One tensor reference inside a program: ``getattr(owner, store)[attr]`` is the model's tensor ``name``."""

    owner: nn.Module
    store: str
    attr: str
    name: str


def named_tensors(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer by qualified name, shared ones under each of their names."""
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(model.named_buffers(remove_duplicate=False))
    return tensors


def names_by_id(model: nn.Module) -> Dict[int, str]:
    """The first qualified name of every parameter and buffer, by tensor identity."""
    names: Dict[int, str] = {}
    for name, t in named_tensors(model).items():
        names.setdefault(id(t), name)
    return names


def slots(program: nn.Module, source: nn.Module) -> Optional[List[Slot]]:
    """The references of ``program`` to ``source``'s tensors, or None if the program holds a tensor that is
    neither one of them nor a constant of lrpfx's own (rebinding would then leave it behind)."""
    names = names_by_id(source)
    found: List[Slot] = []
    for path, module in program.named_modules(remove_duplicate=False):
        own = path.split(".")[0] in _OWN_PREFIXES
        for store in _STORES:
            for attr, t in getattr(module, store).items():
                if t is None:
                    continue
                name = names.get(id(t))
                if name is not None:
                    found.append(Slot(module, store, attr, name))
                elif not own:
                    return None
        if not own and any(isinstance(v, torch.Tensor) for v in vars(module).values()):
            return None  # a plain tensor attribute: not a registered parameter or buffer, cannot be tracked
    return found


def bind(found: List[Slot], tensors: Dict[str, torch.Tensor]) -> None:
    """Point every slot at the tensor of the same name in ``tensors``."""
    for s in found:
        getattr(s.owner, s.store)[s.attr] = tensors[s.name]


def module_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree that shares every tensor with ``model``: its tensor references can then be
    rebound without touching ``model``."""
    memo = {id(t): t for t in named_tensors(model).values()}
    return copy.deepcopy(model, memo)


def structure_key(model: nn.Module) -> Optional[Tuple]:
    """What a program built for ``model`` depends on besides tensor values: the module tree (class and simple
    configuration attributes of every module), the names, shapes, dtypes and devices of its tensors, and which
    of them are tied. None when some module holds a plain (unregistered) tensor attribute that rebinding could
    not follow."""
    modules = []
    for name, m in model.named_modules(remove_duplicate=False):
        config = []
        for attr, value in vars(m).items():
            if attr in _MODULE_INTERNALS:
                continue
            if _holds_tensor(value):
                return None
            if not attr.startswith("_") and attr != "training" and _is_plain(value):
                config.append((attr, repr(value)))
        modules.append((name, type(m), tuple(sorted(config))))
    first: Dict[int, int] = {}
    tensors = []
    for i, (name, t) in enumerate(named_tensors(model).items()):
        tensors.append((name, isinstance(t, nn.Parameter), tuple(t.shape), t.dtype, str(t.device),
                        first.setdefault(id(t), i)))
    return type(model), tuple(modules), tuple(tensors)


_MODULE_INTERNALS = ("_parameters", "_buffers", "_modules")


def _holds_tensor(value, depth: int = 3) -> bool:
    """A tensor, or a list/tuple/set/dict holding one (a few levels deep)."""
    if isinstance(value, torch.Tensor):
        return True
    if depth == 0:
        return False
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_tensor(v, depth - 1) for v in value)
    return False


def _is_plain(value) -> bool:
    """Configuration that changes what a module computes: numbers, strings, flags and tuples of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    return isinstance(value, (tuple, list)) and all(_is_plain(v) for v in value)
