"""In-place writes into a buffer are data flow: a buffer filled slice by slice with values computed from the input
carries their relevance (both front-ends), or the call is refused naming the write — never a silent zero.

Reference: LRP-0 (``rule="zero"``) equals gradient × input on a bias-free piecewise-linear network (float64).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import UnsupportedOpError
from tests.helpers.lrp0 import grad_times_input

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 4


class Fill(nn.Module):
    """RWKV-like time mixing in miniature: ``buf[:, t] = a(x_t).relu() + b(x_t)``, then a linear head."""

    def __init__(self, how: str):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
        self.fc = nn.Linear(STEPS * 3, 2, bias=False)
        self.how = how

    def forward(self, x):
        buf = x.new_empty(x.shape) if self.how == "empty" else torch.zeros_like(x)
        for t in range(STEPS):
            v = self.a(x[:, t]).relu() + self.b(x[:, t])
            if self.how == "copy_":
                buf[:, t].copy_(v)
            elif self.how == "add_":
                buf[:, t:] += v[:, None]  # a running sum written into a slice
            elif self.how == "broadcast":
                buf[:, t] = v.sum(-1, keepdim=True)  # one value per row, broadcast over the slice
            else:
                buf[:, t] = v
        return self.fc(buf.flatten(1))


def build(how):
    torch.manual_seed(0)
    return Fill(how).double().eval()


def example():
    return torch.randn(2, STEPS, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("how", ["setitem", "copy_", "empty", "add_", "broadcast"])
def test_buffer_filled_in_place_carries_relevance(how, frontend):
    model, x, target = build(how), example(), torch.tensor([0, 1])
    explanation = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    expected = grad_times_input(model, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(explanation.relevance, expected, rtol=0, atol=1e-10 * expected.abs().max())


class TransposedWrite(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Linear(3, 3, bias=False), nn.Linear(9, 2, bias=False)

    def forward(self, x):
        buf = x.new_zeros(x.shape[0], 3, 3)
        buf.transpose(1, 2)[:, 0] = self.a(x).relu()
        return self.fc(buf.flatten(1))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_write_through_another_view_is_refused_naming_the_node(frontend):
    torch.manual_seed(0)
    model, x = TransposedWrite().double().eval(), torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(UnsupportedOpError) as err:
        lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=torch.tensor([0, 1]))
    message = str(err.value)
    assert "test_inplace.py" in message and "view" in message and "out of place" in message


class AddToView(nn.Module):
    """An in-place sum on a permuted product whose base nothing reads again (GPT-OSS's and Gemma 3n's spelling)."""

    def __init__(self):
        super().__init__()
        self.c, self.out = nn.Parameter(torch.randn(4, 4)), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        p = torch.matmul(x.permute(1, 2, 0), self.c).permute(2, 0, 1)
        p += x
        return self.out(p.contiguous()).sum(1)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_in_place_op_on_a_view_whose_base_is_not_read_again_runs_out_of_place(frontend):
    torch.manual_seed(0)
    model, x, target = AddToView().double().eval(), torch.randn(4, 2, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    relevance = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target).relevance
    expected = grad_times_input(model, x, target)
    torch.testing.assert_close(relevance, expected, rtol=0, atol=1e-10 * expected.abs().max())
