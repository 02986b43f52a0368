"""LSTM, GRU and Elman RNN layers under Arras et al.'s rules (docs/recurrent.md), checked against an independent
float64 NumPy implementation (tests/helpers/recurrent_reference.py), for conservation, on both front-ends, and for the
errors a user can cause."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import Composite
from lrpfx.rules import Epsilon, Pass, RecurrentLRP
from lrpfx.rules.recurrent import RecurrentSpec, recurrent
from tests.helpers.recurrent_reference import layer_relevance

pytestmark = [pytest.mark.usefixtures("one_thread"),
              # torch.export's own note on nn.RNNBase's cached weight list, not about lrpfx
              pytest.mark.filterwarnings("ignore:The tensor attributes .*_flat_weights")]
D64 = torch.float64
MODULES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN_TANH": nn.RNN, "RNN_RELU": nn.RNN}


def make_layer(mode, hidden=3, num_layers=1, bidirectional=False, batch_first=True, bias=True, proj_size=0,
               input_size=4):
    kwargs = dict(num_layers=num_layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    if mode.startswith("RNN"):
        kwargs["nonlinearity"] = "relu" if mode == "RNN_RELU" else "tanh"
    if proj_size:
        kwargs["proj_size"] = proj_size
    layer = MODULES[mode](input_size, hidden, **kwargs).to(D64)
    with torch.no_grad():  # larger weights than the default init: gates away from 1/2, relevance not uniform
        for p in layer.parameters():
            p.mul_(2.5)
    return layer.eval()


def numpy_params(layer):
    """Per (layer, direction): the parameters as NumPy arrays (zero biases where the layer has none)."""
    groups = []
    for k in range(layer.num_layers):
        for d in range(2 if layer.bidirectional else 1):
            suffix = f"_l{k}" + ("_reverse" if d else "")

            def get(name):
                p = getattr(layer, name + suffix, None)
                return None if p is None else p.detach().numpy().astype(np.float64)

            w_ih = get("weight_ih")
            zeros = np.zeros(w_ih.shape[0])
            groups.append(dict(w_ih=w_ih, w_hh=get("weight_hh"), b_ih=get("bias_ih") if layer.bias else zeros,
                               b_hh=get("bias_hh") if layer.bias else zeros, w_hr=get("weight_hr")))
    return groups


class Exposed(nn.Module):
    """The layer's whole result as one ``[B, N]`` output (out, h_n and c_n, batch first), so that an initial
    relevance shaped like it reaches every part."""

    def __init__(self, layer):
        super().__init__()
        self.rnn, self.lstm = layer, isinstance(layer, nn.LSTM)

    def forward(self, x):
        out, state = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1))
        return self.expose(out, state)

    def expose(self, out, state):
        out = out if self.rnn.batch_first else out.transpose(0, 1)
        states = (state[0], state[1]) if self.lstm else (state,)
        return torch.cat([out.flatten(1)] + [s.transpose(0, 1).flatten(1) for s in states], 1)


class ExposedWithState(Exposed):
    """:class:`Exposed` of an LSTM with the initial state as inputs (batch first, ``[B, L·D, ·]``)."""

    def forward(self, x, h0, c0):
        seq = x if self.rnn.batch_first else x.transpose(0, 1)
        out, state = self.rnn(seq, (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()))
        return self.expose(out, state)


class ExposedWithHidden(Exposed):
    """:class:`Exposed` of a GRU/RNN with the initial state as an input."""

    def forward(self, x, h0):
        out, state = self.rnn(x if self.rnn.batch_first else x.transpose(0, 1), h0.transpose(0, 1).contiguous())
        return self.expose(out, state)


def split_relevance(r0, layer, T):
    """The initial relevance ``[B, N]`` of :class:`Exposed` as (R_out [B, T, D·P], R_hn, R_cn [L·D, B, ·])."""
    B = r0.shape[0]
    LD = layer.num_layers * (2 if layer.bidirectional else 1)
    P = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
    DP = P * (2 if layer.bidirectional else 1)
    r_out = r0[:, :T * DP].reshape(B, T, DP)
    r_hn = r0[:, T * DP:T * DP + LD * P].reshape(B, LD, P).transpose(1, 0, 2)
    r_cn = r0[:, T * DP + LD * P:].reshape(B, LD, layer.hidden_size).transpose(1, 0, 2) \
        if isinstance(layer, nn.LSTM) else None
    return r_out, r_hn, r_cn


def reference(layer, x, r0, eps, zero_bias, h0=None, c0=None):
    """``out, h_n, c_n, R_x, R_h0, R_c0`` of the NumPy reference (states ``[L·D, B, ·]``)."""
    xn = x.numpy()
    B, T, _ = xn.shape
    LD = layer.num_layers * (2 if layer.bidirectional else 1)
    P = layer.proj_size if getattr(layer, "proj_size", 0) else layer.hidden_size
    h0 = np.zeros((LD, B, P)) if h0 is None else h0
    if isinstance(layer, nn.LSTM) and c0 is None:
        c0 = np.zeros((LD, B, layer.hidden_size))
    r_out, r_hn, r_cn = split_relevance(r0, layer, T)
    return layer_relevance(layer.mode, numpy_params(layer), xn, h0, c0, r_out, r_hn, r_cn,
                           num_layers=layer.num_layers, bidirectional=layer.bidirectional, eps=eps,
                           zero_bias=zero_bias)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max() / np.abs(b).max())


CONFIGS = {  # mode, layer options
    "lstm-1": ("LSTM", dict(hidden=3)),
    "lstm-2-bi-time-major": ("LSTM", dict(hidden=4, num_layers=2, bidirectional=True, batch_first=False)),
    "lstm-proj-2-bi": ("LSTM", dict(hidden=4, num_layers=2, bidirectional=True, proj_size=2)),
    "lstm-no-bias": ("LSTM", dict(hidden=3, bias=False, batch_first=False)),
    "gru-1": ("GRU", dict(hidden=3)),
    "gru-2-bi-time-major": ("GRU", dict(hidden=4, num_layers=2, bidirectional=True, batch_first=False)),
    "gru-no-bias-2": ("GRU", dict(hidden=3, num_layers=2, bias=False)),
    "rnn-tanh-2-bi": ("RNN_TANH", dict(hidden=3, num_layers=2, bidirectional=True)),
    "rnn-relu": ("RNN_RELU", dict(hidden=4, batch_first=False)),
}


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("eps, zero_bias", [(1e-2, False), (0.0, True)])
def test_matches_the_numpy_reference(name, eps, zero_bias):
    mode, options = CONFIGS[name]
    layer = make_layer(mode, **options)
    x = torch.randn(2, 5, 4, dtype=D64)
    model = Exposed(layer)
    with torch.no_grad():
        y = model(x)
    r0 = torch.randn_like(y)
    rule = Composite(by_type={"recurrent": RecurrentLRP(eps, zero_bias)})
    got = lrpfx.Explainer(model, rule, frontend="fx")(x, target=r0).relevance
    out, h_n, _, r_x, _, _ = reference(layer, x, r0.numpy(), eps, zero_bias)
    # the reference's forward is the layer's forward (else the comparison below would mean nothing)
    with torch.no_grad():
        torch_out, torch_state = layer(x if layer.batch_first else x.transpose(0, 1))
    torch_out = torch_out if layer.batch_first else torch_out.transpose(0, 1)
    assert rel_err(out, torch_out.numpy()) < 1e-12
    h_torch = torch_state[0] if isinstance(layer, nn.LSTM) else torch_state
    assert rel_err(h_n, h_torch.numpy()) < 1e-12
    assert rel_err(got.numpy(), r_x) < 1e-9


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_initial_state_inputs_get_the_reference_relevance(mode):
    layer = make_layer(mode, hidden=3, num_layers=2, bidirectional=True)
    model = (ExposedWithState if mode == "LSTM" else ExposedWithHidden)(layer)
    x = torch.randn(2, 5, 4, dtype=D64)
    h0 = torch.randn(2, 4, 3, dtype=D64)  # [B, L·D, H], batch first
    c0 = torch.randn(2, 4, 3, dtype=D64)
    inputs = (x, h0, c0) if mode == "LSTM" else (x, h0)
    with torch.no_grad():
        y = model(*inputs)
    r0 = torch.randn_like(y)
    rule = Composite(by_type={"recurrent": RecurrentLRP(1e-3)})
    got = lrpfx.Explainer(model, rule)(inputs, target=r0).relevance
    *_, r_x, r_h0, r_c0 = reference(layer, x, r0.numpy(), 1e-3, False, h0.transpose(0, 1).numpy(),
                                    c0.transpose(0, 1).numpy() if mode == "LSTM" else None)
    assert rel_err(got[0].numpy(), r_x) < 1e-9
    assert rel_err(got[1].numpy(), r_h0.transpose(1, 0, 2)) < 1e-9
    if mode == "LSTM":
        assert rel_err(got[2].numpy(), r_c0.transpose(1, 0, 2)) < 1e-9


# ---- conservation ---------------------------------------------------------------------------------------------
class LastStep(nn.Module):
    """The model of the issue: ``out, (h, c) = self.lstm(x); return self.fc(out[:, -1])``."""

    def __init__(self, layer, classes=3):
        super().__init__()
        width = layer.hidden_size * (2 if layer.bidirectional else 1)
        self.lstm, self.fc = layer, nn.Linear(width, classes).to(D64)

    def forward(self, x):
        out, (h, c) = self.lstm(x)
        return self.fc(out[:, -1])


class LastStepGRU(LastStep):
    """Both results of the layer reach the output: the last step and the last layer's final state."""

    def __init__(self, layer, classes=3):
        super().__init__(layer, classes)
        self.fc = nn.Linear(self.fc.in_features + layer.hidden_size, classes).to(D64)

    def forward(self, x):
        out, h = self.lstm(x)
        return self.fc(torch.cat([out[:, -1], h[-1]], 1))


