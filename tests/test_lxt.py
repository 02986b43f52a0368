"""Equivalence with LXT 2.1 (AttnLRP, efficient mode) on tiny random transformers in float64.

LXT needs transformers 4.52.4, so it runs in a side venv (``tests/helpers/lxt_env.py``) through
``tests/helpers/lxt_reference.py``; the model is built here with the installed transformers and handed over as
config + state dict. The tests fail when that environment cannot be built (it needs pip access once).
Run ``pytest tests/test_lxt.py -s`` to see the numbers.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from tests.helpers.lxt_env import lxt_python, lxt_unavailable_reason

transformers = pytest.importorskip("transformers")

REFERENCE = Path(__file__).with_name("helpers") / "lxt_reference.py"
B, T = 2, 6
TOLERANCE = 1e-4

_TINY = dict(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def tiny_model(family: str):
    """A tiny float64 model of the family with every parameter randomised, so biases and norm weights matter."""
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_TINY, num_key_value_heads=2))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_TINY, num_key_value_heads=2))
    elif family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=64))
    elif family == "bert":
        model = transformers.BertForSequenceClassification(transformers.BertConfig(**_TINY, num_labels=3))
    elif family == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**_TINY, num_key_value_heads=2, head_dim=8))
    elif family == "gemma3":
        model = transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
            **_TINY, num_key_value_heads=2, head_dim=8, sliding_window=4, max_position_embeddings=64))
    else:
        raise ValueError(family)
    with torch.no_grad():
        for name, p in model.named_parameters():
            # norm scales near 1 (as trained), everything else O(0.1..0.3) so no term vanishes
            is_norm_scale = p.dim() == 1 and ("norm" in name.lower() or ".ln_" in name) and "bias" not in name
            p.copy_(1 + 0.1 * torch.randn_like(p) if is_norm_scale else 0.2 * torch.randn_like(p))
    return model.double().eval()


def inputs(family: str, masked: bool):
    ids = torch.randint(1, 50, (B, T))
    if not masked:
        return ids, None
    mask = torch.ones(B, T, dtype=torch.long)
    if family == "bert":
        mask[0, -2:] = 0  # right padding
    else:
        mask[0, :2] = 0  # left padding, as a decoder batch is padded
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


def explained_output(family, model, ids, mask):
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    return logits if family == "bert" else logits[:, -1, :]


FAMILIES = ["llama", "bert", "qwen2", "gpt2", "qwen3", "gemma3"]
CASES = [(family, masked) for family in FAMILIES for masked in (False, True)]


def make_case(family: str, masked: bool) -> dict:
    torch.manual_seed(0)
    model = tiny_model(family)
    ids, mask = inputs(family, masked)
    output = explained_output(family, model, ids, mask)
    return {"model": model, "ids": ids, "mask": mask, "output": output, "target": output.argmax(-1)}


def run_reference(python: str, tmp_path: Path, cases: list) -> list:
    """All cases in one reference run: starting transformers 4.52.4 + LXT costs ~15 s per interpreter."""
    specs = [{"family": family, "config": c["model"].config.to_dict(), "state_dict": c["model"].state_dict(),
              "input_ids": c["ids"], "attention_mask": c["mask"], "target": c["target"], "dtype": "float64"}
             for (family, _), c in cases]
    torch.save(specs, tmp_path / "in.pt")
    proc = subprocess.run([python, str(REFERENCE), str(tmp_path / "in.pt"), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"LXT reference failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return torch.load(tmp_path / "out.pt", weights_only=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    python = lxt_python()
    if python is None:  # the reference is part of the suite: an environment that cannot be built is a failure
        pytest.fail(f"{lxt_unavailable_reason()} (set LRPFX_SIDE_ENV_DIR to a writable folder; needs pip access)")
    cases = [(key, make_case(*key)) for key in CASES]
    results = run_reference(python, tmp_path_factory.mktemp("lxt"), cases)
    return {key: (case, result) for (key, case), result in zip(cases, results)}


def rel_err(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "padded"])
@pytest.mark.parametrize("family", FAMILIES)
def test_attnlrp_matches_lxt(family, masked, reference):
    case, ref = reference[family, masked]
    assert "error" not in ref, ref.get("error")
    model, ids, mask, target = case["model"], case["ids"], case["mask"], case["target"]

    # the same weights under transformers 4.52.4 must compute the same function, else nothing below means much
    model_err = rel_err(case["output"], ref["output"])
    assert model_err < 1e-6, f"{family}: 4.52.4 and {transformers.__version__} models disagree ({model_err:.2e})"

    import lrpfx

    batch = {"input_ids": ids} if mask is None else {"input_ids": ids, "attention_mask": mask}
    ref_rel = ref["relevance"]
    # LXT's efficient mode is gradient x input: every linear/matmul/add is the epsilon rule with epsilon 0, which
    # is the "attnlrp" preset's default (a preset named after a reference reproduces it)
    e = lrpfx.Explainer(model, "attnlrp")(batch, target=target)
    err = rel_err(e.relevance, ref_rel)
    tok_err = rel_err(e.tokens, ref_rel.sum(-1))
    out_err = rel_err(e.output, ref["output"])
    ratio = (ref_rel.sum((1, 2)) / ref["selected"]).tolist()
    print(f"\n[lxt] {family:5s} {'padded' if masked else 'nomask'}: relevance rel.err {err:.2e}, "
          f"tokens {tok_err:.2e}, output {out_err:.2e}; LXT sum(R)/logit = {[round(r, 4) for r in ratio]}")
    assert e.relevance.shape == ref_rel.shape
    assert out_err < 1e-10
    assert err < TOLERANCE, f"{family}: max|r_lrpfx - r_lxt| / max|r_lxt| = {err:.2e}"
    assert tok_err < TOLERANCE
