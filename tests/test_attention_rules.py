"""The transformer rules (docs/rules.md, "Transformer rules") against independent float64 formulas: each rule function on its own,
and a one-head attention block explained end to end against a hand-written AttnLRP / CP-LRP pass."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx
from lrpfx.composites import CPLRP, AttnLRP
from lrpfx.rules import attention, elementwise

pytestmark = pytest.mark.usefixtures("one_thread")
D = torch.float64


# ---- rule functions --------------------------------------------------------------------------------------------
def softmax_reference(x, r):
    """R_i = x_i (R_i - s_i Σ_j R_j), element by element; masked (-inf) inputs get 0."""
    s = torch.softmax(x, -1)
    out = torch.zeros_like(x)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in x.shape[:-1]]).reshape(-1, x.dim() - 1):
        row = tuple(idx.tolist())
        total = sum(float(r[row][j]) for j in range(x.shape[-1]))
        for i in range(x.shape[-1]):
            xi = float(x[row][i])
            out[row][i] = 0.0 if math.isinf(xi) else xi * (float(r[row][i]) - float(s[row][i]) * total)
    return out


def test_softmax_rule_matches_the_formula_and_zeroes_masked_scores():
    x = torch.randn(2, 3, 5, dtype=D)
    x[0, 1, 2] = float("-inf")
    s = torch.softmax(x, -1)
    r = torch.randn(2, 3, 5, dtype=D) * s  # relevance arrives only where the weights are non-zero
    got = attention.softmax(x, s, r, dim=-1)
    torch.testing.assert_close(got, softmax_reference(x, r), rtol=1e-12, atol=1e-12)
    assert got[0, 1, 2] == 0 and torch.isfinite(got).all()
    # a positive dim gives the same; a leading target axis is handled row by row
    torch.testing.assert_close(attention.softmax(x, s, r, dim=2), got)
    stacked = attention.softmax(x, s, torch.stack([r, 2 * r]), dim=2)
    torch.testing.assert_close(stacked[1], 2 * got)


def matmul_reference(a, b, r, n_active):
    """R_a[ij] = Σ_k a_ij b_jk R_ik / (n z_ik) and R_b[jk] = Σ_i a_ij b_jk R_ik / (n z_ik), by loops."""
    z = a @ b
    ra, rb = torch.zeros_like(a), torch.zeros_like(b)
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            for k in range(b.shape[1]):
                share = a[i, j] * b[j, k] * r[i, k] / (n_active * z[i, k])
                ra[i, j] += share
                rb[j, k] += share
    return ra, rb


def test_matmul_uniform_matches_the_formula_and_conserves():
    a, b = torch.randn(4, 3, dtype=D), torch.randn(3, 5, dtype=D)
    r = torch.randn(4, 5, dtype=D)
    ra, rb = attention.matmul(a, b, a @ b, r, active=(True, True), eps=0.0)
    ref_a, ref_b = matmul_reference(a, b, r, 2)
    torch.testing.assert_close(ra, ref_a, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(rb, ref_b, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(ra.sum() + rb.sum(), r.sum(), rtol=1e-10, atol=1e-12)


def test_matmul_with_one_active_operand_is_the_epsilon_rule_of_that_linear_map():
    a, b = torch.randn(4, 3, dtype=D), torch.randn(3, 5, dtype=D)
    r = torch.randn(4, 5, dtype=D)
    ra, rb = attention.matmul(a, b, a @ b, r, active=(False, True), eps=0.0)
    assert ra is None
    torch.testing.assert_close(rb, matmul_reference(a, b, r, 1)[1], rtol=1e-11, atol=1e-12)
    # batched and broadcast operands: relevance is summed back to the operand's shape
    a3 = torch.randn(2, 4, 3, dtype=D)
    r3 = torch.randn(2, 4, 5, dtype=D)
    ra3, rb3 = attention.matmul(a3, b, a3 @ b, r3, active=(True, True), eps=0.0)
    assert rb3.shape == b.shape
    torch.testing.assert_close(rb3, sum(matmul_reference(a3[i], b, r3[i], 2)[1] for i in range(2)))


def test_layer_norm_and_rms_norm_identity_rules_match_the_jacobian_form():
    x = torch.randn(3, 6, dtype=D)
    w, b = torch.randn(6, dtype=D), torch.randn(6, dtype=D)
    for centered in (True, False):
        mean = x.mean(-1, keepdim=True) if centered else torch.zeros(3, 1, dtype=D)
        sigma = torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + 1e-5)
        y = (x - mean) / sigma * w + (b if centered else 0)
        r = torch.randn(3, 6, dtype=D)
        expected = torch.empty_like(x)
        n = x.shape[1]
        for row in range(3):  # y = J x + b with sigma held constant; R_x = x * J^T (r / y)
            centring = torch.eye(n, dtype=D) - (1.0 / n if centered else 0.0)
            jac = torch.diag(w / sigma[row]) @ centring
            expected[row] = x[row] * (jac.T @ (r[row] / y[row]))
        got = elementwise.layer_norm(x, w, b if centered else None, y, r, normalized_ndim=1, ln_eps=1e-5, eps=0.0,
                                     centered=centered)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_mul_uniform_splits_a_gate_in_halves():
    g, u = torch.randn(2, 4, dtype=D), torch.randn(2, 4, dtype=D)
    r = torch.randn(2, 4, dtype=D)
    rg, ru = elementwise.mul_uniform(r, g, u)
    torch.testing.assert_close(rg, r / 2)
    torch.testing.assert_close(ru, r / 2)


# ---- one attention block end to end ---------------------------------------------------------------------------
class OneHead(nn.Module):
    """x -> causal single-head attention -> last position -> classifier; fused (SDPA) or written out."""

    def __init__(self, dim=6, classes=3, fused=True):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.head = nn.Linear(dim, classes)
        self.fused = fused

    def forward(self, x):
        q, k, v = self.q(x), self.k(x), self.v(x)
        if self.fused:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            t = x.shape[1]
            scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
            scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            o = torch.softmax(scores, dim=-1) @ v
        return self.head(o[:, -1])


def one_head_reference(model: OneHead, x, target, constant_attention: bool):
    """AttnLRP (or CP-LRP) of OneHead with every epsilon 0, written out with einsums."""
    wq, wk, wv = model.q.weight, model.k.weight, model.v.weight
    wc, bc = model.head.weight, model.head.bias
    q, k, v = x @ wq.T, x @ wk.T, x @ wv.T
    t = x.shape[1]
    raw = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    blocked = torch.ones(t, t, dtype=torch.bool).triu(1)
    a = torch.softmax(raw.masked_fill(blocked, float("-inf")), -1)
    o = a @ v
    h = o[:, -1]
    logits = h @ wc.T + bc
    r_logits = torch.zeros_like(logits).scatter(1, target[:, None], logits.gather(1, target[:, None]))
    r_h = h * ((r_logits / logits) @ wc)
    r_o = torch.zeros_like(o)
    r_o[:, -1] = r_h
    n = 1 if constant_attention else 2
    r_v = v * torch.einsum("bij,bik->bjk", a, r_o / (n * o))
    r_x = x * ((r_v / v) @ wv)
    if not constant_attention:
        r_a = a * torch.einsum("bik,bjk->bij", r_o / (2 * o), v)
        r_s = torch.where(blocked, torch.zeros_like(raw), raw * (r_a - a * r_a.sum(-1, keepdim=True)))
        qk = q @ k.transpose(-2, -1)
        share = r_s / (2 * qk)  # the 1/sqrt(d) scaling passes relevance unchanged
        r_q = q * (share @ k)
        r_k = k * (share.transpose(-2, -1) @ q)
        r_x = r_x + x * ((r_q / q) @ wq) + x * ((r_k / k) @ wk)
    return r_x, logits


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "written-out"])
@pytest.mark.parametrize("composite", ["attnlrp", "cp-lrp"])
def test_attention_block_matches_a_hand_written_pass(fused, composite):
    model = OneHead(fused=fused).double().eval()
    x = torch.randn(2, 5, 6, dtype=D)
    target = torch.tensor([0, 2])
    rule = AttnLRP(epsilon=0.0) if composite == "attnlrp" else CPLRP(epsilon=0.0)
    e = lrpfx.Explainer(model, rule)(x, target=target)
    expected, logits = one_head_reference(model, x, target, constant_attention=composite == "cp-lrp")
    torch.testing.assert_close(e.output, logits, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e.relevance, expected, rtol=1e-9, atol=1e-12)


def test_grouped_query_attention_is_split_into_its_steps():
    class Grouped(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).sum((1, 2))

    q, k, v = torch.randn(2, 4, 5, 3, dtype=D), torch.randn(2, 2, 5, 3, dtype=D), torch.randn(2, 2, 5, 3, dtype=D)
    model = Grouped()
    e = lrpfx.Explainer(model, "attnlrp")((q, k, v), target=1)
    torch.testing.assert_close(e.output, model(q, k, v))
    program = lrpfx.export(model, (q, k, v), "attnlrp")
    kinds = {row.kind for row in program.rule_table()}
    assert {"softmax", "matmul"} <= kinds
    assert "scaled_dot_product_attention" not in program.code
