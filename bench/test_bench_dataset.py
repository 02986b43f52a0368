"""pytest-benchmark cases for lrpfx.explain_dataset: ``python -m pytest bench/test_bench_dataset.py
--benchmark-only`` (not part of the test run; the 1-process-versus-torchrun comparison is
``python -m bench.dataset_throughput``).

ResNet50 (random weights), 224x224 random inputs, batch 8, float16 shards of 16 samples; each round writes into
a fresh folder. The shard-writing overhead (serialise, hash, write, rename) must stay under 10% of the time
spent explaining.
"""
import shutil

import pytest
import torch

import lrpfx

SAMPLES, BATCH, SHARD = 16, 8, 16


@pytest.fixture(scope="module")
def resnet50():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.resnet50(weights=None).eval()


@pytest.mark.parametrize("store", ["float16", "float32"])
def test_explain_dataset_resnet50(benchmark, resnet50, tmp_path, store):
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(SAMPLES, 3, 224, 224, generator=g))
    lrpfx.explain(resnet50, data.tensors[0][:1])  # warm up the kernels outside the timing
    out = tmp_path / "out"
    results = []

    def fresh_folder():
        shutil.rmtree(out, ignore_errors=True)

    def run():
        results.append(lrpfx.explain_dataset(resnet50, data, "epsilon-plus-flat", out, batch_size=BATCH,
                                             shard_size=SHARD, store=store, progress=False).stats)

    benchmark.group = "explain_dataset resnet50 b8"
    benchmark.pedantic(run, setup=fresh_folder, rounds=2, iterations=1)
    stats = results[-1]
    benchmark.extra_info.update(samples_per_s=stats.samples_per_second, write_overhead=stats.write_overhead)
    assert stats.samples == SAMPLES and stats.shards_written == SAMPLES // SHARD
    assert stats.write_overhead < 0.10
