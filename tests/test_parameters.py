"""Relevance of parameters (lrpfx.parameters): against the float64 formula ``R_w[j, i] = Σ_b w_ji x_i R_j / z_j``
written by hand on a small ReLU network (relevance propagated by hand as well), for a conv layer against the
same formula over unfolded patches, and LRP-0's conservation on a bias-free network: each layer's weights carry
the whole explained logit."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.parameters import parameter_relevance

pytestmark = pytest.mark.usefixtures("one_thread")


def network(bias=True):
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(5, 7, bias=bias), nn.ReLU(), nn.Linear(7, 3, bias=bias)).double().eval()


def test_linear_layers_equal_the_formula():
    model, x = network(), torch.randn(4, 5, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    w1, b1, w2, b2 = model[0].weight, model[0].bias, model[2].weight, model[2].bias
    z1 = x @ w1.T + b1
    a1 = torch.relu(z1)
    z2 = a1 @ w2.T + b2
    r2 = torch.zeros_like(z2).scatter(1, target[:, None], z2.gather(1, target[:, None]))  # the target logit
    r1 = a1 * ((r2 / z2) @ w2)  # LRP-0, relevance at the first layer's output
    ours = parameter_relevance(model, x, target)
    formula = {"2.weight": torch.einsum("ji,bi,bj->ji", w2, a1, r2 / z2), "2.bias": (b2 * r2 / z2).sum(0),
               "0.weight": torch.einsum("ji,bi,bj->ji", w1, x, r1 / z1), "0.bias": (b1 * r1 / z1).sum(0)}
    assert ours.keys() == formula.keys()
    for name, reference in formula.items():
        assert (ours[name] - reference).abs().max() <= 1e-12 * reference.abs().max(), name


def test_conv_layer_equals_the_formula_over_patches():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 2 * 2, 2)).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    conv = model[0]
    r = lrpfx.Explainer(model, "zero")(x, target=1, intermediate=True).intermediate["0"]  # [2, 3, 2, 2]
    z = conv(x)
    patches = nn.functional.unfold(x, 3)  # [B, 2*3*3, 4 positions]
    s = (r / z).flatten(2)  # [B, 3, 4]
    reference = conv.weight * torch.einsum("bip,bjp->ji", patches, s).view_as(conv.weight)
    ours = parameter_relevance(model, x, 1)["0.weight"]
    assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_lrp0_weight_relevance_is_conserved_without_biases():
    model, x = network(bias=False), torch.randn(3, 5, dtype=torch.float64)
    ours = parameter_relevance(model, x, 2)
    logits = model(x)[:, 2].sum()
    for name in ("0.weight", "2.weight"):
        assert abs(ours[name].sum() - logits) <= 1e-12 * abs(logits), name
