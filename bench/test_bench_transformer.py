"""pytest-benchmark cases for the transformer benchmark: ``python -m pytest bench/test_bench_transformer.py
--benchmark-only``. A LLaMA-like model (4 layers, hidden 256, sequence 512, batch 2): the floor (one input
gradient at the embeddings) and AttnLRP, eager and compiled. ``bench/transformer.py`` adds LXT and memory."""
import argparse

import pytest

from bench.transformer import make_model, methods

pytest.importorskip("transformers")
_cache = {}


def table():
    if not _cache:
        args = argparse.Namespace(layers=4, hidden=256, heads=4, vocab=1000, seq=512, batch=2)
        model, ids = make_model(args)
        _cache.update(methods(model, ids))
    return _cache


@pytest.mark.parametrize("method", ["floor", "lrpfx-eager", "lrpfx-compiled"])
def test_llama_like(benchmark, method):
    run = table()[method]
    run()  # build and compile outside the timing
    benchmark.group = "llama-like-4x256-seq512-b2"
    benchmark(run)
