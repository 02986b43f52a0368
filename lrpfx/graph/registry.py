"""The op registry: one :class:`~lrpfx.kinds.OpSpec` row per op, with all its spellings (module class,
torch function, Tensor method, ATen overload, bare name) and its properties. Classification
(:func:`lrpfx.graph.classify`) looks a node up here and nowhere else.

Adding an op is one row; users add rows from their own code with :func:`register_op`.
"""
from __future__ import annotations

import operator
from typing import Callable, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RuleError
from ..rules.writes import write_at
from . import mixing as mix, pooling, readers as read
from ..kinds import Kind, OpSpec
from .nodes import op_name
from .by_design import CONSTANT_ROWS, REFUSED_ROWS
from .ops import canonical_name, function_key

aten = torch.ops.aten
K = Kind

# the first argument is the op's only activation input (elementwise ops, layers); see ``OpSpec.inputs``
SINGLE, FIRST, ANY = "single", "first", "any"

# ---- rows matched by bare op name first (the long tail of Hugging Face and timm models) ---------------------------
NAME_ROWS = [
    OpSpec(K.REDUCE, names=("index_add", "scatter_add"), read=read.scatter_sum, inputs=ANY, label="scatter sum"),
    # relevance flows through the first argument alone; the second gives a shape or a dtype
    OpSpec(K.IDENTITY, names=("type_as", "to"), read=read.shaped_like, inputs=FIRST, shaped_like=True,
           label="cast like another tensor"),
    OpSpec(K.STRUCTURAL, names=("expand_as",), read=read.shaped_like, inputs=FIRST, shaped_like=True,
           label="expand like another tensor"),
    OpSpec(K.STRUCTURAL, names=("view_as", "reshape_as"), read=read.shaped_like, inputs=FIRST, reshape=True,
           shaped_like=True, label="shaped like another tensor"),
    OpSpec(K.ACTIVATION, names=("clamp", "clip", "clamp_min", "clamp_max"), read=read.clamp, label="clamp"),
    OpSpec(K.MAX_POOL, names=("max", "min", "amax", "amin", "topk", "sort"), read=pooling.selection,
           label="max over an axis"),  # sort too: which element goes where depends on the values
    OpSpec(K.ACTIVATION, names=("pow",), read=read.power, label="power"),
    OpSpec(K.LINEAR, names=("_grouped_mm", "grouped_mm", "grouped_mm_fallback"), read=read.grouped_product,
           label="grouped expert product"),
    OpSpec(K.IDENTITY, names=("stochastic_depth",), read=read.eval_identity, label="stochastic depth (eval)"),
]

