"""Token heatmaps: readable token strings and their relevance as HTML or 24-bit ANSI colours.

Pure functions without lrpfx internals::

    tokens = token_strings(tokenizer, ids[0])
    html = render_html(tokens, explanation.tokens[0])      # red: positive, blue: negative, white: 0
    print(render_ansi(tokens, explanation.tokens[0]))
"""
from __future__ import annotations

import html
import math
from functools import lru_cache
from typing import Any, List, Mapping, Sequence, Tuple, Union

from .image import colorize, normalize as scale_symmetric

Scores = Union[Sequence[float], Any]  # a 1-D list, tuple, numpy array or tensor
Normalize = Union[str, float, None]

__all__ = ["token_strings", "render_html", "render_ansi"]


# ---- token strings -----------------------------------------------------------------------------------------
def token_strings(tokenizer, ids) -> List[str]:
    """The text of each token id, word-piece/BPE markers turned into spaces.

    ``tokenizer``: a Hugging Face tokenizer (anything with ``convert_ids_to_tokens``), a callable id -> str,
    a dict {id: str}, a sequence of strings indexed by id, or None (the ids themselves as strings).
    """
    ids = _id_list(ids)
    if tokenizer is None:  # the ids themselves, space-separated like words (joined they would run together)
        return [("" if k == 0 else " ") + str(i) for k, i in enumerate(ids)]
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        raw = [str(t) for t in tokenizer.convert_ids_to_tokens(ids)]
        return _clean(raw, _scheme(tokenizer, raw))
    if isinstance(tokenizer, Mapping):
        missing = [i for i in ids if i not in tokenizer]
        if missing:
            raise ValueError(f"token ids {missing[:5]} are not in the vocabulary mapping")
        return [str(tokenizer[i]) for i in ids]
    if callable(tokenizer):
        return [str(tokenizer(i)) for i in ids]
    if isinstance(tokenizer, Sequence) and not isinstance(tokenizer, (str, bytes)):
        bad = [i for i in ids if not 0 <= i < len(tokenizer)]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary of {len(tokenizer)} strings")
        return [str(tokenizer[i]) for i in ids]
    raise TypeError(f"tokenizer must be a Hugging Face tokenizer, callable, dict, sequence or None, "
                    f"not {type(tokenizer).__name__}")


