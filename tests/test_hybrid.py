"""MambaLRP on the hybrid families: Mamba2-style mixers (state-space duality), Gated DeltaNet, RWKV.

``rule="auto"`` must pick MambaLRP from what the graph computes (a scan's step sizes, keys, normalised
weights), and the rule must be what docs/hybrid.md derives: with the scan's parameters held, the layer is linear
in its signal, so the relevance is gradient × input of the model with those values detached (and the identity on
SiLU, the normalisers held, gates split half-half). The references below are written as recurrences, step by
step, while the models compute chunked forms: they agree only if exactly the parameters are held.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lrpfx

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model):
    """Every parameter matters (norms near 1, decays and steps moderate), float64."""
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model.double().eval()


def _pass(f, x):
    """``f(x)`` whose gradient × input is ``f(x)`` itself: the identity rule as a modified backward."""
    return x * (f(x) / torch.where(x == 0, torch.ones_like(x), x)).detach()


def _half(a, b):
    """``a · b`` with the product's relevance split half-half between the factors."""
    return 0.5 * (a * b.detach()) + 0.5 * (a.detach() * b)


def _rms(x, eps, weight=None):
    """RMS normalisation with the normaliser held constant."""
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps).detach()
    return x if weight is None else weight * x


def _relevance_of(model, forward, ids):
    """Gradient × input at the embedding output of ``forward`` (the modified model), for the top logit."""
    emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    logits = forward(emb)[:, -1]
    (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(-1, keepdim=True)).sum(), emb)
    return grad * emb, logits


def _explain_auto(model, ids, caplog):
    with caplog.at_level("INFO", logger="lrpfx"):
        e = lrpfx.Explainer(model)({"input_ids": ids})
    assert "using 'mamba-lrp'" in caplog.text
    return e


def _check(e, reference, logits, name, tol):
    """The reference computes the model's logits; the relevance equals it and is conserved (no biases, ε = 0);
    ``tol``: the models compute their norms and scans in float32."""
    assert ((e.output.double() - logits.detach()).abs().max() / logits.abs().max()) < tol
    err = ((e.relevance - reference).abs().max() / reference.abs().max()).item()
    top = e.output.max(1).values
    conservation = ((e.tokens.sum(1) - top).abs() / top.abs()).max().item()
    print(f"\n[{name}] vs recurrent reference: {err:.1e}, conservation: {conservation:.1e}")
    assert err < tol
    assert conservation < tol


# ---- Mamba2 (state-space duality) --------------------------------------------------------------------------------
def tiny_mamba2():
    config = transformers.Mamba2Config(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=1, expand=2,
                                       head_dim=4, num_heads=8, n_groups=1, conv_kernel=3, chunk_size=4,
                                       use_bias=False, use_conv_bias=False)
    torch.manual_seed(0)
    return _randomise(transformers.Mamba2ForCausalLM(config))


def _ssd_mixer(m, h):
    """Mamba2's mixer as a recurrence, with Δ, B, C held: ``S_t = exp(Δ_t A) S_{t-1} + Δ_t x_t B_tᵀ``,
    ``y_t = S_t C_t + D x_t``."""
    batch, steps, _ = h.shape
    gate, xbc, dt = m.in_proj(h).split([m.intermediate_size, m.conv_dim, m.num_heads], dim=-1)
    xbc = _pass(F.silu, m.conv1d(xbc.transpose(1, 2))[..., :steps]).transpose(1, 2)
    x, B, C = xbc.split([m.intermediate_size, m.ssm_state_size, m.ssm_state_size], dim=-1)
    B, C = B.detach(), C.detach()
    dt = F.softplus(dt + m.dt_bias).detach()
    A = -torch.exp(m.A_log)
    x = x.reshape(batch, steps, m.num_heads, m.head_dim)
    state = x.new_zeros(batch, m.num_heads, m.head_dim, m.ssm_state_size)
    ys = []
    for t in range(steps):
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]
        state = decay * state + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]
        ys.append(state @ C[:, t, None, :, None])
    y = torch.stack(ys, 1)[..., 0] + m.D[:, None] * x
    y = _half(y.reshape(batch, steps, -1), _pass(F.silu, gate))
    return m.out_proj(_rms(y, m.norm.variance_epsilon, m.norm.weight))


def test_mamba2_is_gradient_times_input_with_delta_b_c_held(caplog):
    model, ids = tiny_mamba2(), torch.randint(0, 50, (2, 7))  # two chunks of 4

    def forward(h):
        for block in model.backbone.layers:
            h = h + _ssd_mixer(block.mixer, _rms(h, block.norm.variance_epsilon, block.norm.weight))
        return model.lm_head(_rms(h, model.backbone.norm_f.variance_epsilon, model.backbone.norm_f.weight))

    reference, logits = _relevance_of(model, forward, ids)
    _check(_explain_auto(model, ids, caplog), reference, logits, "mamba2", 1e-5)


