"""Extending lrpfx from user code: an op of one's own (module class or function) registered with
``lrpfx.register_op``, a rule of one's own (a Rule subclass with a pure relevance function), both end to end on
both front-ends, checked against a float64 formula written here, and visible in the rule table."""
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import RuleError

torch.manual_seed(0)


class Bent(nn.Module):
    """A user's activation lrpfx does not know (fx would trace through it into a product of activations)."""

    def forward(self, x):
        return x * torch.sigmoid(2.0 * x)


def soft_clip(x):
    """A user's elementwise function, called from forward."""
    return torch.tanh(x) * 1.5


class Net(nn.Module):
    def __init__(self, activation="module"):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(5, 7), Bent(), nn.Linear(7, 3)
        self.activation = activation

    def forward(self, x):
        h = self.fc1(x)
        h = self.act(h) if self.activation == "module" else soft_clip(h)
        return self.fc2(h)


@dataclass(frozen=True)
class Scaled(lrpfx.Rule):
    """A rule of one's own: the activation's relevance, scaled by ``share`` (a pure function of x, out, R)."""

    share: float = 0.5
    kinds: ClassVar[frozenset] = frozenset({lrpfx.Kind.ACTIVATION})
    name: ClassVar[str] = "scaled"

    @staticmethod
    def function(x, out, r, *, share):
        return share * r


@pytest.fixture
def registered():
    rows = [lrpfx.register_op(Bent, kind="activation"), lrpfx.register_op(soft_clip, kind="activation")]
    yield rows
    for row in rows:
        lrpfx.unregister_op(row)


def lrp0_through_pass(model, x, target, share=1.0):
    """LRP-0 with the activation passing ``share`` of its relevance on, written out in float64."""
    z1 = x @ model.fc1.weight.T + model.fc1.bias
    h = model.act(z1) if model.activation == "module" else soft_clip(z1)
    z2 = h @ model.fc2.weight.T + model.fc2.bias
    r_out = torch.zeros_like(z2)
    r_out[torch.arange(len(x)), target] = z2[torch.arange(len(x)), target]
    r_h = h * ((r_out / z2) @ model.fc2.weight)
    return x * ((share * r_h / z1) @ model.fc1.weight)


@pytest.mark.parametrize("activation", ["module", "function"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_registered_op_gets_its_kinds_rule(registered, activation, frontend):
    model = Net(activation).double().eval()
    x = torch.randn(4, 5, dtype=torch.float64)
    explainer = lrpfx.Explainer(model, lrpfx.Composite(linear=lrpfx.rules.Epsilon(0.0)), frontend=frontend)
    e = explainer(x, target=1)
    torch.testing.assert_close(e.relevance, lrp0_through_pass(model, x, torch.full((4,), 1)), rtol=1e-10, atol=1e-12)
    rows = [r for r in explainer.program(x).rule_table() if r.kind == "activation"]
    if activation == "function" and frontend == "export":  # export records the function's ATen ops instead
        assert not any(r.op.endswith("soft_clip") for r in rows) and any("tanh" in r.op for r in rows)
        return  # (tanh under Pass, then a constant scale: the same relevance)
    assert len(rows) == 1 and rows[0].rule == "Pass()", explainer.program(x).rule_table()
    assert rows[0].op.endswith("Bent" if activation == "module" else "soft_clip")  # kept whole, one node


def test_without_registration_the_op_is_traced_through():
    for activation in ("module", "function"):
        table = lrpfx.export(Net(activation).double().eval(), torch.randn(2, 5, dtype=torch.float64)).rule_table()
        assert not any(r.op.endswith(("Bent", "soft_clip")) for r in table), table  # its pieces were explained


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_rule_of_ones_own_runs_and_shows_in_the_rule_table(registered, frontend):
    model = Net().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    composite = lrpfx.Composite(linear=lrpfx.rules.Epsilon(0.0), by_type={Bent: Scaled(0.25)})
    explainer = lrpfx.Explainer(model, composite, frontend=frontend)
    e = explainer(x, target=2)
    torch.testing.assert_close(e.relevance, lrp0_through_pass(model, x, torch.full((3,), 2), share=0.25),
                               rtol=1e-10, atol=1e-12)
    row = next(r for r in explainer.program(x).rule_table() if r.kind == "activation")
    assert row.rule == "Scaled(share=0.25)" and row.chosen_by == "by_type[Bent]"
    assert "Scaled.function" in explainer.program(x).code or "function" in explainer.program(x).code


def test_a_rule_of_ones_own_has_a_rule_string(registered):
    model = Net().double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    by_string = lrpfx.explain(model, x, lrpfx.Composite(linear="zero", by_type={"activation": "scaled(0.5)"}), 0)
    by_object = lrpfx.explain(model, x, lrpfx.Composite(linear="zero", by_type={"activation": Scaled(0.5)}), 0)
    torch.testing.assert_close(by_string, by_object, rtol=0, atol=0)


def test_registering_nonsense_is_refused_with_the_fix():
    with pytest.raises(RuleError, match="unknown op kind 'activaton'"):
        lrpfx.register_op(Bent, kind="activaton")
    with pytest.raises(RuleError, match="needs the op's parameters"):
        lrpfx.register_op(Bent, kind="linear")
    with pytest.raises(RuleError, match="module classes, functions or Tensor method names"):
        lrpfx.register_op(3, kind="activation")
    with pytest.raises(RuleError, match="module classes, functions or Tensor method names"):
        lrpfx.register_op(kind="activation")


def test_a_rule_without_a_function_is_refused_where_it_is_assigned(registered):
    @dataclass(frozen=True)
    class Nothing(lrpfx.Rule):
        kinds: ClassVar[frozenset] = frozenset({"activation"})

    with pytest.raises(RuleError, match="cannot apply to node"):
        lrpfx.explain(Net().double(), torch.randn(2, 5, dtype=torch.float64),
                      lrpfx.Composite(by_type={"activation": Nothing()}), 0)


def test_a_rule_on_a_kind_it_does_not_declare_is_refused(registered):
    with pytest.raises(RuleError, match="cannot apply to node 'fc1'"):
        lrpfx.explain(Net().double(), torch.randn(2, 5, dtype=torch.float64),
                      lrpfx.Composite(by_name={"fc1": Scaled()}), 0)


def test_unregistering_restores_the_built_in_behaviour():
    row = lrpfx.register_op(Bent, kind="activation")
    lrpfx.unregister_op(row)
    test_without_registration_the_op_is_traced_through()
