"""Ops by what they are, not by how they are spelled: torch's aliases and ATen's overloads.

torch documents each of its aliases in the alias's docstring ("Alias for :func:`torch.mul`"); that list is read
here rather than kept by hand, so ``torch.multiply``, ``Tensor.multiply`` and ``aten.multiply.Tensor`` are all
``mul``. An ATen overload (``aten.conv2d.padding``) stands for its op packet (``aten.conv2d``): registry rows
match every overload of an op, and its readers read each overload's own schema.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Dict, Optional

import torch

aten = torch.ops.aten

_ALIAS_DOC = re.compile(r"Alias (?:for|of) :func:`torch\.(\w+)`")


@lru_cache(maxsize=None)
def torch_aliases() -> Dict[str, str]:
    """``{alias: op}`` for every top-level torch function whose docstring says it is an alias of another
    top-level torch function (``multiply -> mul``, ``clip -> clamp``, ``concatenate -> cat``). Aliases of
    ``torch.special`` or ``torch.linalg`` functions are left out: there the short name is the ATen op."""
    found = {}
    for name in dir(torch):
        fn = getattr(torch, name, None)
        doc = getattr(fn, "__doc__", None) if callable(fn) and not isinstance(fn, type) else None
        match = _ALIAS_DOC.search(doc[:400]) if isinstance(doc, str) else None
        if match and match.group(1) != name and callable(getattr(torch, match.group(1), None)):
            found[name] = match.group(1)
    return found


def canonical_name(name: str) -> str:
    """The op an alias stands for (``multiply`` -> ``mul``); other names unchanged."""
    return torch_aliases().get(name, name)


@lru_cache(maxsize=None)
def _alias_functions() -> Dict[Callable, Callable]:
    """torch's alias functions mapped to the functions they stand for (``torch.multiply -> torch.mul``)."""
    return {getattr(torch, alias): getattr(torch, op) for alias, op in torch_aliases().items()}


def packet(target) -> Optional[torch._ops.OpOverloadPacket]:
    """The ATen op of an overload or packet (``aten.conv2d.padding`` -> ``aten.conv2d``), alias resolved
    (``aten.multiply.Tensor`` -> ``aten.mul``); None for anything that is not an ATen op."""
    if isinstance(target, torch._ops.OpOverload):
        target = target.overloadpacket
    if not isinstance(target, torch._ops.OpOverloadPacket):
        return None
    namespace, name = target._qualified_op_name.split("::")
    if namespace != "aten":
        return target
    return getattr(aten, canonical_name(name), target)


def function_key(target):
    """What a registry row indexes a called function by: the ATen op packet for ATen overloads, the canonical
    function for torch's aliases, the function itself otherwise."""
    op = packet(target)
    if op is not None:
        return op
    try:
        return _alias_functions().get(target, target)
    except TypeError:  # an unhashable callable
        return target


def overload_name(target) -> str:
    """``"padding"`` for ``aten.conv2d.padding``; ``""`` for anything but an ATen overload."""
    return target._overloadname if isinstance(target, torch._ops.OpOverload) else ""