# ---- Gated DeltaNet (Qwen3.5's linear attention) -----------------------------------------------------------------
def tiny_qwen3_5():
    config = transformers.Qwen3_5TextConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                            linear_conv_kernel_dim=3, linear_key_head_dim=4, linear_value_head_dim=4,
                                            linear_num_key_heads=2, linear_num_value_heads=4,
                                            layer_types=["linear_attention"])
    torch.manual_seed(0)
    return _randomise(transformers.Qwen3_5ForCausalLM(config))


def _delta_mixer(m, h):
    """Gated DeltaNet as a recurrence, with q, k, β and the decay g held:
    ``S_t = exp(g_t) S_{t-1} + β_t k_t (v_t − S_{t-1}ᵀ k_t exp(g_t))ᵀ``, ``o_t = S_tᵀ q_t``."""
    batch, steps, _ = h.shape
    qkv = _pass(F.silu, m.conv1d(m.in_proj_qkv(h).transpose(1, 2))[..., :steps]).transpose(1, 2)
    q, k, v = qkv.split([m.key_dim, m.key_dim, m.value_dim], dim=-1)
    repeat = m.num_v_heads // m.num_k_heads
    q, k = (t.detach().reshape(batch, steps, -1, m.head_k_dim).repeat_interleave(repeat, 2) for t in (q, k))
    q, k = (t * torch.rsqrt((t * t).sum(-1, keepdim=True) + 1e-6) for t in (q, k))
    q = q / m.head_k_dim ** 0.5
    v = v.reshape(batch, steps, -1, m.head_v_dim)
    beta = m.in_proj_b(h).sigmoid().detach()
    g = (-m.A_log.exp() * F.softplus(m.in_proj_a(h) + m.dt_bias)).detach()
    state = v.new_zeros(batch, m.num_v_heads, m.head_k_dim, m.head_v_dim)
    outputs = []
    for t in range(steps):
        state = state * torch.exp(g[:, t])[..., None, None]
        remembered = (state * k[:, t, ..., None]).sum(-2)
        state = state + k[:, t, ..., None] * ((v[:, t] - remembered) * beta[:, t, :, None])[..., None, :]
        outputs.append((state * q[:, t, ..., None]).sum(-2))
    o = _rms(torch.stack(outputs, 1), m.norm.variance_epsilon, m.norm.weight)
    o = _half(o, _pass(F.silu, m.in_proj_z(h).reshape(batch, steps, -1, m.head_v_dim)))
    return m.out_proj(o.reshape(batch, steps, -1))


def _swiglu(mlp, h):
    return mlp.down_proj(_half(_pass(F.silu, mlp.gate_proj(h)), mlp.up_proj(h)))


def _zero_centred(norm, h):
    return _rms(h, norm.eps, 1 + norm.weight)


@pytest.mark.slow
def test_gated_deltanet_is_gradient_times_input_with_q_k_beta_g_held(caplog):
    model, ids = tiny_qwen3_5(), torch.randint(0, 50, (2, 6))

    def forward(h):
        for layer in model.model.layers:
            h = h + _delta_mixer(layer.linear_attn, _zero_centred(layer.input_layernorm, h))
            h = h + _swiglu(layer.mlp, _zero_centred(layer.post_attention_layernorm, h))
        return model.lm_head(_zero_centred(model.model.norm, h))

    reference, logits = _relevance_of(model, forward, ids)
    _check(_explain_auto(model, ids, caplog), reference, logits, "gated deltanet", 1e-5)


# ---- the other families: one mixer layer each, chosen by rule="auto" ---------------------------------------------
def _ssd_config(cls, layers=1, **extra):
    """Mamba2-style mixer settings shared by Falcon-H1 and Granite 4 (no biases)."""
    return cls(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
               num_key_value_heads=1, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=4,
               mamba_d_conv=3, mamba_expand=2, mamba_chunk_size=4, mamba_conv_bias=False, **extra)


