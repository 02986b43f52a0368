"""Explanation-guided training on confounded digits (docs/training.md).

    python -m bench.guided_training                      # 3 seeds, λ in (0.3, 1, 3), writes RESULTS_guided.md
    python -m bench.guided_training --seeds 1 --lams 1 --out /tmp/g.md

The data: scikit-learn's 8×8 digits with a 2×2 marker of bright pixels. In training the marker sits at one of
ten border positions chosen by the class (a perfect shortcut); in the test set it sits at a random position,
independent of the class. The small CNN of :mod:`lrpfx.demo` is trained plainly (cross-entropy) and with a
relevance penalty, ``CE + λ · share of |R| on the marker`` (:func:`lrpfx.relevance_penalty`, LRP-epsilon of the
label, through the differentiable program); as references, on the digits without markers, and with the same
penalty on the plain input gradient (rule ``"gradient"``, "right for the right reasons"). Reported: the accuracy
on the random-marker test set and on the clean test set, the share of the label's relevance on the marker (at a
random position, and at the class's position as in training), and the cost of one training step with the
penalty against a plain step (both timed in turn on the same batch, medians).
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.demo import accuracy, digits_cnn, load_digits_tensors

HERE = Path(__file__).resolve().parent
RULE = "epsilon"
# ten 2×2 marker positions (top-left corners) along the border of the 8×8 digit, one per class
POSITIONS = ((0, 0), (0, 2), (0, 4), (0, 6), (6, 0), (6, 2), (6, 4), (6, 6), (2, 0), (4, 6))


class Split(NamedTuple):
    x: torch.Tensor      # [N, 1, 8, 8], marked
    y: torch.Tensor      # [N]
    mask: torch.Tensor   # [N, 1, 8, 8] bool: the marker's pixels
    clean: torch.Tensor  # the same digits without the marker


def with_marker(x: torch.Tensor, position: torch.Tensor):
    """``x`` with a 2×2 patch of ones at ``POSITIONS[position[i]]`` in sample i, and the patch's mask."""
    mask = torch.zeros_like(x, dtype=torch.bool)
    for i, k in enumerate(position.tolist()):
        row, col = POSITIONS[k]
        mask[i, :, row:row + 2, col:col + 2] = True
    return torch.where(mask, torch.ones_like(x), x), mask


def confounded_digits(seed: int = 0):
    """Train split: the marker's position is the class; test split: a random position (seeded); and the test
    digits marked as in training (the shortcut present: where a model that uses it puts relevance)."""
    (x_train, y_train), (x_test, y_test) = load_digits_tensors()
    random_position = torch.randint(0, len(POSITIONS), (len(x_test),), generator=torch.Generator().manual_seed(seed))
    marked_train, train_mask = with_marker(x_train, y_train)
    marked_test, test_mask = with_marker(x_test, random_position)
    shortcut_test, shortcut_mask = with_marker(x_test, y_test)
    return (Split(marked_train, y_train, train_mask, x_train), Split(marked_test, y_test, test_mask, x_test),
            Split(shortcut_test, y_test, shortcut_mask, x_test))


def plain_step(model: nn.Module, opt, x, y, mask=None) -> torch.Tensor:
    opt.zero_grad()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss


def guided_step(explainer: lrpfx.Explainer, opt, x, y, mask, lam: float) -> torch.Tensor:
    """One step on ``CE + λ · share``: output and relevance from one run of the differentiable program."""
    opt.zero_grad()
    guided = lrpfx.relevance_penalty(explainer, x, mask, target=y)
    loss = F.cross_entropy(guided.output, y) + lam * guided.penalty
    loss.backward()
    opt.step()
    return loss


