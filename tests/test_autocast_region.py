"""Export keeps ``with torch.autocast(..., enabled=False)`` blocks (rotary embeddings kept in float32) as one
higher-order call; lrpfx inlines them, so their ops get their rules. Reference: LRP-0 equals gradient × input."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import UnsupportedOpError

pytestmark = pytest.mark.usefixtures("one_thread")


class Region(nn.Module):
    def __init__(self, enabled: bool = False):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)
        self.enabled = enabled

    def forward(self, x):
        h = self.a(x).relu()
        with torch.autocast("cpu", enabled=self.enabled):
            h = self.b(h.float()).relu() + self.b(h)
        return h


def test_autocast_region_is_inlined():
    torch.manual_seed(0)
    model, x, target = Region().eval(), torch.randn(2, 3, generator=torch.Generator().manual_seed(1)), \
        torch.tensor([0, 1])
    e = lrpfx.Explainer(model, "zero", frontend="export")(x, target=target)
    table = lrpfx.Explainer(model, "zero", frontend="export").program(x).rule_table()
    assert not any("autocast" in row.op for row in table)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).gather(1, target[:, None]).sum(), xg)
    assert (g * x).abs().sum() > 0
    torch.testing.assert_close(e.relevance, g * x, rtol=1e-5, atol=1e-6)


def test_enabled_autocast_region_is_refused_by_name():
    torch.manual_seed(0)
    model, x = Region(enabled=True).eval(), torch.randn(2, 3)
    with pytest.raises(UnsupportedOpError, match="autocast"):
        lrpfx.Explainer(model, "zero", frontend="export")(x, target=torch.tensor([0, 1]))
