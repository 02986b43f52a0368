"""Inspecting and shipping a relevance program (lrpfx.program.save and the writers it uses): its code runs on its
own, the rule table matches the composite, the DOT graph has one relevance node per relevance step, and a .pt2
runs in a fresh process without lrpfx or the model's class."""
import importlib.util
import operator
import os
import re
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.program import dot as program_dot
from lrpfx.program.code import _import_line, program_globals
from lrpfx.program.exported import to_exported
from lrpfx.program.nodes import relevance_steps, rule_label
from lrpfx.rules import affine

from tests.helpers.models import randomize_batchnorm

torchvision = pytest.importorskip("torchvision")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = randomize_batchnorm(torchvision.models.resnet18(weights=None)).eval()
    x = torch.randn(2, 3, 32, 32)
    prog = lrpfx.export(model, x, rule="epsilon-gamma-box")
    refs = {"argmax": prog(x), "3,7": prog(x, target=TARGET)}
    return model, x, prog, refs


TARGET = torch.tensor([3, 7])


def small_cnn():
    torch.manual_seed(0)
    return randomize_batchnorm(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))).eval()


# ---- code ------------------------------------------------------------------------------------------------------
def test_code_executes_and_reproduces_relevance(resnet):
    model, x, prog, refs = resnet
    namespace = program_globals(prog)  # what fx bound: graph_module.forward.__globals__
    assert "lrpfx_rules_affine_gamma" in namespace and "lrpfx_rules_affine_gamma" in prog.code
    exec(prog.code, namespace)
    with torch.no_grad():
        out, (r,) = namespace["forward"](prog.graph_module, x, TARGET)
    ref_out, (ref,) = refs["3,7"]
    assert torch.equal(out, ref_out) and torch.equal(r, ref)


