"""Faithfulness metrics against hand-computed values on linear models (where the ideal deletion order is known),
rank correlation with ties, the randomisation check, the per-layer conservation report and the rule table."""
import itertools
import math

import pytest
import torch
from torch import nn

import lrpfx
import lrpfx.eval as M
from lrpfx.eval.perturbation import _baseline
from lrpfx.eval.randomization import _randomize

pytestmark = pytest.mark.usefixtures("one_thread")


def linear(weights, bias=False):
    model = nn.Linear(len(weights), 1, bias=bias).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weights], dtype=torch.float64))
        if bias:
            model.bias.fill_(0.5)
    return model.eval()


# f(x) = w·x with w = (1, -2, 3, 0.5) and x = (1, 1, 1, 4): contributions w*x = (1, -2, 3, 2), f = 4.
W, X = [1.0, -2.0, 3.0, 0.5], [[1.0, 1.0, 1.0, 4.0]]


def test_morf_lerf_curves_and_areas_by_hand():
    model, x = linear(W), torch.tensor(X, dtype=torch.float64)
    relevance = lrpfx.explain(model, x, "epsilon(0)", target=0)
    assert relevance.tolist() == [[1.0, -2.0, 3.0, 2.0]]            # LRP-0 of a linear model is w * x
    result = M.region_perturbation(model, x, relevance, 0, steps=4)
    # most relevant first: delete x2 (3), x3 (2), x0 (1), x1 (-2); least relevant first: the reverse
    assert result.morf.tolist() == [[4.0, 1.0, -1.0, -2.0, 0.0]]
    assert result.lerf.tolist() == [[4.0, 6.0, 5.0, 3.0, 0.0]]
    assert result.fractions.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    # trapezoids with spacing 1/4: MoRF (2 + 1 - 1 - 2 + 0) / 4 = 0, LeRF (2 + 6 + 5 + 3 + 0) / 4 = 4
    assert result.morf_auc.tolist() == [0.0] and result.lerf_auc.tolist() == [4.0]
    assert result.auc_difference.tolist() == [4.0]
    assert result.summary() == {"morf_auc": 0.0, "lerf_auc": 4.0, "auc_difference": 4.0}
    # two steps delete two pixels each
    assert M.perturbation_curve(model, x, relevance, 0, steps=2).tolist() == [[4.0, -1.0, 0.0]]


def test_lrp_order_is_the_ideal_deletion_order_of_a_linear_model():
    model, x = linear(W), torch.tensor(X, dtype=torch.float64)
    relevance = lrpfx.explain(model, x, "epsilon(0)", target=0)
    morf = M.perturbation_curve(model, x, relevance, 0, order="morf")
    lerf = M.perturbation_curve(model, x, relevance, 0, order="lerf")
    curves = []
    for perm in itertools.permutations(range(4)):                  # every deletion order
        scores = torch.tensor([[4.0 - perm.index(i) for i in range(4)]], dtype=torch.float64)
        curves.append(M.perturbation_curve(model, x, scores, 0, order="morf"))
    curves = torch.cat(curves)
    assert torch.equal(morf[0], curves.min(0).values)   # lowest possible score after every step
    assert torch.equal(lerf[0], curves.max(0).values)   # highest possible
    gradient = lrpfx.explain(model, x, "gradient", target=0)       # w: ignores x, so not ideal
    assert M.auc(M.perturbation_curve(model, x, gradient, 0)) > M.auc(morf)


