"""Conditional heatmaps and concept relevances computed by zennit-crp 0.6.0 (``CondAttribution``).

Run with the interpreter from ``tests/helpers/crp_env.py`` (zennit 0.4.6 + zennit-crp 0.6.0), never with the main
one:

    python tests/helpers/crp_reference.py IN.pt OUT.pt

IN.pt (``torch.save`` of a list of dicts):
  arch          torchvision constructor name ("vgg16_bn", "resnet18", ...)
  num_classes   its number of classes
  bn_eps        eps given to every BatchNorm (before loading the state dict)
  state_dict    the weights, float64
  x             input [B, 3, H, W], float64
  composite     "epsilon-plus-flat" | "epsilon-gamma-box" | "epsilon-alpha2beta1-flat" (zennit's EpsilonPlusFlat /
                EpsilonGammaBox(-3, 3) / EpsilonAlpha2Beta1Flat, with the architecture's canonizer)
  conditions    list of K condition dicts as CondAttribution takes them ({"y": [c], layer: [channels], ...};
                layers of one condition ordered from the output down)
  record        layer names whose relevance is returned

OUT.pt: list of {"heatmap": [B, K, H, W] (the input relevance summed over channels, CRP's heatmap),
                 "relevance": {layer: [B, K, C] per-channel relevance, summed over the spatial axes},
                 "prediction": the model output [B, classes]} or {"error": traceback}.
Each sample is repeated K times (sample-major) and paired with every condition; CondAttribution runs with its default
``exclude_parallel=True``. Nothing here imports lrpfx.
"""
from __future__ import annotations

import sys
import traceback

import torch
import torchvision
from crp.attribution import CondAttribution
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonGammaBox, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer, VGGCanonizer


def build(case):
    model = getattr(torchvision.models, case["arch"])(weights=None, num_classes=case["num_classes"])
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = case["bn_eps"]
    model = model.double()
    model.load_state_dict(case["state_dict"])
    return model.eval()


def composite(case):
    canonizers = [ResNetCanonizer() if case["arch"].startswith("resnet") else VGGCanonizer()]
    if case["composite"] == "epsilon-plus-flat":
        return EpsilonPlusFlat(canonizers=canonizers)
    if case["composite"] == "epsilon-alpha2beta1-flat":
        return EpsilonAlpha2Beta1Flat(canonizers=canonizers)
    if case["composite"] == "epsilon-gamma-box":
        return EpsilonGammaBox(low=-3.0, high=3.0, canonizers=canonizers)
    raise ValueError(case["composite"])


def run(case) -> dict:
    model = build(case)
    conditions = case["conditions"]
    B, K = case["x"].shape[0], len(conditions)
    # pair every sample with every condition ourselves: CondAttribution pairs sample i with condition i when
    # their counts happen to agree
    x = case["x"].repeat_interleave(K, dim=0).requires_grad_(True)
    conditions = conditions * B
    result = CondAttribution(model)(x, conditions, composite(case), record_layer=list(case["record"]))
    heatmap = result.heatmap.detach().reshape(B, K, *result.heatmap.shape[1:])
    relevance = {name: r.detach().flatten(2).sum(-1).reshape(B, K, -1) for name, r in result.relevances.items()}
    return {"heatmap": heatmap, "relevance": relevance, "prediction": result.prediction.detach()[::K]}


def main(src: str, dst: str) -> None:
    torch.set_num_threads(1)
    out = []
    for case in torch.load(src, weights_only=False):
        try:
            out.append(run(case))
        except Exception:
            out.append({"error": traceback.format_exc()})
    torch.save(out, dst)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
