"""Graph passes over the classified nodes: BatchNorm folding, non-negativity, relevance support.

They only annotate :class:`~lrpfx.graph.classify.NodeInfo` objects; the user's modules are never touched. The folded
weights are computed inside the program on every call, so they always reflect the current parameters.
"""
from __future__ import annotations

from typing import Dict

import torch.fx as fx
from torch import nn

from .. import rules as R
from .classify import NodeInfo

_FOLDABLE_KINDS = {"linear", "conv", "conv_transpose"}
# kinds whose output is non-negative whenever all their activation inputs are
_NONNEG_PRESERVING = {"max_pool", "avg_pool", "structural", "identity", "reduce", "add", "mul"}


# rules that act on the folded affine map; PatternNet keeps BatchNorm apart (its patterns are per layer)
_FOLDING_RULES = (R.Epsilon, R.Gamma, R.ZPlus, R.AlphaBeta, R.ZBox, R.Flat, R.WSquare, R.Gradient)


def fold_batchnorms(infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, R.Rule]) -> None:
    """Mark each BatchNorm that directly follows an affine node with no other consumer as folded into it."""
    for info in infos.values():
        if info.kind != "batchnorm" or info.x is None:
            continue
        producer = infos.get(info.x)
        if producer is None or producer.kind not in _FOLDABLE_KINDS or producer.layer is None or len(info.x.users) != 1:
            continue
        if not isinstance(rules.get(producer.node), _FOLDING_RULES):
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
        if info.kind == "structural" and not info.extra.get("keeps_sign", False):
            continue  # interpolation overshoots; constant padding may be negative
        info.nonneg = all(infos[a].nonneg for a in info.activations)


def _operand_count(info: NodeInfo) -> int:
    return len(info.node.args[:2])


# rules whose input relevance is ``x * (something finite)``: zero wherever the input value is zero
_PROPORTIONAL = (R.Epsilon, R.Gamma, R.ZPlus, R.AlphaBeta, R.Norm, R.NormIdentity)


def _proportional(info: NodeInfo, rule: R.Rule) -> bool:
    if info.kind == "layer_norm":
        return isinstance(rule, R.NormIdentity)
    return isinstance(rule, _PROPORTIONAL) and info.kind != "structural"


def _transparent(info: NodeInfo, rule: R.Rule) -> bool:
    """Relevance reaches an input element only through output elements that are zero whenever it is zero."""
    if isinstance(rule, R.Pass):
        return info.kind in ("identity", "scale") or (info.kind == "activation" and info.extra.get("zero_at_zero"))
    if isinstance(rule, (R.WinnerTakesAll, R.MulUniform)):
        return True
    if isinstance(rule, R.Structural):
        return info.kind == "max_pool" or (info.kind == "structural" and info.extra.get("copies", False)) \
            or info.kind == "identity"
    return False


def mark_positive_only(infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, R.Rule], output: fx.Node,
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
            ok = ok and (_proportional(ui, rules[u]) or (_transparent(ui, rules[u]) and vanishes.get(u, False)))
        vanishes[n] = ok
    for n, info in infos.items():
        owner = info.kind in ("linear", "conv", "conv_transpose") and info.folded_into is None
        owner = owner or info.fold_from is not None
        if not (owner or info.kind == "add") or n is output:
            continue
        users = [u for u in n.users if u in infos]
        if len(users) != 1:
            continue
        u = users[0]
        positive_only = (infos[u].kind == "activation" and infos[u].extra.get("relu", False)
                         and isinstance(rules.get(u), R.Pass) and vanishes.get(u, False))
        info.positive_only = positive_only and owner
        if positive_only and _plain_relu(infos[u], n):
            info.extra["relu_output"] = u  # max(z, 0) is already there: the step divides by it, z can be freed


def _plain_relu(info: NodeInfo, x: fx.Node) -> bool:
    """A ReLU of ``x`` whose output is exactly ``max(x, 0)`` (not ReLU6, which caps it)."""
    label = info.op.lower()
    return info.x is x and not isinstance(info.module, nn.ReLU6) and "relu6" not in label \
        and "hardtanh" not in label
