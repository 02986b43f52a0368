"""Ops of the long tail, each in a tiny float64 model, on both front-ends.

The reference is independent of lrpfx: LRP-0 (``"zero"``: epsilon 0 on every affine map, sum and pool, Pass on
activations) equals gradient×input of a network built from affine maps, sums, ReLU and ops that copy or select
values. Where a rule holds a value constant (a router's weights, a norm) or passes relevance through a
non-linear activation, the reference is gradient×input of the same model with that value detached, or with the
activation ``f`` written as ``x · (f(x)/x)`` with the ratio detached (the Pass rule's gradient).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.composites import AttnLRP, CPLRP
from lrpfx.errors import UnsupportedOpError

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


def grad_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return (g * x).detach()


def passed(f, h: torch.Tensor, reference: bool) -> torch.Tensor:
    """``f(h)``; for the reference, ``h · (f(h)/h)`` with the ratio held constant: the gradient of the Pass rule."""
    return h * (f(h) / h).detach() if reference else f(h)


def explain(model, x, rule="zero", frontend="fx", **options):
    target = torch.tensor([0, 1])
    return lrpfx.Explainer(model, rule, frontend=frontend, **options)(x, target=target), target


def assert_lrp0_is_gradient_times_input(model, reference, x, frontend, rtol=1e-10):
    explanation, target = explain(model, x, frontend=frontend)
    expected = grad_times_input(reference, x, target)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(explanation.relevance, expected, rtol=rtol, atol=rtol * expected.abs().max())
    return explanation


def build(cls, *args, **kwargs):
    torch.manual_seed(0)
    return cls(*args, **kwargs).double().eval()


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ---- casts, shape-like ops, in-place arithmetic ----------------------------------------------------------------
class Casts(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        h = h.type_as(x) + x.to(h) + h.double()  # the second argument (an activation) gives only a dtype
        g = h * 1.0
        g.add_(x)  # in-place arithmetic on a tensor that is not a view
        g.mul_(0.5)
        g = g.reshape(x.shape[0], 2, 3).reshape_as(h) + h.view(-1).view_as(g) + x[:, :1].expand_as(h)
        return self.b(torch.relu(g))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_casts_shape_likes_and_inplace_arithmetic(frontend):
    model = build(Casts)
    assert_lrp0_is_gradient_times_input(model, model, randn(2, 6), frontend)


# ---- max / min / top-k over an axis: winner takes all -------------------------------------------------------
class Selections(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):  # x: [B, T, 5]
        h = torch.relu(self.a(x))
        pooled = (h.max(dim=1).values + torch.max(h, 1)[0] + h.amax(1) + torch.amin(h, dim=1)
                  + h.min(1).values + h.topk(2, dim=1).values.sum(1))
        return self.b(pooled) + h.max()  # the maximum of everything too


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_max_min_topk_over_an_axis_take_the_winners(frontend):
    model = build(Selections)
    explanation = assert_lrp0_is_gradient_times_input(model, model, randn(2, 4, 5), frontend)
    table = lrpfx.export(model, randn(2, 4, 5), "zero", frontend=frontend).rule_table()
    assert sum(r.kind == "max_pool" and r.rule == "WinnerTakesAll()" for r in table) == 7
    assert explanation.relevance.shape == (2, 4, 5)


# ---- clamp / clip: an activation --------------------------------------------------------------------------------
class Clamps(nn.Module):
    def __init__(self, reference=False):
        super().__init__()
        self.a, self.b, self.reference = nn.Linear(6, 6), nn.Linear(18, 3), reference

    def forward(self, x):
        h = self.a(x)
        relu = h.clamp(min=0)  # a ReLU
        parts = [relu, passed(lambda t: t.clip(-0.3, 0.3), h, self.reference),
                 passed(lambda t: torch.clamp_max(t, 0.2), h, self.reference)]
        return self.b(torch.cat(parts, 1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_clamp_and_clip_pass_relevance_and_clamp_min_0_is_a_relu(frontend):
    model, reference = build(Clamps), build(Clamps, reference=True)
    x = randn(2, 6)
    assert_lrp0_is_gradient_times_input(model, reference, x, frontend)
    gm = lrpfx.export(model, x, "zero", frontend=frontend)
    clamps = [r for r in gm.rule_table() if r.kind == "activation"]
    assert len(clamps) == 3 and all(r.rule == "Pass()" for r in clamps)


def test_clamp_with_a_non_negative_lower_bound_is_non_negative():
    from lrpfx import graph as ops
    from lrpfx.frontend.common import record_values
    from lrpfx.frontend.fx import trace

    class M(nn.Module):
        def forward(self, x):
            return x.clamp(min=0.5) + x.clamp(-1, 1) + torch.clamp(x, min=0) + x.clip(0.0, 2.0)

    gm = trace(M(), 1)
    record_values(gm, (randn(2, 3),))
    nonneg = {n.name: i.nonneg for n, i in ops.classify(gm).items() if i.kind == "activation"}
    relu = {n.name: i.facts.relu for n, i in ops.classify(gm).items() if i.kind == "activation"}
    assert nonneg == {"clamp": True, "clamp_1": False, "clamp_2": True, "clip": True}
    assert relu == {"clamp": False, "clamp_1": False, "clamp_2": True, "clip": False}


# ---- spelled-out activations: one activation, not its pieces -----------------------------------------------------
def gelu_new(h):
    return 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * torch.pow(h, 3.0))))


def quick_gelu(h):
    return h * torch.sigmoid(1.702 * h)


class NewGELUActivation(nn.Module):  # as in transformers: an activation module that spells its formula out
    def forward(self, h):
        return gelu_new(h)


class SharedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense, self.act = nn.Linear(6, 6), NewGELUActivation()

    def forward(self, h):
        return self.act(self.dense(h))


class Spelled(nn.Module):
    """gelu_new inline and as a module called twice (ALBERT shares one layer), quick_gelu, a cube."""

    def __init__(self, reference=False, builtin=False):
        super().__init__()
        self.a, self.shared, self.b = nn.Linear(6, 6), SharedLayer(), nn.Linear(6, 3)
        self.reference, self.builtin = reference, builtin

    def act(self, f, h):
        if self.builtin and f is gelu_new:
            f = lambda t: F.gelu(t, approximate="tanh")  # noqa: E731 -- the same function, built in
        return passed(f, h, self.reference)

    def forward(self, x):
        h = self.act(gelu_new, self.a(x))
        if self.reference or self.builtin:  # the shared layer with its activation written the same way
            h = self.act(gelu_new, self.shared.dense(self.act(gelu_new, self.shared.dense(h))))
        else:
            h = self.shared(self.shared(h))
        h = self.act(quick_gelu, h) + self.act(lambda t: t.pow(3), h)
        return self.b(h)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_spelled_out_activations_are_one_activation(frontend):
    model, reference = build(Spelled), build(Spelled, reference=True)
    x = randn(2, 6)
    explanation = assert_lrp0_is_gradient_times_input(model, reference, x, frontend)
    table = lrpfx.export(model, x, "zero", frontend=frontend).rule_table()
    assert not [r for r in table if r.kind == "unknown" or r.op.endswith(("pow", "tanh", "sigmoid"))
                and r.kind != "activation"]
    activations = [r for r in table if r.kind == "activation"]  # fx may merge gelu_new(z) with what follows:
    assert len(activations) >= 3 and all(r.rule == "Pass()" for r in activations)  # one function of z, one Pass
    # the same relevance as with torch's own tanh-GELU, under a rule with more than Pass and epsilon in it
    builtin = build(Spelled, builtin=True)
    for rule in ("epsilon-gamma-box", AttnLRP()):
        spelled = explain(model, x, rule, frontend)[0].relevance
        torch.testing.assert_close(spelled, explain(builtin, x, rule, frontend)[0].relevance, rtol=1e-9, atol=1e-12)
    assert explanation.relevance.abs().sum() > 0


# ---- a norm written as pow(., 0.5): a statistic held constant ------------------------------------------------
class PowNorm(nn.Module):
    def __init__(self, reference=False):
        super().__init__()
        self.a, self.b, self.reference = nn.Linear(6, 6), nn.Linear(6, 3), reference

    def forward(self, x):
        h = torch.relu(self.a(x))
        norm = torch.pow(torch.sum(torch.pow(h, 2), dim=-1, keepdim=True), 0.5)  # CLIP's _get_vector_norm
        return self.b(h / (norm.detach() if self.reference else norm))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_norm_written_with_pow_is_a_statistic(frontend):
    assert_lrp0_is_gradient_times_input(build(PowNorm), build(PowNorm, reference=True), randn(2, 6), frontend)


# ---- baddbmm: Bloom's attention scores with the ALiBi bias ----------------------------------------------------
class Alibi(nn.Module):
    def __init__(self, fused=True):
        super().__init__()
        self.qkv, self.out, self.fused = nn.Linear(6, 18), nn.Linear(6, 3), fused

    def forward(self, x):  # x: [B, T, 6]
        q, k, v = self.qkv(x).chunk(3, -1)
        positions = torch.arange(x.shape[1], dtype=x.dtype)
        bias = (-0.5 * positions).view(1, 1, -1).expand(x.shape[0], x.shape[1], -1)
        if self.fused:
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.5, alpha=1 / math.sqrt(6))
        else:
            scores = (1 / math.sqrt(6)) * (q @ k.transpose(1, 2)) + 0.5 * bias
        return self.out((scores.softmax(-1) @ v).mean(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_baddbmm_is_explained_as_its_product_scale_and_sum(frontend):
    fused, plain = build(Alibi), build(Alibi, fused=False)
    x = randn(2, 4, 6)
    for rule in (AttnLRP(), CPLRP(epsilon=0, zero_bias=True), "zero"):
        torch.testing.assert_close(explain(fused, x, rule, frontend)[0].relevance,
                                   explain(plain, x, rule, frontend)[0].relevance, rtol=1e-10, atol=1e-13)
    conserving, target = explain(fused, x, CPLRP(epsilon=0, zero_bias=True), frontend)
    logit = conserving.output.gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(conserving.relevance.flatten(1).sum(1), logit, rtol=1e-10, atol=1e-13)


# ---- BatchNorm on the export front-end, folded and unfolded ----------------------------------------------------
class Norms(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)  # folded into the conv
        self.pre, self.conv2 = nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3)  # pre-activation: BN -> ReLU -> conv
        self.bn1d, self.fc = nn.BatchNorm1d(4), nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = self.conv2(torch.relu(self.pre(h)))
        return self.fc(torch.relu(self.bn1d(h.mean((2, 3)))))


def random_statistics(model):
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(c, generator=gen))
                m.weight.copy_(0.5 + torch.rand(c, generator=gen))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))
    return model


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_batch_norm_folds_or_is_an_affine_step(frontend):
    model = random_statistics(build(Norms))
    x = randn(2, 3, 6, 6)
    assert_lrp0_is_gradient_times_input(model, model, x, frontend)
    table = lrpfx.export(model, x, "zero", frontend=frontend).rule_table()
    norms = {r.module: r.rule for r in table if r.kind == "batchnorm"}
    assert norms["bn"].startswith("folded into")
    assert norms["pre"] == norms["bn1d"] == "Epsilon(eps=0.0, zero_bias=False)"


# ---- mixture of experts: router weights constant, relevance through the experts that ran ------------------------
class MoE(nn.Module):
    """A token-level MoE of ReLU experts with a softmax router and top-2 routing. ``sparse``: the experts run
    only on their tokens and their outputs are scattered back with ``index_add_`` (data-dependent: fx only);
    otherwise every expert runs densely and the scattered top-k weights zero the others out."""

    def __init__(self, sparse=False, detach=False, experts=4):
        super().__init__()
        self.router = nn.Linear(6, experts)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
                                     for _ in range(experts))
        self.head, self.sparse, self.detach = nn.Linear(6, 3), sparse, detach

    def forward(self, x):  # x: [B, T, 6]
        tokens = x.reshape(-1, 6)
        probabilities = self.router(tokens).softmax(-1)
        weights, chosen = torch.topk(probabilities, 2, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        if self.detach:
            weights = weights.detach()
        if self.sparse:
            out = torch.zeros_like(tokens)
            for e, expert in enumerate(self.experts):
                token, slot = torch.where(chosen == e)
                out.index_add_(0, token, expert(tokens[token]) * weights[token, slot, None])
        else:
            gates = torch.zeros_like(probabilities).scatter(1, chosen, weights)
            out = sum(gates[:, e:e + 1] * expert(tokens) for e, expert in enumerate(self.experts))
        return self.head(torch.relu(out + tokens).reshape(x.shape).mean(1))


@pytest.mark.parametrize("frontend, sparse", [("fx", False), ("export", False), ("fx", True)])
def test_moe_router_weights_are_constant(frontend, sparse):
    model, reference = build(MoE, sparse=sparse), build(MoE, sparse=sparse, detach=True)
    x = randn(2, 5, 6)
    explanation = assert_lrp0_is_gradient_times_input(model, reference, x, frontend)
    rows = lrpfx.export(model, x, "zero", frontend=frontend).rule_table()
    assert not any("router" in r.module for r in rows)  # the router gets no relevance step at all
    assert torch.isfinite(explanation.relevance).all()


def test_moe_unchosen_expert_gets_no_relevance():
    """An expert no token chose contributes nothing: changing its weights leaves the relevance unchanged."""
    model = build(MoE, sparse=True, experts=6)
    x = randn(1, 2, 6)
    _, chosen = torch.topk(model.router(x.reshape(-1, 6)).softmax(-1), 2, dim=-1)
    idle = next(e for e in range(6) if not (chosen == e).any())
    before = explain(model, x.expand(2, -1, -1).contiguous())[0].relevance
    with torch.no_grad():
        model.experts[idle][0].weight.mul_(3.0)
    after = explain(model, x.expand(2, -1, -1).contiguous())[0].relevance
    torch.testing.assert_close(after, before, rtol=0, atol=0)


# ---- never a silent answer ----------------------------------------------------------------------------------------
class ViewInPlace(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        h[:, :2].mul_(2.0)  # changes h through a view, and h is read afterwards
        return self.b(h)


class ViewOutOfPlace(ViewInPlace):
    def forward(self, x):
        h = self.a(x)
        return self.b(torch.cat([h[:, :2] * 2.0, h[:, 2:]], 1))


def test_inplace_on_a_view_of_an_activation_is_refused_by_name():
    with pytest.raises(UnsupportedOpError, match="mul"):
        explain(build(ViewInPlace), randn(2, 4), frontend="fx")


def test_inplace_on_a_view_of_an_activation_is_written_out_of_place_on_export():
    """The export front-end spells the write as a scatter into ``h``: the same relevance as the model written
    out of place."""
    got = explain(build(ViewInPlace), randn(2, 4), frontend="export")[0].relevance
    expected = explain(build(ViewOutOfPlace), randn(2, 4), frontend="fx")[0].relevance
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_decomposed_batch_norm_becomes_a_batch_norm_call():
    """``run_decompositions`` spells an eval BatchNorm ``_native_batch_norm_legit_no_training(...)[0]``; the
    normalisation turns it back into ``aten.batch_norm``, which classifies as a BatchNorm."""
    from lrpfx import graph as ops
    from lrpfx.frontend.normalise import batch_norm_calls
    from lrpfx.frontend.common import record_values

    model = random_statistics(build(lambda: nn.Sequential(nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))))
    x = randn(3, 4)
    gm = torch.export.export(model, (x,), strict=False).run_decompositions().module()
    assert batch_norm_calls(gm)
    gm.recompile()
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.aten.batch_norm.default in targets
    assert torch.ops.aten._native_batch_norm_legit_no_training.default not in targets
    torch.testing.assert_close(gm(x), model(x))
    gm.graph._codegen = torch.fx.graph.CodeGen()  # positional inputs, as lrpfx.frontend.export runs it
    gm.recompile()
    record_values(gm, (x,))
    assert [i.kind for i in ops.classify(gm).values()].count("batchnorm") == 1
