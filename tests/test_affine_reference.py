"""Every affine rule against an independent float64 matrix-form reference (docs/rules.md, "Rules for affine nodes").

The reference (``tests/helpers/reference.py``) never touches lrpfx: each layer becomes a dense per-sample matrix
(identity basis pushed through the bias-free layer; ``W⁺``/``W⁻`` from the layer with clamped weights) and each
rule is evaluated from the contract's formulas with plain matrix algebra.

Three routes into lrpfx are checked:

* the public API on ``nn.Sequential(layer)`` (mixed-sign input, initial relevance = a random float target);
* the public API on ``nn.Sequential(nn.ReLU(), layer)``: the rule sees ``x >= 0`` (the program takes the
  ``x_nonneg`` fast paths) and the ReLU passes relevance unchanged, so the result must equal the reference at
  ``relu(x)``;
* the pure functions of ``lrpfx.rules.affine`` directly, ``x_nonneg=True`` (fused) vs ``False`` (generic).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import parse_rule, single
from lrpfx.rules import AlphaBeta, Epsilon, Flat, Gamma, WSquare, ZBox, ZPlus, affine
from lrpfx.rules import layers as L

from tests.helpers import reference as ref

DT = torch.float64
RTOL, ATOL = 1e-9, 1e-12

# torch's own note on asymmetric 'same' padding (the conv2d-bias-same-k2 case): expected, not a problem
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
              pytest.mark.usefixtures("one_thread")]


def assert_close(actual, expected, rtol=RTOL, atol=ATOL):
    """Elementwise ``rtol``; ``atol`` relative to the largest reference entry (sums with cancellation)."""
    assert actual.dtype == expected.dtype == DT
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol * scale)


# ---- layers ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[], nn.Module]
    in_shape: Tuple[int, ...]  # one sample
    batch: int = 2

    def layer(self) -> nn.Module:
        torch.manual_seed(zlib.crc32(self.id.encode()))
        layer = self.make().to(DT)
        with torch.no_grad():
            layer.weight.normal_(0, 0.5)  # both signs, no exact zeros
            if layer.bias is not None:
                layer.bias.normal_(0, 0.5)
        return layer.eval()

    def channel_bound_shape(self) -> Tuple[int, ...]:
        if self.id.startswith("linear"):
            return (self.in_shape[-1],)
        return (self.in_shape[0],) + (1,) * (len(self.in_shape) - 1)

    @property
    def zero_padding(self) -> bool:
        """Zero padding given as integers (what the hand-built specs of the pure-function tests cover)."""
        layer = self.make()
        return getattr(layer, "padding_mode", "zeros") == "zeros" and not isinstance(
            getattr(layer, "padding", 0), str)

    @property
    def distinct_taps(self) -> bool:
        """Each (input, output) pair meets at most one kernel tap (not so with reflect/replicate padding)."""
        return getattr(self.make(), "padding_mode", "zeros") in ("zeros", "circular")


CASES = [
    Case("linear-bias", lambda: nn.Linear(5, 4), (5,), batch=3),
    Case("linear-nobias", lambda: nn.Linear(6, 3, bias=False), (6,), batch=3),
    Case("linear-3d-input", lambda: nn.Linear(4, 3), (3, 4)),
    Case("conv1d-bias-pad1", lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 7)),
    Case("conv1d-nobias-s2-p2-d2-g2", lambda: nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2,
                                                         bias=False), (4, 9)),
    Case("conv2d-bias-pad1", lambda: nn.Conv2d(2, 3, 3, padding=1), (2, 5, 5)),
    Case("conv2d-nobias-s21-p10-d12-g2", lambda: nn.Conv2d(4, 4, (3, 2), stride=(2, 1), padding=(1, 0),
                                                            dilation=(1, 2), groups=2, bias=False), (4, 6, 5)),
    Case("conv2d-bias-s2-p2-g2", lambda: nn.Conv2d(2, 4, 3, stride=2, padding=2, groups=2), (2, 5, 6)),
    Case("conv2d-bias-same-d2", lambda: nn.Conv2d(2, 3, 3, padding="same", dilation=2), (2, 6, 5)),
    # even kernel: PyTorch pads 'same' asymmetrically (0 before, 1 after)
    Case("conv2d-bias-same-k2", lambda: nn.Conv2d(2, 3, 2, padding="same"), (2, 4, 5)),
    Case("conv2d-bias-reflect", lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect"), (2, 5, 4)),
    Case("conv2d-nobias-circular", lambda: nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular", bias=False),
         (2, 4, 5)),
    Case("conv3d-bias-pad1", lambda: nn.Conv3d(2, 3, 2, padding=1), (2, 3, 3, 3)),
    Case("conv3d-nobias-s2-d-g2", lambda: nn.Conv3d(2, 4, (2, 3, 2), stride=2, padding=(0, 1, 1),
                                                     dilation=(1, 1, 2), groups=2, bias=False), (2, 4, 4, 5)),
    Case("convT2d-bias-s2-p1-op1", lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
         (3, 3, 3)),
    Case("convT2d-nobias-s2-d2-g2", lambda: nn.ConvTranspose2d(4, 2, 2, stride=2, dilation=2, groups=2,
                                                               bias=False), (4, 3, 3)),
    Case("convT2d-bias-s32-p10-op21", lambda: nn.ConvTranspose2d(2, 3, (3, 2), stride=(3, 2), padding=(1, 0),
                                                                 output_padding=(2, 1)), (2, 3, 2)),
    # output_padding >= stride is legal when output_padding < dilation
    Case("convT2d-bias-s1-d2-op1", lambda: nn.ConvTranspose2d(2, 2, 3, stride=1, dilation=2, output_padding=1),
         (2, 3, 3)),
    Case("convT1d-nobias-s2-p1-op1-g2", lambda: nn.ConvTranspose1d(2, 4, 3, stride=2, padding=1,
                                                                   output_padding=1, groups=2, bias=False), (2, 4)),
    Case("convT3d-bias-s2", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), (2, 2, 2, 2)),
]
CASE_PARAMS = [pytest.param(c, id=c.id) for c in CASES]
_BY_ID = {c.id: c for c in CASES}
# a few representative layers for the tests that need not sweep every case
FEW_CASE_PARAMS = [pytest.param(_BY_ID[i], id=i)
                   for i in ("linear-bias", "conv2d-bias-pad1", "convT2d-bias-s2-p1-op1")]

_MATRICES = {}


def _matrices(case: Case, layer: nn.Module) -> ref.Matrices:
    """Reference matrices, once per case (``case.layer()`` is deterministic, so they fit every fresh layer)."""
    if case.id not in _MATRICES:
        _MATRICES[case.id] = (layer.weight.detach().clone(), ref.matrices(layer, case.in_shape))
    weight, m = _MATRICES[case.id]
    assert torch.equal(weight, layer.weight)
    return m


# ---- rules -----------------------------------------------------------------------------------------------------
# bounds for the z^B rule: scalars, per channel, and per element; inputs of zbox cases are drawn inside them
def _bounds(case: Case, kind: str):
    if kind == "scalar":
        return -2.0, 2.5
    g = torch.Generator().manual_seed(7)
    shape = case.channel_bound_shape() if kind == "channel" else (1, *case.in_shape)
    low = -(0.5 + torch.rand(shape, generator=g, dtype=DT))
    high = 0.5 + torch.rand(shape, generator=g, dtype=DT)
    return low, high


def _flat_bound(bound, case: Case) -> torch.Tensor:
    """A bound as the reference wants it: ``[n_in]``."""
    t = torch.as_tensor(bound, dtype=DT)
    return t.expand(1, *case.in_shape).reshape(-1) if t.dim() > len(case.in_shape) else \
        t.expand(case.in_shape).reshape(-1)


@dataclass(frozen=True)
class RuleCase:
    id: str
    rule: Callable[[Case], lrpfx.rules.Rule]
    ref: Callable  # (Matrices, X, R, Case) -> R_in
    bounds: str = ""  # zbox: "scalar" / "channel" / "element"


def _zbox_case(kind):
    def rule(case):
        low, high = _bounds(case, kind)
        return ZBox(low, high)

    def reference(m, X, R, case):
        low, high = _bounds(case, kind)
        return ref.zbox(m, X, R, _flat_bound(low, case), _flat_bound(high, case))

    return RuleCase(f"zbox-{kind}", rule, reference, bounds=kind)


RULES = [
    RuleCase("epsilon0", lambda c: Epsilon(0.0), lambda m, X, R, c: ref.epsilon(m, X, R, 0.0)),
    RuleCase("epsilon1e-6", lambda c: Epsilon(), lambda m, X, R, c: ref.epsilon(m, X, R, 1e-6)),
    RuleCase("epsilon0.1", lambda c: Epsilon(0.1), lambda m, X, R, c: ref.epsilon(m, X, R, 0.1)),
    RuleCase("epsilon1e-6-zb", lambda c: Epsilon(1e-6, zero_bias=True),
             lambda m, X, R, c: ref.epsilon(m, X, R, 1e-6, zero_bias=True)),
    RuleCase("epsilon0-zb", lambda c: Epsilon(0.0, zero_bias=True),
             lambda m, X, R, c: ref.epsilon(m, X, R, 0.0, zero_bias=True)),
    RuleCase("gamma0.25", lambda c: Gamma(0.25), lambda m, X, R, c: ref.gamma(m, X, R, 0.25)),
    RuleCase("gamma1", lambda c: Gamma(1.0), lambda m, X, R, c: ref.gamma(m, X, R, 1.0)),
    RuleCase("gamma0", lambda c: Gamma(0.0), lambda m, X, R, c: ref.gamma(m, X, R, 0.0)),
    RuleCase("gamma0.5-eps0.1", lambda c: Gamma(0.5, eps=0.1), lambda m, X, R, c: ref.gamma(m, X, R, 0.5, 0.1)),
    RuleCase("gamma0.25-zb", lambda c: Gamma(0.25, zero_bias=True),
             lambda m, X, R, c: ref.gamma(m, X, R, 0.25, zero_bias=True)),
    RuleCase("zplus", lambda c: ZPlus(), lambda m, X, R, c: ref.zplus(m, X, R)),
    RuleCase("zplus-zb", lambda c: ZPlus(zero_bias=True), lambda m, X, R, c: ref.zplus(m, X, R, zero_bias=True)),
    RuleCase("alpha1beta0", lambda c: AlphaBeta(1, 0), lambda m, X, R, c: ref.alpha_beta(m, X, R, 1.0, 0.0)),
    RuleCase("alpha2beta1", lambda c: AlphaBeta(2, 1), lambda m, X, R, c: ref.alpha_beta(m, X, R, 2.0, 1.0)),
    RuleCase("alpha3beta2", lambda c: AlphaBeta(3, 2), lambda m, X, R, c: ref.alpha_beta(m, X, R, 3.0, 2.0)),
    RuleCase("alpha2beta1-zb", lambda c: AlphaBeta(2, 1, zero_bias=True),
             lambda m, X, R, c: ref.alpha_beta(m, X, R, 2.0, 1.0, zero_bias=True)),
    _zbox_case("scalar"),
    _zbox_case("channel"),
    _zbox_case("element"),
    RuleCase("flat", lambda c: Flat(), lambda m, X, R, c: ref.flat(m, X, R)),
    RuleCase("wsquare", lambda c: WSquare(), lambda m, X, R, c: ref.wsquare(m, X, R)),
    RuleCase("wsquare-zb", lambda c: WSquare(zero_bias=True), lambda m, X, R, c: ref.wsquare(m, X, R, zero_bias=True)),
]
RULE_PARAMS = [pytest.param(r, id=r.id) for r in RULES]
# after a ReLU: the rules with an x_nonneg fast path (gamma, z+, alpha-beta), plus LRP-0 (exact zeros in x meet
# z == 0 without bias) and z^B (bounds straddling 0 while x >= 0). The other epsilon variants, flat and w² have no
# x_nonneg path, so they run on mixed-sign inputs only, to keep the file fast (every parameter set costs a trace).
RELU_RULES = {"epsilon0", "gamma0.25", "gamma1", "gamma0.5-eps0.1", "gamma0.25-zb", "zplus", "zplus-zb",
              "alpha1beta0", "alpha2beta1", "alpha3beta2", "alpha2beta1-zb", "zbox-channel"}
RELU_RULE_PARAMS = [pytest.param(r, id=r.id) for r in RULES if r.id in RELU_RULES]


def _inputs(case: Case, layer: nn.Module, bounds: str = ""):
    """A mixed-sign input (inside the z^B bounds when asked) and a random initial relevance shaped like the output."""
    g = torch.Generator().manual_seed(1234 + zlib.crc32(case.id.encode()))
    shape = (case.batch, *case.in_shape)
    if bounds:
        low, high = _bounds(case, bounds)
        low, high = torch.as_tensor(low, dtype=DT), torch.as_tensor(high, dtype=DT)
        x = low + (high - low) * torch.rand(shape, generator=g, dtype=DT)
    else:
        x = torch.randn(shape, generator=g, dtype=DT)
    with torch.no_grad():
        out_shape = layer(x).shape
    R = torch.randn(out_shape, generator=g, dtype=DT)
    return x, R


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


# ---- the reference itself --------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_reference_matrices_reproduce_the_layer(case):
    """Sanity of the reference: ``x·M + b`` is the layer; basis and Jacobian agree; W⁺/W⁻ split M."""
    layer = case.layer()
    m = _matrices(case, layer)
    x, _ = _inputs(case, layer)
    with torch.no_grad():
        z = layer(x)
    assert_close(_flat(x) @ m.M + (0 if m.b is None else m.b), _flat(z))
    assert_close(ref.layer_matrix_jacobian(layer, case.in_shape), m.M)
    assert_close(m.Mp + m.Mn, m.M)
    if case.distinct_taps:
        # each (input, output) pair meets at most one kernel tap: the clamped layer is the clamped matrix
        assert_close(m.Mp, m.M.clamp(min=0))
        assert_close(m.Mn, m.M.clamp(max=0))
        assert_close(m.Msq, m.M * m.M)


# ---- public API vs reference -----------------------------------------------------------------------------------
def _explain(model, x, rule, R):
    return lrpfx.Explainer(model, rule=single(rule))(x, target=R).relevance


@pytest.mark.parametrize("rule_case", RULE_PARAMS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_api_matches_reference_mixed_sign(case, rule_case):
    layer = case.layer()
    x, R = _inputs(case, layer, rule_case.bounds)
    assert (x < 0).any() and (x > 0).any()
    got = _explain(nn.Sequential(layer), x, rule_case.rule(case), R)
    m = _matrices(case, layer)
    expected = rule_case.ref(m, _flat(x), _flat(R), case).reshape(x.shape)
    assert_close(got, expected)


@pytest.mark.parametrize("rule_case", RELU_RULE_PARAMS)
@pytest.mark.parametrize("case", CASE_PARAMS)
def test_api_matches_reference_after_relu(case, rule_case):
    """``ReLU -> layer``: the rule sees ``x >= 0`` (x_nonneg fast paths); ReLU passes R unchanged."""
    layer = case.layer()
    x, R = _inputs(case, layer, rule_case.bounds)
    got = _explain(nn.Sequential(nn.ReLU(), layer), x, rule_case.rule(case), R)
    m = _matrices(case, layer)
    xr = x.clamp(min=0)
    expected = rule_case.ref(m, _flat(xr), _flat(R), case).reshape(x.shape)
    assert_close(got, expected)


def test_relu_model_takes_the_nonneg_path():
    """Guard for the test above: the program really passes ``x_nonneg=True`` after a ReLU (and not without)."""
    case = _BY_ID["conv2d-bias-pad1"]
    layer = case.layer()
    x, _ = _inputs(case, layer)
    with_relu = lrpfx.export(nn.Sequential(nn.ReLU(), layer), x, rule=single(Gamma(0.25))).code
    without = lrpfx.export(nn.Sequential(layer), x, rule=single(Gamma(0.25))).code
    assert "x_nonneg = True" in with_relu
    assert "x_nonneg = False" in without


@pytest.mark.parametrize("case", FEW_CASE_PARAMS)
def test_rule_strings_match_reference(case):
    """Rule strings reach the same computation as the rule objects."""
    layer = case.layer()
    x, R = _inputs(case, layer)
    m = _matrices(case, layer)
    X, Rf = _flat(x), _flat(R)
    model = nn.Sequential(layer)
    expectations = {
        "epsilon(0.1)": ref.epsilon(m, X, Rf, 0.1),
        "zero": ref.epsilon(m, X, Rf, 0.0),
        "gamma(0.5)": ref.gamma(m, X, Rf, 0.5),
        "zplus": ref.zplus(m, X, Rf),
        "alpha2beta1": ref.alpha_beta(m, X, Rf, 2.0, 1.0),
        "alphabeta(3,2)": ref.alpha_beta(m, X, Rf, 3.0, 2.0),
        "flat": ref.flat(m, X, Rf),
        "wsquare": ref.wsquare(m, X, Rf),
        "zbox(-4, 4)": ref.zbox(m, X, Rf, torch.full((X.shape[1],), -4.0, dtype=DT),
                                torch.full((X.shape[1],), 4.0, dtype=DT)),
    }
    for rule, expected in expectations.items():
        got = lrpfx.explain(model, x, rule=rule, target=R)
        assert_close(got, expected.reshape(x.shape))


# ---- pure functions: fused (x_nonneg=True) vs generic paths -----------------------------------------------------
def _spec(layer: nn.Module):
    """The lrpfx layer spec of a zero-padded layer (built here from the module's documented attributes)."""
    if isinstance(layer, nn.Linear):
        return L.Linear()
    dim = len(layer.kernel_size)
    if layer.transposed:
        return L.ConvTranspose(dim, tuple(layer.stride), tuple(layer.padding), tuple(layer.output_padding),
                               tuple(layer.dilation), layer.groups)
    return L.Conv(dim, tuple(layer.stride), tuple(layer.padding), tuple(layer.dilation), layer.groups)


PURE_RULES = [
    pytest.param("zplus", dict(eps=1e-6), lambda m, X, R: ref.zplus(m, X, R), id="zplus"),
    pytest.param("zplus", dict(eps=1e-6, zero_bias=True), lambda m, X, R: ref.zplus(m, X, R, zero_bias=True),
                 id="zplus-zb"),
    pytest.param("alpha_beta", dict(alpha=1.0, beta=0.0, eps=1e-6),
                 lambda m, X, R: ref.alpha_beta(m, X, R, 1.0, 0.0), id="alpha1beta0"),
    pytest.param("alpha_beta", dict(alpha=2.0, beta=1.0, eps=1e-6),
                 lambda m, X, R: ref.alpha_beta(m, X, R, 2.0, 1.0), id="alpha2beta1"),
    pytest.param("alpha_beta", dict(alpha=3.0, beta=2.0, eps=0.1),
                 lambda m, X, R: ref.alpha_beta(m, X, R, 3.0, 2.0, eps=0.1), id="alpha3beta2-eps0.1"),
    pytest.param("alpha_beta", dict(alpha=2.0, beta=1.0, eps=1e-6, zero_bias=True),
                 lambda m, X, R: ref.alpha_beta(m, X, R, 2.0, 1.0, zero_bias=True), id="alpha2beta1-zb"),
    pytest.param("gamma", dict(gamma=0.25, eps=1e-6), lambda m, X, R: ref.gamma(m, X, R, 0.25), id="gamma0.25"),
    pytest.param("gamma", dict(gamma=1.0, eps=1e-6), lambda m, X, R: ref.gamma(m, X, R, 1.0), id="gamma1"),
    pytest.param("gamma", dict(gamma=0.5, eps=0.1), lambda m, X, R: ref.gamma(m, X, R, 0.5, 0.1),
                 id="gamma0.5-eps0.1"),
    pytest.param("gamma", dict(gamma=0.25, eps=1e-6, zero_bias=True),
                 lambda m, X, R: ref.gamma(m, X, R, 0.25, zero_bias=True), id="gamma0.25-zb"),
]


@pytest.mark.parametrize("fn_name, kwargs, reference", PURE_RULES)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if c.zero_padding])
def test_pure_function_nonneg_paths_agree(case, fn_name, kwargs, reference):
    layer = case.layer()
    x, R = _inputs(case, layer)
    x = x.clamp(min=0)
    x[..., 0] = 0.0  # exact zeros on purpose (a ReLU output has them)
    w = layer.weight.detach()
    b = None if layer.bias is None else layer.bias.detach()
    with torch.no_grad():
        z = layer(x)
    fn = getattr(affine, fn_name)
    spec = _spec(layer)
    fused = fn(x, w, b, z, R, layer=spec, x_nonneg=True, **kwargs)
    generic = fn(x, w, b, z, R, layer=spec, x_nonneg=False, **kwargs)
    torch.testing.assert_close(fused, generic, rtol=1e-10, atol=1e-10)
    expected = reference(_matrices(case, layer), _flat(x), _flat(R)).reshape(x.shape)
    assert_close(fused, expected)
    assert_close(generic, expected)


