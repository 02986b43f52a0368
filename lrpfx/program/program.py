"""The relevance program as users hold it: the rewritten ``fx.GraphModule``, its rule table and the composite
that chose the rules. It prints (``.code``), draws (``.to_dot()``), saves (``.save(path)``) and runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.fx as fx

from .. import locks
from ..composites import Composite
from .dot import to_dot
from .save import save


@dataclass(frozen=True)
class RuleRow:
    """One row of :meth:`RelevanceProgram.rule_table`."""

    node: str
    module: str
    op: str
    kind: str
    rule: str
    chosen_by: str
    shape: Tuple[int, ...]

    def as_dict(self) -> Dict[str, Any]:
        return dict(self.__dict__)


class RuleTable(list):
    """A list of :class:`RuleRow` that prints as an aligned text table."""

    def __str__(self) -> str:
        header = ("node", "module", "op", "kind", "rule", "chosen by", "shape")
        rows = [header] + [(r.node, r.module, r.op, r.kind, r.rule, r.chosen_by, str(tuple(r.shape))) for r in self]
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)

    def as_dicts(self) -> List[Dict[str, Any]]:
        return [r.as_dict() for r in self]


@dataclass
class RelevanceProgram:
    """The rewritten graph: forward pass, then one relevance step per node. Call it like the model plus
    ``target``; it returns ``(output, input_relevances[, intermediate])``."""

    graph_module: fx.GraphModule
    rows: RuleTable
    composite: Composite
    differentiable: bool = False  # built in the differentiable form: runs with autograd recording

    @property
    def code(self) -> str:
        return self.graph_module.code

    def rule_table(self) -> RuleTable:
        return self.rows

    def __call__(self, *inputs, target=None):
        """Run the program: ``target`` is None (argmax), an int, a LongTensor [B] or an initial relevance."""
        if isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((inputs[0].shape[0],), target, dtype=torch.long, device=inputs[0].device)
        with locks.running(), torch.enable_grad() if self.differentiable else torch.no_grad():
            return self.graph_module(*inputs, target)

    def to_dot(self, **options) -> str:
        """Graphviz DOT text of the program (:func:`lrpfx.program.dot.to_dot`)."""
        return to_dot(self, **options)

    def save(self, path, example_inputs=None, **options):
        """Write the program as ``.dot``, ``.svg``/``.png`` (Graphviz), ``.py`` or ``.pt2`` (``torch.export``;
        ``example_inputs`` default to random inputs of the built shapes): :func:`lrpfx.program.save.save`."""
        return save(self, path, example_inputs, **options)
