"""Elementwise max/min of two tensors (the winner takes the relevance, as a copy) and the quotient of two
activations (the denominator held constant: the numerator takes all the relevance), on both front-ends.

Reference: LRP-0 equals gradient × input on a bias-free piecewise-linear network; for the quotient, of the same
network with the denominator detached (the rule's linearisation).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from tests.helpers.lrp0 import grad_times_input

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


class Binary(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(3, 4, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        self.how = how
        self.detach = False  # the reference: the quotient's denominator held constant

    def forward(self, x):
        p, q = self.a(x), self.b(x)
        if self.how == "max":
            h = torch.max(p, q)
        elif self.how == "min":
            h = torch.min(p, q)
        elif self.how == "maximum":
            h = torch.maximum(p, q.relu())
        elif self.how == "minimum":
            h = p.minimum(q)
        elif self.how == "constant":
            h = torch.maximum(p, torch.full_like(p, 0.1))
        else:
            denominator = q.relu() + 1
            h = p / (denominator.detach() if self.detach else denominator)
        return self.fc(h)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("how", ["max", "min", "maximum", "minimum", "constant", "quotient"])
def test_lrp0_is_gradient_times_input(how, frontend):
    torch.manual_seed(0)
    model = Binary(how).double().eval()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    target = torch.tensor([0, 1])
    e = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    model.detach = True
    expected = grad_times_input(model, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=0, atol=1e-10 * expected.abs().max())


class ClampedScores(nn.Module):
    """XGLM's clamp of attention scores at the dtype's minimum, written with ``torch.tensor`` of a Python float:
    eager mode makes a float32 tensor and the value becomes -inf; export records a ``full`` that would raise."""

    def __init__(self):
        super().__init__()
        self.fc, self.out = nn.Linear(4, 6, bias=False), nn.Linear(6, 2, bias=False)

    def forward(self, x):
        h = self.fc(x)
        return self.out(torch.max(h, torch.tensor(torch.finfo(h.dtype).min)).relu())


@pytest.mark.parametrize("frontend", ["export"])  # fx cannot trace finfo of a traced dtype (a TraceError says so)
def test_a_fill_beyond_its_dtype_holds_what_eager_mode_holds(frontend):
    torch.manual_seed(0)
    model = ClampedScores().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    e = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    torch.testing.assert_close(e.output, model(x))
    expected = grad_times_input(model, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=1e-10, atol=1e-12)
