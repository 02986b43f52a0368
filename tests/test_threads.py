"""Built programs run from several threads at once; only tracing is exclusive (lrpfx.locks)."""
from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import locks

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 4 * 4, 5))


def run_in_threads(fn, n: int):
    errors, results = [], [None] * n

    def body(i):
        try:
            results[i] = fn(i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    return results


def test_concurrent_runs_give_the_single_thread_answer_and_restore_training_flags():
    model = small_cnn().train()  # a model in training mode: each run switches it to eval and back
    x = torch.randn(3, 3, 8, 8)
    ex = lrpfx.Explainer(model, "epsilon-gamma-box")
    expected = ex(x).relevance
    results = run_in_threads(lambda i: [ex(x).relevance for _ in range(5)], 4)
    assert all(torch.equal(r, expected) for rs in results for r in rs)
    assert all(m.training for m in model.modules())


def test_runs_and_builds_of_other_programs_interleave_safely():
    """One thread builds new programs (tracing patches nn.Module.__call__) while others run a built one."""
    model = small_cnn().eval()
    x = torch.randn(2, 3, 8, 8)
    ex = lrpfx.Explainer(model, "epsilon")
    expected = ex(x).relevance

    def job(i):
        if i == 0:
            return [lrpfx.Explainer(small_cnn(), "zero")(x).relevance.shape for _ in range(3)]
        return [torch.equal(ex(x).relevance, expected) for _ in range(6)]

    results = run_in_threads(job, 3)
    assert all(all(flags) for flags in results[1:])


def test_tracing_is_exclusive_and_reentrant():
    order = []
    entered = threading.Event()

    def runner():
        with locks.running():
            entered.set()
            order.append("run start")
            threading.Event().wait(0.2)
            order.append("run end")

    t = threading.Thread(target=runner)
    t.start()
    entered.wait()
    with locks.tracing():
        with locks.tracing():  # the tracing thread may nest and may run programs itself
            with locks.running():
                order.append("trace")
    t.join()
    assert order == ["run start", "run end", "trace"]


class Gate(nn.Module):
    """Holds the run of the thread named "held" until released (kept whole as a leaf, Pass rule)."""

    def __init__(self):
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def forward(self, x):
        if threading.current_thread().name == "held":
            self.entered.set()
            self.release.wait(60)
        return x


def test_a_call_of_a_built_program_does_not_wait_for_another_threads_run():
    gate = Gate()
    model = nn.Sequential(nn.Linear(4, 6), gate, nn.Linear(6, 3))
    explainer = lrpfx.Explainer(model, lrpfx.Composite(by_type={Gate: "pass"}), leaf_modules=[Gate])
    x = torch.randn(2, 4)
    expected = explainer(x, target=1).relevance  # built here, before the threads
    held = threading.Thread(target=lambda: explainer(x, target=1), name="held")
    held.start()
    assert gate.entered.wait(30)
    done = []
    other = threading.Thread(target=lambda: done.append(explainer(x, target=1).relevance))
    other.start()
    other.join(30)  # before: the cache lookup waited for the held run to end, so this never finished
    finished = not other.is_alive()
    gate.release.set()
    held.join(30)
    other.join(30)
    assert finished, "a run of a built program waited for another thread's run"
    torch.testing.assert_close(done[0], expected)
