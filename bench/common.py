"""Shared pieces of the benchmark suite: models, and the methods compared (floor, lrpfx, Zennit, Captum).

Every method returns a zero-argument callable that computes one explanation of ``x`` for the argmax class, so
the suite and the report time exactly the same work. The floor is one input gradient: the target logit's
gradient with respect to the input, parameters frozen.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Dict

import torch
from torch import nn

import lrpfx

from bench.memory import rss_growth_during  # noqa: F401  (re-exported: the scripts import it from here)

COMPOSITES = ("epsilon", "epsilon-plus-flat", "epsilon-gamma-box")
_ZENNIT_NAMES = {"epsilon-plus-flat": "EpsilonPlusFlat", "epsilon-gamma-box": "EpsilonGammaBox"}


def make_model(name: str, dtype=torch.float32, device="cpu") -> nn.Module:
    import torchvision

    model = getattr(torchvision.models, name)(weights=None).eval().to(device=device, dtype=dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def floor(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        xx = x.detach().requires_grad_()
        out = model(xx)
        (grad,) = torch.autograd.grad(out.gather(1, out.argmax(1, keepdim=True)).sum(), xx)
        return grad

    return run


def lrpfx_method(model: nn.Module, x: torch.Tensor, composite: str, compile: bool = False,
                 mode=None) -> Callable[[], torch.Tensor]:
    explainer = lrpfx.Explainer(model, composite, compile=compile, mode=mode)

    def run():
        return explainer(x).relevance

    if compile:
        settle(explainer, lambda: explainer(x))
        run.choice = explainer.compiled_choice
    return run


def settle(explainer, call, calls: int = 8) -> None:
    """Run a ``compile=True`` explainer until it has chosen compiled or eager (:mod:`lrpfx.program.faster`), so the timed
    calls are all of the chosen kind."""
    for _ in range(calls):
        call()
        if all(c is not None for c in explainer.compiled_choice.values()):
            return


def zennit_method(model: nn.Module, x: torch.Tensor, composite: str, model_name: str) -> Callable[[], torch.Tensor]:
    """Zennit's composite with its torchvision canonizer, registered once (hooks stay on a private copy)."""
    from zennit import composites as zc
    from zennit.attribution import Gradient
    from zennit.rules import Epsilon
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    from zennit.types import Convolution, Linear

    canonizers = [ResNetCanonizer()] if model_name.startswith(("resnet", "resnext", "wide")) else [VGGCanonizer()]
    if composite == "epsilon":
        comp = zc.LayerMapComposite(layer_map=zc.layer_map_base() + [(Convolution, Epsilon()), (Linear, Epsilon())],
                                    canonizers=canonizers)
    else:
        extra = {"low": -3.0, "high": 3.0} if composite == "epsilon-gamma-box" else {}
        comp = getattr(zc, _ZENNIT_NAMES[composite])(canonizers=canonizers, **extra)
    private = copy.deepcopy(model)
    attributor = Gradient(model=private, composite=comp)
    attributor.__enter__()  # hooks stay registered on the private copy for the benchmark's lifetime

    def run():
        _, relevance = attributor(x, lambda out: out * nn.functional.one_hot(out.argmax(1), out.shape[1]))
        return relevance

    return run


def captum_method(model: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Captum's LRP (epsilon rules by default); only for models it supports (no residual adds)."""
    from captum.attr import LRP

    private = copy.deepcopy(model)
    for m in private.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    lrp = LRP(private)

    def run():
        with torch.no_grad():
            target = private(x).argmax(1)
        return lrp.attribute(x.detach().requires_grad_(), target=target)

    return run


def methods(model_name: str, model: nn.Module, x: torch.Tensor, compiled: bool = True,
            peers: bool = True) -> Dict[str, Callable[[], torch.Tensor]]:
    """All methods for one model and input, keyed ``floor``, ``lrpfx-eager/<composite>``, ...."""
    table: Dict[str, Callable[[], torch.Tensor]] = {"floor": floor(model, x)}
    for comp in COMPOSITES:
        table[f"lrpfx-eager/{comp}"] = lrpfx_method(model, x, comp)
        if compiled:
            table[f"lrpfx-compiled/{comp}"] = lrpfx_method(model, x, comp, compile=True)
        if peers:
            try:
                table[f"zennit/{comp}"] = zennit_method(model, x, comp, model_name)
            except Exception as exc:  # a canonizer that cannot handle the model (DenseNet's BN before conv)
                print(f"  zennit/{comp}: skipped ({type(exc).__name__}: {str(exc)[:120]})", flush=True)
    if peers and model_name.startswith("vgg"):
        table["captum/epsilon"] = captum_method(model, x)
    return table


def round_robin(table: Dict[str, Callable[[], object]], rounds: int, device: str = "cpu",
                warm_up: bool = True) -> Dict[str, float]:
    """Median seconds per method, the methods timed in turn ``rounds`` times (after one untimed call each: it
    builds, exports and compiles), so a change of machine load touches them all alike."""
    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    for run in table.values() if warm_up else ():
        run()
    times = {name: [] for name in table}
    for _ in range(rounds):
        for name, run in table.items():
            sync()
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


