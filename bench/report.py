"""Benchmark report: time and peak memory of lrpfx against the floor (one input gradient) and the peers.

    python -m bench.report                      # CPU: VGG16 and ResNet50, batch 1/2/8, writes bench/RESULTS.md
    python -m bench.report --device cuda --batches 32 --out bench/RESULTS-gpu.md

All methods of one (model, batch) are warmed up (programs built and compiled), then timed round-robin for
``--rounds`` rounds; the table shows medians as ratios to the floor's median from the same rounds. Peak memory
is the growth of the process's peak RSS (CPU) or of ``torch.cuda.max_memory_allocated`` (GPU) over a
forward-only baseline, each method measured in a fresh subprocess.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.common import COMPOSITES, make_model, methods

CHOICES = {}  # (model, batch, method) -> "compiled" or "eager", what compile=True chose
TARGETS = {"epsilon": (1.15, None), "epsilon-plus-flat": (1.6, 2.0), "epsilon-gamma-box": (2.2, 3.0)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_methods(model_name: str, batch: int, size: int, rounds: int, device: str, compiled: bool, peers: bool):
    model = make_model(model_name, device=device)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size, device=device)
    table = methods(model_name, model, x, compiled=compiled, peers=peers)
    usable = {}
    for name, run in table.items():  # warm-up: builds and compiles programs, registers hooks
        try:
            run()
            sync(device)
            usable[name] = run
            if getattr(run, "choice", None):  # compile=True picks compiled or eager per program (lrpfx.program.faster)
                CHOICES[(model_name, batch, name)] = next(iter(run.choice.values()))
                print(f"  {name}: compile=True chose {CHOICES[(model_name, batch, name)]}", flush=True)
        except Exception as exc:  # a peer that cannot handle the model is reported, not fatal
            print(f"  {name}: skipped ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
    times = {name: [] for name in usable}
    for _ in range(rounds):
        for name, run in usable.items():
            sync(device)
            start = time.perf_counter()
            run()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_memory(model_name: str, batch: int, size: int, method: str, device: str) -> float:
    """Peak memory growth in MiB of one call of ``method`` after a warm-up call, in a fresh process: CUDA's peak
    allocation, or on the CPU the resident set sampled during the call (freed heap handed back first)."""
    code = f"""
import torch
from bench.common import make_model, methods, rss_growth_during
torch.manual_seed(0)
model = make_model({model_name!r}, device={device!r})
x = torch.randn({batch}, 3, {size}, {size}, device={device!r})
run = methods({model_name!r}, model, x, compiled={'compiled' in method}, peers={method.split('/')[0] in ('zennit', 'captum')})[{method!r}]
run()
if {device!r}.startswith('cuda'):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    run(); torch.cuda.synchronize(); print((torch.cuda.max_memory_allocated() - base) / 2**20)
else:
    print(rss_growth_during(run))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800,
                         cwd=Path(__file__).resolve().parents[1])  # the root, where bench.common imports from
    if out.returncode != 0:
        return float("nan")
    return float(out.stdout.strip().splitlines()[-1])


def ratio_table(results, peers: bool) -> list:
    lines = ["| model | batch | composite | lrpfx eager × floor | lrpfx compiled × floor | Zennit × floor | "
             "lrpfx eager vs Zennit | target (× floor / vs Zennit) |",
             "|---|---|---|---|---|---|---|---|"]
    for (model, batch), med in results.items():
        floor = med["floor"]
        for comp in COMPOSITES:
            eager = med.get(f"lrpfx-eager/{comp}")
            compiled = med.get(f"lrpfx-compiled/{comp}")
            zen = med.get(f"zennit/{comp}")
            goal, speedup = TARGETS[comp]
            cells = [model, str(batch), comp,
                     f"{eager / floor:.2f}" if eager else "–",
                     (f"{compiled / floor:.2f}" + (" (eager chosen)" if CHOICES.get(
                         (model, batch, f"lrpfx-compiled/{comp}")) == "eager" else "")) if compiled else "–",
                     f"{zen / floor:.2f}" if zen else "–",
                     f"{zen / eager:.1f}× faster" if (zen and eager) else "–",
                     f"<= {goal}" + (f" / >= {speedup}× faster" if speedup else "")]
            lines.append("| " + " | ".join(cells) + " |")
        if "captum/epsilon" in med:
            lines.append(f"| {model} | {batch} | Captum LRP (epsilon) | – | – | {med['captum/epsilon'] / floor:.2f} "
                         f"(Captum) | – | – |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}, "
            f"Python {platform.python_version()}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 8])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip lrpfx compiled")
    parser.add_argument("--no-peers", action="store_true", help="skip Zennit and Captum")
    parser.add_argument("--memory", action="store_true", help="also measure peak memory (slow: a process each)")
    parser.add_argument("--scaling", action="store_true", help="also time ResNet18/34/50/101 (depth scaling)")
    parser.add_argument("--skip-timing", action="store_true", help="only the memory and scaling sections")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "RESULTS.md"))
    args = parser.parse_args(argv)

    results, raw = {}, {}
    for model in ([] if args.skip_timing else args.models):
        for batch in args.batches:
            print(f"{model} batch {batch} ...", flush=True)
            med = time_methods(model, batch, args.size, args.rounds, args.device, not args.no_compile,
                               not args.no_peers)
            results[(model, batch)] = med
            raw[f"{model}/b{batch}"] = med
            for name, t in med.items():
                print(f"  {name:<36} {t * 1000:9.1f} ms  {t / med['floor']:.2f}× floor", flush=True)

    lines = ["# lrpfx benchmark results", "", f"Machine: {machine()}.", "",
             f"Inputs {args.size}×{args.size}, random weights, float32, {args.rounds} rounds round-robin after a "
             "warm-up; medians, as ratios to the floor (one input gradient of the target logit, parameters "
             "frozen) measured in the same run.", ""]
    lines += ratio_table(results, not args.no_peers)

    if args.memory:
        lines += ["", "## Peak memory (MiB over a forward-only baseline, fresh process per method)", "",
                  "| model | batch | floor | " + " | ".join(f"lrpfx {c}" for c in COMPOSITES) + " | ratio to floor |",
                  "|---|---|---|" + "---|" * len(COMPOSITES) + "---|"]
        for model in args.models:
            for batch in args.batches:
                fl = peak_memory(model, batch, args.size, "floor", args.device)
                ours = [peak_memory(model, batch, args.size, f"lrpfx-eager/{c}", args.device) for c in COMPOSITES]
                ratios = ", ".join(f"{m / fl:.2f}" if fl > 0 else "–" for m in ours)
                lines.append(f"| {model} | {batch} | {fl:.0f} | " + " | ".join(f"{m:.0f}" for m in ours)
                             + f" | {ratios} |")
                print(lines[-1], flush=True)

    if args.scaling:
        lines += ["", "## Scaling with depth (batch 2, epsilon-gamma-box, eager)", "",
                  "| model | floor ms | lrpfx ms | × floor |", "|---|---|---|---|"]
        for model in ["resnet18", "resnet34", "resnet50", "resnet101"]:
            med = time_methods(model, 2, args.size, args.rounds, args.device, False, False)
            f, e = med["floor"], med["lrpfx-eager/epsilon-gamma-box"]
            lines.append(f"| {model} | {f * 1000:.0f} | {e * 1000:.0f} | {e / f:.2f} |")
            print(lines[-1], flush=True)

    lines += ["", "Raw medians (seconds):", "", "```json", json.dumps(raw, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines[:len(lines)]), flush=True)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
