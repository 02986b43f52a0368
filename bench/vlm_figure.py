"""The vision-language figure of the docs: one explanation of a tiny LLaVA, the image heatmap beside the prompt.

    python -m bench.vlm_figure                      # writes docs/vlm.png
    python -m bench.vlm_figure --out vlm.png --rule cp-lrp

The model is a LLaVA built from a tiny random config (CLIP vision tower 32 px / 8 px patches, two-layer
projector, two-layer LLaMA, a made-up 64-word vocabulary), seeded, float64; no weights are downloaded. With
random weights the heatmap shows how relevance is laid out over pixels and tokens, not what a trained model
looks at. The image is synthetic (a bright square and a disc on a dark background).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

WORDS = ["<pad>", "<s>", "what", "is", "in", "the", "picture", "?", "a", "red", "square", "and", "disc", "left",
         "right", "of", "describe", "image", "colour", "shape", "where", "it", "this", "there", "one", "two", "on",
         "dark", "bright", "background", "small", "large", ":"]
VOCAB, IMAGE_TOKEN, IMAGE_SIZE, PATCH = 64, 63, 32, 8
PROMPT = "<s> <image> describe the picture : where is the bright square ?"


def tiny_llava():
    import transformers
    torch.manual_seed(0)
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB)
    config = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                                      vision_feature_select_strategy="full", vision_feature_layer=-1)
    return transformers.LlavaForConditionalGeneration(config).double().eval()


def synthetic_image() -> torch.Tensor:
    """``[1, 3, 32, 32]``: a bright square (top left) and a disc (bottom right) on a zero background (a zero
    pixel takes no relevance: the patch embedding has no bias)."""
    y, x = torch.meshgrid(torch.arange(IMAGE_SIZE), torch.arange(IMAGE_SIZE), indexing="ij")
    image = torch.zeros((3, IMAGE_SIZE, IMAGE_SIZE), dtype=torch.float64)
    square = (y >= 4) & (y < 14) & (x >= 4) & (x < 14)
    disc = (y - 22) ** 2 + (x - 22) ** 2 < 36
    image[0][square], image[1][square], image[2][square] = 1.0, 0.2, -0.6
    image[:, disc] = 0.8
    return image[None]


def prompt_ids():
    """Token ids of :data:`PROMPT` with ``<image>`` spread over the image's 17 positions (16 patches and the class
    token), and the words to show per position."""
    n_image = (IMAGE_SIZE // PATCH) ** 2 + 1
    words, ids = [], []
    for word in PROMPT.split():
        if word == "<image>":
            words += ["<image>"] * n_image
            ids += [IMAGE_TOKEN] * n_image
        else:
            words.append(word)
            ids.append(WORDS.index(word))
    return torch.tensor([ids]), words


def explain(rule: str):
    import lrpfx
    model = tiny_llava()
    ids, words = prompt_ids()
    pixels = synthetic_image()
    e = lrpfx.Explainer(model, rule)({"input_ids": ids, "attention_mask": torch.ones_like(ids),
                                      "pixel_values": pixels})
    target = int(e.output.argmax(1))
    return pixels[0], e.inputs["pixel_values"][0], e.tokens[0], words, target, float(e.output[0, target])


def draw(pixels, pixel_relevance, token_relevance, words, target, logit, rule: str, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    heat = pixel_relevance.sum(0).numpy()
    bound = float(np.abs(heat).max()) or 1.0
    fig = plt.figure(figsize=(9.5, 3.6))
    ax_img = fig.add_axes([0.02, 0.30, 0.26, 0.6])
    ax_heat = fig.add_axes([0.30, 0.30, 0.26, 0.6])
    ax_text = fig.add_axes([0.58, 0.30, 0.40, 0.6])
    ax_img.imshow(pixels.permute(1, 2, 0).numpy().clip(0, 1))
    ax_img.set_title("image (synthetic)", fontsize=9)
    ax_heat.imshow(heat, cmap="bwr", norm=TwoSlopeNorm(0.0, -bound, bound))
    ax_heat.set_title("pixel relevance", fontsize=9)
    for ax in (ax_img, ax_heat, ax_text):
        ax.set_xticks([]), ax.set_yticks([])
    _draw_tokens(ax_text, token_relevance, words, plt.get_cmap("bwr"))
    ax_text.set_title("token relevance (colour: signed square root)", fontsize=9)
    fig.text(0.02, 0.06, f"Tiny LLaVA with RANDOM weights (CLIP 32 px + LLaMA), rule {rule}, explained: token "
                         f"{target} (logit {logit:.3f}), one call. Sums: pixels {float(pixel_relevance.sum()):.3f}, "
                         f"tokens {float(token_relevance.sum()):.3f}. The <image> positions take none (the image "
                         "features replace their embeddings). Random weights: the layout shows the mechanics, "
                         "not meaning.", fontsize=8, wrap=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _draw_tokens(ax, relevance, words, cmap) -> None:
    """The prompt as coloured word boxes, the 17 ``<image>`` positions folded into one box."""
    relevance = relevance.sign() * relevance.abs().sqrt()  # the explained position would outshine the rest
    bound = float(relevance.abs().max()) or 1.0
    x, y, row_height = 0.02, 0.88, 0.16
    shown = []
    for i, word in enumerate(words):
        if word == "<image>" and i > 0 and words[i - 1] == "<image>":
            continue
        label = f"<image ×{words.count('<image>')}>" if word == "<image>" else word
        shown.append((label, float(relevance[i])))
    for label, value in shown:
        width = 0.025 * len(label) + 0.04
        if x + width > 0.98:
            x, y = 0.02, y - row_height
        ax.text(x, y, label, fontsize=9, va="top", family="monospace",
                bbox=dict(boxstyle="round,pad=0.25", facecolor=cmap(0.5 + 0.5 * value / bound), edgecolor="none"))
        x += width
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    ax.axis("off")


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "vlm.png"))
    parser.add_argument("--rule", default="attnlrp")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    path = draw(*explain(args.rule), rule=args.rule, out=Path(args.out))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
