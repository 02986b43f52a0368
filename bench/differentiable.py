"""Relevance as a function, timed side by side in one run (docs/functional.md).

    python -m bench.differentiable                    # resnet18 b2 at 32×32, BiLRP at 64 and 128 dimensions
    python -m bench.differentiable --rounds 1 --dims 64 --out /tmp/f.md

Training through relevance: the differentiable program's forward and the backward of a loss on R (``Σ R²``) to
the input, and to the input and every parameter, against the same program without gradients (relevance form,
``torch.no_grad``), the default program (per-value form), the floor (one input gradient) and Zennit's
``create_graph=True`` attribution with the same backward (EpsilonPlusFlat and its ResNet canonizer both sides).
BiLRP: ``lrpfx.bilrp`` (all dimensions in chunked passes) against the loop of one explanation per dimension.
Timed round-robin after a warm-up, medians. Writes ``bench/RESULTS_functional.md``; pytest-benchmark cases are
the ``test_*`` functions (``python -m pytest bench/differentiable.py --benchmark-only``).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
import torch
from torch import nn

from bench.common import floor, make_model, round_robin

HERE = Path(__file__).resolve().parent
RULE = "epsilon-plus-flat"


def loss_of(r: torch.Tensor) -> torch.Tensor:
    return (r ** 2).sum()


def gradient_methods(name: str, batch: int, size: int) -> Dict[str, Callable[[], object]]:
    import lrpfx

    model = make_model(name)
    for p in model.parameters():
        p.requires_grad_(True)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    default = lrpfx.Explainer(model, RULE)
    relevance_form = lrpfx.Explainer(model, RULE, form="relevance")
    differentiable = lrpfx.Explainer(model, RULE, differentiable=True)
    params = [p for p in model.parameters()]

    def backward(to_params: bool):
        def run():
            xx = x.detach().requires_grad_()
            r = differentiable(xx).relevance
            return torch.autograd.grad(loss_of(r), [xx] + (params if to_params else []))
        return run

    frozen_floor = floor(model, x)
    return {"floor (input gradient)": frozen_floor,
            "default program (per value, no grad)": lambda: default(x).relevance,
            "same program, no grad (relevance form)": lambda: relevance_form(x).relevance,
            "differentiable: forward + backward to x": backward(False),
            "differentiable: forward + backward to x and params": backward(True),
            "zennit create_graph: forward + backward to x": zennit_backward(model, x, name)}


def zennit_backward(model: nn.Module, x: torch.Tensor, name: str) -> Callable[[], object]:
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    canonizer = ResNetCanonizer() if name.startswith("resnet") else VGGCanonizer()
    private = copy.deepcopy(model)
    attributor = Gradient(private, EpsilonPlusFlat(canonizers=[canonizer]), create_graph=True)
    attributor.__enter__()  # hooks stay registered on the private copy

    def run():
        xx = x.detach().requires_grad_()
        out = private(xx)
        onehot = torch.zeros_like(out).scatter(1, out.argmax(1, keepdim=True), 1.0)
        _, r = attributor(xx, onehot * out)
        return torch.autograd.grad(loss_of(r), xx)
    return run


def embedding_model(dims: int) -> nn.Module:
    """A small image embedding: four conv blocks, global pooling, a linear map to ``dims``."""
    torch.manual_seed(1)
    layers, channels = [], 3
    for width in (16, 32, 32, 64):
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        channels = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, dims)).eval()


def bilrp_methods(dims: int, batch: int, size: int) -> Dict[str, Callable[[], object]]:
    import lrpfx

    model = embedding_model(dims)
    torch.manual_seed(2)
    a, b = torch.randn(batch, 3, size, size), torch.randn(batch, 3, size, size)
    explainer = lrpfx.Explainer(model, "zero")
    pool = lambda r: r.sum(2)  # noqa: E731  pairs of pixels, channels summed

    def loop():
        total = 0
        for d in range(dims):
            ra, rb = (pool(explainer(x, target=d).relevance).flatten(1) for x in (a, b))
            total = total + ra[:, :, None] * rb[:, None, :]
        return total

    return {"bilrp (chunked passes)": lambda: lrpfx.bilrp(model, a, b, explainer=explainer, pool=pool),
            "loop over dimensions": loop}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--out", default=str(HERE / "RESULTS_functional.md"))
    args = parser.parse_args(argv)
    from bench.report import machine

    case = f"{args.model} b{args.batch} {args.size}×{args.size}"
    med = round_robin(gradient_methods(args.model, args.batch, args.size), args.rounds)
    base = med["same program, no grad (relevance form)"]
    lines = [f"| {case} | {name} | {t * 1000:.0f} | {t / base:.2f} |" for name, t in med.items()]
    print("\n".join(lines), flush=True)
    raw = {case: med}
    bilrp_lines = []
    for dims in args.dims:
        bcase = f"embedding CNN, {dims} dims, b{args.batch} {args.size}×{args.size}"
        times = round_robin(bilrp_methods(dims, args.batch, args.size), args.rounds)
        raw[bcase] = times
        ratio = times["loop over dimensions"] / times["bilrp (chunked passes)"]
        bilrp_lines.append(f"| {bcase} | {times['bilrp (chunked passes)'] * 1000:.0f} | "
                           f"{times['loop over dimensions'] * 1000:.0f} | {ratio:.1f} |")
        print(bilrp_lines[-1], flush=True)
    zennit = med["zennit create_graph: forward + backward to x"]
    ours = med["differentiable: forward + backward to x"]
    text = ["# Relevance as a function: differentiable program and BiLRP", "", f"Machine: {machine()}.", "",
            f"Rule {RULE} (Zennit: EpsilonPlusFlat with its canonizer); loss Σ R²; {args.rounds} rounds "
            "round-robin after a warm-up, medians. Ratios are to the same program run without gradients.", "",
            "| case | method | median ms | × no-grad program |", "|---|---|---|---|", *lines, "",
            f"Differentiable forward + backward to x against Zennit's create_graph: {zennit / ours:.2f}× "
            f"({'faster' if ours < zennit else 'slower'}).", "",
            "BiLRP against the loop of one explanation per dimension (rule zero, channels summed):", "",
            "| case | bilrp ms | loop ms | loop / bilrp |", "|---|---|---|---|", *bilrp_lines, "",
            "Raw (seconds):", "", "```json", json.dumps(raw, indent=1), "```", ""]
    Path(args.out).write_text("\n".join(text))
    print(f"wrote {args.out}")
    return 0


# ---- pytest-benchmark cases ---------------------------------------------------------------------------------
_GRADIENT = ("same program, no grad (relevance form)", "differentiable: forward + backward to x",
             "zennit create_graph: forward + backward to x")


@pytest.mark.parametrize("method", _GRADIENT)
def test_differentiable(benchmark, method):
    run = gradient_methods("resnet18", 2, 32)[method]
    run()  # build outside the timing
    benchmark.group = "resnet18-b2-32-differentiable"
    benchmark(run)


@pytest.mark.parametrize("method", ["bilrp (chunked passes)", "loop over dimensions"])
def test_bilrp(benchmark, method):
    run = bilrp_methods(64, 2, 32)[method]
    run()
    benchmark.group = "bilrp-64-dims"
    benchmark(run)


if __name__ == "__main__":
    sys.exit(main())
