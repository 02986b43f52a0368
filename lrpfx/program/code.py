"""A relevance program as a stand-alone Python module (:func:`to_python`): the imports of every rule function
its code calls, the rule table as a comment, and a ``RelevanceProgram`` class that runs its ``forward`` over
``program.graph_module``.
"""
from __future__ import annotations

import importlib
import inspect
import math
from typing import Any, Dict, Optional, Tuple

from ..version import __version__
from .nodes import relevance_steps

_FX_BUILTINS = {
    "inf": "from math import inf",
    "nan": "from math import nan",
    "NoneType": "NoneType = type(None)",
    "torch": "import torch",
    "device": "from torch import device",
    "fx_pytree": "import torch.fx._pytree as fx_pytree",
    "pytree": "import torch.utils._pytree as pytree",
}


def program_globals(program) -> Dict[str, Any]:
    """The names the program's code refers to (``lrpfx_rules_affine_epsilon``, ``torch``, ...) and their objects,
    as ``torch.fx`` bound them: ``exec(program.code, dict(program_globals(program)))`` defines ``forward``."""
    return {k: v for k, v in program.graph_module.forward.__globals__.items() if not k.startswith("__")}


def _resolve(obj) -> Optional[Tuple[str, str]]:
    """``(module, qualname)`` under which ``obj`` can be imported, or None."""
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if inspect.ismodule(obj):
        return obj.__name__, ""
    if not module or not qualname or "<" in qualname:
        return None
    try:
        found: Any = importlib.import_module(module)
        for part in qualname.split("."):
            found = getattr(found, part)
    except Exception:
        return None
    return (module, qualname) if found is obj else None


def _import_line(name: str, obj) -> str:
    if name in _FX_BUILTINS and (inspect.ismodule(obj) or name in ("inf", "nan", "NoneType", "device")):
        return _FX_BUILTINS[name]
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{name} = float({str(obj)!r})"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return f"{name} = {obj!r}"
    where = _resolve(obj)
    if where is None:
        return (f"{name} = _unavailable({name!r}, {repr(obj)!r})  "
                f"# not importable by name: bind it yourself before calling forward")
    module, qualname = where
    if not qualname:
        return f"import {module}" if module == name else f"import {module} as {name}"
    if "." not in qualname:
        return f"from {module} import {qualname}" if qualname == name else f"from {module} import {qualname} as {name}"
    head, rest = qualname.split(".", 1)
    return f"from {module} import {head} as _{name}_owner\n{name} = _{name}_owner.{rest}"


def to_python(program) -> str:
    """The program as a stand-alone Python module.

    It imports every function the code calls under the name the code uses, holds the generated ``forward``
    verbatim, the rule table as a comment, and a ``RelevanceProgram(root)`` module that runs ``forward`` over
    ``root`` — ``program.graph_module``, or any module with the same attributes: the model's modules by
    qualified name, the parameters under ``params.``, VJP replays under ``steps.``.
    """

    names = program_globals(program)
    code = program.code.strip("\n")
    table = str(program.rule_table()) if hasattr(program, "rule_table") else ""
    imports = ["import torch"]
    for name, obj in names.items():
        line = _import_line(name, obj)
        if line not in imports:
            imports.append(line)
    steps = len(relevance_steps(program))
    header = [
        f'"""Relevance program written by lrpfx {__version__}: the forward pass, then {steps} relevance steps.',
        "",
        "Run it over the program's GraphModule (it holds the model's modules, the parameters under ``params.``",
        "and the VJP replays under ``steps.``)::",
        "",
        "    prog = lrpfx.export(model, x, rule)",
        "    output, (relevance,) = RelevanceProgram(prog.graph_module)(x)",
        "",
        "or call ``forward(prog.graph_module, x, target)`` directly.",
        '"""',
    ]
    helper = [
        "def _unavailable(name, what):",
        "    def fail(*args, **kwargs):",
        "        raise NameError(f'{name} ({what}) could not be imported by name when this file was written')",
        "    return fail",
        "",
        "",
    ] if any("_unavailable(" in line for line in imports) else []
    body = ["from __future__ import annotations", "", imports[0], "", *helper, *imports[1:], "", ""]
    if table:
        body += ["# Rule table", *[("# " + line).rstrip() for line in table.splitlines()], ""]
    body += [
        "",
        code,
        "",
        "",
        "class RelevanceProgram(torch.nn.Module):",
        '    """``RelevanceProgram(root)(*inputs, target=None)`` -> ``(output, input_relevances)``."""',
        "",
        "    def __init__(self, root: torch.nn.Module):",
        "        super().__init__()",
        "        for name, child in root.named_children():",
        "            self.add_module(name, child)",
        "        for name, value in list(root._parameters.items()) + list(root._buffers.items()):",
        "            setattr(self, name, value)",
        "",
        "    forward = forward",
        "",
        "    def __call__(self, *inputs, target=None):",
        "        with torch.no_grad():",
        "            return super().__call__(*inputs, target)",
        "",
    ]
    return "\n".join(header + body)
