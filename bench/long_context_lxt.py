"""The largest context that fits in a memory budget: lrpfx ``checkpoint=True``, the checkpointed input gradient and
LXT 2.1 with Hugging Face's gradient checkpointing, on one LLaMA-shaped model (random weights, batch 1).

    python -m bench.long_context_lxt                                  # ~0.5B: 24 layers x 1024, bfloat16
    python -m bench.long_context_lxt --shape 58m --seqs 512 1024 2048 4096 --check-seq 8192

Methods, each measured in a fresh process (one untimed call at ``--warmup-seq`` tokens to export/build, then one
call at T tokens; peak resident growth during that call, as ``bench/common.rss_growth_during``):

* ``lrpfx, checkpoint=True``: ``Explainer(model, "attnlrp", checkpoint=True)`` with ``logits_to_keep=1``;
* ``gradient, checkpointed``: the input-embedding gradient of the last position's argmax logit, HF's gradient
  checkpointing per decoder layer (non-reentrant ``torch.utils.checkpoint``), as in ``bench/long_context.py``;
* ``LXT, checkpointed``: LXT 2.1 efficient mode (``E * dE`` of the patched model) with the same checkpointing,
  in LXT's side environment (transformers 4.52.4, ``tests/helpers/lxt_env.py``; ``bench/long_context_lxt_worker.py``).

All three explain the last position's logit of the same prompt with the same weights. Each method's peak is fitted
by least squares as ``a + b T + c T^2`` (and ``a + b T``) and solved for the largest T whose peak plus the
weights fits ``--budget-gib``: an extrapolation from the measured points. ``--check-seq`` measures one larger T
to test it. ``--agree-seq`` compares lrpfx's and LXT's relevance (float32; LXT checkpointed and not).
Prints the raw JSON and a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SHAPES = {"0.5b": {"layers": 24, "hidden": 1024, "heads": 16, "intermediate": 4096, "vocab": 32000,
                   "dtype": "bfloat16"},
          "58m": {"layers": 8, "hidden": 512, "heads": 8, "intermediate": 1408, "vocab": 32000, "dtype": "float32"}}
METHODS = ("lrpfx, checkpoint=True", "gradient, checkpointed", "LXT, checkpointed")


def make_model(shape: dict, max_seq: int, dtype: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=shape["hidden"], num_hidden_layers=shape["layers"],
                         num_attention_heads=shape["heads"], num_key_value_heads=shape["heads"],
                         intermediate_size=shape["intermediate"], vocab_size=shape["vocab"],
                         max_position_embeddings=max_seq)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().to(getattr(torch, dtype))
    model.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def load_spec(path: str, dtype: str = None):
    """The model saved by :func:`save_spec`, in ``dtype`` (default: the saved one)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    spec = torch.load(path, weights_only=False)
    config = LlamaConfig.from_dict(spec["config"])
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.load_state_dict(spec["state_dict"], assign=True)
    # its buffers are not in the state dict; built in float32 and cast with the rest, as in make_model
    model.model.rotary_emb = type(model.model.rotary_emb)(config)
    model = model.to(getattr(torch, dtype or spec["dtype"])).eval()
    model.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def prompt(vocab: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1))


def method_call(name: str, model):
    """``name``'s call on token ids, returning the relevance (or gradient) at the embedding output."""
    if name == "lrpfx, checkpoint=True":
        import lrpfx

        explainer = lrpfx.Explainer(model, "attnlrp", checkpoint=True)
        return lambda ids: explainer({"input_ids": ids, "logits_to_keep": 1}).relevance

    def gradient(ids):
        model.train(True)  # HF checkpoints its layers in training mode only (no dropout in this model)
        try:
            embeds = model.get_input_embeddings()(ids).requires_grad_()
            logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[:, -1]
            (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), embeds)
        finally:
            model.eval()
        return grad
    return gradient


