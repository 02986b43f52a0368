"""``lrpfx explain-dataset`` and ``lrpfx evaluate``, in process on a tiny model factory and an image folder:
results, resuming, refusing another run's folder, the rule table, --help examples and one-line errors."""
import json
import sys
import textwrap

import numpy as np
import pytest
import torch

import lrpfx
from lrpfx import cli

pytestmark = pytest.mark.usefixtures("one_thread")

FACTORY = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset


    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(16, 3))


    def data():
        g = torch.Generator().manual_seed(0)
        return TensorDataset(torch.randn(10, 3, 8, 8, generator=g), torch.randint(0, 3, (10,), generator=g))


    def not_data():
        return 42
""")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli_dataset")
    (folder / "tinydata.py").write_text(FACTORY)
    yield folder
    sys.modules.pop("tinydata", None)   # the commands load the factory file as module 'tinydata'


def run(capsys, *args):
    rc = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_explain_dataset_resume_and_refusal(workdir, tmp_path, capsys):
    spec = workdir / "tinydata.py"
    args = ["explain-dataset", "--model", f"{spec}:model", "--dataset", f"{spec}:data", "--out", tmp_path / "out",
            "--batch-size", "4", "--shard-size", "4", "--store", "float32", "--target", "label", "--no-progress"]
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    assert "explained  10 samples: 3 shards written, 0 kept (verified), 0 redone" in out
    assert "samples/s" in out and "% of the explain time" in out
    assert "wrote      " in out and "10 samples in 3 shards, float32, manifest.json" in out
    view = lrpfx.load_explanations(tmp_path / "out")
    import tinydata  # noqa: E402  (loaded by the command from the file)

    x, y = tinydata.data().tensors
    assert torch.equal(view[:].target, y) and torch.equal(view[:].label, y)
    expected = lrpfx.explain(tinydata.model(), x[4:8], "epsilon-plus-flat", target=y[4:8])
    assert torch.allclose(view[4:8].relevance, expected, atol=1e-6)

    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "0 samples: 0 shards written, 3 kept (verified)" in out
    rc, out, err = run(capsys, *args, "--rule", "epsilon")
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("lrpfx: error: ")
    assert "another run: a different rule ('auto', this is 'epsilon')" in err and "overwrite" in err
    rc, out, err = run(capsys, *args, "--rule", "epsilon", "--overwrite")
    assert rc == 0 and "3 shards written" in out
    assert lrpfx.load_explanations(tmp_path / "out").manifest["run"]["rule"]["label"] == "epsilon"
    rc, out, err = run(capsys, "explain-dataset", "--model", f"{spec}:model", "--dataset", f"{spec}:data",
                       "--limit", "6", "--num-shards", "2", "--no-progress", "--out", tmp_path / "limited")
    assert rc == 0 and "explained  6 samples: 2 shards written" in out


def test_explain_dataset_image_folder(workdir, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    for label, name in enumerate(["cats", "dogs"]):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png")
    rc, out, err = run(capsys, "explain-dataset", "--model", f"{workdir / 'tinydata.py'}:model", "--images",
                       tmp_path / "images", "--size", "16", "--target", "label", "--batch-size", "3", "--out",
                       tmp_path / "out", "--no-progress")
    assert rc == 0, err
    view = lrpfx.load_explanations(tmp_path / "out")
    assert view[:].label.tolist() == [0, 0, 1, 1] and view[:].relevance.shape == (4, 3, 16, 16)
    assert view[:].relevance.dtype == torch.float16


def test_evaluate_prints_rule_table(workdir, tmp_path, capsys):
    spec = workdir / "tinydata.py"
    rc, out, err = run(capsys, "evaluate", "--model", f"{spec}:model", "--dataset", f"{spec}:data", "--rules",
                       "epsilon,alphabeta(2,1),gradient", "--patch-size", "2", "--steps", "4", "--baseline", "mean",
                       "--randomization-samples", "4", "--json", tmp_path / "table.json")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("data ") and "10 samples, target argmax, patch 2, baseline mean" in lines[1]
    assert lines[2].split()[:4] == ["rule", "MoRF", "AUC", "(lower"]
    assert [line.split()[0] for line in lines[3:6]] == ["epsilon", "alphabeta(2,1)", "gradient"]
    rows = json.loads((tmp_path / "table.json").read_text())
    assert [r["rule"] for r in rows] == ["epsilon", "alphabeta(2,1)", "gradient"]
    assert all(set(r) >= {"morf_auc", "lerf_auc", "auc_difference", "conservation", "randomized_all"} for r in rows)
    rc, out, _ = run(capsys, "evaluate", "--model", f"{spec}:model", "--dataset", f"{spec}:data", "--rules",
                     "epsilon", "--limit", "3", "--randomization-samples", "0", "--markdown")
    assert rc == 0 and "| epsilon |" in out and "3 samples" in out


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "{spec}:not_data"], "the factory returned int, not a data set"),
    (["--dataset", "{spec}:missing"], "has no attribute 'missing'"),
    (["--dataset", "nosuchmodule_xyz:data"], "cannot import 'nosuchmodule_xyz'"),
    (["--images", "/no/such/folder"], "image folder not found"),
    (["--dataset", "{spec}:data", "--target", "cat"], "--target takes argmax, label or a class index"),
    (["--dataset", "{spec}:data", "--rule", "nonsense"], "unknown rule 'nonsense'"),
])
def test_explain_dataset_errors_are_one_line(workdir, tmp_path, capsys, extra, message):
    spec = workdir / "tinydata.py"
    rc, out, err = run(capsys, "explain-dataset", "--model", f"{spec}:model", "--out", tmp_path / "o",
                       "--no-progress", *[e.format(spec=spec) for e in extra])
    assert rc == 1 and err.count("\n") == 1 and err.startswith("lrpfx: error: ") and message in err, err


@pytest.mark.parametrize("extra,message", [
    (["--baseline", "blurry"], "--baseline takes a number, zero, mean or uniform"),
    (["--rules", " , "], "--rules is empty"),
    (["--patch-size", "0"], "--patch-size must be >= 1"),
])
def test_evaluate_errors_are_one_line(workdir, capsys, extra, message):
    spec = workdir / "tinydata.py"
    rc, out, err = run(capsys, "evaluate", "--model", f"{spec}:model", "--dataset", f"{spec}:data", *extra)
    assert rc == 1 and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize("command", ["explain-dataset", "evaluate"])
def test_help_shows_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "examples:" in text and f"lrpfx {command} --model" in text
    if command == "explain-dataset":
        assert "torchrun --nproc_per_node=2 -m lrpfx.cli explain-dataset" in text
