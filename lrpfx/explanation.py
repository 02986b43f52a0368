"""The result of an explanation: relevance per input, the explained output, and what else the run recorded."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .errors import InputError
from .viz.tokens import render_ansi, render_html, token_strings


@dataclass
class Explanation:
    """Result of an explanation.

    ``relevance`` is shaped like the input (a tuple for several positional inputs); for token ids it is the
    relevance at the embedding output, ``[B, T, H]``, and :attr:`tokens` sums it to ``[B, T]``. For a dict input
    ``relevance`` is that of the main input (``input_ids``, ``inputs_embeds``, ``pixel_values``, ...) and
    ``inputs`` maps every input name to its relevance (None for inputs such as masks that carry none).
    ``output`` is the explained model output; with ``intermediate=True`` ``intermediate`` holds the relevance at
    every node output keyed by module or node name, in execution order. With ``parameters=True`` ``parameters``
    maps each Linear/Conv weight and bias name to its relevance, with views per unit and per attention head
    (:class:`lrpfx.parameter_units.ParameterRelevance`, docs/pruning.md).
    """

    relevance: Any
    output: torch.Tensor
    intermediate: Dict[str, torch.Tensor] = field(default_factory=dict)
    inputs: Dict[str, Any] = field(default_factory=dict)
    token_ids: Optional[torch.Tensor] = None
    activations: Dict[str, torch.Tensor] = field(default_factory=dict)  # conditional runs: forward values asked for
    parameters: Optional[Dict[str, torch.Tensor]] = None  # parameters=True: a ParameterRelevance

    @property
    def tokens(self) -> torch.Tensor:
        """Relevance per token, ``[B, T]`` (``[B, K, T]`` with several targets): the embedding relevance summed
        over the hidden axis."""
        if self.token_ids is None:
            raise InputError("tokens needs token ids as the explained input (e.g. {'input_ids': ids}); this "
                             "explanation is of a float input: use .relevance")
        return self.relevance.sum(-1)

    def render_tokens(self, tokenizer=None, sample: int = 0, format: str = "html", target: int = 0) -> str:
        """A token heatmap of one sample (red positive, blue negative): ``format="html"`` gives an HTML snippet,
        ``"ansi"`` a string with terminal colours. ``tokenizer`` turns ids into text (a Hugging Face tokenizer,
        a dict, a list or a callable; None shows the ids)."""
        scores = self.tokens[sample]
        if scores.dim() == 2:  # several targets: pick one
            scores = scores[target]
        words = token_strings(tokenizer, self.token_ids[sample])
        if format == "html":
            return render_html(words, scores)
        if format == "ansi":
            return render_ansi(words, scores)
        raise InputError(f"format must be 'html' or 'ansi', got {format!r}")
