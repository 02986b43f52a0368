"""The lrpfx command line: explain and graph end to end in a subprocess on a tiny model factory, torchvision
models and bench in process, --help with examples everywhere, and one-line errors with a non-zero exit."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lrpfx import cli
from lrpfx.cli import bench as cli_bench

Image = pytest.importorskip("PIL.Image")


pytestmark = pytest.mark.usefixtures("one_thread")

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn


    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(6, 10))
""")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder with a model factory module, its weights, a 64x64 image and an input tensor."""
    folder = tmp_path_factory.mktemp("cli")
    (folder / "tinynet.py").write_text(FACTORY)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)).save(folder / "cat.png")
    torch.save(torch.randn(2, 3, 16, 16), folder / "x.pt")
    sys.path.insert(0, str(folder))
    try:
        import tinynet

        torch.save(tinynet.build().state_dict(), folder / "w.pt")
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("tinynet", None)
    return folder


END_TO_END = {
    "explain": ["explain", "--model", "tinynet:build", "--weights", "w.pt", "--image", "cat.png", "--size", "32",
                "--rule", "epsilon-gamma-box", "--target", "3", "--out", "heat.png", "--save-relevance", "r.pt"],
    "graph": ["graph", "--model", "tinynet:build", "--shape", "1,3,16,16", "--rule", "epsilon-gamma-box",
              "--table", "--out", "prog.dot", "--out", "prog.py"],
}


@pytest.fixture(scope="module")
def end_to_end(workdir):
    """``python -m lrpfx.cli explain ...`` and ``graph ...`` in subprocesses, started together (most of their
    time is importing torch); the tests wait for their results."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = {name: subprocess.Popen([sys.executable, "-m", "lrpfx.cli", *args], cwd=workdir, text=True, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, args in END_TO_END.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return results


# ---- end to end, in a subprocess ------------------------------------------------------------------------------
def test_explain_end_to_end(workdir, end_to_end):
    done = end_to_end["explain"]
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "top-5" in out and out.count("p=") == 5
    assert "target     3: logit" in out and "relevance sum" in out
    assert "wrote      heat.png (32x32 overlay)" in out
    with Image.open(workdir / "heat.png") as im:
        assert np.asarray(im).shape == (32, 32, 3)
    assert torch.load(workdir / "r.pt").shape == (1, 3, 32, 32)


def test_graph_end_to_end(workdir, end_to_end):
    done = end_to_end["graph"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("relevance program for tinynet:build, rule epsilon-gamma-box")
    assert "relevance steps" in lines[0]
    assert lines[1].split()[:4] == ["node", "module", "op", "kind"]
    table = "\n".join(lines[1:])
    assert "ZBox(low=-3.0, high=3.0" in table and "Gamma(gamma=0.25" in table and "Epsilon(eps=1e-06" in table
    assert [l for l in lines if l.startswith("wrote")] == ["wrote prog.dot", "wrote prog.py"]
    assert 'class="relevance"' in (workdir / "prog.dot").read_text()
    compile((workdir / "prog.py").read_text(), "prog.py", "exec")


def test_graph_pt2_with_target_input(workdir, monkeypatch, capsys):
    # in process: torch.export is slow to import, and the fresh-process round trip is in test_export.py
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    try:
        rc = cli.main(["graph", "--model", "tinynet:build", "--input", "x.pt", "--rule", "epsilon",
                       "--out", "prog.pt2", "--target-input"])
    finally:
        sys.modules.pop("tinynet", None)
    assert rc == 0 and "wrote prog.pt2" in capsys.readouterr().out
    exported = torch.export.load(str(workdir / "prog.pt2"))
    out, (r,) = exported.module()(torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2]))  # the batch axis is free
    assert out.shape == (3, 10) and r.shape == (3, 3, 16, 16)


