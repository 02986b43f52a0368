"""BiLRP (lrpfx.bilrp, Eberle et al. 2022): pair relevances of a similarity of embeddings.

Checked, float64: equal to a loop over embedding dimensions, one explanation per dimension (1e-8 relative), with
several chunks; on a bias-free linear embedding equal to the closed form ``a_i (WᵀW)_ij b_j``; under LRP-0 on a
bias-free ReLU network the pair relevances sum to the similarity ``⟨φ(a), φ(b)⟩`` (conservation).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx

pytestmark = pytest.mark.usefixtures("one_thread")


def embedding(dims=16, bias=False):
    torch.manual_seed(7)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 12, bias=bias), nn.ReLU(), nn.Linear(12, dims, bias=bias)).double().eval()


def images(n, seed):
    return torch.randn(n, 2, 4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loop_reference(model, a, b, rule):
    """Σ_d R_d(a) ⊗ R_d(b), one explanation of each embedding dimension at a time (start: the dimension's value)."""
    explainer = lrpfx.Explainer(model, rule)
    dims = model(a).shape[1]
    total = 0
    for d in range(dims):
        ra = explainer(a, target=d).relevance.flatten(1)
        rb = explainer(b, target=d).relevance.flatten(1)
        total = total + ra[:, :, None] * rb[:, None, :]
    return total


@pytest.mark.parametrize("rule", ["zero", "epsilon-plus-flat"])
def test_bilrp_equals_a_loop_over_dimensions(rule):
    model, a, b = embedding(bias=True), images(3, 1), images(3, 2)
    ours = lrpfx.bilrp(model, a, b, rule=rule, chunk=6)  # 16 dimensions in chunks of 6, 6 and 4
    reference = loop_reference(model, a, b, rule)
    assert ours.shape == (3, 2, 4, 4, 2, 4, 4)
    assert (ours.flatten(1, 3).flatten(2) - reference).abs().max() <= 1e-8 * reference.abs().max()


def test_bilrp_of_a_linear_embedding_is_the_closed_form():
    torch.manual_seed(8)
    model = nn.Linear(5, 7, bias=False).double().eval()
    a, b = torch.randn(2, 5, dtype=torch.float64), torch.randn(2, 5, dtype=torch.float64)
    w = model.weight
    reference = a[:, :, None] * (w.T @ w)[None] * b[:, None, :]
    ours = lrpfx.bilrp(model, a, b, rule="zero")
    assert (ours - reference).abs().max() <= 1e-12 * reference.abs().max()


def test_pair_relevance_sums_to_the_similarity():
    model, a, b = embedding(), images(4, 3), images(4, 4)
    pairs = lrpfx.bilrp(model, a, b, rule="zero", pool=lambda r: r.sum(2))  # channels summed: [B, 4, 4, 4, 4]
    similarity = (model(a) * model(b)).sum(1)
    assert pairs.shape == (4, 4, 4, 4, 4)
    assert (pairs.flatten(1).sum(1) - similarity).abs().max() <= 1e-10 * similarity.abs().max()


def test_bilrp_refuses_mismatched_pairs():
    model = embedding()
    with pytest.raises(lrpfx.InputError, match="same number of samples"):
        lrpfx.bilrp(model, images(2, 1), images(3, 2))


def tiny_clip():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    tower = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config = transformers.CLIPConfig(text_config={**tower, "vocab_size": 30, "max_position_embeddings": 8},
                                     vision_config={**tower, "image_size": 8, "patch_size": 4}, projection_dim=6)
    return transformers.CLIPModel(config).double().eval()


def test_two_towers_image_and_text_equal_a_loop_over_dimensions():
    """CLIP's image-text similarity by pairs of (pixel, token): each tower explained per embedding dimension in a
    loop, token relevance summed over the hidden axis, paired, summed over dimensions."""
    clip = tiny_clip()
    from lrpfx.bilrp import Tower
    image, text = Tower(clip, "get_image_features"), Tower(clip, "get_text_features")
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    tokens = {"input_ids": torch.randint(1, 30, (2, 5), generator=torch.Generator().manual_seed(2))}
    ours = lrpfx.bilrp(image, pixels, tokens, rule="attnlrp", model_b=text, chunk=4,
                       pool=(lambda r: r.sum(2), None))  # pixels: channels summed; tokens: hidden summed (default)
    ea, eb = lrpfx.Explainer(image, "attnlrp"), lrpfx.Explainer(text, "attnlrp")
    reference = 0
    for d in range(6):
        ra = ea(pixels, target=d).relevance.sum(1).flatten(1)
        rb = eb(tokens, target=d).relevance.sum(-1)
        reference = reference + ra[:, :, None] * rb[:, None, :]
    assert ours.shape == (2, 8, 8, 5)
    assert reference.abs().max() > 0
    assert (ours.flatten(1, 2) - reference).abs().max() <= 1e-8 * reference.abs().max()


def test_towers_of_different_sizes_and_missing_methods_are_refused():
    with pytest.raises(lrpfx.InputError, match="different sizes"):
        lrpfx.bilrp(embedding(dims=16), images(2, 1), images(2, 2), model_b=embedding(dims=8))
    with pytest.raises(lrpfx.InputError, match="no method"):
        from lrpfx.bilrp import Tower
        Tower(embedding(), "get_text_features")
