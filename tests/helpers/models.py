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


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics *around the activations' own statistics* (in place, returns it).

    A randomly initialised network has no meaningful running statistics; drawing them independently of the
    activations (``randomize_batchnorm``) lets the activation scale drift layer after layer (MobileNet, GoogLeNet:
    logits ~1e-9 while running means stay ~0.2, so ``(y - mean)`` cancels catastrophically in float64). Here one
    training-mode pass on ``x`` records each BatchNorm's batch mean and variance; the running statistics are then
    those, perturbed (mean shifted by 0.2 std, variance scaled by [0.5, 1.5)), and weight and bias are random as in
    ``randomize_batchnorm``. The model is handed back in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, _BATCHNORMS)]
    momenta = [m.momentum for m in norms]
    with torch.no_grad():
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch gives exactly its statistics
        model.train()
        model(x)
        model.eval()
        gen = torch.Generator().manual_seed(seed)
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
            c, dtype = m.num_features, m.running_mean.dtype
            var = m.running_var.clamp(min=1e-2 * float(m.running_var.mean()) + 1e-12)
            m.running_mean.add_((0.2 * torch.randn(c, generator=gen)).to(dtype) * var.sqrt())
            m.running_var.copy_(var * (0.5 + torch.rand(c, generator=gen)).to(dtype))
            if m.weight is not None:
                m.weight.copy_((0.5 + torch.rand(c, generator=gen)).to(m.weight.dtype))
                m.bias.copy_((0.2 * torch.randn(c, generator=gen)).to(m.bias.dtype))
    return model


def remove_biases(model: nn.Module) -> nn.Module:
    """Make every affine map of ``model`` linear, keeping the random BatchNorm statistics (in place, returns it).

    Conv, ConvTranspose, Linear and LayerNorm biases become 0 and each BatchNorm's shift is set to
    ``running_mean * weight / sqrt(running_var + eps)``, so that the BatchNorm computes the pure per-channel scale
    ``x * weight / sqrt(running_var + eps)`` (running mean, variance and weight stay random). Folded or not, no
    node adds a constant any more.
    """
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BATCHNORMS):
                if m.weight is None or m.running_mean is None:
                    raise ValueError(f"remove_biases needs affine BatchNorms with running statistics, got {m}")
                m.bias.copy_(m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps))
            elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                                nn.ConvTranspose3d, nn.Linear, nn.LayerNorm)):
                if getattr(m, "bias", None) is not None:
                    m.bias.zero_()
    return model


def randomize_layer_scale(model: nn.Module, seed: int = 0) -> nn.Module:
    """ConvNeXt's ``layer_scale`` starts at 1e-6, which silences every residual branch; draw it from [0.5, 1.5)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "layer_scale":
                p.copy_((0.5 + torch.rand(p.shape, generator=gen)).to(p.dtype))
    return model


def build(name: str, seed: int = 0, bn_eps=None, dtype=torch.float64, linear: bool = False,
          calibrate=None, **kwargs) -> nn.Module:
    """``torchvision.models.<name>(weights=None, **kwargs)`` with a fixed seed, random BatchNorm statistics (and
    random ConvNeXt layer scales), converted to ``dtype``, in eval mode.

    ``calibrate``: an input shape; the BatchNorm statistics are then drawn around the activations' statistics on a
    random batch of that shape (``calibrate_batchnorm``) instead of independently (``randomize_batchnorm``).
    ``linear=True``: see ``remove_biases``.
    """
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    randomize_layer_scale(model, seed=seed + 2)
    model = model.to(dtype)
    if calibrate is None:
        randomize_batchnorm(model, seed=seed + 1, eps=bn_eps)
    else:
        if bn_eps is not None:
            for m in model.modules():
                if isinstance(m, _BATCHNORMS):
                    m.eps = bn_eps
        calibrate_batchnorm(model, random_input(calibrate, seed=seed + 3, dtype=dtype), seed=seed + 1)
    if linear:
        remove_biases(model)  # after the dtype change: the BatchNorm shift is computed in the final precision
    return model.eval()


def random_input(shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen).to(dtype)
