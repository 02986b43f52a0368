"""Never a silent wrong answer: regression tests for what a new user tripped over (wrong zeros, dropped relevance,
lost source lines, suggested fixes that did not work, patterns that matched nothing)."""
from __future__ import annotations

import importlib.util
import re
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.composites import AttnLRP
from lrpfx.rules import Epsilon, Gradient, Pass

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


def gradient_times_input(model, x, target=None, select=lambda o: o):
    x = x.clone().requires_grad_(True)
    out = select(model(x))
    if target is None:
        target = out.argmax(1)
    (g,) = torch.autograd.grad(out.gather(1, target.view(-1, 1)).sum(), x)
    return (g * x).detach()


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# ---- 1. no wrong zeros ---------------------------------------------------------------------------------------
class NestedBlock(nn.Module):
    """A layer that returns a nested tuple ``(a, (b, c))``, kept whole as a leaf: no rule reads such a value
    (recurrent layers are the exception lrpfx knows, see tests/test_recurrent.py)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 5)

    def forward(self, x):
        y = self.proj(x)
        return y, (y.tanh(), y.sigmoid())


class NestedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = NestedBlock()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        out, (h, c) = self.block(x)
        return self.fc(out[:, -1])


@pytest.mark.parametrize("rule", ["epsilon", "gradient*input", "epsilon-plus-flat"])
@pytest.mark.parametrize("frontend", ["fx", "auto"])
def test_a_node_lrpfx_does_not_track_is_an_error_not_a_zero(rule, frontend):
    with pytest.raises(lrpfx.UnsupportedOpError) as err:
        lrpfx.explain(NestedHead(), torch.randn(2, 6, 4), rule=rule, frontend=frontend, leaf_modules=[NestedBlock])
    if frontend == "fx":  # the node and the user's line are named
        assert "'block'" in str(err.value) and "test_trust.py" in str(err.value) and "nested tuple" in str(err.value)


def test_an_input_the_output_does_not_depend_on_is_reported():
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, unused):
            return self.fc(x)

    with pytest.warns(lrpfx.errors.LrpfxWarning, match="does not depend on input 'unused'"):
        rx, ru = lrpfx.explain(TwoInputs(), (torch.randn(2, 4), torch.randn(2, 4)))
    assert rx.abs().sum() > 0 and ru.abs().sum() == 0


def test_index_values_are_constants_without_warning():
    """Relevance does not flow through integer values (argmax indices): that is by design, not an error."""
    class Gathered(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x):
            idx = x.argmax(dim=1, keepdim=True)
            return self.fc(x * (idx.to(x.dtype) + 1))

    x = torch.randn(2, 6, dtype=D)
    with warnings.catch_warnings():
        warnings.simplefilter("error", lrpfx.errors.LrpfxWarning)
        assert lrpfx.explain(Gathered().double(), x, rule="zero").abs().sum() > 0


# ---- 2. every way of indexing a split or a tensor keeps the relevance ----------------------------------------
INDEXINGS = {
    "split[-1]": lambda h: torch.split(h, 2, dim=1)[-1],
    "split[3]": lambda h: torch.split(h, 2, dim=1)[3],
    "chunk[-2]": lambda h: h.chunk(4, dim=1)[-2],
    "unbind[-1]": lambda h: h.view(-1, 4, 2).unbind(1)[-1],
    "split[1:] cat": lambda h: torch.cat(torch.split(h, 2, dim=1)[1:], dim=1),
    "split[::2] cat": lambda h: torch.cat(torch.split(h, 2, dim=1)[::2], dim=1),
    "split[-3:-1] cat": lambda h: torch.cat(torch.split(h, 2, dim=1)[-3:-1], dim=1),
    "split whole and piece": lambda h: torch.cat([*torch.split(h, 2, dim=1), torch.split(h, 2, dim=1)[-1]], 1),
    "slice step": lambda h: h[:, 1::3],
    "negative slice": lambda h: h[:, -5:-1],
    "ellipsis": lambda h: h[..., -3:],
    "tuple index": lambda h: h.view(-1, 4, 2)[:, -1, :],
    "select negative": lambda h: h.view(-1, 4, 2).select(1, -2),
    "None index": lambda h: h[:, None, 2:6].flatten(1),
    "index list": lambda h: h[:, [0, -1, 3]],
}


class Indexed(nn.Module):
    def __init__(self, pick):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.pick = pick
        self.b = nn.LazyLinear(3)

    def forward(self, x):
        return self.b(self.pick(F.relu(self.a(x))).flatten(1))


@pytest.mark.parametrize("name", list(INDEXINGS))
def test_lrp0_through_indexing_equals_gradient_times_input(name):
    model = Indexed(INDEXINGS[name])
    x = torch.randn(3, 8, dtype=D)
    model(x.float())  # materialise the lazy layer
    model = model.double()
    R = lrpfx.explain(model, x, rule="zero")
    assert rel_err(R, gradient_times_input(model, x)) < 1e-12


# ---- 3. the user's line survives a project folder named lrpfx or torch --------------------------------------
USER_MODULE = textwrap.dedent("""
    import torch
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(torch.cumprod(x, dim=1))  # USER-LINE-ODD

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # USER-LINE-BRANCH
                return self.fc(x)
            return -self.fc(x)
