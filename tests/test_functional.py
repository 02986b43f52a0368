"""Relevance as a function (docs/functional.md): the differentiable program and ``lrpfx.functional``.

Checked, float64 on tiny models: gradients of relevance w.r.t. the input and the parameters equal finite
differences (``torch.autograd.gradcheck``) for every affine rule family and the transformer rules; input
gradients equal Zennit's ``create_graph=True`` gradients (and first-layer weight gradients where Zennit's rule
does not read the weights); ``torch.func.vmap`` over samples, ``torch.func.grad`` over parameters and
``torch.func.jacrev`` run on the program of a small CNN and a tiny transformer and agree with the batched,
autograd results; the differentiable relevance equals the default program's.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import rules as L
from lrpfx.composites import single

pytestmark = pytest.mark.usefixtures("one_thread")


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(3 * 2 * 2, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()


class Attention(nn.Module):
    """An embedding, one causal attention block with LayerNorm and a gated MLP, and a head."""

    def __init__(self, d=4, heads=2):
        super().__init__()
        self.heads = heads
        self.embed, self.norm, self.head = nn.Linear(3, d), nn.LayerNorm(d), nn.Linear(d, 3)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.gate, self.up, self.down = nn.Linear(d, 6), nn.Linear(d, 6), nn.Linear(6, d)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.embed(x)
        q, k, v = (f(self.norm(h)).view(b, t, self.heads, -1).transpose(1, 2) for f in (self.q, self.k, self.v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        mask = torch.full((t, t), float("-inf"), dtype=x.dtype).triu(1)
        h = h + self.o((torch.softmax(scores + mask, -1) @ v).transpose(1, 2).reshape(b, t, -1))
        h = h + self.down(nn.functional.silu(self.gate(h)) * self.up(h))
        return self.head(h[:, -1])


def attention() -> nn.Module:
    torch.manual_seed(1)
    return Attention().double().eval()


def sample(*shape, seed=2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


AFFINE_RULES = {"epsilon": L.Epsilon(0.1), "zero": L.Epsilon(0.0), "gamma": L.Gamma(0.25), "alpha2beta1": L.AlphaBeta(2, 1),
                "zplus": L.ZPlus(), "flat": L.Flat(), "wsquare": L.WSquare(), "zbox": L.ZBox(-3.0, 3.0)}


def first_layer(rule) -> lrpfx.Composite:
    """``rule`` on the first layer, epsilon after it (how the presets use flat, w-square and z-box)."""
    return lrpfx.Composite(conv=L.Epsilon(0.1), linear=L.Epsilon(0.1), first=rule)


@pytest.mark.parametrize("name", list(AFFINE_RULES))
def test_gradients_of_affine_rules_equal_finite_differences(name):
    """d R / d x and d R / d W (first and last layer) against central differences, whole rule on every layer."""
    model, x = cnn(), sample(1, 2, 4, 4)
    composite = single(AFFINE_RULES[name]) if name not in ("flat", "wsquare", "zbox") else \
        first_layer(AFFINE_RULES[name])
    explainer = lrpfx.Explainer(model, composite, differentiable=True)
    assert explainer(x, target=2).relevance.abs().sum() > 0  # not a vacuous check of zeros
    assert torch.autograd.gradcheck(lambda x: explainer(x, target=2).relevance, (x.requires_grad_(),))
    f = lrpfx.functional(model, composite, x.detach())
    for layer in ("0.weight", "6.weight"):
        w = dict(model.named_parameters())[layer].detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda w: f({layer: w}, {}, x.detach(), 2), (w,)), layer


@pytest.mark.parametrize("preset", ["attnlrp", "cp-lrp"])
def test_gradients_of_transformer_rules_equal_finite_differences(preset):
    """AttnLRP and CP-LRP through a causal attention (masked -inf scores: no NaN), LayerNorm and a gated MLP."""
    model, x = attention(), sample(1, 4, 3)
    f = lrpfx.functional(model, preset, x)
    assert torch.autograd.gradcheck(lambda x: f({}, {}, x, 1), (x.clone().requires_grad_(),))
    for name in ("embed.weight", "q.weight", "norm.weight"):
        w = dict(model.named_parameters())[name].detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda w: f({name: w}, {}, x, 1), (w,)), name


def test_second_order_gradients_equal_finite_differences():
    """The gradient of relevance is itself differentiable (double backward through every step)."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    explainer = lrpfx.Explainer(model, lrpfx.Composite(linear=L.Epsilon(0.1), default=L.Gradient()),
                                differentiable=True)
    x = sample(2, 3).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda x: explainer(x, target=1).relevance, (x,))


