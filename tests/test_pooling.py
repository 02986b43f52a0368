"""Closed-form pooling steps (winner-takes-all by scattering onto the winners, average pooling by its backward
kernel) equal the gradient: LRP-0 with Norm(0) on average pooling is gradient × input on ReLU networks."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.rules import Epsilon, Norm
from tests.test_api import grad_times_input

LRP0 = lrpfx.Composite(conv=Epsilon(0), linear=Epsilon(0), by_type={"avg_pool": Norm(0), "add": Norm(0)})


class Pooled(nn.Module):
    def __init__(self, dim, pool, functional=None):
        super().__init__()
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dim]
        self.conv, self.pool, self.functional = conv(2, 3, 3, padding=1), pool, functional
        self.head = nn.LazyLinear(4)

    def forward(self, x):
        h = torch.relu(self.conv(x))
        h = self.functional(h) if self.functional is not None else self.pool(h)
        return self.head(h.flatten(1))


CASES = [
    (2, nn.MaxPool2d(3, 2, padding=1), None),
    (2, nn.MaxPool2d(2, ceil_mode=True), None),
    (2, nn.MaxPool2d(3, 1, dilation=2), None),
    (2, nn.AdaptiveMaxPool2d((2, 3)), None),
    (1, nn.MaxPool1d(3, 2), None),
    (3, nn.MaxPool3d(2), None),
    (2, nn.AvgPool2d(3, 2, padding=1, count_include_pad=False), None),
    (2, nn.AvgPool2d(2, ceil_mode=True, divisor_override=3), None),
    (2, nn.AdaptiveAvgPool2d((3, 2)), None),
    (1, nn.AvgPool1d(3, 2, padding=1), None),
    (1, nn.AdaptiveAvgPool1d(2), None),
    (3, nn.AvgPool3d(2), None),
    (3, nn.AdaptiveAvgPool3d(1), None),
    (2, None, lambda h: F.max_pool2d(h, 3, stride=2)),
    (2, None, lambda h: F.avg_pool2d(h, 2, 1)),
    (2, None, lambda h: F.adaptive_avg_pool2d(h, 1)),
]


@pytest.mark.parametrize("dim, pool, functional", CASES)
def test_pooling_steps_equal_the_gradient(dim, pool, functional):
    model = Pooled(dim, pool, functional).double()
    x = torch.randn(2, 2, *([7] * dim), dtype=torch.float64)
    model(x)  # materialise the lazy head
    code = lrpfx.export(model, x, LRP0).code
    assert "steps." not in code  # closed forms, no replayed VJP
    torch.testing.assert_close(lrpfx.explain(model, x, LRP0), grad_times_input(model, x)[0], rtol=1e-10,
                               atol=1e-13)
    multi = lrpfx.Explainer(model, LRP0)(x, targets=[0, 2]).relevance
    torch.testing.assert_close(multi[:, 1], lrpfx.explain(model, x, LRP0, target=2), rtol=1e-10, atol=1e-13)
