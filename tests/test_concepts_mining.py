"""Concept mining on a planted concept: a conv channel that detects a cross; mining finds the images that hold
a cross (relevance and activation maximization), the receptive-field crop covers the cross, resuming and
another shard split give the same result, and the atlas renders."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import lrpfx
from lrpfx.concepts import atlas_rows, load_mining, mine_concepts, reference, render_atlas
from lrpfx.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")
CROSS = torch.tensor([[0., 1., 0.], [1., 1., 1.], [0., 1., 0.]])
PLANTED = 2  # the channel whose kernel is the cross


def planted_model() -> nn.Module:
    """conv(1 -> 4, 3x3) -> ReLU -> global max -> linear(4 -> 2); channel 2 matches the cross (its bias keeps it
    silent on noise), class 1 reads channel 2."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    fc = nn.Linear(4, 2)
    with torch.no_grad():
        conv.weight.mul_(0.1)
        conv.weight[PLANTED, 0] = CROSS - 0.2
        conv.bias.fill_(-0.1)
        conv.bias[PLANTED] = -2.0
        fc.weight.copy_(torch.tensor([[0.1, 0.1, -1.0, 0.1], [0.1, 0.1, 3.0, 0.1]]))
        fc.bias.zero_()
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), fc).double().eval()


def planted_data(n: int = 40):
    gen = torch.Generator().manual_seed(3)
    x = 0.3 * torch.rand(n, 1, 12, 12, generator=gen, dtype=torch.float64)
    where = {}
    for i in range(0, n, 3):  # every third image holds a cross at a random place
        r, c = (int(v) for v in torch.randint(0, 10, (2,), generator=gen))
        x[i, 0, r:r + 3, c:c + 3] += CROSS
        where[i] = (r, c)
    labels = torch.tensor([1 if i in where else 0 for i in range(n)])
    return TensorDataset(x, labels), where


def test_mining_finds_the_planted_concept(tmp_path):
    model = planted_model()
    data, where = planted_data()
    k = len(where)
    result = mine_concepts(model, data, "epsilon-plus-flat", ["0", "1"], tmp_path / "a", top_k=k, batch_size=8,
                           shard_size=16, target=1, progress=False)
    stats = result["1"]
    assert set(stats.top_relevance[PLANTED].tolist()) == set(where)
    assert set(stats.top_activation[PLANTED].tolist()) == set(where)
    assert stats.top_relevance.shape == (4, k)
    assert (stats.relevance_values[:, :-1] >= stats.relevance_values[:, 1:]).all()
    # the stored scores are the concept relevance of the sample: check one against a direct explanation
    i = stats.top_relevance[PLANTED, 0].item()
    e = lrpfx.Explainer(model, "epsilon-plus-flat")(data[i][0][None], target=1, intermediate=True)
    assert torch.isclose(stats.relevance_values[PLANTED, 0].double(), e.intermediate["1"][0, PLANTED].sum(),
                         rtol=1e-6)
    # per-class statistics: target is 1 for all samples here
    assert stats.class_counts.tolist() == [0, len(data)]
    # resume keeps every shard; another shard size gives the same top-k
    again = mine_concepts(model, data, "epsilon-plus-flat", ["0", "1"], tmp_path / "a", top_k=k, batch_size=8,
                          shard_size=16, target=1, progress=False)
    assert again.stats.shards_skipped == 3 and again.stats.shards_written == 0
    other = mine_concepts(model, data, "epsilon-plus-flat", ["0", "1"], tmp_path / "b", top_k=k, batch_size=5,
                          shard_size=10, target=1, progress=False)
    assert torch.equal(other["1"].top_relevance, stats.top_relevance)
    assert torch.equal(load_mining(tmp_path / "a", top_k=k)["1"].top_activation, stats.top_activation)

    # the receptive-field crop of the planted channel covers the cross
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    for i in stats.top_relevance[PLANTED, :4].tolist():
        ref = reference(ex, data[i][0][None], "1", PLANTED, target=1, index=i, margin=0)
        top, bottom, left, right = ref.box
        r, c = where[i]
        assert top <= r and r + 3 <= bottom and left <= c and c + 3 <= right, (ref.box, where[i])
        assert bottom - top <= 5 and right - left <= 5  # a 3x3 receptive field (noise may add a neighbour)

    rows = atlas_rows(ex, lambda i: (data[i][0][None], 1), "1", [PLANTED, 0], stats.top_relevance, k=3)
    render_atlas(rows, ["channel 2 (planted)", "channel 0"], tmp_path / "atlas.png")
    assert (tmp_path / "atlas.png").stat().st_size > 1000


def test_mining_bad_input(tmp_path):
    model = planted_model()
    data, _ = planted_data(8)
    with pytest.raises(InputError, match="unknown node 'nope'"):
        mine_concepts(model, data, "epsilon-plus-flat", ["nope"], tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="top_k"):
        mine_concepts(model, data, "epsilon-plus-flat", ["1"], tmp_path / "d", top_k=0, progress=False)
    lrpfx.explain_dataset(model, data, "epsilon-plus-flat", tmp_path / "e", progress=False)
    with pytest.raises(InputError, match="no concept mining run"):
        load_mining(tmp_path / "e")
    with pytest.raises(Exception, match="differs|another run|refus"):
        mine_concepts(model, data, "epsilon-plus-flat", ["1"], tmp_path / "e", progress=False)
