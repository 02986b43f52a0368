"""Transformer benchmark: AttnLRP on a LLaMA-like model against the floor and LXT's efficient mode.

    python -m bench.transformer                     # CPU: 4 layers, hidden 256, sequence 512, batch 2
    python -m bench.transformer --layers 2 --seq 128 --rounds 3 --no-lxt

Floor: one input gradient — the target logit's gradient with respect to the input embeddings, parameters
frozen, on the same model (HF's own attention). lrpfx eager and compiled (``compile=True``) explain the same
token ids with the ``attnlrp`` composite. LXT 2.1 (efficient mode) needs transformers 4.52.4 and runs in its side
environment (``tests/helpers/lxt_env.py``) on the same weights, saved to a temporary file; its own floor is timed
there too, so its ratio is measured side by side. Peak memory: growth of the resident set during one call after a
warm-up call, each method in a fresh process. Writes the table to ``bench/RESULTS_transformer.md``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import round_robin, rss_growth_during, settle

HERE = Path(__file__).resolve().parent


def llama_config(layers: int, hidden: int, heads: int, vocab: int):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                       num_key_value_heads=heads, intermediate_size=int(hidden * 8 / 3) // 8 * 8, vocab_size=vocab,
                       max_position_embeddings=4096)


def make_model(args):
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    device = getattr(args, "device", "cpu")
    model = LlamaForCausalLM(llama_config(args.layers, args.hidden, args.heads, args.vocab)).eval().to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
    return model, ids.to(device)


def methods(model, ids, compiled: bool = True):
    import lrpfx

    def floor():
        embeds = model.get_input_embeddings()(ids).requires_grad_()
        logits = model(inputs_embeds=embeds, use_cache=False).logits[:, -1]
        (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), embeds)
        return grad

    eager = lrpfx.Explainer(model, "attnlrp")
    table = {"floor": floor, "lrpfx-eager": lambda: eager({"input_ids": ids}).relevance}
    if compiled:
        fast = lrpfx.Explainer(model, "attnlrp", compile=True)
        settle(fast, lambda: fast({"input_ids": ids}))  # compiled, or eager where that proved faster
        print("compile=True chose:", fast.compiled_choice, flush=True)
        table["lrpfx-compiled"] = lambda: fast({"input_ids": ids}).relevance
    return table


def time_all(table, rounds, device="cpu"):
    return round_robin(table, rounds, device)


def peak_memory(args, method: str) -> float:
    """Peak RSS growth (MiB) of one call over a forward-only baseline, in a fresh process."""
    cli = [sys.executable, "-m", "bench.transformer", "--memory-of", method] + _shape_args(args)
    out = subprocess.run(cli, capture_output=True, text=True, timeout=1800, cwd=HERE.parent)
    return float(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else float("nan")


def _shape_args(args):
    return ["--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads),
            "--vocab", str(args.vocab), "--seq", str(args.seq), "--batch", str(args.batch)]


def measure_memory_here(args, method: str) -> None:
    model, ids = make_model(args)
    run = methods(model, ids)[method]
    run()  # build (export, compile) first: the measurement is of one explanation
    print(rss_growth_during(run))


def lxt_times(args, model, extra=(), timeout: int = 3600) -> dict:
    """LXT efficient mode and its floor, timed in the LXT environment on the same weights (``extra``: more
    arguments of lxt_bench.py, such as ``--dtype``)."""
    from tests.helpers.lxt_env import lxt_python, lxt_unavailable_reason

    python = lxt_python()
    if python is None:
        return {"error": lxt_unavailable_reason()}
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "weights.pt"
        torch.save(model.state_dict(), weights)
        cli = [python, "-m", "bench.lxt_bench", "--state-dict", str(weights), "--rounds", str(args.rounds),
               "--layers", str(args.layers), "--hidden", str(args.hidden), "--heads", str(args.heads),
               "--vocab", str(args.vocab), "--seq", str(args.seq), "--batch", str(args.batch),
               "--intermediate", str(model.config.intermediate_size), *extra]
        out = subprocess.run(cli, capture_output=True, text=True, timeout=timeout, cwd=HERE.parent)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (LXT and memory are CPU-only here)")
    parser.add_argument("--no-lxt", action="store_true")
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(HERE / "RESULTS_transformer.md"))
    args = parser.parse_args(argv)
    if args.memory_of:
        measure_memory_here(args, args.memory_of)
        return 0
    from bench.report import machine

    model, ids = make_model(args)
    med = time_all(methods(model, ids), args.rounds, args.device)
    print(json.dumps(med, indent=1), flush=True)
    on_cpu = args.device == "cpu"  # LXT's side environment and the RSS measurement are CPU-only
    lxt = {} if args.no_lxt or not on_cpu else lxt_times(args, model)
    print("lxt:", lxt, flush=True)
    memory = {} if args.no_memory or not on_cpu else {m: peak_memory(args, m) for m in ("floor", "lrpfx-eager", "lrpfx-compiled")}
    floor = med["floor"]
    shape = (f"LLaMA-like ({args.device}): {args.layers} layers, hidden {args.hidden}, {args.heads} heads, vocab {args.vocab}, "
             f"sequence {args.seq}, batch {args.batch}, float32, random weights")
    lines = ["# Transformer benchmark (AttnLRP)", "", f"Machine: {machine()}.", "", f"Model: {shape}. "
             f"Medians of {args.rounds} rounds round-robin after a warm-up; ratios to the floor of the same run.", "",
             "| method | median s | × floor | peak memory MiB | memory × floor | target |", "|---|---|---|---|---|---|"]
    for name in ("floor", "lrpfx-eager", "lrpfx-compiled"):
        mem = memory.get(name)
        mem_ratio = f"{mem / memory['floor']:.2f}" if mem and memory.get("floor") else "–"
        target = {"lrpfx-eager": "<= 1.3× floor, memory <= 1.2×",
                  "lrpfx-compiled": "no slower than LXT (ratio), memory <= 1.2×"}.get(name, "")
        lines.append(f"| {name} | {med[name]:.3f} | {med[name] / floor:.2f} | "
                     f"{f'{mem:.0f}' if mem else '–'} | {mem_ratio} | {target} |")
    if "lxt_s" in lxt:
        ratio = lxt["lxt_s"] / lxt["floor_s"]
        lines.append(f"| LXT 2.1 efficient (its env, transformers 4.52.4) | {lxt['lxt_s']:.3f} | {ratio:.2f} "
                     f"(its floor {lxt['floor_s']:.3f} s) | – | – | lrpfx no slower |")
    elif lxt:
        lines.append(f"| LXT 2.1 | – | not run: {lxt.get('error')} | – | – | |")
    lines += ["", "Raw:", "", "```json", json.dumps({"lrpfx": med, "lxt": lxt, "memory_mib": memory}, indent=1), "```"]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