""")


@pytest.mark.parametrize("folder", ["lrpfx", "torch", "site-packages/lrpfx"])
def test_errors_name_the_users_line_whatever_the_folder_is_called(tmp_path, folder):
    path = tmp_path / folder / "usermodels.py"
    path.parent.mkdir(parents=True)
    path.write_text(USER_MODULE)
    spec = importlib.util.spec_from_file_location(f"usermodels_{folder.replace('/', '_').replace('-', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(lrpfx.UnsupportedOpError, match="USER-LINE-ODD") as err:
        lrpfx.explain(module.Odd(), torch.randn(2, 4))
    assert str(path) in str(err.value)
    with pytest.raises(lrpfx.TraceError, match="USER-LINE-BRANCH"):
        lrpfx.explain(module.Branchy(), torch.randn(2, 4), frontend="fx")
    with pytest.raises(lrpfx.TraceError, match="USER-LINE-BRANCH"):
        lrpfx.explain(module.Branchy(), torch.randn(2, 4), frontend="export")


# ---- 4. LRP-0 is LRP-0 everywhere ---------------------------------------------------------------------------
class SplitMerge(nn.Module):
    """Residual add, concatenation, average pooling, a mean and a subtraction: every proportional step."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = F.relu(self.c1(x))
        r = F.relu(self.c2(h)) + h
        c = F.relu(self.c3(torch.cat([r, h], 1)))
        p = F.avg_pool2d(c, 2) - 0.5 * F.avg_pool2d(c, 2, stride=2)
        return self.fc(self.pool(p).mean((2, 3)))


@pytest.mark.parametrize("rule", ["zero", "epsilon(0)", Epsilon(0.0)])
def test_single_rule_lrp0_equals_gradient_times_input(rule):
    model = SplitMerge().double()
    x = torch.randn(2, 3, 8, 8, dtype=D)
    assert rel_err(lrpfx.explain(model, x, rule=rule), gradient_times_input(model, x)) < 1e-12


def test_a_single_rules_epsilon_reaches_the_proportional_steps():
    table = lrpfx.export(SplitMerge().double(), torch.randn(1, 3, 8, 8, dtype=D), rule="epsilon(0.25)").rule_table()
    kinds = {row.kind: row.rule for row in table}
    assert "0.25" in kinds["add"] and "0.25" in kinds["avg_pool"] and "0.25" in kinds["reduce"]


# ---- 5. presets named after a reference reproduce it ---------------------------------------------------------
def test_attnlrp_preset_is_the_reference_default():
    preset = lrpfx.composites.PRESETS["attnlrp"]()
    assert preset == AttnLRP(epsilon=0.0)
    assert all(getattr(rule, "eps", 0.0) == 0.0 for _, rule in preset.by_type)


# ---- 6. output selectors that compute work on both front-ends ------------------------------------------------
class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        h = F.relu(self.conv(x))
        return self.fc(h.flatten(1)), h


SELECTORS = {
    "slice": (lambda o: o[0][:, :2], None),
    "segmentation channel": (lambda o: o[1][:, :1].sum(dim=(2, 3)), 0),
    "cat": (lambda o: torch.cat([o[0], 2 * o[0]], 1), None),
    "method chain": (lambda o: o[0].softmax(-1).log(), None),
}


