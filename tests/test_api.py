"""Public API behaviour: rule strings, targets, intermediate relevances, LRP-0 = gradient × input, conservation,
multiple inputs, in-place ops, BatchNorm folding, custom composites, and the bad-input errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.rules import (AlphaBeta, Epsilon, Flat, Gamma, Gradient, Norm, NormIdentity, Pass, Structural,
                         WinnerTakesAll, ZPlus)

LRP0 = lrpfx.Composite(conv=Epsilon(0), linear=Epsilon(0), by_type={"add": Norm(0), "avg_pool": Norm(0),
                                                                     "reduce": Norm(0)})
LRP0_ZERO_BIAS = lrpfx.Composite(conv=Epsilon(0, zero_bias=True), linear=Epsilon(0, zero_bias=True),
                                 by_type={"add": Norm(0), "avg_pool": Norm(0), "reduce": Norm(0)})


def seed_model():
    """TorchLRP's usage example, scaled down."""
    return nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 10)).double()


class Residual(nn.Module):
    """Functional ops the hook-based libraries miss: x + y, F.relu (in place), torch.cat, view, avg_pool."""

    def __init__(self, inplace=True):
        super().__init__()
        self.inplace = inplace
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(16 * 4 * 4, 5)
        self.relu = nn.ReLU(inplace=inplace)

    def forward(self, x):
        a = self.relu(self.bn(self.c1(x)))
        b = F.relu(self.c2(a), inplace=self.inplace)
        if self.inplace:
            b += a
        else:
            b = b + a
        c = torch.cat([b, self.c3(a)], 1)
        c = F.avg_pool2d(c, 2)
        return self.fc(c.view(c.size(0), -1))


def residual_model(inplace=True):
    m = Residual(inplace).double().eval()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 2)
        m.bn.bias.uniform_(-1, 1)
    return m


def grad_times_input(model, x, target=None):
    x = x.clone().requires_grad_()
    out = model(x)
    idx = out.argmax(1) if target is None else target
    (g,) = torch.autograd.grad(out.gather(1, idx.view(-1, 1)).sum(), x)
    return g * x.detach(), g


# ---- TorchLRP parity: every TorchLRP rule key on its example model -----------------------------------------
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "gamma+epsilon", "alpha1beta0", "alpha2beta1", "gradient",
                                  "gradient*input", "zplus", "flat", "wsquare", "zbox(-3,3)", "epsilon(0.1)",
                                  "gamma(0.25)", "alphabeta(3,2)", "epsilon-gamma-box", "epsilon-plus",
                                  "epsilon-plus-flat", "epsilon-alpha2beta1", "epsilon-alpha2beta1-flat"])
def test_seed_model_every_rule_key(rule):
    m = seed_model()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    r = lrpfx.explain(m, x, rule=rule)
    assert r.shape == x.shape and r.dtype == x.dtype
    assert torch.isfinite(r).all() and r.abs().sum() > 0


