"""Pruning by relevance against pruning by weight magnitude and at random (bench/RESULTS_pruning.md,
docs/pruning.md, docs/pruning.png).

Three models are trained on scikit-learn's 8x8 digits (lrpfx/demo.py: same split, Adam, batches of 64): the demo
CNN, a small residual network (a stem conv, three residual blocks of two 3x3 convs, global average pooling) and
a small transformer (the 16 2x2 patches of a digit as tokens, 2 pre-norm layers of 4-head attention and a ReLU
MLP, mean pooling). Parameter relevance is summed over ``--explain`` training digits, each explained for its
label with the Explainer's default composite, through ``explain_dataset(..., parameters=True)``. Then, per
layer, ``fraction`` of the units are masked (``lrpfx.prune``, scope "layer") in three orders — least relevant
first, smallest L1 weight norm (weights and bias of the unit) first, and at random (``--seeds`` orders per model)
— and the test accuracy (360 digits) is measured. The classifier is never pruned. Everything is repeated for
``--models`` training seeds (initial weights and batch order); cells are mean ± standard deviation over all runs.
Run: ``python -m bench.pruning`` (about six minutes on 2 cores).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.utils.data import TensorDataset

import lrpfx
from lrpfx import demo

FRACTIONS = [i / 10 for i in range(10)]
ORDERS = ("relevance", "magnitude", "random")


class Block(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(width, width, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2 = nn.Conv2d(width, width, 3, padding=1), nn.ReLU()

    def forward(self, x):
        return self.relu2(x + self.conv2(self.relu1(self.conv1(x))))


class ResNet(nn.Module):
    def __init__(self, width: int = 16, blocks: int = 3):
        super().__init__()
        self.stem, self.relu = nn.Conv2d(1, width, 3, padding=1), nn.ReLU()
        self.blocks = nn.Sequential(*[Block(width) for _ in range(blocks)])
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(width, 10)

    def forward(self, x):
        return self.fc(self.pool(self.blocks(self.relu(self.stem(x)))).flatten(1))


class Layer(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm1, self.att = nn.LayerNorm(width), nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.ReLU(), \
            nn.Linear(2 * width, width)

    def forward(self, x):
        h = self.norm1(x)
        x = x + self.att(h, h, h, need_weights=False)[0]
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Transformer(nn.Module):
    """The 8x8 digit as 16 tokens of its 2x2 patches."""

    def __init__(self, width: int = 32, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.position = nn.Parameter(torch.randn(1, 16, width) * 0.1)
        self.layers = nn.Sequential(*[Layer(width, heads) for _ in range(layers)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, 10)

    def forward(self, x):
        tokens = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(x.shape[0], 16, 4)  # [B, 16 patches, 4 pixels]
        h = self.layers(self.embed(tokens) + self.position)
        return self.head(self.norm(h).mean(1))


# each panel: (model, unit kind, which parameters' relevance selects the units)
PANELS = {
    "CNN, channels": ("cnn", "channel", lambda name: True),
    "CNN, neurons": ("cnn", "neuron", lambda name: True),
    "ResNet, channels": ("resnet", "channel", lambda name: True),
    "Transformer, heads": ("transformer", "head", lambda name: True),
    "Transformer, MLP neurons": ("transformer", "neuron", lambda name: ".fc1." in name),
}
MODELS: Dict[str, Callable[[], nn.Module]] = {"cnn": demo.digits_cnn, "resnet": ResNet, "transformer": Transformer}
EPOCHS = {"cnn": 15, "resnet": 15, "transformer": 30}


def train(name: str, x, y, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # demo.train seeds the batch order, not the initial weights
    return demo.train(MODELS[name](), x, y, epochs=EPOCHS[name], seed=seed)


def dataset_relevance(model: nn.Module, x, y) -> Dict[str, torch.Tensor]:
    """Parameter relevance summed over ``x``, each sample explained for its label (default composite)."""
    with tempfile.TemporaryDirectory() as folder:
        view = lrpfx.explain_dataset(model, TensorDataset(x, y), "auto", folder, batch_size=128, target="label",
                                     store="float32", progress=False, parameters=True)
        return {name: value.float() for name, value in view.parameters().items()}


def curves(model, relevance, unit: str, selects, x_test, y_test, seeds: int) -> Dict[str, List[List[float]]]:
    """Test accuracy per fraction for each order (a list of runs per order: one, or one per random seed)."""
    params = dict(model.named_parameters())
    chosen = [n for n in params if selects(n)]
    generator = torch.Generator().manual_seed(1234)
    scores = {"relevance": [{n: relevance[n] for n in chosen if n in relevance}],
              "magnitude": [{n: params[n].detach().abs() for n in chosen}],
              "random": [{n: torch.rand(params[n].shape, generator=generator) for n in chosen} for _ in range(seeds)]}
    return {order: [[demo.accuracy(lrpfx.prune(model, s, f, unit=unit), x_test, y_test) for f in FRACTIONS]
                     for s in runs] for order, runs in scores.items()}


def table(results: Dict[str, Dict[str, List[List[float]]]]) -> str:
    lines = []
    for panel, by_order in results.items():
        lines += [f"### {panel}", "", "| fraction masked | " + " | ".join(ORDERS) + " |", "|---" * 4 + "|"]
        for i, f in enumerate(FRACTIONS):
            cells = [_cell([run[i] for run in by_order[o]]) for o in ORDERS]
            lines.append(f"| {f:.1f} | " + " | ".join(cells) + " |")
        means = [_cell([statistics.mean(run[1:]) for run in by_order[o]]) for o in ORDERS]
        lines += ["| **mean, 0.1–0.9** | " + " | ".join(f"**{m}**" for m in means) + " |", ""]
    return "\n".join(lines)


def _cell(values: List[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def figure(results, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(3.2 * len(results), 3.0), sharey=True)
    colours = {"relevance": "tab:red", "magnitude": "tab:blue", "random": "tab:gray"}
    for ax, (panel, by_order) in zip(axes, results.items()):
        for order in ORDERS:
            runs = torch.tensor(by_order[order]) * 100
            mean = runs.mean(0)
            ax.plot(FRACTIONS, mean, marker="o", ms=3, color=colours[order], label=order)
            if runs.shape[0] > 1:
                spread = runs.std(0)
                ax.fill_between(FRACTIONS, mean - spread, mean + spread, color=colours[order], alpha=0.2)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("fraction of units masked")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explain", type=int, default=512, help="training digits the relevance is summed over")
    parser.add_argument("--seeds", type=int, default=5, help="random orders per trained model")
    parser.add_argument("--models", type=int, default=3, help="training seeds per architecture")
    parser.add_argument("--figure", default="docs/pruning.png")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    (x_train, y_train), (x_test, y_test) = demo.load_digits_tensors()
    results: Dict[str, Dict[str, List[List[float]]]] = {p: {o: [] for o in ORDERS} for p in PANELS}
    for seed in range(args.models):
        for name in MODELS:
            t = time.perf_counter()
            model = train(name, x_train, y_train, seed)
            trained_s = time.perf_counter() - t
            t = time.perf_counter()
            relevance = dataset_relevance(model, x_train[:args.explain], y_train[:args.explain])
            print(f"{name} seed {seed}: trained in {trained_s:.1f} s, test accuracy "
                  f"{100 * demo.accuracy(model, x_test, y_test):.1f}%, parameter relevance of {args.explain} "
                  f"digits in {time.perf_counter() - t:.1f} s", flush=True)
            for panel, (m, unit, selects) in PANELS.items():
                if m == name:
                    for order, runs in curves(model, relevance, unit, selects, x_test, y_test, args.seeds).items():
                        results[panel][order] += runs
    print(table(results))
    figure(results, args.figure)


if __name__ == "__main__":
    main()
