"""An independent float64 NumPy reference of LRP through LSTM, GRU and Elman RNN layers (Arras et al. 2017, 2019).

Written sample by sample and step by step in the style of Arras et al.'s published code: every linear map goes
through :func:`lrp_linear` (explicit message matrices, epsilon rule, biases keep their share), gate products
give everything to the signal, sums are split in proportion. No torch here: parameters come in as NumPy arrays in
PyTorch's layout (gates stacked i, f, g, o for LSTM and r, z, n for GRU).
"""
from __future__ import annotations

import numpy as np


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def share(part, whole, eps):
    """``part / stab(whole)``, 0 where the denominator is exactly 0 (lrpfx's convention for eps = 0)."""
    d = stab(whole, eps)
    return np.where(d == 0, 0.0, part / np.where(d == 0, 1.0, d))


def lrp_linear(h_in, w, h_out, r_out, eps):
    """Epsilon rule for ``h_out = w @ h_in + b`` (one sample): message ``w[k, j] h_in[j] / stab(h_out[k])``."""
    messages = w * h_in[None, :] * share(np.ones_like(h_out), h_out, eps)[:, None] * r_out[:, None]
    return messages.sum(axis=0)


# ---- one direction of one layer, one sample -------------------------------------------------------------------
def lstm_direction(xs, p, h0, c0, r_outs, r_hT, r_cT, eps, zero_bias):
    """Forward over ``xs`` (list of [I]) then relevance backward; returns outputs, h_T, c_T, R_xs, R_h0, R_c0."""
    w_ih, w_hh, b_ih, b_hh, w_hr = p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], p["w_hr"]
    H = w_hh.shape[0] // 4
    b = b_ih + b_hh
    h, c, steps = h0, c0, []
    for x in xs:
        a = w_ih @ x + w_hh @ h + b
        i, f, g, o = sigmoid(a[:H]), sigmoid(a[H:2 * H]), np.tanh(a[2 * H:3 * H]), sigmoid(a[3 * H:])
        c_new = f * c + i * g
        m = o * np.tanh(c_new)
        h_new = w_hr @ m if w_hr is not None else m
        a_g = a[2 * H:3 * H] - (b[2 * H:3 * H] if zero_bias else 0.0)
        steps.append(dict(x=x, h=h, c=c, i=i, f=f, g=g, c_new=c_new, a_g=a_g, m=m, h_new=h_new))
        h, c = h_new, c_new
    outs, hT, cT = [s["h_new"] for s in steps], h, c
    r_h, r_c, r_xs = r_hT.copy(), r_cT.copy(), [None] * len(xs)
    W_g = np.concatenate([w_ih[2 * H:3 * H], w_hh[2 * H:3 * H]], axis=1)  # g's map on [x; h]
    for t in reversed(range(len(xs))):
        s = steps[t]
        r_h = r_h + r_outs[t]
        r_m = lrp_linear(s["m"], w_hr, s["h_new"], r_h, eps) if w_hr is not None else r_h
        r_c = r_c + r_m
        r_fc = share(s["f"] * s["c"], s["c_new"], eps) * r_c
        r_ig = share(s["i"] * s["g"], s["c_new"], eps) * r_c
        r_xh = lrp_linear(np.concatenate([s["x"], s["h"]]), W_g, s["a_g"], r_ig, eps)
        r_xs[t], r_h = r_xh[:len(s["x"])], r_xh[len(s["x"]):]
        r_c = r_fc
    return outs, hT, cT, r_xs, r_h, r_c


def gru_direction(xs, p, h0, c0, r_outs, r_hT, r_cT, eps, zero_bias):
    w_ih, w_hh, b_ih, b_hh = p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"]
    H = w_hh.shape[0] // 3
    h, steps = h0, []
    for x in xs:
        gi, gh = w_ih @ x + b_ih, w_hh @ h + b_hh
        r = sigmoid(gi[:H] + gh[:H])
        z = sigmoid(gi[H:2 * H] + gh[H:2 * H])
        u, s_ = gi[2 * H:], gh[2 * H:]
        n = np.tanh(u + r * s_)
        h_new = (1 - z) * n + z * h
        if zero_bias:
            u, s_ = u - b_ih[2 * H:], s_ - b_hh[2 * H:]
        steps.append(dict(x=x, h=h, r=r, z=z, n=n, u=u, s=s_, h_new=h_new))
        h = h_new
    outs, hT = [s["h_new"] for s in steps], h
    r_h, r_xs = r_hT.copy(), [None] * len(xs)
    for t in reversed(range(len(xs))):
        s = steps[t]
        r_h = r_h + r_outs[t]
        r_n = share((1 - s["z"]) * s["n"], s["h_new"], eps) * r_h
        r_direct = share(s["z"] * s["h"], s["h_new"], eps) * r_h
        a_n = s["u"] + s["r"] * s["s"]
        r_u = share(s["u"], a_n, eps) * r_n
        r_rs = share(s["r"] * s["s"], a_n, eps) * r_n
        r_xs[t] = lrp_linear(s["x"], w_ih[2 * H:], s["u"], r_u, eps)
        r_h = r_direct + lrp_linear(s["h"], w_hh[2 * H:], s["s"], r_rs, eps)
    return outs, hT, None, r_xs, r_h, None