@pytest.mark.parametrize("name", list(AFFINE_RULES))
def test_input_gradients_equal_zennit_create_graph(name):
    """Zennit's relevance with ``create_graph=True``, differentiated w.r.t. the input: the same gradient. Zennit
    rebuilds the modified layer from ``param.data``, so its weight gradients leave out the rule's own use of
    the weights: they agree only where the rule reads none (flat)."""
    zennit = pytest.importorskip("zennit")
    from zennit import rules as Z
    from zennit.attribution import Gradient
    from zennit.composites import SpecialFirstLayerMapComposite

    theirs = {"epsilon": Z.Epsilon(0.1), "zero": Z.Epsilon(0.0), "gamma": Z.Gamma(0.25),
              "alpha2beta1": Z.AlphaBeta(2, 1), "zplus": Z.ZPlus(), "flat": Z.Flat(), "wsquare": Z.WSquare(),
              "zbox": Z.ZBox(-3.0, 3.0)}[name]
    model, x0 = cnn(), sample(2, 2, 4, 4, seed=5)
    ours_model, zennit_model = model, copy.deepcopy(model)
    layers = (nn.Conv2d, nn.Linear)
    composite = SpecialFirstLayerMapComposite([(layers, Z.Epsilon(0.1))], [(layers, theirs)])
    x = x0.clone().requires_grad_()
    with Gradient(zennit_model, composite, create_graph=True) as attributor:
        onehot = torch.zeros(2, 3, dtype=torch.float64)
        onehot[:, 2] = 1.0
        out = zennit_model(x)
        _, reference = attributor(x, onehot * out)
    loss = lambda r: (r ** 2).sum()  # noqa: E731
    ref_x, ref_w = torch.autograd.grad(loss(reference), (x, zennit_model[0].weight))
    y = x0.clone().requires_grad_()
    ours = lrpfx.Explainer(ours_model, first_layer(AFFINE_RULES[name]), differentiable=True)(y, target=2).relevance
    got_x, got_w = torch.autograd.grad(loss(ours), (y, ours_model[0].weight))
    scale = ref_x.abs().max()
    assert scale > 0 and (got_x - ref_x).abs().max() <= 1e-10 * scale
    if name == "flat":
        assert (got_w - ref_w).abs().max() <= 1e-10 * ref_w.abs().max()


@pytest.mark.parametrize("make, shape, rule", [(cnn, (3, 2, 4, 4), "epsilon-plus-flat"),
                                               (attention, (3, 4, 3), "attnlrp")])
def test_vmap_grad_and_jacrev_run_on_the_program(make, shape, rule):
    """vmap over samples equals the batched program; grad over the parameters equals autograd's on the
    Explainer's differentiable relevance; jacrev w.r.t. one sample equals autograd's Jacobian."""
    model, x = make(), sample(*shape, seed=6)
    f = lrpfx.functional(model, rule, x)
    params = {k: v.detach() for k, v in model.named_parameters()}
    batched = lrpfx.Explainer(model, rule)(x, target=1).relevance
    per_sample = torch.func.vmap(f, in_dims=(None, None, 0, None))(params, {}, x, 1)
    assert (per_sample - batched).abs().max() <= 1e-12 * batched.abs().max()

    grads = torch.func.grad(lambda p: (f(p, {}, x, 1) ** 2).sum())(params)
    r = lrpfx.Explainer(model, rule, differentiable=True)(x, target=1).relevance
    reference = torch.autograd.grad((r ** 2).sum(), list(model.parameters()))
    for (name, g), ref in zip(grads.items(), reference):
        assert (g - ref).abs().max() <= 1e-10 * max(ref.abs().max(), 1e-300), name

    jac = torch.func.jacrev(lambda s: f(params, {}, s, 1))(x[0])
    reference = torch.autograd.functional.jacobian(lambda s: f(params, {}, s, 1), x[0])
    assert jac.shape == (*x.shape[1:], *x.shape[1:]) and torch.allclose(jac, reference, rtol=0, atol=1e-12)


