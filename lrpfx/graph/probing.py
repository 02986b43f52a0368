"""Probing: an op no registry row knows is classified by what it does to values — run in float64 on random inputs
shaped like the recorded ones, with its other arguments as recorded (parameters and numbers only).

* linear in its one activation input (``f(a·x + b·y) = a·f(x) + b·f(y)``, ``f(0) = 0``): a linear map that may
  mix values, kind ``reduce`` — the proportional rule ``x ⊙ Jᵀ(R ⊘ stab(z))``, exact for LRP-0;
* elementwise (each output element depends on the same input element only) with ``f(0) = 0``: an activation,
  kind ``activation`` (the Pass rule).

An op with ``f(0) ≠ 0`` (``exp``, a shift by a constant) fits no class: it would make relevance up or lose it.

The class shows in the rule table (``op (probed: linear)``) and in a log line (logger ``lrpfx``). An op that fits
no class stays unknown and is refused with its node, source line and the fix.
"""
from __future__ import annotations

import copy
import logging
from typing import Optional

import torch
import torch.fx as fx

from ..kinds import Elementwise, Kind, Moves, NodeInfo
from .nodes import attribute, out_of_place_method, source_line
from .. import meta_keys

log = logging.getLogger("lrpfx")
_TOLERANCE = 1e-9


def probe(gm: fx.GraphModule, info: NodeInfo) -> Optional[str]:
    """``"linear"``, ``"elementwise"`` or None (cannot run it, or it fits neither)."""
    f = _runner(gm, info)
    if f is None:
        return None
    shape = tuple(info.x.meta[meta_keys.VALUE].shape)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(shape, generator=generator, dtype=torch.float64) for _ in range(2))
    try:
        with torch.no_grad():
            fa, fb, mixed, zero = f(a), f(b), f(2.0 * a - 3.0 * b), f(torch.zeros_like(a))
    except Exception:  # an op that does not run on float64 stand-ins: it stays unknown
        return None
    if not all(isinstance(v, torch.Tensor) and v.dtype == torch.float64 for v in (fa, fb, mixed, zero)) \
            or tuple(fa.shape) != tuple(info.node.meta[meta_keys.VALUE].shape):
        return None
    scale = max(float(fa.abs().max()), float(fb.abs().max()), 1.0)
    if not _close(zero, torch.zeros_like(zero), scale):
        return None  # f(0) ≠ 0 (exp, a shift): relevance would be made up or lost; it stays unknown
    if _close(mixed, 2.0 * fa - 3.0 * fb, scale):
        return "linear"
    if fa.shape == a.shape and _elementwise(f, a, fa, scale):
        return "elementwise"
    return None


def apply_probe(gm: fx.GraphModule, info: NodeInfo) -> NodeInfo:
    """An unknown node with its probed class and that class's facts; unchanged where probing finds none."""
    found = probe(gm, info)
    if found == "linear":
        info.kind, info.facts = Kind.REDUCE, Moves(copies=False, keeps_sign=False)
    elif found == "elementwise":
        info.kind, info.facts = Kind.ACTIVATION, Elementwise(relu=False, zero_at_zero=True)
    else:
        return info
    info.op = f"{info.op} (probed: {found})"
    log.info("lrpfx: node '%s' (%s)%s is unknown to lrpfx; probed in float64 it is %s: kind '%s'",
             info.node.name, info.op, source_line(info.node), found, info.kind)
    return info


def _close(x: torch.Tensor, y: torch.Tensor, scale: float) -> bool:
    return x.shape == y.shape and bool(((x - y).abs() <= _TOLERANCE * scale).all())


def _elementwise(f, a: torch.Tensor, fa: torch.Tensor, scale: float) -> bool:
    """Changing a few single elements changes the output at those elements only."""
    flat = a.flatten()
    for k in sorted({0, flat.numel() // 2, flat.numel() - 1}):
        moved = flat.clone()
        moved[k] += 0.5
        changed = (f(moved.view_as(a)) - fa).abs().flatten() > _TOLERANCE * scale
        if changed.sum() > 1 or (changed.any() and not changed[k]):
            return False
    return True


def _runner(gm: fx.GraphModule, info: NodeInfo):
    """``x -> the node's op on x`` with the other arguments as recorded, or None where one of them is a value
    the graph computes (not a parameter or a number) or the op has no tensor activation input."""
    n, x = info.node, info.x
    value = n.meta.get(meta_keys.VALUE)
    if x is None or value is None or not value.is_float_tensor or not x.meta[meta_keys.VALUE].is_float_tensor:
        return None
    if any(a is not x and a.op != "get_attr" for a in n.all_input_nodes):
        return None
    if n.op == "call_module":
        try:  # a copy in float64, so the probe leaves the user's module as it is
            fn = copy.deepcopy(gm.get_submodule(n.target)).double()
        except Exception:  # a module holding what cannot be copied (locks, events, handles): not probed
            return None
    elif n.op == "call_function":
        fn = n.target
    elif n.op == "call_method":
        name = out_of_place_method(n.target)

        def fn(self, *args, **kwargs):
            return getattr(self, name)(*args, **kwargs)
    else:
        return None

    def constant(a: fx.Node):
        v = attribute(gm, a.target)
        return v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v

    def run(stand_in: torch.Tensor):
        fill = lambda a: stand_in if a is x else constant(a)  # noqa: E731
        return fn(*fx.node.map_arg(n.args, fill), **fx.node.map_arg(n.kwargs, fill))
    return run
