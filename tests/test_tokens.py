"""Token heatmaps (lrpfx.viz.tokens): token text, colours, escaping, bad input."""
import re

import pytest
import torch

from lrpfx.viz.tokens import render_ansi, render_html, token_strings

SENTENCES = ["the cat sat on the mat", "the dog ate my homework", "a cathedral is not a cat", "héllo wörld"]


def backgrounds(html_text):
    return [tuple(map(int, m)) for m in re.findall(r"background-color: rgb\((\d+), (\d+), (\d+)\)", html_text)]


def titles(html_text):
    return [float(t) for t in re.findall(r'title="([^"]*)"', html_text)]


# ---- render_html -------------------------------------------------------------------------------------------
def test_html_escapes_tokens():
    out = render_html(["<b>", "a&b", '"q"'], [1.0, 0.0, -1.0])
    assert "<b>" not in out.replace('<span', '').replace('</span>', '')
    assert "&lt;b&gt;" in out and "a&amp;b" in out and "&quot;q&quot;" in out


def test_colour_direction():
    bgs = backgrounds(render_html(["pos", "zero", "neg"], [2.0, 0.0, -1.0]))
    (r, g, b), zero, (r2, g2, b2) = bgs
    assert r == 255 and g < 255 and b < 255 and r > g and r > b  # red-dominant
    assert zero == (255, 255, 255)
    assert b2 == 255 and b2 > r2 and b2 > g2  # blue-dominant


def test_max_abs_normalisation():
    bgs = backgrounds(render_html(list("abcd"), torch.tensor([4.0, 2.0, -4.0, 0.0])))
    assert bgs[0] == (255, 0, 0)  # the largest |score| gets full colour, of either sign
    assert bgs[2] == (0, 0, 255)
    assert bgs[1] == (255, 128, 128)  # intensity proportional to |score| / max|score|
    # scaling all scores changes nothing
    assert backgrounds(render_html(list("abcd"), [40.0, 20.0, -40.0, 0.0])) == bgs


def test_fixed_scale_and_none():
    assert backgrounds(render_html(["a"], [1.0], normalize=4.0)) == [(255, 191, 191)]
    assert backgrounds(render_html(["a", "b"], [0.5, 3.0], normalize="none")) == [(255, 128, 128), (255, 0, 0)]
    with pytest.raises(ValueError, match="normalize"):
        render_html(["a"], [1.0], normalize="sum")


def test_all_zero_is_white_and_titles_hold_raw_scores():
    out = render_html(["a", "b"], [0.0, 0.0])
    assert backgrounds(out) == [(255, 255, 255)] * 2
    assert titles(render_html(["a", "b"], [0.25, -3.5])) == [0.25, -3.5]


def test_readable_foreground():
    out = render_html(["strong", "weak"], [1.0, 0.1])
    fg = re.findall(r"; color: rgb\((\d+), (\d+), (\d+)\)", out)
    assert fg[0] == ("255", "255", "255") and fg[1] == ("0", "0", "0")


@pytest.mark.parametrize("scores, message", [
    ([1.0, 2.0], "2 values but there are 3 tokens"),
    (torch.ones(3, 4), "1-D"),
    ([1.0, float("nan"), 0.0], "NaN"),
])
def test_bad_scores(scores, message):
    for render in (render_html, render_ansi):
        with pytest.raises(ValueError, match=message):
            render(["a", "b", "c"], scores)


# ---- render_ansi -------------------------------------------------------------------------------------------
def test_ansi_colours_and_reset():
    out = render_ansi(["up", "down", "flat"], [1.0, -0.5, 0.0])
    assert out.count("\x1b[0m") == 3 and out.endswith("\x1b[0m")
    assert "\x1b[48;2;255;0;0mup" in out.replace("\x1b[38;2;255;255;255m", "")
    assert "\x1b[48;2;128;128;255m" in out
    assert "\x1b[48;2;255;255;255m" in out
    assert re.sub(r"\x1b\[[0-9;]*m", "", out) == "updownflat"


# ---- token_strings -----------------------------------------------------------------------------------------
def test_simple_vocabularies():
    vocab = ["<pad>", "hello", "world"]
    assert token_strings(vocab, torch.tensor([1, 2])) == ["hello", "world"]
    assert token_strings({7: "x", 9: "y"}, [9, 7]) == ["y", "x"]
    assert token_strings(lambda i: f"t{i}", [3]) == ["t3"]
    assert token_strings(None, torch.tensor([5, 6, 7])) == ["5", " 6", " 7"]  # readable when joined
    with pytest.raises(ValueError, match="outside the vocabulary"):
        token_strings(vocab, [3])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        token_strings({1: "a"}, [2])
    with pytest.raises(ValueError, match="1-D"):
        token_strings(vocab, torch.tensor([[1, 2]]))
    with pytest.raises(TypeError):
        token_strings(3.5, [1])


def _fast(model, pre_tokenizer, decoder, trainer):
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    tok = tokenizers.Tokenizer(model)
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    tok.train_from_iterator(SENTENCES, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok)


def test_byte_level_bpe():
    from tokenizers import decoders, models, pre_tokenizers, trainers

    fast = _fast(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
                 trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    text = "the cat <b> héllo"
    ids = fast(text)["input_ids"]
    raw = fast.convert_ids_to_tokens(ids)
    assert any(t.startswith("Ġ") for t in raw)
    tokens = token_strings(fast, torch.tensor(ids))
    assert "".join(tokens) == text  # markers become spaces, bytes become characters again
    assert " cat" in tokens


def test_wordpiece():
    from tokenizers import decoders, models, pre_tokenizers

    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer

    # a fixed vocabulary: a trained one's merges depend on tie order, and sub-word pieces may not appear
    pieces = ["[UNK]", "the", "cat", "##hed", "##ral", "home", "##work"]
    core = Tokenizer(models.WordPiece({p: i for i, p in enumerate(pieces)}, unk_token="[UNK]"))
    core.pre_tokenizer, core.decoder = pre_tokenizers.Whitespace(), decoders.WordPiece()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=core)
    ids = fast("the cathedral homework")["input_ids"]
    assert any(t.startswith("##") for t in fast.convert_ids_to_tokens(ids))
    tokens = token_strings(fast, ids)
    assert "".join(tokens) == "the cathedral homework"
    assert not any("##" in t for t in tokens)


def test_word_level_and_metaspace():
    from tokenizers import decoders, models, pre_tokenizers, trainers

    words = _fast(models.WordLevel(unk_token="[UNK]"), pre_tokenizers.Whitespace(), None,
                  trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    assert "".join(token_strings(words, words("the cat sat")["input_ids"])) == "the cat sat"
    meta = _fast(models.BPE(), pre_tokenizers.Metaspace(), decoders.Metaspace(),
                 trainers.BpeTrainer(vocab_size=120))
    ids = meta("the cat sat")["input_ids"]
    assert any("▁" in t for t in meta.convert_ids_to_tokens(ids))
    assert "".join(token_strings(meta, ids)).strip() == "the cat sat"


def test_heatmap_of_tokenizer_output_escapes():
    from tokenizers import decoders, models, pre_tokenizers, trainers

    fast = _fast(models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel(),
                 trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = fast("a <b> tag")["input_ids"]
    tokens = token_strings(fast, ids)
    out = render_html(tokens, torch.linspace(-1, 1, len(ids)))
    text = re.sub(r"<[^>]+>", "", out)
    assert "&lt;" in text and "<b>" not in text
