"""``lrpfx.tune`` on the digits CNN: the preset's faithfulness against the tuned composite's, on the tuning split
and on a held-out split (docs/training.md).

    python -m bench.tune_digits                 # writes bench/RESULTS_tune.md
    python -m bench.tune_digits --out /tmp/t.md

The demo's CNN (lrpfx.demo, 15 epochs) is trained on the digits' training split; the test split is cut in two
halves, the first tunes, the second is held out. For each search (family, grouping, metric) the report gives the
preset's and the tuned composite's score on both halves, the chosen values, how many composites were scored and
the time spent building programs against scoring them.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

import lrpfx
from lrpfx.demo import digits_cnn, load_digits_tensors, train
from lrpfx.tune import faithfulness

HERE = Path(__file__).resolve().parent
SEARCHES = (("gamma", "group", "pixel-flipping"), ("gamma", "layer", "pixel-flipping"),
            ("epsilon", "group", "pixel-flipping"), ("gamma", "group", "aopc"), ("gamma", "group", "auc-difference"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    from bench.report import machine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--out", default=str(HERE / "RESULTS_tune.md"))
    args = parser.parse_args(argv)
    (x_train, y_train), (x_test, _) = load_digits_tensors()
    torch.manual_seed(0)
    model = train(digits_cnn(), x_train, y_train, epochs=args.epochs, seed=0)
    half = len(x_test) // 2
    tuning, held_out = x_test[:half], x_test[half:]
    from lrpfx.eval import pixel_flipping

    lines = ["# Tuning rule parameters for faithfulness (lrpfx.tune)", "", f"Machine: {machine()}.", "",
             f"Digits CNN of lrpfx.demo ({args.epochs} epochs), tuned on {len(tuning)} test digits, held out "
             f"{len(held_out)}; target: the predicted class; default candidates; one sweep; batch 64. Presets: "
             "the family's rule on every conv and linear layer (gamma 0.25, epsilon 1e-6). Pixel flipping: area "
             "between random and most-relevant-first deletion (16 steps); AOPC: mean drop of the target logit "
             "along the most-relevant-first curve; AUC difference: LeRF minus MoRF area (16 steps). Higher is "
             "better for all.", "",
             "| family | per | metric | preset (tuning) | tuned (tuning) | preset (held out) | tuned (held out) | "
             "chosen | composites | build s | score s |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for family, per, metric in SEARCHES:
        started = time.perf_counter()
        result = lrpfx.tune(model, tuning, family=family, per=per, metric=metric)
        seconds = time.perf_counter() - started
        if metric == "pixel-flipping":  # held out: the library's own metric, independent of tune's scoring
            scores = [pixel_flipping(model, held_out, lrpfx.explain(model, held_out, c))["area"].item()
                      for c in (family, result.composite)]
        else:
            scores = [faithfulness(model, held_out, c, metric) for c in (family, result.composite)]
        chosen = ", ".join(f"{g} ({'+'.join(result.groups[g])}): {'preset' if v is None else f'{v:g}'}"
                           for g, v in result.values.items())
        lines.append(f"| {family} | {per} | {metric} | {result.preset_score:.3f} | {result.score:.3f} | "
                     f"{scores[0]:.3f} | {scores[1]:.3f} | {chosen} | {len(result.trials)} | "
                     f"{result.build_seconds:.1f} | {result.score_seconds:.1f} |")
        print(lines[-1], f"({seconds:.1f} s)", flush=True)
    lines += ["", "`composites`: trials scored (the preset plus one per group and candidate); a composite met again "
              "is scored from the cache. `build s`: building one relevance program per composite; `score s`: "
              "explaining the tuning split and deleting pixels.", ""]
    text = "\n".join(lines)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
