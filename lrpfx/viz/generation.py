"""Renderings of a generation explanation (:class:`lrpfx.generation.GenerationExplanation`) for one sequence.

HTML: one strip per generated token (its context coloured by relevance, then the token itself, boxed), and the
token matrix as a heatmap table (a row per generated token, a column per token). ANSI: one line per generated
token. Token text and colours come from :mod:`lrpfx.viz.tokens` (red positive, blue negative, white zero).
"""
from __future__ import annotations

import html
from typing import List, Optional, Sequence

import torch

from ..errors import InputError
from .tokens import _colours, render_ansi, render_html, token_strings

NORMALIZE = ("row", "global")
_CELL = "padding: 1px 4px; border: 1px solid #ddd; min-width: 1.2em"
_BOXED = "border: 1px solid #333; border-radius: 3px; padding: 0 2px; font-weight: bold"


def render_generation(tokenizer, ids: torch.Tensor, matrix: torch.Tensor, prompt_length: int,
                      keep: Optional[torch.Tensor] = None, format: str = "html", normalize: str = "row") -> str:
    """``ids`` ``[T]``, ``matrix`` ``[N, T]`` (row k explains ``ids[prompt_length + k]``); ``keep`` ``[T]``
    hides padding. ``normalize``: "row" (each row at its own largest |R|) or "global" (one scale)."""
    if format not in ("html", "ansi"):
        raise InputError(f"format must be 'html' or 'ansi', got {format!r}")
    if normalize not in NORMALIZE:
        raise InputError(f"normalize must be one of {NORMALIZE}, got {normalize!r}")
    words = token_strings(tokenizer, ids)
    columns = token_columns(words, None if keep is None else keep.tolist())
    rows = matrix.detach().cpu().double()
    shared = float(rows.abs().max()) or 1.0
    steps = []
    for k in range(rows.shape[0]):
        position = prompt_length + k
        context = [i for i in columns if i < position]
        scores = rows[k, context]
        scale = shared if normalize == "global" else (float(scores.abs().max()) if len(context) else 0.0) or 1.0
        steps.append((position, context, scores, scale))
    if format == "ansi":
        return "\n".join(_ansi_line(words, *step) for step in steps)
    return _html(words, columns, prompt_length, steps)


def _ansi_line(words: List[str], position: int, context: List[int], scores, scale: float) -> str:
    coloured = render_ansi([words[i] for i in context], scores, normalize=scale)
    return f"{position:>4} {words[position]!r:>12} <- {coloured}"


def _html(words: List[str], columns: List[int], prompt_length: int, steps) -> str:
    strips = []
    for position, context, scores, scale in steps:
        strip = render_html([words[i] for i in context], scores, normalize=scale)  # the generated token
        # goes inside the strip's own <div>, boxed, after its context
        strips.append(f'<div style="margin: 2px 0">{strip[:-len("</div>")]}'
                      f'<span style="{_BOXED}">{html.escape(words[position])}</span></div></div>')
    table = _matrix_table(words, columns, prompt_length, steps)
    return ('<div class="lrpfx-generation" style="font-family: monospace">'
            '<div class="lrpfx-generation-steps">' + "".join(strips) + "</div>" + table + "</div>")


def _matrix_table(words: List[str], columns: List[int], prompt_length: int, steps) -> str:
    """Rows: generated tokens; columns: every token (generated ones in italics); empty from a row's own token on."""
    head = "".join(f'<th style="{_CELL}{"; font-style: italic" if i >= prompt_length else ""}">'
                   f"{html.escape(words[i])}</th>" for i in columns)
    body = []
    for position, context, scores, scale in steps:
        cells = {i: c for i, c in zip(context, _colours([words[i] for i in context], scores, scale))}
        row = [f'<th style="{_CELL}">{html.escape(words[position])}</th>']
        for i in columns:
            if i not in cells:
                row.append(f'<td style="{_CELL}; background-color: #f4f4f4"></td>')
                continue
            bg, _, value = cells[i]
            row.append(f'<td style="{_CELL}; background-color: rgb{bg}" title="{value:.6g}"></td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    return ('<table class="lrpfx-generation-matrix" style="border-collapse: collapse; margin-top: 8px">'
            f"<tr><th></th>{head}</tr>" + "".join(body) + "</table>")


def token_columns(words: Sequence[str], keep: Optional[Sequence[bool]]) -> List[int]:
    """Indices of the tokens shown (padding hidden)."""
    return list(range(len(words))) if keep is None else [i for i, k in enumerate(keep) if k]