FAMILIES = {
    # Bamba's and Zamba2's mixers are transformers' subclasses of Mamba2's: one mixer layer, no biases, conserving
    "bamba": lambda: transformers.BambaForCausalLM(_ssd_config(transformers.BambaConfig, attn_layer_indices=[])),
    "zamba2": lambda: transformers.Zamba2ForCausalLM(transformers.Zamba2Config(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, mamba_d_state=4, mamba_d_conv=3, mamba_expand=2, mamba_headdim=8, n_mamba_heads=4,
        mamba_ngroups=1, chunk_size=4, layers_block_type=["mamba"], use_mem_rope=False, add_bias_linear=False)),
    # Granite 4 with no attention layer fails in transformers itself (its cache looks for one): two layers
    "granite-4": lambda: transformers.GraniteMoeHybridForCausalLM(_ssd_config(
        transformers.GraniteMoeHybridConfig, layers=2, layer_types=["mamba", "attention"], num_local_experts=2,
        num_experts_per_tok=1, shared_intermediate_size=16)),
    # every Falcon-H1 layer runs attention beside its mixer: the softmax rule does not conserve
    "falcon-h1": lambda: transformers.FalconH1ForCausalLM(_ssd_config(transformers.FalconH1Config, mamba_d_ssm=32)),
    # Qwen3-Next: Gated DeltaNet (as Qwen3.5's) with experts; one linear-attention layer (about a minute to export)
    "qwen3-next": lambda: transformers.Qwen3NextForCausalLM(transformers.Qwen3NextConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, linear_conv_kernel_dim=3, linear_key_head_dim=4, linear_value_head_dim=4,
        linear_num_key_heads=2, linear_num_value_heads=4, layer_types=["linear_attention"], num_experts=2,
        num_experts_per_tok=1, moe_intermediate_size=16, shared_expert_intermediate_size=16, decoder_sparse_step=1)),
    # RWKV's WKV: exp weights less a running maximum, normalised (two layers: its initialisation needs them)
    "rwkv": lambda: transformers.RwkvForCausalLM(transformers.RwkvConfig(
        vocab_size=50, context_length=16, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16,
        intermediate_size=32)),
}
CONSERVING = {"rwkv", "bamba", "zamba2", "qwen3-next"}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_hybrid_families_are_explained_with_their_scans_held(family, caplog):
    torch.manual_seed(0)
    model = _randomise(FAMILIES[family]())
    with torch.no_grad():  # no biases (RWKV's layer norms have them); Δ's is inside a held value
        for name, p in model.named_parameters():
            if name.endswith("bias") and not name.endswith("dt_bias"):
                p.zero_()
    model.config._experts_implementation = "batched_mm"  # the experts' code path torch.export can record
    ids = torch.randint(0, 50, (2, 6))
    e = _explain_auto(model, ids, caplog)
    with torch.no_grad():
        logits = model(ids, use_cache=False).logits[:, -1]
    assert ((e.output.double() - logits).abs().max() / logits.abs().max()) < 1e-6
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    top = e.output.max(1).values
    conservation = ((e.tokens.sum(1) - top).abs() / top.abs()).max().item()
    print(f"\n[{family}] conservation: {conservation:.1e}")
    if family in CONSERVING:
        assert conservation < 1e-5  # no biases, epsilon 0; the mixers compute in float32


def _layer_norm_held(norm, h):
    """LayerNorm with its standard deviation held (NormIdentity)."""
    centred = h - h.mean(-1, keepdim=True)
    sigma = torch.sqrt(h.var(-1, keepdim=True, unbiased=False) + norm.eps).detach()
    return centred / sigma * norm.weight + norm.bias


def _mixed(module, x, mix):
    """RWKV's token shift: this step and the previous one mixed by a constant (a linear map)."""
    return x * mix + module.time_shift(x) * (1 - mix)


def _wkv_held(att, key, value):
    """RWKV's WKV as the model computes it, with the exponential weights (and the running maximum) held: a
    weighted average of the values with constant weights, linear in the values; the keys get no relevance."""
    num = den = key.new_zeros(key[:, 0].shape, dtype=torch.float32)
    top = num - 1e38
    decay, first = -torch.exp(att.time_decay), att.time_first
    out = []
    for t in range(key.shape[1]):
        k, v = key[:, t].float().detach(), value[:, t]
        top_out = torch.maximum(top, k + first)
        e1, e2 = torch.exp(top - top_out).detach(), torch.exp(k + first - top_out).detach()
        out.append((e1 * num + e2 * v) / (e1 * den + e2).detach())
        top_state = torch.maximum(top + decay, k)
        e1, e2 = torch.exp(top + decay - top_state).detach(), torch.exp(k - top_state).detach()
        num, den, top = e1 * num + e2 * v, (e1 * den + e2).detach(), top_state.detach()
    return torch.stack(out, 1).to(value.dtype)