# ---- rows matched by module class, function identity or method name ----------------------------------------------
ROWS = [
    # affine layers
    OpSpec(K.LINEAR, modules=(nn.Linear,), read=read.linear_module, label="linear"),
    OpSpec(K.LINEAR, functions=(F.linear, aten.linear.default), read=read.linear_call, label="linear",
           parametrised=True),
    OpSpec(K.CONV, modules=(nn.Conv1d, nn.Conv2d, nn.Conv3d), read=read.conv_module, label="conv"),
    OpSpec(K.CONV, functions=(F.conv1d, F.conv2d, F.conv3d, aten.conv1d.default, aten.conv2d.default,
                              aten.conv3d.default), read=read.conv_call, label="conv", parametrised=True),
    OpSpec(K.CONV, functions=(aten.convolution.default,), read=read.convolution, label="conv", parametrised=True),
    OpSpec(K.CONV_TRANSPOSE, modules=(nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d),
           read=read.conv_transpose_module, label="conv_transpose"),
    OpSpec(K.CONV_TRANSPOSE, functions=(F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
                                        aten.conv_transpose1d.default, aten.conv_transpose2d.input,
                                        aten.conv_transpose3d.input), read=read.conv_transpose_call,
           label="conv_transpose", parametrised=True),
    # normalisations
    OpSpec(K.BATCHNORM, modules=(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), read=read.batchnorm_module,
           label="batchnorm"),
    OpSpec(K.BATCHNORM, functions=(F.batch_norm,), read=read.batchnorm_call, label="batchnorm"),
    OpSpec(K.BATCHNORM, functions=(aten.batch_norm.default,), read=read.aten_batchnorm, label="batchnorm",
           parametrised=True),
    OpSpec(K.LAYER_NORM, modules=(nn.LayerNorm,), read=read.layer_norm_module, label="layer_norm"),
    OpSpec(K.LAYER_NORM, functions=(F.layer_norm, aten.layer_norm.default), read=read.layer_norm_call,
           label="layer_norm", parametrised=True),
    OpSpec(K.LAYER_NORM, modules=(nn.RMSNorm,), read=read.rms_norm_module, label="rms_norm"),
    OpSpec(K.LAYER_NORM, functions=(F.rms_norm, aten.rms_norm.default), read=read.rms_norm_call,
           label="rms_norm", parametrised=True),
    OpSpec(K.LAYER_NORM, modules=(nn.GroupNorm,), read=read.group_norm_module, label="group_norm"),
    OpSpec(K.LAYER_NORM, functions=(F.group_norm, aten.group_norm.default), read=read.group_norm_call,
           label="group_norm", parametrised=True),
    OpSpec(K.SOFTMAX, modules=(nn.Softmax,), read=read.softmax_module, nonneg=True, label="softmax"),
    OpSpec(K.SOFTMAX, functions=(F.softmax, torch.softmax, aten.softmax.int, aten._softmax.default),
           methods=("softmax",), read=read.softmax_call, nonneg=True, label="softmax"),
    # activations
    OpSpec(K.ACTIVATION, modules=(nn.ReLU,), functions=(F.relu, torch.relu, aten.relu.default),
           methods=("relu",), read=read.activation_module, nonneg=True, relu=True, label="relu"),
    OpSpec(K.ACTIVATION, modules=(nn.ReLU6,), functions=(F.relu6, aten.relu6.default), read=read.activation_module,
           nonneg=True, relu=True, capped=True, label="relu6"),
    OpSpec(K.ACTIVATION, modules=(nn.Sigmoid, nn.Softplus, nn.Hardsigmoid),
           functions=(torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, aten.sigmoid.default,
                      aten.hardsigmoid.default, aten.softplus.default),
           methods=("sigmoid", "softplus"), read=read.activation_module, nonneg=True, zero_at_zero=False,
           label="sigmoid-like"),
    OpSpec(K.ACTIVATION, modules=(nn.LogSigmoid, nn.Threshold), functions=(F.logsigmoid,),
           read=read.activation_module, zero_at_zero=False, label="logsigmoid"),
    OpSpec(K.ACTIVATION, modules=(nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish,
                                  nn.Hardtanh, nn.Mish, nn.PReLU, nn.Softsign, nn.Tanhshrink),
           functions=(F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, torch.tanh, F.tanh, F.hardswish,
                      F.hardtanh, F.mish, F.softsign, aten.gelu.default, aten.silu.default, aten.tanh.default,
                      aten.leaky_relu.default, aten.elu.default, aten.hardswish.default, aten.hardtanh.default,
                      aten.mish.default),
           methods=("tanh",), read=read.activation_module, label="activation"),
    # copies and casts
    OpSpec(K.IDENTITY, modules=(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                                nn.FeatureAlphaDropout),
           functions=(F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, torch.dropout, F.alpha_dropout, torch.clone,
                      torch.Tensor.contiguous, aten.dropout.default, aten.clone.default, aten.contiguous.default,
                      aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default,
                      aten.type_as.default, aten.feature_dropout.default, aten.to.other),
           methods=("contiguous", "clone", "float", "double", "half", "bfloat16", "long", "int", "to", "type_as"),
           elementwise=True,
           label="identity"),
    OpSpec(K.IDENTITY, functions=(torch.detach, aten.alias.default, aten.detach.default), methods=("detach",),
           view=True, label="alias"),
    # pooling and sums
    OpSpec(K.AVG_POOL, modules=(nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                                nn.AdaptiveAvgPool3d), read=pooling.avg_pool_module, label="avg_pool"),
    OpSpec(K.AVG_POOL, functions=(F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                                  F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.avg_pool1d,
                                  aten.adaptive_avg_pool1d.default, aten.adaptive_avg_pool2d.default,
                                  aten.adaptive_avg_pool3d.default, aten._adaptive_avg_pool2d.default,
                                  aten._adaptive_avg_pool3d.default, aten.avg_pool1d.default, aten.avg_pool2d.default,
                                  aten.avg_pool3d.default), read=pooling.avg_pool_call, label="avg_pool"),
    OpSpec(K.MAX_POOL, modules=(nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                                nn.AdaptiveMaxPool3d), read=pooling.max_pool_module, label="max_pool"),
    OpSpec(K.MAX_POOL, functions=(F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                                  F.adaptive_max_pool2d, F.adaptive_max_pool3d, torch.max_pool1d, torch.max_pool2d,
                                  torch.max_pool3d, aten.max_pool1d.default, aten.max_pool2d.default,
                                  aten.max_pool3d.default), read=pooling.max_pool_call, label="max_pool"),
    # (values, indices): relevance goes to the winners by the op's own gradient
    OpSpec(K.MAX_POOL, functions=(F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices,
                                  aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default),
           label="max_pool with indices"),
    OpSpec(K.REDUCE, functions=(torch.sum, torch.mean, aten.mean.dim, aten.sum.dim_IntList), methods=("sum", "mean"),
           label="sum"),
    # structure: reshapes (one input), then ops that move or copy elements of any number of inputs
    OpSpec(K.STRUCTURAL, modules=(nn.Flatten, nn.Unflatten),
           functions=(torch.flatten, torch.reshape, torch.unflatten, torch.squeeze, torch.unsqueeze,
                      aten.squeeze.dim, aten.unsqueeze.default, aten.view.default, aten.reshape.default,
                      aten._unsafe_view.default, aten.flatten.using_ints, aten.unflatten.int, aten.reshape_as.default,
                      aten.view_as.default),
           methods=("view", "reshape", "flatten", "unflatten", "view_as", "reshape_as", "squeeze", "unsqueeze"),
           reshape=True, view=True,
           label="reshape"),
    OpSpec(K.STRUCTURAL, modules=(nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d,
                                  nn.ConstantPad3d, nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d,
                                  nn.ReplicationPad2d, nn.ChannelShuffle, nn.PixelShuffle,
                                  nn.PixelUnshuffle), read=read.structural_module, label="structural"),
    OpSpec(K.STRUCTURAL, functions=(
        torch.split, torch.chunk, torch.unbind, torch.permute, torch.transpose, operator.getitem, torch.narrow,
        torch.movedim, torch.swapaxes, torch.tensor_split, torch.select, torch.diagonal, aten.permute.default,
        aten.transpose.int, aten.t.default, aten.expand.default, aten.slice.Tensor, aten.select.int, aten.split.Tensor,
        aten.split_with_sizes.default, aten.chunk.default, aten.unbind.int, aten.narrow.default, aten.movedim.int,
        aten.tensor_split.sections, aten.diagonal.default, aten.as_strided.default, aten.expand_as.default),
        methods=("permute", "transpose", "expand", "chunk", "split", "unbind", "narrow",
                 "movedim", "__getitem__", "tensor_split", "swapaxes", "t", "select", "diagonal", "expand_as"),
        inputs=ANY,
        view=True, label="view"),
    OpSpec(K.STRUCTURAL, functions=(
        torch.cat, torch.stack, torch.index_select, torch.roll, torch.flip, torch.hstack, torch.vstack,
        F.pixel_shuffle, F.pixel_unshuffle, torch.channel_shuffle, torch.gather, torch.repeat_interleave,
        aten.cat.default, aten.stack.default, aten.index_select.default, aten.gather.default,
        aten.roll.default, aten.flip.default, aten.repeat.default, aten.repeat_interleave.self_int, aten.index.Tensor,
        aten.pixel_shuffle.default, aten.pixel_unshuffle.default,
        aten.copy.default, aten.slice_scatter.default, aten.select_scatter.default,
        aten.reflection_pad1d.default, aten.reflection_pad2d.default, aten.reflection_pad3d.default,
        aten.replication_pad1d.default, aten.replication_pad2d.default, aten.replication_pad3d.default,
        aten.upsample_nearest1d.vec, aten.upsample_nearest2d.vec, aten.upsample_nearest3d.vec),
        methods=("repeat", "flip", "roll", "index_select", "gather", "repeat_interleave"),
        inputs=ANY, label="copy"),
    # rows of a table that is itself an activation (a lookup of token ids is an embedding, where relevance stops)
    OpSpec(K.STRUCTURAL, functions=(F.embedding, aten.embedding.default), inputs=ANY, parametrised=True,
           label="embedding lookup"),
    OpSpec(K.STRUCTURAL, functions=(torch.index_put, aten.index_put.default), methods=("index_put",),
           read=read.index_put, inputs=ANY, label="index put"),
    # fills and constant pads may bring values of either sign; interpolation mixes elements
    OpSpec(K.STRUCTURAL, functions=(torch.masked_fill, torch.where, aten.masked_fill.Scalar, aten.pad.default,
                                    aten.constant_pad_nd.default, aten.where.self), methods=("masked_fill", "where"),
           keeps_sign=False, inputs=ANY, label="fill"),
    OpSpec(K.STRUCTURAL, functions=(torch.scatter, aten.scatter.src), methods=("scatter",), read=read.scatter,
           keeps_sign=False, inputs=ANY, label="scatter"),
    OpSpec(K.STRUCTURAL, functions=(F.pad,), read=read.pad_call, inputs=ANY, label="pad"),
    # writes the source's elements where the mask is set and keeps the others: a copy from two tensors
    OpSpec(K.STRUCTURAL, functions=(torch.masked_scatter, aten.masked_scatter.default), methods=("masked_scatter",),
           inputs=ANY, label="masked scatter"),
    # products, bilinear and elementwise
    OpSpec(K.MATMUL, functions=(torch.mm, aten.mm.default), methods=("mm",), read=read.matmul, inputs=ANY,
           parametrised=True, label="matmul"),  # a module's x @ W (the export front-end makes it a linear layer)
    OpSpec(K.MATMUL, functions=(torch.matmul, torch.bmm, operator.matmul, aten.matmul.default, aten.bmm.default),
           methods=("matmul", "bmm", "__matmul__"), read=mix.product, inputs=ANY, label="matmul"),
    # arithmetic
    OpSpec(K.ADD, functions=(operator.add, torch.add, operator.iadd, aten.add.Tensor), methods=("add",),
           read=read.add, inputs=ANY, label="add"),
    OpSpec(K.ADD, functions=(operator.sub, torch.sub, operator.isub, aten.sub.Tensor), methods=("sub",),
           read=read.sub, inputs=ANY, label="sub"),
    OpSpec(K.MUL, functions=(operator.mul, torch.mul, operator.imul, aten.mul.Tensor), methods=("mul",),
           read=read.mul, inputs=ANY, label="mul"),
    OpSpec(K.SCALE, functions=(operator.truediv, torch.div, operator.itruediv, aten.div.Tensor), methods=("div",),
           read=mix.quotient, inputs=ANY, label="div"),
    OpSpec(K.SCALE, functions=(operator.neg, torch.neg, aten.neg.default), methods=("neg",), inputs=ANY,
           label="neg"),
    # ---- linear maps without parameters: copies keep Jᵀ R, mixes take the proportional rule (graph/mixing.py) ----
    OpSpec(K.STRUCTURAL, modules=mix.UPSAMPLE_MODULES, read=mix.upsample_module, label="interpolate"),
    OpSpec(K.STRUCTURAL, functions=(F.interpolate,), read=mix.interpolate_call, label="interpolate"),
    OpSpec(K.STRUCTURAL, functions=mix.UPSAMPLE_ATEN, read=mix.upsample_aten, label="interpolate"),
    OpSpec(K.STRUCTURAL, modules=(nn.Unfold,), functions=(F.unfold, aten.im2col.default, aten.unfold.default),
           methods=("unfold",), read=mix.copies, label="unfold (windows)"),
    OpSpec(K.REDUCE, modules=(nn.Fold,), functions=(F.fold, aten.col2im.default), read=mix.mixes,
           label="fold (sum of windows)"),
    OpSpec(K.REDUCE, functions=(torch.cumsum, aten.cumsum.default), methods=("cumsum",), read=mix.mixes,
           label="cumulative sum"),
    OpSpec(K.REDUCE, functions=(torch.einsum, aten.einsum.default), read=mix.einsum_call, inputs=ANY,
           label="einsum with one activation"),
    # writes into a buffer, spelled out of place (frontend/inplace.py): the written values and the rest are copied
    OpSpec(K.STRUCTURAL, functions=(torch.select_scatter, torch.slice_scatter, torch.diagonal_scatter,
                                    aten.select_scatter.default, aten.slice_scatter.default,
                                    aten.diagonal_scatter.default, aten.copy.default, write_at),
           inputs=ANY, label="write into a buffer"),
    OpSpec(K.STRUCTURAL, functions=(torch.index_put, aten.index_put.default), methods=("index_put",),
           read=mix.index_put, inputs=ANY, label="write at indices"),
    OpSpec(K.REDUCE, functions=(mix.RealSpectrum,), read=mix.mixes, label="real part of Fourier transforms"),
    # elementwise max/min of two tensors: the winner's element is copied
    OpSpec(K.MAX_POOL, functions=(torch.max, torch.min, torch.maximum, torch.minimum, torch.fmax, torch.fmin,
                                    aten.max.other, aten.min.other, aten.maximum.default, aten.minimum.default,
                                    aten.fmax.default, aten.fmin.default),
           methods=("maximum", "minimum", "max", "min"), read=mix.extremum, inputs=ANY, label="max/min of two"),
    # ---- end of linear maps -------------------------------------------------------------------------------------
]

