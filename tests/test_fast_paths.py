"""The performance paths compute the same numbers as the plain ones: several targets at once equal K single
calls, the relevance-support shortcut of Gamma equals the full rule, and compiled programs equal eager ones."""
import pytest
import torch
import torch.nn.functional as F
import torchvision

import lrpfx
from tests.test_api import residual_model, seed_model


@pytest.mark.parametrize("rule", ["epsilon-gamma-box", "epsilon-plus-flat", "epsilon-alpha2beta1", "gradient",
                                  "gradient*input", "epsilon"])
@pytest.mark.parametrize("make, shape", [(residual_model, (2, 3, 8, 8)), (seed_model, (3, 1, 8, 8))])
def test_several_targets_equal_single_calls(make, shape, rule):
    m = make()
    x = torch.randn(*shape, dtype=torch.float64)
    ex = lrpfx.Explainer(m, rule)
    targets = [1, 3, 4]
    multi = ex(x, targets=targets, intermediate=True)
    assert multi.relevance.shape == (shape[0], 3, *shape[1:])
    for k, t in enumerate(targets):
        single = ex(x, target=t, intermediate=True)
        torch.testing.assert_close(multi.relevance[:, k], single.relevance, rtol=1e-10, atol=1e-12)
        for name, r in single.intermediate.items():
            torch.testing.assert_close(multi.intermediate[name][:, k], r, rtol=1e-10, atol=1e-12, msg=name)


def test_per_sample_targets_and_errors():
    m = seed_model()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    ex = lrpfx.Explainer(m, "epsilon")
    per_sample = ex(x, targets=torch.tensor([[1, 2], [3, 4]])).relevance
    torch.testing.assert_close(per_sample[0, 1], ex(x, target=2).relevance[0])
    torch.testing.assert_close(per_sample[1, 0], ex(x, target=3).relevance[1])
    with pytest.raises(lrpfx.TargetError, match="out of range"):
        ex(x, targets=[1, 10])
    with pytest.raises(lrpfx.TargetError, match="shape"):
        ex(x, targets=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(lrpfx.TargetError, match="either"):
        ex(x, target=1, targets=[1])


@pytest.mark.parametrize("make, shape", [(residual_model, (2, 3, 8, 8)), (seed_model, (3, 1, 8, 8))])
@pytest.mark.parametrize("rule", ["gamma", "epsilon-gamma-box"])
def test_gamma_positive_only_shortcut_equals_full_rule(make, shape, rule, monkeypatch):
    """Before a ReLU, Gamma skips its negative branch (zero by the graph's relevance-support analysis). With the
    analysis switched off every Gamma step runs its full rule; the relevance must not change."""
    m = make()
    x = torch.randn(*shape, dtype=torch.float64)
    fast_ex = lrpfx.Explainer(m, rule)
    fast = fast_ex(x, intermediate=True)
    code = fast_ex.program(x, intermediate=True).code
    assert ("positive_only = True" in code) == ("affine_gamma(" in code)
    monkeypatch.setattr(lrpfx.graph.canonize, "mark_positive_only", lambda *args, **kwargs: None)
    full_ex = lrpfx.Explainer(m, rule)
    full = full_ex(x, intermediate=True)
    assert "positive_only = True" not in full_ex.program(x, intermediate=True).code
    torch.testing.assert_close(fast.relevance, full.relevance, rtol=1e-10, atol=1e-13)
    for name, r in full.intermediate.items():
        torch.testing.assert_close(fast.intermediate[name], r, rtol=1e-10, atol=1e-13, msg=name)


def test_float_target_at_the_output_disables_the_shortcut_there():
    """The last affine node before a ReLU at the top only gets the shortcut when the start is output * onehot."""
    m = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.ReLU()).double()
    ex = lrpfx.Explainer(m, "gamma")
    x = torch.randn(2, 4, dtype=torch.float64)
    assert "positive_only = True" in ex.program(x).code
    assert "positive_only = True" not in ex.program(x, target_is_relevance=True).code
    r = torch.randn(2, 5, dtype=torch.float64)  # relevance also where the ReLU output is zero
    full = ex(x, target=r).relevance
    assert torch.isfinite(full).all()


@pytest.mark.slow
@pytest.mark.parametrize("name, size", [("resnet18", 32), ("vgg11", 32)])
def test_compiled_equals_eager_on_zoo_models(name, size):
    model = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(2, 3, size, size)
    for rule in ["epsilon-gamma-box"]:
        eager = lrpfx.Explainer(model, rule)(x).relevance
        compiled_ex = lrpfx.Explainer(model, rule, compile=True)
        compiled = compiled_ex(x).relevance
        scale = eager.abs().max()
        torch.testing.assert_close(compiled / scale, eager / scale, rtol=1e-4, atol=1e-5)
        # another batch size reuses the compiled program (dynamic batch axis) and stays right
        x3 = torch.randn(3, 3, size, size)
        torch.testing.assert_close(compiled_ex(x3).relevance / scale, lrpfx.Explainer(model, rule)(x3).relevance
                                   / scale, rtol=1e-4, atol=1e-5)