# ---- identities and parameter validation -----------------------------------------------------------------------
@pytest.mark.parametrize("relu", [False, True], ids=["mixed", "relu"])
@pytest.mark.parametrize("case", FEW_CASE_PARAMS)
def test_alpha1beta0_equals_zplus(case, relu):
    layer = case.layer()
    x, R = _inputs(case, layer)
    model = nn.Sequential(nn.ReLU(), layer) if relu else nn.Sequential(layer)
    a = _explain(model, x, AlphaBeta(1, 0), R)
    z = _explain(model, x, ZPlus(), R)
    torch.testing.assert_close(a, z, rtol=1e-12, atol=1e-12)
    assert parse_rule("alpha1beta0") == AlphaBeta(1, 0)


@pytest.mark.parametrize("make", [
    pytest.param(lambda: AlphaBeta(2, 2), id="alphabeta-diff0"),
    pytest.param(lambda: AlphaBeta(1.5, 0), id="alphabeta-diff1.5"),
    pytest.param(lambda: AlphaBeta(0.5, -0.5), id="alphabeta-negative-beta"),
    pytest.param(lambda: AlphaBeta(-1, -2), id="alphabeta-negative-both"),
    pytest.param(lambda: AlphaBeta(2, 1, eps=-1e-6), id="alphabeta-negative-eps"),
    pytest.param(lambda: Gamma(-0.25), id="gamma-negative"),
    pytest.param(lambda: Gamma(float("nan")), id="gamma-nan"),
    pytest.param(lambda: Gamma(0.25, eps=-1.0), id="gamma-negative-eps"),
    pytest.param(lambda: Epsilon(-1e-6), id="epsilon-negative"),
    pytest.param(lambda: Epsilon(float("nan")), id="epsilon-nan"),
    pytest.param(lambda: ZPlus(eps=-0.1), id="zplus-negative-eps"),
    pytest.param(lambda: Flat(eps=-0.1), id="flat-negative-eps"),
    pytest.param(lambda: WSquare(eps=-0.1), id="wsquare-negative-eps"),
    pytest.param(lambda: ZBox(3.0, -3.0), id="zbox-low-above-high"),
    pytest.param(lambda: ZBox(-3.0, 3.0, eps=-1.0), id="zbox-negative-eps"),
    pytest.param(lambda: ZBox("a", 3.0), id="zbox-bad-bound-type"),
    pytest.param(lambda: ZBox(torch.tensor([-1.0, 2.0]), torch.tensor([1.0, 1.0])),
                 id="zbox-tensor-low-above-high"),
    pytest.param(lambda: ZBox(2.0, torch.tensor([1.0, 3.0])), id="zbox-mixed-low-above-high"),
    pytest.param(lambda: parse_rule("epsilon(abc)"), id="str-epsilon(abc)"),
    pytest.param(lambda: parse_rule("nonsense"), id="str-nonsense"),
    pytest.param(lambda: parse_rule("epsilon(-0.1)"), id="str-epsilon-negative"),
    pytest.param(lambda: parse_rule("gamma(-1)"), id="str-gamma-negative"),
    pytest.param(lambda: parse_rule("alphabeta(2,2)"), id="str-alphabeta-2-2"),
    pytest.param(lambda: parse_rule("zbox(3,-3)"), id="str-zbox-reversed"),
    pytest.param(lambda: parse_rule("epsilon(1,2,3)"), id="str-too-many-params"),
    pytest.param(lambda: parse_rule("epsilon(0.1"), id="str-unbalanced"),
    pytest.param(lambda: parse_rule(""), id="str-empty"),
    pytest.param(lambda: parse_rule(42), id="not-a-rule"),
])
def test_invalid_parameters_raise_rule_error(make):
    with pytest.raises(lrpfx.RuleError):
        make()


