"""Recurrent benchmark: one LRP explanation of an LSTM / GRU classifier against one input gradient.

    python -m bench.recurrent                 # batch 8, 50 steps, 64 features, hidden 128, 2 layers, bidirectional
    python -m bench.recurrent --rounds 5 --steps 100

Per cell (LSTM, GRU), timed side by side and round-robin after a warm-up that builds the programs, medians of
``--rounds``: ``gradient`` (forward and backward of the target logit through the fused PyTorch layer, the unit),
``lrpfx epsilon`` (one explanation: the forward, then the relevance step that recomputes the time steps from the
parameters and runs backward through time in Python loops). Prints a Markdown table of times and ratios.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import lrpfx


class Classifier(nn.Module):
    def __init__(self, cell, features, hidden, layers, classes=5):
        super().__init__()
        self.rnn = cell(features, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.fc = nn.Linear(2 * hidden, classes)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def gradient(model, x, target):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), x)
    return g


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"batch {args.batch}, {args.steps} steps, {args.features} features, hidden {args.hidden}, "
          f"{args.layers} layers, bidirectional, float32, {args.threads} threads, median of {args.rounds}\n")
    print("| cell | gradient (ms) | lrpfx epsilon (ms) | ratio |")
    print("|---|---|---|---|")
    for name, cell in (("LSTM", nn.LSTM), ("GRU", nn.GRU)):
        model = Classifier(cell, args.features, args.hidden, args.layers).eval()
        x = torch.randn(args.batch, args.steps, args.features)
        target = model(x).argmax(1)
        explainer = lrpfx.Explainer(model, "epsilon")
        runs = {"gradient": lambda: gradient(model, x, target),
                "lrpfx": lambda: explainer(x, target=target)}
        for run in runs.values():  # warm-up: builds the program
            run()
        times = {k: [] for k in runs}
        for _ in range(args.rounds):
            for k, run in runs.items():
                start = time.perf_counter()
                run()
                times[k].append(time.perf_counter() - start)
        g, r = (statistics.median(times[k]) * 1e3 for k in ("gradient", "lrpfx"))
        print(f"| {name} | {g:.1f} | {r:.1f} | {r / g:.1f}x |")


if __name__ == "__main__":
    main()
