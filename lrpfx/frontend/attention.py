"""Fused attention split into its steps, on both front-ends: ``scaled_dot_product_attention`` (the function, or
its ATen op) becomes ``Q Kᵀ · scale``, the mask, the softmax and ``A V``, so that every step gets its rule. The
``A V`` node is marked (:data:`lrpfx.meta_keys.SDPA`): where all the steps' rules allow it, the program runs the
attention fused again (:mod:`lrpfx.program.emit_attention`)."""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F

from .. import meta_keys
from ..errors import UnsupportedOpError
from ..graph.nodes import call_arg as _arg
from ..rules.attention import forbidden_scores

aten = torch.ops.aten


_SDPA = (aten.scaled_dot_product_attention.default, F.scaled_dot_product_attention)


def attention_blocked(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor], is_causal: bool):
    """Where a boolean ``mask`` (True: may attend) and the causal pattern forbid attention: the split form's step,
    which the fused form reads back as SDPA's masks (:mod:`lrpfx.program.emit_attention`)."""
    return forbidden_scores(q, k, None, mask, is_causal)


def decompose_attention(gm: fx.GraphModule) -> bool:
    """Split every fused scaled dot-product attention into ``QKᵀ``, scaling, masking, softmax and ``A V``, so
    each step gets its own relevance rule (the fused kernel computes exactly this). Needs the shapes and dtypes
    of the operands (``meta['val']`` from export, or ``lrpfx_value`` after a recording run). Returns whether
    anything changed.

    Forbidden scores are filled with the dtype's most negative number rather than ``-inf``: a query row with
    every key masked (a padding position) then gives finite weights instead of NaN, which would otherwise leak
    into every relevance the products sum over; rows with any allowed key are unchanged.
    """
    changed = False
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target not in _SDPA:
            continue
        q, k, v = n.args[:3]
        mask = _arg(n, 3, "attn_mask")
        if _arg(n, 4, "dropout_p", 0.0) not in (0, 0.0):
            raise UnsupportedOpError(f"attention node '{n.name}' has dropout_p > 0: explain the model in eval mode")
        causal = bool(_arg(n, 5, "is_causal", False))
        q_shape, q_dtype = _shape_dtype(n, q)
        scale = n.kwargs.get("scale")
        scale = 1.0 / math.sqrt(q_shape[-1]) if scale is None else scale
        g = gm.graph
        with g.inserting_before(n):
            if n.kwargs.get("enable_gqa", False):
                k, v = _repeat_heads(g, n, q_shape, k), _repeat_heads(g, n, q_shape, v)
            scores = g.call_function(torch.matmul, (q, g.call_function(torch.transpose, (k, -2, -1))))
            scores = g.call_function(torch.mul, (scores, float(scale)))
            mask_is_float = isinstance(mask, fx.Node) and _shape_dtype(n, mask)[1].is_floating_point
            if mask_is_float:
                scores = g.call_function(torch.add, (scores, mask))
            if (mask is not None and not mask_is_float) or causal:
                blocked = g.call_function(attention_blocked, (q, k, None if mask_is_float else mask, causal))
                scores = g.call_function(torch.masked_fill, (scores, blocked, torch.finfo(q_dtype).min))
            weights = g.call_function(torch.softmax, (scores, -1))
            out = g.call_function(torch.matmul, (weights, v))
        for new in (scores, weights, out):
            new.meta["stack_trace"] = n.meta.get("stack_trace")
            new.meta["nn_module_stack"] = n.meta.get("nn_module_stack")
        out.meta[meta_keys.SDPA] = True  # the relevance pass may run the chain as one fused step (emit_attention)
        n.replace_all_uses_with(out)
        g.erase_node(n)
        changed = True
    if changed:
        gm.recompile()
    return changed


def _shape_dtype(n: fx.Node, operand) -> Tuple[Tuple[int, ...], torch.dtype]:
    value = operand.meta.get("val") if isinstance(operand, fx.Node) else None
    if value is not None and hasattr(value, "dtype"):
        return tuple(value.shape), value.dtype
    recorded = operand.meta.get(meta_keys.VALUE) if isinstance(operand, fx.Node) else None
    if recorded is not None and recorded.is_tensor:
        return tuple(recorded.shape), recorded.dtype
    raise UnsupportedOpError(f"attention node '{n.name}': the shape and dtype of its operand {operand} are unknown")


def _repeat_heads(g: fx.Graph, n: fx.Node, q_shape, kv: fx.Node) -> fx.Node:
    """Grouped key/value heads repeated to the query's head count (what ``enable_gqa`` means)."""
    kv_shape, _ = _shape_dtype(n, kv)
    return g.call_function(torch.repeat_interleave, (kv, q_shape[-3] // kv_shape[-3]), {"dim": -3})
