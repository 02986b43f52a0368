"""Vision-language models through the torch.export front-end: relevance on the pixels and the text tokens from
one call, for LLaVA, PaliGemma, Gemma 3, Idefics3 / SmolVLM, Qwen2-VL, Qwen2.5-VL and the two-tower SigLIP /
SigLIP 2, tiny random configs in float64 (tests/helpers/vlm_models.py).

Checked per model: the program's output is the model's; with CP-LRP at epsilon 0 and biases left out, pixel
relevance plus token relevance is the explained logit (LLaVA's CLIP tower also keeps a share on its class token,
a learned constant); the pixels get relevance (never a silent zero). On LLaVA with a bias-free ReLU projector,
the relevance crosses the projector and the patch embedding as gradient × input of those linear pieces (LRP-0's
theory), and the image positions of the token sequence hand their relevance to the projector unchanged.
Qwen-VL image grids are static values: another grid gets its own program. ``explain_generation`` on LLaVA's
generated tokens gives per token what one explanation of the cut sequence gives (batch 1, an axis LLaVA fixes).
"""
import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import CPLRP
from lrpfx.errors import InputError

transformers = pytest.importorskip("transformers")
from tests.helpers import vlm_models as vlm  # noqa: E402  (needs transformers)

pytestmark = pytest.mark.usefixtures("one_thread")

CONSERVING = CPLRP(epsilon=0.0, zero_bias=True)
B = vlm.B

MODELS = {
    "llava": vlm.llava, "paligemma": vlm.paligemma, "gemma3": vlm.gemma3, "idefics3": vlm.idefics3,
    "smolvlm": vlm.smolvlm, "qwen2_5_vl": vlm.qwen2_5_vl, "siglip": vlm.siglip,  # Qwen2-VL: the grid test
    "siglip2": vlm.siglip2,
}
TWO_TOWERS = {"siglip", "siglip2"}
FAST = {"llava", "paligemma", "siglip"}  # the others are marked slow (each export takes 10-20 s on 2 cores)


def model_output(model, x):
    with torch.no_grad():
        out = model(**x)
    if hasattr(out, "logits_per_image"):
        return out.logits_per_image
    return out.logits[:, -1]


def per_sample(r):
    """Relevance summed per sample; Qwen-VL's patches ``[images · patches, features]`` come image by image."""
    return r.reshape(B, -1).sum(1)


def class_token_share(e):
    """What reaches CLIP's class token (concatenated in front of the patch embeddings) stays there."""
    cat = next(r for k, r in e.intermediate.items() if k.startswith("cat") and r.dim() == 3 and r.shape[0] == B)
    return cat[:, 0].sum(-1)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in MODELS])
def test_pixels_and_tokens_carry_the_logit_with_cp_lrp(name):
    model, x = MODELS[name]()
    expected = model_output(model, x)
    # two towers: image i against text i; a language model: its top token (Gemma's token 0 has a zero logit)
    target = torch.arange(B) if name in TWO_TOWERS else expected.argmax(1)
    e = lrpfx.Explainer(model, CONSERVING)(x, target=target, intermediate=name == "llava")
    torch.testing.assert_close(e.output, expected, rtol=1e-10, atol=1e-12)
    logit = e.output.gather(1, target[:, None]).squeeze(1)

    pixels = e.inputs["pixel_values"]
    assert pixels.shape == x["pixel_values"].shape
    assert e.tokens.shape == x["input_ids"].shape
    assert e.relevance.shape[:2] == x["input_ids"].shape  # at the embedding output: [B, T, H]
    assert (pixels != 0).float().mean() > 0.9, "relevance must reach every pixel"
    assert per_sample(pixels.abs()).min() > 1e-3 * logit.abs().max()

    total = e.tokens.sum(1) + per_sample(pixels)
    if name == "llava":
        total = total + class_token_share(e)
    torch.testing.assert_close(total, logit, rtol=1e-6, atol=1e-10)
    if name not in TWO_TOWERS:  # the image positions' embeddings are overwritten by the image features
        image = x["input_ids"] == vlm.IMAGE_TOKEN
        assert e.tokens[image].abs().max() == 0
        assert e.tokens[~image].abs().max() > 0


