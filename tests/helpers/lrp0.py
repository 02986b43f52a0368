"""The reference most op tests compare against: LRP-0 (``rule="zero"``) equals gradient × input on networks of
affine maps without biases, ReLUs, copies and linear maps (float64), and the small helpers those tests share."""
import torch

import lrpfx


def grad_times_input(model, x, target):
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return (g * x).detach()


def assert_lrp0_is_gradient_times_input(model, x, frontend):
    target = torch.tensor([0, 1])
    relevance = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target).relevance
    expected = grad_times_input(model, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(relevance, expected, rtol=1e-10, atol=1e-10 * expected.abs().max())


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def build(cls):
    torch.manual_seed(0)
    return cls().double().eval()
