"""Linear maps without parameters: copies route relevance by ``Jᵀ R``, maps that mix values by the proportional rule
``x ⊙ Jᵀ(R ⊘ stab(z))``.

Reference: on a bias-free network of affine maps, ReLU, max pooling and linear maps, LRP-0 (``rule="zero"``)
equals gradient × input, exactly (float64). ``Jᵀ R`` on a map that mixes values does not (it weighs each output's
relevance by the map's coefficients, not by the inputs' contributions), so these tests fail where a mixing map is
read as a copy.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.rules import Norm
from lrpfx.rules.stabilize import divide
from tests.helpers.lrp0 import grad_times_input, randn

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


def assert_lrp0_is_gradient_times_input(model, x, frontend):
    target = torch.tensor([0, 1])
    explanation = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    expected = grad_times_input(model, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(explanation.relevance, expected, rtol=0, atol=1e-8 * expected.abs().max())
    return explanation


def build(cls, *args):
    torch.manual_seed(0)
    return cls(*args).double().eval()


class Resample(nn.Module):
    """conv – ReLU – max pool – conv – interpolate (an FCN head in miniature), bias-free."""

    def __init__(self, mode: str, module: bool = False):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Conv2d(3, 2, 1, bias=False)
        options = {} if mode == "nearest" else {"align_corners": False}
        self.up = nn.Upsample(scale_factor=2, mode=mode, **options) if module else None
        self.mode, self.options = mode, options

    def forward(self, x):
        h = self.c2(F.max_pool2d(self.c1(x).relu(), 2))
        h = self.up(h) if self.up is not None else F.interpolate(h, scale_factor=2, mode=self.mode, **self.options)
        return h.relu().flatten(1)[:, :5]


class Windows(nn.Module):
    """im2col (unfold: copies) into a linear map, and col2im (fold: sums overlapping windows)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2 * 9, 4, bias=False)
        self.c = nn.Conv2d(2, 2 * 9, 1, bias=False)
        self.fold = nn.Fold((4, 4), 3, padding=1)

    def forward(self, x):
        windows = F.unfold(x, 3, padding=1)
        h = self.fc(windows.transpose(1, 2)).relu().sum(1)
        y = F.fold(self.c(x).relu().flatten(2), (4, 4), 3, padding=1) + self.fold(self.c(x).flatten(2))
        return h + y.flatten(1)[:, :4]


class EinsumCumsum(nn.Module):
    """An einsum and a matmul with a constant (one activation operand) and a cumulative sum (Mamba2's segment
    sums)."""

    def __init__(self):
        super().__init__()
        self.w, self.m = nn.Parameter(torch.randn(4, 3)), nn.Parameter(torch.randn(3, 3))
        self.fc = nn.Linear(2 * 4 * 3, 3, bias=False)

    def forward(self, x):
        h = torch.einsum("bchw,wk->bchk", x, self.w).relu()
        h = torch.cumsum(h, dim=2) - h.cumsum(1)
        h = (h @ self.m).relu()  # a product with a constant: a linear map, not an attention product
        return self.fc(h.flatten(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("mode,module", [("bilinear", False), ("bicubic", False), ("bilinear", True),
                                         ("nearest", False)])
def test_resampling_lrp0_is_gradient_times_input(mode, module, frontend):
    model, x = build(Resample, mode, module), randn(2, 2, 4, 4)
    assert_lrp0_is_gradient_times_input(model, x, frontend)
    table = lrpfx.Explainer(model, "zero", frontend=frontend).program(x).rule_table()
    kinds = {row.kind for row in table if "interpolate" in row.op or "upsample" in row.op.lower()}
    assert kinds == ({"structural"} if mode == "nearest" else {"reduce"}), [r.as_dict() for r in table]


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_unfold_fold_lrp0_is_gradient_times_input(frontend):
    assert_lrp0_is_gradient_times_input(build(Windows), randn(2, 2, 4, 4), frontend)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_einsum_cumsum_lrp0_is_gradient_times_input(frontend):
    assert_lrp0_is_gradient_times_input(build(EinsumCumsum), randn(2, 2, 4, 4), frontend)


class Upsample1d(nn.Module):
    def forward(self, x):
        return F.interpolate(x.relu(), scale_factor=2, mode="linear", align_corners=False).flatten(1)


def test_mixing_map_takes_the_proportional_rule_with_epsilon():
    """Under an epsilon rule the map gets ``x ⊙ Jᵀ(R ⊘ stab(z))`` with that epsilon: checked against the formula,
    its VJP taken by autograd (the ReLU before it passes relevance unchanged)."""
    x, eps = randn(2, 1, 3), 0.5
    r_out = randn(2, 6, seed=2)
    composite = lrpfx.Composite(by_type={"reduce": Norm(eps)})
    e = lrpfx.Explainer(Upsample1d(), composite, frontend="fx")(x, target=r_out)
    h = x.relu().requires_grad_(True)
    z = F.interpolate(h, scale_factor=2, mode="linear", align_corners=False)
    (g,) = torch.autograd.grad(z, h, divide(r_out.view_as(z), z.detach(), eps))
    expected = (h * g).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=1e-12, atol=1e-12)


class FourierMixing(nn.Module):
    """FNet's token mixing: the real part of a 2-D Fourier transform of a real value."""

    def __init__(self):
        super().__init__()
        self.a, self.fc = nn.Linear(4, 4, bias=False), nn.Linear(3 * 4, 2, bias=False)

    def forward(self, x):
        h = self.a(x).relu()
        h = torch.fft.fft(torch.fft.fft(h, dim=-1), dim=-2).real
        return self.fc(h.relu().flatten(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_real_part_of_fourier_transforms_lrp0_is_gradient_times_input(frontend):
    model, x = build(FourierMixing), randn(2, 3, 4)
    assert_lrp0_is_gradient_times_input(model, x, frontend)
    table = lrpfx.Explainer(model, "zero", frontend=frontend).program(x).rule_table()
    assert [row.kind for row in table if "fft" in row.op] == ["reduce"], [r.as_dict() for r in table]
