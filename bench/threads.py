"""Throughput of one built relevance program run from two threads at once, one intra-op thread each, against
one thread — and the same for the floor (one input gradient), so the ratio shows what the program adds to the
scaling torch itself allows on the machine.

    python -m bench.threads [--model resnet18] [--batch 2] [--calls 8] [--rounds 5] [--out bench/RESULTS_threads.md]

Runs of an already built program take a shared lock (:mod:`lrpfx.locks`); only tracing is exclusive, so the two
threads overlap. Medians of ``rounds``; the ratio is calls per second with two threads over calls per second
with one (2.0 would be perfect scaling).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Callable, Dict

import torch

import lrpfx
from bench.common import floor, make_model


def throughput_ratio(run: Callable[[], object], calls: int, rounds: int) -> Dict[str, float]:
    """Seconds for ``calls`` runs in one thread, and for ``calls`` runs in each of two threads at once."""
    def work():
        for _ in range(calls):
            run()

    def two_threads():
        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    one, two = [], []
    for _ in range(rounds):  # alternate, so load changes on a shared machine hit both alike
        start = time.perf_counter()
        work()
        one.append(time.perf_counter() - start)
        start = time.perf_counter()
        two_threads()
        two.append(time.perf_counter() - start)
    one_s, two_s = statistics.median(one), statistics.median(two)
    return {"one_thread_s": one_s, "two_threads_s": two_s, "ratio": 2 * one_s / two_s}


def measure(model_name: str, batch: int, calls: int, rounds: int, rule: str = "epsilon-plus-flat") -> Dict:
    torch.set_num_threads(1)  # one intra-op thread per running thread
    model = make_model(model_name)
    x = torch.randn(batch, 3, 224, 224)
    explainer = lrpfx.Explainer(model, rule)
    explainer(x)  # build once: only runs are timed
    run_lrpfx = lambda: explainer(x)  # noqa: E731
    results = {"floor": throughput_ratio(floor(model, x), calls, rounds),
               f"lrpfx {rule}": throughput_ratio(run_lrpfx, calls, rounds)}
    return {"model": model_name, "batch": batch, "calls_per_thread": calls, "rounds": rounds,
            "torch": torch.__version__, "cores": os.cpu_count(), "results": results}


def to_markdown(report: Dict) -> str:
    lines = ["# Two threads running one built program (`python -m bench.threads`)", "",
             f"{report['model']}, batch {report['batch']} at 224×224, random weights, 1 intra-op thread per thread, "
             f"{report['calls_per_thread']} calls per thread, medians of {report['rounds']} rounds, torch "
             f"{report['torch']}.", "",
             "| method | one thread s | two threads s | throughput × one thread (target ≥ 1.7) |", "|---|---|---|---|"]
    for name, r in report["results"].items():
        lines.append(f"| {name} | {r['one_thread_s']:.2f} | {r['two_threads_s']:.2f} | {r['ratio']:.2f} |")
    lines += ["", "Raw:", "", "```json", json.dumps(report, indent=1), "```", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--calls", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS_threads.md"))
    args = parser.parse_args(argv)
    report = measure(args.model, args.batch, args.calls, args.rounds)
    text = to_markdown(report)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
