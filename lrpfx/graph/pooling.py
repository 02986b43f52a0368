"""Readers of pooling ops (window specs from a module's attributes or a call's arguments) and of max/min/top-k
over an axis, for the op registry (:mod:`lrpfx.graph.registry`); see :mod:`lrpfx.graph.readers`."""
from __future__ import annotations

from typing import Any, Dict

import torch.fx as fx

from ..kinds import NodeInfo
from ..rules.layers import AdaptiveAvgPool, AvgPool, MaxPool
from .nodes import op_label, op_name
from .readers import Call, as_tuple as _tuple


def _pool_dim(label: str) -> int:
    return 3 if "3d" in label else 1 if "1d" in label else 2


def avg_pool_spec(label: str, a: Dict[str, Any]):
    """An AvgPool/AdaptiveAvgPool spec from module attributes or call arguments; None if unusual."""
    dim = _pool_dim(label)
    if any(isinstance(v, fx.Node) for v in a.values()):
        return None
    if "output_size" in a:
        return AdaptiveAvgPool(dim, a["output_size"])
    kernel = _tuple(a["kernel_size"], dim)
    stride = _tuple(a.get("stride") or kernel, dim)
    return AvgPool(dim, kernel, stride, _tuple(a.get("padding", 0), dim), bool(a.get("ceil_mode", False)),
                   bool(a.get("count_include_pad", True)), a.get("divisor_override"))


def max_pool_spec(label: str, a: Dict[str, Any]):
    """A MaxPool spec, or None where the op returns indices itself or has graph-valued arguments."""
    dim = _pool_dim(label)
    if a.get("return_indices") or any(isinstance(v, fx.Node) for v in a.values()):
        return None
    if "output_size" in a:
        return MaxPool(dim, a["output_size"], adaptive=True)
    kernel = _tuple(a["kernel_size"], dim)
    return MaxPool(dim, kernel, _tuple(a.get("stride") or kernel, dim), _tuple(a.get("padding", 0), dim),
                   _tuple(a.get("dilation", 1), dim), bool(a.get("ceil_mode", False)))


_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _pool_arguments(call: Call, names) -> Dict[str, Any]:
    """Arguments of a pooling call by name (adaptive pools take ``output_size`` first)."""
    if "adaptive" in op_label(call.node):
        names = ("output_size", "return_indices")
    values = {name: call.arg(i + 1, name, None) for i, name in enumerate(names)}
    return {k: v for k, v in values.items() if v is not None}


def avg_pool_module(info: NodeInfo, call: Call) -> bool:
    info.layer = avg_pool_spec(type(call.module).__name__, vars(call.module))
    return True


def max_pool_module(info: NodeInfo, call: Call) -> bool:
    info.layer = max_pool_spec(type(call.module).__name__, vars(call.module))
    return True


def avg_pool_call(info: NodeInfo, call: Call) -> bool:
    info.layer = avg_pool_spec(op_label(call.node), _pool_arguments(call, _AVG_POOL_ARGS))
    return True


def max_pool_call(info: NodeInfo, call: Call) -> bool:
    info.layer = max_pool_spec(op_label(call.node), _pool_arguments(call, _MAX_POOL_ARGS))
    return True


def selection(info: NodeInfo, call: Call) -> bool:
    """max/min over an axis or of everything, top-k: winner takes all (``torch.max(a, b)`` does not select);
    no window spec, so relevance is routed by the op's own gradient."""
    if len(call.acts) != 1:
        return False
    if op_name(call.node) in ("amax", "amin", "topk", "sort"):
        return True
    dim = call.arg(1, "dim")
    return dim is None or (isinstance(dim, int) and not isinstance(dim, bool))


