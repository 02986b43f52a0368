"""Numerical robustness: zero inputs and dead layers, half precision, memory layouts, determinism, threads.

* all-zero inputs and dead-ReLU layers give finite relevances (exact zeros wherever the rule makes the relevance
  proportional to the input or to a dead activation), never NaN, for every preset and single-rule string;
* float16 and bfloat16 models and inputs run for every preset and stay within a measured tolerance of float32;
* channels-last, transposed and strided (non-contiguous) inputs, and a channels-last model, give the relevance of
  the contiguous input;
* results are bitwise deterministic across calls and across Explainers on CPU;
* one Explainer called from 4 threads at once gives exactly the sequential results;
* building programs for two models concurrently in threads (and running one Explainer while another thread
  builds) is safe.
"""
from __future__ import annotations

import copy
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.composites import PRESETS

PRESET_NAMES = sorted(PRESETS)


pytestmark = pytest.mark.usefixtures("one_thread")
RULE_STRINGS = ["epsilon", "zero", "epsilon(0)", "gamma", "zplus", "alpha1beta0", "alpha2beta1", "flat", "wsquare",
                "zbox(-3,3)", "gamma+epsilon"]
# rules whose input relevance is x * (something finite) at the first layer: zero input -> zero relevance
PROPORTIONAL_AT_INPUT = {"epsilon-plus", "epsilon-alpha2beta1", "gradient*input", "epsilon", "zero", "epsilon(0)",
                         "gamma", "zplus", "alpha1beta0", "alpha2beta1", "gamma+epsilon"}

# single-rule strings that use no activation value on some layer (Flat, WSquare everywhere; ZBox's bounds): a
# dead layer does not stop their relevance
VALUE_BLIND = {"flat", "wsquare", "zbox(-3,3)"}


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, max pooling, a residual add, a concat, average pooling, a two-layer head."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.fc1 = nn.Linear(12 * 2 * 2, 16)
        self.fc2 = nn.Linear(16, 5)

    def forward(self, x):
        a = F.relu(self.bn1(self.c1(x)))
        a = F.max_pool2d(a, 2)
        b = F.relu(self.c2(a)) + a
        c = torch.cat([b, F.relu(self.c3(a))], 1)
        c = F.adaptive_avg_pool2d(c, 2)
        return self.fc2(F.relu(self.fc1(c.flatten(1))))


def small_cnn(seed: int = 0, dtype=torch.float64) -> SmallCNN:
    torch.manual_seed(seed)
    m = SmallCNN()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        m.bn1.running_mean.copy_(0.2 * torch.randn(8, generator=gen))
        m.bn1.running_var.copy_(0.5 + torch.rand(8, generator=gen))
        m.bn1.weight.copy_(0.5 + torch.rand(8, generator=gen))
        m.bn1.bias.copy_(0.2 * torch.randn(8, generator=gen))
    return m.to(dtype).eval()


def inputs(seed: int = 0, dtype=torch.float64, batch: int = 4) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 2)
    return torch.randn(batch, 3, 8, 8, generator=gen).to(dtype)


TARGET = torch.tensor([1, 2, 3, 4])


# ---- zeros, dead layers -------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", PRESET_NAMES + RULE_STRINGS)
def test_all_zero_input_gives_finite_relevance(rule):
    m = small_cnn()
    x = torch.zeros(4, 3, 8, 8, dtype=torch.float64)
    e = lrpfx.Explainer(m, rule)(x, target=TARGET, intermediate=True)
    assert torch.isfinite(e.relevance).all(), rule
    for name, r in e.intermediate.items():
        assert torch.isfinite(r).all(), (rule, name)
    if rule in PROPORTIONAL_AT_INPUT:
        assert torch.equal(e.relevance, torch.zeros_like(x)), rule


@pytest.mark.parametrize("rule", PRESET_NAMES + RULE_STRINGS)
def test_all_zero_input_of_a_bias_free_model_gives_zeros(rule):
    """No bias anywhere: every value, logit and relevance is exactly 0 (0/stab(0) must not give NaN)."""
    m = small_cnn()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                mod.bias.zero_()
        m.bn1.running_mean.zero_()
        m.bn1.bias.zero_()
    x = torch.zeros(4, 3, 8, 8, dtype=torch.float64)
    e = lrpfx.Explainer(m, rule)(x, target=TARGET, intermediate=True)
    assert torch.equal(e.output, torch.zeros_like(e.output))
    for name, r in e.intermediate.items():
        assert torch.isfinite(r).all(), (rule, name)
        if not rule.startswith("gradient"):  # gradient composites carry gradients, not relevances, inside
            assert torch.equal(r, torch.zeros_like(r)), (rule, name)
    if rule == "gradient":  # the gradient does not vanish with the input
        assert torch.isfinite(e.relevance).all()
    else:
        assert torch.equal(e.relevance, torch.zeros_like(x)), rule


