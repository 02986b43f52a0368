"""BatchNorm that does not follow a conv (DenseNet's and pre-activation ResNets' BN -> ReLU -> conv).

Such a BatchNorm cannot be folded. It is the per-channel affine map ``x·scale + shift``, and a single-rule string
(``"zero"``, ``"epsilon(e)"``) or a transformer preset (AttnLRP, CP-LRP) gives it the epsilon rule with its own
epsilon and ``zero_bias``, the shift being a bias. Then

* LRP-0 (and CP-LRP with epsilon 0, which is LRP-0 on a CNN) equals gradient×input with every shift and bias
  random: each step is exact LRP-0. With the kind's default ``Pass()`` (Zennit's choice, kept for the Zennit
  presets) the shift is ignored and LRP-0 is not gradient×input.
* With ``zero_bias=True`` the rule on a one-input map gives the input all of the relevance, which is ``Pass``:
  conservation is exact. It stays bounded as long as the maps are linear (BatchNorm statistics random, shifts
  zero); random shifts *and* zero biases multiply relevance by ``(x·W + b)/(x·W)`` per layer, folded or not,
  which no per-node rule can avoid (see /work/notes/breadth-readme.md for the measurements).
"""
from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx import Composite
from lrpfx.composites import CPLRP, single
from lrpfx.rules import Epsilon, Norm, Pass

try:
    from tests.helpers.breadth_zoo import PreActResNet
    from tests.helpers.models import build, calibrate_batchnorm, random_input, remove_biases
except ImportError:  # tests/ imported as a package
    from tests.breadth_zoo import PreActResNet
    from tests.models import build, calibrate_batchnorm, random_input, remove_biases

pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")
SHAPE = (2, 3, 32, 32)


def densenet(linear: bool = False):
    return build("densenet121", calibrate=(4, *SHAPE[1:]), linear=linear)


def preact(linear: bool = False):
    torch.manual_seed(0)
    model = PreActResNet().double()
    calibrate_batchnorm(model, random_input((4, *SHAPE[1:]), seed=3), seed=1)
    return (remove_biases(model) if linear else model).eval()


MODELS = {"densenet121": densenet, "preact-resnet": preact}
SLOW = {"densenet121"}


def params(names):
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [], id=n) for n in names]


def grad_times_input(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    (g,) = torch.autograd.grad(out.max(1).values.sum(), x)
    return (g * x).detach()


def unfolded(explainer, x):
    """The BatchNorm nodes that were not folded, from the rule table."""
    return [r for r in explainer.program(x).rule_table() if r.kind == "batchnorm" and not r.rule.startswith("folded")]


@pytest.mark.parametrize("name", params(MODELS))
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_lrp0_equals_gradient_times_input_with_unfolded_batchnorm(name, frontend):
    model, x = MODELS[name](), random_input(SHAPE, seed=1)
    expected = grad_times_input(model, x)
    for rule in ("zero", CPLRP(epsilon=0)):
        explainer = lrpfx.Explainer(model, rule, frontend=frontend)
        assert unfolded(explainer, x), "the model has no unfolded BatchNorm to test"
        torch.testing.assert_close(explainer(x).relevance, expected, rtol=1e-9, atol=1e-9 * expected.abs().max())
    # the shift ignored (Pass) is not LRP-0
    passing = Composite(conv=Epsilon(0), linear=Epsilon(0), by_type={"batchnorm": Pass(), "add": Norm(0),
                                                                   "avg_pool": Norm(0), "reduce": Norm(0)})
    ignored = lrpfx.Explainer(model, passing, frontend=frontend)(x).relevance
    assert (ignored - expected).abs().max() > 1e-3 * expected.abs().max()


@pytest.mark.parametrize("name", params(MODELS))
def test_zero_bias_conserves_and_is_bounded_for_linear_maps(name):
    """BatchNorm statistics and scales random, every shift and bias zero: CP-LRP and LRP-0 with zero biases
    conserve the logit to 1e-10, and no input relevance exceeds the logit's size by more than 100x (the zero_bias
    blow-up of a zero_bias defect has reached 1e10-1e19x)."""
    model, x = MODELS[name](linear=True), random_input(SHAPE, seed=1)
    for rule in (CPLRP(epsilon=0, zero_bias=True), single(Epsilon(0, zero_bias=True))):
        explanation = lrpfx.Explainer(model, rule)(x)
        logit = explanation.output.max(1).values
        relevance = explanation.relevance
        assert torch.isfinite(relevance).all()
        torch.testing.assert_close(relevance.flatten(1).sum(1), logit, rtol=1e-10, atol=0)
        assert (relevance.abs().flatten(1).max(1).values / logit.abs()).max() < 100
