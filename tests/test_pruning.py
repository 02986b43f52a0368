"""lrpfx.prune: a masked copy (the model untouched), exactly the lowest-|score| units per layer or globally, heads
as output-projection columns, the default kept classifier, and bad inputs refused; explain_dataset's parameter
sums over shards against one pass over all samples, and after resuming."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lrpfx
from lrpfx.data import DatasetError, explain_dataset, load_explanations
from lrpfx.parameter_units import per_unit

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(6 * 16, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


def scores(model, values):
    """A per-parameter score whose unit sums are ``values[layer]`` (all on the bias, zeros on the weight)."""
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for layer, v in values.items():
        out[f"{layer}.bias"] = torch.as_tensor(v, dtype=torch.float64)
    return out


def test_prune_masks_the_least_relevant_channels_of_a_copy():
    model = cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    relevance = scores(model, {"0": [3.0, -0.5, 1.0, 0.2], "2": [1, -6, 2, 0.1, -3, 5], "5": [1] * 5, "7": [1] * 3})
    pruned = lrpfx.prune(model, relevance, 0.5, unit="channel")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not mutated
    assert pruned is not model
    zeroed = {name: (p.detach().flatten(1).abs().sum(1) == 0).nonzero().flatten().tolist()
              for name, p in pruned.named_parameters() if name.endswith("weight")}
    assert zeroed == {"0.weight": [1, 3], "2.weight": [0, 2, 3], "5.weight": [], "7.weight": []}
    assert pruned[0].bias[[1, 3]].abs().sum() == 0 and pruned[0].bias[[0, 2]].abs().min() > 0
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    assert torch.equal(pruned[:2](x)[:, [1, 3]], torch.zeros(2, 2, 4, 4, dtype=torch.float64))  # masked = 0 output


def test_neurons_global_scope_and_the_kept_classifier():
    model = cnn()
    relevance = scores(model, {"5": [0.3, 0.1, 0.9, 0.2, 0.8], "7": [0.01, 0.02, 0.03]})
    pruned = lrpfx.prune(model, relevance, 0.4, unit="neuron")  # the last layer (the classifier) is kept
    assert pruned[5].weight.abs().sum(1).eq(0).nonzero().flatten().tolist() == [1, 3]
    assert torch.equal(pruned[7].weight, model[7].weight)
    both = lrpfx.prune(model, relevance, 0.5, unit="neuron", scope="global", keep=[])  # 4 of 8 units overall
    assert both[7].weight.abs().sum(1).eq(0).all() and both[5].weight.abs().sum(1).eq(0).nonzero().numel() == 1
    same = lrpfx.prune(model, relevance, 0.0, unit="neuron")
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))


def test_heads_by_relevance_from_an_explanation():
    torch.manual_seed(4)
    from tests.test_parameters import Attention
    model = Attention().double().eval()
    explanation = lrpfx.Explainer(model, "attnlrp")(torch.randn(3, 5, 4, dtype=torch.float64), target=1,
                                                     parameters=True)
    heads = explanation.parameters.per_head()["att"]
    pruned = lrpfx.prune(model, explanation.parameters, 0.5, unit="head")
    weak = int(heads.abs().argmin())
    columns = pruned.att.out_proj.weight.reshape(8, 2, 4)
    assert columns[:, weak].abs().sum() == 0 and columns[:, 1 - weak].abs().min() > 0
    assert torch.equal(pruned.att.in_proj_weight, model.att.in_proj_weight)


def test_bad_inputs_are_refused():
    model = cnn()
    relevance = {n: p.abs() for n, p in model.named_parameters()}
    for fraction in (1.0, -0.1, 1.5, "0.5", True):
        with pytest.raises(lrpfx.InputError, match=r"fraction must be a number in \[0, 1\)"):
            lrpfx.prune(model, relevance, fraction)
    with pytest.raises(lrpfx.InputError, match="unit must be one of"):
        lrpfx.prune(model, relevance, 0.5, unit="filter")
    with pytest.raises(lrpfx.InputError, match="no heads to prune"):
        lrpfx.prune(model, relevance, 0.5, unit="head")
    other = nn.Sequential(nn.Conv2d(1, 5, 3)).double()
    with pytest.raises(lrpfx.InputError, match="'0.weight' has shape .*another model"):
        lrpfx.prune(model, {n: p.abs() for n, p in other.named_parameters()}, 0.5)
    with pytest.raises(lrpfx.InputError, match="'fc.weight', which is not a parameter of this model"):
        lrpfx.prune(model, {"fc.weight": torch.ones(3)}, 0.5)


def test_magnitude_scores_are_the_units_l1():
    model = cnn()
    l1 = per_unit({n: p.detach().abs() for n, p in model.named_parameters()}, model, kind="channel")
    assert torch.allclose(l1["2"], model[2].weight.detach().abs().sum((1, 2, 3)) + model[2].bias.detach().abs())


# ---- explain_dataset(..., parameters=True) --------------------------------------------------------------------
def test_dataset_parameter_sums_equal_one_pass_and_survive_resuming(tmp_path):
    model = cnn()
    torch.manual_seed(5)
    x, y = torch.randn(10, 1, 4, 4, dtype=torch.float64), torch.randint(0, 3, (10,))
    options = dict(batch_size=3, shard_size=4, store="float64", progress=False, target="label", parameters=True)
    view = explain_dataset(model, TensorDataset(x, y), "zero", tmp_path / "run", **options)
    one_pass = lrpfx.Explainer(model, "zero")(x, target=y, parameters=True).parameters
    summed = view.parameters()
    assert summed.keys() == one_pass.keys() and view.num_shards == 3
    for name, value in one_pass.items():
        assert torch.allclose(summed[name], value, rtol=1e-12, atol=1e-15), name
    assert view[2:6].relevance.shape == (4, 1, 4, 4)  # per-sample reading skips the sums
    (tmp_path / "run" / "shard-00001.safetensors").unlink()
    again = explain_dataset(model, TensorDataset(x, y), "zero", tmp_path / "run", **options)
    assert (again.stats.shards_skipped, again.stats.shards_written) == (2, 1)
    assert all(torch.equal(again.parameters()[n], summed[n]) for n in summed)
    with pytest.raises(DatasetError, match="parameter relevance stored"):
        explain_dataset(model, TensorDataset(x, y), "zero", tmp_path / "run", **{**options, "parameters": False})
    plain = explain_dataset(model, TensorDataset(x, y), "zero", tmp_path / "plain", **{**options, "parameters": False})
    with pytest.raises(DatasetError, match="parameters=True"):
        load_explanations(plain.out_dir).parameters()