def test_gradient_rules_equal_autograd():
    m = seed_model()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    gi, g = grad_times_input(m, x)
    torch.testing.assert_close(lrpfx.explain(m, x, rule="gradient"), g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(lrpfx.explain(m, x, rule="gradient*input"), gi, rtol=1e-12, atol=1e-14)


def test_alpha1beta0_equals_zplus():
    m = seed_model()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(lrpfx.explain(m, x, "alpha1beta0"), lrpfx.explain(m, x, "zplus"), rtol=1e-12,
                               atol=1e-14)


# ---- LRP-0 = gradient × input, conservation (docs/rules.md) --------------------------------------------
@pytest.mark.parametrize("make", [seed_model, residual_model,
                                  lambda: nn.Sequential(nn.Linear(6, 7), nn.ReLU(), nn.Linear(7, 3)).double()])
def test_lrp0_equals_gradient_times_input(make):
    m = make()
    shape = (3, 6) if isinstance(m[0] if isinstance(m, nn.Sequential) else None, nn.Linear) else \
        ((3, 1, 8, 8) if isinstance(m, nn.Sequential) else (3, 3, 8, 8))
    x = torch.randn(*shape, dtype=torch.float64)
    reference_model = residual_model(inplace=False) if isinstance(m, Residual) else m
    reference_model.load_state_dict(m.state_dict())
    gi, _ = grad_times_input(reference_model, x)
    torch.testing.assert_close(lrpfx.explain(m, x, LRP0), gi, rtol=1e-10, atol=1e-13)


def test_conservation_layer_by_layer_with_zero_bias():
    m = residual_model()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    e = lrpfx.Explainer(m, LRP0_ZERO_BIAS)(x, intermediate=True)
    logit = e.output.max(1).values.sum()
    assert list(e.intermediate)[0] == "x" and list(e.intermediate)[-1] == "fc"
    # the residual branch and the 1x1 branch each carry a part; everything else carries all of it
    for name in ["x", "bn", "relu", "cat", "avg_pool2d", "view", "fc"]:
        torch.testing.assert_close(e.intermediate[name].sum(), logit, rtol=1e-9, atol=0)
    split = e.intermediate["add"].sum() + e.intermediate["c3"].sum()
    torch.testing.assert_close(split, logit, rtol=1e-9, atol=0)
    torch.testing.assert_close(e.relevance, e.intermediate["x"])


def test_inplace_ops_match_out_of_place_model():
    m_in, m_out = residual_model(inplace=True), residual_model(inplace=False)
    m_out.load_state_dict(m_in.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for rule in ["epsilon-gamma-box", "epsilon-plus-flat", LRP0]:
        torch.testing.assert_close(lrpfx.explain(m_in, x, rule), lrpfx.explain(m_out, x, rule))
    # the in-place model is untouched: its forward still runs in place afterwards
    assert m_in.relu.inplace is True


# ---- BatchNorm folding ----------------------------------------------------------------------------------
def test_batchnorm_folding_equals_manually_folded_conv():
    m = residual_model()
    folded = copy.deepcopy(m)
    with torch.no_grad():
        s = m.bn.weight / torch.sqrt(m.bn.running_var + m.bn.eps)
        folded.c1.weight.copy_(m.c1.weight * s.view(-1, 1, 1, 1))
        folded.c1.bias.copy_((m.c1.bias - m.bn.running_mean) * s + m.bn.bias)
    folded.bn = nn.Identity()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    for rule in ["epsilon-gamma-box", "epsilon-alpha2beta1", "epsilon-plus"]:
        torch.testing.assert_close(lrpfx.explain(m, x, rule), lrpfx.explain(folded, x, rule), rtol=1e-9, atol=1e-12)


def test_unfoldable_batchnorm_passes_or_takes_epsilon():
    m = nn.Sequential(nn.BatchNorm1d(5), nn.Linear(5, 3)).double().eval()
    with torch.no_grad():
        m[0].running_mean.uniform_(-1, 1)
        m[0].running_var.uniform_(0.5, 2)
    x = torch.randn(4, 5, dtype=torch.float64)
    target = torch.zeros(4, dtype=torch.long)
    default = lrpfx.Explainer(m, lrpfx.Composite(linear=Epsilon(0)))(x, target=target, intermediate=True)
    torch.testing.assert_close(default.relevance, default.intermediate["0"])  # the kind's default: Pass
    eps = lrpfx.Explainer(m, lrpfx.Composite(linear=Epsilon(0), by_type={"batchnorm": Epsilon(0)}))(x, target=target)
    gi, _ = grad_times_input(m, x, target)
    torch.testing.assert_close(eps.relevance, gi, rtol=1e-10, atol=1e-13)
    # a single-rule string's epsilon reaches the unfolded BatchNorm too: "zero" is LRP-0 everywhere
    torch.testing.assert_close(lrpfx.Explainer(m, "epsilon(0)")(x, target=target).relevance, gi, rtol=1e-10,
                               atol=1e-13)


# ---- targets ----------------------------------------------------------------------------------------------
def test_target_forms_agree():
    m = seed_model()
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    ex = lrpfx.Explainer(m, "epsilon")
    out = m(x)
    by_int = ex(x, target=4).relevance
    by_tensor = ex(x, target=torch.tensor([4, 4, 4])).relevance
    by_relevance = ex(x, target=out.detach() * F.one_hot(torch.tensor([4, 4, 4]), 10)).relevance
    torch.testing.assert_close(by_int, by_tensor)
    torch.testing.assert_close(by_int, by_relevance)
    argmax = ex(x).relevance
    torch.testing.assert_close(argmax, ex(x, target=out.argmax(1)).relevance)


def test_start_one_is_the_seeds_onehot():
    m = seed_model()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    one = lrpfx.Explainer(m, "epsilon", start="one")(x, target=3).relevance
    same = lrpfx.Explainer(m, "epsilon")(x, target=F.one_hot(torch.tensor([3, 3]), 10).double()).relevance
    torch.testing.assert_close(one, same)


def test_multiple_inputs_give_a_tuple_of_relevances():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(4, 6), nn.Linear(3, 6), nn.Linear(6, 2)

        def forward(self, x, y):
            return self.head(torch.relu(self.a(x) + self.b(y)))

    m = Two().double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    rx, ry = lrpfx.explain(m, (x, y), LRP0)
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_()
    out = m(xg, yg)
    gx, gy = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), (xg, yg))
    torch.testing.assert_close(rx, gx * x)
    torch.testing.assert_close(ry, gy * y)


