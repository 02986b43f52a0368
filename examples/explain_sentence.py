"""Explain a sentence with a tiny transformer: which words made it say "positive"?

Trains a two-layer BERT (built from a config, no download) for a few seconds on made-up reviews whose label
is whether words like "good"/"great" outnumber words like "bad"/"awful", then explains one sentence with
AttnLRP and prints the token heatmap in the terminal; ``--html out.html`` writes it as HTML too.

    python examples/explain_sentence.py
    python examples/explain_sentence.py --sentence "the plot was boring but the music was great and lovely"
"""
from __future__ import annotations

import argparse
import random

import torch

import lrpfx

POSITIVE, NEGATIVE = ["good", "great", "fine", "lovely"], ["bad", "awful", "boring", "weak"]
FILLER = ["the", "movie", "plot", "acting", "was", "and", "but", "ending", "music", "really", "quite"]


def make_tokenizer():
    """A word-level Hugging Face tokenizer over the toy vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]"] + POSITIVE + NEGATIVE + FILLER
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]")


def review(rng: random.Random):
    """A random review and its label: positive when it has more positive than negative words."""
    words, score = [], 0
    while score == 0:  # no ties: every review has a clear label
        words, score = [], 0
        for _ in range(rng.randint(4, 9)):
            if rng.random() < 0.35:
                good = rng.random() < 0.5
                words.append(rng.choice(POSITIVE if good else NEGATIVE))
                score += 1 if good else -1
            else:
                words.append(rng.choice(FILLER))
    return "[CLS] " + " ".join(words), int(score > 0)


def train(tokenizer, steps: int = 150, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = BertForSequenceClassification(config)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        texts, labels = zip(*(review(rng) for _ in range(32)))
        batch = tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
        loss = model(**batch, labels=torch.tensor(labels)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    texts, labels = zip(*(review(rng) for _ in range(256)))
    batch = tokenizer(list(texts), padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        accuracy = (model(**batch).logits.argmax(1) == torch.tensor(labels)).float().mean().item()
    return model.eval(), accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentence", default="the acting was great but the ending was boring and the music lovely")
    parser.add_argument("--rule", default="attnlrp", help="attnlrp or cp-lrp")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--html", help="also write the heatmap as HTML to this file")
    args = parser.parse_args(argv)

    tokenizer = make_tokenizer()
    model, accuracy = train(tokenizer, args.steps)
    print(f"toy sentiment BERT: {accuracy:.1%} accuracy on held-out reviews")
    inputs = tokenizer(["[CLS] " + args.sentence], return_tensors="pt", add_special_tokens=False)
    explanation = lrpfx.Explainer(model, args.rule)(dict(inputs), target=1)  # 1 = "positive"
    print(f"logit 'positive' = {explanation.output[0, 1]:.3f}; relevance per token ({args.rule}):")
    print(explanation.render_tokens(tokenizer, format="ansi"))
    for token, score in zip(tokenizer.convert_ids_to_tokens(inputs["input_ids"][0]), explanation.tokens[0]):
        print(f"  {token:>8s} {score:+.3f}")
    if args.html:
        with open(args.html, "w") as f:
            f.write(explanation.render_tokens(tokenizer, format="html"))
        print(f"wrote {args.html}")


if __name__ == "__main__":
    main()
