"""Attribution of generated text: which prompt and earlier generated tokens made a causal LM produce each token.

    res = lrpfx.explain_generation(model, ids, max_new_tokens=16, attention_mask=mask)
    res.ids        # [B, P + N]: prompt, then the greedy continuation
    res.matrix     # [B, N, P + N]: row k is the relevance of every token for generated token k (its logit)
    print(res.render(tokenizer, format="ansi"))

One relevance program explains all generated tokens together. The program runs the model over the whole
sequence once and starts from the logit of every generated token at its own position: the output is the logits
of a window of ``c`` positions flattened to ``[B, c * V]``, so "token ``v`` at window position ``j``" is the
class ``j * V + v`` and the K generated tokens are K class targets of :class:`lrpfx.Explainer` — one forward, one
relevance pass with a leading target axis, and the library's usual start (logit × one-hot). Causal attention
makes the explanation of position ``t`` inside the longer sequence the one of the sequence cut after ``t``.

With ``batch_size=c`` the N tokens are explained ``c`` at a time, each chunk on the sequence cut after its last
target (a shorter forward), all chunks through one cached program.

A vision-language model takes its image with the prompt: ``inputs={"pixel_values": px}`` (and whatever else the
model needs with the ids: ``image_grid_thw``, ...) goes with every forward, and ``input_relevance`` holds each
such input's relevance per generated token.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from .api import Explainer, eval_mode
from .composites import Composite
from .errors import InputError
from .rules import Rule
from .viz.generation import render_generation

__all__ = ["GenerationExplanation", "GenerationExplainer", "explain_generation", "explain_generated",
           "greedy_generate"]

_PROBE_LENGTH = 16  # tokens of the causality probe


@dataclass
class GenerationExplanation:
    """Relevance of a generated continuation.

    ``ids`` ``[B, P + N]`` holds the prompt then the N generated tokens; ``matrix`` ``[B, N, P + N]`` the
    relevance of every token for each generated token (row k explains the logit of ``ids[:, P + k]`` at position
    ``P + k - 1``; it is zero from column ``P + k`` on). ``target_logits`` ``[B, N]`` are the explained logits;
    ``attention_mask`` ``[B, P + N]`` marks left padding (None when none was given). ``input_relevance`` maps each
    further model input given with the prompt (``pixel_values`` of a vision-language model) to its relevance per
    generated token, ``[B, N, ...]`` (the generated tokens' axis second, as with several targets).
    """

    ids: torch.Tensor
    matrix: torch.Tensor
    prompt_length: int
    target_logits: torch.Tensor
    attention_mask: Optional[torch.Tensor] = None
    input_relevance: Dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def generated(self) -> torch.Tensor:
        """The generated token ids, ``[B, N]``."""
        return self.ids[:, self.prompt_length:]

    def render(self, tokenizer=None, sample: int = 0, format: str = "html", normalize: str = "row") -> str:
        """One sample as HTML (token matrix as a heatmap table and one token strip per generated token) or as
        ANSI-coloured lines. ``normalize="row"`` scales each generated token's row by its own largest |R|,
        ``"global"`` shares one scale across rows. ``tokenizer`` as in :func:`lrpfx.viz.tokens.token_strings`."""
        if not 0 <= sample < self.ids.shape[0]:
            raise InputError(f"sample {sample} out of range: the batch has {self.ids.shape[0]} sequences")
        keep = None if self.attention_mask is None else self.attention_mask[sample].bool()
        return render_generation(tokenizer, self.ids[sample], self.matrix[sample], self.prompt_length,
                                 keep=keep, format=format, normalize=normalize)


class GenerationExplainer:
    """Reusable :func:`explain_generation`: keeps the relevance programs (one per window size) between calls.

    ``GenerationExplainer(model, rule="attnlrp", **options)`` takes :class:`lrpfx.Explainer`'s options
    (``compile=True``, ``leaf_modules``, ...) except ``output``, which it chooses itself.
    """

    def __init__(self, model: nn.Module, rule: Union[str, Rule, Composite] = "attnlrp", **options):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module (a causal language model), got {type(model).__name__}")
        if "output" in options:
            raise InputError("output= is chosen by explain_generation (the logits of the generated tokens' "
                             "positions); leave it out")
        self.model, self.rule, self.options = model, rule, options
        self._explainers: Dict[int, Explainer] = {}
        self._vocab: Optional[int] = None  # the logits' size, once the model passed check_causal_lm

    def __call__(self, input_ids: torch.Tensor, max_new_tokens: int = 16, attention_mask=None,
                 batch_size: Optional[int] = None, inputs: Optional[Dict[str, Any]] = None) -> GenerationExplanation:
        """Greedy continuation of ``input_ids`` by ``max_new_tokens`` tokens, explained; ``inputs``: further model
        inputs given with the prompt (``{"pixel_values": px}``)."""
        _check_new_tokens(max_new_tokens)
        input_ids, attention_mask = _check_ids(self.model, input_ids, attention_mask)
        extra = _check_extra(inputs)
        self._check_model(input_ids)
        ids, mask = greedy_generate(self.model, input_ids, max_new_tokens, attention_mask, extra)
        return self.explain(ids, input_ids.shape[1], mask, batch_size, extra)

    def explain(self, ids: torch.Tensor, prompt_length: int, attention_mask=None,
                batch_size: Optional[int] = None, inputs: Optional[Dict[str, Any]] = None) -> GenerationExplanation:
        """Explain the tokens of ``ids`` from ``prompt_length`` on, each from the tokens before it.
        ``attention_mask`` covers the prompt (``[B, P]``) or the whole sequence (``[B, P + N]``); ``inputs`` as
        in :meth:`__call__`."""
        extra = _check_extra(inputs)
        if isinstance(prompt_length, bool) or not isinstance(prompt_length, int):
            raise InputError(f"prompt_length must be an int, got {type(prompt_length).__name__}")
        ids, _ = _check_ids(self.model, ids, None)
        if not 1 <= prompt_length < ids.shape[1]:
            raise InputError(f"prompt_length must be between 1 and {ids.shape[1] - 1} (ids hold {ids.shape[1]} "
                             f"tokens): at least one prompt token and one generated token")
        mask = _full_mask(ids, prompt_length, attention_mask)
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise InputError(f"batch_size must be a positive int (generated tokens per relevance pass) or None, "
                             f"got {batch_size!r}")
        self._check_model(ids)
        new = ids.shape[1] - prompt_length
        window = min(batch_size or new, new)
        explainer = self._explainer(window)
        matrix = ids.new_zeros((ids.shape[0], new, ids.shape[1]), dtype=_float_dtype(self.model))
        logits = matrix.new_zeros((ids.shape[0], new))
        chunks: Dict[str, list] = {}
        for first in range(0, new, window):
            last = min(first + window, new) - 1
            rows, values, relevances = self._explain_chunk(explainer, ids, mask, prompt_length, first, last, window,
                                                           extra)
            for j, k in enumerate(range(first, last + 1)):
                matrix[:, k, :prompt_length + k] = rows[:, j, :prompt_length + k]
            logits[:, first:last + 1] = values
            for name, r in relevances.items():
                chunks.setdefault(name, []).append(r)
        per_input = {name: torch.cat(rs, 1) for name, rs in chunks.items()}
        return GenerationExplanation(ids, matrix, prompt_length, logits, mask, per_input)

    # ---- internals ------------------------------------------------------------------------------------------
    def _explainer(self, window: int) -> Explainer:
        if window not in self._explainers:
            self._explainers[window] = Explainer(self.model, self.rule, output=_window_logits(window),
                                                 **self.options)
        return self._explainers[window]

    def _explain_chunk(self, explainer: Explainer, ids, mask, prompt_length: int, first: int, last: int,
                       window: int, extra: Dict[str, Any]) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
        """Generated tokens ``first..last`` explained on the sequence cut after the last one's input position.
        The window holds the logits of the ``window`` positions before the cut; token k is predicted at
        position ``prompt_length + k - 1``, i.e. window index ``k - last - 1 + window``."""
        length = prompt_length + last  # tokens 0 .. P + last - 1: the last target's context
        inputs = {**_model_inputs(self.model, ids[:, :length], None if mask is None else mask[:, :length]), **extra}
        if "logits_to_keep" in _forward_parameters(self.model):
            inputs["logits_to_keep"] = window  # the LM head runs on the window only
        vocab = self._vocab
        ks = torch.arange(first, last + 1, device=ids.device)
        classes = (ks - last - 1 + window) * vocab + ids[:, prompt_length + ks]  # [B, K]
        e = explainer(inputs, targets=classes)
        relevances = {name: r for name, r in e.inputs.items() if name in extra and r is not None}
        return e.tokens, e.output.gather(1, classes), relevances

    def _check_model(self, ids: torch.Tensor) -> None:
        """The ids fit the vocabulary; once per explainer: the model returns per-position logits and no position
        sees later tokens."""
        _check_vocabulary(self.model, ids)
        if self._vocab is None:
            self._vocab = check_causal_lm(self.model, ids)
        if bool((ids >= self._vocab).any()):  # a target class would land on the next position's logits
            raise InputError(f"token ids up to {int(ids.max())} but the model has {self._vocab} logits per position")


def explain_generation(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int = 16,
                       rule: Union[str, Rule, Composite] = "attnlrp", attention_mask=None,
                       batch_size: Optional[int] = None, inputs: Optional[Dict[str, Any]] = None,
                       **options) -> GenerationExplanation:
    """Generate ``max_new_tokens`` tokens greedily after ``input_ids`` ``[B, P]`` (left-padded batches need
    ``attention_mask``) and explain each generated token's logit with ``rule``: ``.matrix`` ``[B, N, P + N]``,
    ``.ids`` ``[B, P + N]``. ``batch_size`` caps how many generated tokens share one relevance pass (None: all);
    ``inputs`` are further model inputs given with the prompt (a VLM's ``{"pixel_values": px}``: their relevance
    per generated token is ``.input_relevance``); ``options`` go to :class:`lrpfx.Explainer`."""
    return GenerationExplainer(model, rule, **options)(input_ids, max_new_tokens, attention_mask, batch_size, inputs)


def explain_generated(model: nn.Module, ids: torch.Tensor, prompt_length: int,
                      rule: Union[str, Rule, Composite] = "attnlrp", attention_mask=None,
                      batch_size: Optional[int] = None, inputs: Optional[Dict[str, Any]] = None,
                      **options) -> GenerationExplanation:
    """Explain tokens that were already generated: ``ids[:, prompt_length:]``, each from the tokens before it
    (whichever way they were chosen). Same result object as :func:`explain_generation`."""
    return GenerationExplainer(model, rule, **options).explain(ids, prompt_length, attention_mask, batch_size,
                                                               inputs)


# ---- generation ---------------------------------------------------------------------------------------------
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    attention_mask: Optional[torch.Tensor] = None, inputs: Optional[Dict[str, Any]] = None
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``max_new_tokens`` argmax tokens after ``input_ids`` (no end-of-sequence stop, no logits processors, so
    each generated token is the argmax of the logits that get explained); the key/value cache when the model
    takes one. ``inputs`` (an image) go with the prompt: with every forward, or with the first only when the
    cache holds the prompt. Returns the ids and the attention mask grown by ones (None if none was given)."""
    extra = inputs or {}
    params = _forward_parameters(model)
    # the cache argument and output field: ``cache`` in recent transformers, ``past_key_values`` before
    cache = next((name for name in ("cache", "past_key_values") if name in params), None)
    cached = cache is not None and "use_cache" in params
    ids, mask, step, past = input_ids, attention_mask, input_ids, None
    with eval_mode(model), torch.no_grad():
        for _ in range(max_new_tokens):
            inputs = _model_inputs(model, step, mask)
            if past is None:
                inputs.update(extra)
            if "logits_to_keep" in params:
                inputs["logits_to_keep"] = 1
            if cached:
                inputs.update({"use_cache": True, cache: past})
            out = model(**inputs)
            token = _logits(out)[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, token], 1)
            if mask is not None:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], 1)
            past, step = (getattr(out, cache), token) if cached else (None, ids)
    return ids, mask


