"""The digits demo (the README's first command) trains to >= 95%, draws the figure, and its explanations beat
random deletion in pixel flipping; the metric itself is checked on a model whose ideal ordering is known."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from lrpfx import demo
from lrpfx.eval import flipping_curve, pixel_flipping


@pytest.mark.slow
def test_demo_trains_draws_and_beats_random(tmp_path, capsys):
    out = tmp_path / "digits.png"
    results = demo.run(out=str(out), epochs=15)
    assert results["accuracy"] >= 0.95
    for label in demo.FLIPPING:
        assert results[label] > 0, label
    from PIL import Image

    with Image.open(out) as img:
        assert img.size[0] > 500 and img.size[1] > 500
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and str(out) in printed


def test_flipping_curve_on_a_linear_model_with_known_ordering():
    model = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
    x = torch.ones(1, 1, 4)
    flat = nn.Sequential(nn.Flatten(), model)
    curve = flipping_curve(flat, x, torch.tensor([[4.0, 3.0, 2.0, 1.0]]), torch.tensor([0]), steps=4)
    torch.testing.assert_close(curve, torch.tensor([[10.0, 6.0, 3.0, 1.0, 0.0]]))
    worst = flipping_curve(flat, x, torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0]), steps=4)
    torch.testing.assert_close(worst, torch.tensor([[10.0, 9.0, 7.0, 4.0, 0.0]]))
    result = pixel_flipping(flat, x, torch.tensor([[[4.0, 3.0, 2.0, 1.0]]]), torch.tensor([0]), steps=4)
    assert result["area"] > 0


def test_demo_command_help():
    done = subprocess.run([sys.executable, "-m", "lrpfx.cli", "demo", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "digits" in done.stdout


@pytest.mark.slow
def test_demo_is_reproducible(tmp_path):
    """The same command gives the same model, numbers and figure: everything is seeded before the model is built."""
    torch.manual_seed(1)
    first = demo.run(out=str(tmp_path / "a.png"), epochs=1)
    torch.manual_seed(2)
    second = demo.run(out=str(tmp_path / "b.png"), epochs=1)
    assert first == second
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
