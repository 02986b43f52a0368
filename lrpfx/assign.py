"""Stage 3, assign: one rule per classified node from a composite (:mod:`lrpfx.composites`), validated against the
node's kind, and the rule table that shows which mapping chose each rule."""
from __future__ import annotations

import fnmatch
from typing import Dict, Tuple

import torch
import torch.fx as fx

from .composites import Composite
from .errors import RuleError, UnsupportedOpError, unmatched_pattern
from .graph.nodes import op_name, source_line
from .kinds import WEIGHTED_KINDS, Kind, NodeInfo
from .program.program import RuleRow, RuleTable
from .rules import Pass, Rule, applies_to
from . import meta_keys


def choose_rules(infos: Dict[fx.Node, NodeInfo], composite: Composite) -> Tuple[Dict[fx.Node, Rule], Dict]:
    """One rule per activation node, validated against the node's kind, and the mapping that chose each."""
    affine = [n for n, i in infos.items() if i.kind in WEIGHTED_KINDS]
    first = affine[0] if affine else None
    rules: Dict[fx.Node, Rule] = {}
    reasons: Dict[fx.Node, str] = {}
    for n, info in infos.items():
        if info.kind in (Kind.INPUT, Kind.EMBEDDING):
            continue  # where relevance stops
        rule, reason = composite.rule_for(info, is_first=(n is first))
        if rule is None:
            raise UnsupportedOpError(_unsupported_message(info))
        if isinstance(rule, Pass) and not passes_through(info):
            raise RuleError(
                f"Pass() cannot apply to node '{n.name}' ({info.op}){source_line(n)}: the identity rule needs one "
                "activation input broadcast to one tensor output; assign Gradient() (or a rule of this kind) with "
                f"Composite(by_name={{'{info.name}': Gradient()}})")
        if not applies_to(rule, info.kind):
            raise RuleError(
                f"rule {rule.describe()} cannot apply to node '{n.name}' ({info.op}, kind '{info.kind}')"
                f"{source_line(n)}; assign a rule that fits this kind with "
                f"Composite(by_name={{'{info.name}': ...}})")
        rules[n], reasons[n] = rule, reason
    _check_patterns_match(infos, composite)
    return rules, reasons


def _check_patterns_match(infos: Dict[fx.Node, NodeInfo], composite: Composite) -> None:
    """A ``by_name`` glob that names no node is a typo or a pattern meant for another model: say so."""
    names = sorted({i.name for i in infos.values()} | {n.name for n in infos})
    for pattern, _ in composite.by_name:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in names):
            raise unmatched_pattern("by_name", pattern, names)


def rule_table(infos: Dict[fx.Node, NodeInfo], rules: Dict[fx.Node, Rule], reasons: Dict) -> RuleTable:
    table = RuleTable()
    for n, rule in rules.items():
        info = infos[n]
        label = rule.describe()
        if info.folded_into is not None:
            label += f" (BatchNorm '{infos[info.folded_into].name}' folded in)"
        if info.fold_from is not None:
            label = f"folded into the rule of '{info.fold_from.name}'"
        table.append(RuleRow(n.name, info.name if info.module is not None else "", info.op, info.kind, label,
                             reasons[n], info.shape))
    return table


def passes_through(info: NodeInfo) -> bool:
    """Whether the identity rule can apply: one activation input, broadcast (or equal) to one tensor output."""
    value = info.node.meta[meta_keys.VALUE]
    if info.x is None or not value.is_tensor:
        return False
    x_shape = info.x.meta[meta_keys.VALUE].shape
    try:
        return tuple(torch.broadcast_shapes(x_shape, value.shape)) == tuple(value.shape)
    except RuntimeError:
        return False


def _why_unknown(info: NodeInfo) -> str:
    refusal = info.spec.refusal if info.spec is not None else ""
    if refusal:
        return f"lrpfx has no rule for it by design: {refusal}."
    return "lrpfx does not know how relevance flows through this op."


def _unsupported_message(info: NodeInfo) -> str:
    n = info.node
    key = f"Composite(by_name={{'{info.name}': ...}})"
    ways = ["Gradient() to route the relevance by the op's gradient (exact for ops that select or move values: "
            "max/min over an axis, sort, topk; an approximation for ops that mix values)"]
    if passes_through(info):
        ways.insert(0, "Pass() if it is elementwise (the relevance passes to its input unchanged)")
    return (
        f"no relevance rule for node '{info.name}' ({info.op}){source_line(n)}. {_why_unknown(info)} "
        f"Assign a rule with {key}: " + "; or ".join(ways) +
        ". Or keep the module that contains it whole with leaf_modules=[...] and assign that module's rule by name."
        + _SCAN_HINT.get(op_name(n), "")
    )


# an exp of an activation is most often a recurrence's decay or weight (docs/hybrid.md)
_SCAN_HINT = {"exp": " If it is the decay or weight of a state-space or linear-attention layer, rule='mamba-lrp' "
                     "holds the layer's parameters constant (MambaLRP)."}


