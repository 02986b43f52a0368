"""Graph passes over the classified nodes: BatchNorm folding, non-negativity, relevance support.

They only annotate :class:`~lrpfx.kinds.NodeInfo` objects; the user's modules are never touched. The folded
weights are computed inside the program on every call, so they always reflect the current parameters.
"""
from __future__ import annotations

from typing import Dict

import torch.fx as fx

from ..kinds import WEIGHTED_KINDS, Kind, Moves, NodeInfo
from ..rules import Pass, Rule

# kinds whose output is non-negative whenever all their activation inputs are
_NONNEG_PRESERVING = {Kind.MAX_POOL, Kind.AVG_POOL, Kind.STRUCTURAL, Kind.IDENTITY, Kind.REDUCE, Kind.ADD, Kind.MUL}


def fold_batchnorms(infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, Rule]) -> None:
    """Mark each BatchNorm that directly follows an affine node with no other consumer as folded into it."""
    for info in infos.values():
        if info.kind != Kind.BATCHNORM or info.x is None:
            continue
        producer = infos.get(info.x)
        if producer is None or producer.kind not in WEIGHTED_KINDS or producer.layer is None or len(info.x.users) != 1:
            continue
        if not getattr(rules.get(producer.node), "folds_batchnorm", False):
            continue  # PatternNet keeps BatchNorm apart (its patterns are per layer)
        if producer.kind == Kind.LINEAR and len(producer.shape) != 2:
            continue  # BatchNorm's channel axis 1 is not Linear's feature axis
        info.fold_from, producer.folded_into = producer, info.node


def mark_nonnegative(infos: Dict[fx.Node, NodeInfo]) -> None:
    """Propagate "known >= 0" from ReLU-like outputs through pooling, structural ops, sums and products."""
    for info in infos.values():  # graph order: inputs are decided before their users
        if info.nonneg or info.kind not in _NONNEG_PRESERVING or not info.activations:
            continue
        if info.kind == Kind.ADD and any(s < 0 for s in info.facts.signs):
            continue
        if info.kind == Kind.ADD and len(info.facts.terms) != _operand_count(info):
            continue  # a constant summand may be negative
        if isinstance(info.facts, Moves) and not info.facts.keeps_sign:
            continue  # interpolation overshoots; constant padding may be negative
        info.nonneg = all(infos[a].nonneg for a in info.activations)


def _operand_count(info: NodeInfo) -> int:
    return len(info.node.args[:2])


def _vanishes_with_input(info: NodeInfo, rule: Rule, output_vanishes: bool) -> bool:
    """Whether the relevance a rule sends to an input is zero wherever that input's value is zero: a
    proportional rule (``x * c``), or one that routes relevance only along elements equal to the input's while
    the node's own relevance vanishes with its value."""
    return (rule.proportional and info.kind != Kind.STRUCTURAL) or (rule.keeps_zeros(info) and output_vanishes)


def mark_positive_only(infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, Rule], output: fx.Node,
                       proportional_start: bool) -> None:
    """Find affine steps whose incoming relevance is provably zero wherever their output ``z <= 0``.

    Walking backwards, a node's relevance vanishes where its value vanishes when every consumer's rule is
    proportional to its input (``x * c``) or routes relevance only along elements equal to the input's
    (ReLU and other ``f(0) = 0`` activations under Pass, copies, winner-takes-all, uniform products), and the
    start is ``output * onehot``. An affine output consumed only by a ReLU under Pass then has zero relevance
    wherever ``z <= 0``, so the generalized Gamma rule can skip its negative branch: the skipped terms are
    exactly zero, which saves a transposed product per layer.
    """
    vanishes: Dict[fx.Node, bool] = {}
    for n in reversed(list(infos)):
        consumers = [u for u in n.users if u in infos and u in rules]
        ok = proportional_start if n is output else True
        for u in consumers:
            ui = infos[u]
            if ui.fold_from is not None:  # a BatchNorm consuming its folded conv: no relevance flows that way
                continue
            ok = ok and _vanishes_with_input(ui, rules[u], vanishes.get(u, False))
        vanishes[n] = ok
    for n, info in infos.items():
        owner = info.kind in WEIGHTED_KINDS and info.folded_into is None
        owner = owner or info.fold_from is not None
        if not (owner or info.kind == Kind.ADD) or n is output:
            continue
        users = [u for u in n.users if u in infos]
        if len(users) != 1:
            continue
        u = users[0]
        positive_only = (infos[u].kind == Kind.ACTIVATION and infos[u].facts.relu
                         and isinstance(rules.get(u), Pass) and vanishes.get(u, False))
        info.positive_only = positive_only and owner
        if positive_only and plain_relu(infos[u], n):
            info.relu_output = u  # max(z, 0) is already there: the step divides by it, z can be freed


def plain_relu(info: NodeInfo, x: fx.Node) -> bool:
    """A ReLU of ``x`` whose output is exactly ``max(x, 0)`` (not ReLU6, which caps it)."""
    return info.x is x and not (info.spec is not None and info.spec.capped)
