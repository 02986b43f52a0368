"""Relevance per value against relevance, side by side in one run (issue 16: the modified-gradient form).

    python -m bench.per_value                      # VGG16, ResNet50 (batch 2, 224×224), LLaMA-like (AttnLRP)
    python -m bench.per_value --models resnet50 --rounds 3 --no-llama

The same rule in both forms of the program (``form="per-value"`` or ``"relevance"`` of the Explainer):
LRP-0 (``"zero"``) on the CNNs, AttnLRP on the LLaMA-like model of ``bench.transformer``; with the floor (one
input gradient) and, for scale, epsilon 1e-6 (``"epsilon"``), which keeps the relevance form. Timed round-robin
after a warm-up, medians; memory: resident growth during one call (MiB), measured in this process. Writes
``bench/RESULTS_per_value.md``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from bench.common import floor, make_model, round_robin, rss_growth_during

HERE = Path(__file__).resolve().parent


def built(make_explainer, call, per_value: bool):
    """An explainer whose program is built in the given form, built and run once."""
    explainer = make_explainer("per-value" if per_value else "relevance")
    call(explainer)
    return lambda: call(explainer)


def cnn_methods(name: str, batch: int, size: int):
    import lrpfx

    model = make_model(name)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    call = lambda ex: ex(x).relevance  # noqa: E731
    return {"floor": floor(model, x),
            "zero, per value": built(lambda form: lrpfx.Explainer(model, "zero", form=form), call, True),
            "zero, relevance": built(lambda form: lrpfx.Explainer(model, "zero", form=form), call, False),
            "epsilon (1e-6)": built(lambda form: lrpfx.Explainer(model, "epsilon", form=form), call, True)}


def llama_methods(args):
    import lrpfx
    from bench import transformer

    model, ids = transformer.make_model(args)
    table = transformer.methods(model, ids, compiled=False)
    call = lambda ex: ex({"input_ids": ids}).relevance  # noqa: E731
    return {"floor": table["floor"],
            "attnlrp, per value": built(lambda form: lrpfx.Explainer(model, "attnlrp", form=form), call, True),
            "attnlrp, relevance": built(lambda form: lrpfx.Explainer(model, "attnlrp", form=form), call, False)}


def measure(table, rounds: int):
    med = round_robin(table, rounds, warm_up=False)  # built (and run once) by built()
    return med, {name: rss_growth_during(run) for name, run in table.items()}


def rows(case: str, med, memory):
    f, m = med["floor"], memory["floor"]
    return [f"| {case} | {name} | {t * 1000:.0f} | {t / f:.2f} | {memory[name]:.0f} | "
            f"{memory[name] / m:.2f} |" for name, t in med.items()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vgg16", "resnet50"])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-llama", action="store_true")
    parser.add_argument("--out", default=str(HERE / "RESULTS_per_value.md"))
    args = parser.parse_args(argv)
    from bench.report import machine

    lines, raw = [], {}
    cases = [(f"{m} b{args.batch}", lambda m=m: cnn_methods(m, args.batch, args.size)) for m in args.models]
    if not args.no_llama:
        shape = argparse.Namespace(layers=4, hidden=256, heads=4, vocab=1000, seq=512, batch=2, device="cpu")
        cases.append(("LLaMA-like 4×256, 512 tokens, b2", lambda: llama_methods(shape)))
    for case, make in cases:
        med, memory = measure(make(), args.rounds)
        raw[case] = {"median_s": med, "rss_growth_mib": memory}
        lines += rows(case, med, memory)
        print("\n".join(lines[-len(med):]), flush=True)
    text = ["# Relevance per value against relevance (issue 16)", "", f"Machine: {machine()}.", "",
            f"Same rule, both forms of the program, floor and epsilon for scale; {args.rounds} rounds round-robin "
            "after a warm-up, medians; memory: resident growth during one call (MiB).", "",
            "| case | method | median ms | × floor | memory MiB | memory × floor |", "|---|---|---|---|---|---|",
            *lines, "", "Raw:", "", "```json", json.dumps(raw, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
