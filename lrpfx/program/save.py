"""Inspect and ship a relevance program: Graphviz DOT, a readable Python module, a ``torch.export`` archive.

Everything here takes a :class:`lrpfx.RelevanceProgram` (``lrpfx.export(model, x, rule)``):

- :func:`to_dot` — DOT text of the program's graph. Forward nodes and relevance nodes are drawn apart (two
  clusters, two colours, ``class="forward"`` / ``class="relevance"`` on every node statement) and every
  relevance step is labelled with its rule, e.g. ``gamma(gamma=0.25, eps=1e-06)``.
- :func:`to_python` — the program's ``forward`` as a stand-alone module: the imports of every rule function it
  calls, the rule table as a comment, and a ``RelevanceProgram`` class that runs it over ``program.graph_module``.
- :func:`to_exported` — a ``torch.export.ExportedProgram`` with no lrpfx (nor model) code left in it.
- :func:`save` — one of the above, chosen by the file suffix: ``.dot``, ``.svg``/``.png`` (Graphviz), ``.py``,
  ``.pt2``.

Relevance nodes are ``r_output`` (the initial relevance) and every node after it in graph order; the program
builder writes the forward first, then the relevance steps.
"""
from __future__ import annotations

import importlib
import inspect
import math
import operator
import shutil
import subprocess
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.fx as fx
from torch import nn

from ..errors import InputError, LrpfxError
from ..version import __version__

START_NODE = "r_output"
_STEP_OPS = ("call_function", "call_module", "call_method")
_FORWARD_STYLE = 'shape=box, style="rounded,filled", fillcolor="#dbe9f6", color="#4a7ab5"'
_RELEVANCE_STYLE = 'shape=box, style="filled", fillcolor="#fde3c8", color="#c0504d"'
_IO_STYLE = 'shape=oval, style="filled", fillcolor="#e8e8e8", color="#555555"'
_PARAM_STYLE = 'shape=note, style="filled", fillcolor="#f4f4f4", color="#999999", fontsize=9'


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
        if n.name == START_NODE:
            seen_start = True
        if n.op in ("placeholder", "output"):
            continue
        (relevance if seen_start else forward).append(n)
    if not seen_start:
        raise LrpfxError(f"this graph has no '{START_NODE}' node: it is not a relevance program built by lrpfx")
    return forward, relevance


def relevance_steps(program) -> List[fx.Node]:
    """The relevance steps: calls (rule functions, VJP replays, sums of contributions, tuple picks) at or after
    ``r_output``; parameter reads (``get_attr``) are not steps."""
    return [n for n in split_nodes(program)[1] if n.op in _STEP_OPS]


# ---- labels ----------------------------------------------------------------------------------------------------
def _function_name(fn) -> str:
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
    label = f"{_function_name(fn)}({', '.join(shown)})"
    if layer is not None:
        label += f" on {_layer_name(layer)}"
    return label


def _same(a, b) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:
        return False


def _forward_label(node: fx.Node, root: nn.Module, shapes: Dict[str, tuple]) -> str:
    if node.op == "call_module":
        what = type(root.get_submodule(node.target)).__name__
    elif node.op == "call_function":
        what = _function_name(node.target)
    elif node.op == "call_method":
        what = f".{node.target}()"
    elif node.op == "get_attr":
        what = "parameter"
    else:
        what = node.op
    lines = [node.name, what]
    if node.name in shapes:
        lines.append(str(tuple(shapes[node.name])))
    return "\n".join(lines)


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _dot_id(name: str) -> str:
    return f'"{_dot_escape(name)}"'


