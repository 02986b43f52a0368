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
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

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


def slots(program: nn.Module, source: Union[nn.Module, Dict[int, str]]) -> Optional[List[Slot]]:
    """The references of ``program`` to ``source``'s tensors (a model, or its tensors' names by identity), or
    None if the program holds a tensor that is neither one of them nor a constant of lrpfx's own (rebinding
    would then leave it behind)."""
    names = names_by_id(source) if isinstance(source, nn.Module) else source
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
    """What a program built for ``model`` depends on besides tensor values (:class:`ModelState`'s structure), to
    share one program between models of one structure. None when some module holds a plain (unregistered)
    tensor attribute that rebinding could not follow."""
    structure = model_state(model).structure
    if any(value == _PLAIN_TENSOR for _, _, config in structure[0] for _, value in config):
        return None
    return type(model), structure


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


class ModelState(NamedTuple):
    """What a built program trusts about its model: the structure (module classes and configuration, tensor
    names, shapes, dtypes, devices and ties), the objects it may hold by reference (modules, hooks, plain tensor
    attributes and callables set on instances) and the parameters and buffers in name order. Objects are
    compared by identity and held, so a freed object's id cannot come back as another's."""

    structure: tuple
    objects: tuple
    tensors: tuple

    def same(self, other: Optional["ModelState"]) -> bool:
        return self.same_modules(other) and _identical(self.tensors, other.tensors)

    def same_modules(self, other: Optional["ModelState"]) -> bool:
        """Equal but for which tensors are the parameters and buffers: a program can be rebound to them."""
        return other is not None and self.structure == other.structure and _identical(self.objects, other.objects)

    def names_by_id(self) -> Dict[int, str]:
        names: Dict[int, str] = {}
        for (name, *_), t in zip(self.structure[1], self.tensors):
            names.setdefault(id(t), name)
        return names

    def named_tensors(self) -> Dict[str, torch.Tensor]:
        return {name: t for (name, *_), t in zip(self.structure[1], self.tensors)}


def _identical(a: tuple, b: tuple) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def model_state(model: nn.Module) -> ModelState:
    """The :class:`ModelState` of ``model`` now: one walk over its modules, cheap enough to check before every
    run (in-place changes of tensor values need no check: programs read the tensors themselves)."""
    modules, objects = [], []
    for name, m in model.named_modules(remove_duplicate=False):
        config = []
        objects.append(m)
        for attr, value in vars(m).items():
            kind = type(value)
            if kind in _SCALARS:  # the common case first: numbers, flags, strings
                if attr[0] != "_" and attr != "training":
                    config.append((attr, repr(value) if kind is float else value))
            elif attr in _HOOKS:
                if value:
                    config.append((attr, tuple(value)))
                    objects.extend(value.values())
            elif attr in _TORCH_INTERNALS:
                continue
            elif _holds_tensor(value):
                config.append((attr, _PLAIN_TENSOR))
                objects.append(value)
            elif callable(value) and not isinstance(value, (nn.Module, type)):  # e.g. a forward set on the instance
                config.append((attr, getattr(value, "__qualname__", kind.__qualname__)))
                objects.append(value)
            elif attr[0] != "_" and _is_plain(value):
                config.append((attr, repr(value)))
        modules.append((name, type(m), tuple(config)))
    first: Dict[int, int] = {}
    described, tensors = [], named_tensors(model)
    for i, (name, t) in enumerate(tensors.items()):
        shape = None if isinstance(t, nn.parameter.UninitializedTensorMixin) else tuple(t.shape)
        described.append((name, isinstance(t, nn.Parameter), shape, t.dtype, str(t.device), first.setdefault(id(t), i)))
    return ModelState((tuple(modules), tuple(described)), tuple(objects), tuple(tensors.values()))


# what every nn.Module holds for torch's own bookkeeping (state-dict hooks, parameter stores, ...)
_TORCH_INTERNALS = frozenset(vars(nn.Module())) - {"training"}
_PLAIN_TENSOR = "a plain tensor attribute"
_SCALARS = frozenset((bool, int, float, str, type(None)))
# a hook added after a build changes what the model computes
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs")
