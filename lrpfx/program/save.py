"""Inspect and ship a relevance program: write it as DOT, a picture, a readable Python module or a ``torch.export``
archive, the format chosen by the file suffix (:func:`save`).

Everything here takes a :class:`lrpfx.RelevanceProgram` (``lrpfx.export(model, x, rule)``); the writers live in
their own modules and are importable from here too:

- :func:`to_dot` (:mod:`.dot`) — DOT text of the program's graph, forward and relevance nodes drawn apart, every
  relevance step labelled with its rule; :func:`render_dot` renders it with Graphviz.
- :func:`to_python` (:mod:`.code`) — the program's ``forward`` as a stand-alone module.
- :func:`to_exported` (:mod:`.exported`) — a ``torch.export.ExportedProgram`` with no lrpfx (nor model) code.
- :func:`split_nodes`, :func:`relevance_steps`, :func:`rule_label` (:mod:`.nodes`) — which node is which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch

from ..errors import LrpfxError
from .code import program_globals, to_python
from .dot import render_dot, to_dot
from .exported import example_inputs_for, to_exported
from .nodes import relevance_steps, rule_label, split_nodes

__all__ = ["SUFFIXES", "example_inputs_for", "program_globals", "relevance_steps", "render_dot",
           "rule_label", "save", "split_nodes", "to_dot", "to_exported", "to_python"]

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
