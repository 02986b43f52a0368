"""Relevance rules of the transformer operations (docs/rules.md; Achtibat et al. 2024, AttnLRP) as pure functions."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .elementwise import _sum_to, target_axes
from . import temporaries
from .stabilize import divide


def softmax(x, s, r, *, dim: int):
    """``R_in = x · (R - s · ΣR)`` along ``dim`` (``s = softmax(x)``).

    Masked scores (``x = -inf``) have ``s = 0`` and no relevance arrives there; they get 0 rather than
    ``-inf · 0 = NaN``. Computed in place on its own temporaries: two score-sized buffers at a time.
    """
    axis = dim if dim < 0 else dim - s.dim()  # negative: r may carry a leading target axis
    out = s * r.sum(dim=axis, keepdim=True)
    out = temporaries.rsub(r, out)
    blocked = torch.isneginf(x)
    if temporaries.overwritable():
        return out.mul_(x).masked_fill_(blocked, 0.0)
    return out * x.masked_fill(blocked, 0.0)  # autograd: no -inf factor, whose derivative would be NaN


def log_normaliser(x, s, *, dim: int):
    """``logsumexp(x)`` along ``dim`` without another pass of ``exp``: ``max(x) - log(max(s))``, since the largest
    score has the largest weight and ``s = exp(x - lse)``."""
    return x.amax(dim, keepdim=True) - torch.log(s.amax(dim, keepdim=True))


def softmax_from_output(s, lse, r, *, dim: int):
    """:func:`softmax` from the output and the per-row ``lse = logsumexp(x)``, with ``x = log(s) + lse``.

    The program keeps ``s`` (the relevance of the product it feeds needs it anyway) and the small ``lse``
    instead of the full score tensor. Where ``s == 0`` (masked or underflowed scores) ``x`` is ``-inf`` and the
    result is 0, as for masked scores.
    """
    if temporaries.overwritable():
        return softmax(torch.log(s).add_(lse), s, r, dim=dim)
    # autograd: log(0)'s derivative is infinite, and 0 times it NaN; the masked scores' -inf is put back after
    zero = s == 0
    x = (torch.log(s.masked_fill(zero, 1.0)) + lse).masked_fill(zero, float("-inf"))
    return softmax(x, s, r, dim=dim)


def softmax_per_value(s, g, *, dim: int):
    """:func:`softmax` for relevance per output value ``g`` (``R = s·g``), per input value: ``s·(g - Σ s·g)``,
    which is the softmax's own VJP. Masked scores (``s = 0``) get 0."""
    axis = dim if dim < 0 else dim - s.dim()
    sg = s * g
    return temporaries.sub(sg, s * sg.sum(dim=axis, keepdim=True))


def matmul_per_value(a, b, z, r, *, active: Tuple[bool, bool], r_per_value: bool):
    """:func:`matmul` with ``eps = 0`` in the modified-gradient form: each active operand's relevance divided
    by the operand, ``(s @ Bᵀ)`` and ``(Aᵀ @ s)`` with ``s = r / (n·z)``, or ``s = r / n`` when ``r`` is already
    per value of ``z`` (then ``z`` is not needed; ``None`` recomputes it otherwise)."""
    n = sum(active)
    if r_per_value:
        s = r / n if n > 1 else r
        keep = r.dim() - max(a.dim(), b.dim())
    else:
        z = a @ b if z is None else z
        s = divide(r, z * n if n > 1 else z, 0.0)
        keep = target_axes(r, z)
    g_a = _sum_to(s @ _t(b), a.shape, keep) if active[0] else None
    g_b = _sum_to(_t(a) @ s, b.shape, keep) if active[1] else None
    return g_a, g_b


def _additive_mask(q, mask, blocked):
    """The float mask and the forbidden scores (the dtype's minimum, as the split form fills them) as one
    additive mask for the fused kernel."""
    if blocked is None:
        return mask
    fill = temporaries.masked_fill(torch.zeros(blocked.shape, dtype=q.dtype, device=q.device), blocked,
                                  torch.finfo(q.dtype).min)
    return fill if mask is None else mask + fill


