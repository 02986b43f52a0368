"""Classification: every node of the traced graph that carries relevance gets a *kind* and its static facts.

One table per node op (modules by type, functions by identity, methods by name) says what a node is. The
result is a :class:`NodeInfo` per activation node — a node whose value is a float tensor computed from the
inputs. Everything else (parameters, shapes, sizes) is a constant and carries no relevance.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .rules.layers import AdaptiveAvgPool, AvgPool, Conv, ConvTranspose, Linear, MaxPool

# ---- module tables --------------------------------------------------------------------------------------
_ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Mish, nn.PReLU, nn.Softsign, nn.Tanhshrink,
    nn.LogSigmoid, nn.Threshold,
)
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                     nn.FeatureAlphaDropout)
_AVG_POOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                     nn.AdaptiveAvgPool3d)
_MAX_POOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                     nn.AdaptiveMaxPool3d)
_STRUCTURAL_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
                       nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d,
                       nn.ReplicationPad1d, nn.ReplicationPad2d, nn.ChannelShuffle, nn.Upsample,
                       nn.PixelShuffle, nn.PixelUnshuffle)
_BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus, nn.Hardsigmoid)
# f(0) != 0: a zero input does not give a zero output (matters for the relevance-support analysis)
_NONZERO_AT_ZERO_MODULES = (nn.Sigmoid, nn.Softplus, nn.Hardsigmoid, nn.LogSigmoid, nn.Threshold)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)

# ---- function tables ------------------------------------------------------------------------------------
_ACTIVATION_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, torch.sigmoid, F.sigmoid,
    torch.tanh, F.tanh, F.hardswish, F.hardsigmoid, F.hardtanh, F.softplus, F.mish, F.logsigmoid, F.softsign,
}
_NONNEG_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus}
_NONZERO_AT_ZERO_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.logsigmoid}
_RELU_FUNCTIONS = {F.relu, torch.relu, F.relu6}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout, F.alpha_dropout,
                       torch.clone, torch.Tensor.contiguous}
_AVG_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
                       F.adaptive_avg_pool3d, torch.avg_pool1d}
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
                       F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d, torch.max_pool3d}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.unflatten}
_STRUCTURAL_FUNCTIONS = {
    torch.cat, torch.concat, torch.stack, torch.split, torch.chunk, torch.unbind, torch.permute, torch.transpose,
    torch.squeeze, torch.unsqueeze, operator.getitem, F.pad, torch.narrow, torch.index_select, torch.roll,
    torch.flip, torch.movedim, torch.swapaxes, torch.hstack, torch.vstack, F.interpolate, F.pixel_shuffle,
    F.pixel_unshuffle, torch.channel_shuffle, torch.tensor_split, torch.gather,
}
_REDUCE_FUNCTIONS = {torch.sum, torch.mean}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
_SUB_FUNCTIONS = {operator.sub, torch.sub, operator.isub}
_MUL_FUNCTIONS = {operator.mul, torch.mul, operator.imul}
_DIV_FUNCTIONS = {operator.truediv, torch.div, operator.itruediv}
_NEG_FUNCTIONS = {operator.neg, torch.neg}
_CONV_FUNCTIONS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_CONV_T_FUNCTIONS = {F.conv_transpose1d: 1, F.conv_transpose2d: 2, F.conv_transpose3d: 3}

# ---- method tables (call_method targets, in-place underscore already stripped) ----------------------------
_ACTIVATION_METHODS = {"relu", "sigmoid", "tanh", "softplus"}
_NONNEG_METHODS = {"relu", "sigmoid"}
_NONZERO_AT_ZERO_METHODS = {"sigmoid", "softplus"}
_IDENTITY_METHODS = {"contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "unflatten", "view_as", "reshape_as"}
_STRUCTURAL_METHODS = {"permute", "transpose", "squeeze", "unsqueeze", "expand", "expand_as", "repeat",
                       "chunk", "split", "unbind", "narrow", "flip", "roll", "movedim", "__getitem__",
                       "index_select", "gather", "tensor_split", "swapaxes", "t"}
_REDUCE_METHODS = {"sum", "mean"}
_ADD_METHODS, _SUB_METHODS, _MUL_METHODS, _DIV_METHODS, _NEG_METHODS = {"add"}, {"sub"}, {"mul"}, {"div"}, {"neg"}

# In-place variants that tracing may record; the program runs their out-of-place forms.
OUT_OF_PLACE_FUNCTIONS = {operator.iadd: operator.add, operator.isub: operator.sub, operator.imul: operator.mul,
                          operator.itruediv: operator.truediv}


def out_of_place_method(name: str) -> str:
    """``relu_`` -> ``relu``; dunder names are left alone."""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


@dataclass
class NodeInfo:
    """What lrpfx knows about one activation node. ``kind`` drives the choice of rule (see ``lrpfx.rules``)."""

    node: fx.Node
    kind: str
    name: str  # module qualified name for call_module nodes, else the node name
    op: str  # a readable label: module class or function name
    module: Optional[nn.Module] = None
    layer: Any = None  # a spec from lrpfx.rules.layers for affine nodes
    x: Optional[fx.Node] = None  # the activation input of single-input kinds
    weight: Any = None  # fx.Node or parameter path string ("features.0.weight") or None
    bias: Any = None
    activations: List[fx.Node] = field(default_factory=list)  # all activation inputs, in argument order
    extra: Dict[str, Any] = field(default_factory=dict)
    nonneg: bool = False
    folded_into: Optional[fx.Node] = None  # a BatchNorm that absorbs this affine node
    fold_from: Optional["NodeInfo"] = None  # on a BatchNorm: the affine node it absorbs
    positive_only: bool = False  # the relevance arriving here is zero wherever the value is <= 0 (see canonize)

    @property
    def shape(self):
        return self.node.meta["lrpfx_value"].shape


def parameter_of(gm: fx.GraphModule, source) -> Optional[torch.Tensor]:
    """The tensor behind a weight source: a parameter path string or a ``get_attr`` node; None otherwise."""
    if isinstance(source, fx.Node) and source.op == "get_attr":
        source = source.target
    return attribute(gm, source) if isinstance(source, str) else None


def attribute(root, path: str):
    """``root.a.b.c`` for the dotted ``path`` ``"a.b.c"`` (submodules, parameters, buffers)."""
    obj = root
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _keeps_sign_module(m: nn.Module) -> bool:
    """Output elements are input elements or zeros (so ``x >= 0`` stays true)."""
    if isinstance(m, nn.Upsample):
        return m.mode == "nearest"
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        return m.value >= 0
    return True


def _target_name(node: fx.Node) -> str:
    t = node.target
    if node.op == "call_method":
        return f"Tensor.{t}"
    if node.op == "call_module":
        return t
    try:
        return fx.node._get_qualified_name(t).replace("_operator.", "operator.")
    except Exception:  # exotic callables without a stable qualified name
        return getattr(t, "__name__", None) or str(t)


def activation_nodes(gm: fx.GraphModule) -> Dict[fx.Node, bool]:
    """Nodes whose value is a float tensor (or tuple of them) computed from a float input placeholder."""
    active: Dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        info = n.meta.get("lrpfx_value")
        floaty = info is not None and (info.is_float_tensor or (
            info.tuple_len is not None and info.dtype is not None and info.dtype.is_floating_point))
        if not floaty or n.op == "output":
            continue
        if n.op == "placeholder" or any(a in active for a in n.all_input_nodes):
            active[n] = True
    return active


def classify(gm: fx.GraphModule) -> Dict[fx.Node, NodeInfo]:
    """A :class:`NodeInfo` for every activation node of ``gm`` (``kind='unknown'`` where no table matches)."""
    active = activation_nodes(gm)
    infos: Dict[fx.Node, NodeInfo] = {}
    for n in gm.graph.nodes:
        if n not in active:
            continue
        acts = [a for a in n.all_input_nodes if a in active]
        if n.op == "placeholder":
            info = NodeInfo(n, "input", n.name, "input")
        elif n.op == "call_module":
            info = _classify_module(n, gm.get_submodule(n.target), acts)
        elif n.op == "call_function":
            info = _classify_function(n, acts, active)
        elif n.op == "call_method":
            info = _classify_method(n, acts, active)
        else:
            info = NodeInfo(n, "unknown", n.name, n.op)
        info.activations = acts
        infos[n] = info
    return infos


def _single(acts):
    return acts[0] if len(acts) == 1 else None


def _conv_layer(module_or_kwargs, dim: int, weight_shape) -> Conv:
    m = module_or_kwargs
    stride, padding, dilation, groups = m["stride"], m["padding"], m["dilation"], m["groups"]
    stride, dilation = _tuple(stride, dim), _tuple(dilation, dim)
    mode = m.get("padding_mode", "zeros")
    if padding == "valid":
        padding = 0
    if padding == "same":
        # PyTorch pads d*(k-1) in total per axis, the odd element at the end; F.pad takes the last axis first
        totals = [d * (k - 1) for k, d in zip(weight_shape[2:], dilation)]
        pad = tuple(p for t in reversed(totals) for p in (t // 2, t - t // 2))
        if any(t % 2 for t in totals) or mode != "zeros":
            return Conv(dim, stride, (0,) * dim, dilation, groups, "constant" if mode == "zeros" else mode, pad)
        padding = tuple(t // 2 for t in totals)
    padding = _tuple(padding, dim)
    pad = tuple(p for p in reversed(padding) for _ in range(2)) if mode != "zeros" else ()
    return Conv(dim, stride, padding, dilation, groups, mode, pad)


_AVG_POOL_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")
_MAX_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _pool_kwargs(n: fx.Node, names) -> Dict[str, Any]:
    """Arguments of a functional pooling call by name (adaptive pools take ``output_size`` first)."""
    if "adaptive" in _target_name(n):
        names = ("output_size", "return_indices")
    values = {name: _arg(n, i + 1, name, None) for i, name in enumerate(names)}
    return {k: v for k, v in values.items() if v is not None}


def _pool_dim(label: str) -> int:
    return 3 if "3d" in label else (1 if "1d" in label else 2)


def _avg_pool_spec(label: str, a: Dict[str, Any]):
    """An AvgPool/AdaptiveAvgPool spec from module attributes or functional arguments; None if unusual."""
    dim = _pool_dim(label)
    if any(isinstance(v, fx.Node) for v in a.values()):
        return None
    if "output_size" in a:
        return AdaptiveAvgPool(dim, a["output_size"])
    kernel = _tuple(a["kernel_size"], dim)
    stride = _tuple(a.get("stride") or kernel, dim)
    return AvgPool(dim, kernel, stride, _tuple(a.get("padding", 0), dim), bool(a.get("ceil_mode", False)),
                   bool(a.get("count_include_pad", True)), a.get("divisor_override"))


def _max_pool_spec(label: str, a: Dict[str, Any]):
    """A MaxPool spec, or None where the op returns indices itself or has graph-valued arguments."""
    dim = _pool_dim(label)
    if a.get("return_indices") or any(isinstance(v, fx.Node) for v in a.values()):
        return None
    if "output_size" in a:
        return MaxPool(dim, a["output_size"], adaptive=True)
    kernel = _tuple(a["kernel_size"], dim)
    return MaxPool(dim, kernel, _tuple(a.get("stride") or kernel, dim), _tuple(a.get("padding", 0), dim),
                   _tuple(a.get("dilation", 1), dim), bool(a.get("ceil_mode", False)))


def _tuple(v, dim):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dim


def _classify_module(n: fx.Node, m: nn.Module, acts) -> NodeInfo:
    name, op = n.target, type(m).__name__
    x = _single(acts)
    info = NodeInfo(n, "unknown", name, op, module=m, x=x)
    if x is None or n.args[0] is not x:
        return info
    if isinstance(m, nn.Linear):
        info.kind, info.layer = "linear", Linear()
    elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        info.kind, info.layer = "conv", _conv_layer(vars(m), len(m.kernel_size), m.weight.shape)
    elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        dim = len(m.kernel_size)
        info.kind = "conv_transpose"
        info.layer = ConvTranspose(dim, _tuple(m.stride, dim), _tuple(m.padding, dim), _tuple(m.output_padding, dim),
                                   _tuple(m.dilation, dim), m.groups)
    elif isinstance(m, _BATCHNORM_MODULES):
        info.kind = "batchnorm"
        info.extra = {"mean": f"{name}.running_mean", "var": f"{name}.running_var", "eps": m.eps,
                      "bn_weight": f"{name}.weight" if m.weight is not None else None,
                      "bn_bias": f"{name}.bias" if m.bias is not None else None}
        if m.running_mean is None:
            info.kind = "unknown"  # batch statistics only: not an affine map we can fold
        return info
    elif isinstance(m, nn.LayerNorm):
        info.kind = "layer_norm"
        info.extra = {"normalized_ndim": len(m.normalized_shape), "ln_eps": m.eps}
        info.weight = f"{name}.weight" if m.weight is not None else None
        info.bias = f"{name}.bias" if getattr(m, "bias", None) is not None else None
        return info
    elif isinstance(m, _ACTIVATION_MODULES):
        info.kind = "activation"
        info.nonneg = isinstance(m, _NONNEG_MODULES)
        info.extra = {"relu": isinstance(m, _RELU_MODULES), "zero_at_zero": not isinstance(m, _NONZERO_AT_ZERO_MODULES)}
        return info
    elif isinstance(m, _IDENTITY_MODULES):
        info.kind = "identity"
        return info
    elif isinstance(m, _AVG_POOL_MODULES):
        info.kind, info.layer = "avg_pool", _avg_pool_spec(type(m).__name__, vars(m))
        return info
    elif isinstance(m, _MAX_POOL_MODULES):
        info.kind, info.layer = "max_pool", _max_pool_spec(type(m).__name__, vars(m))
        return info
    elif isinstance(m, _STRUCTURAL_MODULES):
        info.kind = "structural"
        info.extra = {"reshape": isinstance(m, (nn.Flatten, nn.Unflatten)), "copies": not isinstance(m, nn.Upsample),
                      "keeps_sign": _keeps_sign_module(m)}
        return info
    else:
        return info
    info.weight = f"{name}.weight"
    info.bias = f"{name}.bias" if m.bias is not None else None
    return info


def _arg(n: fx.Node, index: int, name: str, default=None):
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def _is_constant(value, active) -> bool:
    return not (isinstance(value, fx.Node) and value in active)


def _classify_function(n: fx.Node, acts, active) -> NodeInfo:
    t = OUT_OF_PLACE_FUNCTIONS.get(n.target, n.target)
    info = NodeInfo(n, "unknown", n.name, _target_name(n))
    x = _single(acts)
    info.x = x
    first = n.args[0] if n.args else None
    if t is F.linear and x is not None and first is x:
        info.kind, info.layer = "linear", Linear()
        info.weight, info.bias = _arg(n, 1, "weight"), _arg(n, 2, "bias")
    elif t in _CONV_FUNCTIONS and x is not None and first is x:
        dim = _CONV_FUNCTIONS[t]
        w = _arg(n, 1, "weight")
        kw = {"stride": _arg(n, 3, "stride", 1), "padding": _arg(n, 4, "padding", 0),
              "dilation": _arg(n, 5, "dilation", 1), "groups": _arg(n, 6, "groups", 1)}
        try:
            info.layer = _conv_layer(kw, dim, w.meta["lrpfx_value"].shape)
        except (AttributeError, KeyError):  # weight without recorded shape: leave it unknown
            return info
        info.kind, info.weight, info.bias = "conv", w, _arg(n, 2, "bias")
    elif t in _CONV_T_FUNCTIONS and x is not None and first is x:
        dim = _CONV_T_FUNCTIONS[t]
        info.kind = "conv_transpose"
        info.layer = ConvTranspose(dim, _tuple(_arg(n, 3, "stride", 1), dim), _tuple(_arg(n, 4, "padding", 0), dim),
                                   _tuple(_arg(n, 5, "output_padding", 0), dim), _tuple(_arg(n, 7, "dilation", 1), dim),
                                   _arg(n, 6, "groups", 1))
        info.weight, info.bias = _arg(n, 1, "weight"), _arg(n, 2, "bias")
    elif t is F.batch_norm and x is not None and first is x and not _arg(n, 5, "training", False):
        info.kind = "batchnorm"
        info.extra = {"mean": _arg(n, 1, "running_mean"), "var": _arg(n, 2, "running_var"),
                      "bn_weight": _arg(n, 3, "weight"), "bn_bias": _arg(n, 4, "bias"), "eps": _arg(n, 7, "eps", 1e-5)}
    elif t is F.layer_norm and x is not None and first is x:
        shape = _arg(n, 1, "normalized_shape")
        info.kind = "layer_norm"
        info.extra = {"normalized_ndim": len(shape) if isinstance(shape, (tuple, list)) else 1,
                      "ln_eps": _arg(n, 4, "eps", 1e-5)}
        info.weight, info.bias = _arg(n, 2, "weight"), _arg(n, 3, "bias")
    elif t in _ACTIVATION_FUNCTIONS and x is not None and first is x:
        info.kind, info.nonneg = "activation", t in _NONNEG_FUNCTIONS
        info.extra = {"relu": t in _RELU_FUNCTIONS, "zero_at_zero": t not in _NONZERO_AT_ZERO_FUNCTIONS}
    elif (t in _IDENTITY_FUNCTIONS or _eval_identity(n)) and x is not None and first is x:
        info.kind = "identity"
    elif t in _AVG_POOL_FUNCTIONS and x is not None and first is x:
        info.kind, info.layer = "avg_pool", _avg_pool_spec(_target_name(n), _pool_kwargs(n, _AVG_POOL_ARGS))
    elif t in _MAX_POOL_FUNCTIONS and x is not None and first is x:
        info.kind, info.layer = "max_pool", _max_pool_spec(_target_name(n), _pool_kwargs(n, _MAX_POOL_ARGS))
    elif t in _REDUCE_FUNCTIONS and x is not None and first is x:
        info.kind = "reduce"
    elif t in _RESHAPE_FUNCTIONS and x is not None and first is x:
        info.kind, info.extra = "structural", {"reshape": True, "copies": True, "keeps_sign": True}
    elif t in _STRUCTURAL_FUNCTIONS:
        keeps_sign = t is not F.interpolate and not (t is F.pad and _arg(n, 3, "value", 0) not in (0, 0.0, None))
        info.kind, info.extra = "structural", {"reshape": False, "copies": t is not F.interpolate,
                                               "keeps_sign": keeps_sign}
    else:
        _classify_arithmetic(info, _arith_kind(t, _ADD_FUNCTIONS, _SUB_FUNCTIONS, _MUL_FUNCTIONS, _DIV_FUNCTIONS,
                                               _NEG_FUNCTIONS), n, acts, active)
    return info


def _classify_method(n: fx.Node, acts, active) -> NodeInfo:
    name = out_of_place_method(n.target)
    info = NodeInfo(n, "unknown", n.name, f"Tensor.{name}")
    x = _single(acts)
    info.x = x
    self_is_x = x is not None and n.args and n.args[0] is x
    if name in _ACTIVATION_METHODS and self_is_x:
        info.kind, info.nonneg = "activation", name in _NONNEG_METHODS
        info.extra = {"relu": name == "relu", "zero_at_zero": name not in _NONZERO_AT_ZERO_METHODS}
    elif name in _IDENTITY_METHODS and self_is_x:
        info.kind = "identity"
    elif name in _RESHAPE_METHODS and self_is_x:
        info.kind, info.extra = "structural", {"reshape": True, "copies": True, "keeps_sign": True}
    elif name in _STRUCTURAL_METHODS:
        info.kind, info.extra = "structural", {"reshape": False, "copies": True, "keeps_sign": True}
    elif name in _REDUCE_METHODS and self_is_x:
        info.kind = "reduce"
    else:
        _classify_arithmetic(info, _arith_kind(name, _ADD_METHODS, _SUB_METHODS, _MUL_METHODS, _DIV_METHODS,
                                               _NEG_METHODS), n, acts, active)
    return info


# library functions (by qualified name, so no import is needed) that are the identity in eval mode, with the
# position of their `training` argument
_EVAL_IDENTITY_BY_NAME = {"torchvision.ops.stochastic_depth.stochastic_depth": 3}


def _eval_identity(n: fx.Node) -> bool:
    position = _EVAL_IDENTITY_BY_NAME.get(_target_name(n))
    return position is not None and _arg(n, position, "training", True) is False


def _arith_kind(t, add, sub, mul, div, neg) -> Optional[str]:
    for kind, table in (("add", add), ("sub", sub), ("mul", mul), ("div", div), ("neg", neg)):
        try:
            if t in table:
                return kind
        except TypeError:  # unhashable targets
            return None
    return None


def _classify_arithmetic(info: NodeInfo, arith: Optional[str], n: fx.Node, acts, active) -> None:
    """add/sub of activations -> 'add' (signed terms); product or quotient with a constant -> 'scale'."""
    if arith is None:
        return
    operands = list(n.args[:2])
    if arith in ("add", "sub"):
        if n.kwargs.get("alpha", 1) != 1 or len(operands) != 2:
            return
        terms, signs = [], []
        for i, operand in enumerate(operands):
            if not _is_constant(operand, active):
                terms.append(operand)
                signs.append(-1 if (arith == "sub" and i == 1) else 1)
        info.kind, info.extra = "add", {"terms": terms, "signs": tuple(signs)}
    elif arith == "neg":
        info.kind = "scale"
    elif arith == "mul":
        if len(acts) == 1 and sum(not _is_constant(o, active) for o in operands) == 1:
            info.kind = "scale"
        elif len(operands) == 2 and all(not _is_constant(o, active) for o in operands):
            info.kind = "mul"
    elif arith == "div":
        if len(operands) == 2 and not _is_constant(operands[0], active) and _is_constant(operands[1], active):
            info.kind = "scale"
