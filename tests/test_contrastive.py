"""Contrastive targets (lrpfx.targets): CLRP (Gu et al. 2018) and SGLRP (Iwana et al. 2019) equal their papers'
formulas, written here independently as float64 LRP-epsilon by hand on a small ReLU network: CLRP with the dual
virtual class's own output neuron (weights and bias the mean of the other classes'), SGLRP with the softmax
gradient's target and dual parts at the real output neurons."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import rules as L

pytestmark = pytest.mark.usefixtures("one_thread")
EPS = 0.01


def network():
    torch.manual_seed(4)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 4)).double().eval()


def stab(z):
    return z + EPS * (2 * (z >= 0).to(z.dtype) - 1)  # sign0(0) = +1


def hidden(model, x):
    a1 = torch.relu(model[0](x))
    return a1, torch.relu(model[2](a1))


def down(model, x, r2):
    """LRP-epsilon from the second hidden layer's relevance to the input."""
    a1, a2 = hidden(model, x)
    r1 = a1 * ((r2 / stab(model[2](a1))) @ model[2].weight)
    return x * ((r1 / stab(model[0](x))) @ model[0].weight)


def composite(last):
    return lrpfx.Composite(linear=L.Epsilon(EPS), by_name={"4": last})


def test_clrp_equals_the_papers_formula():
    model, x = network(), torch.randn(3, 5, dtype=torch.float64)
    target = torch.tensor([0, 2, 3])
    _, a2 = hidden(model, x)
    w, b = model[4].weight, model[4].bias
    others = torch.stack([torch.cat([w[:t], w[t + 1:]]).mean(0) for t in target])  # the dual virtual class
    others_bias = torch.stack([torch.cat([b[:t], b[t + 1:]]).mean() for t in target])
    z_target, z_dual = (a2 * w[target]).sum(1) + b[target], (a2 * others).sum(1) + others_bias
    # LRP-0 at the output: each neuron starts from its own value
    r_target = down(model, x, a2 * w[target] * (z_target / z_target).unsqueeze(1))
    r_dual = down(model, x, a2 * others * (z_dual / z_dual).unsqueeze(1))
    reference = (r_target - r_dual).clamp(min=0)
    ours = lrpfx.targets.clrp(lrpfx.Explainer(model, composite(L.Epsilon(0.0))), x, target)
    assert reference.abs().max() > 0 and (reference > 0).any() and (reference == 0).any()
    assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_sglrp_equals_the_papers_formula():
    model, x = network(), torch.randn(3, 5, dtype=torch.float64)
    _, a2 = hidden(model, x)
    z = model[4](a2)
    y = torch.softmax(z, -1)
    t = z.argmax(-1)  # the prediction when no target is given
    y_t = y.gather(1, t[:, None])
    w = model[4].weight
    ratio = lambda r: r / stab(z)  # noqa: E731  epsilon at the output layer as well
    start_target = torch.zeros_like(z).scatter(1, t[:, None], y_t * (1 - y_t))
    start_dual = (y_t * y).scatter(1, t[:, None], 0.0)
    r_target = down(model, x, a2 * (ratio(start_target) @ w))
    r_dual = down(model, x, a2 * (ratio(start_dual) @ w))
    ours = lrpfx.targets.sglrp(lrpfx.Explainer(model, composite(L.Epsilon(EPS))), x)
    reference = r_target - r_dual
    assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()
    # by linearity: one pass from the softmax gradient itself
    logits = z.detach().requires_grad_()
    gradient, = torch.autograd.grad(torch.softmax(logits, -1).gather(1, t[:, None]).sum(), logits)
    single = lrpfx.Explainer(model, composite(L.Epsilon(EPS)))(x, target=gradient).relevance
    assert (single - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_several_initial_relevances_check_their_shape():
    model, x = network(), torch.randn(2, 5, dtype=torch.float64)
    explainer = lrpfx.Explainer(model, "epsilon")
    with pytest.raises(lrpfx.TargetError, match=r"\[batch, K, \*output\]"):
        lrpfx.targets.several(explainer, x, torch.zeros(2, 4))
    with pytest.raises(lrpfx.TargetError, match="method must be"):
        lrpfx.targets.contrastive(explainer, x, method="contrast")
    _, r = lrpfx.targets.several(explainer, x, torch.eye(4, dtype=torch.float64).expand(2, 4, 4))
    one_hot = explainer(x, targets=[0, 1, 2, 3]).relevance  # start "logit": the logit times the one-hot
    out = model(x)
    assert torch.allclose(r * out.T.T[:, :, None], one_hot, rtol=0, atol=1e-12 * one_hot.abs().max())
