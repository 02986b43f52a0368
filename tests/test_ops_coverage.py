"""Coverage by construction: every Core ATen op of the installed torch has a registry row, is constant by design,
or is refused with a reason; ops no row names are decomposed into Core ATen before they are refused;
``register_op`` takes ops of several inputs; docs/ops.md states the counts the registry gives."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.graph import coverage
from tests.helpers.lrp0 import assert_lrp0_is_gradient_times_input, build, randn

FRONTENDS = ["fx", "export"]
PAGE = Path(__file__).resolve().parent.parent / "docs" / "ops.md"
pytestmark = pytest.mark.usefixtures("one_thread")


# ---- the Core ATen table ---------------------------------------------------------------------------------------
def test_every_core_aten_op_has_a_row_is_constant_or_is_refused_with_a_reason():
    table = coverage.core_coverage()
    assert len(table) > 150  # the installed torch's Core ATen opset, every overload tagged torch.Tag.core
    unclassified = [str(c.op) for c in table if c.category == coverage.UNCLASSIFIED]
    assert not unclassified, f"Core ATen ops lrpfx says nothing about: {unclassified}"
    assert all(c.detail for c in table)  # a row's label, or the reason
    by_op = {str(c.op): c.category for c in table}
    assert by_op["aten.convolution.default"] == by_op["aten.masked_scatter.default"] == coverage.ROW
    assert by_op["aten.eq.Tensor"] == by_op["aten.sym_size.int"] == by_op["aten.var.correction"] == coverage.CONSTANT
    assert by_op["aten.cumsum.default"] == by_op["aten.maximum.default"] == coverage.ROW  # a mixing map, a winner
    assert by_op["aten.scatter_reduce.two"] == by_op["aten.floor.default"] == coverage.REFUSED


def test_the_docs_page_states_the_registrys_counts():
    text = PAGE.read_text()
    stated = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| (row|constant|refused) \| (\d+) \|$", text, re.M)}
    counts = coverage.counts()
    assert stated == {k: counts[k] for k in ("row", "constant", "refused")}, \
        "docs/ops.md is out of date: paste the output of `python -m lrpfx.graph.coverage`"
    assert f"Core ATen overloads in torch {torch.__version__.split('+')[0]}: {sum(counts.values())}" in text


def test_the_docs_page_runs():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert blocks
    namespace = {"__name__": "docs_ops"}
    for block in blocks:
        exec(compile(block, str(PAGE), "exec"), namespace)


# ---- decomposition ---------------------------------------------------------------------------------------------
class Decomposed(nn.Module):
    """Ops no row names, each a Core ATen composition of known pieces: rotation, tiling, flips, a lower triangle,
    ``1 - x`` (``aten.rsub``), relu6 under export."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8, bias=False), nn.Linear(8, 2, bias=False)

    def forward(self, x):
        h = self.a(x)
        h = torch.rot90(h.reshape(-1, 2, 4), 1, (1, 2)).reshape(-1, 8)
        h = F.relu6(h).tile(1) + torch.fliplr(h) - (1 - h)
        return self.b(torch.tril(h.reshape(-1, 2, 4)).reshape(-1, 8))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_ops_no_row_names_are_explained_as_their_core_aten_pieces(frontend):
    assert_lrp0_is_gradient_times_input(build(Decomposed), randn(2, 4), frontend)


class LogSumExp(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)

    def forward(self, x):
        return torch.logsumexp(self.a(x).reshape(-1, 2, 3), -1)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_an_op_with_an_unknown_piece_is_refused_under_its_own_name(frontend):
    with pytest.raises(lrpfx.UnsupportedOpError, match="logsumexp"):
        lrpfx.Explainer(build(LogSumExp), "zero", frontend=frontend)(randn(2, 4), target=torch.tensor([0, 1]))


class CoreCopies(nn.Module):
    """Core ATen ops that copy elements: sort, scatter, index_put, slice/select scatter, diagonal, nearest
    upsampling, an embedding lookup of an activation, and a minimum over an axis."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 16, bias=False), nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(36, 2, bias=False)
        self.register_buffer("idx", torch.tensor([[0, 2], [1, 3], [3, 0], [2, 1]]).repeat(2, 1, 1))
        self.register_buffer("rows", torch.tensor([1, 2]))
        self.register_buffer("ids", torch.tensor([0, 7, 35]))

    def forward(self, x):  # x: [2, 4]
        h = torch.relu(self.a(x)).reshape(2, 4, 4)
        s = torch.sort(h, -1).values
        s = torch.scatter(s, 2, self.idx, h[:, :, :2])
        s = s.transpose(0, 1).index_put((self.rows,), self.b(x)[None].expand(2, -1, -1)).transpose(0, 1)
        s = torch.slice_scatter(s, h[:, :2], dim=1, start=2)
        s = torch.select_scatter(s, torch.diagonal(h, dim1=1, dim2=2), 1, 0)
        up = F.interpolate(s[:, None], scale_factor=1.5, mode="nearest")[:, 0].reshape(2, 36)
        words = F.embedding(self.ids, up.t())  # rows of a table that is an activation: [3, 2]
        return self.head(up) + words.t().sum(-1, keepdim=True) + up.amin(-1, keepdim=True)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_core_aten_copies_are_copies(frontend):
    assert_lrp0_is_gradient_times_input(build(CoreCopies), randn(2, 4), frontend)


class PoolWithIndices(nn.Module):
    """Max pooling that returns its indices (``aten.max_pool2d_with_indices``), then a scatter of its values."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(1, 2, 3, padding=1, bias=False), nn.Linear(8, 2, bias=False)
        self.register_buffer("idx", torch.tensor([[0, 1], [1, 0]]))

    def forward(self, x):
        h, _ = F.max_pool2d(torch.relu(self.conv(x)), 2, return_indices=True)
        h = h.flatten(1)
        return self.head(torch.scatter(h, 1, self.idx, h[:, 2:4]))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_max_pool_with_indices_and_scatter(frontend):
    assert_lrp0_is_gradient_times_input(build(PoolWithIndices), randn(2, 1, 4, 4), frontend)


# ---- register_op: an op of several inputs ----------------------------------------------------------------------
def interleave(a, b):
    """Columns of ``a`` and ``b`` alternately, with a Python loop over a size (fx cannot trace it)."""
    columns = []
    for i in range(a.shape[1]):
        columns += [a[:, i], b[:, i]]
    return torch.stack(columns, 1)


class TwoBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.left, self.right = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
        self.head = nn.Linear(8, 2, bias=False)

    def forward(self, x):
        return self.head(interleave(torch.relu(self.left(x)), torch.relu(self.right(x))))


def test_register_op_takes_ops_of_several_inputs():
    row = lrpfx.register_op(interleave, kind="structural", inputs="any")
    try:
        assert_lrp0_is_gradient_times_input(build(TwoBranches), randn(2, 3), "fx")
    finally:
        lrpfx.unregister_op(row)


def test_register_op_names_the_inputs_it_takes():
    with pytest.raises(lrpfx.RuleError, match="'single'.*'first'.*'any'"):
        lrpfx.register_op(interleave, kind="structural", inputs="two")


class Angle(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 2), nn.Linear(4, 2)

    def forward(self, x):
        return torch.atan2(self.a(x), self.b(x))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_refusal_gives_its_reason(frontend):
    with pytest.raises(lrpfx.UnsupportedOpError, match="atan2.*by design: an elementwise function of two"):
        lrpfx.Explainer(build(Angle), "zero", frontend=frontend)(randn(2, 4), target=torch.tensor([0, 1]))