@pytest.mark.parametrize("mode", ["LSTM", "GRU", "RNN_TANH"])
@pytest.mark.parametrize("how", ["zero-bias model", "zero_bias rule"])
def test_conservation_with_epsilon_zero(mode, how):
    """With ε = 0 and no bias in any denominator, every step of the rules is conservative: the epsilon steps of
    the linear maps (no bias share), the proportional splits of ``c = f⊙c' + i⊙g`` and ``h = (1-z)⊙n + z⊙h'``
    and of ``u + r⊙s`` (all their terms are activations), signal-take-all (the product's whole relevance goes to
    the signal; the gates keep nothing), and the identity through tanh. With zero initial states nothing is
    left at the state, so the input relevance sums to the logit (a zero initial state is also a zero term of
    every split, so it takes nothing)."""
    layer = make_layer(mode, hidden=4, num_layers=2, bidirectional=True)
    model = (LastStep if mode == "LSTM" else LastStepGRU)(layer)
    if how == "zero-bias model":
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "bias" in name:
                    p.zero_()
        rule = "zero"  # LRP-0 everywhere: Epsilon(0) on fc, RecurrentLRP(0) on the layer
    else:
        rule = Composite(linear=Epsilon(0.0, zero_bias=True), by_type={"recurrent": RecurrentLRP(0.0, True)})
    x = torch.randn(2, 5, 4, dtype=D64)
    e = lrpfx.Explainer(model, rule)(x)
    logit = e.output.max(1).values
    # exact up to round-off, which grows with the terms summed: unbiased denominators can be small (the
    # zero_bias rule on a biased model gives relevances up to 1e6 for an Elman RNN), so the sum cancels a lot
    roundoff = 1e-14 * e.relevance.abs().flatten(1).sum(1)
    assert ((e.relevance.sum((1, 2)) - logit).abs() <= 1e-12 * logit.abs() + roundoff).all()