# ---- in process ------------------------------------------------------------------------------------------------
def test_explain_torchvision_model_and_tensor_input(workdir, capsys, tmp_path):
    pytest.importorskip("torchvision")
    rc = cli.main(["explain", "--model", "torchvision:resnet18", "--image", str(workdir / "cat.png"), "--size",
                   "64", "--rule", "epsilon-gamma-box", "--target", "281", "--out", str(tmp_path / "r18.png")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "torchvision:resnet18 (random weights)" in out and "-> (1, 3, 64, 64)" in out
    assert "281 (tabby): logit" in out          # category names from the weights' meta
    with Image.open(tmp_path / "r18.png") as im:
        assert np.asarray(im).shape == (64, 64, 3)
    rc = cli.main(["explain", "--model", f"{workdir / 'tinynet.py'}:build", "--input", str(workdir / "x.pt"),
                   "--rule", "epsilon", "--out", str(tmp_path / "maps.png"), "--cmap", "coldnhot"])
    out = capsys.readouterr().out
    assert rc == 0 and "top-5[1]" in out and "target[1]" in out and "heatmap" in out


@pytest.mark.parametrize("command", [None, "demo", "explain", "graph", "bench"])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(([command] if command else []) + ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "example" in text and "lrpfx" in text
    if command in ("explain", "graph"):
        assert f"lrpfx {command} --model torchvision:resnet" in text


def test_demo_options_unchanged():
    demo = cli.build_parser().parse_args(["demo", "--out", "d.png", "--epochs", "3"])
    assert (demo.out, demo.epochs, demo.debug) == ("d.png", 3, False)
    assert cli.build_parser().parse_args(["demo"]).out == "lrpfx_digits.png"


@pytest.mark.parametrize("args, message", [
    (["explain", "--model", "resnet18", "--input", "x.pt"], "--model takes 'torchvision:NAME'"),
    (["explain", "--model", "no_such_module_xyz:build", "--input", "x.pt"], "cannot import 'no_such_module_xyz'"),
    (["explain", "--model", "tinynet:missing", "--input", "x.pt"], "has no attribute 'missing'"),
    (["explain", "--model", "tinynet:build", "--input", "missing.pt"], "input file not found: missing.pt"),
    (["explain", "--model", "tinynet:build", "--image", "missing.jpg"], "image file not found: missing.jpg"),
    (["explain", "--model", "tinynet:build", "--input", "x.pt", "--weights", "nope.pt"], "weights file not found"),
    (["explain", "--model", "tinynet:build", "--input", "x.pt", "--rule", "bogus"], "unknown rule 'bogus'"),
    (["graph", "--model", "tinynet:build", "--rule", "gamma(", "--table"], "rule"),
    (["explain", "--model", "tinynet:build", "--input", "x.pt", "--target", "99"], "target class out of range"),
    (["graph", "--model", "tinynet:build", "--out", "prog.txt"], "use one of .dot"),
    (["explain", "--model", "tinynet:build"], "one of the arguments --image --input is required"),
    # an unwritable output is refused before any work is done
    (["explain", "--model", "tinynet:build", "--input", "x.pt", "--out", "/nonexistent/dir/h.png"],
     "the folder '/nonexistent/dir' does not exist"),
    (["explain", "--model", "tinynet:build", "--input", "x.pt", "--save-relevance", "/nonexistent/r.pt"],
     "--save-relevance"),
    (["graph", "--model", "tinynet:build", "--out", "/nonexistent/dir/prog.dot"], "does not exist"),
    (["demo", "--out", "/nonexistent/dir/d.png"], "the folder '/nonexistent/dir' does not exist"),
])
def test_errors_are_one_line(args, message, workdir, capsys, monkeypatch):
    monkeypatch.chdir(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    try:
        rc = cli.main(args)
    except SystemExit as exc:  # argparse usage errors
        rc = exc.code
    finally:
        sys.modules.pop("tinynet", None)
    captured = capsys.readouterr()
    assert rc != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrpfx: error: "), captured.err
    assert message in lines[0]
    assert "Traceback" not in captured.err and captured.out == ""


def test_debug_shows_the_traceback(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(cli.CliError):
        cli.main(["explain", "--model", "tinynet:build", "--input", "missing.pt", "--debug"])


def test_bench_passes_arguments_through(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(cli_bench.subprocess, "call",
                        lambda cmd, env: calls.append((cmd, env["PYTHONPATH"].split(os.pathsep)[0])) or 0)
    assert cli.main(["bench", "--models", "resnet18", "--rounds", "1"]) == 0
    assert cli.main(["bench", "--", "--help"]) == 0
    script = cli.bench_script()
    assert script is not None and script.name == "report.py"
    root = str(script.parents[1])
    assert calls == [([sys.executable, "-m", "bench.report", "--models", "resnet18", "--rounds", "1"], root),
                     ([sys.executable, "-m", "bench.report", "--help"], root)]
    monkeypatch.setattr(cli_bench, "bench_script", lambda: None)
    assert cli.main(["bench"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrpfx: error: bench/report.py not found")


def test_bench_runs_the_report_of_the_checkout(tmp_path):
    """For real: report.py imports its siblings as the package ``bench``, from any working folder."""
    done = subprocess.run([sys.executable, "-m", "lrpfx.cli", "bench", "--", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "usage" in done.stdout.lower()


def test_random_weights_are_the_same_on_every_run():
    """Without --weights the model's random weights are seeded: the same command prints the same numbers."""
    first = cli.load_model("torchvision:resnet18").model.state_dict()
    torch.manual_seed(1234)  # whatever ran before must not matter
    second = cli.load_model("torchvision:resnet18").model.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
