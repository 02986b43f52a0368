"""pytest-benchmark suite: ``python -m pytest bench --benchmark-only`` (not part of the test run).

Each case times one explanation (or the floor: one input gradient) of VGG16 / ResNet50 at 224×224, random
weights. Compare ratios within one run; ``bench/report.py`` prints them as a table.
"""
import pytest
import torch

from bench.common import COMPOSITES, captum_method, floor, lrpfx_method, make_model, zennit_method

MODELS = ("vgg16", "resnet50")
BATCHES = (1, 2, 8)
_models = {}


def model_and_input(name, batch):
    if name not in _models:
        _models[name] = make_model(name)
    torch.manual_seed(0)
    return _models[name], torch.randn(batch, 3, 224, 224)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_floor(benchmark, name, batch):
    model, x = model_and_input(name, batch)
    benchmark.group = f"{name}-b{batch}"
    benchmark(floor(model, x))


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_lrpfx(benchmark, name, batch, composite, compiled):
    model, x = model_and_input(name, batch)
    run = lrpfx_method(model, x, composite, compile=compiled)
    run()  # build (and compile) outside the timing
    benchmark.group = f"{name}-b{batch}"
    benchmark(run)


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("name", MODELS)
def test_zennit(benchmark, name, batch, composite):
    model, x = model_and_input(name, batch)
    benchmark.group = f"{name}-b{batch}"
    benchmark(zennit_method(model, x, composite, name))


@pytest.mark.parametrize("batch", BATCHES)
def test_captum_vgg16(benchmark, batch):
    model, x = model_and_input("vgg16", batch)
    benchmark.group = f"vgg16-b{batch}"
    benchmark(captum_method(model, x))


@pytest.mark.parametrize("per_value", [True, False], ids=["per-value", "relevance"])
@pytest.mark.parametrize("name", MODELS)
def test_lrp0_forms(benchmark, name, per_value):
    """LRP-0 with relevance per value (the modified gradient) and with relevance, batch 2 (bench/per_value.py)."""
    import lrpfx
    from bench.per_value import built

    model, x = model_and_input(name, 2)
    run = built(lambda form: lrpfx.Explainer(model, "zero", form=form), lambda ex: ex(x).relevance, per_value)
    benchmark.group = f"{name}-b2-lrp0"
    benchmark(run)
