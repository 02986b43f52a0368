"""Argument readers of the op registry: each turns one call (a module's attributes or a call's arguments) into
the facts of its kind — layer specs for affine ops and pooling, statistics for BatchNorm, axes, terms.

A reader takes ``(info, call)`` and returns True when the op is what its row says (it fills ``info``), False where
the row does not apply after all (graph-valued hyper-parameters, say); the node then stays ``unknown``.
Arguments are read by name (fx's ``normalized_arguments``: the signature or ATen schema) and by position where no
signature is known (:meth:`Call.arg`), so a torch function and its ATen twin share one reader.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Optional

import torch
import torch.fx as fx
from torch import nn

from ..rules.layers import Conv, ConvTranspose, Linear
from ..kinds import Axis, BatchNormStats, Elementwise, Grouped, Kind, Moves, NodeInfo, Normalisation, Product, Terms
from .nodes import call_arg, op_label, op_name, value_rank
from .. import meta_keys

aten = torch.ops.aten


@dataclass
class Call:
    """One node being classified: its module (for ``call_module``), its activation inputs, the set of all
    activation nodes (to tell activations from constants among its arguments), and the graph it is in."""

    node: fx.Node
    module: Optional[nn.Module]
    acts: List[fx.Node]
    active: Any
    root: Optional[nn.Module] = None

    @property
    def first(self):
        return self.node.args[0] if self.node.args else None

    @cached_property
    def named(self) -> Optional[Dict[str, Any]]:
        """Every argument by its parameter name, defaults filled in (fx's ``normalized_arguments``: the op's
        signature or ATen schema), or None where the op has no signature fx can bind (then by position)."""
        if self.node.op != "call_function" or self.root is None:
            return None
        try:
            bound = self.node.normalized_arguments(self.root, normalize_to_only_use_kwargs=True)
        except Exception:  # ops without a usable signature (operator.*, builtins with overloads)
            return None
        return None if bound is None else dict(bound.kwargs)

    def arg(self, index: int, name: str, default=None):
        """Argument ``name``, read by name where the op's signature is known, else at position ``index``."""
        if self.named is not None and name in self.named:
            return self.named[name]
        return call_arg(self.node, index, name, default)

    def is_constant(self, value) -> bool:
        return not (isinstance(value, fx.Node) and value in self.active)


def as_tuple(v, dim):
    """``v`` as a ``dim``-tuple (a number repeated, a sequence as is)."""
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * dim


def _dtype_eps(node: fx.Node) -> float:
    return torch.finfo(node.meta[meta_keys.VALUE].dtype).eps