# ---- DOT -------------------------------------------------------------------------------------------------------
def to_dot(program, *, params: bool = False, rankdir: str = "TB", name: str = "relevance_program") -> str:
    """Graphviz DOT text of ``program``.

    Forward nodes (light blue, cluster "forward") and relevance nodes (orange, cluster "relevance") are drawn
    apart, and every node statement carries ``class="forward"``, ``class="relevance"``, ``class="io"`` or
    ``class="param"``. Each relevance step is labelled with its node name and its rule (:func:`rule_label`).
    Edges follow the arguments of each node: solid within the forward pass, red within the relevance pass,
    dashed grey where a relevance step reads a forward value. ``params=True`` also draws the parameter reads.
    """
    gm = program.graph_module
    shapes = {row.node: row.shape for row in getattr(program, "rows", [])}
    forward, relevance = split_nodes(program)
    forward_set = set(forward)
    drawn: Dict[fx.Node, str] = {}
    lines = [f"digraph {_dot_id(name)} {{", f"  rankdir={rankdir};",
             '  node [fontname="Helvetica", fontsize=10];', '  edge [color="#4a7ab5"];']

    def node_stmt(n: fx.Node, label: str, style: str, cls: str, indent="    ") -> str:
        drawn[n] = cls
        return f'{indent}{_dot_id(n.name)} [label="{_dot_escape(label)}", {style}, class="{cls}"];'

    for n in _graph(program).nodes:
        if n.op == "placeholder":
            lines.append(node_stmt(n, f"{n.name}\ninput", _IO_STYLE, "io", "  "))
    lines += ["  subgraph cluster_forward {", '    label="forward"; color="#4a7ab5"; fontcolor="#4a7ab5";']
    for n in forward:
        if n.op == "get_attr":
            if params:
                lines.append(node_stmt(n, f"{n.name}\n{n.target}", _PARAM_STYLE, "param"))
            continue
        lines.append(node_stmt(n, _forward_label(n, gm, shapes), _FORWARD_STYLE, "forward"))
    lines += ["  }", "  subgraph cluster_relevance {",
              '    label="relevance"; color="#c0504d"; fontcolor="#c0504d";']
    for n in relevance:
        if n.op == "get_attr":
            if params:
                lines.append(node_stmt(n, f"{n.name}\n{n.target}", _PARAM_STYLE, "param"))
            continue
        lines.append(node_stmt(n, f"{n.name}\n{rule_label(n, gm)}", _RELEVANCE_STYLE, "relevance"))
    lines.append("  }")
    output = next(n for n in _graph(program).nodes if n.op == "output")
    lines.append(node_stmt(output, "output\n(output, relevances)", _IO_STYLE, "io", "  "))
    for n in _graph(program).nodes:
        if n not in drawn:
            continue
        for a in n.all_input_nodes:
            if a not in drawn:
                continue
            if drawn[n] == "relevance" and drawn[a] == "relevance":
                attrs = ' [color="#c0504d"]'
            elif drawn[n] in ("relevance", "io") and (a in forward_set or drawn[a] == "io") and n.op != "output":
                attrs = ' [style=dashed, color="#9a9a9a"]'
            elif drawn[a] == "param":
                attrs = ' [style=dotted, color="#9a9a9a"]'
            else:
                attrs = ""
            lines.append(f"  {_dot_id(a.name)} -> {_dot_id(n.name)}{attrs};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(dot_text: str, path: Union[str, Path], fmt: Optional[str] = None) -> Path:
    """Render DOT text to ``path`` (``svg``, ``png``, ``pdf``, ... from the suffix) with Graphviz's ``dot``."""
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    exe = shutil.which("dot")
    if exe is None:
        raise LrpfxError(
            f"rendering '{path.name}' needs Graphviz's 'dot' executable, which is not on PATH: install it "
            f"(apt-get install graphviz, brew install graphviz or conda install graphviz), or save a '.dot' file "
            f"instead, which needs nothing and renders anywhere later (dot -T{fmt} prog.dot -o {path.name})")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=dot_text.encode(), capture_output=True)
    if done.returncode != 0:
        raise LrpfxError(f"Graphviz failed to render '{path}': {done.stderr.decode(errors='replace').strip()}")
    return path


# ---- Python module ---------------------------------------------------------------------------------------------
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


