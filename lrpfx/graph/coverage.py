"""What lrpfx knows of torch's Core ATen opset: for every op torch tags ``core``, the registry row that explains
it, the reason its value carries no relevance, or the reason lrpfx refuses it.

Everything a model computes reaches lrpfx either as an op a row names or, through the decomposition of
:mod:`lrpfx.graph.decompose`, as Core ATen pieces; so this table is the whole of lrpfx's coverage.
``python -m lrpfx.graph.coverage`` prints the counts that ``docs/ops.md`` shows.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, List, NamedTuple

import torch

from .ops import canonical_name
from .registry import REGISTRY

ROW, CONSTANT, REFUSED, UNCLASSIFIED = "row", "constant", "refused", "unclassified"


class Coverage(NamedTuple):
    op: torch._ops.OpOverload
    category: str  # ROW, CONSTANT, REFUSED or UNCLASSIFIED
    detail: str  # the row's label, or the reason


def core_aten_ops() -> List[torch._ops.OpOverload]:
    """Every overload of the installed torch tagged ``torch.Tag.core``, sorted by name."""
    found = []
    for qualified in torch._C._dispatch_get_all_op_names():  # every registered op, loaded or not
        namespace, _, name = qualified.partition("::")
        if namespace != "aten":
            continue
        packet, _, overload = name.partition(".")
        op = getattr(getattr(torch.ops.aten, packet), overload or "default")
        if torch.Tag.core in op.tags:
            found.append(op)
    return sorted(found, key=str)


def coverage_of(op: torch._ops.OpOverload) -> Coverage:
    name = canonical_name(op._opname)
    rows = REGISTRY.candidates("call_function", op, name, None)
    if rows:
        return Coverage(op, ROW, rows[0].label)
    constant = REGISTRY.constant("call_function", op, name)
    if constant is not None:
        return Coverage(op, CONSTANT, constant.constant)
    refused = REGISTRY.refusal("call_function", op, name)
    if refused is not None:
        return Coverage(op, REFUSED, refused.refusal)
    return Coverage(op, UNCLASSIFIED, "")


def core_coverage() -> List[Coverage]:
    return [coverage_of(op) for op in core_aten_ops()]


def counts() -> Dict[str, int]:
    """How many Core ATen overloads fall in each category."""
    tally = Counter(c.category for c in core_coverage())
    return {category: tally.get(category, 0) for category in (ROW, CONSTANT, REFUSED, UNCLASSIFIED)}


def markdown() -> str:
    """The counts table of ``docs/ops.md``, with the ops of each category and the reasons of the refusals."""
    table = core_coverage()
    tally = counts()
    lines = [f"Core ATen overloads in torch {torch.__version__.split('+')[0]}: {len(table)}", "",
             "| category | overloads |", "|---|---|"]
    lines += [f"| {category} | {tally[category]} |" for category in (ROW, CONSTANT, REFUSED)]
    reasons: Dict[str, List[str]] = {}
    for c in table:
        if c.category == REFUSED:
            reasons.setdefault(c.detail, []).append(str(c.op).replace("aten.", ""))
    lines += ["", "Refused, with the reason lrpfx gives:", ""]
    lines += [f"- {reason}: {', '.join(ops)}" for reason, ops in reasons.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
