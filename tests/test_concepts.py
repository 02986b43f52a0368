"""Conditional relevance: shapes and batching, path semantics (conservation over a layer's concepts, parallel
branches as alternatives), transformer concepts (residual-stream dimensions, heads, MLP neurons), bad inputs.

Independent references: the unconditional heatmap (conditional heatmaps of all concepts of a node every path
crosses sum to it), separate calls (one condition at a time, one class at a time), and sums of branches.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import CPLRP, EpsilonGammaBox
from lrpfx.concepts import Channels, Heads, MaskFunction, concept_relevance
from lrpfx.errors import InputError, TargetError

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-9


def _rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


class Block(nn.Module):
    """A residual block with a convolution on its skip path: every path crosses ``bn2`` or ``skip``."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1)
        self.relu = nn.ReLU()
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + self.skip(x))


class ResNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.block = Block(6, 8)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = ResNetLike().double().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    return model, x


def test_shapes_batching_and_classes(resnet):
    model, x = resnet
    before = copy.deepcopy(model.state_dict())
    ex = lrpfx.Explainer(model, "epsilon-gamma-box")
    conditions = [{"y": y, "block.bn2": [c]} for y in (1, 4) for c in range(3)]
    whole = ex(x, conditions=conditions, intermediate=["block.conv1", "block.bn2"])
    assert whole.relevance.shape == (3, 6, 3, 8, 8)
    assert whole.intermediate["block.conv1"].shape == (3, 6, 8, 8, 8)
    chunked = ex(x, conditions=conditions, condition_batch_size=4)
    assert torch.allclose(chunked.relevance, whole.relevance, rtol=0, atol=1e-14)
    for k, cond in enumerate(conditions):  # one condition at a time, its class as plain target
        alone = ex(x, conditions=[{"block.bn2": cond["block.bn2"]}], target=cond["y"])
        assert _rel(alone.relevance[:, 0], whole.relevance[:, k]) < TOL
    # the masked relevance at the conditioned node is the unconditional one on the kept channel, zero elsewhere
    plain = ex(x, target=1, intermediate=True).intermediate["block.bn2"]
    masked = whole.intermediate["block.bn2"][:, 1]
    assert torch.equal(masked[:, 1], plain[:, 1]) and masked[:, [0, 2]].abs().max() == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_all_concepts_of_a_cut_sum_to_the_heatmap(resnet):
    model, x = resnet
    composite = EpsilonGammaBox(epsilon=0.0, zero_bias=True)
    ex = lrpfx.Explainer(model, composite)
    plain = ex(x, target=2).relevance
    for node, channels in (("block.out", 8), ("stem.1", 6)):
        e = ex(x, conditions=[{"y": 2, node: [c]} for c in range(channels)])
        assert _rel(e.relevance.sum(1), plain) < TOL, node


def test_parallel_branches_are_alternatives(resnet):
    model, x = resnet
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    plain = ex(x, target=0).relevance
    branch = ex(x, target=0, conditions=[{"block.bn2": [c]} for c in range(8)]).relevance.sum(1)
    skip = ex(x, target=0, conditions=[{"block.skip": [c]} for c in range(8)]).relevance.sum(1)
    # every path crosses exactly one of the two: the branch's and the skip's concepts together give the heatmap
    assert _rel(branch + skip, plain) < TOL
    assert _rel(branch, plain) > 1e-3 and _rel(skip, plain) > 1e-3  # each alone misses the other's share
    both = ex(x, target=0, conditions=[{"block.bn2": [1], "block.skip": [5]}, {"block.bn2": [1]},
                                       {"block.skip": [5]}]).relevance
    assert _rel(both[:, 0], both[:, 1] + both[:, 2]) < TOL
    # a chain: through the most relevant channel of the block output, then each stem channel: the stem's
    # concepts add up to that channel's heatmap
    c = int(concept_relevance(ex, x, ["block.out"], target=0).relevance["block.out"].abs().sum(0).argmax())
    chain = ex(x, target=0, conditions=[{"block.out": [c], "stem.1": [s]} for s in range(6)]).relevance.sum(1)
    top = ex(x, target=0, conditions=[{"block.out": [c]}]).relevance[:, 0]
    assert top.abs().max() > 0 and _rel(chain, top) < TOL


def test_concept_relevance_and_top_k(resnet):
    model, x = resnet
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    cr = concept_relevance(ex, x, ["block.bn2", "stem.1"], target=3)
    plain = ex(x, target=3, intermediate=True).intermediate
    assert torch.allclose(cr.relevance["block.bn2"], plain["block.bn2"].sum((2, 3)), rtol=1e-12, atol=0)
    with torch.no_grad():
        act = model.stem(x)
    assert torch.allclose(cr.activation["stem.1"], act.amax((2, 3)))
    values, idx = cr.top("block.bn2", 3)
    assert idx.shape == (3, 3) and torch.equal(values, cr.relevance["block.bn2"].gather(1, idx))
    assert (values[:, :-1] >= values[:, 1:]).all()