_ACTIVATION_NAME_PARTS = ("gelu", "silu", "swish", "mish", "relu", "activation", "sigmoid", "tanh")
# a library's parameter-free activation module recognised by its class name (NewGELUActivation, SiLUActivation)
NAMED_ACTIVATION = OpSpec(K.ACTIVATION, read=read.activation_module, label="activation (by class name)")


class Registry:
    """Rows indexed by spelling. Rows registered by users are looked up before lrpfx's own."""

    def __init__(self, rows: Sequence[OpSpec], name_rows: Sequence[OpSpec], constant_rows: Sequence[OpSpec] = (),
                 refused_rows: Sequence[OpSpec] = ()):
        self.user: List[OpSpec] = []
        self._layers = [_Index([]), _Index(name_rows), _Index(rows)]
        self._constants, self._refused = _Index(constant_rows), _Index(refused_rows)
        self.rows = tuple(name_rows) + tuple(rows)

    def add(self, row: OpSpec) -> None:
        self.user.insert(0, row)
        self._layers[0] = _Index(self.user)

    def remove(self, row: OpSpec) -> None:
        if row in self.user:
            self.user.remove(row)
            self._layers[0] = _Index(self.user)

    def candidates(self, op: str, target, name: str, module: Optional[nn.Module]) -> List[OpSpec]:
        """Rows that may describe a node, in the order they are tried: users' rows, then bare-name rows, then
        the row of the node's module class, function or method."""
        found = []
        for index in self._layers:
            if op == "call_module":
                found += [row for cls, row in index.modules if isinstance(module, cls)][:1]
                continue
            found += index.by_name.get(name, [])
            try:
                row = index.by_function.get(function_key(target)) if op == "call_function" else \
                    index.by_method.get(name)
            except TypeError:  # an unhashable target
                row = None
            if row is not None:
                found.append(row)
        if op == "call_module" and not found and is_activation_module(module):
            found.append(NAMED_ACTIVATION)
        return found

    def constant(self, op: str, target, name: str) -> Optional[OpSpec]:
        """The row saying a node's value carries no relevance by design (a shape, an index, a statistic)."""
        return _first(self._constants, op, target, name)

    def refusal(self, op: str, target, name: str) -> Optional[OpSpec]:
        """The row saying why lrpfx has no rule for an op by design, or None."""
        return _first(self._refused, op, target, name)

    def own_rows(self, n) -> List[OpSpec]:
        """lrpfx's own rows that may describe a call node (``call_function`` / ``call_method``), users' aside."""
        if n.op not in ("call_function", "call_method"):
            return []
        return [row for row in self.candidates(n.op, n.target, op_name(n), None) if row not in self.user]

    def is_parametrised(self, n) -> bool:
        """Whether a node is the one op of a module that reads the module's parameters (a Linear's linear)."""
        return any(row.parametrised for row in self.own_rows(n)) or (
            self.refusal(n.op, n.target, op_name(n)) or OpSpec(K.UNKNOWN)).parametrised

    def is_pointwise(self, n) -> bool:
        """Whether a call is elementwise (an activation, a sum, a cast, ``exp``: see ``OpSpec.pointwise``)."""
        refused = self.refusal(n.op, n.target, op_name(n))
        return any(row.pointwise for row in self.own_rows(n)) or (refused is not None and refused.pointwise)

    def passes_values(self, n) -> bool:
        """Whether a call keeps every element of its first argument: a copy, a cast or a reshape."""
        return any(row.kind == K.IDENTITY or row.reshape for row in self.own_rows(n))

    def is_view(self, n) -> bool:
        """Whether a node's result is a view of its first argument (writing into it writes into its base)."""
        return any(row.view for row in self.own_rows(n))

    def modules_of(self, kind: Kind) -> tuple:
        """The module classes of lrpfx's rows of one kind (``nn.MaxPool2d``, ... for ``max_pool``)."""
        return tuple(cls for row in self.rows if row.kind == kind for cls in row.modules)

    def modules(self) -> tuple:
        """Module classes of users' rows: tracing keeps them whole."""
        return tuple(cls for row in self.user for cls in row.modules)

    def functions(self) -> tuple:
        """Plain Python functions of users' rows: tracing records them as one call."""
        return tuple(f for row in self.user for f in row.functions if not isinstance(f, torch._ops.OpOverload))