def rnn_direction(xs, p, h0, c0, r_outs, r_hT, r_cT, eps, zero_bias, relu=False):
    w_ih, w_hh, b = p["w_ih"], p["w_hh"], p["b_ih"] + p["b_hh"]
    h, steps = h0, []
    for x in xs:
        a = w_ih @ x + w_hh @ h + b
        h_new = np.maximum(a, 0) if relu else np.tanh(a)
        steps.append(dict(x=x, h=h, a=a - (b if zero_bias else 0.0), h_new=h_new))
        h = h_new
    outs = [s["h_new"] for s in steps]
    r_h, r_xs = r_hT.copy(), [None] * len(xs)
    W = np.concatenate([w_ih, w_hh], axis=1)
    for t in reversed(range(len(xs))):
        s = steps[t]
        r_a = r_h + r_outs[t]
        r_xh = lrp_linear(np.concatenate([s["x"], s["h"]]), W, s["a"], r_a, eps)
        r_xs[t], r_h = r_xh[:len(s["x"])], r_xh[len(s["x"]):]
    return outs, h, None, r_xs, r_h, None


DIRECTIONS = {"LSTM": lstm_direction, "GRU": gru_direction, "RNN_TANH": rnn_direction,
              "RNN_RELU": lambda *a: rnn_direction(*a, relu=True)}


# ---- the whole layer --------------------------------------------------------------------------------------------
def layer_relevance(mode, params, x, h0, c0, r_out, r_hn, r_cn, *, num_layers, bidirectional, eps, zero_bias):
    """LRP of a stacked (bi)directional recurrent layer, batch first.

    ``params[layer * D + d]`` is a dict w_ih, w_hh, b_ih, b_hh (zeros without biases), w_hr (None without a
    projection). ``x`` [B, T, I]; ``h0``/``c0``/``r_hn``/``r_cn`` [L·D, B, ·] (c's None for GRU/RNN);
    ``r_out`` [B, T, D·H]. Returns ``out, h_n, c_n, R_x, R_h0, R_c0`` (NumPy, float64).
    """
    D = 2 if bidirectional else 1
    B, T, _ = x.shape
    run = DIRECTIONS[mode]
    outs = np.zeros((B, T, r_out.shape[-1]))
    h_n, r_h0 = np.zeros_like(h0), np.zeros_like(h0)
    c_n = None if c0 is None else np.zeros_like(c0)
    r_c0 = None if c0 is None else np.zeros_like(c0)
    r_x = np.zeros_like(x)
    for b in range(B):
        seqs = [x[b]]  # layer inputs, [T, F]
        tapes = {}
        for layer in range(num_layers):  # forward: only to get every layer's input sequence
            parts = []
            for d in range(D):
                k = layer * D + d
                order = range(T - 1, -1, -1) if d else range(T)
                xs = [seqs[-1][t] for t in order]
                P = params[k]["w_hh"].shape[1]
                zeros = [np.zeros(P) for _ in order]
                c_start = None if c0 is None else c0[k, b]
                out_d, hT, cT, *_ = run(xs, params[k], h0[k, b], c_start, zeros, np.zeros(P),
                                        None if c0 is None else np.zeros_like(c_start), eps, zero_bias)
                h_n[k, b] = hT
                if c_n is not None:
                    c_n[k, b] = cT
                tapes[k] = list(order)
                seq = np.zeros((T, P))
                for j, t in enumerate(order):
                    seq[t] = out_d[j]
                parts.append(seq)
            seqs.append(np.concatenate(parts, axis=1))
        outs[b] = seqs[-1]
        r_next = r_out[b]
        for layer in reversed(range(num_layers)):
            r_in = np.zeros_like(seqs[layer])
            for d in range(D):
                k = layer * D + d
                P = params[k]["w_hh"].shape[1]
                order = tapes[k]
                xs = [seqs[layer][t] for t in order]
                r_outs = [r_next[t, d * P:(d + 1) * P] for t in order]
                r_cT = r_cn[k, b] if c0 is not None else None
                *_, r_xs, rh, rc = run(xs, params[k], h0[k, b], None if c0 is None else c0[k, b], r_outs,
                                       r_hn[k, b], r_cT, eps, zero_bias)
                for j, t in enumerate(order):
                    r_in[t] += r_xs[j]
                r_h0[k, b] = rh
                if r_c0 is not None:
                    r_c0[k, b] = rc
            r_next = r_in
        r_x[b] = r_next
    return outs, h_n, c_n, r_x, r_h0, r_c0
