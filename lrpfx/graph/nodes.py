"""Reading fx nodes: call arguments, bare op names, readable labels, attributes and the user's source line.

Every stage reads nodes through these helpers, so an op written as a torch function, a Tensor method or an ATen
overload is read the same way.
"""
from __future__ import annotations

import operator
import os
from typing import Optional

import torch
import torch.fx as fx

from .ops import canonical_name, function_key
from .. import meta_keys

# lrpfx's and torch's own frames are told apart by their real install directories, not by folder names (a user's
# project may well live in a folder called "lrpfx" or "torch"), plus the code fx generates.
_OWN_DIRS = tuple(os.path.realpath(os.path.dirname(os.path.dirname(p))) + os.sep
                  for p in (__file__,)) + (os.path.realpath(os.path.dirname(torch.__file__)) + os.sep,)
_GENERATED = ("<eval_with_key>",)

# In-place variants that tracing may record; the program runs their out-of-place forms.
OUT_OF_PLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                          operator.itruediv: operator.truediv}


def out_of_place_method(name: str) -> str:
    """``relu_`` -> ``relu``; dunder names are left alone."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def call_arg(n: fx.Node, index: int, name: str, default=None):
    """Argument ``index`` (positional) or ``name`` (keyword) of a call node."""
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def op_name(n: fx.Node) -> str:
    """The bare op name: ``rsqrt`` for ``aten.rsqrt.default``, ``torch.rsqrt`` and ``Tensor.rsqrt``; an alias
    by the op it stands for (``mul`` for ``torch.multiply``)."""
    if n.op == "call_method":
        return canonical_name(out_of_place_method(n.target))
    if n.op != "call_function":
        return ""
    if isinstance(n.target, torch._ops.OpOverload):
        return canonical_name(n.target._opname)
    return getattr(function_key(n.target), "__name__", "")  # torch's aliases only, not a user's ``clip``


def op_label(node: fx.Node) -> str:
    """A readable name of what a node calls: ``torch.nn.functional.relu``, ``Tensor.view``, a module path."""
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        return t
    try:
        return fx.node._get_qualified_name(t).replace("_operator.", "operator.")
    except Exception:  # exotic callables without a stable qualified name
        return getattr(t, "__name__", None) or str(t)


def attribute(root, path: str):
    """``root.a.b.c`` for the dotted ``path`` ``"a.b.c"`` (submodules, parameters, buffers)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def parameter_of(gm: fx.GraphModule, source) -> Optional[torch.Tensor]:
    """The tensor behind a weight source: a parameter path string or a ``get_attr`` node; None otherwise."""
    if isinstance(source, fx.Node) and source.op == "get_attr":
        source = source.target
    return attribute(gm, source) if isinstance(source, str) else None


def node_path(n: fx.Node) -> str:
    """The name ``by_name`` and ``constants`` globs match: a module's path, else the node's name."""
    if n.op == "call_module":
        return n.target
    return n.meta.get(meta_keys.MODULE, n.name)


def value_rank(node: fx.Node) -> int:
    """The number of axes of a node's recorded tensor value (0 for anything else)."""
    value = node.meta.get(meta_keys.VALUE)
    return len(value.shape) if value is not None and value.is_tensor else 0


def is_own_file(filename: str) -> bool:
    """Whether a traceback's file is lrpfx's or torch's own code (or fx-generated), not the user's."""
    if any(tag in filename for tag in _GENERATED):
        return True
    return os.path.realpath(filename).startswith(_OWN_DIRS)


def _stack_file(line: str) -> str:
    """The file of a ``File "path", line N, in f`` stack-trace line."""
    start = line.find('"') + 1
    return line[start:line.find('"', start)]


def source_line(node: fx.Node) -> str:
    """`` (at file:line: code)`` for a node traced from the user's code, or an empty string."""
    stack = node.meta.get("stack_trace")
    if not stack:
        return ""
    lines = [ln.strip() for ln in stack.strip().splitlines()]
    files = [i for i, ln in enumerate(lines) if ln.startswith("File ") and not is_own_file(_stack_file(ln))]
    if not files:
        return ""
    last = files[-1]
    code = lines[last + 1] if last + 1 < len(lines) else ""
    return f" ({lines[last]}: {code})"
