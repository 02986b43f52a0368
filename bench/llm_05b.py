"""A real-size LLM: AttnLRP on a LLaMA-shaped model of ~0.5B parameters (random weights), prompt of 1024 tokens.

    python -m bench.llm_05b                                   # float32 and bfloat16, batch 1, 1024 tokens
    python -m bench.llm_05b --dtypes float32 --rounds 2 --no-compile --no-lxt

Per dtype: the floor (one input gradient: the target logit's gradient with respect to the input embeddings,
parameters frozen, HF's own attention), lrpfx eager and compiled (``compile=True``) with the ``attnlrp``
composite, timed round-robin after a warm-up (which builds and compiles the programs); medians. Peak memory is
the growth of the resident set during one call (the last round), measured in this process after the freed heap
is handed back to the OS (``common.rss_growth_during``). LXT 2.1's efficient mode runs in its own environment
(``tests/helpers/lxt_env.py``) on the same weights with its own floor (``bench/lxt_bench.py``), so its ratio is
measured side by side there. Writes ``bench/RESULTS_llm.md``.

Size: hidden 1024, 24 layers, 16 heads, MLP 4096, vocabulary 32000: 0.47B parameters (1.9 GB in float32).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from bench import transformer
from bench.common import rss_growth_during
from bench.transformer import methods

HERE = Path(__file__).resolve().parent

SHAPE = {"layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096, "vocab": 32000}


def make_model(args, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, intermediate_size=args.intermediate,
                         vocab_size=args.vocab, max_position_embeddings=max(2048, args.seq))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().to(dtype)
    model.requires_grad_(False)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    return model, ids


def time_and_memory(table: dict, rounds: int) -> dict:
    """Medians (s) round-robin after a warm-up, and each method's resident growth during its last call (MiB)."""
    for run in table.values():
        run()
    times = {name: [] for name in table}
    memory = {}
    for i in range(rounds):
        for name, run in table.items():
            if i == rounds - 1:
                start = time.perf_counter()
                memory[name] = rss_growth_during(run)
            else:
                start = time.perf_counter()
                run()
            times[name].append(time.perf_counter() - start)
    return {"median_s": {n: statistics.median(t) for n, t in times.items()}, "rounds_s": times,
            "rss_growth_mib": memory}


def lxt_times(args, model, dtype_name: str) -> dict:
    """LXT efficient mode and its floor in the LXT environment, on this model's weights and dtype."""
    return transformer.lxt_times(args, model, extra=["--dtype", dtype_name, "--threads", str(torch.get_num_threads())],
                                 timeout=7200)


def table_lines(dtype_name: str, result: dict, lxt: dict) -> list:
    med, mem = result["median_s"], result["rss_growth_mib"]
    floor, floor_mem = med["floor"], mem.get("floor")
    lines = []
    for name in med:
        ratio_mem = f"{mem[name] / floor_mem:.2f}" if floor_mem else "–"
        lines.append(f"| {dtype_name} | {name} | {med[name]:.2f} | {med[name] / floor:.2f} | {mem[name]:.0f} | "
                     f"{ratio_mem} |")
    if "lxt_s" in lxt:
        lines.append(f"| {dtype_name} | LXT 2.1 efficient (own env; its floor {lxt['floor_s']:.2f} s) | "
                     f"{lxt['lxt_s']:.2f} | {lxt['lxt_s'] / lxt['floor_s']:.2f} | "
                     f"{lxt['lxt_peak_rss_growth_mb']:.0f} | – |")  # its floor shares LXT's process and pool
    elif lxt:
        lines.append(f"| {dtype_name} | LXT 2.1: not run ({lxt.get('error')}) | – | – | – | – |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in SHAPE.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-lxt", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS_llm.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from bench.report import machine

    rows, raw = [], {}
    for dtype_name in args.dtypes:
        model, ids = make_model(args, getattr(torch, dtype_name))
        params = sum(p.numel() for p in model.parameters())
        table = methods(model, ids, compiled=not args.no_compile)
        result = time_and_memory(table, args.rounds)
        print(dtype_name, json.dumps(result), flush=True)
        lxt = {} if args.no_lxt else lxt_times(args, model, dtype_name)
        print("lxt:", json.dumps(lxt), flush=True)
        rows += table_lines(dtype_name, result, lxt)
        raw[dtype_name] = {"lrpfx": result, "lxt": lxt, "parameters": params}
        del model, table
    shape = (f"LLaMA-shaped, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, MLP {args.intermediate}, "
             f"vocabulary {args.vocab} ({params / 1e9:.2f}B parameters), random weights; prompt {args.seq} tokens, "
             f"batch {args.batch}")
    lines = ["# Real-size LLM benchmark (AttnLRP, ~0.5B parameters)", "", f"Machine: {machine()}.", "",
             f"Model: {shape}. Medians of {args.rounds} rounds round-robin after a warm-up; ratios to the floor of "
             "the same run. Memory: resident growth during one call (MiB).", "",
             "| dtype | method | median s | × floor | memory MiB | memory × floor |", "|---|---|---|---|---|---|"]
    lines += rows + ["", "Targets: ≤ 1.3× floor time, ≤ 1.2× floor memory, no slower than LXT.", "", "Raw:", "",
                     "```json", json.dumps(raw, indent=1), "```"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