def _first(index: "_Index", op: str, target, name: str) -> Optional[OpSpec]:
    if op not in ("call_function", "call_method"):
        return None
    named = index.by_name.get(name)
    if named:
        return named[0]
    try:
        return index.by_function.get(function_key(target)) if op == "call_function" else index.by_method.get(name)
    except TypeError:  # an unhashable target
        return None


class _Index:
    """One group of rows by spelling (the first row listing a spelling wins)."""

    def __init__(self, rows: Iterable[OpSpec]):
        self.by_function, self.by_method, self.by_name, self.modules = {}, {}, {}, []
        for row in rows:
            for f in row.functions:  # an ATen overload stands for every overload of its op
                self.by_function.setdefault(function_key(f), row)
            for m in row.methods:
                self.by_method.setdefault(canonical_name(m), row)
            for name in row.names:
                self.by_name.setdefault(canonical_name(name), []).append(row)
            self.modules.extend((cls, row) for cls in row.modules)


REGISTRY = Registry(ROWS, NAME_ROWS, CONSTANT_ROWS, REFUSED_ROWS)
_ACTIVATION_MODULES = tuple(cls for row in ROWS if row.kind == K.ACTIVATION for cls in row.modules)


def is_activation_module(m: nn.Module) -> bool:
    """A torch.nn activation, or a library's parameter-free activation module recognised by its class name."""
    if isinstance(m, _ACTIVATION_MODULES):
        return True
    name = type(m).__name__.lower()
    return any(part in name for part in _ACTIVATION_NAME_PARTS) and not any(True for _ in m.parameters()) \
        and not any(True for _ in m.children())