def measure_here(args) -> dict:
    """One method in this (fresh) process: warm-up call, then peak growth and time of one call."""
    from bench.common import rss_growth_during

    model = load_spec(args.spec)
    call = method_call(args.measure, model)
    call(prompt(model.config.vocab_size, args.warmup_seq))
    ids = prompt(model.config.vocab_size, args.seq)
    start = time.perf_counter()
    peak = rss_growth_during(lambda: call(ids))
    return {"peak_mib": peak, "time_s": time.perf_counter() - start, "threads": torch.get_num_threads()}


def run_method(args, name: str, spec: str, seq: int) -> dict:
    """``name`` at ``seq`` tokens in a fresh process (the LXT one in its side environment)."""
    common = ["--spec", spec, "--seq", str(seq), "--warmup-seq", str(args.warmup_seq),
              "--threads", str(args.threads)]
    if name.startswith("LXT"):
        cli = [lxt_python(), "-m", "bench.long_context_lxt_worker", *common]
    else:
        cli = [sys.executable, "-m", "bench.long_context_lxt", "--measure", name, *common]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run(cli, capture_output=True, text=True, cwd=HERE.parent, env=env, timeout=args.timeout)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def lxt_python() -> str:
    from tests.helpers.lxt_env import lxt_python as find, lxt_unavailable_reason

    python = find()
    if python is None:
        raise SystemExit(f"LXT environment unavailable: {lxt_unavailable_reason()}")
    return python


def agreement(args, spec: str, seq: int) -> dict:
    """lrpfx (checkpoint=True) against LXT (checkpointed and plain) at ``seq`` tokens, in float32."""
    import lrpfx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lxt.pt"
        cli = [lxt_python(), "-m", "bench.long_context_lxt_worker", "--spec", spec, "--seq", str(seq),
               "--dtype", "float32", "--relevance", str(out), "--threads", str(args.threads)]
        proc = subprocess.run(cli, capture_output=True, text=True, cwd=HERE.parent, timeout=args.timeout)
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
        lxt = torch.load(out, weights_only=False)
    model = load_spec(spec, "float32")
    ids = prompt(model.config.vocab_size, seq)
    ours = lrpfx.Explainer(model, "attnlrp", checkpoint=True)({"input_ids": ids, "logits_to_keep": 1}).relevance

    def rel(a, b):
        return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()

    return {"seq": seq, "dtype": "float32", "lrpfx_vs_lxt_checkpointed": rel(ours, lxt["checkpointed"]),
            "lrpfx_vs_lxt_plain": rel(ours, lxt["plain"]),
            "lxt_checkpointed_vs_plain": rel(lxt["checkpointed"], lxt["plain"]),
            "lxt_attn_implementation": lxt["attn_implementation"]}


def fit(points: dict, budget_mib: float) -> dict:
    """Least-squares ``a + b T + c T^2`` and ``a + b T`` through {T: MiB}; the largest T within ``budget_mib``."""
    seqs = sorted(points)
    t = torch.tensor(seqs, dtype=torch.float64)
    y = torch.tensor([points[s] for s in seqs], dtype=torch.float64)
    result = {}
    for name, cols in (("quadratic", [torch.ones_like(t), t, t * t]), ("linear", [torch.ones_like(t), t])):
        design = torch.stack(cols, 1)
        if len(seqs) < design.shape[1]:
            continue
        coef = torch.linalg.lstsq(design, y[:, None]).solution[:, 0]
        residuals = (y - design @ coef).tolist()
        a, b = coef[0].item(), coef[1].item()
        c = coef[2].item() if len(coef) > 2 else 0.0
        result[name] = {"a_mib": a, "b_mib_per_token": b, "c_mib_per_token2": c,
                        "residuals_mib": dict(zip(seqs, residuals)), "max_tokens": solve(a, b, c, budget_mib)}
    return result


def solve(a: float, b: float, c: float, budget: float):
    """Largest T >= 0 with a + b T + c T^2 <= budget (None when the fit never reaches it)."""
    if abs(c) < 1e-15:
        return (budget - a) / b if b > 0 else None
    disc = b * b - 4 * c * (a - budget)
    if disc < 0:
        return None
    roots = sorted(((-b - disc ** 0.5) / (2 * c), (-b + disc ** 0.5) / (2 * c)))
    positive = [r for r in roots if r > 0]
    return (positive[-1] if c > 0 else positive[0]) if positive else None


