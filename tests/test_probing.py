"""Ops no registry row knows are classified by probing their values in float64: a linear map gets the
proportional rule, an elementwise op is an activation; what fits neither is refused. The class shows in the
rule table and in a log line."""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import UnsupportedOpError
from tests.helpers.lrp0 import grad_times_input

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


class Unknown(nn.Module):
    def __init__(self, how: str, reference: bool = False):
        super().__init__()
        self.a = nn.Linear(3, 4, bias=False)
        self.fc = nn.Linear(3 if how == "diff" else 4, 2, bias=False)
        self.how, self.reference = how, reference

    def forward(self, x):
        h = self.a(x).relu()
        if self.how == "diff":  # linear, mixes neighbours
            h = torch.diff(h, dim=1)
        elif self.how == "erf":  # elementwise; the reference is the Pass rule's gradient
            h = h * (torch.erf(h) / h).nan_to_num().detach() if self.reference else torch.erf(h)
        else:  # neither linear nor elementwise
            h = torch.cumprod(h, 1)
        return self.fc(h)


def setup(how):
    torch.manual_seed(0)
    model = Unknown(how).double().eval()
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return model, x, torch.tensor([0, 1])


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("how,kind", [("diff", "linear"), ("erf", "elementwise")])
def test_probed_op_takes_its_class_rule(how, kind, frontend, caplog):
    model, x, target = setup(how)
    with caplog.at_level(logging.INFO, logger="lrpfx"):
        explainer = lrpfx.Explainer(model, "zero", frontend=frontend)
        e = explainer(x, target=target)
    assert f"probed in float64 it is {kind}" in caplog.text and "test_probing.py" in caplog.text
    assert any(f"probed: {kind}" in row.op for row in explainer.program(x).rule_table())
    reference = Unknown(how, reference=True).double().eval()
    reference.load_state_dict(model.state_dict())
    expected = grad_times_input(reference, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=0, atol=1e-10 * expected.abs().max())


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_op_that_fits_no_class_is_refused(frontend):
    model, x, target = setup("cumprod")
    with pytest.raises(UnsupportedOpError) as err:
        lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    assert "cumprod" in str(err.value) and "test_probing.py" in str(err.value)
