"""The bundled demo: train a small CNN on scikit-learn's digits and draw relevance maps for several rules.

Everything it needs ships with scikit-learn (the 8x8 digits, 1797 samples), so it runs offline in seconds.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

import lrpfx
from lrpfx.eval import pixel_flipping

# TorchLRP's figure: label, rule key, pattern kind (None: no patterns needed)
DEMO_RULES: Sequence[Tuple[str, str, object]] = (
    ("gradient × input", "gradient*input", None),
    ("epsilon", "epsilon(0.1)", None),
    ("gamma+epsilon", "gamma+epsilon", None),
    ("alpha1beta0", "alpha1beta0", None),
    ("alpha2beta1", "alpha2beta1", None),
    ("PatternNet (all)", "patternnet", "all"),
    ("PatternNet (positive)", "patternnet", "positive"),
    ("PatternAttribution (all)", "patternattribution", "all"),
    ("PatternAttribution (positive)", "patternattribution", "positive"),
)
# rules whose faithfulness the demo measures by pixel flipping
FLIPPING = ("epsilon", "alpha2beta1", "PatternAttribution (all)")


def digits_cnn(side: int = 8) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * (side // 2) ** 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )


def load_mnist_tensors(root: str = "data"):
    """MNIST via torchvision (downloads when online), scaled to [0, 1], shape [N, 1, 28, 28]."""
    from torchvision.datasets import MNIST

    train, test = MNIST(root, train=True, download=True), MNIST(root, train=False, download=True)
    as_tensors = lambda d: (d.data.unsqueeze(1).float() / 255.0, d.targets.long())  # noqa: E731
    return as_tensors(train), as_tensors(test)


def load_digits_tensors(seed: int = 0):
    """Digits scaled to [0, 1], shape [N, 1, 8, 8], split 80/20 with a fixed permutation."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    split = int(0.8 * len(x))
    return (x[order[:split]], y[order[:split]]), (x[order[split:]], y[order[split:]])


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 15, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def explain_all(model: nn.Module, x: torch.Tensor, patterns: Dict[str, object], rules=DEMO_RULES):
    return {label: lrpfx.explain(model, x, rule, patterns=patterns.get(kind)) for label, rule, kind in rules}


def render(x: torch.Tensor, labels: List[int], predictions: List[int], maps: Dict[str, torch.Tensor],
           path: Path) -> Path:
    """One column per digit (``true / pred`` above it), one row per method; each map is scaled to its own
    largest magnitude, so the colour bar reads as relevance / max|relevance| (red positive, blue negative)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input", x)] + list(maps.items())
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n + 3.2, 1.25 * len(rows)), squeeze=False)
    fig.subplots_adjust(left=0.25, right=0.88, top=0.95, bottom=0.02, wspace=0.08, hspace=0.12)
    shown = None
    for i, (label, images) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            img = images[j, 0].detach().numpy()
            if label == "input":
                ax.imshow(img, cmap="gray")
                wrong = labels[j] != predictions[j]
                ax.set_title(f"{labels[j]} / {predictions[j]}", fontsize=9, color="red" if wrong else "black")
            else:
                bound = max(abs(img).max(), 1e-12)
                shown = ax.imshow(img / bound, cmap="bwr", vmin=-1, vmax=1)  # zero at white
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=9, rotation=0, ha="right", va="center", labelpad=6)
    fig.text(0.25, 0.985, "true / pred", fontsize=9, va="top")
    if shown is not None:
        bar = fig.colorbar(shown, cax=fig.add_axes([0.9, 0.1, 0.015, 0.7]))  # its own axes: maps keep their size
        bar.set_label("relevance / max |relevance| (red +, blue −)", fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(out: str = "lrpfx_digits.png", epochs: int = 15, dataset: str = "digits", seed: int = 0) -> Dict[str, float]:
    """Train, fit patterns, explain 9 test digits with TorchLRP's rules, measure pixel flipping, draw. The same
    arguments give the same model, numbers and figure."""
    start = time.time()
    torch.manual_seed(seed)  # before the model is built: its initial weights are part of the result
    if dataset == "mnist":
        (x_train, y_train), (x_test, y_test) = load_mnist_tensors()
    else:
        (x_train, y_train), (x_test, y_test) = load_digits_tensors()
    model = train(digits_cnn(x_train.shape[-1]), x_train, y_train, epochs=epochs, seed=seed)
    acc = accuracy(model, x_test, y_test)
    print(f"trained a small CNN on {dataset} ({len(x_train)} train / {len(x_test)} test) "
          f"in {time.time() - start:.1f}s: test accuracy {acc:.1%}")
    patterns = {kind: lrpfx.fit_patterns(model, x_train.split(256), kind=kind, progress=False)
                for kind in ("all", "positive")}
    print("fitted PatternNet patterns (all, positive) in one pass over the training set")
    x = x_test[:9]
    with torch.no_grad():
        logits = model(x)
    predictions = logits.argmax(1).tolist()
    maps = explain_all(model, x, patterns)
    path = render(x, y_test[:9].tolist(), predictions, maps, Path(out))
    print(f"predictions of the 9 digits: {predictions} (true {y_test[:9].tolist()})")
    results = {"accuracy": acc}
    print("pixel flipping over the test set (area between random and most-relevant-first deletion; > 0 is "
          "better than chance):")
    rules = {label: (rule, kind) for label, rule, kind in DEMO_RULES}
    for label in FLIPPING:
        rule, kind = rules[label]
        relevance = lrpfx.explain(model, x_test, rule, patterns=patterns.get(kind))
        area = pixel_flipping(model, x_test, relevance)["area"].item()
        results[label] = area
        print(f"  {label:<26} {area:+.3f}")
    print(f"wrote {path.resolve()} (rows: the input and {len(maps)} methods; columns: 9 test digits)")
    return results
