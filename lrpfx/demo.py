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

DEMO_RULES: Sequence[Tuple[str, str]] = (
    ("gradient × input", "gradient*input"),
    ("epsilon", "epsilon(0.1)"),
    ("gamma+epsilon", "gamma+epsilon"),
    ("alpha1beta0", "alpha1beta0"),
    ("alpha2beta1", "alpha2beta1"),
    ("epsilon-plus-flat", "epsilon-plus-flat"),
)


def digits_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10),
    )


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


def explain_all(model: nn.Module, x: torch.Tensor, rules=DEMO_RULES) -> Dict[str, torch.Tensor]:
    return {label: lrpfx.explain(model, x, rule) for label, rule in rules}


def render(x: torch.Tensor, predictions: List[int], maps: Dict[str, torch.Tensor], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("input", x)] + list(maps.items())
    n = x.shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.4 * len(rows)), squeeze=False)
    for i, (label, images) in enumerate(rows):
        for j in range(n):
            ax = axes[i][j]
            img = images[j, 0].detach().numpy()
            if label == "input":
                ax.imshow(img, cmap="gray")
                ax.set_title(f"pred {predictions[j]}", fontsize=8)
            else:
                bound = max(abs(img).max(), 1e-12)
                ax.imshow(img, cmap="bwr", vmin=-bound, vmax=bound)  # zero at white
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(out: str = "lrpfx_digits.png", epochs: int = 15) -> Dict[str, float]:
    start = time.time()
    (x_train, y_train), (x_test, y_test) = load_digits_tensors()
    model = train(digits_cnn(), x_train, y_train, epochs=epochs)
    acc = accuracy(model, x_test, y_test)
    print(f"trained a small CNN on scikit-learn digits ({len(x_train)} train / {len(x_test)} test) "
          f"in {time.time() - start:.1f}s: test accuracy {acc:.1%}")
    x = x_test[:9]
    with torch.no_grad():
        logits = model(x)
    predictions = logits.argmax(1).tolist()
    maps = explain_all(model, x)
    for label, r in maps.items():
        share = (r.flatten(1).sum(1) / logits.max(1).values).mean().item()
        print(f"  {label:<18} relevance sum / target logit: {share:6.3f}")
    path = render(x, predictions, maps, Path(out))
    print(f"wrote {path.resolve()} (rows: input and {len(maps)} rules, columns: 9 test digits)")
    return {"accuracy": acc}