# ---- affine ops ----------------------------------------------------------------------------------------------
def conv_layer(args: Dict[str, Any], dim: int, weight_shape) -> Conv:
    """A Conv spec from a module's attributes or a call's arguments; ``padding="same"`` as explicit pads."""
    stride, padding, dilation, groups = args["stride"], args["padding"], args["dilation"], args["groups"]
    stride, dilation = as_tuple(stride, dim), as_tuple(dilation, dim)
    mode = args.get("padding_mode", "zeros")
    if padding == "valid":
        padding = 0
    if padding == "same":
        # PyTorch pads d*(k-1) in total per axis, the odd element at the end; F.pad takes the last axis first
        totals = [d * (k - 1) for k, d in zip(weight_shape[2:], dilation)]
        pad = tuple(p for t in reversed(totals) for p in (t // 2, t - t // 2))
        if any(t % 2 for t in totals) or mode != "zeros":
            return Conv(dim, stride, (0,) * dim, dilation, groups, "constant" if mode == "zeros" else mode, pad)
        padding = tuple(t // 2 for t in totals)
    padding = as_tuple(padding, dim)
    pad = tuple(p for p in reversed(padding) for _ in range(2)) if mode != "zeros" else ()
    return Conv(dim, stride, padding, dilation, groups, mode, pad)


def _module_parameters(info: NodeInfo, m: nn.Module, bias: bool = True) -> None:
    info.weight = f"{info.name}.weight"
    info.bias = f"{info.name}.bias" if bias and m.bias is not None else None


def linear_module(info: NodeInfo, call: Call) -> bool:
    info.layer = Linear()
    _module_parameters(info, call.module)
    return True


def conv_module(info: NodeInfo, call: Call) -> bool:
    m = call.module
    info.layer = conv_layer(vars(m), len(m.kernel_size), m.weight.shape)
    _module_parameters(info, m)
    return True


def conv_transpose_module(info: NodeInfo, call: Call) -> bool:
    m, dim = call.module, len(call.module.kernel_size)
    info.layer = ConvTranspose(dim, as_tuple(m.stride, dim), as_tuple(m.padding, dim), as_tuple(m.output_padding, dim),
                               as_tuple(m.dilation, dim), m.groups)
    _module_parameters(info, m)
    return True


def linear_call(info: NodeInfo, call: Call) -> bool:
    info.layer, info.weight, info.bias = Linear(), call.arg(1, "weight"), call.arg(2, "bias")
    return True


def _conv_dim(node: fx.Node) -> int:
    """1, 2 or 3 for ``conv2d``, ``conv_transpose3d`` ... in any spelling and overload."""
    return int(op_name(node)[-2])


def conv_call(info: NodeInfo, call: Call) -> bool:
    dim = _conv_dim(call.node)
    w = call.arg(1, "weight")
    args = {"stride": call.arg(3, "stride", 1), "padding": call.arg(4, "padding", 0),
            "dilation": call.arg(5, "dilation", 1), "groups": call.arg(6, "groups", 1)}
    try:
        info.layer = conv_layer(args, dim, w.meta[meta_keys.VALUE].shape)
    except (AttributeError, KeyError):  # a weight without a recorded shape: leave the node unknown
        return False
    info.weight, info.bias = w, call.arg(2, "bias")
    return True


def conv_transpose_call(info: NodeInfo, call: Call) -> bool:
    dim = _conv_dim(call.node)
    info.layer = ConvTranspose(dim, as_tuple(call.arg(3, "stride", 1), dim), as_tuple(call.arg(4, "padding", 0), dim),
                               as_tuple(call.arg(5, "output_padding", 0), dim),
                               as_tuple(call.arg(7, "dilation", 1), dim), call.arg(6, "groups", 1))
    info.weight, info.bias = call.arg(1, "weight"), call.arg(2, "bias")
    return True


def convolution(info: NodeInfo, call: Call) -> bool:
    """``aten.convolution``: the one op behind every convolution and transposed convolution of Core ATen."""
    w = call.arg(1, "weight")
    shape = getattr(w, "meta", {}).get(meta_keys.VALUE)
    if shape is None:
        return False
    dim = len(shape.shape) - 2
    stride, padding, dilation = (as_tuple(call.arg(i, name), dim) for i, name in
                                 ((3, "stride"), (4, "padding"), (5, "dilation")))
    groups = call.arg(8, "groups", 1)
    if call.arg(6, "transposed", False):
        info.kind = Kind.CONV_TRANSPOSE
        info.layer = ConvTranspose(dim, stride, padding, as_tuple(call.arg(7, "output_padding"), dim), dilation,
                                   groups)
    else:
        info.layer = conv_layer({"stride": stride, "padding": padding, "dilation": dilation, "groups": groups},
                                dim, shape.shape)
    info.weight, info.bias = w, call.arg(2, "bias")
    return True


def grouped_product(info: NodeInfo, call: Call) -> bool:
    """A grouped product of mixture-of-experts blocks: linear in the routed tokens, the expert weights constant."""
    offs = call.arg(2, "offs")
    if len(call.acts) != 1 or not isinstance(offs, fx.Node):
        return False
    info.weight, info.facts = call.arg(1, "mat2"), Grouped(offs)
    return True


# ---- normalisations ------------------------------------------------------------------------------------------
def batchnorm_module(info: NodeInfo, call: Call) -> bool:
    m, name = call.module, info.name
    if m.running_mean is None:
        return False  # batch statistics only: not an affine map we can fold
    info.facts = BatchNormStats(f"{name}.running_mean", f"{name}.running_var",
                                f"{name}.weight" if m.weight is not None else None,
                                f"{name}.bias" if m.bias is not None else None, m.eps)
    return True


def _batchnorm_reader(mean: int, var: int, weight: int, bias: int):
    """An eval-mode BatchNorm call whose statistics and parameters sit at these argument positions (``training``
    is argument 5 and ``eps`` argument 7 in both spellings)."""
    def read(info: NodeInfo, call: Call) -> bool:
        if len(call.acts) != 1 or call.arg(5, "training", False) or call.arg(mean, "running_mean") is None:
            return False
        info.facts = BatchNormStats(call.arg(mean, "running_mean"), call.arg(var, "running_var"),
                                    call.arg(weight, "weight"), call.arg(bias, "bias"),
                                    call.arg(7, "eps", 1e-5))
        return True
    return read


batchnorm_call = _batchnorm_reader(1, 2, 3, 4)  # F.batch_norm(x, mean, var, weight, bias, training, momentum, eps)
aten_batchnorm = _batchnorm_reader(3, 4, 1, 2)  # aten.batch_norm(x, weight, bias, mean, var, training, ...)


def layer_norm_module(info: NodeInfo, call: Call) -> bool:
    m = call.module
    info.facts = Normalisation(len(m.normalized_shape), m.eps)
    info.weight = f"{info.name}.weight" if m.weight is not None else None
    info.bias = f"{info.name}.bias" if getattr(m, "bias", None) is not None else None
    return True


def rms_norm_module(info: NodeInfo, call: Call) -> bool:
    m = call.module
    info.facts = Normalisation(len(m.normalized_shape), m.eps if m.eps is not None else _dtype_eps(info.x), False)
    info.weight = f"{info.name}.weight" if m.weight is not None else None
    return True


def _ndim(shape) -> int:
    return len(shape) if isinstance(shape, (tuple, list)) else 1


def layer_norm_call(info: NodeInfo, call: Call) -> bool:
    info.facts = Normalisation(_ndim(call.arg(1, "normalized_shape")), call.arg(4, "eps", 1e-5))
    info.weight, info.bias = call.arg(2, "weight"), call.arg(3, "bias")
    return True


def rms_norm_call(info: NodeInfo, call: Call) -> bool:
    eps = call.arg(3, "eps")
    info.facts = Normalisation(_ndim(call.arg(1, "normalized_shape")), eps if eps is not None else _dtype_eps(info.x),
                               False)
    info.weight = call.arg(2, "weight")
    return True


def group_norm_module(info: NodeInfo, call: Call) -> bool:
    m = call.module
    info.facts = Normalisation(0, m.eps, groups=m.num_groups)
    info.weight = f"{info.name}.weight" if m.weight is not None else None
    info.bias = f"{info.name}.bias" if m.bias is not None else None
    return True


def group_norm_call(info: NodeInfo, call: Call) -> bool:
    """``F.group_norm(x, num_groups, weight, bias, eps)`` and ``aten.group_norm`` (same order, then cudnn_enabled)."""
    groups = call.arg(1, "num_groups")
    if not isinstance(groups, int):
        return False
    info.facts = Normalisation(0, call.arg(4, "eps", 1e-5), groups=groups)
    info.weight, info.bias = call.arg(2, "weight"), call.arg(3, "bias")
    return True


def softmax_module(info: NodeInfo, call: Call) -> bool:
    if call.module.dim is None:
        return False
    info.facts = Axis(call.module.dim)
    return True


def softmax_call(info: NodeInfo, call: Call) -> bool:
    dim = call.arg(1, "dim")
    if not isinstance(dim, int):
        return False
    info.facts = Axis(dim)
    return True


# ---- activations ---------------------------------------------------------------------------------------------
def activation_module(info: NodeInfo, call: Call) -> bool:
    """A module activation; a spelled-out one collapsed by the export front-end knows whether ``f(0) = 0``."""
    if not getattr(call.module, meta_keys.ZERO_AT_ZERO_ATTRIBUTE, True):
        info.facts = Elementwise(info.facts.relu, False)
    return True


def clamp(info: NodeInfo, call: Call) -> bool:
    """clamp/clip with number bounds: an activation; ``clamp(min=0)`` is a ReLU."""
    name = op_name(call.node)
    if name == "clamp_min":
        low, high = call.arg(1, "min"), None
    elif name == "clamp_max":
        low, high = None, call.arg(1, "max")
    else:
        low, high = call.arg(1, "min"), call.arg(2, "max")
    numbers = all(b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)) for b in (low, high))
    info.nonneg = numbers and low is not None and low >= 0
    info.facts = Elementwise(numbers and low == 0 and high is None,
                             numbers and (low is None or low <= 0) and (high is None or high >= 0))
    return True


def exponent(n: fx.Node):
    """The exponent of ``pow(x, e)`` when it is a number, else None."""
    e = call_arg(n, 1, "exponent")
    return e if isinstance(e, (int, float)) and not isinstance(e, bool) else None


def power(info: NodeInfo, call: Call) -> bool:
    """``x ** e`` with a number exponent: an activation, non-negative for even integer powers."""
    e = exponent(call.node)
    if e is None:
        return False
    info.nonneg = float(e).is_integer() and int(e) % 2 == 0
    info.facts = Elementwise(False, e > 0)
    return True


def scatter_sum(info: NodeInfo, call: Call) -> bool:
    """index_add/scatter_add: the tensor summed into, the summands, or both may be activations."""
    info.x = None
    return True


# ---- structure -----------------------------------------------------------------------------------------------
def structural_module(info: NodeInfo, call: Call) -> bool:
    m = call.module
    if isinstance(m, nn.Upsample):
        info.facts = Moves(False, False, m.mode == "nearest")
    elif isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        info.facts = Moves(False, True, m.value >= 0)
    return True


def pad_call(info: NodeInfo, call: Call) -> bool:
    """``F.pad``: a non-zero constant fill may change the sign."""
    info.facts = Moves(False, True, call.arg(3, "value", 0) in (0, 0.0, None))
    return True


def index_put(info: NodeInfo, call: Call) -> bool:
    """``x[idx] = v`` written out of place: a copy of ``v`` into ``x``; with ``accumulate`` a sum, which is not."""
    return not call.arg(3, "accumulate", False)


def scatter(info: NodeInfo, call: Call) -> bool:
    """Writes the source's elements (or a number) into a copy of ``x``; with ``reduce`` it sums or multiplies."""
    return call.arg(4, "reduce") is None


def shaped_like(info: NodeInfo, call: Call) -> bool:
    """``x.type_as(y)`` and friends with an activation ``y`` (rows with ``shaped_like``): ``y`` gives a shape or
    dtype only, relevance flows through ``x`` alone; with ``y`` constant the op's own row applies."""
    return len(call.acts) >= 2


# library functions (by qualified name, so no import is needed) that are the identity in eval mode, with the
# position of their `training` argument
_EVAL_IDENTITY = {"torchvision.ops.stochastic_depth.stochastic_depth": 3}


def eval_identity(info: NodeInfo, call: Call) -> bool:
    position = _EVAL_IDENTITY.get(op_label(call.node))
    return position is not None and call.arg(position, "training", True) is False


# ---- arithmetic ----------------------------------------------------------------------------------------------
def _sum(info: NodeInfo, call: Call, subtract: bool) -> bool:
    """add/sub of activations and constants: the terms that are activations, with their signs."""
    operands = list(call.node.args[:2])
    if call.node.kwargs.get("alpha", 1) != 1 or len(operands) != 2:
        return False
    terms = [(o, -1 if subtract and i == 1 else 1) for i, o in enumerate(operands) if not call.is_constant(o)]
    info.facts = Terms(tuple(t for t, _ in terms), tuple(s for _, s in terms))
    return True


def add(info: NodeInfo, call: Call) -> bool:
    return _sum(info, call, subtract=False)


def sub(info: NodeInfo, call: Call) -> bool:
    return _sum(info, call, subtract=True)


def mul(info: NodeInfo, call: Call) -> bool:
    """A product with a constant scales (``scale``); a product of two activations is ``mul``."""
    operands = list(call.node.args[:2])
    active = [not call.is_constant(o) for o in operands]
    if len(call.acts) == 1 and sum(active) == 1:
        info.kind = Kind.SCALE
        return True
    return len(operands) == 2 and all(active)


def div(info: NodeInfo, call: Call) -> bool:
    """An activation divided by a constant scales it; other quotients (and rounding divisions) are unknown."""
    operands = list(call.node.args[:2])
    return call.arg(2, "rounding_mode") is None and len(operands) == 2 and not call.is_constant(operands[0]) \
        and call.is_constant(operands[1])


def matmul(info: NodeInfo, call: Call) -> bool:
    """``a @ b`` of at least 2-D operands, one or both of them activations."""
    operands = list(call.node.args[:2])
    if len(operands) != 2 or any(isinstance(o, fx.Node) and value_rank(o) < 2 for o in operands):
        return False
    flags = tuple(not call.is_constant(o) for o in operands)
    if not (any(flags) and all(isinstance(o, fx.Node) for o in operands)):
        return False
    info.facts = Product(flags)
    return True
