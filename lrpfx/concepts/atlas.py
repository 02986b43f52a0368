"""Reference images of concepts: receptive-field crops of the top samples and the concept atlas figure.

A concept's reference image for one sample is the input region where its conditional relevance comes from: the
conditional relevance of the concept's most relevant *neuron* (one channel at one position) is non-zero only
inside that neuron's receptive field, so its support is the crop. The atlas shows, per concept, a row of
top-k crops with the concept's conditional heatmap on each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from ..errors import InputError
from .conditions import MaskFunction
from .relevance import explain_conditions


def neurons(shape: Tuple[int, ...]) -> MaskFunction:
    """One concept per element of a value of ``shape`` (without the batch axis), numbered in row-major order."""
    count = math.prod(shape)

    def onehot(indices, shape_):
        m = torch.zeros(count)
        m[list(indices)] = 1.0
        return m.view(shape_)

    return MaskFunction(onehot, count)


@dataclass
class Reference:
    """One reference image: sample index, the crop box ``(top, bottom, left, right)`` in input pixels, the cropped
    input ``[C, h, w]`` and the concept's conditional heatmap over it ``[h, w]``."""

    index: int
    box: Tuple[int, int, int, int]
    image: torch.Tensor
    heatmap: torch.Tensor


def reference(explainer, x: torch.Tensor, layer: str, channel: int, target: Optional[int] = None,
              index: int = 0, margin: int = 1) -> Reference:
    """The receptive-field crop of ``channel`` at ``layer`` for one sample ``x`` ``[1, C, H, W]``."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise InputError(f"reference needs one image [1, C, H, W], got shape {tuple(x.shape)}")
    e = explain_conditions(explainer, x, [{layer: [channel]}], target=target, intermediate=[layer])
    heatmap = e.relevance[0, 0].sum(0)
    at_layer = e.intermediate[layer][0, 0]  # [C, h, w]: the masked relevance, only `channel` non-zero
    shape = tuple(at_layer.shape)
    flat = at_layer.flatten()
    neuron = int(flat.argmax()) if flat.max() > 0 else int(flat.abs().argmax())
    single = explain_conditions(explainer, x, [{layer: neurons(shape)[neuron]}], target=target).relevance[0, 0]
    box = support_box(single.abs().sum(0), margin)
    top, bottom, left, right = box
    return Reference(index, box, x[0, :, top:bottom, left:right], heatmap[top:bottom, left:right])


def support_box(weights: torch.Tensor, margin: int = 1, share: float = 1e-6) -> Tuple[int, int, int, int]:
    """Bounding box ``(top, bottom, left, right)`` (exclusive ends) of the entries above ``share`` of the
    largest, grown by ``margin``; the whole map when nothing is above it."""
    H, W = weights.shape
    peak = weights.max()
    if not peak > 0:
        return 0, H, 0, W
    rows = torch.nonzero((weights > share * peak).any(1)).flatten()
    cols = torch.nonzero((weights > share * peak).any(0)).flatten()
    return (max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, H),
            max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, W))


def atlas_rows(explainer, sample: Callable[[int], Tuple[torch.Tensor, Optional[int]]], layer: str,
               concepts: Sequence[int], top: torch.Tensor, k: int = 6) -> List[List[Reference]]:
    """References of each concept's top-k samples: ``sample(i)`` returns ``(x [1, ...], target)`` of sample i;
    ``top`` is the ``[C, >=k]`` table of :class:`ConceptStats` (``top_relevance``)."""
    rows = []
    for c in concepts:
        row = []
        for i in top[c, :k].tolist():
            x, target = sample(i)
            row.append(reference(explainer, x, layer, c, target=target, index=i))
        rows.append(row)
    return rows


def render_atlas(rows: List[List[Reference]], labels: Sequence[str], path, title: str = "") -> None:
    """Write the atlas PNG: one row per concept, each crop shown as the image and, beside it, its heatmap."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), 2 * k, figsize=(1.2 * 2 * k, 1.35 * len(rows) + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (row, label) in enumerate(zip(rows, labels)):
        axes[r, 0].set_title(label, fontsize=7, loc="left")
        for j, ref in enumerate(row):
            img = ref.image.detach().float()
            img = (img - img.min()) / (img.max() - img.min() + 1e-12)
            axes[r, 2 * j].imshow(img.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if img.shape[0] == 1 else None)
            bound = float(ref.heatmap.abs().max()) or 1.0
            axes[r, 2 * j + 1].imshow(ref.heatmap.detach().float().numpy(), cmap="bwr", vmin=-bound, vmax=bound)
            axes[r, 2 * j + 1].set_title(f"#{ref.index}", fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