@pytest.mark.parametrize("where", ["first", "head", "branch"])
@pytest.mark.parametrize("rule", PRESET_NAMES + RULE_STRINGS)
def test_dead_relu_layer_gives_zeros_not_nan(rule, where):
    """A ReLU layer that is 0 everywhere cuts every path: the relevance (and the gradient) is exactly 0. A dead
    branch (the residual's conv) leaves the other paths: finite relevance, and none through the dead branch."""
    m = small_cnn()
    with torch.no_grad():
        if where == "first":
            m.bn1.bias.fill_(-1e3)       # a = relu(bn1(c1(x))) == 0, so is everything downstream of it
        elif where == "head":
            m.fc1.bias.fill_(-1e3)       # the hidden layer of the head is dead
        else:
            m.c2.bias.fill_(-1e3)        # relu(c2(a)) == 0: the residual add gets only its skip input
    x = inputs()
    e = lrpfx.Explainer(m, rule)(x, target=TARGET, intermediate=True)
    for name, r in e.intermediate.items():
        assert torch.isfinite(r).all(), (rule, where, name)
    assert torch.isfinite(e.relevance).all()
    if rule in VALUE_BLIND:
        return  # these spread relevance regardless of the activations' values: finite is all there is to check
    if where == "branch":
        if not rule.startswith("gradient"):  # (a gradient composite's intermediates are gradients)
            assert torch.equal(e.intermediate["relu_1"], torch.zeros_like(e.intermediate["relu_1"]))
    else:
        assert torch.equal(e.relevance, torch.zeros_like(x)), (rule, where)


# ---- half precision ----------------------------------------------------------------------------------------
# Relative L2 error ||R_half - R_32|| / ||R_32|| of each preset against the float32 model with the same weights,
# measured on SmallCNN(seed 0), 4 inputs of 3x8x8, targets 1..4, CPU, torch 2.14.1:
#   float16:  7.2e-4 (epsilon-plus-flat) .. 9.8e-4 (epsilon-alpha2beta1); gradient 8.0e-4
#   bfloat16: 3.7e-2 (epsilon-plus) .. 7.1e-2 (epsilon-alpha2beta1); gradient 7.1e-2, gradient*input 6.1e-2
# Over seeds 0-7: float16 at most 1.1e-3 for every preset; bfloat16 median 1-2.5e-2 (LRP presets) and 5e-2
# (gradient), worst 2.1e-1 (epsilon-alpha2beta1). bfloat16's 8-bit mantissa flips ReLU and max-pool decisions
# (all of a window's relevance moves), so its error is that of the model's own bfloat16 forward: the plain
# gradient is as far off as the LRP presets. Tolerances: float16 5e-3 (5x the measured value), bfloat16 0.2 (3x
# the measured seed-0 value, about the worst seed).
HALF_RTOL = {torch.float16: 5e-3, torch.bfloat16: 2e-1}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("rule", PRESET_NAMES)
def test_half_precision_close_to_float32(rule, dtype):
    m32 = small_cnn(dtype=torch.float32)
    x32 = inputs(dtype=torch.float32)
    r32 = lrpfx.Explainer(m32, rule)(x32, target=TARGET).relevance
    m = copy.deepcopy(m32).to(dtype)
    e = lrpfx.Explainer(m, rule)(x32.to(dtype), target=TARGET)
    assert e.relevance.dtype == dtype and e.output.dtype == dtype
    assert torch.isfinite(e.relevance).all()
    err = float((e.relevance.float() - r32).norm() / r32.norm())
    assert err < HALF_RTOL[dtype], f"{rule} {dtype}: relative L2 error {err:.2e}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_half_precision_zero_input_is_finite(dtype):
    m = small_cnn(dtype=dtype)
    for rule in PRESET_NAMES + ["epsilon(0)"]:
        r = lrpfx.explain(m, torch.zeros(2, 3, 8, 8, dtype=dtype), rule, target=1)
        assert torch.isfinite(r).all(), (rule, dtype)


# ---- memory layouts ----------------------------------------------------------------------------------------
def _layouts(x):
    cl = x.to(memory_format=torch.channels_last)
    transposed = torch.empty(x.shape[0], x.shape[2], x.shape[1], x.shape[3], dtype=x.dtype).transpose(1, 2)
    transposed.copy_(x)
    strided = torch.zeros(*x.shape[:3], 2 * x.shape[3], dtype=x.dtype)[..., ::2]
    strided.copy_(x)
    return {"channels_last": cl, "transposed": transposed, "strided": strided}


