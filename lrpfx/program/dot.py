"""A relevance program as a picture: Graphviz DOT text (:func:`to_dot`) and its rendering (:func:`render_dot`).

Forward nodes and relevance nodes are drawn apart (two clusters, two colours, ``class="forward"`` /
``class="relevance"`` on every node statement) and every relevance step is labelled with its rule, e.g.
``gamma(gamma=0.25, eps=1e-06)`` (:func:`lrpfx.program.nodes.rule_label`).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Dict, Optional, Union

import torch.fx as fx
from torch import nn

from ..errors import LrpfxError
from .nodes import function_name, rule_label, split_nodes

_FORWARD_STYLE = 'shape=box, style="rounded,filled", fillcolor="#dbe9f6", color="#4a7ab5"'
_RELEVANCE_STYLE = 'shape=box, style="filled", fillcolor="#fde3c8", color="#c0504d"'
_IO_STYLE = 'shape=oval, style="filled", fillcolor="#e8e8e8", color="#555555"'
_PARAM_STYLE = 'shape=note, style="filled", fillcolor="#f4f4f4", color="#999999", fontsize=9'


def _forward_label(node: fx.Node, root: nn.Module, shapes: Dict[str, tuple]) -> str:
    if node.op == "call_module":
        what = type(root.get_submodule(node.target)).__name__
    elif node.op == "call_function":
        what = function_name(node.target)
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

    for n in gm.graph.nodes:
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
    output = next(n for n in gm.graph.nodes if n.op == "output")
    lines.append(node_stmt(output, "output\n(output, relevances)", _IO_STYLE, "io", "  "))
    for n in gm.graph.nodes:
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
