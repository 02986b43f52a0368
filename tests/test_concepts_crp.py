"""Conditional relevance equals zennit-crp 0.6.0's ``CondAttribution`` (float64, random weights).

zennit-crp pins zennit 0.4.6, so it runs in a side environment (``tests/helpers/crp_env.py``) through
``tests/helpers/crp_reference.py``; the models are built here and handed over as state dicts. The test fails when
that environment cannot be built (it needs pip access once). ``pytest tests/test_concepts_crp.py -s`` prints the
numbers. Compared: CRP's heatmap (the input relevance summed over the colour axis) and the per-channel relevance
at recorded layers, relative error ``max |diff| / max |CRP|``, for single-layer conditions, two-layer (chain)
conditions, a condition inside a residual branch and one on the skip path's convolution. Composites: see
``COMPOSITES`` (zennit 0.4.6's Gamma is not the generalized rule).
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import lrpfx
from tests.helpers.crp_env import crp_python, crp_unavailable_reason, crp_versions
from tests.helpers.models import randomize_batchnorm

torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")

REFERENCE = Path(__file__).with_name("helpers") / "crp_reference.py"
TOLERANCE = 1e-6
BN_EPS = 1e-12  # see tests/test_zennit.py: Zennit leaves x / sqrt(1 + eps) in a merged BatchNorm
NUM_CLASSES = 10
# zennit 0.4.6's Gamma applies W + gamma W+ also where a layer's output is negative; lrpfx (like zennit >= 0.5)
# uses the generalized, sign-aware rule there (W + gamma W-). The two agree where every conv output meets a ReLU
# (VGG) and differ where a conv output reaches a residual add with relevance on its negative entries (ResNet's
# conv2 and downsample): measured 1.0 relative on ResNet18, the unconditional heatmap included. ResNet18 is
# therefore compared under EpsilonPlusFlat and EpsilonAlpha2Beta1Flat, VGG16-BN under EpsilonPlusFlat and
# EpsilonGammaBox.
COMPOSITES = {"vgg16_bn": ("epsilon-plus-flat", "epsilon-gamma-box"),
              "resnet18": ("epsilon-plus-flat", "epsilon-alpha2beta1-flat")}

# (arch, input size, [(label, conditions, recorded layers)]); one node set per entry (CRP groups by node set)
CASES = {
    "vgg16_bn": (32, [
        ("channels", [{"y": [3], "features.40": [c]} for c in (0, 5, 17, 300)] + [{"y": [1], "features.40": [5]}],
         ["features.40", "features.30"]),
        ("chain", [{"y": [3], "features.40": [5], "features.30": [7, 9]},
                   {"y": [2], "features.40": [6], "features.30": [1]}], ["features.30", "features.10"]),
    ]),
    "resnet18": (32, [
        ("branch", [{"y": [3], "layer3.0.conv2": [c]} for c in (0, 9, 200)], ["layer3.0.conv2", "layer2.1.conv1"]),
        ("chain", [{"y": [3], "layer4.1.conv2": [4], "layer3.0.conv1": [8, 30]}], ["layer3.0.conv1",
                                                                                    "layer1.0.conv1"]),
        ("skip", [{"y": [3], "layer2.0.downsample.0": [c]} for c in (1, 100)],
         ["layer2.0.downsample.0", "layer1.1.conv2"]),
    ]),
}
ERRORS = {}


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=NUM_CLASSES)
    return randomize_batchnorm(model, eps=BN_EPS).double().eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    python = crp_python()
    if python is None:  # the reference is part of the suite: an environment that cannot be built is a failure
        pytest.fail(f"{crp_unavailable_reason()} (set LRPFX_SIDE_ENV_DIR to a writable folder; needs pip access)")
    jobs, keys = [], []
    for arch, (size, cases) in CASES.items():
        model = build(arch)
        x = torch.randn(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        for composite in COMPOSITES[arch]:
            for label, conditions, record in cases:
                keys.append((arch, composite, label))
                jobs.append({"arch": arch, "num_classes": NUM_CLASSES, "bn_eps": BN_EPS, "x": x,
                             "state_dict": model.state_dict(), "composite": composite, "conditions": conditions,
                             "record": record})
    folder = tmp_path_factory.mktemp("crp")
    torch.save(jobs, folder / "in.pt")
    proc = subprocess.run([python, str(REFERENCE), str(folder / "in.pt"), str(folder / "out.pt")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = torch.load(folder / "out.pt", weights_only=False)
    yield dict(zip(keys, zip(jobs, results)))
    print(f"\nlrpfx vs zennit-crp {crp_versions()}, relative error (max |diff| / max |CRP|):")
    for key, (heat, rel) in ERRORS.items():
        print(f"  {' / '.join(key):45s} heatmap {heat:.2e}  channel relevance {rel:.2e}")


def _relative(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


@pytest.mark.parametrize("arch,composite,label", [
    pytest.param(arch, composite, label, marks=[pytest.mark.slow])
    for arch, (_, cases) in CASES.items() for composite in COMPOSITES[arch] for label, _, _ in cases])
def test_conditional_relevance_equals_crp(reference, arch, composite, label):
    job, ref = reference[(arch, composite, label)]
    assert "error" not in ref, ref.get("error")
    model = build(arch)
    conditions = [{k: v for k, v in cond.items()} for cond in job["conditions"]]
    e = lrpfx.Explainer(model, composite)(job["x"], conditions=conditions, intermediate=job["record"],
                                          condition_batch_size=2)
    assert torch.allclose(e.output, ref["prediction"], rtol=1e-9, atol=1e-12)
    heat = _relative(e.relevance.sum(2), ref["heatmap"])
    rel = 0.0
    conditioned = {name for cond in conditions for name in cond if name != "y"}
    for name in job["record"]:
        ours = e.intermediate[name].flatten(3).sum(-1)  # [B, K, C]
        theirs = ref["relevance"][name]
        assert theirs.abs().max() > 0, f"CRP recorded no relevance at {name}"
        if name in conditioned:
            # CRP 0.6.0 reports twice the masked relevance at a conditioned layer: it seeds its second backward at
            # that layer's output, whose retained .grad then receives the seed on top of the hook's copy (the
            # heatmap and every layer below see it once, as the comparisons below show)
            theirs = theirs / 2
        rel = max(rel, _relative(ours, theirs))
    ERRORS[(arch, composite, label)] = (heat, rel)
    assert ref["heatmap"].abs().max() > 0
    assert heat < TOLERANCE and rel < TOLERANCE, f"heatmap {heat:.2e}, channel relevance {rel:.2e}"