def test_intermediate_keys_in_execution_order():
    m = seed_model()
    e = lrpfx.Explainer(m, "epsilon")(torch.randn(2, 1, 8, 8, dtype=torch.float64), intermediate=True)
    assert list(e.intermediate) == ["input_1", "0", "1", "2", "3", "4"] or list(e.intermediate)[1:] == \
        ["0", "1", "2", "3", "4"]
    assert e.intermediate["4"].shape == (2, 10)


def test_batch_size_changes_reuse_the_program():
    m = seed_model()
    ex = lrpfx.Explainer(m, "epsilon")
    ex(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    ex(torch.randn(5, 1, 8, 8, dtype=torch.float64))
    assert len(ex._cache) == 1


# ---- composites -------------------------------------------------------------------------------------------
def test_custom_composite_precedence_and_rule_table():
    m = residual_model()
    comp = lrpfx.Composite(conv=ZPlus(), linear=Epsilon(0.1), first=Flat(), by_name={"c3": Gamma(0.5)},
                           by_type={nn.Conv2d: AlphaBeta(2, 1)},
                           predicates=[(lambda info: info.name == "c2", Epsilon(0.2))])
    table = lrpfx.export(m, torch.randn(1, 3, 8, 8, dtype=torch.float64), comp).rule_table()
    rows = {r.node: r for r in table}
    assert rows["c3"].rule.startswith("Gamma(gamma=0.5") and rows["c3"].chosen_by.startswith("by_name")
    assert rows["c2"].rule.startswith("Epsilon(eps=0.2") and rows["c2"].chosen_by.startswith("predicate")
    assert rows["c1"].rule.startswith("Flat(") and rows["c1"].chosen_by == "first"
    assert rows["fc"].rule.startswith("Epsilon(eps=0.1")
    assert "folded into" in rows["bn"].rule
    assert "Flat" in str(table) and isinstance(table.as_dicts()[0], dict)


def test_by_type_beats_conv_field():
    m = seed_model()
    comp = lrpfx.Composite(conv=ZPlus(), by_type={nn.Conv2d: Epsilon(0)})
    rows = {r.node: r for r in lrpfx.export(m, torch.randn(1, 1, 8, 8, dtype=torch.float64), comp).rule_table()}
    assert rows["_0"].rule.startswith("Epsilon(eps=0")


def test_export_code_reads_as_the_algorithm():
    prog = lrpfx.export(seed_model(), torch.randn(1, 1, 8, 8, dtype=torch.float64), "epsilon-gamma-box")
    code = prog.code
    assert "affine_zbox" in code and "affine_epsilon" in code and "initial_relevance" in code
    out, (r,) = prog(torch.randn(2, 1, 8, 8, dtype=torch.float64))
    assert r.shape == (2, 1, 8, 8)


def test_norm_on_max_pool_treats_it_as_average_pooling():
    m = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4, 2)).double()
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64).abs()
    comp = lrpfx.Composite(linear=Epsilon(0, zero_bias=True), by_type={"max_pool": Norm(0)})
    e = lrpfx.Explainer(m, comp)(x, intermediate=True)
    r2 = e.intermediate["1"]
    avg = F.avg_pool2d(x, 2)
    expected = x * F.interpolate(r2 / avg, scale_factor=2, mode="nearest") / 4
    torch.testing.assert_close(e.relevance, expected)


def test_layer_norm_identity_rule_conserves_with_zero_bias():
    m = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.GELU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        m[1].weight.uniform_(0.5, 1.5)
        m[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(4, 6, dtype=torch.float64)
    comp = lrpfx.Composite(linear=Epsilon(0, zero_bias=True), by_type={"layer_norm": NormIdentity(0, zero_bias=True)})
    e = lrpfx.Explainer(m, comp)(x, intermediate=True)
    total = e.output.max(1).values.sum()
    for name, r in e.intermediate.items():
        torch.testing.assert_close(r.sum(), total, rtol=1e-9, atol=0, msg=name)


# ---- no side effects ----------------------------------------------------------------------------------------
def test_model_and_caller_state_untouched():
    m = residual_model()
    m.train()
    m.c2.weight.requires_grad_(False)
    m.fc.weight.grad = torch.ones_like(m.fc.weight)
    state = copy.deepcopy(m.state_dict())
    flags = {n: mod.training for n, mod in m.named_modules()}
    req = {n: p.requires_grad for n, p in m.named_parameters()}
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    lrpfx.explain(m, x, "epsilon-gamma-box")
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert flags == {n: mod.training for n, mod in m.named_modules()}
    assert req == {n: p.requires_grad for n, p in m.named_parameters()}
    assert torch.equal(m.fc.weight.grad, torch.ones_like(m.fc.weight)) and m.c1.weight.grad is None
    assert x.grad is None
    assert m.relu.inplace is True and not m._forward_hooks and not m.c1._forward_hooks


def test_training_mode_model_is_explained_in_eval_semantics():
    m = nn.Sequential(nn.Linear(5, 5), nn.Dropout(0.9), nn.Linear(5, 2)).double()
    m.train()
    x = torch.randn(3, 5, dtype=torch.float64)
    r1, r2 = lrpfx.explain(m, x, "epsilon"), lrpfx.explain(m, x, "epsilon")
    torch.testing.assert_close(r1, r2)
    assert m.training and m[1].training


# ---- bad input: typed errors that name the problem and the fix ---------------------------------------------
def test_unsupported_op_names_node_line_and_fix():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.cumprod(x, dim=1))

    with pytest.raises(lrpfx.UnsupportedOpError) as err:
        lrpfx.explain(Odd(), torch.randn(2, 4))
    msg = str(err.value)
    assert "cumprod" in msg and "test_api.py" in msg and "Composite(by_name" in msg
    # and the fix works: the gradient of cumprod routes relevance
    r = lrpfx.explain(Odd(), torch.randn(2, 4), lrpfx.Composite(linear=Epsilon(), by_name={"cumprod": Gradient()}))
    assert r.shape == (2, 4)