@pytest.mark.parametrize("name", list(SELECTORS))
def test_computing_output_selectors_work_on_both_front_ends(name):
    select, target = SELECTORS[name]
    model = TwoHeads().double()
    x = torch.randn(2, 3, 6, 6, dtype=D)
    fx_r = lrpfx.explain(model, x, rule="gradient*input", output=select, frontend="fx", target=target)
    ex_r = lrpfx.explain(model, x, rule="gradient*input", output=select, frontend="export", target=target)
    t = None if target is None else torch.full((2,), target)
    expected = gradient_times_input(model, x, t, select)
    assert rel_err(fx_r, expected) < 1e-10 and rel_err(ex_r, expected) < 1e-10


def test_a_failing_selector_names_the_problem_and_the_line():
    with pytest.raises(lrpfx.OutputError, match=r"(?s)IndexError.*test_trust.py"):
        lrpfx.explain(TwoHeads(), torch.randn(1, 3, 6, 6), output=lambda o: o[5])


# ---- 7. every rule an error suggests works on the op it is suggested for -------------------------------------
class Unknown(nn.Module):
    def __init__(self, op):
        super().__init__()
        self.op = op
        self.fc = nn.LazyLinear(3)

    def forward(self, x):
        return self.fc(self.op(x).flatten(1))


UNKNOWN_OPS = {
    "max(dim)": lambda x: x.max(dim=1)[0],
    "max(dim) unpacked": lambda x: x.max(dim=2).values,
    "amax": lambda x: torch.amax(x, dim=1),
    "cumsum": lambda x: torch.cumsum(x, dim=1),
    "erf": torch.erf,
    "sort": lambda x: torch.sort(x, dim=2)[0],
    "topk": lambda x: x.topk(2, dim=2).values,
    "cummax": lambda x: torch.cummax(x, dim=1)[0],
    "logsumexp": lambda x: torch.logsumexp(x, dim=1),
}
_SUGGESTED = re.compile(r"\b(Pass|Gradient|Structural)\(\)")


@pytest.mark.parametrize("name", list(UNKNOWN_OPS))
def test_every_suggested_rule_works(name):
    model = Unknown(UNKNOWN_OPS[name])
    x = torch.randn(2, 3, 4, dtype=D)
    model(x.float())
    model = model.double()
    selects = name not in ("erf", "logsumexp", "cumsum")  # ops that pick values, so LRP-0 through them is exact
    try:
        R = lrpfx.explain(model, x, rule="zero")
    except lrpfx.UnsupportedOpError as err:
        message = str(err)
    else:  # the op has a rule of its own by now: it must be right, not merely run
        assert torch.isfinite(R).all() and R.abs().sum() > 0
        if selects:
            assert rel_err(R, gradient_times_input(model, x)) < 1e-10
        return
    node = re.search(r"by_name=\{'([^']+)'", message).group(1)
    suggested = set(_SUGGESTED.findall(message))
    assert "Gradient" in suggested
    for rule_name in suggested:
        rule = {"Pass": Pass(), "Gradient": Gradient(), "Structural": lrpfx.rules.Structural()}[rule_name]
        composite = lrpfx.Composite(linear=Epsilon(0.0), by_name={node: rule})
        R = lrpfx.explain(model, x, rule=composite)
        assert torch.isfinite(R).all() and R.abs().sum() > 0, (name, rule_name)
    # for ops that select values (max, sort, topk) routing by the gradient is LRP-0 through them, so with LRP-0
    # elsewhere the whole explanation is gradient x input
    R = lrpfx.explain(model, x, rule=lrpfx.Composite(linear=Epsilon(0.0), by_name={node: Gradient()}))
    if not selects:  # ops that mix values: no such identity
        return
    assert rel_err(R, gradient_times_input(model, x)) < 1e-10


def test_pass_on_an_op_that_is_not_elementwise_is_refused_with_the_fix():
    model = Unknown(UNKNOWN_OPS["sort"])
    model(torch.randn(1, 3, 4))
    with pytest.raises(lrpfx.RuleError, match=r"Pass\(\) cannot apply.*Gradient\(\)"):
        lrpfx.explain(model, torch.randn(1, 3, 4), rule=lrpfx.Composite(by_name={"sort": Pass()}))