def forbidden_scores(q, k, blocked, allowed, causal: bool):
    """The boolean forbidden scores: ``blocked``, where ``allowed`` is False, and with ``causal`` the keys after
    each query; None where nothing is forbidden."""
    out = blocked
    if allowed is not None:
        out = ~allowed if out is None else out | ~allowed
    if causal:
        pattern = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).triu(1)
        out = pattern if out is None else out | pattern
    return out


def causal_pattern(blocked=None, allowed=None, causal: bool = False) -> bool:
    """Whether the forbidden scores (:func:`forbidden_scores` of the boolean masks) are the causal pattern and
    nothing else (each query sees its own position and the keys before it, for every batch entry and head): the
    fused kernel then takes ``is_causal`` and skips the forbidden blocks, half its work at long contexts, instead
    of reading a ``T × T`` mask. Model code often spells the causal mask out (comparisons of positions); this
    knows it by its values, a block of rows at a time (no ``T × T`` temporary). Under compilation False: a
    branch on values would break the compiled graph."""
    masks = [m for m in (blocked, allowed) if m is not None]
    if not masks or any(m.dtype != torch.bool for m in masks) or torch.compiler.is_compiling():
        return False
    length, source = torch.broadcast_shapes(*(m.shape for m in masks))[-2:]
    if length == 1 and source > 1:  # one row for every query: not the pattern of a sequence
        return False
    keys = torch.arange(source, device=masks[0].device)
    step = max(1, _CHECKED_SCORES // source)
    for start in range(0, length, step):
        rows = slice(start, min(start + step, length))
        pattern = keys > torch.arange(rows.start, rows.stop, device=keys.device)[:, None]
        forbidden = pattern if causal else torch.zeros_like(pattern)
        if blocked is not None:
            forbidden = forbidden | blocked[..., rows, :]
        if allowed is not None:
            forbidden = forbidden | ~allowed[..., rows, :]
        if not bool((forbidden == pattern).all()):
            return False
    return True


_CHECKED_SCORES = 1 << 22


def _kernel_masks(q, k, mask, blocked, allowed, causal: bool, is_causal_pattern: bool):
    """The fused kernel's ``attn_mask`` and ``is_causal`` for a float mask, the boolean masks and the causal flag."""
    if mask is None and (is_causal_pattern or (causal and blocked is None and allowed is None)):
        return None, True
    return _additive_mask(q, mask, forbidden_scores(q, k, blocked, allowed, causal)), False


def attention_forward(q, k, v, mask, blocked, allowed, is_causal_pattern: bool = False, *, scale: float,
                      causal: bool = False):
    """``softmax(QKᵀ·scale + mask) V`` with forbidden scores (:func:`forbidden_scores`) at the dtype's minimum,
    by the fused kernel: the forward of an attention whose relevance runs as one step (no step reads its weights).
    ``is_causal_pattern``: :func:`causal_pattern` of the masks, taken once per mask. Returns the output and
    what the kernel's backward reads besides it (the rows' log-normalisers), or None where the relevance step
    must run the forward again (:func:`_cpu_kernel_applies`)."""
    attn_mask, is_causal = _kernel_masks(q, k, mask, blocked, allowed, causal, is_causal_pattern)
    if _cpu_kernel_applies(q, k, v):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal,
                                                                             attn_mask=attn_mask, scale=scale)
        return out, lse
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=scale,
                                                            is_causal=is_causal), None