# ---- checks and helpers ---------------------------------------------------------------------------------------
def check_causal_lm(model: nn.Module, ids: torch.Tensor) -> int:
    """The vocabulary size, after checking that ``model`` is a causal LM: ``[B, T, V]`` logits, and changing the
    last token of a short probe sequence leaves every earlier position's logits as they were."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise InputError(f"{type(model).__name__} is an encoder-decoder model; explain_generation needs a "
                         "decoder-only causal language model (e.g. LlamaForCausalLM, GPT2LMHeadModel)")
    if not _takes_input_ids(model):
        raise InputError(f"{type(model).__name__}.forward takes no input_ids: explain_generation needs a causal "
                         "language model called as model(input_ids=..., attention_mask=...)")
    _check_vocabulary(model, ids)
    probe = ids[:1, -_PROBE_LENGTH:]
    if probe.shape[1] < 2:
        probe = probe.repeat(1, 2)
    with eval_mode(model), torch.no_grad():
        before = _logits(model(**_model_inputs(model, probe, None)))
        if before.dim() != 3 or before.shape[:2] != probe.shape:
            raise InputError(f"{type(model).__name__} returns logits of shape {tuple(before.shape)}, not one row "
                             f"per position [batch, tokens, vocabulary]: explain_generation needs a causal "
                             f"language model")
        vocab = before.shape[-1]
        changed = probe.clone()
        changed[0, -1] = (changed[0, -1] + 1) % vocab
        after = _logits(model(**_model_inputs(model, changed, None)))
    scale = float(before[:, :-1].abs().max()) or 1.0
    if not torch.allclose(before[:, :-1], after[:, :-1], rtol=1e-4, atol=1e-5 * scale):
        raise InputError(f"{type(model).__name__} is not causal: changing the last token changes the logits of "
                         "earlier positions (a bidirectional model such as BERT). explain_generation needs a "
                         "decoder-only causal language model")
    return vocab


def _check_vocabulary(model: nn.Module, ids: torch.Tensor) -> None:
    embeddings = getattr(model, "get_input_embeddings", lambda: None)()
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is not None and bool((ids >= rows).any()):
        raise InputError(f"token ids up to {int(ids.max())} but the model's vocabulary has {rows} entries")


def _check_extra(inputs) -> Dict[str, Any]:
    """Further model inputs given with the prompt: a dict keyed by input name, without the ids and the mask."""
    if inputs is None:
        return {}
    if not isinstance(inputs, dict) or not all(isinstance(k, str) for k in inputs):
        raise InputError(f"inputs must be a dict of further model inputs, e.g. {{'pixel_values': px}}, got "
                         f"{type(inputs).__name__}")
    taken = sorted(set(inputs) & {"input_ids", "attention_mask", "position_ids"})
    if taken:
        raise InputError(f"inputs must not hold {taken}: pass the ids and attention_mask as arguments (positions "
                         "follow from the mask)")
    return dict(inputs)


def _check_new_tokens(max_new_tokens) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")


def _check_ids(model: nn.Module, ids, mask) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Token ids ``[B, T]`` (integer, non-negative, on the model's device) and a left-padding mask of their shape."""
    if not isinstance(ids, torch.Tensor):
        raise InputError(f"token ids must be a LongTensor [batch, tokens], got {type(ids).__name__}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise InputError(f"token ids must be integers (torch.long), got {ids.dtype}: pass the tokenizer's "
                         "input_ids, not embeddings or scores")
    if ids.dim() != 2 or ids.shape[0] == 0 or ids.shape[1] == 0:
        raise InputError(f"token ids must have shape [batch, tokens] with both non-empty, got {tuple(ids.shape)} "
                         "(one sequence: ids[None])")
    if bool((ids < 0).any()):
        raise InputError("token ids must be non-negative")
    param = next(iter(model.parameters()), None)
    if param is not None and ids.device != param.device:
        raise InputError(f"token ids are on {ids.device} but the model is on {param.device}: "
                         f"move them with ids.to('{param.device}')")
    if mask is not None:
        _check_mask(mask, ids.shape)
    return ids.long(), None if mask is None else mask.to(ids.device).long()