def test_patches_baselines_and_probability_score():
    # a 1x4x4 image into a linear model; 2x2 patches hold the sums of their pixels' contributions
    w = torch.arange(16, dtype=torch.float64).sub(6).view(1, 1, 4, 4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 1, bias=False)).double().eval()
    with torch.no_grad():
        model[1].weight.copy_(w.view(1, 16))
    x = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    ids, count = M.patch_ids((4, 4), 2)
    assert count == 4 and ids.view(4, 4).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert M.patch_ids((5, 3), (2, 3))[1] == 3 and M.patch_ids((5, 3), (2, 3))[0].view(5, 3)[4].tolist() == [2] * 3
    relevance = w * x
    patch_sums = [-6 - 5 - 2 - 1, -4 - 3 + 0 + 1, 2 + 3 + 6 + 7, 4 + 5 + 8 + 9]   # -14, -6, 18, 26
    f = sum(patch_sums)                                                          # 24
    curve = M.perturbation_curve(model, x, relevance, 0, patch_size=2)
    assert curve.tolist() == [[f, f - 26, f - 26 - 18, f - 26 - 18 + 6, 0.0]]
    # baseline "mean": a deleted pixel takes the image mean (1 here, so nothing changes); a constant 2 doubles it
    assert M.perturbation_curve(model, x, relevance, 0, patch_size=2, baseline="mean").tolist() == [[f] * 5]
    assert M.perturbation_curve(model, x, relevance, 0, patch_size=2, baseline=2.0)[0, -1].item() == 2 * f
    assert M.perturbation_curve(model, x, relevance, 0, patch_size=2,
                                baseline=torch.full((1, 1, 4, 4), 3.0))[0, -1].item() == 3 * f
    noisy = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    uniform = _baseline(noisy, "uniform", seed=1)
    assert torch.equal(uniform, _baseline(noisy, "uniform", seed=1))
    assert bool((uniform >= noisy.flatten(1).min(1).values.view(2, 1, 1, 1)).all())
    assert bool((uniform <= noisy.flatten(1).max(1).values.view(2, 1, 1, 1)).all())
    # batching of the perturbed inputs does not change the curve
    assert torch.equal(M.perturbation_curve(model, x, relevance, 0, batch_size=1),
                       M.perturbation_curve(model, x, relevance, 0, batch_size=1000))
    two = nn.Sequential(model, nn.Linear(1, 2, bias=False).double())
    with torch.no_grad():
        two[1].weight.copy_(torch.tensor([[1.0], [0.0]]))
    p = M.perturbation_curve(two, x, relevance, 0, patch_size=2, score="probability")
    assert torch.allclose(p, torch.sigmoid(curve))          # softmax of (z, 0) at class 0
    with pytest.raises(ValueError, match="baseline"):
        M.perturbation_curve(model, x, relevance, 0, baseline="blurry")
    with pytest.raises(ValueError, match="patch_size"):
        M.perturbation_curve(model, x, relevance, 0, patch_size=(2, 2, 2))


def test_random_order_is_seeded_and_legacy_pixel_flipping_still_works():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).double().eval()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    r = lrpfx.explain(model, x, "epsilon")
    a = M.perturbation_curve(model, x, r, order="random", seed=3)
    assert torch.equal(a, M.perturbation_curve(model, x, r, order="random", seed=3))
    assert not torch.equal(a, M.perturbation_curve(model, x, r, order="random", seed=4))
    legacy = M.pixel_flipping(model, x, r, steps=4)
    assert legacy["morf"].shape == (3, 5) and legacy["area"].dim() == 0


def test_spearman_with_ties_by_hand():
    assert M.average_ranks(torch.tensor([[3.0, 1, 1, 2, 3, 0]])).tolist() == [[4.5, 1.5, 1.5, 3.0, 4.5, 0.0]]
    # ranks a = (0, 1, 2, 3, 4), b = (5, 6, 7, 8, 7) -> (0, 1, 2.5, 4, 2.5)
    a = torch.tensor([[1.0, 2, 3, 4, 5]])
    b = torch.tensor([[5.0, 6, 7, 8, 7]])
    # centred: (-2, -1, 0, 1, 2) and (-2, -1, 0.5, 2, 0.5): sum of products 8, sums of squares 10 and 9.5
    assert M.spearman(a, b).item() == pytest.approx(8 / math.sqrt(95), abs=1e-12)
    x = torch.randn(4, 30)
    assert torch.allclose(M.spearman(x, x.exp()), torch.ones(4, dtype=torch.float64))   # monotone: 1
    assert torch.allclose(M.spearman(x, -x), -torch.ones(4, dtype=torch.float64))
    assert math.isnan(M.spearman(torch.ones(1, 5), a).item())                      # constant: undefined


def small_cnn():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 64, 16), nn.ReLU(), nn.Linear(16, 4)).double().eval()


