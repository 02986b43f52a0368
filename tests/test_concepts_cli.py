"""``lrpfx concepts``: the digits example end to end (one training epoch, a small atlas)."""
from __future__ import annotations

import json

import pytest

from lrpfx.cli import main

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def test_concepts_command_writes_atlas_and_graph(tmp_path, capsys):
    out = tmp_path / "concepts"
    assert main(["concepts", "--out-dir", str(out), "--epochs", "1", "--concepts", "2", "--top-k", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["concepts"]) == 2 and summary["graph_root"][0] == "6"
    for name in ("atlas.png", "graph.svg", "graph.dot", "graph.csv"):
        assert (out / name).stat().st_size > 100, name
    rows = (out / "graph.csv").read_text().splitlines()
    assert rows[0].startswith("parent_layer") and len(rows) == 1 + 3 + 3 * 2
    assert "concept graph of test digit 0" in capsys.readouterr().out
    assert main(["concepts", "--out-dir", str(out), "--layer", "nope", "--epochs", "1"]) == 1
    assert "unknown node 'nope'" in capsys.readouterr().err
