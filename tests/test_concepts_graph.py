"""Concept graphs: children are the lower concepts' conditional relevance given the parent's path (checked
against explicit chain conditions), found through the program's graph (branches included), and exported."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.concepts import concept_graph
from lrpfx.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 36, 3)).double().eval()


def test_concept_graph_levels_and_export(tmp_path):
    model = cnn()
    x = torch.randn(1, 1, 6, 6, dtype=torch.float64)
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    g = concept_graph(ex, x, "4", 2, target=1, width=(3, 2))
    layers = {k[0] for k in g.nodes}
    assert layers == {"4", "2", "0"}  # the conv nodes below, found in the program's graph
    assert len([e for e in g.edges if e[0] == ("4", 2)]) == 3 and len(g.edges) == 3 + 3 * 2
    # each child's value is its conditional relevance under the chain from the root
    paths = []
    for (parent, child), r in g.edges.items():
        path = {parent[0]: [parent[1]], child[0]: [child[1]]}
        if parent != g.root:
            path[g.root[0]] = [g.root[1]]
        paths.append(path)
    e = ex(x, target=1, conditions=paths, intermediate=["2", "0"])  # all edges in one pass
    for k, ((parent, child), r) in enumerate(g.edges.items()):
        assert r == pytest.approx(float(e.intermediate[child[0]][0, k, child[1]].sum()), rel=1e-9, abs=1e-15)
    # the children of a node are its largest contributions: no unselected concept is larger in magnitude
    e = ex(x, target=1, conditions=[{"4": [2]}], intermediate=["2"])
    all_children = e.intermediate["2"][0, 0].flatten(1).sum(1).abs()
    chosen = [c[1] for (p, c) in g.edges if p == g.root]
    assert all_children[chosen].min() >= all_children[[i for i in range(8) if i not in chosen]].max()
    rows = g.table()
    assert rows[0]["parent_layer"] == "4" and {"layer", "concept", "relevance"} <= set(rows[0])
    for suffix in (".dot", ".csv", ".svg"):
        path = g.save(tmp_path / f"graph{suffix}")
        assert path.stat().st_size > 100
    assert "digraph" in (tmp_path / "graph.dot").read_text()
    with pytest.raises(InputError, match="batch size 1"):
        concept_graph(ex, torch.cat([x, x]), "4", 2)
    with pytest.raises(InputError, match="save a concept graph"):
        g.save(tmp_path / "graph.txt")