def _cpu_kernel_applies(*tensors) -> bool:
    """Whether the CPU's flash-attention kernel may be called directly, so that its backward can reuse the
    forward's output and log-normalisers instead of running the forward again: plain (unwrapped, no autograd)
    CPU tensors of one batch of heads. Otherwise — another device, several targets' leading axis, autograd, a
    torch.func transform, compilation — the public kernel and its VJP run."""
    q, k, v = tensors[:3]
    return (q.device.type == "cpu" and q.dim() == 4 and q.dtype in _CPU_KERNEL_DTYPES
            and q.shape[-1] == k.shape[-1] == v.shape[-1]  # one head size (the public kernel handles others)
            and not torch.compiler.is_compiling() and not torch.is_grad_enabled()
            and all(t.dim() == 4 and not torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors))


_CPU_KERNEL_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def attention_per_value(q, k, v, mask, blocked, allowed, r, is_causal_pattern: bool = False, forward=(None, None), *,
                        scale: float, shares: Tuple[float, float, float], r_per_value: bool = True,
                        causal: bool = False):
    """AttnLRP/CP-LRP with ``eps = 0`` through a whole attention ``softmax(QKᵀ·scale + mask) V``, per value.

    Step by step, per value, the ``A V`` product halves the relevance to ``A`` and ``V`` (uniform rule), the
    softmax rule is the softmax's VJP, the scale and masks are linear, and ``QKᵀ`` halves again: together the
    attention's own VJP with each operand's result times its share (¼, ¼, ½ under AttnLRP; 0, 0, 1 under CP-LRP).
    So it runs as PyTorch's fused attention (forward and backward), which keeps no ``T × T`` weights. Forbidden
    scores (:func:`forbidden_scores`) take the dtype's most negative number, as in the split form. ``r`` (with a leading
    target axis for several targets) is relevance per output value, or relevance (``r_per_value=False``).
    ``forward``: :func:`attention_forward`'s output; where it kept the log-normalisers, the kernel's backward
    runs on them directly.
    """
    bias, is_causal = _kernel_masks(q, k, mask, blocked, allowed, causal, is_causal_pattern)
    out, lse = forward
    if lse is not None and _cpu_kernel_applies(q, k, v, r):
        g = r if r_per_value else divide(r, out, 0.0)
        grads = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            g, q, k, v, out, lse, 0.0, is_causal, attn_mask=bias, scale=scale)
        return tuple(grad * share if share else None for grad, share in zip(grads, shares))
    lead = r.dim() - q.dim()  # several targets: the targets become leading batch axes of the attention
    operands = [t.expand(*r.shape[:lead], *t.shape) if lead else t for t in (q, k, v)]
    active = [i for i, share in enumerate(shares) if share]

    def fn(*xs):
        args = list(operands)
        for i, x in zip(active, xs):
            args[i] = x
        return torch.nn.functional.scaled_dot_product_attention(*args, attn_mask=bias, scale=scale, is_causal=is_causal)

    out, pullback = torch.func.vjp(fn, *[operands[i] for i in active])
    g = r if r_per_value else divide(r, out, 0.0)
    pulled = dict(zip(active, pullback(g)))
    return tuple(pulled[i] * shares[i] if i in pulled else None for i in range(3))


def _t(m: torch.Tensor) -> torch.Tensor:
    return m.transpose(-1, -2)


def matmul(a, b, z, r, *, active: Tuple[bool, bool], eps: float) -> Tuple[Optional[torch.Tensor], ...]:
    """Bilinear ``z = a @ b``: each active operand gets the epsilon rule on ``r / n`` (``n`` active operands).

    A constant operand gets nothing (``None``); with one active operand this is the epsilon rule of the linear
    map it defines. Operands that were broadcast over batch axes get their relevance summed back. ``z=None``
    recomputes the product (the program does so where it is larger than both operands: attention scores).
    """
    z = a @ b if z is None else z
    n = sum(active)
    s = divide(r, z * n if n > 1 else z, eps)
    keep = target_axes(r, z)
    r_a = _sum_to(a * (s @ _t(b)), a.shape, keep) if active[0] else None
    r_b = _sum_to(b * (_t(a) @ s), b.shape, keep) if active[1] else None
    return r_a, r_b