@pytest.mark.parametrize("rule", ["nonsense", "epsilon(abc)", "alphabeta(1,1)", "gamma(-0.5)"])
def test_invalid_rule_through_api_raises_rule_error(rule):
    model = nn.Sequential(nn.Linear(3, 2)).to(DT)
    x = torch.randn(2, 3, dtype=DT)
    with pytest.raises(lrpfx.RuleError):
        lrpfx.explain(model, x, rule=rule)
    with pytest.raises(lrpfx.RuleError):
        lrpfx.Explainer(model, rule=rule)


def test_rule_error_is_a_value_error():
    with pytest.raises(ValueError):
        AlphaBeta(3, 1)


@pytest.mark.parametrize("text, expected", [
    ("epsilon", Epsilon()), ("epsilon(0.1)", Epsilon(0.1)), ("zero", Epsilon(0.0)), ("gamma", Gamma()),
    ("gamma(1)", Gamma(1.0)), ("zplus", ZPlus()), ("alpha1beta0", AlphaBeta(1, 0)),
    ("alpha2beta1", AlphaBeta(2, 1)), ("alphabeta(3,2)", AlphaBeta(3, 2)), ("flat", Flat()),
    ("wsquare", WSquare()), ("  Epsilon( 0.25 ) ", Epsilon(0.25)),
])
def test_valid_rule_strings(text, expected):
    assert parse_rule(text) == expected


def test_zbox_string_bounds():
    rule = parse_rule("zbox(-3, 3)")
    assert isinstance(rule, ZBox) and rule.low == -3.0 and rule.high == 3.0
