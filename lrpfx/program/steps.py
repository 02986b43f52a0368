"""Functions a relevance program calls besides the rules' own: relevance of tuple-valued nodes, sums of
contributions, relevance from relevance per value, concept gates, and the wrappers that let generated code
call a function or a Tensor method it cannot import by name. Every one is pure: the program builder
(:mod:`lrpfx.program.builder`) writes calls to them, and the program runs them."""
from __future__ import annotations

import torch

from ..rules import temporaries


class FunctionStep(torch.nn.Module):
    """A relevance function the program's code cannot import by name, called as a module with its keywords."""

    def __init__(self, fn, kwargs: dict):
        super().__init__()
        self.fn, self.kwargs = fn, dict(kwargs)

    def forward(self, *args):
        return self.fn(*args, **self.kwargs)

    def extra_repr(self) -> str:
        return f"{self.fn.__qualname__}, {self.kwargs}"


class MethodCall:
    """``MethodCall("view")(x, 2, -1)`` is ``x.view(2, -1)``: a Tensor method as a plain function."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, self_, *args, **kwargs):
        return getattr(self_, self.name)(*args, **kwargs)

    def __repr__(self):
        return f"Tensor.{self.name}"


def fill_tuple(values, *relevances, present: tuple):
    """Relevance of a tuple-valued node: given pieces at ``present`` indices, zeros elsewhere. An item may itself
    be a flat tuple (an LSTM's ``(out, (h, c))``)."""
    pieces = dict(zip(present, relevances))
    r, v = relevances[0], values[present[0]]
    while isinstance(r, tuple):
        r, v = r[0], v[0]
    lead = r.shape[:r.dim() - v.dim()]
    return tuple(pieces[i] if i in pieces else _zeros_like_value(v, lead) for i, v in enumerate(values))


def _zeros_like_value(v, lead):
    if isinstance(v, (tuple, list)):
        return tuple(_zeros_like_value(u, lead) for u in v)
    return v.new_zeros((*lead, *v.shape))


def add_relevance(a, b):
    """Sum of two relevances of one value: tensors, or (nested) tuples of them for tuple-valued nodes."""
    if isinstance(a, tuple):
        return tuple(add_relevance(x, y) for x, y in zip(a, b))
    return a + b


def times_value(g, value, finite: bool = False):
    """Relevance from relevance per value: ``g ⊙ value``, item by item for tuple-valued nodes. ``finite``: 0 where
    the value is infinite (masked attention scores: the softmax hands them ``g = 0``; relevance steps never
    read such values, but recorded relevances show them)."""
    if isinstance(g, tuple):
        return tuple(times_value(a, v, finite) for a, v in zip(g, value))
    r = g * value
    return temporaries.masked_fill(r, torch.isinf(value), 0.0) if finite and value.is_floating_point() else r


def gate_relevance(r, gate: torch.Tensor, *, ndim: int):
    """Conditional relevance (:mod:`lrpfx.concepts`): ``r`` times a per-condition gate ``[K]`` of 0/1, broadcast
    over a value of ``ndim`` axes; ``r`` gains the leading condition axis if it had none."""
    return r * gate.view(-1, *([1] * ndim)).to(r.dtype)

