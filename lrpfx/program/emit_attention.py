"""Emitters of attention and recurrence: the softmax, bilinear products, a whole scaled dot-product attention in
the modified-gradient form, LSTM/GRU/RNN layers (registered with :func:`lrpfx.program.emit.emitter`).

An attention that the front-end split out of ``F.scaled_dot_product_attention`` (``QKᵀ``, scale, masks,
softmax, ``A V``; the node ``A V`` carries ``meta[meta_keys.SDPA]``) is explained step by step in general. Where
every step of it hands on relevance per value (AttnLRP and CP-LRP with ``eps = 0``), the chain is the
attention's own VJP with each operand's share scaled by the uniform splits, so one fused step replaces it
(:func:`lrpfx.rules.attention.attention_per_value`): PyTorch's fused attention kernel; the forward copy then
runs the attention as one kernel call too (:func:`forward_fused`), so the ``T × T`` weights are never formed.
Forbidden scores that are the causal pattern alone, however the model built them, are checked once per mask in
the forward and run as the kernel's causal mode (:func:`lrpfx.rules.attention.causal_pattern`).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.fx as fx

from .. import meta_keys
from ..frontend.attention import attention_blocked
from ..kinds import Kind, NodeInfo
from ..rules import ConstantAttention, MatmulUniform, RecurrentLRP, Rule, Softmax, attention, recurrent
from .emit import emitter, lrp0



@emitter(Softmax, Kind.SOFTMAX, per_value=lambda b, info, rule: True)
def emit_softmax(b, info: NodeInfo, rule: Softmax, r: fx.Node) -> None:
    n, dim = info.node, info.facts.dim
    if b.is_per_value(r):  # per value, AttnLRP's softmax rule is the softmax's VJP: no scores to rebuild
        b.contribute(info.x, b.call(attention.softmax_per_value, [b.env[n], r], {"dim": dim},
                                    name=f"g_{n.name}_in"), per_value=True)
        return
    lse = b.after(n, attention.log_normaliser, [b.env[info.x], b.env[n]], {"dim": dim}, name=f"{n.name}_lse")
    b.contribute(info.x, b.call(attention.softmax_from_output, [b.env[n], lse, r], {"dim": dim},
                                name=f"r_{n.name}_in"))


def _active(info: NodeInfo, rule: Rule) -> Tuple[bool, bool]:
    """Which operands of a product take relevance: the activations, less the attention weights under CP-LRP."""
    active, weights = info.facts.active, info.facts.softmax_operand
    if rule.holds_attention and weights is not None:
        active = tuple(flag and i != weights for i, flag in enumerate(active))
    return active


@emitter((MatmulUniform, ConstantAttention), Kind.MATMUL, per_value=lambda b, info, rule: lrp0(b, rule))
def emit_matmul(b, info: NodeInfo, rule: Rule, r: fx.Node) -> None:
    n = info.node
    fused = fusable_attention(b, info, rule)
    if fused is not None:
        return emit_fused_attention(b, fused, r)
    active = _active(info, rule)
    a, c = n.args[:2]
    per_value_in = b.is_per_value(r)
    sizes = [math.prod(b.infos[v].shape) if v in b.infos else 0 for v in (n, a, c)]
    z = None if per_value_in or sizes[0] > sizes[1] + sizes[2] else b.env[n]  # recompute attention scores
    per_value_out = lrp0(b, rule)
    fn, options = (attention.matmul_per_value, {"r_per_value": per_value_in}) if per_value_out else \
        (attention.matmul, {"eps": rule.eps})
    shares = b.call(fn, [b.env[a], b.env[c], z, r], {"active": active, **options}, name=f"r_{n.name}_in")
    for i, operand in enumerate((a, c)):
        if active[i]:
            b.contribute(operand, b.call(operator.getitem, [shares, i]), per_value=per_value_out)


# ---- a whole attention in one step ------------------------------------------------------------------------------
@dataclass(frozen=True)
class FusedAttention:
    """An attention split out of scaled_dot_product_attention, read back from its steps."""

    out: fx.Node
    q: fx.Node
    k: fx.Node  # as the product takes it (after a repeat of grouped heads), before the transpose
    v: fx.Node
    mask: Optional[fx.Node]  # a float mask added to the scores
    blocked: Optional[fx.Node]  # a boolean mask of forbidden scores, as the model wrote it
    scale: float
    shares: Tuple[float, float, float]  # each operand's share of the attention's VJP (0: it takes none)
    chain: Tuple[fx.Node, ...]  # the split steps between the operands and ``out``: no step reads their values
    causal: bool = False  # the keys after each query are forbidden too
    allowed: Optional[fx.Node] = None  # a boolean mask of the scores allowed (True), as SDPA takes it


def fusable_attention(b, info: NodeInfo, rule: Rule) -> Optional[FusedAttention]:
    """The attention ending at ``A V`` node ``info`` if its steps may run as one (see the module's docstring)."""
    out = info.node
    if not (b.modified_gradient and out.meta.get(meta_keys.SDPA) and lrp0(b, rule) and info.facts.softmax_operand == 0):
        return None
    weights, v = out.args[:2]
    active = _active(info, rule)
    share_a, share_v = (1.0 / sum(active) if flag else 0.0 for flag in active)
    chain = [weights]  # the nodes whose steps the fused step replaces: one consumer each
    x = _single_input(weights, torch.softmax)
    blocked = mask = None
    if x is not None and _is_call(x, torch.masked_fill):
        chain.append(x)
        x, blocked = x.args[0], x.args[1]
    if x is not None and _is_call(x, torch.add):
        chain.append(x)
        x, mask = x.args[:2]
    if x is None or not _is_call(x, torch.mul) or not isinstance(x.args[1], float):
        return None
    chain.append(x)
    scale, product = x.args[1], x.args[0]
    if not _is_call(product, torch.matmul) or not _is_call(product.args[1], torch.transpose):
        return None
    chain += [product, product.args[1]]
    q, k = product.args[0], product.args[1].args[0]
    if any(len(n.users) != 1 for n in chain) or any(n not in b.infos for n in chain):
        return None
    if b.intermediate is True or any(n in (b.intermediate or ()) or n in b.masked or n in b.node_gates
                                     or n in b.values for n in chain):
        return None  # a step of the chain is asked for or conditioned: keep the steps
    if share_a and not _chain_per_value(b, chain, product):
        return None
    share_q = share_k = 0.0
    if share_a:  # the chain hands relevance on to QKᵀ, a product of two activations (_chain_per_value)
        active_qk = b.infos[product].facts.active
        share_q, share_k = (share_a / sum(active_qk) if flag else 0.0 for flag in active_qk)
    causal, allowed = False, None
    if _is_call(blocked, attention_blocked) and len(blocked.users) == 1:
        # SDPA's own masks: kept as they are (one per model call) and combined only where not causal alone
        chain.append(blocked)
        allowed, causal, blocked = blocked.args[2], bool(blocked.args[3]), None
    return FusedAttention(out, q, k, v, mask, blocked, scale, (share_q, share_k, share_v), tuple(chain), causal,
                          allowed)


def fused_attentions(b) -> dict:
    """Every attention whose relevance runs as one step, by its ``A V`` node: the forward then runs it as one
    call of the fused kernel too (:func:`lrpfx.rules.attention.attention_forward`)."""
    found = {}
    for n, info in b.infos.items():
        if info.kind == Kind.MATMUL and n.meta.get(meta_keys.SDPA) and n in b.rules:
            fused = fusable_attention(b, info, b.rules[n])
            if fused is not None:
                found[n] = fused
    return found


def _masks(b, f: FusedAttention) -> list:
    """The float mask, the boolean masks and whether they forbid the causal pattern alone, as program values.
    The check runs in the forward, once per mask (:func:`lrpfx.rules.attention.causal_pattern`)."""
    values = [None if m is None else b.env[m] for m in (f.mask, f.blocked, f.allowed)]
    boolean = [m for m in (f.blocked, f.allowed) if m is not None]
    if len(boolean) != 1:  # none (the causal flag decides alone), or both (a rare pair: kept as a mask)
        return values + [False]
    key = (f.blocked, f.allowed, f.causal)
    if key not in b.causal_checks:
        b.causal_checks[key] = b.after(boolean[0], attention.causal_pattern, values[1:], {"causal": f.causal},
                                       name=f"{boolean[0].name}_is_causal")
    return values + [b.causal_checks[key]]


def forward_fused(b, f: FusedAttention) -> fx.Node:
    """The forward of a fused attention: one call of the fused kernel in place of its split steps."""
    forward = b.call(attention.attention_forward, [*[b.env[o] for o in (f.q, f.k, f.v)], *_masks(b, f)],
                     {"scale": f.scale, "causal": f.causal}, name=f"{f.out.name}_forward")
    b.fused_forward[f.out] = forward  # read by the relevance step (a block run again replaces it)
    return b.call(operator.getitem, [forward, 0], name=f.out.name)


def _chain_per_value(b, chain, product) -> bool:
    """Whether every step of the chain hands on relevance per value: the softmax rule, Pass on the scale,
    the VJP on masks and the transpose, LRP-0 on a float mask's sum and on ``QKᵀ``."""
    for n in chain:
        rule, kind = b.rules.get(n), b.infos[n].kind
        if rule is not None and kind in rule.routes_per_value:
            continue
        if kind == Kind.ADD and lrp0(b, rule) and not rule.zero_bias:
            continue
        if n is product and lrp0(b, rule) and rule.splits_uniformly:
            continue
        return False
    return True


def _is_call(n, target) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_function" and n.target is target


def _single_input(n: fx.Node, target) -> Optional[fx.Node]:
    return n.args[0] if _is_call(n, target) else None


def emit_fused_attention(b, f: FusedAttention, r: fx.Node) -> None:
    operands = (f.q, f.k, f.v)
    mask, blocked, allowed, is_causal_pattern = _masks(b, f)
    shares = b.call(attention.attention_per_value,
                    [*[b.env[o] for o in operands], mask, blocked, allowed, r, is_causal_pattern,
                     b.fused_forward[f.out]],
                    {"scale": f.scale, "shares": f.shares, "r_per_value": b.is_per_value(r), "causal": f.causal},
                    name=f"g_{f.out.name}_attention")
    for i, operand in enumerate(operands):
        if f.shares[i]:
            b.contribute(operand, b.call(operator.getitem, [shares, i]), per_value=True)


# ---- recurrence -------------------------------------------------------------------------------------------------
@emitter(RecurrentLRP, Kind.RECURRENT)
def emit_recurrent(b, info: NodeInfo, rule: RecurrentLRP, r: fx.Node) -> None:
    """An LSTM/GRU/RNN in one step (:func:`lrpfx.rules.recurrent.recurrent`): relevance of the input sequence
    and of the initial state, which arrives as the layer took it (None, one node, or a tuple of nodes)."""
    n, hx = info.node, info.facts.hx
    shares = b.call(recurrent.recurrent, [b.env[info.x], fx.node.map_arg(hx, lambda a: b.env[a]),
                                          [b.value(w) for w in info.weight], r],
                    {"spec": info.layer, "eps": rule.eps, "zero_bias": rule.zero_bias}, name=f"r_{n.name}_in")
    if info.x in b.infos:
        b.contribute(info.x, b.call(operator.getitem, [shares, 0]))
    if isinstance(hx, fx.Node) and hx in b.infos:
        b.contribute(hx, b.call(operator.getitem, [shares, 1]))
    elif isinstance(hx, tuple) and any(h in b.infos for h in hx):
        r_hx = b.call(operator.getitem, [shares, 1])
        for j, h in enumerate(hx):
            if h in b.infos:
                b.contribute(h, b.call(operator.getitem, [r_hx, j]))
