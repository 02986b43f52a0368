"""LRP through recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) as pure functions (docs/recurrent.md).

The rules are those of Arras et al. (2017, 2019): the epsilon rule on the input-to-hidden and hidden-to-hidden
maps, "signal-take-all" on products with a gate (the gate gets nothing, the signal everything), proportional
splits of sums, and the identity through tanh/ReLU. One call recomputes the layer's time steps from its
parameters in the input's dtype and runs the relevance backward through time, layer by layer and direction by
direction. The fused op's result is ``(out, h_n)`` (GRU, RNN) or ``(out, (h_n, c_n))`` / ``(out, h_n, c_n)``
(LSTM); its relevance arrives in the same structure, with possible leading axes (several targets).
"""
from __future__ import annotations

import functools

from dataclasses import dataclass
from typing import ClassVar, List, NamedTuple, Optional, Sequence, Tuple

import torch

from .base import Rule
from .stabilize import divide

MODES = ("LSTM", "GRU", "RNN_TANH", "RNN_RELU")


class RecurrentSpec(NamedTuple):
    """What the fused op computes: the cell, the stacking and the layout (as ``nn.LSTM``'s arguments). A
    NamedTuple, as the other layer specs, so that the program's code can spell it out."""

    mode: str  # one of MODES
    num_layers: int
    bidirectional: bool
    batch_first: bool
    has_biases: bool
    has_proj: bool = False  # LSTM with proj_size > 0: h_t = W_hr (o ⊙ tanh(c_t))

    @property
    def directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def per_group(self) -> int:
        """Parameters per (layer, direction), in ``nn.LSTM._flat_weights`` order: w_ih, w_hh, [b_ih, b_hh], [w_hr]."""
        return 2 + 2 * self.has_biases + self.has_proj


