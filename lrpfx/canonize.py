"""Graph passes over the classified nodes: BatchNorm folding and non-negativity.

Both only annotate :class:`~lrpfx.ops.NodeInfo` objects; the user's modules are never touched. The folded
weights are computed inside the program on every call, so they always reflect the current parameters.
"""
from __future__ import annotations

from typing import Dict

import torch.fx as fx

from .ops import NodeInfo

_FOLDABLE_KINDS = {"linear", "conv", "conv_transpose"}
# kinds whose output is non-negative whenever all their activation inputs are
_NONNEG_PRESERVING = {"max_pool", "avg_pool", "structural", "identity", "reduce", "add", "mul"}


def fold_batchnorms(infos: Dict[fx.Node, NodeInfo]) -> None:
    """Mark each BatchNorm that directly follows an affine node with no other consumer as folded into it."""
    for info in infos.values():
        if info.kind != "batchnorm" or info.x is None:
            continue
        producer = infos.get(info.x)
        if producer is None or producer.kind not in _FOLDABLE_KINDS or len(info.x.users) != 1:
            continue
        if producer.kind == "linear" and len(producer.shape) != 2:
            continue  # BatchNorm's channel axis 1 is not Linear's feature axis
        info.fold_from, producer.folded_into = producer, info.node


def mark_nonnegative(infos: Dict[fx.Node, NodeInfo]) -> None:
    """Propagate "known >= 0" from ReLU-like outputs through pooling, structural ops, sums and products."""
    for info in infos.values():  # graph order: inputs are decided before their users
        if info.nonneg or info.kind not in _NONNEG_PRESERVING or not info.activations:
            continue
        if info.kind == "add" and any(s < 0 for s in info.extra.get("signs", ())):
            continue
        if info.kind == "add" and len(info.extra.get("terms", ())) != _operand_count(info):
            continue  # a constant summand may be negative
        info.nonneg = all(infos[a].nonneg for a in info.activations)


def _operand_count(info: NodeInfo) -> int:
    return len(info.node.args[:2])
