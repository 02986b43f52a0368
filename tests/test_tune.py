"""``lrpfx.tune`` (docs/training.md): a rule parameter searched per layer group for faithfulness. On a digits CNN
trained in the module, the gamma tuned on a tuning split scores at least the preset's pixel-flipping area on a
held-out split; the reported score equals an independent re-evaluation with ``lrpfx.eval.pixel_flipping``; the
trials are consistent with the choice; bad inputs get errors that name the fix."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.eval import pixel_flipping

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    from lrpfx.demo import digits_cnn, load_digits_tensors, train

    (x_train, y_train), (x_test, y_test) = load_digits_tensors()
    torch.manual_seed(0)
    model = train(digits_cnn(), x_train, y_train, epochs=2, seed=0)
    return model, (x_test[:120], y_test[:120]), x_test[120:]


def area(model, x, composite) -> float:
    return pixel_flipping(model, x, lrpfx.explain(model, x, composite))["area"].item()


def test_tuned_gamma_beats_the_preset_on_held_out_data(digits):
    model, (x, _), held_out = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = lrpfx.tune(model, x, family="gamma", per="group", candidates=(0.0, 0.1, 0.25, 1.0), batch_size=120)
    assert list(result.groups) == ["lower", "middle", "upper"]
    assert [layer for layers in result.groups.values() for layer in layers] == ["0", "2", "6", "8"]
    assert result.score >= result.preset_score
    # consistency: the chosen composite re-evaluated from scratch gives the reported score, the preset its own
    assert math.isclose(area(model, x, result.composite), result.score, rel_tol=1e-6)
    assert math.isclose(area(model, x, "gamma"), result.preset_score, rel_tol=1e-6)
    assert result.trials[0]["group"] is None and result.trials[0]["score"] == result.preset_score
    assert max(t["score"] for t in result.trials) == result.score
    assert any(t["values"] == result.values and t["score"] == result.score for t in result.trials)
    assert len(result.trials) == 1 + 3 * 4
    # held out: the tuned gamma is at least as faithful as the preset's
    tuned, preset = area(model, held_out, result.composite), area(model, held_out, "gamma")
    assert tuned >= preset
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    assert "lower" in str(result) and result.build_seconds > 0 and result.score_seconds > 0


def test_per_layer_search_with_a_callable_metric_and_batches(digits):
    """Each layer its own group; a callable metric averaged over batches by size; ``sweeps=2`` revisits
    composites from the cache (one program per distinct composite)."""
    model, (x, y), _ = digits
    calls = []

    def share(relevance):
        return (relevance.clamp(min=0).flatten(1).sum(1) / relevance.abs().flatten(1).sum(1)).mean()

    def positive_share(model, x, relevance, target):
        calls.append(x.shape[0])
        return share(relevance)

    result = lrpfx.tune(model, (x[:40], y[:40]), family="epsilon", per="layer", metric=positive_share,
                        candidates=(1e-6, 0.1), target="label", batch_size=16, sweeps=2)
    assert list(result.groups) == ["0", "2", "6", "8"] and all(len(v) == 1 for v in result.groups.values())
    assert len(result.trials) == 1 + 2 * 4 * 2
    distinct = {repr(t["values"]) for t in result.trials}
    assert len(calls) <= 3 * (len(distinct) + 1)  # batches of 16, 16, 8 per composite scored once
    relevance = lrpfx.explain(model, x[:40], result.composite, target=y[:40])
    sizes = (16, 16, 8)
    expected = sum(s * share(r).item() for s, r in zip(sizes, relevance.split(16))) / 40
    assert math.isclose(expected, result.score, rel_tol=1e-6)


@pytest.mark.parametrize("metric", ["aopc", "auc-difference"])
def test_other_metrics_run(digits, metric):
    model, (x, _), _ = digits
    result = lrpfx.tune(model, x[:24], family="gamma", per="group", groups=2, metric=metric, candidates=(0.0, 0.5))
    assert list(result.groups) == ["lower", "upper"] and result.score >= result.preset_score
    assert math.isfinite(result.score)


def test_bad_inputs_name_the_fix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)).eval()
    x = torch.rand(4, 1, 4, 4)
    with pytest.raises(lrpfx.InputError, match="unknown family 'alpha'.*gamma, epsilon"):
        lrpfx.tune(model, x, family="alpha")
    with pytest.raises(lrpfx.InputError, match="candidates is empty"):
        lrpfx.tune(model, x, candidates=[])
    with pytest.raises(lrpfx.RuleError, match="gamma must be a float >= 0"):
        lrpfx.tune(model, x, candidates=[0.1, -1.0])
    with pytest.raises(lrpfx.InputError, match="returned nan.*finite"):
        lrpfx.tune(model, x, metric=lambda *args: float("nan"), candidates=[0.1])
    with pytest.raises(lrpfx.InputError, match=r"returned a tensor of shape \(4, 1, 4, 4\).*one finite number"):
        lrpfx.tune(model, x, metric=lambda model, x, relevance, target: relevance, candidates=[0.1])
    with pytest.raises(lrpfx.InputError, match="unknown metric 'faithfulness'"):
        lrpfx.tune(model, x, metric="faithfulness")
    with pytest.raises(lrpfx.InputError, match="per must be 'layer' or 'group'"):
        lrpfx.tune(model, x, per="block")
    with pytest.raises(lrpfx.InputError, match="no conv or linear layer.*preset='gamma'"):
        lrpfx.tune(model, x, family="gamma", preset="epsilon")
    with pytest.raises(lrpfx.InputError, match="needs labels"):
        lrpfx.tune(model, x, target="label")
    mlp, features = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval(), torch.rand(6, 5)
    with pytest.raises(lrpfx.InputError, match="metric='auc-difference'"):
        lrpfx.tune(mlp, features, family="epsilon")
    result = lrpfx.tune(mlp, features, family="epsilon", metric="auc-difference", candidates=[0.1])
    assert math.isfinite(result.score) and list(result.groups) == ["lower", "upper"]


def test_auto_preset_is_resolved_for_the_model(digits):
    """``preset="auto"`` is the CNN preset (epsilon-plus-flat): epsilon lives on the linear layers only, and the
    tuned composite keeps the preset's z+ convolutions and flat first layer."""
    from lrpfx.tune import faithfulness

    model, (x, _), _ = digits
    result = lrpfx.tune(model, x[:32], family="epsilon", preset="auto", candidates=(1e-6, 0.5))
    assert [layer for layers in result.groups.values() for layer in layers] == ["6", "8"]
    assert math.isclose(result.preset_score, faithfulness(model, x[:32], "epsilon-plus-flat"), rel_tol=1e-9)
    table = lrpfx.export(model, x[:2], result.composite).rule_table()
    rules = {row.module: row.rule for row in table}
    assert rules["0"].startswith("Flat") and rules["2"].startswith("ZPlus")