@pytest.mark.parametrize("rule", PRESET_NAMES)
def test_non_contiguous_and_channels_last_inputs(rule):
    m = small_cnn()
    x = inputs()
    ex = lrpfx.Explainer(m, rule)
    expected = ex(x, target=TARGET).relevance
    for name, xi in _layouts(x).items():
        assert not xi.is_contiguous()
        r = ex(xi, target=TARGET).relevance
        assert r.shape == x.shape
        # channels-last convolutions take other kernels: equal up to rounding (measured <= 6e-18 abs in float64)
        torch.testing.assert_close(r, expected, rtol=1e-12, atol=1e-15, msg=lambda msg: f"{name}: {msg}")
    m_cl = copy.deepcopy(m).to(memory_format=torch.channels_last)
    r = lrpfx.Explainer(m_cl, rule)(_layouts(x)["channels_last"], target=TARGET).relevance
    torch.testing.assert_close(r, expected, rtol=1e-12, atol=1e-15)


# ---- determinism -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", PRESET_NAMES)
def test_bitwise_deterministic(rule):
    m = small_cnn(dtype=torch.float32)
    x = inputs(dtype=torch.float32)
    ex = lrpfx.Explainer(m, rule)
    first = ex(x, target=TARGET, intermediate=True)
    second = ex(x, target=TARGET, intermediate=True)
    third = lrpfx.Explainer(m, rule)(x, target=TARGET, intermediate=True)
    for other in (second, third):
        assert torch.equal(first.relevance, other.relevance)
        assert torch.equal(first.output, other.output)
        assert list(first.intermediate) == list(other.intermediate)
        for k in first.intermediate:
            assert torch.equal(first.intermediate[k], other.intermediate[k]), k


# ---- threads -----------------------------------------------------------------------------------------------
def _run_threads(fns, timeout=120):
    """Start one thread per function at the same moment (a barrier); return results, re-raise the first error."""
    barrier = threading.Barrier(len(fns))
    results, errors = [None] * len(fns), []

    def work(i):
        try:
            barrier.wait()
            results[i] = fns[i]()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread hangs (deadlock?)"
    if errors:
        raise errors[0]
    return results


def test_one_explainer_from_four_threads_equals_sequential():
    m = small_cnn(dtype=torch.float32)
    xs = [inputs(seed=s, dtype=torch.float32, batch=2 + s % 2) for s in range(4)]
    targets = [torch.tensor([s % 5] * x.shape[0]) for s, x in enumerate(xs)]
    sequential = [lrpfx.Explainer(m, "epsilon-gamma-box")(x, target=t).relevance for x, t in zip(xs, targets)]
    for _ in range(3):
        ex = lrpfx.Explainer(m, "epsilon-gamma-box")  # fresh: the threads race for the first build as well
        results = _run_threads([lambda x=x, t=t: ex(x, target=t).relevance for x, t in zip(xs, targets)])
        for got, want in zip(results, sequential):
            assert torch.equal(got, want)


def test_one_explainer_from_four_threads_with_different_signatures():
    """Threads asking for different programs (plain, intermediate, float target) of one Explainer at once."""
    m = small_cnn(dtype=torch.float32)
    x = inputs(dtype=torch.float32)
    r0 = torch.randn(4, 5)
    calls = [lambda ex: ex(x, target=TARGET).relevance,
             lambda ex: ex(x, target=TARGET, intermediate=True).relevance,
             lambda ex: ex(x, target=r0).relevance,
             lambda ex: ex(x[:2], target=TARGET[:2]).relevance]
    sequential = [call(lrpfx.Explainer(m, "epsilon-plus-flat")) for call in calls]
    for _ in range(3):
        ex = lrpfx.Explainer(m, "epsilon-plus-flat")
        results = _run_threads([lambda call=call: call(ex) for call in calls])
        for got, want in zip(results, sequential):
            assert torch.equal(got, want)