def test_saved_python_module_runs(resnet, tmp_path):
    _, x, prog, refs = resnet
    path = prog.save(tmp_path / "resnet_program.py")
    text = path.read_text()
    assert "from lrpfx.rules.affine import gamma as lrpfx_rules_affine_gamma" in text
    assert "# Rule table" in text and "ZBox(low=-3.0, high=3.0" in text
    spec = importlib.util.spec_from_file_location("resnet_program", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, (r,) = module.RelevanceProgram(prog.graph_module)(x)
    ref_out, (ref,) = refs["argmax"]
    assert torch.equal(out, ref_out) and torch.equal(r, ref)
    with torch.no_grad():
        _, (r37,) = module.forward(prog.graph_module, x, TARGET)
    assert torch.equal(r37, refs["3,7"][1][0])


def test_python_module_marks_what_cannot_be_imported():
    lines = [_import_line("local_fn", lambda t: t),
             _import_line("lrpfx_rules_affine_gamma", affine.gamma)]
    assert lines[1] == "from lrpfx.rules.affine import gamma as lrpfx_rules_affine_gamma"
    assert lines[0].startswith("local_fn = _unavailable('local_fn'")


# ---- rule table ------------------------------------------------------------------------------------------------
def test_rule_table_matches_composite(resnet):
    prog = resnet[2]
    composite = lrpfx.composites.as_composite("epsilon-gamma-box")
    rows = prog.rule_table()
    convs = [r for r in rows if r.kind == "conv"]
    assert len(convs) == 20 and convs[0].module == "conv1"
    assert convs[0].rule.startswith(composite.first.describe()) and convs[0].rule.startswith("ZBox(")
    assert convs[0].chosen_by == "first"
    for row in convs[1:]:
        assert row.rule.startswith(composite.conv.describe()) and row.rule.startswith("Gamma(gamma=0.25"), row
    linear = [r for r in rows if r.kind == "linear"]
    assert [r.module for r in linear] == ["fc"] and linear[0].rule == composite.linear.describe()
    assert linear[0].rule.startswith("Epsilon(")
    adds = [r for r in rows if r.kind == "add"]
    assert len(adds) == 8 and all(r.rule.startswith("Norm(") for r in adds)
    assert all(r.rule.startswith("folded into") for r in rows if r.kind == "batchnorm")


# ---- DOT -------------------------------------------------------------------------------------------------------
NODE = re.compile(r'^\s*"(?P<id>(?:[^"\\]|\\.)+)" \[label="(?P<label>(?:[^"\\]|\\.)*)".*class="(?P<cls>\w+)"\];$')
EDGE = re.compile(r'^\s*"(?P<a>(?:[^"\\]|\\.)+)" -> "(?P<b>(?:[^"\\]|\\.)+)"')


def parse_dot(text):
    nodes, edges = {}, []
    for line in text.splitlines():
        m = NODE.match(line)
        if m:
            nodes[m["id"]] = (m["cls"], m["label"].replace("\\n", "\n"))
        m = EDGE.match(line)
        if m:
            edges.append((m["a"], m["b"]))
    return nodes, edges


def test_dot_has_one_relevance_node_per_step(resnet):
    prog = resnet[2]
    text = prog.to_dot()
    assert text.startswith("digraph") and text.rstrip().endswith("}")
    assert "subgraph cluster_forward" in text and "subgraph cluster_relevance" in text
    nodes, edges = parse_dot(text)
    steps = relevance_steps(prog)
    graph_nodes = list(prog.graph_module.graph.nodes)
    start = [n.name for n in graph_nodes].index("r_output")
    expected = [n.name for n in graph_nodes[start:] if n.op in ("call_function", "call_module")]
    relevance = [i for i, (cls, _) in nodes.items() if cls == "relevance"]
    assert relevance == expected == [n.name for n in steps]
    forward = {i for i, (cls, _) in nodes.items() if cls == "forward"}
    assert forward == {n.name for n in graph_nodes[:start] if n.op not in ("placeholder", "get_attr")}
    # every affine step is labelled with its rule, one per conv/linear node of the rule table
    affine_labels = {n.name: nodes[n.name][1] for n in steps
                     if n.target in (affine.gamma, affine.zbox, affine.epsilon)}
    # (average pooling's Norm step is the epsilon function on a parameter-free layer)
    assert len(affine_labels) == sum(1 for r in prog.rule_table() if r.kind in ("conv", "linear", "avg_pool"))
    assert "zbox(eps=1e-06) on Conv2d" in affine_labels["r_bn1_in"]
    assert "epsilon(eps=1e-06) on Linear" in affine_labels["r_fc_in"]
    gammas = [label for name, label in affine_labels.items() if "gamma(" in label]
    assert len(gammas) == 19 and all("gamma(gamma=0.25, eps=1e-06" in g for g in gammas)
    assert "initial_relevance(start='logit')" in nodes["r_output"][1]
    assert "max_pool_wta(pool=MaxPool(dim=2, kernel_size=(3, 3)" in nodes["r_maxpool_in"][1]
    # edges follow arguments and connect declared nodes; every affine step reads a relevance and a forward value
    assert all(a in nodes and b in nodes for a, b in edges)
    for name in affine_labels:
        sources = {nodes[a][0] for a, b in edges if b == name}
        assert {"relevance", "forward"} <= sources or {"relevance", "io"} <= sources, name
    with_params = parse_dot(program_dot.to_dot(prog, params=True))[0]
    assert any(cls == "param" for cls, _ in with_params.values())


def test_rule_label_reads_the_kwargs():
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    node = graph.call_function(affine.gamma, (x, x, None, x, x),
                               {"layer": lrpfx.rules.layers.Linear(), "gamma": 0.25, "eps": 1e-6,
                                "zero_bias": False, "x_nonneg": False, "positive_only": False})
    assert rule_label(node) == "gamma(gamma=0.25, eps=1e-06) on Linear"
    pick = graph.call_function(operator.getitem, (node, 1))
    assert rule_label(pick) == "[1]"


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz's 'dot' executable is not installed "
                                                           "(apt-get install graphviz)")