def markdown(results: dict, fits: dict, budget_gib: float) -> str:
    lines = ["| tokens | method | peak MiB | × checkpointed gradient | time s |", "|---|---|---|---|---|"]
    for seq in sorted(results, key=int):
        base = results[seq].get("gradient, checkpointed", {}).get("peak_mib")
        for name, r in results[seq].items():
            if "error" in r:
                lines.append(f"| {seq} | {name} | – | – | error: {r['error']} |")
                continue
            ratio = f"{r['peak_mib'] / base:.2f}" if base else "–"
            lines.append(f"| {seq} | {name} | {r['peak_mib']:.0f} | {ratio} | {r['time_s']:.1f} |")
    lines += ["", f"| method | fit | a MiB | b MiB/token | c MiB/token² | residuals MiB | largest T in {budget_gib:g} GiB |",
              "|---|---|---|---|---|---|---|"]
    for name, per in fits.items():
        for kind, f in per.items():
            res = ", ".join(f"{r:+.0f}" for r in f["residuals_mib"].values())
            tokens = f"{f['max_tokens']:,.0f}" if f["max_tokens"] else "–"
            lines.append(f"| {name} | {kind} | {f['a_mib']:.1f} | {f['b_mib_per_token']:.4f} | "
                         f"{f['c_mib_per_token2']:.3g} | {res} | {tokens} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="0.5b")
    for key in ("layers", "hidden", "heads", "intermediate", "vocab"):
        parser.add_argument(f"--{key}", type=int, help="override the shape's value")
    parser.add_argument("--dtype", help="override the shape's dtype")
    parser.add_argument("--seqs", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--check-seq", type=int, help="one more length, measured but left out of the fit")
    parser.add_argument("--agree-seq", type=int, default=128, help="0: skip the lrpfx/LXT agreement check")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--warmup-seq", type=int, default=64)
    parser.add_argument("--budget-gib", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per measurement process")
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--seq", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.measure:
        print(json.dumps(measure_here(args)))
        return 0
    shape = {**SHAPES[args.shape], **{k: v for k in SHAPES[args.shape] if (v := getattr(args, k, None))}}
    seqs = sorted(args.seqs + ([args.check_seq] if args.check_seq else []))
    model = make_model(shape, max(seqs + [args.agree_seq]), shape["dtype"])
    weights_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    params = sum(p.numel() for p in model.parameters())
    with tempfile.TemporaryDirectory() as tmp:
        spec = str(Path(tmp) / "spec.pt")
        torch.save({"config": model.config.to_dict(), "state_dict": model.state_dict(), "dtype": shape["dtype"]}, spec)
        del model
        agree = agreement(args, spec, args.agree_seq) if args.agree_seq else {}
        print("agreement:", json.dumps(agree), flush=True)
        results = {}
        for seq in seqs:
            results[seq] = {}
            for name in args.methods:
                results[seq][name] = run_method(args, name, spec, seq)
                print(seq, name, json.dumps(results[seq][name]), flush=True)
    budget = args.budget_gib * 1024 - weights_mib  # the weights must fit too
    fits = {name: fit({s: results[s][name]["peak_mib"] for s in args.seqs if "peak_mib" in results[s][name]},
                      budget) for name in args.methods}
    print(f"LLaMA-shaped: {shape} ({params / 1e6:.0f}M parameters, weights {weights_mib:.0f} MiB), batch 1, "
          f"last position's logit, {args.threads} threads; fit over {args.seqs}, budget {args.budget_gib:g} GiB "
          f"minus the weights")
    print(markdown(results, fits, args.budget_gib))
    print(json.dumps({"shape": shape, "params": params, "weights_mib": weights_mib, "agreement": agree,
                      "results": results, "fits": fits}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
