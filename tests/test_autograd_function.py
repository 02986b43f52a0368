"""A custom ``torch.autograd.Function`` is one node named by its class: refused with the fix, explained by its own
backward under ``Gradient()``, or by the row the user registers for it; the export front-end names it in a warning."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import LrpfxWarning, UnsupportedOpError
from lrpfx.rules import Epsilon, Gradient

pytestmark = pytest.mark.usefixtures("one_thread")


class RoundSTE(torch.autograd.Function):
    """Quantisation with a straight-through backward: the forward's ops (round) have no rule, the backward is
    the identity scaled by 0.5 (so a test can tell the backward from the forward)."""

    @staticmethod
    def forward(ctx, x):
        return torch.round(x * 4) / 4

    @staticmethod
    def backward(ctx, g):
        return 0.5 * g


class Quantised(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.b(RoundSTE.apply(self.a(x).relu()))


def setup():
    torch.manual_seed(0)
    model = Quantised().double().eval()
    x = 3 * torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x, torch.tensor([0, 1])


def test_custom_function_is_refused_with_the_fix():
    model, x, target = setup()
    with pytest.raises(UnsupportedOpError) as err:
        lrpfx.Explainer(model, "zero", frontend="fx")(x, target=target)
    message = str(err.value)
    assert "RoundSTE.apply" in message and "test_autograd_function.py" in message and "Gradient()" in message


def test_gradient_rule_uses_the_functions_backward():
    """LRP-0 on both linear maps, the Function's own backward (0.5·R) between them; written out by hand."""
    model, x, target = setup()
    composite = lrpfx.Composite(linear=Epsilon(0.0), by_name={"round_ste_apply": Gradient()})
    e = lrpfx.Explainer(model, composite, frontend="fx")(x, target=target)
    with torch.no_grad():
        h = model.a(x).relu()
        q = RoundSTE.apply(h)
        out = model.b(q)
        r_out = torch.zeros_like(out).scatter(1, target[:, None], out.gather(1, target[:, None]))
        assert (out != 0).all()
        r_q = q * ((r_out / out) @ model.b.weight)
        r_h = 0.5 * r_q
        z = model.a(x)
        r_x = x * ((torch.where(z != 0, r_h / z, torch.zeros_like(z))) @ model.a.weight)
    assert r_x.abs().sum() > 0
    torch.testing.assert_close(e.relevance, r_x, rtol=1e-10, atol=1e-12)


def test_registered_function_takes_its_row():
    model, x, target = setup()
    row = lrpfx.register_op(RoundSTE, kind="identity")
    try:
        program = lrpfx.Explainer(model, "zero", frontend="fx").program(x)
    finally:
        lrpfx.unregister_op(row)
    kinds = {r.node: r.kind for r in program.rule_table()}
    assert kinds["round_ste_apply"] == "identity"


def test_export_names_the_function_it_traces_through():
    """Export inlines the forward (its round is probed elementwise and passes relevance on), after a warning that
    names the Function and the fx front-end's fix."""
    model, x, target = setup()
    with pytest.warns(LrpfxWarning, match="RoundSTE.apply") as record:
        e = lrpfx.Explainer(model, "zero", frontend="export")(x, target=target)
    assert any("frontend='fx'" in str(w.message) for w in record)
    assert torch.isfinite(e.relevance).all()
