"""compile=True never slower than eager (lrpfx.program.faster): the faster of the two kinds is kept, results unchanged."""
import logging
import time

import torch
from torch import nn

import lrpfx
from lrpfx.program.faster import FasterOf


def _slowed(fn, seconds):
    def slow(*args):
        time.sleep(seconds)
        return fn(*args)
    return slow


def test_keeps_the_faster_and_every_call_returns_the_same():
    double = lambda t: t * 2  # noqa: E731
    x = torch.ones(3)
    for eager, compiled, expected in ((_slowed(double, 0.02), double, "compiled"),
                                      (double, _slowed(double, 0.02), "eager")):
        run = FasterOf(eager, compiled, trials=2)
        outputs = [run(x) for _ in range(6)]
        assert run.choice == expected
        assert len(run.times["eager"]) == len(run.times["compiled"]) == 2
        assert all(torch.equal(o, x * 2) for o in outputs)


def test_calls_of_other_shapes_are_not_timed():
    run = FasterOf(lambda t: t, lambda t: t, trials=1)
    run(torch.ones(2))  # first call: compiles, untimed
    run(torch.ones(5))  # another shape: would recompile, untimed
    assert run.times == {"eager": [], "compiled": []} and run.choice is None
    run(torch.ones(2)), run(torch.ones(2))
    assert run.choice is not None


def test_explainer_reports_and_logs_its_choice(monkeypatch, caplog):
    """torch.compile replaced by a slowed copy of the program: the explainer must notice and run eager."""
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: _slowed(fn, 0.05))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    x = torch.randn(2, 4)
    explainer = lrpfx.Explainer(model, "epsilon", compile=True)
    expected = lrpfx.Explainer(model, "epsilon")(x).relevance
    with caplog.at_level(logging.INFO, logger="lrpfx"):
        results = [explainer(x).relevance for _ in range(5)]
    assert list(explainer.compiled_choice.values()) == ["eager"]
    assert any("runs eager" in r.getMessage() for r in caplog.records)
    assert all(torch.equal(r, expected) for r in results)
    assert lrpfx.Explainer(model, "epsilon").compiled_choice == {}
