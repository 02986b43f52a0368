"""compile=True never slower than eager (lrpfx.program.faster): the faster of the two kinds is kept, results unchanged.

The timing runs on a fake clock that only the fakes advance, so which kind is "slower" is decided by the test,
not by the machine's load.
"""
import logging

import torch
from torch import nn

import lrpfx
from lrpfx.program.faster import FasterOf


class FakeClock:
    """A clock that stands still unless a fake program advances it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def costing(self, fn, seconds):
        """``fn``, taking ``seconds`` on this clock per call."""
        def run(*args):
            self.now += seconds
            return fn(*args)
        return run


def test_keeps_the_faster_and_every_call_returns_the_same():
    double = lambda t: t * 2  # noqa: E731
    x = torch.ones(3)
    for slow_kind, expected in (("eager", "compiled"), ("compiled", "eager")):
        clock = FakeClock()
        slow, fast = clock.costing(double, 2.0), clock.costing(double, 1.0)
        eager, compiled = (slow, fast) if slow_kind == "eager" else (fast, slow)
        run = FasterOf(eager, compiled, trials=2, clock=clock)
        outputs = [run(x) for _ in range(6)]
        assert run.choice == expected
        assert run.times[slow_kind] == [2.0, 2.0] and run.times[expected] == [1.0, 1.0]  # exact: whole seconds
        assert all(torch.equal(o, x * 2) for o in outputs)


def test_after_the_choice_only_the_faster_runs():
    clock, calls = FakeClock(), {"eager": 0, "compiled": 0}

    def counted(kind, seconds):
        def run(t):
            calls[kind] += 1
            return t
        return clock.costing(run, seconds)

    run = FasterOf(counted("eager", 0.01), counted("compiled", 0.03), trials=2, clock=clock)
    for _ in range(5):  # one untimed compiling call, then eager, compiled, eager, compiled
        run(torch.ones(2))
    assert run.choice == "eager" and calls == {"eager": 2, "compiled": 3}
    for _ in range(4):
        run(torch.ones(2))
    assert calls == {"eager": 6, "compiled": 3}


def test_calls_of_other_shapes_are_not_timed():
    run = FasterOf(lambda t: t, lambda t: t, trials=1, clock=FakeClock())
    run(torch.ones(2))  # first call: compiles, untimed
    run(torch.ones(5))  # another shape: would recompile, untimed
    assert run.times == {"eager": [], "compiled": []} and run.choice is None
    run(torch.ones(2)), run(torch.ones(2))
    assert run.choice is not None


def test_explainer_reports_and_logs_its_choice(monkeypatch, caplog):
    """torch.compile replaced by a copy of the program that costs 0.05 s on the fake clock (eager costs nothing
    there): the explainer must notice and run eager."""
    clock = FakeClock()
    monkeypatch.setattr(FasterOf, "clock", staticmethod(clock))
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: clock.costing(fn, 0.05))
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