# ---- 8. patterns and rule names that match nothing -----------------------------------------------------------
def test_a_by_name_pattern_matching_nothing_is_an_error_with_close_matches():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    with pytest.raises(lrpfx.RuleError, match=r"'layer4\.\*\.conv2' matches no node"):
        lrpfx.explain(model, torch.randn(1, 3, 6, 6), rule=lrpfx.Composite(by_name={"layer4.*.conv2": Epsilon()}))
    with pytest.raises(lrpfx.RuleError, match=r"close matches: \['3'"):
        lrpfx.explain(model, torch.randn(1, 3, 6, 6), rule=lrpfx.Composite(by_name={"3.": Epsilon()}))


@pytest.mark.parametrize("typo, suggestion", [("epsilom", "epsilon"), ("eps-gamma-box", "epsilon-gamma-box"),
                                              ("atnlrp", "attnlrp"), ("alpha2beta", "alpha2beta1")])
def test_unknown_rule_names_suggest_what_the_user_can_pass(typo, suggestion):
    with pytest.raises(lrpfx.RuleError) as err:
        lrpfx.Explainer(nn.Linear(2, 2), typo)
    message = str(err.value)
    assert f"did you mean '{suggestion}'" in message or f"'{suggestion}'" in message.split("known rules")[0]
    listed = message.split("known rules: ")[1]
    assert "wta" not in listed and "norm-identity" not in listed  # internal kinds' rules are not model rules


# ---- the user's model is never changed -----------------------------------------------------------------------
_CLOSED_OVER = torch.tensor([1.0, 2.0, 3.0, 4.0])


def test_tracing_leaves_no_attributes_on_the_users_model():
    """fx stores tensors a forward closes over on the traced root (``_tensor_constant0``); lrpfx takes them off."""
    class ClosesOver(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x * _CLOSED_OVER + torch.ones(4))

    model = ClosesOver()
    attributes, state = set(vars(model)), set(model.state_dict())
    R = lrpfx.explain(model, torch.randn(2, 4), rule="gradient*input")
    assert set(vars(model)) == attributes and set(model.state_dict()) == state
    assert R.abs().sum() > 0


def test_arguments_fixed_to_their_defaults_do_not_swallow_the_target():
    class WithDefaults(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x, mask=None, scale: float = 2.0):
            out = self.fc(x) * scale
            return out if mask is None else out * mask

    model = WithDefaults().double()
    x = torch.randn(2, 4, dtype=D)
    for target in (0, 2):
        R = lrpfx.explain(model, x, rule="zero", target=target)
        assert isinstance(R, torch.Tensor)
        assert rel_err(R, gradient_times_input(model, x, torch.full((2,), target))) < 1e-12
    assert "mask" not in lrpfx.export(model, x).code


def test_export_names_a_recurrent_layer_by_its_attribute():
    """``by_name`` keys are module paths on both front-ends: an ``nn.GRU`` called ``rnn`` is ``rnn``, not ``gru``."""
    class Tagger(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.GRU(4, 5, batch_first=True)
            self.fc = nn.Linear(5, 3)

        def forward(self, x):
            out, h = self.rnn(x)
            return self.fc(out[:, -1])

    model, x = Tagger(), torch.randn(2, 6, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # export's note on the layer's flat weights
        for frontend in ("fx", "export"):
            table = lrpfx.export(model, x, frontend=frontend).rule_table()
            assert "rnn" in [row.module for row in table], frontend
            lrpfx.explain(model, x, frontend=frontend, rule=lrpfx.Composite(by_name={"rnn": Gradient()}))


def test_a_non_finite_output_is_an_error_not_a_relevance():
    """A model that returns NaN (transformers' float64 Bloom does for padded rows) gets an error naming the samples."""
    class Overflows(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return self.fc(x) * float("inf")  # inf, and nan where fc is 0

    x = torch.randn(2, 4)
    with pytest.raises(lrpfx.OutputError, match=r"NaN or Inf \(samples \[0, 1\]\).*allow_nonfinite=True"):
        lrpfx.explain(Overflows(), x, rule="epsilon", target=0)
    R = lrpfx.explain(Overflows(), x, rule="epsilon", target=0, allow_nonfinite=True)
    assert R.shape == x.shape