def test_untraceable_model_names_the_line():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(lrpfx.TraceError) as err:
        lrpfx.explain(Branchy(), torch.randn(2, 4))
    assert "if x.sum() > 0" in str(err.value) and "leaf_modules" in str(err.value)


@pytest.mark.parametrize("rule", ["nonsense", "epsilon(abc)", "alphabeta(3,1)", "gamma(-1)", "epsilon(1,2,3)", 42])
def test_invalid_rules_raise_rule_error(rule):
    with pytest.raises(lrpfx.RuleError):
        lrpfx.Explainer(seed_model(), rule)


def test_rule_that_cannot_apply_to_the_node():
    comp = lrpfx.Composite(by_name={"0": Pass()})
    with pytest.raises(lrpfx.RuleError, match="cannot apply to node"):
        lrpfx.explain(seed_model(), torch.randn(1, 1, 8, 8, dtype=torch.float64), comp)
    with pytest.raises(lrpfx.RuleError):
        AlphaBeta(2, 2)


@pytest.mark.parametrize("target, match", [(10, "out of range"), (-1, "out of range"),
                                           (torch.tensor([1, 2, 3]), "one class index per sample"),
                                           (torch.zeros(2, 3, dtype=torch.float64), "shaped like the output"),
                                           ("cat", "target")])
def test_bad_targets(target, match):
    with pytest.raises(lrpfx.TargetError, match=match):
        lrpfx.explain(seed_model(), torch.randn(2, 1, 8, 8, dtype=torch.float64), target=target)


def test_bad_inputs():
    m = seed_model()
    with pytest.raises(lrpfx.InputError, match="dtype"):
        lrpfx.explain(m, torch.randn(2, 1, 8, 8))
    with pytest.raises(lrpfx.InputError, match="failed on these inputs"):
        lrpfx.explain(m, torch.randn(2, 2, 8, 8, dtype=torch.float64))
    with pytest.raises(lrpfx.InputError, match="empty batch"):
        lrpfx.explain(m, torch.randn(0, 1, 8, 8, dtype=torch.float64))
    bad = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(lrpfx.InputError, match="NaN"):
        lrpfx.explain(m, bad)
    assert lrpfx.Explainer(m, "epsilon", allow_nonfinite=True)(bad).relevance.shape == bad.shape
    with pytest.raises(lrpfx.InputError, match="tensor"):
        lrpfx.explain(m, "not a tensor")
    with pytest.raises(lrpfx.InputError, match="meta"):
        lrpfx.explain(seed_model().to("meta"), torch.randn(1, 1, 8, 8, dtype=torch.float64))


def test_tuple_output_needs_a_selector():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(4, 2)

        def forward(self, x):
            return self.a(x), self.b(x)

    x = torch.randn(2, 4)
    with pytest.raises(lrpfx.OutputError, match="output="):
        lrpfx.explain(TwoHeads(), x)
    assert lrpfx.explain(TwoHeads(), x, output=lambda out: out[1]).shape == (2, 4)


def test_all_zero_input_and_dead_relus_give_zeros_not_nan():
    m = seed_model()
    for rule in ["epsilon(0)", "epsilon", "epsilon-gamma-box", "alpha2beta1", "epsilon-plus-flat"]:
        r = lrpfx.explain(m, torch.zeros(2, 1, 8, 8, dtype=torch.float64), rule)
        assert torch.isfinite(r).all(), rule


@pytest.mark.slow
def test_compiled_equals_eager():
    m = residual_model().float()
    x = torch.randn(2, 3, 8, 8)
    for rule in ["epsilon-gamma-box", "epsilon-plus-flat"]:
        eager = lrpfx.Explainer(m, rule)(x).relevance
        compiled = lrpfx.Explainer(m, rule, compile=True)(x).relevance
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-6)