def test_conservation_counts_the_initial_state():
    """A non-zero initial state given as an input takes its share: Σ R_x + Σ R_h0 + Σ R_c0 = logit."""
    layer = make_layer("LSTM", hidden=3)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if "bias" in name:
                p.zero_()

    class WithState(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = layer, nn.Linear(3, 2, bias=False).to(D64)

        def forward(self, x, h0, c0):
            out, _ = self.lstm(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
            return self.fc(out[:, -1])

    inputs = (torch.randn(2, 5, 4, dtype=D64), torch.randn(2, 3, dtype=D64), torch.randn(2, 3, dtype=D64))
    e = lrpfx.Explainer(WithState(), "zero")(inputs)
    total = sum(r.flatten(1).sum(1) for r in e.relevance)
    assert torch.allclose(total, e.output.max(1).values, rtol=1e-10, atol=1e-12)
    assert e.relevance[1].abs().sum() > 0 and e.relevance[2].abs().sum() > 0


# ---- the model of the issue, both front-ends, several targets, other rules ---------------------------------------
def test_the_issue_model_explains_on_both_front_ends():
    model = LastStep(make_layer("LSTM", hidden=5))
    x = torch.randn(2, 6, 4, dtype=D64)
    results = {fe: lrpfx.Explainer(model, "epsilon", frontend=fe)(x).relevance for fe in ("fx", "export", "auto")}
    assert results["fx"].abs().sum() > 0 and torch.isfinite(results["fx"]).all()
    assert torch.allclose(results["fx"], results["export"], rtol=1e-12, atol=1e-14)
    assert torch.allclose(results["fx"], results["auto"], rtol=1e-12, atol=1e-14)
    table = lrpfx.export(model, x, rule="epsilon").rule_table()
    row = next(r for r in table if r.node == "lstm")
    assert row.kind == "recurrent" and row.rule.startswith("RecurrentLRP")


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_export_front_end_matches_fx_with_initial_state_and_stacking(mode):
    layer = make_layer(mode, hidden=3, num_layers=2, bidirectional=True)
    model = (ExposedWithState if mode == "LSTM" else ExposedWithHidden)(layer)
    inputs = (torch.randn(2, 5, 4, dtype=D64), torch.randn(2, 4, 3, dtype=D64), torch.randn(2, 4, 3, dtype=D64))
    inputs = inputs if mode == "LSTM" else inputs[:2]
    with torch.no_grad():
        r0 = torch.randn_like(model(*inputs))
    fx_r = lrpfx.Explainer(model, "epsilon", frontend="fx")(inputs, target=r0).relevance
    ex_r = lrpfx.Explainer(model, "epsilon", frontend="export")(inputs, target=r0).relevance
    for a, b in zip(fx_r, ex_r):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_several_targets_in_one_pass_equal_one_by_one():
    model = LastStep(make_layer("LSTM", hidden=4, num_layers=2, bidirectional=True))
    x = torch.randn(2, 5, 4, dtype=D64)
    ex = lrpfx.Explainer(model, "epsilon")
    many = ex(x, targets=[0, 2], intermediate=True)
    for k, t in enumerate([0, 2]):
        one = ex(x, target=t, intermediate=True)
        assert torch.allclose(many.relevance[:, k], one.relevance, rtol=1e-12, atol=1e-14)
        # the layer's own relevance keeps the structure of its result, (R_out, (R_h, R_c))
        r_out, (r_h, r_c) = one.intermediate["lstm"]
        assert r_out.shape == (2, 5, 8) and r_h.shape == r_c.shape == (4, 2, 4)
        assert torch.allclose(many.intermediate["lstm"][0][:, k], r_out, rtol=1e-12, atol=1e-14)


def test_gradient_times_input_through_the_layer_is_autograd():
    model = LastStep(make_layer("LSTM", hidden=4))
    x = torch.randn(2, 5, 4, dtype=D64)
    got = lrpfx.explain(model, x, rule="gradient*input", target=1)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg)[:, 1].sum(), xg)
    assert torch.allclose(got, g * x, rtol=1e-10, atol=1e-12)