def train(x, y, mask, lam: float, epochs: int, seed: int = 0, rule=RULE, batch: int = 64) -> nn.Module:
    """The digits CNN trained on ``(x, y)``; ``lam > 0`` adds the relevance penalty on ``mask``."""
    torch.manual_seed(seed)
    model = digits_cnn(x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    explainer = lrpfx.Explainer(model, rule, differentiable=True) if lam else None
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(batch):
            if lam:
                guided_step(explainer, opt, x[idx], y[idx], mask[idx], lam)
            else:
                plain_step(model, opt, x[idx], y[idx])
    return model.eval()


def marker_share(model: nn.Module, split: Split, rule=RULE) -> float:
    """Mean share of the label's |relevance| on the marker (the default program: no gradients needed)."""
    relevance = lrpfx.Explainer(model, rule)(split.x, target=split.y).relevance
    return lrpfx.relevance_share(relevance, split.mask).mean().item()


def evaluate(model: nn.Module, test: Split, shortcut: Split, rule=RULE) -> Dict[str, float]:
    return {"accuracy": accuracy(model, test.x, test.y), "clean accuracy": accuracy(model, test.clean, test.y),
            "marker share": marker_share(model, test, rule), "shortcut share": marker_share(model, shortcut, rule)}


def step_cost(train_split: Split, lam: float, rounds: int, batch: int = 64, rule=RULE) -> Dict[str, float]:
    """Median seconds of a plain step and a penalised step, timed in turn on the same batch (after a warm-up
    step each, which builds the program)."""
    x, y, mask = train_split.x[:batch], train_split.y[:batch], train_split.mask[:batch]
    torch.manual_seed(0)
    plain_model, guided_model = digits_cnn(), digits_cnn()
    plain_opt = torch.optim.Adam(plain_model.parameters(), lr=3e-3)
    guided_opt = torch.optim.Adam(guided_model.parameters(), lr=3e-3)
    explainer = lrpfx.Explainer(guided_model, rule, differentiable=True)
    steps = {"plain": lambda: plain_step(plain_model, plain_opt, x, y),
             "guided": lambda: guided_step(explainer, guided_opt, x, y, mask, lam)}
    for run in steps.values():
        run()
    times = {name: [] for name in steps}
    for _ in range(rounds):
        for name, run in steps.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(seeds: Sequence[int], lams: Sequence[float], epochs: int, rounds: int) -> Dict:
    rows: Dict[str, list] = {}
    for seed in seeds:
        train_split, test, shortcut = confounded_digits(seed)
        setups = {"trained without markers (reference)": (train_split.clean, 0.0, RULE),
                  "plain (CE)": (train_split.x, 0.0, RULE)}
        setups.update({f"guided, λ = {lam:g}": (train_split.x, lam, RULE) for lam in lams})
        # the same penalty on the plain input gradient: "right for the right reasons" (Ross et al. 2017)
        setups[f"guided by the input gradient, λ = {lams[0]:g}"] = (train_split.x, lams[0], "gradient")
        for name, (x, lam, rule) in setups.items():
            started = time.perf_counter()
            model = train(x, train_split.y, train_split.mask, lam, epochs, seed, rule=rule)
            result = evaluate(model, test, shortcut)
            result["train seconds"] = time.perf_counter() - started
            rows.setdefault(name, []).append(result)
            print(f"seed {seed} {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()), flush=True)
    cost = step_cost(confounded_digits(seeds[0])[0], lams[0], rounds)
    return {"rows": rows, "cost": cost}


def markdown(results: Dict, seeds, epochs: int, rounds: int) -> str:
    from bench.report import machine

    def cell(values):
        mean = statistics.mean(values)
        return f"{mean:.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")

    lines = ["# Explanation-guided training on confounded digits", "", f"Machine: {machine()}.", "",
             f"Digits CNN (lrpfx.demo.digits_cnn), Adam lr 3e-3, batch 64, {epochs} epochs, seeds {list(seeds)} "
             "(mean ± sd over seeds). Training: a 2×2 marker of ones at the position of the class (one of ten "
             "border positions); test: the marker at a random position. Penalty: share of the label's |R| "
             f"(rule {RULE!r}, differentiable program) on the marker; the last row puts the same penalty on the "
             "plain input gradient (rule 'gradient': Ross et al.'s \"right for the right reasons\"). Marker "
             "shares are measured on the test digits with the same rule, with the marker at a random position "
             "and at the class's position (as in training: where a model that uses the shortcut puts "
             "relevance). A 2×2 marker of ones takes "
             "some relevance from any model: the reference, trained without markers, shows how much.", "",
             "| training | test accuracy (random marker) | clean test accuracy | marker share, random marker | "
             "marker share, marker at the class's position | train seconds |", "|---|---|---|---|---|---|"]
    for name, results_of in results["rows"].items():
        cells = [cell([r[k] for r in results_of])
                 for k in ("accuracy", "clean accuracy", "marker share", "shortcut share")]
        seconds = statistics.mean(r["train seconds"] for r in results_of)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {seconds:.1f} |")
    cost = results["cost"]
    lines += ["", f"One training step, batch 64, timed in turn ({rounds} rounds, medians): plain "
              f"{cost['plain'] * 1e3:.1f} ms, with the relevance penalty {cost['guided'] * 1e3:.1f} ms: "
              f"**{cost['guided'] / cost['plain']:.1f}×** a plain step.", ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--lams", type=float, nargs="+", default=[1.0, 0.3, 3.0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "RESULTS_guided.md"))
    args = parser.parse_args(argv)
    seeds = list(range(args.seeds))
    results = run(seeds, args.lams, args.epochs, args.rounds)
    text = markdown(results, seeds, args.epochs, args.rounds)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