def _relevance_before(e, key):
    """The relevance at the node that runs just before ``key`` (the intermediate dict is in execution order)."""
    names = list(e.intermediate)
    return e.intermediate[names[names.index(key) - 1]]


def _lrp0_reference(layer, x, relevance_out):
    """LRP-0 through a bias-free piecewise-linear map: x ⊙ ∇ₓ Σ layer(x) · (R_out / layer(x))."""
    x = x.detach().clone().requires_grad_(True)
    y = layer(x)
    scale = (relevance_out / y).detach()
    (g,) = torch.autograd.grad((y * scale).sum(), x)
    return (g * x).detach()


def test_llava_relevance_crosses_projector_and_patch_embedding_as_gradient_times_input():
    model, x = vlm.llava(projector_act="relu", projector_bias=False)
    explainer = lrpfx.Explainer(model, CONSERVING)
    e = explainer(x, intermediate=True)
    built = list(explainer._cache.values())
    explainer(x, intermediate=True)  # the hooks Hugging Face installed while tracing do not renew the program
    assert list(explainer._cache.values()) == built
    inner = model.model
    projected = e.intermediate["model.multi_modal_projector.linear_2"]
    # the image positions of the sequence pass their relevance to the projector's output unchanged (a copy)
    image = x["input_ids"] == vlm.IMAGE_TOKEN
    torch.testing.assert_close(e.intermediate["masked_scatter"][image], projected.reshape(-1, projected.shape[-1]),
                               rtol=1e-10, atol=1e-14)
    # Linear -> ReLU -> Linear without biases: LRP-0 is gradient × input
    with torch.no_grad():
        features = inner.vision_tower(x["pixel_values"], output_hidden_states=True).hidden_states[-1]
    expected = _lrp0_reference(inner.multi_modal_projector, features, projected)
    got = _relevance_before(e, "model.multi_modal_projector.linear_1")
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10 * expected.abs().max())
    # the patch embedding (a bias-free convolution) to the pixels
    patches = e.intermediate["model.vision_tower.embeddings.patch_embedding"]
    expected = _lrp0_reference(inner.vision_tower.embeddings.patch_embedding, x["pixel_values"], patches)
    torch.testing.assert_close(e.inputs["pixel_values"], expected, rtol=1e-8, atol=1e-10 * expected.abs().max())


@pytest.mark.slow
def test_qwen2_vl_grid_is_static_a_new_grid_gets_its_own_program():
    model, x = vlm.qwen2_vl()
    # image 1 as 4 x 8 patches (8 tokens after the 2 x 2 merge): other split sizes, rotary positions, offsets
    wide = dict(x, image_grid_thw=torch.tensor([[1, 4, 4], [1, 4, 8]]))
    ids = vlm._token_ids(n_text=4, n_image=8, start=2)
    ids[:, 1] = 60
    ids[0, 6:10] = 5  # sample 0 keeps 4 image tokens
    wide.update(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(ids == vlm.IMAGE_TOKEN).int(),
                pixel_values=vlm._pixels(16 + 32, 96))
    # eager forwards first: Qwen2-VL stores its rope deltas on itself, a change that would renew the programs
    expected = model_output(model, wide)
    explainer = lrpfx.Explainer(model, CONSERVING)
    first = explainer(x)
    second = explainer(wide)
    assert len(explainer._cache) == 2
    torch.testing.assert_close(second.output, expected, rtol=1e-10, atol=1e-12)
    pixels = second.inputs["pixel_values"]
    totals = torch.stack([pixels[:16].sum(), pixels[16:].sum()]) + second.tokens.sum(1)
    torch.testing.assert_close(totals, second.output.gather(1, second.output.argmax(1, keepdim=True)).squeeze(1),
                               rtol=1e-6, atol=1e-10)
    again = explainer(x)  # the first grid's program serves the first grid again
    torch.testing.assert_close(again.relevance, first.relevance)
    assert len(explainer._cache) == 2


