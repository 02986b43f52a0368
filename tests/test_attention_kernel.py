"""The fused attention kernel: a causal mask spelled out as a tensor runs it as causal (it skips the forbidden
blocks, half the attention's work at long contexts) with the relevance the mask gives, any other mask stays a
mask; queries that are parameters, and values narrower than the keys."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lrpfx
from lrpfx.composites import CPLRP, AttnLRP
from lrpfx.rules import attention

D = torch.float64
aten = torch.ops.aten


class SpelledMask(nn.Module):
    """One head; the mask is a tensor argument of SDPA (True: may attend), written as models write it: positions
    compared, optionally with a padding mask, and-ed in. ``fused=False`` writes the attention out instead."""

    def __init__(self, dim=6, classes=3, fused=True):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.head = nn.Linear(dim, classes)
        self.fused = fused

    def forward(self, x, keep):
        positions = torch.arange(x.shape[1])
        allowed = (positions[None, :] <= positions[:, None])[None, None] & keep[:, None, None, :].bool()
        q, k, v = (f(x)[:, None] for f in (self.q, self.k, self.v))
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
        else:
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(~allowed, torch.finfo(torch.float64).min)
            o = torch.softmax(scores, dim=-1) @ v
        return self.head(o[:, 0, -1])


class KernelCalls(TorchDispatchMode):
    """Every call of the CPU's fused attention kernel, forward or backward: (is_causal, whether it read a mask)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.overloadpacket in (aten._scaled_dot_product_flash_attention_for_cpu,
                                   aten._scaled_dot_product_flash_attention_for_cpu_backward):
            at = 4 if func.overloadpacket is aten._scaled_dot_product_flash_attention_for_cpu else 7
            is_causal = args[at] if len(args) > at else kwargs.get("is_causal", False)
            self.calls.append((is_causal, kwargs.get("attn_mask") is not None))
        return func(*args, **kwargs)


def kernel_calls(explainer, *args, **kwargs):
    explainer(*args, **kwargs)  # traced: the model's own calls
    with KernelCalls() as recorder:
        e = explainer(*args, **kwargs)
    return e, recorder.calls


def test_causal_pattern_is_known_by_its_values():
    t = 5
    causal = torch.ones(t, t, dtype=torch.bool).triu(1)
    assert attention.causal_pattern(causal)
    assert attention.causal_pattern(causal.expand(2, 3, t, t))  # every batch entry and head
    padded = causal.expand(2, 1, t, t).clone()
    padded[0, :, :, 0] = True
    assert not attention.causal_pattern(padded)
    window = causal | torch.ones(t, t, dtype=torch.bool).tril(-2)  # sliding window of two
    assert not attention.causal_pattern(window)
    assert not attention.causal_pattern(torch.ones(t, t + 1, dtype=torch.bool).triu(2))  # keys shifted: a cache
    assert not attention.causal_pattern(causal.double())  # a float mask is added, not a pattern of forbidden scores
    assert not attention.causal_pattern(None)
    # as SDPA takes masks: True where allowed, and the causal flag on top
    assert attention.causal_pattern(allowed=~causal.expand(2, 1, t, t))
    assert attention.causal_pattern(allowed=torch.ones(2, 1, t, t, dtype=torch.bool), causal=True)
    assert not attention.causal_pattern(allowed=~padded)
    assert not attention.causal_pattern(allowed=~padded, causal=True)
    assert not attention.causal_pattern(allowed=torch.ones(2, 1, 1, t, dtype=torch.bool), causal=True)  # one row


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("composite", [AttnLRP(epsilon=0.0), CPLRP(epsilon=0.0)], ids=["attnlrp", "cp-lrp"])
def test_a_spelled_out_causal_mask_runs_the_causal_kernel_with_the_same_relevance(frontend, composite):
    torch.manual_seed(0)
    model = SpelledMask().double().eval()
    x, keep, target = torch.randn(2, 5, 6, dtype=D), torch.ones(2, 5, dtype=torch.long), torch.tensor([0, 2])
    written_out = SpelledMask(fused=False).double().eval()
    written_out.load_state_dict(model.state_dict())
    expected = lrpfx.Explainer(written_out, composite, frontend=frontend)((x, keep), target=target)
    e, calls = kernel_calls(lrpfx.Explainer(model, composite, frontend=frontend), (x, keep), target=target)
    assert len(calls) == 2 and all(causal and not mask for causal, mask in calls)  # forward, relevance
    torch.testing.assert_close(e.output, expected.output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.relevance[0], expected.relevance[0], rtol=1e-9, atol=1e-12)


