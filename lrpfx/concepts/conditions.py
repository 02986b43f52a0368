"""Concepts and conditions: what a condition names (how conditions become masks and gates of a relevance
program is planned in :mod:`.plan`).

A *concept* is a set of features of one node's value: a channel of a conv output, a unit of a linear output, an
attention head (a block of the hidden axis), or any mask a function returns. A *condition* is a dict
``{"y": class, node_name: concept indices, ...}``; the relevance arriving at each named node is multiplied by the
concept's mask before it propagates on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.fx as fx

from ..errors import InputError, TargetError
from ..kinds import NodeInfo

OUTPUT_KEY = "y"


# ---- concepts -------------------------------------------------------------------------------------------------
class Concept:
    """A way to cut one node's value (shape without the batch axis) into numbered concepts."""

    def size(self, shape: Tuple[int, ...]) -> int:
        raise NotImplementedError

    def mask(self, indices: Sequence[int], shape: Tuple[int, ...]) -> torch.Tensor:
        """1 on the features of ``indices``, 0 elsewhere, broadcastable to ``shape``."""
        raise NotImplementedError

    def per_concept(self, r: torch.Tensor, shape: Tuple[int, ...], reduce: str = "sum") -> torch.Tensor:
        """``r`` ``[..., *shape]`` reduced over each concept's extent: ``[..., size]``."""
        raise NotImplementedError

    def __getitem__(self, indices) -> "Selection":
        return Selection(self, _as_indices(indices, "the concept selection"))


@dataclass(frozen=True)
class Selection:
    """Concept indices with the concept that defines them: ``Heads(4)[1]``, ``Channels()[3, 7]``."""

    concept: Concept
    indices: Tuple[int, ...]


@dataclass(frozen=True)
class Channels(Concept):
    """One concept per index along ``axis`` of the value (counted without the batch axis when non-negative:
    ``axis=0`` is the channel axis of ``[B, C, H, W]``; ``-1`` the last axis, e.g. units of ``[B, T, F]``)."""

    axis: int = 0

    def _axis(self, shape) -> int:
        axis = self.axis if self.axis >= 0 else len(shape) + self.axis
        if not 0 <= axis < len(shape):
            raise InputError(f"concept axis {self.axis} does not exist in a value of shape {tuple(shape)}")
        return axis

    def size(self, shape):
        return shape[self._axis(shape)]

    def mask(self, indices, shape):
        axis = self._axis(shape)
        m = torch.zeros(shape[axis])
        m[list(indices)] = 1.0
        return m.view(*[shape[axis] if i == axis else 1 for i in range(len(shape))])

    def per_concept(self, r, shape, reduce="sum"):
        axis = r.dim() - len(shape) + self._axis(shape)
        r = r.movedim(axis, -1)
        lead = r.shape[:r.dim() - len(shape)]
        flat = r.reshape(*lead, -1, r.shape[-1])
        return flat.sum(-2) if reduce == "sum" else flat.amax(-2)


def Units() -> Channels:
    """Units of a linear output (the last axis)."""
    return Channels(axis=-1)


@dataclass(frozen=True)
class Heads(Concept):
    """``heads`` equal contiguous blocks of the last axis: the heads of an attention output ``[B, T, H * D]``."""

    heads: int

    def _width(self, shape) -> int:
        if shape[-1] % self.heads:
            raise InputError(f"Heads({self.heads}) cannot split a last axis of size {shape[-1]} into equal heads")
        return shape[-1] // self.heads

    def size(self, shape):
        self._width(shape)
        return self.heads

    def mask(self, indices, shape):
        m = torch.zeros(self.heads)
        m[list(indices)] = 1.0
        m = m.repeat_interleave(self._width(shape))
        return m.view(*([1] * (len(shape) - 1)), shape[-1])

    def per_concept(self, r, shape, reduce="sum"):
        r = r.unflatten(-1, (self.heads, self._width(shape))).movedim(-2, -1)
        lead = r.shape[:r.dim() - len(shape) - 1]
        flat = r.reshape(*lead, -1, self.heads)
        return flat.sum(-2) if reduce == "sum" else flat.amax(-2)


