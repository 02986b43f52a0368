"""lrpfx.quantus.explain_func inside Quantus 0.6.0, side by side with Quantus's built-in Zennit path.

The digits CNN of the demo (lrpfx/demo.py), trained briefly in float64. Quantus's model wrapper turns numpy
batches into ``torch.Tensor(x)`` — the default dtype — so the metric runs set the default dtype to float64 for
their duration; both paths then compute in float64. Zennit's attributor starts from the one-hot target, so lrpfx
runs with ``start="one"`` for the comparison. Agreement: attributions to 1e-6 relative, metric scores to 1e-6
with the same seeds (measured: identical). Run with ``-s`` to see the numbers.
"""
from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import demo
from lrpfx.errors import InputError, LrpfxError, RuleError, TargetError
from lrpfx.quantus import cache_info, clear_cache, explain_func

quantus = pytest.importorskip("quantus")
zennit = pytest.importorskip("zennit")
from zennit.attribution import Gradient  # noqa: E402
from zennit.composites import EpsilonAlpha2Beta1, EpsilonGammaBox, EpsilonPlusFlat  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

TOLERANCE = 1e-6
SAMPLES = 24
# lrpfx rule -> Quantus's Zennit-path kwargs for the same rules
ZENNIT = {
    "epsilon-plus-flat": dict(composite=EpsilonPlusFlat),
    "epsilon-gamma-box": dict(composite=EpsilonGammaBox, composite_kwargs={"low": -3.0, "high": 3.0}),
    "epsilon-alpha2beta1": dict(composite=EpsilonAlpha2Beta1),
    "gradient": dict(composite=None),
}


@pytest.fixture(scope="module")
def digits():
    (x_train, y_train), (x_test, y_test) = demo.load_digits_tensors()
    torch.manual_seed(0)
    model = demo.train(demo.digits_cnn().double(), x_train.double(), y_train, epochs=2)
    return model, x_test[:SAMPLES].double().numpy(), y_test[:SAMPLES].numpy()


@pytest.fixture()
def float64_default():
    """Quantus builds its tensors with torch.Tensor(numpy), i.e. in the default dtype."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    clear_cache()
    yield
    torch.set_default_dtype(previous)
    clear_cache()


def zennit_explain(model, inputs, targets, **kwargs):
    return quantus.explain(model, inputs, targets, xai_lib="zennit", attributor=Gradient, **kwargs)


def relative(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("rule", list(ZENNIT))
def test_attributions_equal_quantus_zennit_path(digits, float64_default, rule):
    model, x, y = digits
    theirs = zennit_explain(model, torch.tensor(x), y, **ZENNIT[rule])
    ours = explain_func(model, x, y, rule=rule, start="one")
    assert ours.shape == theirs.shape == (SAMPLES, 1, 8, 8)  # channel axis summed, kept (Quantus's default)
    err = relative(ours, theirs)
    print(f"\n{rule}: attributions vs Quantus/Zennit, relative error {err:.1e}")
    assert err < TOLERANCE


def test_reduce_axes_and_default_start(digits, float64_default):
    model, x, y = digits
    full = lrpfx.explain(model, torch.tensor(x), "epsilon-plus-flat", target=torch.tensor(y)).numpy()
    np.testing.assert_allclose(explain_func(model, x, y, reduce_axes=()), full, rtol=1e-12, atol=0)
    np.testing.assert_allclose(explain_func(model, x, y), full.sum(1, keepdims=True), rtol=1e-12, atol=1e-15)
    assert explain_func(model, x, y, reduce_axes=(1,), keepdims=False).shape == (SAMPLES, 8, 8)
    assert explain_func(model, x, y, reduce_axes=(-1,)).shape == (SAMPLES, 1, 8, 1)
    # float32 numpy inputs (what Quantus usually hands over) are cast to the model's dtype
    np.testing.assert_allclose(explain_func(model, x.astype(np.float32), y, reduce_axes=()),
                               lrpfx.explain(model, torch.tensor(x.astype(np.float32)).double(), "epsilon-plus-flat",
                                             target=torch.tensor(y)).numpy(), rtol=1e-12, atol=1e-15)


def _metrics():
    quiet = dict(disable_warnings=True, display_progressbar=False)
    return {
        "PixelFlipping": lambda: quantus.PixelFlipping(features_in_step=4, perturb_baseline="black", **quiet),
        "RegionPerturbation": lambda: quantus.RegionPerturbation(patch_size=2, regions_evaluation=8,
                                                                 perturb_baseline="black", **quiet),
        "FaithfulnessCorrelation": lambda: quantus.FaithfulnessCorrelation(
            nr_runs=20, subset_size=8, return_aggregate=False, perturb_baseline="black", **quiet),
        "MPRT": lambda: quantus.MPRT(layer_order="top_down", **quiet),
        "Sparseness": lambda: quantus.Sparseness(**quiet),
        "MaxSensitivity": lambda: quantus.MaxSensitivity(nr_samples=4, lower_bound=0.1, **quiet),
    }


def _scores(result) -> np.ndarray:
    if isinstance(result, dict):  # MPRT: per randomised layer, per sample
        return np.asarray([result[k] for k in result], dtype=float)
    return np.asarray(result, dtype=float)


@pytest.mark.parametrize("metric", list(_metrics()))
@pytest.mark.parametrize("rule", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_metric_scores_equal_quantus_zennit_path(digits, float64_default, metric, rule):
    model, x, y = digits
    scores = {}
    for name, fn, kwargs in (("zennit", zennit_explain, ZENNIT[rule]),
                             ("lrpfx", explain_func, {"rule": rule, "start": "one"})):
        np.random.seed(0)
        torch.manual_seed(0)
        result = _metrics()[metric]()(model=model, x_batch=x, y_batch=y, a_batch=None, explain_func=fn,
                                      explain_func_kwargs=kwargs, batch_size=8)
        scores[name] = _scores(result)
    theirs, ours = scores["zennit"], scores["lrpfx"]
    assert np.isfinite(theirs).all() and theirs.std() > 0  # a real spread of scores, not a constant
    diff = float(np.abs(ours - theirs).max())
    print(f"\n{metric} {rule}: mean {ours.mean():+.4f}, max |lrpfx - zennit| {diff:.1e}")
    assert diff < TOLERANCE
    if metric == "MPRT":  # explained through the randomised copies: one program for every copy
        assert cache_info() == {"structures": 1, "per_model": 0}


def _randomised_copy(model: nn.Module, layers=("6", "8")) -> nn.Module:
    """What Quantus's MPRT hands the explain function: a deep copy with re-initialised layers."""
    copy_ = copy.deepcopy(model)
    torch.manual_seed(43)
    for name in layers:
        copy_.get_submodule(name).reset_parameters()
    return copy_