def _id_list(ids) -> List[int]:
    if hasattr(ids, "tolist"):  # tensor / numpy
        if getattr(ids, "ndim", 1) != 1:
            raise ValueError(f"ids must be 1-D (one sequence), got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    return [int(i) for i in ids]


def _scheme(tokenizer, tokens: List[str]) -> str:
    """How the tokenizer marks word boundaries: from its fast backend if it has one, else from the markers."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        described = f"{backend.decoder!r} {type(backend.model).__name__}"
        for name, scheme in (("ByteLevel", "byte-level"), ("Metaspace", "metaspace"),
                             ("WordPiece", "wordpiece"), ("WordLevel", "words")):
            if name in described:
                return scheme
    if any(t.startswith("##") for t in tokens):
        return "wordpiece"
    if any(ch in t for t in tokens for ch in "ĠĊ"):
        return "byte-level"
    if any("▁" in t for t in tokens):
        return "metaspace"
    return "plain"


def _clean(tokens: List[str], scheme: str) -> List[str]:
    if scheme == "byte-level":
        return [_byte_level(t) for t in tokens]
    if scheme == "metaspace":
        return [t.replace("▁", " ") for t in tokens]
    if scheme in ("wordpiece", "words"):
        # a word-piece starts a new word unless marked "##"; no space before the very first token
        return [t[2:] if t.startswith("##") else (" " + t if i else t) for i, t in enumerate(tokens)]
    return tokens


@lru_cache(maxsize=1)
def _byte_decoder() -> dict:
    """Inverse of GPT-2's byte -> printable character table (bytes that print stand for themselves)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _byte_level(token: str) -> str:
    table = _byte_decoder()
    if not all(ch in table for ch in token):  # a special token written in plain Unicode
        return token
    # a token may hold part of a multi-byte character: show the replacement mark rather than fail
    return bytes(table[ch] for ch in token).decode("utf-8", errors="replace")


# ---- colours -----------------------------------------------------------------------------------------------
def _score_list(tokens: Sequence[str], scores: Scores) -> List[float]:
    if hasattr(scores, "detach"):
        scores = scores.detach().cpu()
    shape = tuple(getattr(scores, "shape", (len(scores),)))
    if len(shape) != 1:
        raise ValueError(f"scores must be 1-D (one value per token), got shape {shape}; "
                         f"sum relevance over the hidden dimension first (Explanation.tokens)")
    values = [float(s) for s in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    if len(values) != len(tokens):
        raise ValueError(f"scores has {len(values)} values but there are {len(tokens)} tokens")
    if not all(math.isfinite(v) for v in values):
        raise ValueError("scores contain NaN or infinite values")
    return values


def _scale(values: List[float], normalize: Normalize) -> float:
    """The |score| that gets full colour."""
    if normalize == "max-abs":
        return max((abs(v) for v in values), default=0.0)
    if normalize is None or normalize == "none":
        return 1.0  # scores already in [-1, 1]
    if isinstance(normalize, (int, float)) and not isinstance(normalize, bool) and normalize > 0:
        return float(normalize)  # a fixed scale shared by several heatmaps
    raise ValueError(f"normalize must be 'max-abs', 'none'/None or a positive number, not {normalize!r}")


RGB = Tuple[int, int, int]


def _colours(tokens: Sequence[str], scores: Scores, normalize: Normalize) -> List[Tuple[RGB, RGB, float]]:
    """(background, foreground, score) per token: the ``bwr`` map of :mod:`lrpfx.viz.image` (white fading to red
    for positive, blue for negative), on the same symmetric scale as image heatmaps."""
    values = _score_list(tokens, scores)
    scaled = scale_symmetric(values, bound=_scale(values, normalize))
    out = []
    for v, a, background in zip(values, scaled.tolist(), colorize(scaled, "bwr").tolist()):
        # dark text stops being readable on saturated red/blue
        foreground = (255, 255, 255) if abs(a) > 0.6 else (0, 0, 0)
        out.append((tuple(background), foreground, v))
    return out


# ---- renderers ---------------------------------------------------------------------------------------------
def render_html(tokens: Sequence[str], scores: Scores, *, normalize: Normalize = "max-abs") -> str:
    """A self-contained HTML snippet: one ``<span>`` per token, its score in the ``title`` (hover) text.

    ``normalize``: "max-abs" (full colour at the largest |score|), "none" (scores already in [-1, 1]) or a
    positive number (full colour at that |score|, to compare several heatmaps on one scale).
    """
    spans = []
    for token, (bg, fg, v) in zip(tokens, _colours(tokens, scores, normalize)):
        spans.append(f'<span style="background-color: rgb{bg}; color: rgb{fg}; border-radius: 3px; '
                     f'padding: 0 1px" title="{v:.6g}">{html.escape(token)}</span>')
    return ('<div class="lrpfx-tokens" style="font-family: monospace; line-height: 1.9; '
            'white-space: pre-wrap">' + "".join(spans) + "</div>")


def render_ansi(tokens: Sequence[str], scores: Scores, *, normalize: Normalize = "max-abs") -> str:
    """The tokens with 24-bit ANSI background colours, each followed by a reset (for terminals)."""
    parts = []
    for token, ((r, g, b), (fr, fg_, fb), _) in zip(tokens, _colours(tokens, scores, normalize)):
        parts.append(f"\x1b[48;2;{r};{g};{b}m\x1b[38;2;{fr};{fg_};{fb}m{token}\x1b[0m")
    return "".join(parts)
