"""The modified-gradient form (docs/architecture.md, "Relevance per value"): LRP-0 and AttnLRP steps that take and
give relevance divided by the value (``R = x ⊙ G``) instead of relevance.

Checked: on models that exercise every step with that form (affine maps with and without bias, folded and
unfolded BatchNorm, residual sums, average pooling, plain ReLU, identities, products and quotients with
constants, views and permutes, LayerNorm and RMSNorm, products of activations, the softmax, both bilinear
products of attention), the program equals the relevance form it replaces (float64, 1e-12 relative), for one
target, several targets, intermediate relevances and concept conditions; the form is really used (the steps
are the transposed maps, no quotient); rules the form cannot carry keep the relevance form.
"""
import math

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import AttnLRP, single
from lrpfx.rules import Epsilon

from tests.helpers.models import random_input

pytestmark = pytest.mark.usefixtures("one_thread")


class ConvNet(nn.Module):
    """Conv + BatchNorm (folded), max pooling, a residual sum, an unfolded BatchNorm, average pooling, a scale, a
    view, an identity cast."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(6)  # after a sum: not folded
        self.pool, self.drop, self.max = nn.AvgPool2d(2), nn.Dropout(0.3), nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(6 * 2 * 2, 10), nn.Linear(10, 4)

    def forward(self, x):
        h = self.max(torch.relu(self.bn1(self.conv1(x)))).double()  # a cast to its own dtype: an identity
        h = self.bn2(h + self.conv2(h))
        h = self.pool(torch.relu(h)) * 0.5
        h = self.drop(h.view(h.shape[0], -1))
        return self.fc2(torch.relu(self.fc1(h)) / 3.0)


class Block(nn.Module):
    """A LLaMA-like block written out: RMSNorm-free LayerNorm, attention with a causal mask and a scale, a gated
    MLP (product of activations), residual sums, a permute and views."""

    def __init__(self, d=8, heads=2, rms=False):
        super().__init__()
        self.heads, self.rms = heads, rms
        self.norm1, self.norm2 = nn.LayerNorm(d, bias=not rms), nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=i == 0) for i in range(4))
        self.gate, self.up, self.down = nn.Linear(d, 16), nn.Linear(d, 16, bias=False), nn.Linear(16, d)

    def forward(self, x):
        b, t, d = x.shape
        h = self.norm1(x)
        q, k, v = (f(h).view(b, t, self.heads, -1).permute(0, 2, 1, 3) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
        a = torch.softmax(scores + mask, dim=-1)
        x = x + self.o((a @ v).permute(0, 2, 1, 3).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.down(nn.functional.silu(self.gate(h)) * self.up(h))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.block, self.head = nn.Linear(5, 8), Block(), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(self.embed(x))[:, -1])


def _models():
    torch.manual_seed(0)
    conv = ConvNet().double().eval()
    for bn in (conv.bn1, conv.bn2):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0), bn.weight.data.uniform_(0.5, 1.5)
    return {
        "conv-lrp0": (conv, single(Epsilon(0.0)), (2, 3, 8, 8)),
        "conv-lrp0-zero-bias": (conv, single(Epsilon(0.0, zero_bias=True)), (2, 3, 8, 8)),
        "transformer-attnlrp": (Tiny().double().eval(), AttnLRP(), (2, 6, 5)),
        "transformer-lrp0": (Tiny().double().eval(), single(Epsilon(0.0)), (2, 6, 5)),
    }


MODELS = _models()


def _explain(model, composite, x, form="per-value", **call):
    """``form="relevance"``: the program uses the relevance form everywhere (the reference)."""
    return lrpfx.Explainer(model, composite, form=form)(x, **call)


def _close(a, b):
    scale = max(b.abs().max().item(), 1e-300)
    assert (a - b).abs().max().item() <= 1e-12 * scale, (a - b).abs().max().item() / scale


@pytest.mark.parametrize("name", list(MODELS))
def test_per_value_form_equals_the_relevance_form(name):
    model, composite, shape = MODELS[name]
    x = random_input(shape, seed=3)
    reference = _explain(model, composite, x, "relevance", intermediate=True)
    multi_reference = _explain(model, composite, x, "relevance", targets=[0, 2])
    ours = _explain(model, composite, x, intermediate=True)
    multi = _explain(model, composite, x, targets=[0, 2])
    _close(ours.relevance, reference.relevance)
    _close(multi.relevance, multi_reference.relevance)
    assert ours.intermediate.keys() == reference.intermediate.keys()
    for key in reference.intermediate:
        _close(ours.intermediate[key], reference.intermediate[key])


@pytest.mark.parametrize("name", ["conv-lrp0", "transformer-attnlrp"])
def test_per_value_form_is_used(name):
    """The steps of the form are there, and LRP-0's affine steps divide by nothing and multiply by no input."""
    model, composite, shape = MODELS[name]
    code = lrpfx.Explainer(model, composite).program(random_input(shape)).code
    assert "epsilon_per_value" in code
    assert "affine.epsilon(" not in code and "stabilize" not in code
    if name == "transformer-attnlrp":
        for step in ("softmax_per_value", "matmul_per_value", "mul_uniform_per_value", "layer_norm_per_value",
                     "per_value = True"):  # the last: the sum's split in the per-value form
            assert step in code, step


