"""``compile=True`` never slower than eager: a built program runs compiled or eager, whichever is faster here.

``torch.compile`` usually wins (fused elementwise steps), but not always: on a CPU, a program whose time is in
convolutions with weights computed in the program (z⁺'s ``W⁺``, folded BatchNorm) can run slower compiled than
eager. The two are the same function, so the first calls time both, alternating, and the faster is kept. The
choice is logged (logger ``"lrpfx"``, level INFO) and readable as :attr:`lrpfx.Explainer.compiled_choice`.
"""
from __future__ import annotations

import logging
import statistics
import threading
import time
from typing import Callable, Dict, List, Optional

import torch

log = logging.getLogger("lrpfx")


def compile_program(run: Callable, mode: Optional[str], device: torch.device) -> Callable:
    """``torch.compile`` of a program. On the CPU without a ``mode``, inductor's layout optimisation is off: it
    stores activations channels-last, and every extern convolution (the relevance steps' transposed and W⁺
    products) then copies them back to contiguous — measured on ResNet50 z⁺ (epsilon-plus-flat): compiled 686 ms
    with it, 472 ms without, eager 588 ms (batch 2, 160×160, one thread)."""
    if mode is None and device.type == "cpu":
        return torch.compile(run, dynamic=None, options={"layout_optimization": False})
    return torch.compile(run, mode=mode, dynamic=None)


def _shapes(args) -> tuple:
    return tuple(tuple(a.shape) if isinstance(a, torch.Tensor) else None for a in args)


def _sync(args) -> None:
    if any(isinstance(a, torch.Tensor) and a.is_cuda for a in args):
        torch.cuda.synchronize()


class FasterOf:
    """Calls ``compiled`` first (that call compiles and is not timed), then ``eager`` and ``compiled`` in turn on
    inputs of the first call's shapes, ``trials`` timed calls each; from then on only the faster (by median).
    Calls with other shapes run compiled, untimed (a recompile would skew the comparison). ``clock`` (seconds,
    monotonic) measures the calls; a test passes a clock of its own to make the comparison deterministic."""

    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, eager: Callable, compiled: Callable, *, trials: int = 2, label: str = "program",
                 clock: Optional[Callable[[], float]] = None):
        self.eager, self.compiled, self.trials, self.label = eager, compiled, trials, label
        if clock is not None:
            self.clock = clock
        self.times: Dict[str, List[float]] = {"eager": [], "compiled": []}
        self.choice: Optional[str] = None  # "eager" or "compiled" once decided
        self._first_shapes = None
        self._lock = threading.Lock()

    def __call__(self, *args):
        if self.choice is not None:
            return (self.compiled if self.choice == "compiled" else self.eager)(*args)
        with self._lock:
            first = self._first_shapes is None
            if first:
                self._first_shapes = _shapes(args)
            timed = not first and _shapes(args) == self._first_shapes
            which = "eager" if len(self.times["eager"]) <= len(self.times["compiled"]) else "compiled"
        if not timed:
            return self.compiled(*args)
        fn = self.eager if which == "eager" else self.compiled
        _sync(args)
        start = self.clock()
        out = fn(*args)
        _sync(args)
        self._record(which, self.clock() - start)
        return out

    def _record(self, which: str, seconds: float) -> None:
        with self._lock:
            self.times[which].append(seconds)
            if self.choice is not None or min(len(t) for t in self.times.values()) < self.trials:
                return
            eager, compiled = (statistics.median(self.times[k]) for k in ("eager", "compiled"))
            self.choice = "compiled" if compiled <= eager else "eager"
        log.info("compile=True: %s runs %s (eager %.4f s, compiled %.4f s per call)", self.label, self.choice,
                 eager, compiled)