@dataclass(frozen=True)
class MaskFunction(Concept):
    """Any concept: ``fn(indices, shape)`` returns a 0/1 (or weighting) tensor broadcastable to ``shape`` (the
    value's shape without the batch axis); ``count`` is the number of concepts."""

    fn: Callable
    count: int

    def size(self, shape):
        return self.count

    def mask(self, indices, shape):
        m = torch.as_tensor(self.fn(tuple(indices), tuple(shape)), dtype=torch.float64)
        try:
            torch.broadcast_shapes(m.shape, tuple(shape))
        except RuntimeError:
            raise InputError(f"the mask function returned shape {tuple(m.shape)}, which does not broadcast to the "
                             f"node's value shape {tuple(shape)} (without the batch axis)")
        return m

    def per_concept(self, r, shape, reduce="sum"):
        cols = []
        for i in range(self.count):
            masked = r * self.mask([i], shape).to(r)
            flat = masked.flatten(r.dim() - len(shape))
            cols.append(flat.sum(-1) if reduce == "sum" else flat.amax(-1))
        return torch.stack(cols, -1)


def default_concept(info: NodeInfo, infos: Mapping[fx.Node, NodeInfo]) -> Concept:
    """Channels of conv-like values (axis 1 of ``[B, C, ...]``), units (last axis) of linear and token values."""
    shape = tuple(info.shape)
    if len(shape) <= 2 or len(shape) >= 4:
        return Channels(0)
    # [B, C, L] from a 1-d convolution, or [B, T, F] tokens: look for the nearest affine producer
    node: Optional[NodeInfo] = info
    for _ in range(64):
        if node is None:
            break
        if node.kind in ("conv", "conv_transpose"):
            return Channels(0)
        if node.kind in ("linear", "embedding", "layer_norm", "matmul", "input"):
            return Channels(-1)
        source = node.x if node.x is not None else next(iter(node.activations), None)
        node = infos.get(source) if source is not None else None
    return Channels(-1)


# ---- conditions -------------------------------------------------------------------------------------------------
def _as_indices(value, where: str) -> Tuple[int, ...]:
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() or value.dim() > 1:
            raise InputError(f"{where}: concept indices must be integers in a flat list or a 1-d LongTensor, got a "
                             f"tensor of shape {tuple(value.shape)} and dtype {value.dtype} (conditions of mixed "
                             f"shapes: give one flat list of indices per node)")
        value = value.tolist()
    if isinstance(value, bool):
        raise InputError(f"{where}: concept indices must be integers, got a bool")
    if isinstance(value, int):
        return (value,)
    if isinstance(value, (list, tuple, range)) and value and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in value):
        return tuple(value)
    raise InputError(f"{where}: concept indices must be an int or a non-empty flat list of ints, got {value!r} "
                     f"(conditions of mixed shapes: nested lists or per-sample indices are not supported; give one "
                     f"condition per concept set)")


@dataclass(frozen=True)
class Condition:
    """One parsed condition: the output class (None: the call's ``target``) and per node a selection."""

    y: Optional[int]
    nodes: Tuple[Tuple[str, Selection], ...]

    @property
    def names(self) -> FrozenSet[str]:
        return frozenset(name for name, _ in self.nodes)


def parse_conditions(conditions) -> List[Condition]:
    if isinstance(conditions, Mapping):
        conditions = [conditions]
    if not isinstance(conditions, (list, tuple)) or not conditions:
        raise InputError(f"conditions must be a non-empty list of dicts such as [{{'y': 3, 'features.28': [50]}}], "
                         f"got {type(conditions).__name__}")
    parsed = []
    for k, cond in enumerate(conditions):
        if not isinstance(cond, Mapping):
            raise InputError(f"condition {k} must be a dict {{'y': class, node: indices}}, got {type(cond).__name__}")
        y = cond.get(OUTPUT_KEY)
        if y is not None:
            y = _as_indices(y, f"condition {k}, 'y'")
            if len(y) != 1:
                raise TargetError(f"condition {k}: 'y' must name one class, got {list(y)}; use one condition per "
                                  f"class and add their heatmaps")
            y = y[0]
        nodes = []
        for name, value in cond.items():
            if name == OUTPUT_KEY:
                continue
            if not isinstance(name, str):
                raise InputError(f"condition {k}: node names must be strings, got {name!r}")
            if isinstance(value, Selection):
                nodes.append((name, value))
            else:
                nodes.append((name, Selection(None, _as_indices(value, f"condition {k}, node '{name}'"))))
        parsed.append(Condition(y, tuple(sorted(nodes, key=lambda item: item[0]))))
    return parsed
