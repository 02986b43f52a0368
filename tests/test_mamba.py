"""MambaLRP (Jafari et al., NeurIPS 2024) on Hugging Face's Mamba (its pure-PyTorch selective scan).

The rule set holds the scan's data-dependent parameters (Δ, B, C from ``x_proj``) constant, passes relevance
through SiLU, keeps RMSNorm's scale fixed and splits the gate ``y · silu(z)`` half-half. Two checks: conservation
with zero biases and epsilon 0, and the paper's statement that a token's relevance is gradient × input of the
modified backward — written out here independently, with the held values detached.
"""
from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx.composites import MambaLRP

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mamba(layers: int = 2, use_bias: bool = True):
    config = transformers.MambaConfig(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=layers,
                                      intermediate_size=32, conv_kernel=3, time_step_rank=4, use_bias=use_bias)
    torch.manual_seed(0)
    model = transformers.MambaForCausalLM(config).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # every parameter matters, norms near 1
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.3 * torch.randn_like(p))
    return model


def _pass(f, x):
    """``f(x)`` whose gradient × input is ``f(x)`` itself: the identity rule as a modified backward."""
    return x * (f(x) / torch.where(x == 0, torch.ones_like(x), x)).detach()


def _rms_norm(norm, h):
    x = h.to(torch.float32)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon).detach()
    return norm.weight * x.to(h.dtype)


def _mixer(m, h):
    T = h.shape[1]
    projected = m.in_proj(h).transpose(1, 2)
    x, gate = projected.chunk(2, dim=1)
    x = _pass(torch.nn.functional.silu, m.conv1d(x)[..., :T])
    ssm = m.x_proj(x.transpose(1, 2)).detach()  # Δ, B, C: held constant
    step, B, C = torch.split(ssm, [m.time_step_rank, m.ssm_state_size, m.ssm_state_size], dim=-1)
    dt = torch.nn.functional.softplus(m.dt_proj.weight @ step.transpose(1, 2) + m.dt_proj.bias[:, None])
    A = -torch.exp(m.A_log.float())
    dA = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    dBu = dt[:, :, :, None] * B[:, None, :, :] * x[:, :, :, None]
    state = torch.zeros(x.shape[0], x.shape[1], m.ssm_state_size, dtype=x.dtype)
    outputs = []
    for t in range(T):
        state = dA[:, :, t] * state + dBu[:, :, t]
        outputs.append((state @ C[:, t, :].unsqueeze(-1))[:, :, 0])
    y = torch.stack(outputs, dim=-1) + x * m.D[None, :, None]
    g = _pass(torch.nn.functional.silu, gate)
    y = 0.5 * (y * g.detach()) + 0.5 * (y.detach() * g)  # the gate: half to each factor
    return m.out_proj(y.transpose(1, 2))


def modified_backward_relevance(model, ids):
    """Gradient × input at the embedding output of the model with MambaLRP's held values detached."""
    emb = model.backbone.embeddings(ids).detach().requires_grad_(True)
    h = emb
    for block in model.backbone.layers:
        residual = h.to(torch.float32) if block.residual_in_fp32 else h
        h = residual + _mixer(block.mixer, _rms_norm(block.norm, h))
    logits = model.lm_head(_rms_norm(model.backbone.norm_f, h))[:, -1]
    target = logits.argmax(-1)
    (grad,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), emb)
    return grad * emb, logits


def test_the_modified_backward_reproduces_the_model():
    model, ids = tiny_mamba(), torch.randint(0, 50, (2, 7))
    _, logits = modified_backward_relevance(model, ids)
    with torch.no_grad():
        expected = model(ids).logits[:, -1]
    assert (logits - expected).abs().max() < 1e-5  # the model casts its norms to float32


def test_mamba_lrp_is_gradient_times_input_of_the_modified_backward():
    model, ids = tiny_mamba(), torch.randint(0, 50, (2, 7))
    e = lrpfx.Explainer(model, "mamba-lrp")({"input_ids": ids})
    reference, _ = modified_backward_relevance(model, ids)
    err = ((e.relevance - reference).abs().max() / reference.abs().max()).item()
    print(f"\n[mamba] MambaLRP vs modified-backward gradient x input: {err:.2e}")
    assert err < 1e-5


