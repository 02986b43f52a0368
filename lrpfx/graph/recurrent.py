"""Recurrent layers in the traced graph: an ``nn.LSTM``/``nn.GRU``/``nn.RNN`` module call (fx front-end) or its
fused ATen op (``aten.lstm.input``, ``aten.gru.input``, ``aten.rnn_tanh.input``, ``aten.rnn_relu.input``; export
front-end), read as one node of kind ``recurrent`` (rule: :class:`lrpfx.rules.recurrent.RecurrentLRP`).
"""
from __future__ import annotations

import traceback
from pathlib import PurePath
from typing import Any, List, NamedTuple, Optional

import torch
import torch.fx as fx
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from ..errors import UnsupportedOpError
from ..rules.recurrent import RecurrentSpec

aten = torch.ops.aten
RECURRENT_MODULES = (nn.LSTM, nn.GRU, nn.RNN)
# fused ATen op -> mode; arguments: input, hx (list), params (list), has_biases, num_layers, dropout, train,
# bidirectional, batch_first
_ATEN_MODES = {aten.lstm.input: "LSTM", aten.gru.input: "GRU", aten.rnn_tanh.input: "RNN_TANH",
               aten.rnn_relu.input: "RNN_RELU"}


class RecurrentCall(NamedTuple):
    """One recurrent node: what it computes, its input, its initial state as passed (None, a node, or a tuple of
    nodes) and its parameters (paths ``"lstm.weight_ih_l0"`` or graph nodes) in ``_flat_weights`` order."""

    spec: RecurrentSpec
    x: Any
    hx: Any
    weights: List[Any]


def is_recurrent(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Whether ``n`` calls a recurrent layer (its value, ``(out, (h, c))`` for an LSTM, is then tracked)."""
    if n.op == "call_module":
        return isinstance(gm.get_submodule(n.target), RECURRENT_MODULES)
    return n.op == "call_function" and n.target in _ATEN_MODES


def recurrent_call(gm: fx.GraphModule, n: fx.Node) -> Optional[RecurrentCall]:
    """The :class:`RecurrentCall` of a recurrent node, or None for any other node."""
    if not is_recurrent(gm, n):
        return None
    if n.op == "call_module":
        return _module_call(gm.get_submodule(n.target), n)
    args = list(n.args) + [None] * 9
    weights = list(args[2])
    has_biases, num_layers, bidirectional, batch_first = bool(args[3]), int(args[4]), bool(args[7]), bool(args[8])
    mode = _ATEN_MODES[n.target]
    base = 2 + 2 * has_biases
    groups = num_layers * (2 if bidirectional else 1)
    has_proj = mode == "LSTM" and len(weights) == groups * (base + 1)
    spec = RecurrentSpec(mode, num_layers, bidirectional, batch_first, has_biases, has_proj)
    hx = tuple(args[1]) if isinstance(args[1], (list, tuple)) else args[1]
    return RecurrentCall(spec, args[0], hx, weights)


def _module_call(m: nn.RNNBase, n: fx.Node) -> RecurrentCall:
    spec = RecurrentSpec(m.mode, m.num_layers, m.bidirectional, m.batch_first, m.bias,
                         getattr(m, "proj_size", 0) > 0)
    x = n.args[0] if n.args else n.kwargs.get("input")
    hx = n.args[1] if len(n.args) > 1 else n.kwargs.get("hx")
    return RecurrentCall(spec, x, tuple(hx) if isinstance(hx, list) else hx,
                         [f"{n.target}.{name}" for name in m._flat_weights_names])


def holds_packed(value) -> bool:
    """Whether a node's value is (or directly holds) a PackedSequence."""
    items = value if isinstance(value, (tuple, list)) and not isinstance(value, PackedSequence) else (value,)
    return any(isinstance(v, PackedSequence) for v in items)


def packs_sequences(exc: BaseException) -> bool:
    """Whether tracing failed inside torch's sequence packing (``pack_padded_sequence`` and friends)."""
    return any(PurePath(f.filename).parts[-3:] == ("nn", "utils", "rnn.py") for f in traceback.extract_tb(exc.__traceback__))


def packing_error(where: str) -> UnsupportedOpError:
    """The model packs sequences inside ``forward``: no graph can hold the packing; say what to pass instead."""
    return UnsupportedOpError(
        f"the model packs sequences inside forward (pack_padded_sequence or pack_sequence){where}\n"
        f"{_PADDED_ADVICE}")


def packed_error(n: fx.Node, where: str) -> UnsupportedOpError:
    """lrpfx explains recurrent layers on padded tensors only: say how to get there."""
    return UnsupportedOpError(
        f"node '{n.name}'{where} produces a torch.nn.utils.rnn.PackedSequence. {_PADDED_ADVICE}")


_PADDED_ADVICE = ("lrpfx explains recurrent layers on padded tensors, not packed sequences. Fix: pass the padded "
                  "batch [B, T, F] (batch_first) to the layer instead of pack_padded_sequence(...); for sequences of "
                  "different lengths, pad on the left for a unidirectional layer (the last step is then every "
                  "sequence's own last step), or explain sequences of one length per call.")
