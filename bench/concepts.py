"""Concept benchmark: conditional heatmaps against zennit-crp, cost of K conditions, mining throughput.

    python -m bench.concepts [--size 32] [--n 512] [--batch 64] [--rounds 1] [--compile] [--json out.json]

1. N channel-conditional heatmaps of one image at VGG16 ``features.28`` (EpsilonPlusFlat, random weights,
   float32, CPU): lrpfx (``Explainer(...)(x, conditions=..., condition_batch_size=batch)``) against zennit-crp
   0.6.0's ``CondAttribution.generate`` with the same condition batch size, each in its own process (so the peak
   resident memory of each is its own), one timed call after a warm-up per process, the two processes
   alternated ``rounds`` times; medians.
2. The cost of K = 1, 8, 64 conditions at ``features.28`` as a multiple of one unconditional explanation.
3. Concept mining (``lrpfx.concepts.mine_concepts``) against plain ``explain_dataset`` on the same data.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def lrpfx_worker(size: int, layer: str, n: int, batch: int, rounds: int, compile: bool) -> dict:
    import torchvision
    import lrpfx

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ex = lrpfx.Explainer(model, "epsilon-plus-flat", compile=compile)
    conditions = [{"y": 0, layer: [c]} for c in range(n)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run = lambda: ex(x, conditions=conditions, condition_batch_size=batch).relevance  # noqa: E731
    run()  # warm-up (and compilation)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        heatmaps = run()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": sorted(times)[len(times) // 2], "all": times, "shape": list(heatmaps.shape),
            "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024,
            "checksum": float(heatmaps.sum(2).double().sum())}


def _json_line(proc) -> dict:
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def versus_crp(size, layer, n, batch, rounds, compile, crp_too: bool = True) -> dict:
    from tests.helpers.crp_env import crp_python, crp_unavailable_reason

    python = crp_python()
    if python is None:
        raise RuntimeError(crp_unavailable_reason())
    common = [str(size), layer, str(n), str(batch), "1"]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    runs = {"lrpfx": [], "crp": []}
    for _ in range(rounds):  # alternate the two processes: a shared machine's load hits both alike
        runs["lrpfx"].append(_json_line(subprocess.run(
            [sys.executable, "-m", "bench.concepts", "--worker", *common] + (["--compile"] if compile else []),
            capture_output=True, text=True, env=env, cwd=HERE.parent)))
        if crp_too:
            runs["crp"].append(_json_line(subprocess.run([python, str(HERE / "concepts_crp_worker.py"), *common],
                                                         capture_output=True, text=True, env=env)))
    return {name: _median_run(r) for name, r in runs.items() if r}


def _median_run(runs: list) -> dict:
    ordered = sorted(runs, key=lambda r: r["seconds"])
    return {**ordered[len(ordered) // 2], "all": [r["seconds"] for r in runs]}


def k_multiples(size: int, layer: str, ks=(1, 8, 64), rounds: int = 3) -> dict:
    import torchvision
    import lrpfx

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    calls = {"unconditional": lambda: ex(x, target=0).relevance}
    for k in ks:
        conditions = [{"y": 0, layer: [c]} for c in range(k)]
        calls[f"K={k}"] = lambda conditions=conditions: ex(x, conditions=conditions).relevance
    times = {name: [] for name in calls}
    for f in calls.values():
        f()  # warm-up: build every program
    for _ in range(rounds):  # round robin
        for name, f in calls.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def mining_throughput(n: int = 4096, batch: int = 64, rounds: int = 3) -> dict:
    import lrpfx
    from lrpfx.concepts import mine_concepts

    torch.manual_seed(0)
    model = _digits_cnn()
    data = torch.utils.data.TensorDataset(torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,)))
    layers = ["0.0", "0.3"]
    times = {"explain_dataset": [], "mine_concepts": []}
    for r in range(rounds + 1):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            t = time.perf_counter()
            lrpfx.explain_dataset(model, data, "epsilon-plus-flat", a, batch_size=batch, target="label",
                                  progress=False)
            t1 = time.perf_counter()
            mine_concepts(model, data, "epsilon-plus-flat", layers, b, batch_size=batch, target="label",
                          progress=False)
            t2 = time.perf_counter()
        if r:  # the first round is a warm-up
            times["explain_dataset"].append(t1 - t)
            times["mine_concepts"].append(t2 - t1)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"samples": n, **{f"{k}_samples_per_s": n / v for k, v in med.items()}, "seconds": med}


def _digits_cnn():
    from torch import nn
    return nn.Sequential(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                       nn.Conv2d(16, 32, 3, padding=1), nn.ReLU()),
                         nn.Flatten(), nn.Linear(32 * 16, 10)).eval()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--layer", default="features.28")
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--worker", nargs=5)
    p.add_argument("--skip", default="", help="comma-separated parts to skip: crp,k,mining")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("LRPFX_BENCH_THREADS", "2")))
    if args.worker:
        size, layer, n, batch, rounds = args.worker
        print(json.dumps(lrpfx_worker(int(size), layer, int(n), int(batch), int(rounds), args.compile)))
        return
    skip = set(filter(None, args.skip.split(",")))
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    if "crp" not in skip:
        results["crp"] = versus_crp(args.size, args.layer, args.n, args.batch, args.rounds, False)
        if args.compile:
            results["crp_compiled"] = versus_crp(args.size, args.layer, args.n, args.batch, args.rounds, True,
                                                 crp_too=False)
    if "k" not in skip:
        results["k"] = k_multiples(args.size * 2, args.layer)
    if "mining" not in skip:
        results["mining"] = mining_throughput()
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