def test_mprt_copies_are_explained_with_their_own_weights(digits):
    clear_cache()
    model, x, y = digits
    original = explain_func(model, x, y, reduce_axes=())
    randomised = _randomised_copy(model)
    on_copy = explain_func(randomised, x, y, reduce_axes=())
    fresh = lrpfx.explain(randomised, torch.tensor(x), "epsilon-plus-flat", target=torch.tensor(y)).numpy()
    assert relative(on_copy, original) > 0.1
    np.testing.assert_array_equal(on_copy, fresh)
    # cascading randomisation changes the same copy in place: the next call sees it
    torch.manual_seed(44)
    randomised.get_submodule("2").reset_parameters()
    again = explain_func(randomised, x, y, reduce_axes=())
    np.testing.assert_array_equal(
        again, lrpfx.explain(randomised, torch.tensor(x), "epsilon-plus-flat", target=torch.tensor(y)).numpy())
    # and the original is still explained with its own weights, by the same single program
    np.testing.assert_array_equal(explain_func(model, x, y, reduce_axes=()), original)
    assert cache_info() == {"structures": 1, "per_model": 0}
    clear_cache()


class ScaledCNN(nn.Module):
    """A model holding a plain (unregistered) tensor attribute, or one inside a list: a shared program could not
    follow it."""

    def __init__(self, boxed: bool):
        super().__init__()
        self.net = demo.digits_cnn().double()
        self.boxed = boxed
        self.scale = self.box(torch.tensor(2.0, dtype=torch.float64))

    def box(self, t):
        return [t] if self.boxed else t

    def forward(self, x):
        return self.net(x * (self.scale[0] if self.boxed else self.scale))


@pytest.mark.parametrize("boxed", [False, True], ids=["attribute", "in-a-list"])
def test_model_with_plain_tensor_attribute_gets_its_own_program(boxed):
    clear_cache()
    model = ScaledCNN(boxed).eval()
    x = np.random.default_rng(0).random((3, 1, 8, 8))
    y = np.array([1, 2, 3])
    first = explain_func(model, x, y, reduce_axes=())
    other = copy.deepcopy(model)
    other.scale = other.box(torch.tensor(-1.0, dtype=torch.float64))
    second = explain_func(other, x, y, reduce_axes=())
    np.testing.assert_array_equal(second, lrpfx.explain(other, torch.tensor(x), target=torch.tensor(y)).numpy())
    assert relative(first, second) > 0.1
    assert cache_info() == {"structures": 0, "per_model": 2}
    clear_cache()


def test_bad_inputs_give_lrpfx_errors(digits):
    model, x, y = digits
    with pytest.raises(RuleError, match="unknown rule"):
        explain_func(model, x, y, rule="epsilon-plus-flatt")
    with pytest.raises(InputError, match="composite"):
        explain_func(model, x, y, composite="EpsilonPlusFlat")  # a Zennit-path kwarg: lrpfx takes rule=
    with pytest.raises(InputError, match="softmax"):
        explain_func(model, x, y, softmax=True)
    with pytest.raises(InputError, match="batch axis"):
        explain_func(model, x, y, reduce_axes=(0,))
    with pytest.raises(InputError, match="reduce_axes"):
        explain_func(model, x, y, reduce_axes=(7,))
    with pytest.raises(InputError, match="numpy array or a torch tensor"):
        explain_func(model, x.tolist(), y)
    with pytest.raises(LrpfxError, match="channels"):
        explain_func(model, np.zeros((2, 3, 8, 8)), y[:2])
    with pytest.raises(TargetError, match="one class index per sample"):
        explain_func(model, x, y[:-1])
    with pytest.raises(TargetError, match="out of range"):
        explain_func(model, x[:2], np.array([1, 10]))
    with pytest.raises(TargetError, match="integer class indices"):
        explain_func(model, x[:2], np.array([1.0, 2.0]))
    clear_cache()


def test_quantus_and_captum_are_not_imported_with_lrpfx():
    code = ("import sys, lrpfx, lrpfx.quantus, lrpfx.captum; "
            "print(sorted(m for m in ('quantus', 'captum', 'zennit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
