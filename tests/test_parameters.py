"""Relevance of parameters (lrpfx.parameters): against the float64 formula ``R_w[j, i] = Σ_b w_ji x_i R_j / z_j``
written by hand on a small ReLU network (relevance propagated by hand as well), for a conv layer against the
same formula over unfolded patches, and LRP-0's conservation on a bias-free network: each layer's weights carry
the whole explained logit. Under the Explainer's composite (``parameters=True``): LRP-0's conservation per layer
and unit with biases, each supported rule against a float64 loop over its contributions, the weights against the
program's own input relevance, attention heads, and the refusals."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

import lrpfx
from lrpfx.parameters import parameter_relevance
from lrpfx.rules import AlphaBeta, Epsilon, Flat, Gamma, Gradient, WSquare, ZBox, ZPlus

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


# ---- under the Explainer's composite: every supported rule's split, conservation per layer and unit ----------
def mlp():
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)).double().eval()


def layer_values(model, x):
    """Input of each Linear of a Sequential, by hand."""
    values, h = {}, x
    for name, m in model.named_children():
        if isinstance(m, nn.Linear):
            values[name] = h
        h = m(h)
    return values


def loop_reference(w, b, x, r, contribution, bias_contribution):
    """Float64 loops over samples, outputs and inputs: ``R_w[j, i] = Σ_b c_ji R_j / Σ_i' c_ji'`` (bias included)
    for a rule given by its contributions ``c(x_i, w_ji, z_j)``; z_j == 0 passes nothing."""
    w, b, x = w.detach(), b.detach(), x.detach()
    rw, rb = torch.zeros_like(w), torch.zeros_like(b)
    for n in range(x.shape[0]):
        for j in range(w.shape[0]):
            z = float(x[n] @ w[j] + b[j])
            if z == 0:
                continue
            c = [contribution(float(x[n, i]), float(w[j, i]), z) for i in range(w.shape[1])]
            cb = bias_contribution(float(b[j]), z)
            total = sum(c) + cb
            for i in range(w.shape[1]):
                rw[j, i] += c[i] * float(r[n, j]) / total
            rb[j] += cb * float(r[n, j]) / total
    return rw, rb


def test_lrp0_weight_and_bias_relevance_conserve_each_layer_and_unit():
    """LRP-0 with biases: per layer and per output unit j, ``Σ_i R_w[j, i] + R_b[j] = Σ_batch R_j`` (the relevance
    at the layer's output; exact here since no z_j is 0), and every entry equals the float64 contribution loop."""
    model, x = mlp(), torch.randn(3, 5, dtype=torch.float64)
    explanation = lrpfx.Explainer(model, "zero")(x, target=1, parameters=True, intermediate=True)
    params, values = explanation.parameters, layer_values(model, x)
    for name in ("0", "2", "4"):
        layer, r = model[int(name)], explanation.intermediate[name]
        unit = params.per_unit()[name]
        assert torch.allclose(unit, r.sum(0), rtol=1e-12, atol=1e-14), name
        assert torch.allclose(params[f"{name}.weight"].sum() + params[f"{name}.bias"].sum(), r.sum(), rtol=1e-12)
        rw, rb = loop_reference(layer.weight, layer.bias, values[name], r, lambda xi, wji, z: xi * wji,
                                lambda bj, z: bj)
        assert torch.allclose(params[f"{name}.weight"], rw, rtol=1e-10, atol=1e-14), name
        assert torch.allclose(params[f"{name}.bias"], rb, rtol=1e-10, atol=1e-14), name


RULE_CONTRIBUTIONS = {  # the rules' splits written as contributions c(x_i, w_ji, z_j) and the bias's c(b_j, z_j)
    "gamma": (Gamma(0.25, eps=0.0), lambda x, w, z: x * w + 0.25 * (max(x * w, 0) if z > 0 else min(x * w, 0)),
              lambda b, z: b + 0.25 * (max(b, 0) if z > 0 else min(b, 0))),
    "zplus": (ZPlus(eps=0.0), lambda x, w, z: max(x * w, 0), lambda b, z: max(b, 0)),
    "wsquare": (WSquare(eps=0.0), lambda x, w, z: w * w, lambda b, z: b * b),
}


@pytest.mark.parametrize("rule_name", sorted(RULE_CONTRIBUTIONS))
def test_other_rules_equal_their_contribution_loop(rule_name):
    """The first layer (inputs of both signs) under a non-epsilon rule against the loop over its contributions."""
    rule, contribution, bias_contribution = RULE_CONTRIBUTIONS[rule_name]
    model, x = mlp(), torch.randn(3, 5, dtype=torch.float64)
    composite = lrpfx.Composite(by_name={"0": rule}, default=Epsilon(0.0))
    explanation = lrpfx.Explainer(model, composite)(x, target=0, parameters=True, intermediate=True)
    rw, rb = loop_reference(model[0].weight, model[0].bias, x, explanation.intermediate["0"], contribution,
                            bias_contribution)
    assert torch.allclose(explanation.parameters["0.weight"], rw, rtol=1e-10, atol=1e-14)
    assert torch.allclose(explanation.parameters["0.bias"], rb, rtol=1e-10, atol=1e-14)


def test_alpha_beta_equals_its_two_sided_loop():
    model, x = mlp(), torch.randn(3, 5, dtype=torch.float64)
    composite = lrpfx.Composite(by_name={"0": AlphaBeta(2.0, 1.0, eps=0.0)}, default=Epsilon(0.0))
    explanation = lrpfx.Explainer(model, composite)(x, target=2, parameters=True, intermediate=True)
    r = explanation.intermediate["0"]
    pos = loop_reference(model[0].weight, model[0].bias, x, r, lambda xi, w, z: max(xi * w, 0), lambda b, z: max(b, 0))
    neg = loop_reference(model[0].weight, model[0].bias, x, r, lambda xi, w, z: min(xi * w, 0), lambda b, z: min(b, 0))
    assert torch.allclose(explanation.parameters["0.weight"], 2 * pos[0] - neg[0], rtol=1e-10, atol=1e-14)
    assert torch.allclose(explanation.parameters["0.bias"], 2 * pos[1] - neg[1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("rule", [Epsilon(0.0), Gamma(0.5, eps=0.0), AlphaBeta(2.0, 1.0, eps=0.0), ZPlus(eps=0.0),
                                  Flat(eps=0.0), WSquare(eps=0.0), ZBox(-3.0, 3.0, eps=0.0)],
                         ids=lambda r: r.name)
def test_weights_carry_what_the_rule_gives_the_inputs(rule):
    """The weights of a layer make the same contributions the rule hands to the layer's inputs, so on a conv
    layer (the first, inputs of both signs) ``Σ R_w`` equals ``Σ`` of the program's input relevance."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)).double().eval()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    explanation = lrpfx.Explainer(model, lrpfx.Composite(first=rule, default=Epsilon(0.0)))(x, target=1,
                                                                                          parameters=True)
    weights = explanation.parameters["0.weight"].sum()
    assert abs(weights - explanation.relevance.sum()) <= 1e-10 * explanation.relevance.abs().sum()


def test_attention_heads_are_the_output_projection_columns():
    """``nn.MultiheadAttention`` (a functional in-projection, an out-projection the module never calls): every
    weight gets relevance, and the heads split the out-projection's: ``Σ heads + R_b = Σ R`` at its output."""
    torch.manual_seed(9)
    model = Attention().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    explanation = lrpfx.Explainer(model, "attnlrp")(x, target=0, parameters=True, intermediate=True)
    params = explanation.parameters
    assert set(params) == {n for n, _ in model.named_parameters()}
    heads = params.per_head()["att"]
    columns = params["att.out_proj.weight"].reshape(8, 2, 4)  # [d_model, heads, head_dim]
    assert torch.allclose(heads, columns.sum((0, 2)), rtol=1e-12)
    out = next(r for key, r in explanation.intermediate.items() if r.shape[-1] == 8 and key.startswith("linear_2"))
    assert torch.allclose(heads.sum() + params["att.out_proj.bias"].sum(), out.sum(), rtol=1e-9)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(4, 8), nn.Linear(8, 3)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.att(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def test_refusals_name_the_layer_and_the_way_out():
    model, x = mlp(), torch.randn(2, 5, dtype=torch.float64)
    with pytest.raises(lrpfx.RuleError, match=r"'_?2'.*Gradient.*epsilon, gamma"):
        lrpfx.Explainer(model, lrpfx.Composite(by_name={"2": Gradient()}, default=Epsilon()))(x, parameters=True)
    with pytest.raises(lrpfx.TargetError, match="targets="):
        lrpfx.Explainer(model, "zero")(x, targets=[0, 1], parameters=True)


def conv_bn():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(12, 2))
    bn = model[1]
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    bn.bias.data.uniform_(-1, 1)
    return model.double().eval()


def test_folded_batchnorm_equals_the_fused_layer():
    """A BatchNorm folded into the conv's rule: the conv's weights get the fused layer's weight relevance (torch's
    own fusion, explained separately), the BatchNorm's bias the fused bias's; per unit LRP-0 conserves the
    relevance at the BatchNorm's output, and pruning a channel zeroes that output."""
    model, x = conv_bn(), torch.randn(4, 2, 4, 4, dtype=torch.float64)
    fused = nn.Sequential(fuse_conv_bn_eval(model[0], model[1]), *model[2:]).eval()
    ours = lrpfx.Explainer(model, "zero")(x, target=1, parameters=True, intermediate=True)
    reference = lrpfx.Explainer(fused, "zero")(x, target=1, parameters=True).parameters
    assert set(ours.parameters) == {"0.weight", "1.bias", "4.weight", "4.bias"}
    assert torch.allclose(ours.parameters["0.weight"], reference["0.weight"], rtol=1e-10, atol=1e-14)
    assert torch.allclose(ours.parameters["1.bias"], reference["0.bias"], rtol=1e-10, atol=1e-14)
    channels = ours.parameters.per_unit()["0"]
    assert torch.allclose(channels, ours.intermediate["1"].sum((0, 2, 3)), rtol=1e-10)
    pruned = lrpfx.prune(model, ours.parameters, 0.4, unit="channel")
    weakest = int(channels.abs().argmin())
    assert pruned[:2](x)[:, weakest].abs().max() == 0 and pruned[:2](x).abs().sum((0, 2, 3)).min() == 0
    assert torch.equal(model[1].weight, conv_bn()[1].weight)  # the model keeps its BatchNorm
