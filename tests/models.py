"""Test models: torchvision architectures with random weights and randomised BatchNorm statistics.

torchvision initialises BatchNorm to the identity (mean 0, var 1, weight 1, bias 0) and freshly built models have
no trained statistics, so an untouched model would never exercise BatchNorm folding. ``randomize_batchnorm``
replaces the statistics and affine parameters with random values (fixed seed), keeping ``running_var`` bounded
away from zero so that the folded scale ``weight / sqrt(var + eps)`` stays well conditioned.
"""
from __future__ import annotations

import torch
from torch import nn

_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def randomize_batchnorm(model: nn.Module, seed: int = 0, eps=None) -> nn.Module:
    """Random running statistics and affine parameters for every BatchNorm of ``model`` (in place, returns it).

    ``eps`` replaces each BatchNorm's eps when given (see ``tests/test_zennit.py`` for why the Zennit comparison
    needs a tiny one).
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if not isinstance(m, _BATCHNORMS):
                continue
            c = m.num_features
            dtype = m.running_mean.dtype if m.running_mean is not None else torch.get_default_dtype()
            if m.running_mean is not None:
                m.running_mean.copy_((0.2 * torch.randn(c, generator=gen)).to(dtype))
                m.running_var.copy_((0.5 + torch.rand(c, generator=gen)).to(dtype))  # in [0.5, 1.5)
            if m.weight is not None:
                m.weight.copy_((0.5 + torch.rand(c, generator=gen)).to(m.weight.dtype))
                m.bias.copy_((0.2 * torch.randn(c, generator=gen)).to(m.bias.dtype))
            if eps is not None:
                m.eps = eps
    return model


def build(name: str, seed: int = 0, bn_eps=None, dtype=torch.float64, **kwargs) -> nn.Module:
    """``torchvision.models.<name>(weights=None, **kwargs)`` with a fixed seed, random BatchNorm, in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    randomize_batchnorm(model, seed=seed + 1, eps=bn_eps)
    return model.to(dtype).eval()


def random_input(shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)