Spelling = Union[type, Callable, str]


def register_op(*spellings: Spelling, kind: Union[Kind, str], nonneg: bool = False, zero_at_zero: bool = True,
                relu: bool = False, read: Optional[Callable] = None, inputs: str = SINGLE) -> OpSpec:
    """Teach lrpfx an op of your own: a module class, a function (or ATen overload) or a Tensor method name,
    and its ``kind`` (``"activation"``, ``"identity"``, ``"structural"``, ``"linear"`` ...). Returns the row;
    :func:`unregister_op` removes it. Rows you register win over lrpfx's own.

    Tracing keeps a registered module whole and records a registered function as one call, so its rule sees
    the op's input and output. ``nonneg``: the output is never negative; ``zero_at_zero``: ``f(0) = 0``;
    ``relu``: it is ``max(x, 0)``. A kind whose rules need more (a weight, a layer spec) needs ``read``.
    ``inputs``: which arguments may carry relevance: ``"single"`` (the first argument, and only it), ``"first"``
    (the first, others may too) or ``"any"`` (an op of several inputs, e.g. a copy from two tensors under
    ``kind="structural"``, whose relevance is routed back to every input by the op's own gradient).
    """
    try:
        kind = Kind(kind)
    except ValueError:
        raise RuleError(f"unknown op kind {kind!r}; one of: {', '.join(k.value for k in Kind)}") from None
    if inputs not in (SINGLE, FIRST, ANY):
        raise RuleError(f"register_op(inputs={inputs!r}): one of 'single' (the first argument is the only one "
                        "carrying relevance), 'first' or 'any' (an op of several inputs)")
    modules = tuple(s for s in spellings if isinstance(s, type) and issubclass(s, nn.Module))
    methods = tuple(s for s in spellings if isinstance(s, str))
    functions = tuple(s for s in spellings if callable(s) and s not in modules)
    if not spellings or len(modules) + len(methods) + len(functions) != len(spellings):
        raise RuleError("register_op takes module classes, functions or Tensor method names, e.g. "
                        "register_op(MyActivation, kind='activation')")
    needs_reader = kind in (K.LINEAR, K.CONV, K.CONV_TRANSPOSE, K.BATCHNORM, K.LAYER_NORM, K.SOFTMAX, K.MATMUL,
                            K.ADD, K.RECURRENT, K.EMBEDDING, K.INPUT)
    if needs_reader and read is None:
        raise RuleError(f"kind {kind.value!r} needs the op's parameters: pass read=fn(info, call) that fills them "
                        "(see lrpfx.graph.readers), or register it as 'activation', 'identity' or 'structural' and "
                        "give it a rule of your own")
    row = OpSpec(kind, modules=modules, functions=functions, methods=methods, nonneg=nonneg,
                 zero_at_zero=zero_at_zero, relu=relu, read=read, inputs=inputs, label=_label(spellings[0]))
    REGISTRY.add(row)
    return row


def unregister_op(row: OpSpec) -> None:
    """Remove a row added with :func:`register_op`."""
    REGISTRY.remove(row)


def _label(spelling) -> str:
    return spelling if isinstance(spelling, str) else getattr(spelling, "__name__", repr(spelling))
