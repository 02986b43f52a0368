"""Throughput of lrpfx.explain_dataset: ResNet50 (random weights), 224x224 random inputs, batch 8.

Runs, each into a fresh folder (float16 shards of 16 samples):

* ``1 process``: this process, ``torch.set_num_threads(--threads)`` (default: all cores);
* ``torchrun x N``: ``python -m torch.distributed.run --standalone --nproc_per_node=N`` of this script in worker
  mode, one thread per process (gloo on CPU; nccl and one GPU per process with ``--device cuda``).

Runs are interleaved for ``--rounds`` rounds and the fastest round of each is reported (the least disturbed
by other work on the machine); all rounds are printed as JSON. Samples/s is samples over the explain_dataset
wall time (tracing and building included; for torchrun, the slowest rank's time; the rate including process
start-up is shown separately). The write overhead is the time spent serialising, hashing and writing shards
over the time spent explaining.

    python -m bench.dataset_throughput            # 64 samples, 1 process vs 2, 2 rounds (about 4 min, 2 cores)
    python -m bench.dataset_throughput --device cuda --samples 512 --nproc 1
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def make_model(device):
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval().to(device)


def make_data(samples, size):
    g = torch.Generator().manual_seed(0)
    return torch.utils.data.TensorDataset(torch.randn(samples, 3, size, size, generator=g))


def run_once(out, args, device):
    import lrpfx

    model = make_model(device)
    data = make_data(args.samples, args.size)
    start = time.perf_counter()
    result = lrpfx.explain_dataset(model, data, args.rule, out, batch_size=args.batch, shard_size=args.shard_size,
                                   store=args.store, progress=False)
    s = result.stats
    return {"rank": s.rank, "world_size": s.world_size, "samples": s.samples, "wall": time.perf_counter() - start,
            "explain": s.explain_seconds, "write": s.write_seconds, "load": s.load_seconds,
            "threads": torch.get_num_threads(), "device": str(device)}


def worker(args):
    """One torchrun rank: one thread, its own stats file."""
    torch.set_num_threads(args.threads or 1)
    from lrpfx.data import local_device

    device = local_device() if args.device == "cuda" else torch.device("cpu")
    stats = run_once(args.out, args, device)
    Path(args.out, f"stats-rank{stats['rank']}.json").write_text(json.dumps(stats))


def summarise(name, ranks, startup=None):
    wall = max(r["wall"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    row = {"run": name, "samples": samples, "seconds": wall, "samples_per_s": samples / wall,
           "write_overhead": sum(r["write"] for r in ranks) / sum(r["explain"] for r in ranks),
           "threads_per_process": ranks[0]["threads"], "device": ranks[0]["device"]}
    if startup is not None:
        row["with_startup_samples_per_s"] = samples / startup
    return row


def torchrun(out, args):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               __file__, "--worker", "--out", str(out), "--samples", str(args.samples), "--batch", str(args.batch),
               "--shard-size", str(args.shard_size), "--size", str(args.size), "--rule", args.rule, "--store",
               args.store, "--device", args.device]
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    startup_wall = time.perf_counter() - start
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("stats-rank*.json"))]
    return summarise(f"torchrun x {args.nproc}", ranks, startup_wall)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rule", default="epsilon-plus-flat")
    parser.add_argument("--store", default="float16")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="threads of the 1-process run (default: all)")
    parser.add_argument("--nproc", type=int, default=2, help="torchrun processes (0: skip)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest of each is shown")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    runs = {"1 process": [], f"torchrun x {args.nproc}": []}
    for round_ in range(args.rounds):   # interleaved, so that load from elsewhere hits both alike
        with tempfile.TemporaryDirectory() as tmp:
            runs["1 process"].append(summarise("1 process", [run_once(Path(tmp, "single"), args, device)]))
            if args.nproc > 0:
                runs[f"torchrun x {args.nproc}"].append(torchrun(Path(tmp, "torchrun"), args))
    # the fastest round of each: the least disturbed by other work on the machine
    rows = [min(results, key=lambda r: r["seconds"]) for results in runs.values() if results]
    print(f"ResNet50 (random weights), {args.samples} samples {args.size}x{args.size}, batch {args.batch}, rule "
          f"{args.rule}, {args.store} shards of {args.shard_size}; torch {torch.__version__}, "
          f"{os.cpu_count()} CPUs")
    print("| run | threads/process | samples/s | seconds | incl. process start-up | shard writing / explaining |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        startup = f"{r['with_startup_samples_per_s']:.2f} samples/s" if "with_startup_samples_per_s" in r else "-"
        print(f"| {r['run']} ({r['device']}) | {r['threads_per_process']} | {r['samples_per_s']:.2f} | "
              f"{r['seconds']:.1f} | {startup} | {100 * r['write_overhead']:.2f}% |")
    print(json.dumps(runs, indent=1))
    return rows


if __name__ == "__main__":
    main()
