"""zennit-crp 0.6.0's side of the concept benchmark (run by ``bench/concepts.py`` with the side environment's
Python; imports no lrpfx): N channel-conditional heatmaps of one image at a VGG16 layer with
``CondAttribution.generate`` (one forward, ``batch_size`` conditions per backward), EpsilonPlusFlat.

    python bench/concepts_crp_worker.py SIZE LAYER N BATCH ROUNDS  ->  one JSON line
"""
from __future__ import annotations

import json
import resource
import sys
import time

import torch
import torchvision
from crp.attribution import CondAttribution
from zennit.composites import EpsilonPlusFlat
from zennit.torchvision import VGGCanonizer


def main(size: int, layer: str, n: int, batch: int, rounds: int) -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    attribution = CondAttribution(model)
    composite = EpsilonPlusFlat(canonizers=[VGGCanonizer()])
    conditions = [{"y": [0], layer: [c]} for c in range(n)]
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def run():
        parts = [r.heatmap for r in attribution.generate(x, conditions, composite, batch_size=batch, verbose=False)]
        return torch.cat(parts)

    run()  # warm-up
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        heatmaps = run()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": sorted(times)[len(times) // 2], "all": times, "shape": list(heatmaps.shape),
                      "peak_rss_mb": peak / 1024, "rss_growth_mb": (peak - base) / 1024,
                      "checksum": float(heatmaps.double().sum())}))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