def test_randomization_check_decorrelates_layer_by_layer():
    model = small_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(12, 1, 8, 8, dtype=torch.float64)
    result = M.randomization_check(model, x, "epsilon", seed=5)
    assert result.layers == ["7", "5", "2", "0"]                     # top-down cascade
    assert result.correlation.shape == (5, 12)
    assert torch.equal(result.correlation[0], torch.ones(12, dtype=torch.float64))
    means = result.mean()
    assert all(m < 0.6 for m in means[1:])                           # every randomised step decorrelates
    assert abs(means[-1]) < 0.3                                      # fully random: unrelated heatmaps
    assert all(k and torch.equal(v, model.state_dict()[k]) for k, v in before.items())   # model untouched
    # the cascade is cumulative: the last step is the model with all four layers re-initialised
    copy = small_cnn()
    for step, name in enumerate(result.layers, 1):
        _randomize(dict(copy.named_modules())[name], 5 + step)
    target = model(x).argmax(1)
    r0 = lrpfx.explain(model, x, "epsilon", target=target).sum(1)
    r4 = lrpfx.explain(copy, x, "epsilon", target=target).sum(1)
    assert torch.allclose(result.correlation[-1], M.spearman(r0, r4))
    assert torch.allclose(result.correlation_abs[-1], M.spearman(r0.abs(), r4.abs()))
    text = str(result)
    assert text.splitlines()[0].split()[:3] == ["randomised", "up", "to"] and "(none)" in text
    only_top = M.randomization_check(model, x, "epsilon", layers=["7"], seed=5)
    assert torch.equal(only_top.correlation[1], result.correlation[1])
    with pytest.raises(ValueError, match="no such layers"):
        M.randomization_check(model, x, "epsilon", layers=["nope"])


def test_conservation_report_per_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)).double().eval()
    x = torch.randn(7, 6, dtype=torch.float64)
    report = M.conservation_report(model, x, "epsilon(0)", batch_size=3)
    assert [r.layer for r in report][-3:] == ["0", "1", "2"] and report[0].layer.startswith("input")
    for row in report:   # LRP-0 without biases conserves exactly at every layer
        assert row.mean == pytest.approx(1.0, abs=1e-12) and row.max - row.min < 1e-12
    biased = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    rows = {r.layer: r for r in M.conservation_report(biased, x, "epsilon")}
    assert rows["2"].mean == pytest.approx(1.0)                       # the output layer holds the logit
    assert rows["0"].max - rows["0"].min > 1e-3                      # biases absorb relevance: not conserved
    assert "layer" in str(report).splitlines()[0] and report.as_dicts()[0]["layer"] == report[0].layer


def test_evaluate_rules_table():
    model = nn.Sequential(nn.Flatten(), linear([1.0, -2.0, 3.0, 0.5, -1.0, 2.0, 0.25, -0.5])).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(10, 1, 2, 4, generator=g, dtype=torch.float64)
    y = torch.zeros(10, dtype=torch.long)
    table = M.evaluate_rules(model, (x, y), ["epsilon(0)", "gradient"], target="label", batch_size=4,
                             randomization_samples=5)
    assert [row["rule"] for row in table] == ["epsilon(0)", "gradient"]
    lrp, grad = table
    # LRP-0 of a linear model deletes in the ideal order: its MoRF area is the lowest possible, LeRF the highest
    assert lrp["morf_auc"] < grad["morf_auc"] and lrp["lerf_auc"] > grad["lerf_auc"]
    assert lrp["auc_difference"] == pytest.approx(lrp["lerf_auc"] - lrp["morf_auc"])
    assert lrp["conservation"] == pytest.approx(1.0)                  # sum of w*x is the logit
    # one affine layer: randomising it is randomising everything
    assert lrp["randomized_top"] == lrp["randomized_all"] and lrp["randomized_all"] < 0.9
    direct = M.region_perturbation(model, x, lrpfx.explain(model, x, "epsilon(0)", target=0), y)
    assert lrp["morf_auc"] == pytest.approx(direct.morf_auc.mean().item())
    text, markdown = str(table), table.to_markdown()
    assert text.splitlines()[0].startswith("rule") and len(text.splitlines()) == 3
    assert markdown.splitlines()[1].startswith("|---|") and "| epsilon(0) |" in markdown
    limited = M.evaluate_rules(model, x, ["epsilon"], batch_size=3, limit=4, randomization_samples=0)
    assert limited[0]["randomized_all"] is None and "-" in str(limited) and limited[0]["samples"] == 4
    # the same numbers from a list of batches or a DataLoader of (x, y) pairs
    batches = [x[:3], x[3:7], x[7:]]
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    for data in (batches, loader):
        again = M.evaluate_rules(model, data, ["epsilon(0)"], randomization_samples=5)
        assert again[0]["morf_auc"] == pytest.approx(lrp["morf_auc"])
        assert again[0]["randomized_all"] == pytest.approx(lrp["randomized_all"])