@dataclass(frozen=True)
class RecurrentLRP(Rule):
    """Arras et al.'s LSTM/GRU rules (docs/recurrent.md): epsilon on the linear maps, signal-take-all on gate
    products, proportional sums. ``zero_bias`` leaves the biases out of every denominator (conservation)."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = frozenset({"recurrent"})
    name: ClassVar[str] = "recurrent"



@dataclass
class _Weights:
    """One (layer, direction) of parameters; biases are None without ``has_biases``."""

    w_ih: torch.Tensor
    w_hh: torch.Tensor
    b_ih: Optional[torch.Tensor]
    b_hh: Optional[torch.Tensor]
    w_hr: Optional[torch.Tensor]


def _groups(weights: Sequence[torch.Tensor], spec: RecurrentSpec) -> List[_Weights]:
    groups = []
    for start in range(0, len(weights), spec.per_group):
        g = list(weights[start:start + spec.per_group])
        w_ih, w_hh = g[0], g[1]
        b_ih, b_hh = (g[2], g[3]) if spec.has_biases else (None, None)
        groups.append(_Weights(w_ih, w_hh, b_ih, b_hh, g[-1] if spec.has_proj else None))
    return groups


def _with(t, b):
    return t if b is None else t + b


def _back_h(r, w, h, z, eps):
    """Epsilon rule to ``h`` through ``z = W h + (other terms)``: ``h ⊙ ((r ⊘ stab(z)) W)``."""
    return h * (divide(r, z, eps) @ w)


# ---- one direction of one layer over a time-major sequence [T, B, F] --------------------------------------------
# ``forward`` returns the outputs [T, B, H] and a tape of what the backward pass reads; ``backward`` takes the
# relevance of the outputs [..., T, B, H] and of the final state, and returns that of the inputs and initial state.
# The input-to-hidden products do not depend on the state: they run once for the whole sequence, both ways.
def _lstm_forward(xs, w: _Weights, h, c, zero_bias: bool):
    H = w.w_hh.shape[0] // 4
    gx = xs @ w.w_ih.t()
    bias = None if w.b_ih is None else w.b_ih + w.b_hh
    tape, outs = [], []
    for t in range(xs.shape[0]):
        pre = gx[t] + h @ w.w_hh.t()  # without bias
        a = _with(pre, bias)
        i, f, g, o = torch.sigmoid(a[..., :H]), torch.sigmoid(a[..., H:2 * H]), torch.tanh(a[..., 2 * H:3 * H]), \
            torch.sigmoid(a[..., 3 * H:])
        c_new = f * c + i * g
        m = o * torch.tanh(c_new)
        h_new = m @ w.w_hr.t() if w.w_hr is not None else m
        z_g = (pre if zero_bias else a)[..., 2 * H:3 * H]  # the denominator of g's epsilon step
        tape.append((h, c, i, f, g, c_new, z_g, m, h_new))
        h, c = h_new, c_new
        outs.append(h)
    return torch.stack(outs), tape


def _lstm_backward(tape, xs, w: _Weights, r_outs, r_h, r_c, eps: float):
    w_ig, w_hg = w.w_ih.chunk(4)[2], w.w_hh.chunk(4)[2]
    shares = [None] * len(tape)
    for t in reversed(range(len(tape))):
        h_prev, c_prev, i, f, g, c, z_g, m, h = tape[t]
        r_h = r_h + r_outs[..., t, :, :]
        r_m = _back_h(r_h, w.w_hr, m, h, eps) if w.w_hr is not None else r_h  # projection: epsilon, no bias
        r_c = r_c + r_m  # h = o ⊙ tanh(c): the gate o gets nothing, tanh passes
        q = divide(r_c, c, eps)  # c = f ⊙ c_prev + i ⊙ g, split in proportion
        r_g = i * g * q  # signal-take-all: g gets the product's relevance, the gate i nothing
        r_c = f * c_prev * q  # ... and c_prev gets f ⊙ c_prev's, the gate f nothing
        shares[t] = divide(r_g, z_g, eps)  # g = tanh(W_ig x + W_hg h + b): one epsilon step to x and h
        r_h = h_prev * (shares[t] @ w_hg)
    return xs * (torch.stack(shares, dim=-3) @ w_ig), r_h, r_c


def _gru_forward(xs, w: _Weights, h, c, zero_bias: bool):
    H = w.w_hh.shape[0] // 3
    gx = xs @ w.w_ih.t()
    tape, outs = [], []
    for t in range(xs.shape[0]):
        gi, gh = gx[t], h @ w.w_hh.t()  # without biases
        gi_b, gh_b = _with(gi, w.b_ih), _with(gh, w.b_hh)
        r = torch.sigmoid(gi_b[..., :H] + gh_b[..., :H])
        z = torch.sigmoid(gi_b[..., H:2 * H] + gh_b[..., H:2 * H])
        u, s = gi_b[..., 2 * H:], gh_b[..., 2 * H:]
        n = torch.tanh(u + r * s)
        h_new = (1 - z) * n + z * h
        if zero_bias:
            u, s = gi[..., 2 * H:], gh[..., 2 * H:]
        tape.append((h, r, z, n, u, s, h_new))
        h = h_new
        outs.append(h)
    return torch.stack(outs), tape


def _gru_backward(tape, xs, w: _Weights, r_outs, r_h, r_c, eps: float):
    w_in, w_hn = w.w_ih.chunk(3)[2], w.w_hh.chunk(3)[2]
    shares = [None] * len(tape)
    for t in reversed(range(len(tape))):
        h_prev, r, z, n, u, s, h = tape[t]
        r_h = r_h + r_outs[..., t, :, :]
        q = divide(r_h, h, eps)  # h = (1 - z) ⊙ n + z ⊙ h_prev, split in proportion
        r_n = (1 - z) * n * q  # signal-take-all: the gates (1 - z) and z get nothing
        p = divide(r_n, u + r * s, eps)  # n = tanh(u + r ⊙ s): tanh passes, the sum splits in proportion
        shares[t] = divide(u * p, u, eps)  # u = W_in x + b_in: epsilon step to x
        r_h = z * h_prev * q + _back_h(r * s * p, w_hn, h_prev, s, eps)  # r ⊙ s: all to s = W_hn h + b_hn
    return xs * (torch.stack(shares, dim=-3) @ w_in), r_h, r_c


def _rnn_forward(xs, w: _Weights, h, c, zero_bias: bool, act):
    gx = xs @ w.w_ih.t()
    bias = None if w.b_ih is None else w.b_ih + w.b_hh
    tape, outs = [], []
    for t in range(xs.shape[0]):
        pre = gx[t] + h @ w.w_hh.t()
        a = _with(pre, bias)
        tape.append((h, pre if zero_bias else a))
        h = act(a)
        outs.append(h)
    return torch.stack(outs), tape


def _rnn_backward(tape, xs, w: _Weights, r_outs, r_h, r_c, eps: float):
    shares = [None] * len(tape)
    for t in reversed(range(len(tape))):
        h_prev, a = tape[t]
        shares[t] = divide(r_h + r_outs[..., t, :, :], a, eps)  # tanh / ReLU passes, then one epsilon step
        r_h = h_prev * (shares[t] @ w.w_hh)
    return xs * (torch.stack(shares, dim=-3) @ w.w_ih), r_h, r_c


_CELLS = {
    "LSTM": (_lstm_forward, _lstm_backward),
    "GRU": (_gru_forward, _gru_backward),
    "RNN_TANH": (lambda *a: _rnn_forward(*a, act=torch.tanh), _rnn_backward),
    "RNN_RELU": (lambda *a: _rnn_forward(*a, act=torch.relu), _rnn_backward),
}


# ---- the whole layer ------------------------------------------------------------------------------------------
def _flatten(r) -> Tuple[torch.Tensor, ...]:
    """``(r_out, (r_h, r_c))`` or ``(r_out, r_h, r_c)`` or ``(r_out, r_h)`` as a flat tuple."""
    flat = []
    for item in r:
        flat.extend(item if isinstance(item, (tuple, list)) else (item,))
    return tuple(flat)


def _initial_states(hx, x, spec: RecurrentSpec, groups: List[_Weights]):
    """``(h0, c0)`` as ``[L·D, B, ·]`` tensors, zeros where not given (``c0`` is None but for an LSTM)."""
    h0 = c0 = None
    if isinstance(hx, torch.Tensor):
        h0 = hx
    elif hx is not None:
        h0, c0 = (tuple(hx) + (None,))[:2]
    batch = x.shape[1]
    if h0 is None:
        h0 = x.new_zeros((len(groups), batch, groups[0].w_hh.shape[1]))
    if c0 is None and spec.mode == "LSTM":
        c0 = x.new_zeros((len(groups), batch, groups[0].w_hh.shape[0] // 4))
    return h0, c0


def _time_major(t: torch.Tensor, batch_first: bool, unbatched: bool) -> torch.Tensor:
    """``[..., B, T, F]`` (batch first) or ``[..., T, F]`` (unbatched) as ``[..., T, B, F]``."""
    if unbatched:
        return t.unsqueeze(-2)
    return t.transpose(-3, -2) if batch_first else t


def _from_time_major(t: torch.Tensor, batch_first: bool, unbatched: bool) -> torch.Tensor:
    if unbatched:
        return t.squeeze(-2)
    return t.transpose(-3, -2) if batch_first else t


def _states_layout(t: Optional[torch.Tensor], unbatched: bool):
    return None if t is None else (t.unsqueeze(-2) if unbatched else t)


def recurrent(x, hx, weights: Sequence[torch.Tensor], r, *, spec: RecurrentSpec, eps: float,
              zero_bias: bool = False):
    """Relevance of a recurrent layer's input and initial state: ``(r_x, r_hx)`` (:func:`recurrent_steps`).

    torch.compile would unroll the loops over time (minutes of compilation for a few steps), so under compilation
    the step runs eagerly. ``torch.compiler.disable`` is applied then rather than at import: it imports
    ``torch._dynamo``, seconds that a program never compiled should not pay."""
    step = _eager_recurrent_steps() if torch.compiler.is_compiling() else recurrent_steps
    return step(x, hx, weights, r, spec=spec, eps=eps, zero_bias=zero_bias)


@functools.lru_cache(maxsize=1)
def _eager_recurrent_steps():
    return torch.compiler.disable(recurrent_steps)


def recurrent_steps(x, hx, weights: Sequence[torch.Tensor], r, *, spec: RecurrentSpec, eps: float,
                    zero_bias: bool = False):
    """Relevance of a recurrent layer's input and initial state: ``(r_x, r_hx)``.

    ``x`` is the layer input; ``hx`` the initial state as the layer took it (None, ``h0``, or ``(h0, c0)``);
    ``weights`` the layer's parameters in ``_flat_weights`` order; ``r`` the relevance of its result. ``r_hx``
    has the structure of ``hx`` (None where ``hx`` is None). Leading axes of ``r`` (several targets) are kept.
    """
    forward, backward = _CELLS[spec.mode]
    groups = _groups(weights, spec)
    unbatched = x.dim() == 2
    seq = _time_major(x, spec.batch_first, unbatched)
    r_flat = _flatten(r)
    r_seq = _time_major(r_flat[0], spec.batch_first, unbatched)
    r_states = [_states_layout(t, unbatched) for t in r_flat[1:]]
    if isinstance(hx, torch.Tensor):
        given = _states_layout(hx, unbatched)
    else:
        given = None if hx is None else tuple(_states_layout(t, unbatched) for t in hx)
    h0, c0 = _initial_states(given, seq, spec, groups)
    D = spec.directions
    r_h0, r_c0 = torch.zeros_like(r_states[0]), (torch.zeros_like(r_states[1]) if len(r_states) > 1 else None)
    # forward, layer by layer, keeping each (layer, direction)'s input and tape; the reverse direction runs on the
    # flipped sequence
    runs = []
    for layer in range(spec.num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            xs = seq.flip(0) if d else seq
            hs, tape = forward(xs, groups[k], h0[k], None if c0 is None else c0[k], zero_bias)
            runs.append((xs, tape))
            outs.append(hs.flip(0) if d else hs)
        seq = torch.cat(outs, dim=-1)
    # relevance backward, last layer first
    r_next = r_seq
    for layer in reversed(range(spec.num_layers)):
        r_in = 0
        for d, r_part in enumerate(r_next.chunk(D, dim=-1)):
            k = layer * D + d
            r_c = r_states[1][..., k, :, :] if len(r_states) > 1 else None
            xs, tape = runs[k]
            r_xs, r_h, r_c = backward(tape, xs, groups[k], r_part.flip(-3) if d else r_part,
                                      r_states[0][..., k, :, :], r_c, eps)
            r_in = r_in + (r_xs.flip(-3) if d else r_xs)
            r_h0[..., k, :, :] = r_h
            if r_c is not None:
                r_c0[..., k, :, :] = r_c
        r_next = r_in
    r_x = _from_time_major(r_next, spec.batch_first, unbatched)
    return r_x, _as_given(hx, r_h0, r_c0, unbatched)


def _as_given(hx, r_h0, r_c0, unbatched: bool):
    """The initial state's relevance in the structure the layer received ``hx`` in."""
    def layout(t):
        return t.squeeze(-2) if unbatched else t

    if hx is None:
        return None
    if isinstance(hx, torch.Tensor):
        return layout(r_h0)
    return tuple(layout(t) for t in (r_h0, r_c0)[:len(hx)])