def test_a_padded_causal_mask_stays_a_mask():
    torch.manual_seed(0)
    model = SpelledMask().double().eval()
    x, keep, target = torch.randn(2, 5, 6, dtype=D), torch.ones(2, 5, dtype=torch.long), torch.tensor([0, 2])
    keep[1, :2] = 0
    written_out = SpelledMask(fused=False).double().eval()
    written_out.load_state_dict(model.state_dict())
    expected = lrpfx.Explainer(written_out, "attnlrp")((x, keep), target=target)
    e, calls = kernel_calls(lrpfx.Explainer(model, "attnlrp"), (x, keep), target=target)
    assert len(calls) == 2 and all(not causal and mask for causal, mask in calls)
    torch.testing.assert_close(e.relevance[0], expected.relevance[0], rtol=1e-9, atol=1e-12)
    assert e.relevance[0][1, :2].abs().max() < e.relevance[0][1, 2:].abs().max() * 1e-9  # padding: no relevance


def test_a_spelled_out_causal_mask_compiled_gives_the_eager_relevance():
    torch.manual_seed(0)
    model = SpelledMask().double().eval()
    x, keep, target = torch.randn(2, 5, 6, dtype=D), torch.ones(2, 5, dtype=torch.long), torch.tensor([0, 2])
    plain = lrpfx.Explainer(model, "attnlrp")((x, keep), target=target)
    compiled = lrpfx.Explainer(model, "attnlrp", compile=True)((x, keep), target=target)
    torch.testing.assert_close(compiled.relevance[0], plain.relevance[0], rtol=1e-9, atol=1e-12)


class LearnedQueries(nn.Module):
    """Queries that are parameters (a Q-Former's, a Perceiver's latents): ``QKᵀ`` is linear in the keys alone."""

    def __init__(self, dim=8, classes=3):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 4, dim))
        self.q, self.k, self.v = (nn.Linear(dim, dim) for _ in range(3))
        self.o = nn.Linear(dim, classes)

    def forward(self, x):
        q = self.q(self.query.expand(x.shape[0], -1, -1))
        return self.o(F.scaled_dot_product_attention(q, self.k(x), self.v(x)).mean(1))


def test_learned_queries_under_cp_lrp_conserve():
    torch.manual_seed(0)
    model = LearnedQueries().double().eval()
    with torch.no_grad():
        for layer in (model.k, model.v, model.o):
            layer.bias.zero_()  # the queries' bias stays: it only shapes the attention weights, held constant
    x, target = torch.randn(2, 5, 8, dtype=D), torch.tensor([0, 2])
    e = lrpfx.Explainer(model, CPLRP(epsilon=0.0))(x, target=target)
    torch.testing.assert_close(e.relevance.sum((1, 2)), model(x)[torch.arange(2), target], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("causal", [False, True])
def test_values_narrower_than_keys_are_explained_as_the_written_out_attention(causal):
    """Multi-head latent attention (DeepSeek) gives queries and keys a wider head than values."""
    class Narrow(nn.Module):
        def __init__(self, fused):
            super().__init__()
            self.fused = fused

        def forward(self, q, k, v):
            if self.fused:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            else:
                scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
                if causal:
                    t = q.shape[-2]
                    scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), torch.finfo(D).min)
                o = torch.softmax(scores, -1) @ v
            return o.sum((1, 2))

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 2, 5, 16, dtype=D), torch.randn(2, 2, 5, 16, dtype=D), torch.randn(2, 2, 5, 8, dtype=D)
    e = lrpfx.Explainer(Narrow(True), AttnLRP(epsilon=0.0))((q, k, v), target=1)
    expected = lrpfx.Explainer(Narrow(False), AttnLRP(epsilon=0.0))((q, k, v), target=1)
    for got, want in zip(e.relevance, expected.relevance):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