def test_states_passed_from_one_layer_to_the_next():
    """``out1, state = lstm1(x); lstm2(out1, state)``: the state travels as one (h, c) value; its relevance goes
    back into lstm1's ``(h_n, c_n)``, as the reference chained by hand says."""
    lstm1, lstm2 = make_layer("LSTM", hidden=3), make_layer("LSTM", hidden=3, input_size=3)

    class Chained(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm1, self.lstm2 = lstm1, lstm2

        def forward(self, x):
            out1, state = self.lstm1(x)
            out2, _ = self.lstm2(out1, state)
            return out2.flatten(1)

    x = torch.randn(2, 5, 4, dtype=D64)
    with torch.no_grad():
        out1, (h1, c1) = lstm1(x)
        r0 = torch.randn_like(Chained()(x))
    got = lrpfx.Explainer(Chained(), Composite(by_type={"recurrent": RecurrentLRP(1e-3)}))(x, target=r0).relevance
    h1, c1 = h1.numpy(), c1.numpy()
    zeros = np.zeros((1, 2, 3))
    *_, r_out1, r_h, r_c = layer_relevance("LSTM", numpy_params(lstm2), out1.detach().numpy(), h1, c1,
                                           r0.numpy().reshape(2, 5, 3), zeros, zeros, num_layers=1,
                                           bidirectional=False, eps=1e-3, zero_bias=False)
    *_, r_x, _, _ = layer_relevance("LSTM", numpy_params(lstm1), x.numpy(), zeros, zeros, r_out1, r_h, r_c,
                                    num_layers=1, bidirectional=False, eps=1e-3, zero_bias=False)
    assert rel_err(got.numpy(), r_x) < 1e-9


def test_unbatched_call_equals_a_batch_of_one():
    layer = make_layer("LSTM", hidden=3, num_layers=2, bidirectional=True)
    weights = [getattr(layer, n) for n in layer._flat_weights_names]
    spec = RecurrentSpec("LSTM", 2, True, True, True)
    x = torch.randn(5, 4, dtype=D64)
    r = (torch.randn(5, 6, dtype=D64), (torch.randn(4, 3, dtype=D64), torch.randn(4, 3, dtype=D64)))
    hx = (torch.randn(4, 3, dtype=D64), torch.randn(4, 3, dtype=D64))
    with torch.no_grad():
        r_x, r_hx = recurrent(x, hx, weights, r, spec=spec, eps=1e-3)
        r_x1, r_hx1 = recurrent(x[None], tuple(h[:, None] for h in hx), weights,
                                (r[0][None], tuple(t[:, None] for t in r[1])), spec=spec, eps=1e-3)
    assert torch.allclose(r_x, r_x1[0]) and all(torch.allclose(a, b[:, 0]) for a, b in zip(r_hx, r_hx1))


def test_an_unbatched_call_inside_a_model_equals_the_batched_one():
    layer = make_layer("GRU", hidden=3, num_layers=2, bidirectional=True)

    class Unbatched(nn.Module):
        def __init__(self):
            super().__init__()
            self.gru, self.fc = layer, nn.Linear(6, 2).to(D64)

        def forward(self, x):
            out, _ = self.gru(x[0])  # [T, F]: no batch axis
            return self.fc(out[-1:])

    class Batched(Unbatched):
        def forward(self, x):
            out, _ = self.gru(x)
            return self.fc(out[:, -1])

    unbatched, batched = Unbatched(), Batched()
    batched.fc = unbatched.fc
    x = torch.randn(1, 5, 4, dtype=D64)
    r = lrpfx.explain(unbatched, x, rule="epsilon")
    assert r.abs().sum() > 0 and torch.allclose(r, lrpfx.explain(batched, x, rule="epsilon"), rtol=1e-12, atol=0)


@pytest.mark.slow
def test_compiled_program_equals_eager():
    """The recurrent step runs eagerly inside a compiled program (its time loop is not unrolled by dynamo)."""
    model = LastStep(make_layer("LSTM", hidden=4, num_layers=2, bidirectional=True))
    x = torch.randn(2, 5, 4, dtype=D64)
    compiled = lrpfx.Explainer(model, "epsilon", compile=True)(x).relevance
    assert torch.allclose(compiled, lrpfx.Explainer(model, "epsilon")(x).relevance, rtol=1e-12, atol=1e-15)


# ---- bad inputs ---------------------------------------------------------------------------------------------------
class Packer(nn.Module):
    def forward(self, x):
        return nn.utils.rnn.pack_padded_sequence(x, torch.full((x.shape[0],), x.shape[1]), batch_first=True)


class PackedModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.pack, self.lstm, self.fc = Packer(), make_layer("LSTM", hidden=3), nn.Linear(3, 2).to(D64)

    def forward(self, x):
        _, (h, _) = self.lstm(self.pack(x))
        return self.fc(h[-1])


def test_a_packed_sequence_is_a_clear_error():
    with pytest.raises(lrpfx.UnsupportedOpError, match="PackedSequence.*padded") as err:
        lrpfx.explain(PackedModel(), torch.randn(2, 5, 4, dtype=D64), leaf_modules=[Packer], frontend="fx")
    assert "'pack'" in str(err.value)


@pytest.mark.parametrize("rule", [Pass(), Epsilon()])
def test_a_rule_of_another_kind_on_the_layer_is_refused(rule):
    model = LastStep(make_layer("LSTM", hidden=3))
    with pytest.raises(lrpfx.errors.RuleError, match="lstm"):
        lrpfx.explain(model, torch.randn(2, 5, 4, dtype=D64), rule=Composite(by_name={"lstm": rule}))


def test_rule_strings_and_by_type_reach_the_layer():
    model = LastStep(make_layer("LSTM", hidden=3))
    x = torch.randn(2, 5, 4, dtype=D64)
    by_string = lrpfx.explain(model, x, rule=Composite(by_name={"lstm": "recurrent(0.01)"}))
    by_type = lrpfx.explain(model, x, rule=Composite(by_type={nn.LSTM: RecurrentLRP(0.01)}))
    default = lrpfx.explain(model, x, rule=Composite())
    assert torch.allclose(by_string, by_type) and not torch.allclose(by_string, default)
    with pytest.raises(lrpfx.errors.RuleError, match="eps"):
        RecurrentLRP(-1.0)