# ---- torch.export ----------------------------------------------------------------------------------------------
def example_inputs_for(program) -> Tuple[torch.Tensor, ...]:
    """Example inputs shaped like the ones the program was built for (random values; only shapes and dtypes
    matter for export), from the shapes recorded on its input nodes."""
    gm = program.graph_module
    param = next(iter(gm.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    inputs = []
    for n in gm.graph.nodes:
        if n.op != "placeholder" or n.name == "target":
            continue
        info = n.meta.get("lrpfx_value")
        shape, dtype = getattr(info, "shape", None), getattr(info, "dtype", None)
        if shape is None or dtype is None:
            raise InputError(f"the program does not record the shape of its input '{n.name}': pass "
                             f"example_inputs=(x, ...) to save it as .pt2")
        if dtype.is_floating_point:
            inputs.append(torch.randn(shape, dtype=dtype, device=device))
        else:
            inputs.append(torch.zeros(shape, dtype=dtype, device=device))
    return tuple(inputs)


def _num_inputs(program) -> int:
    return sum(1 for n in _graph(program).nodes if n.op == "placeholder") - 1


def to_exported(program, example_inputs: Optional[Sequence[torch.Tensor]] = None, *,
                target_input: bool = False, dynamic_batch: bool = True) -> "torch.export.ExportedProgram":
    """``torch.export`` the program; the result holds no lrpfx or model code, only ATen ops and tensors.

    The exported module takes the model's inputs and explains the argmax class, or with ``target_input=True``
    takes one more input, an int64 tensor ``[B]`` of class indices. It returns ``(output, (relevance, ...))``.
    Shapes are those of ``example_inputs`` (default: the shapes the program was built for) except the batch
    axis, which stays free with ``dynamic_batch`` (falls back to the example's batch size if the model
    specialises on it).

    How: ``torch.export`` (torch 2.14) does not trace ``torch.func.vjp``, which the program's ``Replay`` steps
    use (max and average pooling, structural ops): it exports without an error, but the values inside the VJP
    become constant FakeTensors and the exported module returns FakeTensors. The program is therefore first
    flattened to ATen ops with ``make_fx`` (which traces ``torch.func`` transforms), then exported.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else example_inputs
    inputs = tuple(inputs) if inputs is not None else example_inputs_for(program)
    want = _num_inputs(program) + (1 if target_input else 0)
    if len(inputs) != want:
        raise InputError(f"the program takes {_num_inputs(program)} input(s)"
                         f"{' plus a target tensor' if target_input else ''}; got {len(inputs)} example input(s)")
    if target_input and (inputs[-1].is_floating_point() or inputs[-1].dim() != 1):
        raise InputError("with target_input=True the last example input is the target: an int64 tensor [B]")
    if dynamic_batch:
        try:
            return _export(program, inputs, target_input, dynamic=True)
        except Exception as exc:  # the model specialises on its batch size: export that size
            warnings.warn(f"exporting with a free batch axis failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); exported for batch size "
                          f"{inputs[0].shape[0]} only", stacklevel=2)
    return _export(program, inputs, target_input, dynamic=False)


def _export(program, inputs, target_input: bool, dynamic: bool):
    from torch.fx.experimental.proxy_tensor import make_fx

    gm = program.graph_module
    if target_input:
        def run(*args):
            return gm(*args[:-1], args[-1])
    else:
        def run(*args):
            return gm(*args, None)
    if dynamic and inputs[0].shape[0] == 1:  # symbolic tracing specialises a size-1 axis: trace batch 2
        inputs = tuple(torch.cat([t, t]) for t in inputs)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = make_fx(run, tracing_mode="symbolic" if dynamic else "fake", pre_dispatch=False,
                       _allow_non_fake_inputs=True)(*inputs)
        _freeze(flat)
        shapes = None
        if dynamic:
            batch = torch.export.Dim("batch")
            shapes = (tuple({0: batch} for _ in inputs),)
        return torch.export.export(_Flat(flat), inputs, dynamic_shapes=shapes)


def _freeze(gm: fx.GraphModule) -> None:
    """make_fx keeps the model's parameters as parameters of the flat graph: make them plain buffers, so the
    exported module computes relevances without recording an autograd graph."""
    for name, value in list(gm._parameters.items()):
        del gm._parameters[name]
        gm.register_buffer(name, value.detach())


class _Flat(nn.Module):
    """Holds the ATen-level graph so that ``torch.export`` sees a module with plain positional inputs."""

    def __init__(self, graph: fx.GraphModule):
        super().__init__()
        self.graph_module = graph

    def forward(self, *inputs):
        return self.graph_module(*inputs)


# ---- save ------------------------------------------------------------------------------------------------------
SUFFIXES = (".dot", ".gv", ".svg", ".png", ".pdf", ".py", ".pt2")


def save(program, path: Union[str, Path], example_inputs: Optional[Sequence[torch.Tensor]] = None, *,
         target_input: bool = False, dynamic_batch: bool = True) -> Path:
    """Write ``program`` to ``path``, the format chosen by the suffix:

    - ``.dot`` / ``.gv``: DOT text (:func:`to_dot`); needs nothing.
    - ``.svg`` / ``.png`` / ``.pdf``: rendered by Graphviz's ``dot`` (an :class:`LrpfxError` says how to get it).
    - ``.py``: a readable stand-alone module (:func:`to_python`).
    - ``.pt2``: ``torch.export.save`` of :func:`to_exported`; ``torch.export.load(path).module()(x)`` then runs
      anywhere torch runs, without lrpfx or the model's class. ``example_inputs`` defaults to random inputs
      shaped like the ones the program was built for.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise LrpfxError(f"cannot save a relevance program as '{path.name}': use one of {', '.join(SUFFIXES)}")
    if suffix in (".dot", ".gv"):
        path.write_text(to_dot(program))
    elif suffix in (".svg", ".png", ".pdf"):
        render_dot(to_dot(program), path)
    elif suffix == ".py":
        path.write_text(to_python(program))
    else:
        exported = to_exported(program, example_inputs, target_input=target_input, dynamic_batch=dynamic_batch)
        torch.export.save(exported, str(path))
    return path
