"""Generation benchmark: explaining 32 generated tokens in one pass against the alternatives.

    python -m bench.generation                      # LLaMA-like, 4 layers, hidden 256, prompt 128, 32 new tokens
    python -m bench.generation --rounds 3 --no-compile

The model is ``bench/transformer.py``'s LLaMA-like builder (random weights, float32, vocabulary 1000) at its
default size, batch 1. Timed side by side, round-robin after a warm-up that builds every program, medians:

* ``one explanation``: AttnLRP of the last generated token with its whole context (159 tokens), the unit;
* ``explain_generated``: all 32 generated tokens from one forward and one relevance pass (the ids given);
* ``explain_generation``: the same plus the greedy generation of the 32 tokens (key/value cache);
* ``step by step``: 32 explanations, each on the sequence cut before its token;
* ``32 input gradients``: one forward over the sequence, 32 backward passes (``retain_graph``), each the
  gradient of one generated token's logit with respect to the input embeddings: plain gradients of the same
  32 targets, the floor of any method that propagates one vector per target; ``(batched)``: the 32 backward
  passes as one (``is_grads_batched``);
* with ``--compile`` (default on): ``one explanation`` and ``explain_generated`` with ``compile=True``.

Writes ``bench/RESULTS_generation.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.common import round_robin
from bench.transformer import make_model

HERE = Path(__file__).resolve().parent

UNIT = "one explanation"


def sequence(args):
    """The model and a prompt of ``args.prompt`` random tokens followed by its greedy continuation."""
    from lrpfx.generation import greedy_generate

    shape = argparse.Namespace(layers=args.layers, hidden=args.hidden, heads=args.heads, vocab=args.vocab,
                               seq=args.prompt, batch=args.batch)
    model, prompt = make_model(shape)
    ids, _ = greedy_generate(model, prompt, args.new_tokens)
    return model, prompt, ids


def methods(model, prompt, ids, compile_too: bool = True):
    import lrpfx
    from lrpfx.generation import GenerationExplainer

    p, new = prompt.shape[1], ids.shape[1] - prompt.shape[1]
    one = lrpfx.Explainer(model, "attnlrp")
    generation = GenerationExplainer(model, "attnlrp")

    def steps():
        return [one({"input_ids": ids[:, :p + k]}, target=ids[:, p + k]).tokens for k in range(new)]

    def gradients():
        embeds = model.get_input_embeddings()(ids[:, :-1]).requires_grad_()
        logits = model(inputs_embeds=embeds, use_cache=False).logits
        picked = logits[:, p - 1:].gather(2, ids[:, p:, None])[..., 0]  # [B, new]
        return [torch.autograd.grad(picked[:, k].sum(), embeds, retain_graph=k < new - 1)[0] for k in range(new)]

    def gradients_batched():
        embeds = model.get_input_embeddings()(ids[:, :-1]).requires_grad_()
        logits = model(inputs_embeds=embeds, use_cache=False).logits
        picked = logits[:, p - 1:].gather(2, ids[:, p:, None])[..., 0]
        onehots = torch.eye(new, dtype=picked.dtype)[:, None].expand(new, *picked.shape)
        return torch.autograd.grad(picked, embeds, grad_outputs=onehots, is_grads_batched=True)[0]

    table = {
        UNIT: lambda: one({"input_ids": ids[:, :-1]}, target=ids[:, -1]).tokens,
        "explain_generated": lambda: generation.explain(ids, p).matrix,
        "explain_generation": lambda: generation(prompt, new).matrix,
        "step by step": steps,
        "32 input gradients": gradients,
        "32 input gradients (batched)": gradients_batched,
    }
    if compile_too:
        one_c = lrpfx.Explainer(model, "attnlrp", compile=True)
        generation_c = GenerationExplainer(model, "attnlrp", compile=True)
        table[UNIT + " (compiled)"] = lambda: one_c({"input_ids": ids[:, :-1]}, target=ids[:, -1]).tokens
        table["explain_generated (compiled)"] = lambda: generation_c.explain(ids, p).matrix
    return table


def time_all(table, rounds):
    return round_robin(table, rounds)


def agreement(table, prompt_length: int) -> float:
    """max |one pass - step by step| / max |step by step| over all rows (float32)."""
    matrix = table["explain_generated"]()
    rows = table["step by step"]()
    worst = max(float((matrix[:, k, :r.shape[1]] - r).abs().max()) for k, r in enumerate(rows))
    return worst / max(float(r.abs().max()) for r in rows)


TARGETS = {"explain_generated": "<= 4× one explanation, >= 8× faster than step by step"}
FLOOR = "32 input gradients"


def report(args, med, agree) -> str:
    from bench.report import machine

    unit, floor, ours = med[UNIT], med[FLOOR], med["explain_generated"]
    shape = (f"LLaMA-like (`bench/transformer.py`'s builder at its default size): {args.layers} layers, hidden "
             f"{args.hidden}, {args.heads} heads, vocabulary {args.vocab}, float32, random weights; batch "
             f"{args.batch}, prompt {args.prompt} tokens, {args.new_tokens} generated tokens")
    lines = ["# Generation benchmark (AttnLRP of every generated token)", "", f"Machine: {machine()}.", "",
             f"Model: {shape}. Medians of {args.rounds} rounds, round-robin after a warm-up, one run; ratios to "
             f"`{UNIT}` (the last generated token with its whole context) and to `{FLOOR}` of the same run.", "",
             f"| method | median s | × one explanation | × {FLOOR} | target |", "|---|---|---|---|---|"]
    for name, seconds in med.items():
        lines.append(f"| {name} | {seconds:.3f} | {seconds / unit:.2f} | {seconds / floor:.2f} | "
                     f"{TARGETS.get(name, '')} |")
    lines += ["", f"explain_generated is {med['step by step'] / ours:.2f}× faster than step by step "
              f"({args.new_tokens} explanations on cut sequences)"
              + (f"; compiled, {med['step by step'] / med['explain_generated (compiled)']:.2f}×."
                 if "explain_generated (compiled)" in med else "."),
              f"One pass against step by step (float32): max |ΔR| / max |R| = {agree:.1e}.", "",
              "Raw:", "", "```json", json.dumps(med, indent=1), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the machine is shared)")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS_generation.md"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model, prompt, ids = sequence(args)
    table = methods(model, prompt, ids, compile_too=not args.no_compile)
    med = time_all(table, args.rounds)
    agree = agreement(table, prompt.shape[1])
    text = report(args, med, agree)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
