"""Quantus with lrpfx's explain_func against Quantus's built-in Zennit path, on the demo's digits CNN.

Trains the demo's small CNN (lrpfx/demo.py, same data split and training), then, in one process:

1. **Per call**: one explain_func call at batch 8 and 64 for lrpfx (program cached) and for Quantus's Zennit path
   (``quantus.explain(..., xai_lib="zennit")``: hooks registered, gradient, hooks removed), plus lrpfx's one-off
   build (trace + program) for a new model structure and a call on a re-initialised deep copy (MPRT's case).
2. **Metrics**: Quantus's MPRT and FaithfulnessCorrelation on ``--samples`` test digits, each run with either
   explain function, alternating, ``--rounds`` times; medians. lrpfx runs twice: from an empty program cache
   (the build inside the timing) and with the program cached.
3. **Scores**: PixelFlipping (AUC), FaithfulnessCorrelation, MPRT (average rank correlation with the
   progressively randomised model), Sparseness and MaxSensitivity for lrpfx's built-in rules.

Run: ``python -m bench.quantus_bench`` (about two minutes on 2 cores); ``--quick`` for a smoke run.
The numbers are in bench/RESULTS_quantus.md.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings

import numpy as np
import torch

from lrpfx import demo
from lrpfx.quantus import clear_cache, explain_func

SCORE_RULES = ("epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "epsilon-alpha2beta1", "gradient",
               "gradient*input")
QUIET = dict(disable_warnings=True, display_progressbar=False)


def zennit_path(model, inputs, targets, **kwargs):
    import quantus
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    return quantus.explain(model, inputs, targets, xai_lib="zennit", attributor=Gradient, composite=EpsilonPlusFlat,
                           **kwargs)


# the same rules on both sides; Zennit's attributor starts from the one-hot target
LRPFX_KWARGS = {"rule": "epsilon-plus-flat", "start": "one"}


def median_seconds(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def per_call(model, x, y, repeat: int):
    rows = []
    start = time.perf_counter()
    explain_func(model, x[:8], y[:8], **LRPFX_KWARGS)
    first = time.perf_counter() - start  # the process's first build: torch.fx and lrpfx warm up once
    for batch in (8, 64):
        xb, yb = x[:batch], y[:batch]
        explain_func(model, xb, yb, **LRPFX_KWARGS)  # build outside the timing
        ours = median_seconds(lambda: explain_func(model, xb, yb, **LRPFX_KWARGS), repeat)
        theirs = median_seconds(lambda: zennit_path(model, xb, yb), repeat)
        rows.append((batch, ours, theirs))
    clear_cache()
    start = time.perf_counter()
    explain_func(model, x[:8], y[:8], **LRPFX_KWARGS)
    build = time.perf_counter() - start
    randomised = copy.deepcopy(model)
    randomised[6].reset_parameters()
    start = time.perf_counter()
    explain_func(randomised, x[:8], y[:8], **LRPFX_KWARGS)
    on_copy = time.perf_counter() - start
    return rows, first, build, on_copy


def metric_runs(model, x, y, rounds: int, nr_runs: int):
    import quantus

    metrics = {
        "MPRT": lambda: quantus.MPRT(layer_order="top_down", return_average_correlation=True, **QUIET),
        "FaithfulnessCorrelation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=nr_runs, subset_size=8, perturb_baseline="black", return_aggregate=False, **QUIET),
    }
    runs = (("lrpfx", explain_func, LRPFX_KWARGS), ("lrpfx warm", explain_func, LRPFX_KWARGS),
            ("zennit", zennit_path, {}))
    times = {(m, lib): [] for m in metrics for lib, _, _ in runs}
    scores = {}
    for _ in range(rounds):
        for name, make in metrics.items():
            for lib, fn, kwargs in runs:
                if lib == "lrpfx":
                    clear_cache()  # the build (about one per run) inside the timing
                np.random.seed(0)
                torch.manual_seed(0)
                start = time.perf_counter()
                result = make()(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=fn,
                                explain_func_kwargs=kwargs, batch_size=32)
                times[(name, lib)].append(time.perf_counter() - start)
                scores[(name, lib)] = np.asarray(result, dtype=float)
    return {k: statistics.median(v) for k, v in times.items()}, scores


def score_table(model, x, y, nr_runs: int):
    import quantus

    metrics = {
        # Quantus 0.6.0's own AUC calls np.trapz, gone in numpy 2: the curves are integrated here
        "PixelFlipping AUC": lambda: quantus.PixelFlipping(features_in_step=2, perturb_baseline="black", **QUIET),
        "FaithfulnessCorrelation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=nr_runs, subset_size=8, perturb_baseline="black", return_aggregate=False, **QUIET),
        "MPRT": lambda: quantus.MPRT(layer_order="top_down", return_average_correlation=True, **QUIET),
        "Sparseness": lambda: quantus.Sparseness(**QUIET),
        "MaxSensitivity": lambda: quantus.MaxSensitivity(nr_samples=5, lower_bound=0.1, **QUIET),
    }
    table = {}
    for rule in SCORE_RULES:
        for name, make in metrics.items():
            np.random.seed(0)
            torch.manual_seed(0)
            result = make()(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func,
                            explain_func_kwargs={"rule": rule}, batch_size=32)
            values = np.asarray(result, dtype=float)
            if values.ndim == 2:  # deletion curves [samples, steps] -> area over the deleted fraction [0, 1]
                values = np.trapezoid(values, dx=1.0 / (values.shape[1] - 1), axis=1)
            table[(rule, name)] = float(np.nanmean(values))
    return table, list(metrics)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--nr-runs", type=int, default=50, help="FaithfulnessCorrelation's random subsets")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few samples, one round")
    args = parser.parse_args(argv)
    if args.quick:
        args.samples, args.rounds, args.nr_runs, args.epochs = 16, 1, 5, 2
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    (x_train, y_train), (x_test, y_test) = demo.load_digits_tensors()
    torch.manual_seed(0)
    model = demo.train(demo.digits_cnn(), x_train, y_train, epochs=args.epochs)
    print(f"digits CNN: test accuracy {demo.accuracy(model, x_test, y_test):.1%}, float32, 1 thread")
    x, y = x_test[:args.samples].numpy(), y_test[:args.samples].numpy()

    rows, first, build, on_copy = per_call(model, x, y, repeat=20 if not args.quick else 3)
    print("\n| batch | lrpfx explain_func | Quantus Zennit path | ratio |\n|---|---|---|---|")
    for batch, ours, theirs in rows:
        print(f"| {batch} | {ours * 1e3:.2f} ms | {theirs * 1e3:.2f} ms | {theirs / ours:.1f}x |")
    print(f"\nlrpfx first call of the process (one-off warm-up of torch.fx and lrpfx included): {first:.2f} s; "
          f"first call for a new structure later (trace + program build + call): {build * 1e3:.0f} ms; "
          f"first call on a re-initialised deep copy (rebound, no build): {on_copy * 1e3:.2f} ms")

    times, scores = metric_runs(model, x, y, args.rounds, args.nr_runs)
    print(f"\n{args.samples} digits, medians of {args.rounds} rounds (ratio: Zennit path time / lrpfx time):\n")
    print("| metric | lrpfx, build included | lrpfx, program cached | Quantus Zennit path | ratio (cold / cached) "
          "| max score difference |\n|---|---|---|---|---|---|")
    for name in ("MPRT", "FaithfulnessCorrelation"):
        cold, warm, theirs = (times[(name, lib)] for lib in ("lrpfx", "lrpfx warm", "zennit"))
        diff = np.abs(scores[(name, "lrpfx")] - scores[(name, "zennit")]).max()
        print(f"| {name} | {cold:.2f} s | {warm:.2f} s | {theirs:.2f} s | {theirs / cold:.2f}x / {theirs / warm:.2f}x "
              f"| {diff:.1e} |")

    table, columns = score_table(model, x, y, args.nr_runs)
    print(f"\nScores per rule (means over {args.samples} digits; lrpfx's default start, the target logit):\n")
    print("| rule | " + " | ".join(columns) + " |\n|" + "---|" * (len(columns) + 1))
    for rule in SCORE_RULES:
        print(f"| {rule} | " + " | ".join(f"{table[(rule, c)]:.3f}" for c in columns) + " |")


if __name__ == "__main__":
    main()
