"""GroupNorm is a normalisation like LayerNorm: linear in its input once each group's standard deviation is held
constant (the rule NormIdentity applies). The reference is written here independently: gradient × input of the
same network with each group's statistics detached, and conservation with biases zeroed."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.rules import Epsilon, NormIdentity

FRONTENDS = ("fx", "export")


def group_norm_held(x, groups, weight, bias, eps):
    """GroupNorm with each group's mean kept and standard deviation detached: the map the rule treats as linear."""
    g = x.reshape(x.shape[0], groups, -1)
    sigma = torch.sqrt(g.var(-1, keepdim=True, unbiased=False) + eps).detach()
    y = ((g - g.mean(-1, keepdim=True)) / sigma).reshape(x.shape)
    shape = (-1,) + (1,) * (x.dim() - 2)
    return y * weight.reshape(shape) + bias.reshape(shape)


class Net(nn.Module):
    def __init__(self, functional=False):
        super().__init__()
        self.functional = functional
        self.c1, self.g1 = nn.Conv2d(3, 8, 3, bias=False), nn.GroupNorm(2, 8)
        self.c2, self.g2 = nn.Conv2d(8, 6, 3, bias=False), nn.GroupNorm(3, 6)
        self.fc = nn.Linear(6 * 4 * 4, 5, bias=False)
        with torch.no_grad():
            for g in (self.g1, self.g2):
                g.weight.uniform_(0.5, 1.5)
                g.bias.uniform_(-0.3, 0.3)

    def norm(self, g, x, held=False):
        if held:
            return group_norm_held(x, g.num_groups, g.weight, g.bias, g.eps)
        return F.group_norm(x, g.num_groups, g.weight, g.bias, g.eps) if self.functional else g(x)

    def forward(self, x, held=False):
        x = self.norm(self.g1, self.c1(x), held).relu()
        x = self.norm(self.g2, self.c2(x), held).relu()
        return self.fc(x.flatten(1))


def exact(zero_bias=False):
    return lrpfx.Composite(default=Epsilon(0, zero_bias=zero_bias),
                           by_type={"layer_norm": NormIdentity(0, zero_bias=zero_bias)})


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("functional", [False, True])
def test_group_norm_is_gradient_times_input_with_statistics_held(frontend, functional):
    torch.manual_seed(0)
    model = Net(functional).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    target = torch.tensor([0, 3])
    relevance = lrpfx.Explainer(model, exact(), frontend=frontend)(x, target=target).relevance
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xr, held=True).gather(1, target[:, None]).sum(), xr)
    expected = g * x
    assert expected.abs().sum() > 0
    torch.testing.assert_close(relevance, expected, rtol=1e-9, atol=1e-10 * expected.abs().max())


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_group_norm_conserves_with_biases_zeroed_and_several_targets(frontend):
    torch.manual_seed(1)
    model = Net().double().eval()
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    explainer = lrpfx.Explainer(model, exact(zero_bias=True), frontend=frontend)
    e = explainer(x, intermediate=True)
    total = e.output.max(1).values
    torch.testing.assert_close(e.relevance.flatten(1).sum(1), total, rtol=1e-9, atol=0)
    several = explainer(x, targets=torch.tensor([[0, 1], [2, 3], [4, 0]])).relevance
    for k in range(2):
        one = explainer(x, target=torch.tensor([[0, 1], [2, 3], [4, 0]])[:, k]).relevance
        torch.testing.assert_close(several[:, k], one, rtol=1e-10, atol=1e-12)


def test_group_norm_gets_norm_identity_under_every_preset():
    model = Net().eval()
    x = torch.randn(2, 3, 8, 8)
    for preset in ("epsilon-plus-flat", "attnlrp", "auto"):
        explainer = lrpfx.Explainer(model, preset)
        r = explainer(x, target=0).relevance
        assert torch.isfinite(r).all() and r.abs().sum() > 0
        rules = {row.rule for row in explainer.program(x).rule_table() if row.kind == "layer_norm"}
        assert len(rules) == 1 and "NormIdentity" in str(rules), (preset, rules)
