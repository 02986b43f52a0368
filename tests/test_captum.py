"""lrpfx.captum.LRP / LayerLRP side by side with captum.attr.LRP / LayerLRP (Captum 0.9).

A small VGG-style model (conv, ReLU, max pooling, linear; flattened with torch.flatten since Captum's LRP has no
rule for nn.Flatten), random weights, float64. Captum's default rules are LRP-epsilon (1e-9) on conv and linear
layers, relevance passed unchanged through ReLU, and epsilon on max pooling too, where it gives the winner
``R·z/(z+1e-9)``; lrpfx gives the winner all of ``R``. The two coincide exactly when Captum's max-pool epsilon is
negligible against every winner's ``z``: the exact comparison sets Captum's pools to ``EpsilonRule(1e-300)``
(Captum's own per-module rule attribute). Each library gets its own deep copy, since Captum rewrites weights while
it runs. Run with ``-s`` to see the agreement.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lrpfx.captum import LRP, LayerLRP
from lrpfx.errors import InputError, RuleError, TargetError

captum_attr = pytest.importorskip("captum.attr")
from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, EpsilonRule, GammaRule, IdentityRule  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

TOLERANCE = 1e-6
EXACT = 1e-12
LAYERS = ["conv1", "conv2", "pool1", "conv3", "pool2", "fc1", "fc2"]


class VGGish(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.relu1 = nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()
        self.conv2, self.relu2, self.pool1 = nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.conv3, self.relu3, self.pool2 = nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        self.fc1, self.relu4, self.fc2 = nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x):
        x = self.pool1(self.relu2(self.conv2(self.relu1(self.conv1(x)))))
        x = self.pool2(self.relu3(self.conv3(x)))
        return self.fc2(self.relu4(self.fc1(torch.flatten(x, 1))))


class TwoBranches(nn.Module):
    """Two explained inputs, a 0/1 mask and a flag as additional forward arguments, output [B, 2, 5]."""

    def __init__(self):
        super().__init__()
        self.conv_a, self.relu_a = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()
        self.conv_b, self.relu_b = nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()
        self.fc = nn.Linear(2 * 4 * 8 * 8, 10)

    def forward(self, a, b, mask, use_b=True):
        ha = torch.flatten(self.relu_a(self.conv_a(a)) * mask, 1)
        hb = torch.flatten(self.relu_b(self.conv_b(b)), 1)
        hb = hb if use_b else torch.zeros_like(hb)
        return self.fc(torch.cat([ha, hb], 1)).view(-1, 2, 5)


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return VGGish().double().eval(), torch.randn(3, 3, 16, 16, dtype=torch.float64)


def captum_copy(model: nn.Module, exact_pools: bool) -> nn.Module:
    theirs = copy.deepcopy(model)
    if exact_pools:
        for module in theirs.modules():
            if isinstance(module, nn.MaxPool2d):
                module.rule = EpsilonRule(epsilon=1e-300)  # winner-takes-all to float64 precision
    return theirs


def relative(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.mark.parametrize("exact_pools", [True, False], ids=["pools-matched", "captum-defaults"])
@pytest.mark.parametrize("target", [3, [1, 4, 7], torch.tensor([2, 0, 9]), torch.tensor(5)],
                         ids=["int", "list", "tensor", "0-d"])
def test_lrp_equals_captum(vgg, target, exact_pools):
    model, x = vgg
    theirs = captum_attr.LRP(captum_copy(model, exact_pools)).attribute(x.clone(), target=target)
    ours = LRP(model).attribute(x, target=target)
    assert isinstance(ours, torch.Tensor) and ours.shape == x.shape and not ours.requires_grad
    err = relative(ours, theirs)
    print(f"\nLRP target={target!r} {'pools matched' if exact_pools else 'Captum defaults'}: relative error {err:.1e}")
    assert err < (EXACT if exact_pools else TOLERANCE)


@pytest.mark.parametrize("to_input", [False, True], ids=["output", "input"])
@pytest.mark.parametrize("layer", LAYERS)
def test_layer_lrp_equals_captum(vgg, layer, to_input):
    model, x = vgg
    theirs_model = captum_copy(model, exact_pools=True)
    theirs = captum_attr.LayerLRP(theirs_model, getattr(theirs_model, layer)).attribute(
        x.clone(), target=4, attribute_to_layer_input=to_input)
    by_module = LayerLRP(model, getattr(model, layer)).attribute(x, target=4, attribute_to_layer_input=to_input)
    by_name = LayerLRP(model, layer).attribute(x, target=4, attribute_to_layer_input=to_input)
    assert by_module.shape == theirs.shape
    assert torch.equal(by_module, by_name)
    err = relative(by_module, theirs)
    print(f"\nLayerLRP {layer} {'input' if to_input else 'output'}: relative error {err:.1e}")
    assert err < EXACT


def test_layer_list_and_convergence_delta(vgg):
    model, x = vgg
    theirs_model = captum_copy(model, exact_pools=True)
    theirs, theirs_delta = captum_attr.LayerLRP(theirs_model, [theirs_model.conv2, theirs_model.fc1]).attribute(
        x.clone(), target=1, return_convergence_delta=True)
    ours, ours_delta = LayerLRP(model, [model.conv2, "fc1"]).attribute(x, target=1, return_convergence_delta=True)
    assert isinstance(ours, list) and len(ours) == 2
    for o, t, od, td in zip(ours, theirs, ours_delta, theirs_delta):
        assert relative(o, t) < EXACT
        assert torch.allclose(od, td, rtol=1e-9, atol=1e-12)
    attribution, delta = LRP(model).attribute(x, target=1, return_convergence_delta=True)
    _, captum_delta = captum_attr.LRP(captum_copy(model, True)).attribute(x.clone(), target=1,
                                                                       return_convergence_delta=True)
    assert delta.shape == (3,) and torch.allclose(delta, captum_delta, rtol=1e-9, atol=1e-12)


@pytest.fixture(scope="module")
def branches():
    torch.manual_seed(1)
    model = TwoBranches().double().eval()
    a = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    b = torch.randn(2, 2, 8, 8, dtype=torch.float64)
    mask = (torch.rand(2, 4, 8, 8) > 0.3).double()
    return model, a, b, mask


@pytest.mark.parametrize("target", [(1, 3), [(0, 2), (1, 4)]], ids=["tuple", "list-of-tuples"])
def test_tuple_inputs_additional_args_and_tuple_targets(branches, target):
    model, a, b, mask = branches
    theirs = captum_attr.LRP(copy.deepcopy(model)).attribute((a.clone(), b.clone()), target=target,
                                                             additional_forward_args=(mask, True))
    ours = LRP(model).attribute((a, b), target=target, additional_forward_args=(mask, True))
    assert isinstance(ours, tuple) and [o.shape for o in ours] == [a.shape, b.shape]
    errors = [relative(o, t) for o, t in zip(ours, theirs)]
    print(f"\nLRP tuple inputs, additional args, target={target}: relative errors {errors[0]:.1e}, {errors[1]:.1e}")
    assert max(errors) < EXACT
    # the flag is a fixed argument: use_b=False gives b no relevance, as in Captum
    _, rb = LRP(model).attribute((a, b), target=target, additional_forward_args=(mask, False))
    assert rb.abs().max() == 0


def test_additional_args_change_between_calls(branches):
    """The mask is a constant of the program, rebound on every call: a new mask (or batch) is honoured."""
    model, a, b, mask = branches
    explainer = LRP(model)
    for m in (mask, 1 - mask, mask[:1]):
        n = m.shape[0]
        theirs = captum_attr.LRP(copy.deepcopy(model)).attribute(
            (a[:n].clone(), b[:n].clone()), target=(0, 1), additional_forward_args=(m, True))
        ours = explainer.attribute((a[:n], b[:n]), target=(0, 1), additional_forward_args=(m, True))
        for o, t in zip(ours, theirs):
            assert relative(o, t) < EXACT
    assert len(explainer._bound) == 1  # one bound model (and program) for every mask value and batch size


def test_visualization_accepts_attributions(vgg):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from captum.attr import visualization

    model, x = vgg
    attribution = LRP(model).attribute(x, target=2)
    figure, _ = visualization.visualize_image_attr(attribution[0].permute(1, 2, 0).numpy(),
                                                   x[0].permute(1, 2, 0).numpy(), method="heat_map",
                                                   sign="all", use_pyplot=False)
    assert figure is not None


def test_bad_inputs_give_lrpfx_errors(vgg):
    model, x = vgg
    with pytest.raises(RuleError, match="unknown rule"):
        LRP(model, rule="epsilonn")
    with pytest.raises(InputError, match="tensor or a tuple of tensors"):
        LRP(model).attribute([x], target=1)
    with pytest.raises(TargetError, match="one entry per example"):
        LRP(model).attribute(x, target=[1, 2])
    with pytest.raises(TargetError, match="out of range"):
        LRP(model).attribute(x, target=10)
    with pytest.raises(TargetError, match="integer indices"):
        LRP(model).attribute(x, target=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(TargetError, match="one index per output axis"):
        LRP(model).attribute(x, target=(1, 2))
    with pytest.raises(InputError, match="no submodule"):
        LayerLRP(model, "conv9")
    with pytest.raises(InputError, match="not a submodule"):
        LayerLRP(model, nn.Conv2d(3, 8, 3))
    gamma = copy.deepcopy(model)
    gamma.conv2.rule = GammaRule()
    with pytest.raises(RuleError, match="GammaRule"):
        LRP(gamma)


@pytest.mark.parametrize("rule, equivalent", [(GammaRule(0.1), r"Gamma\(0\.1\)"), (Alpha1_Beta0_Rule(), r"ZPlus\(\)"),
                                              (GammaRule(0.5), r"Gamma\(0\.5\)")])
def test_untranslated_rules_name_their_lrpfx_equivalent(vgg, rule, equivalent):
    model = copy.deepcopy(vgg[0])
    model.conv2.rule = rule
    with pytest.raises(RuleError, match=f"by_name={{'conv2': lrpfx.rules.{equivalent}}}"):
        LRP(model)


def test_identity_rule_passes_relevance_through(vgg):
    """Captum's IdentityRule on an activation is lrpfx's Pass: the same as Captum's own result."""
    model, x = vgg
    marked = captum_copy(model, exact_pools=True)
    marked.relu3.rule = IdentityRule()
    ours = LRP(marked).attribute(x, target=2)
    theirs = captum_attr.LRP(captum_copy(marked, exact_pools=True)).attribute(x, target=2)
    assert relative(ours, theirs) < EXACT