def test_differentiable_relevance_equals_the_default_program():
    """Same numbers as the default (per-value) program; only the default runs without an autograd graph."""
    model, x = attention(), sample(2, 4, 3)
    default = lrpfx.Explainer(model, "attnlrp")(x, targets=[0, 2], intermediate=True)
    ours = lrpfx.Explainer(model, "attnlrp", differentiable=True)(x, targets=[0, 2], intermediate=True)
    assert default.relevance.grad_fn is None and ours.relevance.grad_fn is not None
    assert (ours.relevance - default.relevance).abs().max() <= 1e-12 * default.relevance.abs().max()
    assert ours.intermediate.keys() == default.intermediate.keys()


def test_options_reach_explain_and_export():
    model, x = cnn(), sample(2, 2, 4, 4)
    assert lrpfx.explain(model, x, "epsilon", differentiable=True).grad_fn is not None
    program = lrpfx.export(model, x, "epsilon", differentiable=True)
    assert program.differentiable and program(x, target=1)[1][0].grad_fn is not None
    assert not lrpfx.export(model, x, "epsilon").differentiable


def test_bad_arguments_name_the_fix():
    model, x = cnn(), sample(2, 2, 4, 4)
    with pytest.raises(lrpfx.InputError, match="form must be one of"):
        lrpfx.Explainer(model, "epsilon", form="fast")
    f = lrpfx.functional(model, "epsilon", x)
    with pytest.raises(lrpfx.InputError, match="named_parameters"):
        f({"conv.weight": torch.zeros(1)}, {}, x, 0)
    with pytest.raises(lrpfx.InputError, match="axes"):
        f({}, {}, x[0, 0], 0)
    with pytest.raises(lrpfx.InputError, match="example input"):
        lrpfx.functional(model, "epsilon")


def test_the_docs_page_runs():
    """docs/functional.md: its Python blocks run in order in one namespace."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "functional.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)


def test_the_form_is_an_argument_of_build_program():
    """Programs of every form from one recorded graph, side by side: no switch outside the call decides it."""
    model, x = cnn(), sample(2, 2, 4, 4)
    gm = lrpfx.graph_of(model, x)
    programs = {form: lrpfx.build_program(gm, "zero", form=form) for form in ("per-value", "relevance",
                                                                                 "differentiable")}
    assert "epsilon_per_value" in programs["per-value"].code
    assert "epsilon_per_value" not in programs["relevance"].code
    assert programs["differentiable"].code == programs["relevance"].code
    assert [p.differentiable for p in programs.values()] == [False, False, True]
    reference = programs["per-value"](x, target=1)[1][0]
    for form, program in programs.items():
        assert (program(x, target=1)[1][0] - reference).abs().max() <= 1e-12 * reference.abs().max(), form
    with pytest.raises(lrpfx.InputError, match="form must be one of"):
        lrpfx.build_program(gm, "zero", form="gradient")


class TorchAttention(nn.Module):
    """nn.MultiheadAttention: explained through the torch.export front-end."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(3, 4), nn.Linear(4, 2)
        self.attention = nn.MultiheadAttention(4, 2, batch_first=True)

    def forward(self, x):
        h = self.embed(x)
        a, _ = self.attention(h, h, h, need_weights=False)
        return self.head((h + a).mean(1))


def test_functional_on_a_program_of_the_export_front_end():
    """The exported graph holds the model's parameters by reference too: every one is reached, gradients of the
    attention's packed projection equal finite differences."""
    torch.manual_seed(9)
    model, x = TorchAttention().double().eval(), sample(2, 4, 3)
    f = lrpfx.functional(model, "attnlrp", x)
    assert set(f.aliases) == set(dict(model.named_parameters()))
    w = model.attention.in_proj_weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda w: f({"attention.in_proj_weight": w}, {}, x, 1), (w,))


def test_compiled_differentiable_program_gives_the_eager_gradients():
    """compile=True runs the compiled program on the first call: its relevance and the gradients of a loss on it
    (input and weights, create_graph) equal the eager program's."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    results = []
    for compile in (False, True):
        explainer = lrpfx.Explainer(model, "epsilon", differentiable=True, compile=compile)
        r = explainer(x, target=1).relevance
        results.append((r, *torch.autograd.grad(r.pow(2).sum(), (x, model[0].weight))))
        if compile:
            run = next(iter(explainer._cache.values())).run
            assert run.choice is None and run._first_shapes is not None  # the first call: the compiled program
    for eager, compiled in zip(*results):
        torch.testing.assert_close(compiled, eager, rtol=1e-10, atol=1e-12)