def _check_mask(mask, shape) -> None:
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"attention_mask must be a tensor shaped like the token ids {tuple(shape)}, got {got}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise InputError("attention_mask must hold 0 (padding) and 1 (token) only")
    if bool((mask[:, 1:] < mask[:, :-1]).any()) or not bool(mask[:, -1].bool().all()):
        raise InputError("attention_mask must be left padding (zeros, then ones, ending in a token) for "
                         "generation: set tokenizer.padding_side = 'left'")


def _full_mask(ids: torch.Tensor, prompt_length: int, mask) -> Optional[torch.Tensor]:
    """The mask over prompt and generated tokens from one over the prompt (generated tokens are real tokens)."""
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape == (ids.shape[0], prompt_length):
        mask = torch.cat([mask, mask.new_ones((ids.shape[0], ids.shape[1] - prompt_length))], 1)
    elif not (isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(ids.shape)):
        got = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"attention_mask must cover the prompt {(ids.shape[0], prompt_length)} or the whole "
                         f"sequence {tuple(ids.shape)}, got {got}")
    _check_mask(mask, ids.shape)
    return mask.to(ids.device).long()


def _forward_parameters(model: nn.Module) -> frozenset:
    try:
        return frozenset(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return frozenset()


def _takes_input_ids(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True  # cannot tell: let the call decide
    return any(p.name == "input_ids" or p.kind is p.VAR_KEYWORD for p in params)


def _model_inputs(model: nn.Module, ids: torch.Tensor, mask: Optional[torch.Tensor]) -> Dict[str, Any]:
    """Keyword inputs for ``ids`` (the last tokens of the sequence ``mask`` covers when a cache holds the rest):
    with a mask, its positions count real tokens only (as Hugging Face's generate does), so a left-padded
    sequence sees the positions it would see alone."""
    inputs: Dict[str, Any] = {"input_ids": ids}
    if mask is not None:
        inputs["attention_mask"] = mask
        if "position_ids" in _forward_parameters(model):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            inputs["position_ids"] = positions[:, positions.shape[1] - ids.shape[1]:]
    return inputs


def _logits(out) -> torch.Tensor:
    logits = out if isinstance(out, torch.Tensor) else getattr(out, "logits", None)
    if logits is None and isinstance(out, dict):
        logits = out.get("logits")
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"the model returns {type(out).__name__} without logits: explain_generation needs a "
                         "causal language model whose output has .logits [batch, tokens, vocabulary]")
    return logits


def _window_logits(window: int) -> Callable:
    """Output selector: the logits of the last ``window`` positions as ``[B, window * V]`` classes."""
    def select(out):
        return _logits(out)[:, -window:].flatten(1)
    return select


def _float_dtype(model: nn.Module) -> torch.dtype:
    param = next(iter(model.parameters()), None)
    return param.dtype if param is not None and param.is_floating_point() else torch.get_default_dtype()