def test_rwkv_is_gradient_times_input_with_its_weights_held(caplog):
    torch.manual_seed(0)
    model, ids = _randomise(FAMILIES["rwkv"]()), torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()

    def forward(h):
        for i, block in enumerate(model.rwkv.blocks):
            if i == 0:
                h = _layer_norm_held(block.pre_ln, h)
            att, ffn = block.attention, block.feed_forward
            x = _layer_norm_held(block.ln1, h)
            key, value = att.key(_mixed(att, x, att.time_mix_key)), att.value(_mixed(att, x, att.time_mix_value))
            gate = _pass(torch.sigmoid, att.receptance(_mixed(att, x, att.time_mix_receptance)))
            h = h + att.output(_half(gate, _wkv_held(att, key, value)))
            x = _layer_norm_held(block.ln2, h)
            hidden = _pass(torch.square, _pass(F.relu, ffn.key(_mixed(ffn, x, ffn.time_mix_key))))
            gate = _pass(torch.sigmoid, ffn.receptance(_mixed(ffn, x, ffn.time_mix_receptance)))
            h = h + _half(gate, ffn.value(hidden))
        return model.head(_layer_norm_held(model.rwkv.ln_out, h))

    reference, logits = _relevance_of(model, forward, ids)
    _check(_explain_auto(model, ids, caplog), reference, logits, "rwkv", 1e-5)


def test_without_mamba_lrp_the_rwkv_weights_are_refused_by_name():
    """Another composite does not hold the recurrence's parameters: its exp is named, never explained silently."""
    torch.manual_seed(0)
    model, ids = _randomise(FAMILIES["rwkv"]()), torch.randint(0, 50, (1, 5))
    with pytest.raises(lrpfx.UnsupportedOpError, match="node 'exp_1'.*modeling_rwkv.py.*rule='mamba-lrp'"):
        lrpfx.Explainer(model, "attnlrp")({"input_ids": ids})


def test_lfm2_short_convolutions_are_gates_under_attnlrp(caplog):
    """LFM2's convolution block ``C ⊙ conv(B ⊙ x)`` has no recurrence: its products are gates AttnLRP splits
    half-half, and without biases the relevance is conserved."""
    config = transformers.Lfm2Config(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, layer_types=["conv"],
                                     block_auto_adjust_ff_dim=False)
    torch.manual_seed(0)
    model, ids = _randomise(transformers.Lfm2ForCausalLM(config)), torch.randint(0, 50, (2, 6))
    with caplog.at_level("INFO", logger="lrpfx"):
        e = lrpfx.Explainer(model)({"input_ids": ids})
    assert "using 'attnlrp'" in caplog.text
    top = e.output.max(1).values
    conservation = ((e.tokens.sum(1) - top).abs() / top.abs()).max().item()
    print(f"\n[lfm2] conservation: {conservation:.1e}")
    assert conservation < 1e-9


def test_auto_needs_a_scan_not_just_an_exp():
    """An exp of an activation alone is not a scan: such a model keeps its default preset, which refuses the exp
    by name; a scan's step size, keys or normalised weights choose MambaLRP."""
    from lrpfx.composites import choose_preset
    from lrpfx.graph import scans
    from lrpfx.kinds import Kind

    class Exponential(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.out = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.exp(self.fc(x)))

    with pytest.raises(lrpfx.UnsupportedOpError, match="exp"):
        lrpfx.explain(Exponential().eval(), torch.randn(3, 4))
    kinds = [Kind.LINEAR, Kind.MATMUL]
    assert choose_preset(kinds, [], [scans.DECAY])[0] == "epsilon"
    for part in (scans.STEP, scans.KEY, scans.WEIGHT):
        assert choose_preset(kinds, [], [scans.DECAY, part])[0] == "mamba-lrp"


def test_minimax_lightning_attention_is_bilinear_under_attnlrp(caplog):
    """MiniMax's lightning attention is linear attention with fixed per-head decays (constants): its products of
    activations (q·kᵀ, then with v) take AttnLRP's bilinear rule, its output gate the half split; without biases
    and with only linear-attention layers the relevance is conserved."""
    config = transformers.MiniMaxConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=8, num_local_experts=2,
                                        num_experts_per_tok=1, layer_types=["linear_attention"], block_size=4)
    torch.manual_seed(0)
    model = _randomise(transformers.MiniMaxForCausalLM(config))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    model.config._experts_implementation = "batched_mm"
    ids = torch.randint(0, 50, (2, 6))
    with caplog.at_level("INFO", logger="lrpfx"):
        explainer = lrpfx.Explainer(model)
        e = explainer({"input_ids": ids})
    assert "using 'attnlrp'" in caplog.text
    kinds = {row.kind.value: row.rule for row in explainer.program({"input_ids": ids}).rule_table()}
    assert kinds["matmul"].startswith("MatmulUniform")
    top = e.output.max(1).values
    conservation = ((e.tokens.sum(1) - top).abs() / top.abs()).max().item()
    print(f"\n[minimax] conservation: {conservation:.1e}")
    assert conservation < 1e-10