class InputNorm(nn.Module):
    """An unfoldable BatchNorm at the input: the program calls the user's module in its forward."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.net = small_cnn(dtype=torch.float32)
        with torch.no_grad():
            self.bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
            self.bn.running_var.copy_(torch.tensor([0.7, 1.4, 1.1]))

    def forward(self, x):
        return self.net(self.bn(x))


def test_one_explainer_from_four_threads_on_a_training_mode_model():
    """Regression: ``Explainer.__call__`` switches the model to eval mode around each run and restores the flags
    afterwards. Overlapping calls interleave those switches: a thread runs while another has already restored
    ``training=True`` (BatchNorm then normalises with batch statistics and updates its running statistics), and
    the flags a thread restores are the eval flags another thread had set: the model is left in eval mode."""
    m = InputNorm().train()
    x = inputs(dtype=torch.float32)
    ex = lrpfx.Explainer(m, "epsilon-gamma-box")
    sequential = ex(x, target=TARGET).relevance
    state = {k: v.clone() for k, v in m.state_dict().items()}
    for _ in range(3):
        results = _run_threads([lambda: [ex(x, target=TARGET).relevance for _ in range(10)] for _ in range(4)])
        assert all(mod.training for mod in m.modules()), "the model was left in eval mode"
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k]), f"buffer {k} changed"
        for rs in results:
            for r in rs:
                assert torch.equal(r, sequential)


def test_building_programs_for_two_models_concurrently():
    """Regression: torch.fx tracing patches ``nn.Module.__call__`` process-wide while it runs, so a second thread
    tracing (or running) another model at the same moment has its module calls recorded into the first trace:
    ``NameError: module is not installed as a submodule`` (or a silently wrong program). lrpfx must serialise
    its tracing against every other tracing and program run of its own."""
    models = [small_cnn(seed=1, dtype=torch.float32), small_cnn(seed=2, dtype=torch.float32)]
    x = inputs(dtype=torch.float32)
    sequential = [lrpfx.Explainer(mm, "epsilon-gamma-box")(x, target=TARGET).relevance for mm in models]
    for _ in range(5):
        results = _run_threads([lambda mm=mm: lrpfx.Explainer(mm, "epsilon-gamma-box")(x, target=TARGET).relevance
                                for mm in models])
        for got, want in zip(results, sequential):
            assert torch.equal(got, want)


class PauseWhileTraced(nn.Module):
    """Identity. While torch.fx traces it (its input is a Proxy) it signals ``tracing`` and waits (at most
    ``timeout`` seconds) for ``resume``: a deterministic window in which another thread acts mid-trace."""

    def __init__(self, tracing: threading.Event, resume: threading.Event, timeout: float = 3.0):
        super().__init__()
        self.events, self.timeout = (tracing, resume), timeout

    def forward(self, x):
        if isinstance(x, torch.fx.Proxy):
            tracing, resume = self.events
            tracing.set()
            resume.wait(self.timeout)
        return x


class Paused(nn.Module):
    def __init__(self, inner: nn.Module, tracing, resume):
        super().__init__()
        self.pause = PauseWhileTraced(tracing, resume)
        self.inner = inner

    def forward(self, x):
        return self.inner(self.pause(x))


@pytest.mark.parametrize("other", ["runs a built program", "builds a program", "runs an exported program"])
def test_other_thread_acts_while_a_program_is_traced(other):
    """Regression, deterministic: thread A traces a model and pauses inside the trace; thread B meanwhile runs an
    already built Explainer, builds one for another model, or runs an exported ``RelevanceProgram``. torch.fx has
    patched ``nn.Module.__call__`` process-wide for A's trace, so B's module calls are recorded into A's graph and
    fail with ``NameError: module is not installed as a submodule``. Fixed, lrpfx makes B wait for A's trace (A's
    pause then times out)."""
    tracing, resume = threading.Event(), threading.Event()
    a = Paused(small_cnn(seed=1, dtype=torch.float32), tracing, resume)
    b = small_cnn(seed=2, dtype=torch.float32)
    x = inputs(dtype=torch.float32)
    expected_a = lrpfx.Explainer(a.inner, "epsilon-gamma-box")(x, target=TARGET).relevance
    ex_b = lrpfx.Explainer(b, "epsilon-plus")
    expected_b = ex_b(x, target=TARGET).relevance
    if other == "builds a program":
        ex_b = lrpfx.Explainer(b, "epsilon-plus")  # fresh: B's call traces b
    if other == "runs an exported program":
        program = lrpfx.export(b, x, "epsilon-plus")
        ex_b = lambda x, target: lrpfx.Explanation(program(x, target=target)[1][0], None)  # noqa: E731

    def thread_a():
        return lrpfx.Explainer(a, "epsilon-gamma-box")(x, target=TARGET).relevance

    def thread_b():
        try:
            assert tracing.wait(30), "thread A never started tracing"
            return ex_b(x, target=TARGET).relevance
        finally:
            resume.set()

    got_a, got_b = _run_threads([thread_a, thread_b])
    assert torch.equal(got_a, expected_a)
    assert torch.equal(got_b, expected_b)


def test_running_while_another_thread_builds():
    """Regression (same cause), the natural race: a cached Explainer runs while another thread builds."""
    a, b = small_cnn(seed=1, dtype=torch.float32), small_cnn(seed=2, dtype=torch.float32)
    x = inputs(dtype=torch.float32)
    ex = lrpfx.Explainer(a, "epsilon-gamma-box")
    expected = ex(x, target=TARGET).relevance  # built now: the thread below only runs it

    def run_many():
        return [ex(x, target=TARGET).relevance for _ in range(40)]

    def build_many():
        return [lrpfx.Explainer(b, "epsilon-plus")(x, target=TARGET).relevance for _ in range(15)]

    runs, _ = _run_threads([run_many, build_many])
    for r in runs:
        assert torch.equal(r, expected)
