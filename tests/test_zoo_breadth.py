"""Breadth zoo (the families of docs/architectures.md):
Hugging Face decoders (dense and mixture-of-experts), encoders, encoder-decoders,
vision, audio and two-tower models, timm CNNs and hybrid vision transformers, DenseNet and a pre-activation
ResNet, all from tiny random configurations in float64 (``tests/helpers/breadth_zoo.py``; ``bench/zoo.py`` prints the
table with build and call times).

Every model explains under ``CPLRP(epsilon=0, zero_bias=True)`` (Mamba under ``MambaLRP``'s): the relevance is
finite and not zero, and it sums to the explained logit wherever that holds in float64 (``NOT_CONSERVING`` names
the exceptions and why).
A model lrpfx cannot explain must fail with a named ``LrpfxError``, never with a silent answer.
"""
from __future__ import annotations

import pytest
import torch

import lrpfx
from lrpfx.composites import CPLRP

pytest.importorskip("transformers")
pytest.importorskip("timm")
try:
    from tests.helpers.breadth_zoo import NOT_CONSERVING, ZOO, explained_logit, text_inputs, total_relevance
except ImportError:  # tests/ imported as a package
    from tests.breadth_zoo import NOT_CONSERVING, ZOO, explained_logit, text_inputs, total_relevance

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-8
# models with mean and average pools: the composite's epsilon (0 here) reaches the pools too, so they conserve to 1e-12
EXACT = {"hf-beit": 1e-12, "hf-convnext": 1e-12, "hf-swin": 1e-12}
SLOW = {"hf-t5", "hf-bart", "hf-mixtral", "hf-qwen3-moe", "hf-llama", "hf-gemma", "hf-deberta-v2", "hf-clip",
        "timm-densenet121", "timm-efficientformer_l1", "timm-efficientformerv2_s0", "timm-maxvit_nano_rw",
        "timm-coatnet_nano_rw", "timm-mobilevit_xxs", "timm-efficientnet_b0", "tv-densenet121", "hf-mistral",
        "hf-phi3", "hf-gemma2", "timm-eva02_tiny", "timm-swin_tiny", "timm-fastvit_t8", "timm-repvit_m0_9"}


def zoo_params():
    return [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else [], id=n) for n in ZOO]


@pytest.mark.parametrize("name", zoo_params())
def test_every_zoo_model_explains(name):
    case = ZOO[name]()
    explanation = lrpfx.Explainer(case.model, case.composite(epsilon=0, zero_bias=True), **case.options)(case.inputs)
    relevances = [r for r in (explanation.inputs.values() if explanation.inputs else [explanation.relevance])
                  if r is not None]
    assert relevances and all(torch.isfinite(r).all() for r in relevances)
    assert all(r.abs().sum() > 0 for r in relevances), "an explained input got no relevance at all"
    if name in NOT_CONSERVING:
        return
    total = total_relevance(explanation, case.per_sample)
    logit = explained_logit(explanation, case.per_sample)
    error = ((total - logit).abs() / logit.abs()).max().item()
    assert error < EXACT.get(name, TOLERANCE), f"{name}: relevance sums to the logit only within {error:.2e}"


def test_data_dependent_experts_fail_by_name():
    """Mixtral's eager experts loop over the experts that tokens chose (a data-dependent Python loop): export
    cannot record it, and the error says where and what to do."""
    case = ZOO["hf-mixtral"]()
    case.model.config._experts_implementation = "eager"  # our own tiny model: choose its experts code path
    with pytest.raises(lrpfx.TraceError, match="data-dependent|leaf_modules"):
        lrpfx.Explainer(case.model, CPLRP(epsilon=0, zero_bias=True))(case.inputs)


@pytest.mark.slow
def test_grouped_and_batched_experts_give_the_same_relevance():
    """Transformers' two experts implementations spell one computation differently -- sorted rows through one
    grouped product per expert (lrpfx.rules.experts) or each row times its expert's matrix (a plain product with
    constant weights); the relevance must not depend on the spelling."""
    grouped, batched = ZOO["hf-qwen3-moe"](), ZOO["hf-qwen3-moe"]()
    batched.model.config._experts_implementation = "batched_mm"
    rule = CPLRP(epsilon=0, zero_bias=True)
    expected = lrpfx.Explainer(batched.model, rule)(batched.inputs).relevance
    torch.testing.assert_close(lrpfx.Explainer(grouped.model, rule)(grouped.inputs).relevance, expected,
                               rtol=1e-10, atol=1e-12 * expected.abs().max())


def test_export_serves_other_batch_sizes_without_a_new_program():
    """The batch axis stays dynamic for image inputs, while the image size is fixed (a new size: a new export)."""
    case = ZOO["hf-vit"]()
    explainer = lrpfx.Explainer(case.model, CPLRP(epsilon=0, zero_bias=True))
    explainer(case.inputs)
    three = {"pixel_values": torch.cat([case.inputs["pixel_values"], case.inputs["pixel_values"][:1]])}
    again = explainer(three)
    assert len(explainer._cache) == 1
    torch.testing.assert_close(again.relevance[:2], explainer(case.inputs).relevance, rtol=1e-12, atol=1e-14)


def test_text_length_stays_dynamic():
    case = ZOO["hf-gpt2"]()
    explainer = lrpfx.Explainer(case.model, "attnlrp")
    explainer(case.inputs)
    explainer(text_inputs(left_padding=True, length=11))
    assert len(explainer._cache) == 1