def test_svg_rendering(tmp_path):
    prog = lrpfx.export(small_cnn(), torch.randn(1, 3, 16, 16), rule="epsilon-gamma-box")  # small: layout is slow
    path = prog.save(tmp_path / "prog.svg")
    text = path.read_text()
    assert "<svg" in text and "r_output" in text and "gamma(gamma=0.25" in text


def test_svg_without_graphviz_says_how_to_get_it(resnet, tmp_path, monkeypatch):
    prog = resnet[2]
    monkeypatch.setattr(program_dot.shutil, "which", lambda name: None)
    with pytest.raises(lrpfx.LrpfxError, match=r"apt-get install graphviz.*'\.dot'"):
        prog.save(tmp_path / "prog.svg")
    assert prog.save(tmp_path / "prog.dot").read_text() == prog.to_dot()
    with pytest.raises(lrpfx.LrpfxError, match="use one of"):
        prog.save(tmp_path / "prog.txt")


# ---- torch.export ----------------------------------------------------------------------------------------------
FRESH = textwrap.dedent("""
    import sys
    sys.modules["lrpfx"] = None            # importing lrpfx (or the test module with the model) now fails
    sys.modules["tests"] = sys.modules["tests.test_export"] = sys.modules["tests.helpers.models"] = None
    import torch
    ep = torch.export.load("prog.pt2")
    data = torch.load("data.pt")
    with torch.no_grad():
        out, (r,) = ep.module()(data["x"])
    assert out.shape == data["out"].shape and r.shape == data["r"].shape, (out.shape, r.shape)
    print(float((out - data["out"]).abs().max()), float((r - data["r"]).abs().max()))
    assert not any(m in ("lrpfx", "tests") or m.startswith(("lrpfx.", "tests.")) for m in sys.modules
                   if sys.modules[m] is not None)
""")


def test_pt2_with_target_input(tmp_path):
    model = small_cnn()
    x = torch.randn(2, 3, 16, 16)
    prog = lrpfx.export(model, x, rule="epsilon-plus-flat")
    target = torch.tensor([1, 4])
    exported = to_exported(prog, (x, target), target_input=True)
    for xb, tb in ((x, target), (torch.randn(3, 3, 16, 16), torch.tensor([0, 2, 4]))):  # the batch axis is free
        out, (r,) = exported.module()(xb, tb)
        ref_out, (ref,) = prog(xb, target=tb)
        torch.testing.assert_close(out, ref_out)
        torch.testing.assert_close(r, ref)
    with pytest.raises(lrpfx.InputError, match="target"):
        to_exported(prog, (x,), target_input=True)


def test_pt2_round_trip_in_fresh_process(tmp_path):
    model = small_cnn()
    prog = lrpfx.export(model, torch.randn(2, 3, 16, 16), rule="epsilon-gamma-box")
    prog.save(tmp_path / "prog.pt2", dynamic_batch=False)   # example inputs: random, shaped like the build's
    x = torch.randn(2, 3, 16, 16)
    out, (r,) = prog(x)
    torch.save({"x": x, "out": out, "r": r}, tmp_path / "data.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", FRESH], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    d_out, d_r = (float(v) for v in done.stdout.split())
    assert d_out <= 1e-5 and d_r <= 1e-6 * max(1.0, float(r.abs().max()))


def test_the_relevance_half_is_found_by_what_it_calls_not_by_a_name():
    from lrpfx.errors import LrpfxError
    from lrpfx.program.nodes import split_nodes

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    program = lrpfx.export(model, torch.randn(2, 4))
    forward, relevance = split_nodes(program)
    start = relevance[0]
    start.name = "renamed_start"  # a user's pass may rename nodes
    assert split_nodes(program) == (forward, relevance)
    plain = lrpfx.RelevanceProgram(torch.fx.symbolic_trace(model), program.rows, program.composite)
    with pytest.raises(LrpfxError, match="not a relevance program"):
        split_nodes(plain)