@pytest.mark.slow
def test_qwen2_vl_video_takes_the_same_path():
    model, _ = vlm.qwen2_vl()
    video = 62
    ids = vlm._token_ids(n_text=4, n_image=8, start=2)  # 2 x 4 x 4 patches merged 2 x 2: 8 video tokens
    ids[:, 1] = 60
    ids[ids == vlm.IMAGE_TOKEN] = video
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": vlm._pixels(2 * 32, 96),
         "video_grid_thw": torch.tensor([[2, 4, 4]] * B), "mm_token_type_ids": (ids == video).int() * 2}
    expected = model_output(model, x)
    target = expected.argmax(1)
    e = lrpfx.Explainer(model, CONSERVING)(x, target=target)
    torch.testing.assert_close(e.output, expected, rtol=1e-10, atol=1e-12)
    frames = per_sample(e.inputs["pixel_values_videos"])
    assert frames.abs().min() > 0
    torch.testing.assert_close(frames + e.tokens.sum(1), expected.gather(1, target[:, None])[:, 0], rtol=1e-6,
                               atol=1e-10)


def test_qwen2_vl_inputs_that_cannot_be_traced_get_clear_errors():
    model, x = vlm.qwen2_vl()
    with pytest.raises(InputError, match="mm_token_type_ids"):
        lrpfx.Explainer(model, CONSERVING)({k: v for k, v in x.items() if k != "mm_token_type_ids"})
    with pytest.raises(InputError, match=r"image_grid_thw must be an integer tensor \[images, 3\]"):
        lrpfx.Explainer(model, CONSERVING)(dict(x, image_grid_thw=x["image_grid_thw"].double()))


@pytest.mark.slow
def test_llava_explain_generation_gives_pixel_and_token_relevance_per_generated_token():
    """One sample: LLaVA splits its image features into a Python list per image, so export fixes the batch axis
    and the program must be recorded on batch 1 itself, not on a widened example."""
    model, x = vlm.llava()
    ids, mask, pixels = x["input_ids"][:1], x["attention_mask"][:1], x["pixel_values"][:1]
    res = lrpfx.explain_generation(model, ids, max_new_tokens=2, rule=CONSERVING, attention_mask=mask,
                                   inputs={"pixel_values": pixels})
    prompt = ids.shape[1]
    assert res.ids.shape == (1, prompt + 2) and res.matrix.shape == (1, 2, prompt + 2)
    per_token = res.input_relevance["pixel_values"]
    assert per_token.shape == (1, 2) + pixels.shape[1:]
    explainer = lrpfx.Explainer(model, CONSERVING)
    for k in range(2):  # generated token k, explained alone on the sequence that predicted it
        cut = res.ids[:, :prompt + k]
        one = explainer({"input_ids": cut, "attention_mask": torch.ones_like(cut), "pixel_values": pixels},
                        target=res.ids[:, prompt + k])
        torch.testing.assert_close(res.matrix[:, k, :prompt + k], one.tokens, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(per_token[:, k], one.inputs["pixel_values"], rtol=1e-9, atol=1e-12)
        assert per_token[:, k].abs().sum() > 0
        torch.testing.assert_close(res.target_logits[:, k], one.output.gather(1, res.ids[:, prompt + k, None])[:, 0])


class CroppedBySize(nn.Module):
    """Reads ``image_sizes`` as Python numbers, as LLaVA-NeXT's and OneVision's unpadding does."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, pixel_values, image_sizes):
        h, w = (int(v) for v in image_sizes[0])
        return self.head(pixel_values[:, :, :h, :w].mean((2, 3)))


def test_image_sizes_are_fixed_options_and_each_size_gets_its_own_program():
    model = CroppedBySize().double()
    pixels = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    explainer = lrpfx.Explainer(model, "zero", frontend="export")
    for h, w in ((4, 6), (8, 3)):
        x = {"pixel_values": pixels, "image_sizes": torch.tensor([[h, w]] * 2)}
        e = explainer(x, target=0)
        r = e.inputs["pixel_values"]
        reference = pixels.clone().requires_grad_()
        (grad,) = torch.autograd.grad(model(reference, x["image_sizes"])[:, 0].sum(), reference)
        torch.testing.assert_close(r, grad * pixels, rtol=1e-12, atol=1e-14)  # LRP-0 of a linear map
        outside = torch.ones(8, 8, dtype=torch.bool)
        outside[:h, :w] = False
        assert r[:, :, outside].abs().max() == 0 and r[:, :, :h, :w].abs().min() > 0
    with pytest.raises(InputError, match=r"image_sizes must be an integer tensor \[images, 2\]"):
        explainer({"pixel_values": pixels, "image_sizes": torch.tensor([[1, 4, 6]] * 2)}, target=0)
