"""Checkpointed relevance programs: which nodes form the blocks (``Explainer(..., checkpoint=...)``).

A checkpointed program's forward keeps only the values that leave a block (its boundaries) alive; the relevance
pass, block by block from the top, runs the block's forward once more from those boundaries and then its
relevance steps (:meth:`lrpfx.program.builder.ProgramBuilder.enter_block`). Recomputation runs the same ops on
the same values, so the relevance is the plain program's, and no more than one block's activations are alive.

Blocks are modules: ``checkpoint=True`` takes the items of the model's longest numbered container (a
transformer's decoder layers, ``model.layers.0``, ``model.layers.1`` ...); a glob (``"model.layers.*"``) or a
list of globs names them. A node belongs to the outermost block in its module stack.
"""
from __future__ import annotations

import fnmatch
from collections import Counter
from typing import Dict, List, Sequence, Union

import torch.fx as fx

from .. import meta_keys
from ..errors import InputError

Checkpoint = Union[bool, str, Sequence[str], None]


def module_paths(gm: fx.GraphModule, n: fx.Node) -> List[str]:
    """The paths of the modules ``n`` was recorded in, outermost first, relative to the user's model."""
    root = getattr(gm, "meta", {}).get(meta_keys.MODULE_ROOT)
    paths = []
    for entry in (n.meta.get("nn_module_stack") or {}).values():
        path = entry[0] if isinstance(entry, tuple) else str(entry)
        if root is not None:
            if not path.startswith(root + "."):
                continue
            path = path[len(root) + 1:]
        paths.append(path)
    return paths


def blocks_of(gm: fx.GraphModule, checkpoint: Checkpoint) -> Dict[fx.Node, str]:
    """Each node inside a block, with the block's module path; nodes outside every block are left out."""
    stacks = {n: module_paths(gm, n) for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")}
    known = sorted({p for paths in stacks.values() for p in paths})
    chosen = _numbered_items(known) if checkpoint is True else _matching(known, checkpoint)
    blocks: Dict[fx.Node, str] = {}
    for n, paths in stacks.items():
        block = next((p for p in paths if p in chosen), None)
        if block is None and not paths:  # a node a rewrite added (a split attention step): its inputs' block
            around = {blocks[a] for a in n.all_input_nodes if a in blocks}
            block = around.pop() if len(around) == 1 else None
        if block is not None:
            blocks[n] = block
    if not blocks:
        raise InputError(f"checkpoint={checkpoint!r} names no module that runs in the model's graph; give the "
                         f"blocks as a glob of module paths, e.g. checkpoint='{_example(known)}'")
    return blocks


def _matching(known: List[str], checkpoint: Checkpoint) -> set:
    if isinstance(checkpoint, str):
        checkpoint = (checkpoint,)
    if not isinstance(checkpoint, (list, tuple)) or not all(isinstance(g, str) for g in checkpoint):
        raise InputError(f"checkpoint must be True, a glob of module paths or a list of globs, got {checkpoint!r}")
    chosen = {p for p in known if any(fnmatch.fnmatchcase(p, g) for g in checkpoint)}
    if not chosen:
        raise InputError(f"checkpoint={checkpoint!r} matches no module that runs in the model's graph; the modules "
                         f"are named like {', '.join(known[:4])}, ...; e.g. checkpoint='{_example(known)}'")
    return chosen


def _numbered_items(known: List[str]) -> set:
    """The items of the container with the most numbered children (``layers.0``, ``layers.1`` ...)."""
    parents = Counter(p.rpartition(".")[0] for p in known if p.rpartition(".")[2].isdigit())
    parents = {parent: count for parent, count in parents.items() if count > 1}
    if not parents:
        raise InputError("checkpoint=True found no numbered layers (an nn.ModuleList or nn.Sequential of blocks) "
                         "in the model: name the blocks with a glob of module paths, e.g. checkpoint='blocks.*'")
    parent = max(parents, key=lambda q: (parents[q], -len(q)))
    prefix = parent + "." if parent else ""
    return {p for p in known if p.startswith(prefix) and p[len(prefix):].isdigit()}


def _example(known: List[str]) -> str:
    numbered = [p for p in known if p.rpartition(".")[2].isdigit()]
    return numbered[0].rpartition(".")[0] + ".*" if numbered else "layers.*"
