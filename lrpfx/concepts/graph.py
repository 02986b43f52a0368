"""Concept graphs: which lower-layer concepts carry a higher-layer concept's relevance, for one sample.

Level by level: the relevance of every concept of the next lower layer *given* the concepts above it (a chain
condition ``{upper: [c], lower: [c']}`` at the next step), keeping the ``width`` most relevant per parent. The
lower layer is found in the relevance program's own graph — the conv/linear nodes nearest below (the latest one
in execution order where a branch offers several) — unless ``layers`` names them. Each level is one batched
relevance pass over all of its parents.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import InputError
from .relevance import _explain

Key = Tuple[str, int]  # (layer, concept)


@dataclass
class ConceptGraph:
    """``nodes``: (layer, concept) -> relevance of that concept given its path from the root; ``edges``:
    (parent, child) -> the child's conditional relevance under the parent's path."""

    root: Key
    nodes: Dict[Key, float] = field(default_factory=dict)
    edges: Dict[Tuple[Key, Key], float] = field(default_factory=dict)

    def table(self) -> List[Dict]:
        """One row per edge: parent and child layer/concept and the child's conditional relevance."""
        return [{"parent_layer": p[0], "parent_concept": p[1], "layer": c[0], "concept": c[1], "relevance": r}
                for (p, c), r in self.edges.items()]

    def to_dot(self) -> str:
        def nid(k: Key) -> str:
            return f'"{k[0]}:{k[1]}"'

        bound = max([abs(v) for v in self.nodes.values()] + [1e-30])
        lines = ["digraph concepts {", "  rankdir=TB; node [shape=box, style=filled, fontsize=10];"]
        for k, r in self.nodes.items():
            shade = abs(r) / bound
            colour = f"1.0 {shade:.2f} 1.0" if r >= 0 else f"0.66 {shade:.2f} 1.0"
            lines.append(f'  {nid(k)} [label="{k[0]}\\nconcept {k[1]}\\nR={r:.3g}", fillcolor="{colour}"];')
        for (p, c), r in self.edges.items():
            width = 0.5 + 3.0 * abs(r) / bound
            lines.append(f'  {nid(p)} -> {nid(c)} [label="{r:.3g}", penwidth={width:.2f}];')
        lines.append("}")
        return "\n".join(lines) + "\n"

    def save(self, path) -> Path:
        """Write ``.dot``, ``.csv`` (the table), or ``.svg``/``.png`` (Graphviz's ``dot`` when it is on the PATH,
        else a layered matplotlib drawing)."""
        path = Path(path)
        if path.suffix == ".dot":
            path.write_text(self.to_dot())
        elif path.suffix == ".csv":
            rows = self.table()
            header = "parent_layer,parent_concept,layer,concept,relevance\n"
            path.write_text(header + "".join(f"{r['parent_layer']},{r['parent_concept']},{r['layer']},"
                                             f"{r['concept']},{r['relevance']!r}\n" for r in rows))
        elif path.suffix in (".svg", ".png"):
            dot = shutil.which("dot")
            if dot is not None:
                subprocess.run([dot, f"-T{path.suffix[1:]}", "-o", str(path)], input=self.to_dot(), text=True,
                               check=True)
            else:  # no Graphviz: a layered drawing with matplotlib
                self._draw(path)
        else:
            raise InputError(f"save a concept graph as .dot, .csv, .svg or .png, not {path.suffix!r}")
        return path


    def _depths(self) -> Dict[Key, int]:
        depth = {self.root: 0}
        for (p, c) in self.edges:  # edges are inserted level by level
            depth.setdefault(c, depth[p] + 1)
        return depth

    def _draw(self, path: Path) -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        depth = self._depths()
        levels: Dict[int, List[Key]] = {}
        for k, d in depth.items():
            levels.setdefault(d, []).append(k)
        widest = max(len(v) for v in levels.values())
        pos = {k: ((i + 0.5) / len(keys), -d) for d, keys in levels.items() for i, k in enumerate(keys)}
        fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * widest), 1.3 * (len(levels) + 0.5)))
        bound = max([abs(v) for v in self.nodes.values()] + [1e-30])
        for (p, c), r in self.edges.items():
            ax.annotate("", xy=pos[c], xytext=pos[p], arrowprops={"arrowstyle": "->", "lw": 0.5 + 3 * abs(r) / bound,
                                                                  "color": "tab:red" if r >= 0 else "tab:blue"})
        for k, (px, py) in pos.items():
            r = self.nodes[k]
            ax.text(px, py, f"{k[0]}\n#{k[1]}  R={r:.2g}", ha="center", va="center", fontsize=7,
                    bbox={"boxstyle": "round", "fc": (1, 1 - 0.6 * abs(r) / bound, 1 - 0.6 * abs(r) / bound)
                          if r >= 0 else (1 - 0.6 * abs(r) / bound, 1 - 0.6 * abs(r) / bound, 1)})
        ax.set_xlim(0, 1)
        ax.set_ylim(-len(levels) + 0.5, 0.5)
        ax.axis("off")
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def concept_graph(explainer, x: torch.Tensor, layer: str, concept: int, *, target=None,
                  width: Sequence[int] = (3, 2), layers: Optional[Sequence[str]] = None,
                  batch_size: Optional[int] = None) -> ConceptGraph:
    """The concept graph of ``concept`` at ``layer`` for one sample ``x`` (batch of one), ``len(width)`` levels
    deep, ``width[i]`` children per node at level i (largest absolute conditional relevance first)."""
    if x.shape[0] != 1:
        raise InputError(f"a concept graph explains one sample: x must have batch size 1, got {x.shape[0]}")
    if layers is not None and len(layers) != len(width):
        raise InputError(f"layers names {len(layers)} lower layers but width has {len(width)} levels")
    root = (layer, int(concept))
    e, plan = _explain(explainer, x, [{layer: [concept]}], target, None, (layer,), batch_size, ())
    graph = ConceptGraph(root, {root: float(e.intermediate[layer][0, 0].sum())})
    frontier: List[List[Key]] = [[root]]  # paths from the root
    for level, w in enumerate(width):
        upper = frontier[0][-1][0]
        lower = layers[level] if layers is not None else _next_lower(plan, upper)
        if lower is None:
            break
        conditions = [{k[0]: [k[1]] for k in path} for path in frontier]
        e, plan = _explain(explainer, x, conditions, target, None, (lower,), batch_size, ())
        scores = plan.layout.concepts[lower].per_concept(e.intermediate[lower][0], plan.layout.shapes[lower])
        next_frontier = []
        for path, row in zip(frontier, scores):
            idx = row.abs().topk(min(w, row.numel())).indices  # the largest contributions of either sign
            for v, i in zip(row[idx].tolist(), idx.tolist()):
                child = (lower, i)
                graph.edges[(path[-1], child)] = v
                graph.nodes[child] = graph.nodes.get(child, 0.0) + v
                next_frontier.append(path + [child])
        frontier = next_frontier
        if not frontier:
            break
    return graph


def _next_lower(plan, upper: str) -> Optional[str]:
    below = plan.layout.lower.get(upper) or []
    return below[0] if below else None