@pytest.mark.parametrize("padded", [False, True])
def test_mamba_lrp_conserves_with_zero_biases(padded):
    # Without projection biases, as Mamba checkpoints are: with them, the in-projection's bias at a padded
    # position is a value without any token's contribution, which the convolution mixes into the real positions
    model, ids = tiny_mamba(use_bias=not padded), torch.randint(1, 50, (2, 7))
    batch = {"input_ids": ids}
    if padded:
        mask = torch.ones_like(ids)
        mask[1, :2] = 0  # left padding
        batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    e = lrpfx.Explainer(model, MambaLRP(epsilon=0.0, zero_bias=True))(batch)
    logit = e.output.max(1).values
    err = ((e.tokens.sum(1) - logit).abs() / logit.abs()).max().item()
    print(f"\n[mamba] conservation ({'padded' if padded else 'unpadded'}): {err:.2e}")
    assert err < 1e-6
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    if padded:
        assert e.tokens[1, :2].abs().max() == 0  # padding gets nothing


def test_without_the_held_parameters_the_scan_is_refused_by_name():
    """Another composite does not know the scan: the exponential of Δ·A is named, never explained silently."""
    model, ids = tiny_mamba(1), torch.randint(0, 50, (1, 5))
    with pytest.raises(lrpfx.UnsupportedOpError, match="exp"):
        lrpfx.Explainer(model, "attnlrp")({"input_ids": ids})


def test_a_constants_pattern_that_matches_nothing_is_an_error():
    model, ids = tiny_mamba(1), torch.randint(0, 50, (1, 5))
    composite = lrpfx.Composite(linear="epsilon", constants=("*.xproj",))
    with pytest.raises(lrpfx.RuleError, match="'\\*.xproj' matches no node"):
        lrpfx.Explainer(model, composite)({"input_ids": ids})


# ---- Mamba2 and Jamba: the same principle on their Hugging Face implementations ---------------------------------
def tiny_mamba2():
    config = transformers.Mamba2Config(vocab_size=50, hidden_size=16, state_size=4, num_hidden_layers=2, expand=2,
                                       head_dim=4, num_heads=8, n_groups=1, conv_kernel=3, chunk_size=4,
                                       use_bias=False)
    torch.manual_seed(0)
    return transformers.Mamba2ForCausalLM(config).double().eval()


def tiny_jamba(attention: bool = True):
    """Two layers: Mamba then, with ``attention``, attention (else Mamba again); the second has the experts."""
    config = transformers.JambaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, num_experts=2,
                                      num_experts_per_tok=1, expert_layer_period=2, expert_layer_offset=1,
                                      attn_layer_period=2 if attention else 4, attn_layer_offset=1 if attention else 3,
                                      mamba_d_state=4,
                                      mamba_d_conv=3, mamba_expand=2, mamba_dt_rank=4, mamba_proj_bias=False)
    torch.manual_seed(0)
    return transformers.JambaForCausalLM(config).double().eval()


def _conservation_error(e) -> float:
    logit = e.output.max(1).values.double()
    return ((e.tokens.sum(1) - logit).abs() / logit.abs()).max().item()


@pytest.mark.slow
def test_mamba2_explains_with_its_decays_held_constant():
    """Mamba2's scan (state-space duality: chunked, written with einsum, tensor_split and exp of cumulative
    sums of Δ·A) is explained op by op: einsum as its Core ATen pieces, the decays ``exp(...)`` of Δ·A held
    constant as MambaLRP holds A̅ (Δ comes out of in_proj here, not out of an x_proj), so the cumulative sums
    only feed held values. With zero biases the relevance is conserved."""
    model, ids = tiny_mamba2(), torch.randint(0, 50, (2, 7))
    preset = MambaLRP(epsilon=0.0, zero_bias=True)
    composite = lrpfx.Composite(**{**preset.__dict__, "constants": preset.constants + ("exp_*",)})
    e = lrpfx.Explainer(model, composite)({"input_ids": ids})
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    err = _conservation_error(e)
    print(f"\n[mamba2] conservation: {err:.2e}")
    assert err < 1e-5  # the model computes its norms and the scan's dt in float32


@pytest.mark.slow
@pytest.mark.parametrize("attention", [False, True])
def test_jamba_explains_its_mamba_attention_and_expert_layers(attention):
    """Jamba's Mamba layers (with x_proj, as Mamba's) under MambaLRP, its experts with the router's weights held;
    conserving with zero biases where every rule is (AttnLRP's softmax step is not: there only finite, not zero)."""
    model, ids = tiny_jamba(attention), torch.randint(0, 50, (2, 7))
    e = lrpfx.Explainer(model, MambaLRP(epsilon=0.0, zero_bias=True))({"input_ids": ids})
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0
    if not attention:
        err = _conservation_error(e)
        print(f"\n[jamba] conservation: {err:.2e}")
        assert err < 1e-12