def tiny_llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=64, vocab_size=50)
    return transformers.LlamaForCausalLM(config).double().eval(), {"input_ids": torch.randint(0, 50, (2, 6))}


@pytest.mark.slow
def test_transformer_residual_stream_heads_and_neurons():
    model, inputs = tiny_llama()
    ex = lrpfx.Explainer(model, CPLRP(epsilon=0.0, zero_bias=True))
    plain = ex(inputs, target=7, intermediate=True)
    names = list(plain.intermediate)
    o_proj = names.index("model.layers.0.self_attn.o_proj")
    stream = next(n for n in names[o_proj:] if n.startswith("add"))  # residual stream after layer 0's attention
    heads_node = names[o_proj - 1]  # the attention output before o_proj, [B, T, 4 heads * 8]
    down = names.index("model.layers.1.mlp.down_proj")
    gated = names[down - 1]  # the MLP's gated product, [B, T, 64 neurons]
    at_token = MaskFunction(lambda idx, shape: torch.zeros(shape).index_fill_(0, torch.tensor(idx), 1.0), 6)
    conditions = ([{stream: [d]} for d in range(32)]                             # 0..31
                  + [{heads_node: Heads(4)[h]} for h in range(4)]                # 32..35
                  + [{"model.layers.0.self_attn.o_proj": list(range(32))}]       # 36
                  + [{gated: list(range(0, 64, 2))}, {gated: list(range(1, 64, 2))}]  # 37, 38
                  + [{"model.layers.1.mlp.down_proj": list(range(32))}]          # 39
                  + [{stream: at_token[t]} for t in range(6)])                   # 40..45
    R = ex(inputs, target=7, conditions=conditions, condition_batch_size=16).relevance
    assert R.shape == (2, 46, 6, 32)
    # every path crosses the residual stream: its dimensions, or its token positions, add up to the heatmap
    assert _rel(R[:, :32].sum(1), plain.relevance) < TOL
    assert _rel(R[:, 40:].sum(1), plain.relevance) < TOL
    # heads before o_proj and the o_proj output are both the attention branch, which misses the skip's share
    assert _rel(R[:, 32:36].sum(1), R[:, 36]) < TOL and _rel(R[:, 36], plain.relevance) > 1e-3
    # MLP neurons (even + odd) are the MLP output's branch
    assert _rel(R[:, 37] + R[:, 38], R[:, 39]) < TOL


class WithConstant(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16, 3)
        self.register_buffer("offset", torch.ones(4, 4, 4))
        self.shift = nn.Linear(4, 4)  # applied to a buffer: a module whose value does not depend on the input

    def forward(self, x):
        shift = self.shift(self.offset)
        return self.fc((torch.relu(self.conv(x)) + shift).flatten(1))


def test_bad_conditions():
    torch.manual_seed(0)
    model = WithConstant().double().eval()
    ex = lrpfx.Explainer(model, "epsilon-plus-flat")
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    with pytest.raises(InputError, match=r"unknown node 'conv\.1'.*close matches: \['conv'"):
        ex(x, conditions=[{"y": 0, "conv.1": [0]}])
    with pytest.raises(InputError, match="index 4 is out of range for node 'conv', which has 4 concepts"):
        ex(x, conditions=[{"y": 0, "conv": [4]}])
    with pytest.raises(InputError, match="'shift'.* carries no relevance"):
        ex(x, conditions=[{"y": 0, "shift": [0]}])
    with pytest.raises(InputError, match="mixed shapes"):
        ex(x, conditions=[{"y": 0, "conv": [0]}, {"y": 0, "conv": [[0, 1], [2]]}])
    with pytest.raises(InputError, match="mixed shapes"):
        ex(x, conditions=[{"y": 0, "conv": torch.zeros(2, 1, dtype=torch.long)}])
    with pytest.raises(TargetError, match="one class"):
        ex(x, conditions=[{"y": [0, 1], "conv": [0]}])
    with pytest.raises(TargetError, match="some conditions name a class"):
        ex(x, conditions=[{"y": 0, "conv": [0]}, {"conv": [1]}])
    with pytest.raises(TargetError, match="out of range"):
        ex(x, conditions=[{"y": 3, "conv": [0]}])
    with pytest.raises(InputError, match="non-empty list of dicts"):
        ex(x, conditions=[])
    with pytest.raises(InputError, match="batch size must be a positive int"):
        ex(x, conditions=[{"conv": [0]}], condition_batch_size=0)
    with pytest.raises(InputError, match="input or embedding"):
        ex(x, conditions=[{"x": [0]}])
    with pytest.raises(InputError, match="Heads\\(2\\) cannot split"):
        ex(x, conditions=[{"fc": Heads(2)[0]}])
    with pytest.raises(InputError, match="does not broadcast"):
        ex(x, conditions=[{"conv": MaskFunction(lambda i, s: torch.ones(3), 2)[0]}])
    assert ex(x, conditions=[{"conv": Channels(0)[-1]}]).relevance.shape == (2, 1, 1, 4, 4)
