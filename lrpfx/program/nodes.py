"""Which node of a relevance program is which, and how a relevance step reads as a rule.

Relevance nodes are the call of :func:`~.targets.initial_relevance` (named ``r_output``) and every node after it in
graph order: the program builder writes the forward first, then the relevance steps. The DOT view (:mod:`.dot`), the Python module
(:mod:`.code`) and the CLI's ``graph`` command all split and label nodes this way.
"""
from __future__ import annotations

import inspect
import operator
from typing import List, Optional, Tuple

import torch
import torch.fx as fx
from torch import nn

from ..errors import LrpfxError
from .targets import initial_relevance

_STEP_OPS = ("call_function", "call_module", "call_method")


# ---- which node is which ---------------------------------------------------------------------------------------
def _graph(program) -> fx.Graph:
    return program.graph_module.graph


def split_nodes(program) -> Tuple[List[fx.Node], List[fx.Node]]:
    """``(forward, relevance)`` nodes of the program in graph order; placeholders and the output node in
    neither. Relevance nodes are ``r_output`` and everything after it."""
    forward: List[fx.Node] = []
    relevance: List[fx.Node] = []
    seen_start = False
    for n in _graph(program).nodes:
        if n.op == "call_function" and n.target is initial_relevance:  # found by what it calls, not its name
            seen_start = True
        if n.op in ("placeholder", "output"):
            continue
        (relevance if seen_start else forward).append(n)
    if not seen_start:
        raise LrpfxError("this graph has no initial relevance (no call of lrpfx.program.targets.initial_relevance): "
                         "it is not a relevance program built by lrpfx")
    return forward, relevance


def relevance_steps(program) -> List[fx.Node]:
    """The relevance steps: calls (rule functions, VJP replays, sums of contributions, tuple picks) at or after
    ``r_output``; parameter reads (``get_attr``) are not steps."""
    return [n for n in split_nodes(program)[1] if n.op in _STEP_OPS]


def num_inputs(program) -> int:
    """The model's inputs: the program's placeholders less its ``target``."""
    return sum(1 for n in _graph(program).nodes if n.op == "placeholder") - 1


# ---- labels ----------------------------------------------------------------------------------------------------
def function_name(fn) -> str:
    if fn is operator.getitem:
        return "getitem"
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return name


def _short(value) -> str:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)


def _layer_name(layer) -> str:
    dim = getattr(layer, "dim", None)
    name = type(layer).__name__
    return f"{name}{dim}d" if isinstance(dim, int) else name


def rule_label(node: fx.Node, root: Optional[nn.Module] = None) -> str:
    """The rule of one relevance step as text: the target function's name and its keyword arguments, keyword
    arguments equal to the function's defaults left out and the layer spec shown apart — e.g.
    ``gamma(gamma=0.25, eps=1e-06) on Conv2d``. VJP replays read ``vjp(MaxPool2d, gradient)``."""
    if node.op == "call_module":
        module = root.get_submodule(node.target) if root is not None else None
        if module is not None and hasattr(module, "extra_repr"):
            return f"vjp({module.extra_repr()})"
        return f"module {node.target}"
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op != "call_function":
        return node.op
    fn = node.target
    if fn is operator.getitem:
        return f"[{_short(node.args[1])}]"
    if fn is operator.add:
        return "sum"
    try:
        defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    shown = []
    layer = None
    for key, value in node.kwargs.items():
        if key == "layer":
            layer = value
            continue
        if key in defaults and _same(defaults[key], value):
            continue
        shown.append(f"{key}={_short(value)}")
    label = f"{function_name(fn)}({', '.join(shown)})"
    if layer is not None:
        label += f" on {_layer_name(layer)}"
    return label


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False