def test_lrp0_in_per_value_form_is_gradient_times_input():
    """Theory: on a bias-free ReLU network LRP-0 is gradient × input; the per-value form carries the gradient."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 9, bias=False), nn.ReLU(), nn.Linear(9, 9, bias=False), nn.ReLU(),
                          nn.Linear(9, 4, bias=False)).double().eval()
    x = random_input((3, 6), seed=4).requires_grad_(True)
    ours = _explain(model, single(Epsilon(0.0)), x.detach(), target=1).relevance
    model(x)[:, 1].sum().backward()
    _close(ours, x.grad * x.detach())


def test_rules_the_form_cannot_carry_keep_the_relevance_form():
    """Epsilon > 0 divides by a stabilised output: no per-value steps; zero_bias on a sum with a constant
    drops the constant from the denominator: that sum is a relevance step."""
    model, _, shape = MODELS["conv-lrp0"]
    code = lrpfx.Explainer(model, single(Epsilon(1e-3))).program(random_input(shape)).code
    assert "per_value" not in code


def test_concept_conditions_in_per_value_form():
    """Conditional relevance masks and gates multiply relevance: the same in either form."""
    model, composite, shape = MODELS["conv-lrp0"]
    x = random_input(shape, seed=5)
    conditions = [{"y": 1, "fc1": [2]}, {"y": 2, "conv2": [3]}, {"y": 0, "fc1": [0, 5], "conv2": [1]}]
    reference = _explain(model, composite, x, "relevance", conditions=conditions)
    ours = _explain(model, composite, x, conditions=conditions)
    _close(ours.relevance, reference.relevance)


def test_the_forms_benchmark_runs(tmp_path):
    """``python -m bench.per_value`` on a small case writes its table (the benchmark must not rot)."""
    from bench import per_value

    out = tmp_path / "per_value.md"
    assert per_value.main(["--models", "resnet18", "--size", "32", "--batch", "1", "--rounds", "1", "--no-llama",
                           "--out", str(out)]) == 0
    table = out.read_text()
    for method in ("floor", "zero, per value", "zero, relevance", "epsilon (1e-6)"):
        assert f"| {method} |" in table


class SdpaNet(nn.Module):
    """Attention through F.scaled_dot_product_attention: causal, with a float mask, with a boolean mask (left
    padding: its first query rows attend to nothing), with grouped key/value heads."""

    def __init__(self, variant: str, d=8, heads=2):
        super().__init__()
        self.variant, self.heads = variant, heads
        kv = d // 2 if variant == "gqa" else d
        self.embed, self.q, self.k, self.v = nn.Linear(5, d), nn.Linear(d, d), nn.Linear(d, kv), nn.Linear(d, kv)
        self.o, self.head = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.embed(x)
        q, k, v = (f(h).view(b, t, -1, 8 // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        options = {}
        if self.variant == "causal":
            options["is_causal"] = True
        elif self.variant == "float-mask":
            options["attn_mask"] = torch.linspace(-1.0, 0.0, t * t, dtype=x.dtype).view(t, t)
        elif self.variant == "padding":
            allowed = torch.ones(b, 1, t, t, dtype=torch.bool)
            allowed[1, :, :, :2] = False  # sample 1: the first two keys are padding
            options["attn_mask"] = allowed
        elif self.variant == "gqa":
            options["enable_gqa"] = True
        a = nn.functional.scaled_dot_product_attention(q, k, v, **options)
        return self.head(h + self.o(a.transpose(1, 2).reshape(b, t, -1))).sum(1)


@pytest.mark.parametrize("variant", ["causal", "float-mask", "padding", "gqa"])
@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp-0"])
def test_fused_attention_equals_its_steps(variant, preset):
    """One fused step (the attention's VJP with the uniform shares) equals the split steps, one and several
    targets; the fused step is what the program runs, forward and relevance, so no T×T weights exist."""
    from lrpfx.composites import CPLRP

    torch.manual_seed(2)
    model = SdpaNet(variant).double().eval()
    composite = AttnLRP() if preset == "attnlrp" else CPLRP(epsilon=0.0)
    x = random_input((2, 6, 5), seed=7)
    reference = _explain(model, composite, x, "relevance")
    multi_reference = _explain(model, composite, x, "relevance", targets=[0, 2])
    ours, multi = _explain(model, composite, x), _explain(model, composite, x, targets=[0, 2])
    _close(ours.relevance, reference.relevance)
    _close(multi.relevance, multi_reference.relevance)
    code = lrpfx.Explainer(model, composite).program(x).code
    assert "attention_per_value" in code and "softmax_per_value" not in code and "matmul_per_value" not in code
    assert "attention_forward" in code and "torch.softmax" not in code  # the forward runs the fused kernel too
    assert ("causal = True" in code) == (variant == "causal")  # a causal pattern alone: no mask tensor
