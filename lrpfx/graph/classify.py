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

from .recurrent import is_recurrent, recurrent_call
from ..rules.layers import AdaptiveAvgPool, AvgPool, Conv, ConvTranspose, Linear, MaxPool

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
    F.pixel_unshuffle, torch.channel_shuffle, torch.tensor_split, torch.gather, torch.masked_fill,
    torch.repeat_interleave, torch.select, torch.where,
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
                       "index_select", "gather", "tensor_split", "swapaxes", "t", "masked_fill",
                       "repeat_interleave", "select"}
_REDUCE_METHODS = {"sum", "mean"}
_ADD_METHODS, _SUB_METHODS, _MUL_METHODS, _DIV_METHODS, _NEG_METHODS = {"add"}, {"sub"}, {"mul"}, {"div"}, {"neg"}

# ---- ATen tables (graphs from torch.export) -----------------------------------------------------------------
# ATen ops with a torch-level twin that takes the same arguments in the same positions are classified as that
# twin, so one set of tables serves both front-ends.
aten = torch.ops.aten
_ATEN_AS_TORCH = {
    aten.linear.default: F.linear, aten.conv1d.default: F.conv1d, aten.conv2d.default: F.conv2d,
    aten.conv3d.default: F.conv3d, aten.conv_transpose1d.default: F.conv_transpose1d,
    aten.conv_transpose2d.input: F.conv_transpose2d, aten.conv_transpose3d.input: F.conv_transpose3d,
    aten.layer_norm.default: F.layer_norm, aten.relu.default: F.relu, aten.gelu.default: F.gelu,
    aten.silu.default: F.silu, aten.tanh.default: torch.tanh, aten.sigmoid.default: torch.sigmoid,
    aten.leaky_relu.default: F.leaky_relu, aten.elu.default: F.elu, aten.hardswish.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.hardtanh.default: F.hardtanh, aten.softplus.default: F.softplus,
    aten.mish.default: F.mish, aten.mean.dim: torch.mean, aten.sum.dim_IntList: torch.sum,
    aten.add.Tensor: torch.add, aten.sub.Tensor: torch.sub, aten.mul.Tensor: torch.mul, aten.div.Tensor: torch.div,
    aten.neg.default: torch.neg, aten.softmax.int: F.softmax, aten._softmax.default: F.softmax,
    aten.matmul.default: torch.matmul, aten.bmm.default: torch.bmm,
    aten.adaptive_avg_pool1d.default: F.adaptive_avg_pool1d, aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.adaptive_avg_pool3d.default: F.adaptive_avg_pool3d, aten.avg_pool1d.default: F.avg_pool1d,
    aten.avg_pool2d.default: F.avg_pool2d, aten.avg_pool3d.default: F.avg_pool3d,
    aten.max_pool1d.default: F.max_pool1d, aten.max_pool2d.default: F.max_pool2d,
    aten.max_pool3d.default: F.max_pool3d, aten.rms_norm.default: F.rms_norm,
}
_ATEN_IDENTITY = {aten.dropout.default, aten.clone.default, aten.contiguous.default, aten.alias.default,
                  aten.to.dtype, aten.to.device, aten.to.dtype_layout, aten._to_copy.default, aten.detach.default,
                  aten.type_as.default, aten.feature_dropout.default, aten.to.other}
_ATEN_RESHAPE = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
                 aten.unflatten.int, aten.reshape_as.default, aten.view_as.default}
_ATEN_STRUCTURAL = {
    aten.permute.default, aten.transpose.int, aten.t.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.dims, aten.squeeze.default, aten.expand.default, aten.slice.Tensor, aten.select.int,
    aten.cat.default, aten.stack.default, aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default,
    aten.unbind.int, aten.narrow.default, aten.index_select.default, aten.gather.default, aten.roll.default,
    aten.flip.default, aten.pad.default, aten.constant_pad_nd.default, aten.repeat.default,
    aten.repeat_interleave.self_int, aten.movedim.int, aten.index.Tensor, aten.masked_fill.Scalar,
    aten.tensor_split.sections, aten.pixel_shuffle.default, aten.pixel_unshuffle.default, aten.expand_as.default,
}
# outputs may hold values other than input elements or zeros (a negative fill, a negative constant pad)
_ATEN_SIGN_CHANGING = {aten.masked_fill.Scalar, aten.pad.default, aten.constant_pad_nd.default}

_SOFTMAX_FUNCTIONS = {F.softmax, torch.softmax}
_MATMUL_FUNCTIONS = {torch.matmul, torch.bmm, operator.matmul}
_EMBEDDING_FUNCTIONS = {F.embedding: 1, aten.embedding.default: 0}  # -> position of the weight argument
_ID_PRESERVING_NAMES = {"to", "_to_copy", "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "expand",
                        "contiguous", "clone", "alias", "long", "int", "flatten", "type_as", "detach"}
_NORMALISER_NAMES = {"rsqrt", "sqrt", "reciprocal"}  # of a statistic: 1/sigma-like values
_STATISTIC_NAMES = {"var", "std", "norm", "vector_norm", "linalg_vector_norm", "var_mean", "std_mean"}
_REDUCTION_NAMES = {"mean", "sum", "var", "std"}
# ops whose output depends on an activation's shape, dtype or device only, never on its values
_SHAPE_ONLY_NAMES = {"new_zeros", "new_ones", "new_full", "new_empty", "zeros_like", "ones_like", "full_like",
                     "empty_like", "new_tensor", "size", "sym_size"}
_THROUGH_NAMES = {"add", "clamp", "clamp_min", "to", "_to_copy", "float", "double", "mul", "pow", "expand"}

# ---- the long tail of architectures (ops found in Hugging Face and timm models), matched by bare op name so
# one row serves torch functions, Tensor methods and ATen overloads ----------------------------------------------
# clamp/clip: an activation (Pass); non-negative when the lower bound is >= 0, a ReLU when it is clamp(min=0)
_CLAMP_NAMES = {"clamp", "clip", "clamp_min", "clamp_max"}
# max/min over an axis (or of the whole tensor), top-k: winner-takes-all, like max pooling
_SELECT_NAMES = {"max", "min", "amax", "amin", "topk"}
# the second argument only supplies a shape or a dtype: relevance flows through the first argument alone
_LIKE_NAMES = {"type_as", "view_as", "reshape_as", "expand_as", "to"}
# grouped products of mixture-of-experts blocks: linear in the routed tokens, the expert weights constant
_GROUPED_MM_NAMES = {"_grouped_mm", "grouped_mm", "grouped_mm_fallback"}
# sums into a tensor at indices (scatter-add, index_add): split in proportion to the summands, like other sums
_SCATTER_SUM_NAMES = {"index_add", "scatter_add"}
# a mixture-of-experts router: top-k of gate probabilities; the routing weights are constants (as in LXT)
_ROUTER_SCORE_NAMES = {"softmax", "_softmax", "sigmoid"}
_PASS_THROUGH_NAMES = {"to", "_to_copy", "float", "double", "type_as", "contiguous", "clone", "view", "reshape",
                       "_unsafe_view", "alias"}

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


_ACTIVATION_NAME_PARTS = ("gelu", "silu", "swish", "mish", "relu", "activation", "sigmoid", "tanh")


def is_activation_module(m: nn.Module) -> bool:
    """A torch.nn activation, or a library's parameter-free activation module (``NewGELUActivation``,
    ``SiLUActivation``, ...) recognised by its class name."""
    if isinstance(m, _ACTIVATION_MODULES):
        return True
    name = type(m).__name__.lower()
    return any(part in name for part in _ACTIVATION_NAME_PARTS) and not any(True for _ in m.parameters()) \
        and not any(True for _ in m.children())


def _keeps_sign_module(m: nn.Module) -> bool:
    """Output elements are input elements or zeros (so ``x >= 0`` stays true)."""
    if isinstance(m, nn.Upsample):
        return m.mode == "nearest"
    if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d)):
        return m.value >= 0
    return True


def op_label(node: fx.Node) -> str:
    """A readable name of what a node calls: ``torch.nn.functional.relu``, ``Tensor.view``, a module path."""
    return _target_name(node)


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
    """Nodes that carry relevance: float tensors (or tuples of them) computed from a float input placeholder or
    from an embedding of integer inputs (token ids), on a path to the output.

    Statistics that rescale a tensor (``rsqrt(mean(x²) + eps)`` of RMSNorm, variances, norms) count as
    constants: normalisations are explained with their scale held fixed (docs/rules.md).
    """
    active: Dict[fx.Node, bool] = {}
    for n in gm.graph.nodes:
        info = n.meta.get("lrpfx_value")
        floaty = info is not None and (info.is_float_tensor or (
            info.tuple_len is not None and info.dtype is not None and info.dtype.is_floating_point
            and (not info.nested or is_recurrent(gm, n))))  # a nested tuple only where a rule reads it
        if not floaty or n.op == "output":
            continue
        if n.op == "placeholder" or embedding_source(gm, n) is not None:
            active[n] = True
        elif any(a in active for a in n.all_input_nodes) and not constant_by_design(n, active):
            active[n] = True
    return _on_path_to_output(gm, active)


HELD = "lrpfx_held"  # node.meta key: the composite's ``constants`` glob that holds this node's value constant


def node_path(gm: fx.GraphModule, n: fx.Node) -> str:
    """The name ``by_name`` and ``constants`` globs match: a module's path, else the node's name."""
    if n.op == "call_module":
        return n.target
    return n.meta.get("lrpfx_module", n.name)


def hold_constant(gm: fx.GraphModule, patterns, must_match: bool = True) -> None:
    """Mark the nodes matching ``patterns`` (qualified-name globs) as constants; a glob that matches nothing is an
    error naming close matches (a pattern written for another model would otherwise do nothing)."""
    import fnmatch

    from ..errors import unmatched_pattern

    names = {n: node_path(gm, n) for n in gm.graph.nodes if n.op not in ("placeholder", "output", "get_attr")}
    for pattern in patterns:
        matched = [n for n, name in names.items() if fnmatch.fnmatchcase(name, pattern)]
        if not matched and must_match:
            raise unmatched_pattern("constants", pattern, names.values())
        for n in matched:
            n.meta[HELD] = pattern


def constant_by_design(n: fx.Node, active) -> bool:
    """A value computed from activations that carries no relevance: a statistic (a normalisation's scale), a
    shape-only op, a router's top-k weights, an op of a constant that reads an activation's shape or dtype, or a
    node a composite holds constant (:func:`hold_constant`)."""
    return n.meta.get(HELD) is not None or is_statistic(n) or op_name(n) in _SHAPE_ONLY_NAMES or is_routing(n) or (
        op_name(n) in _LIKE_NAMES and bool(n.args) and not (isinstance(n.args[0], fx.Node) and n.args[0] in active))


def is_routing(n: fx.Node) -> bool:
    """Top-k of a gate's probabilities (softmax or sigmoid, through casts and views): a mixture-of-experts router.
    Its routing weights count as constants (as in LXT), so a token's relevance flows only through the experts
    that ran for it, scaled by their fixed weights."""
    if op_name(n) != "topk":
        return False
    source = n.args[0] if n.args else None
    for _ in range(8):
        if not isinstance(source, fx.Node):
            return False
        if op_name(source) in _ROUTER_SCORE_NAMES:
            return True
        if op_name(source) not in _PASS_THROUGH_NAMES or not source.args:
            return False
        source = source.args[0]
    return False


def _on_path_to_output(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> Dict[fx.Node, bool]:
    """Drop active nodes whose value reaches the output only through constants (a statistic's inputs)."""
    live = set()
    for n in reversed(list(gm.graph.nodes)):
        if n.op == "placeholder" and n in active:
            live.add(n)  # inputs always get a relevance, zeros if nothing reaches them
        elif n in active and any(u.op == "output" or u in live for u in n.users):
            live.add(n)
    return {n: True for n in active if n in live}


def untracked_dependency(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> Optional[fx.Node]:
    """The first node through which the output depends on an input's values although lrpfx does not track it
    (a nested-tuple result, say), or None. Such a node would silently cut the relevance to zero.

    Values that are held constant by design do not count: statistics (the scale of a normalisation), shape-only
    ops, and integer or boolean values (indices, masks, routing decisions carry no relevance).
    """
    depends = set()
    for n in gm.graph.nodes:
        value = n.meta.get("lrpfx_value")
        if n.op == "output" or value is None or not value.holds_float:
            continue
        if n in active and (n.op == "placeholder" or embedding_source(gm, n) is not None):
            depends.add(n)
        elif any(a in depends for a in n.all_input_nodes) and not constant_by_design(n, depends):
            depends.add(n)
    live = _upstream_of_output(gm, depends)  # dependent nodes on a dependent path to the output
    return next((n for n in gm.graph.nodes if n in live and n not in active), None)


def unreached_inputs(gm: fx.GraphModule, active: Dict[fx.Node, bool]) -> List[fx.Node]:
    """Input placeholders that carry relevance but on which the output does not depend (their relevance is
    zero by the model's structure)."""
    reached = _upstream_of_output(gm, active, through=lambda n: [embedding_source(gm, n)])
    return [n for n in gm.graph.nodes if n.op == "placeholder" and n in active and n not in reached]


def _upstream_of_output(gm: fx.GraphModule, allowed, through=lambda n: ()) -> set:
    """Nodes in ``allowed`` from which the output is reached through ``allowed`` nodes only (``through(n)`` adds
    inputs that are not graph arguments, such as the token ids behind an embedding)."""
    output = next(n for n in gm.graph.nodes if n.op == "output")
    reached, frontier = set(), [a for a in output.all_input_nodes if a in allowed]
    while frontier:
        n = frontier.pop()
        if n not in reached:
            reached.add(n)
            frontier.extend(a for a in n.all_input_nodes if a in allowed)
            frontier.extend(a for a in through(n) if a is not None)
    return reached


def op_name(n: fx.Node) -> str:
    """The bare op name: ``rsqrt`` for ``aten.rsqrt.default``, ``torch.rsqrt`` and ``Tensor.rsqrt``."""
    if n.op == "call_method":
        return out_of_place_method(n.target)
    if n.op != "call_function":
        return ""
    if isinstance(n.target, torch._ops.OpOverload):
        return n.target._opname
    return getattr(n.target, "__name__", "")


def is_statistic(n: fx.Node) -> bool:
    """A variance, a norm, or ``1/sqrt`` of a mean/sum (possibly shifted by an epsilon)."""
    name = op_name(n)
    if name in _STATISTIC_NAMES:
        return True
    if name not in _NORMALISER_NAMES and not (name == "pow" and _exponent(n) in (0.5, -0.5)):  # pow(s, 0.5): CLIP
        return False
    source = n.args[0] if n.args else None
    for _ in range(8):
        if not isinstance(source, fx.Node):
            return False
        name = op_name(source)
        if name in _REDUCTION_NAMES:
            return True
        if name not in _THROUGH_NAMES or not source.args:
            return False
        source = next((a for a in source.args if isinstance(a, fx.Node)), None)
    return False


def _exponent(n: fx.Node):
    """The exponent of ``pow(x, e)`` when it is a number, else None."""
    e = call_arg(n, 1, "exponent")
    return e if isinstance(e, (int, float)) and not isinstance(e, bool) else None


def embedding_source(gm: fx.GraphModule, n: fx.Node) -> Optional[fx.Node]:
    """For an embedding lookup of a model input (token ids, possibly reshaped), that input's placeholder."""
    if n.op == "call_module":
        if not isinstance(gm.get_submodule(n.target), nn.Embedding):
            return None
        indices = n.args[0] if n.args else None
    elif n.op == "call_function" and n.target in _EMBEDDING_FUNCTIONS:
        indices = call_arg(n, 1 - _EMBEDDING_FUNCTIONS[n.target], "input")
    else:
        return None
    for _ in range(8):  # through .to(), .view() and friends: ops that keep the ids' values
        if not isinstance(indices, fx.Node) or indices.op == "placeholder":
            break
        if op_name(indices) not in _ID_PRESERVING_NAMES:
            return None  # e.g. positions from arange(size(ids)): depend on the ids' shape, not their values
        indices = indices.args[0] if indices.args else None
    return indices if isinstance(indices, fx.Node) and indices.op == "placeholder" else None


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
        elif (source := embedding_source(gm, n)) is not None:
            info = _classify_embedding(gm, n, source)
        elif (call := recurrent_call(gm, n)) is not None:
            module = gm.get_submodule(n.target) if n.op == "call_module" else None
            info = NodeInfo(n, "recurrent", n.target if module is not None else n.name,
                            type(module).__name__ if module is not None else _target_name(n), module=module,
                            layer=call.spec, x=call.x, weight=call.weights, extra={"hx": call.hx})
        elif n.op == "call_module":
            info = _classify_module(n, gm.get_submodule(n.target), acts)
        elif n.op == "call_function":
            info = _classify_function(n, acts, active)
        elif n.op == "call_method":
            info = _classify_method(n, acts, active)
        else:
            info = NodeInfo(n, "unknown", n.name, n.op)
        info.activations = acts
        info.name = n.meta.get("lrpfx_module", info.name)  # export front-end: the op's module path
        info.module = info.module if info.module is not None else n.meta.get("lrpfx_module_object")
        infos[n] = info
    for info in infos.values():
        if info.kind == "matmul":
            info.extra["softmax_operand"] = _softmax_operand(info, infos)
    return infos


def _classify_embedding(gm: fx.GraphModule, n: fx.Node, source: fx.Node) -> NodeInfo:
    """A lookup of token ids: where relevance stops (reported as the ids' relevance, shaped [..., H])."""
    if n.op == "call_module":
        info = NodeInfo(n, "embedding", n.target, "Embedding", module=gm.get_submodule(n.target))
        info.weight = f"{n.target}.weight"
    else:
        info = NodeInfo(n, "embedding", n.name, _target_name(n))
        info.weight = call_arg(n, _EMBEDDING_FUNCTIONS[n.target], "weight")
    info.extra = {"source": source}
    return info


def _softmax_operand(info: NodeInfo, infos: Dict[fx.Node, NodeInfo]) -> Optional[int]:
    """Which operand of a product is a softmax output (attention weights), through copies and casts."""
    for index, operand in enumerate(info.node.args[:2]):
        node = operand
        while isinstance(node, fx.Node) and node in infos and infos[node].kind in ("identity", "structural") \
                and infos[node].x is not None:
            node = infos[node].x
        if isinstance(node, fx.Node) and node in infos and infos[node].kind == "softmax":
            return index
    return None


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
    values = {name: call_arg(n, i + 1, name, None) for i, name in enumerate(names)}
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
    elif isinstance(m, getattr(nn, "RMSNorm", ())):
        info.kind = "layer_norm"
        info.extra = {"normalized_ndim": len(m.normalized_shape), "centered": False,
                      "ln_eps": m.eps if m.eps is not None else torch.finfo(x.meta["lrpfx_value"].dtype).eps}
        info.weight = f"{name}.weight" if m.weight is not None else None
        return info
    elif isinstance(m, nn.Softmax) and m.dim is not None:
        info.kind, info.extra = "softmax", {"dim": m.dim}
        return info
    elif is_activation_module(m):
        info.kind = "activation"
        info.nonneg = isinstance(m, _NONNEG_MODULES)
        info.extra = {"relu": isinstance(m, _RELU_MODULES), "zero_at_zero": not isinstance(m, _NONZERO_AT_ZERO_MODULES)
                      and getattr(m, "lrpfx_zero_at_zero", True)}  # a spelled-out activation knows f(0)
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


def call_arg(n: fx.Node, index: int, name: str, default=None):
    """Argument ``index`` (positional) or ``name`` (keyword) of a call node."""
    if len(n.args) > index:
        return n.args[index]
    return n.kwargs.get(name, default)


def _is_constant(value, active) -> bool:
    return not (isinstance(value, fx.Node) and value in active)


def _classify_function(n: fx.Node, acts, active) -> NodeInfo:
    t = OUT_OF_PLACE_FUNCTIONS.get(n.target, n.target)
    t = _ATEN_AS_TORCH.get(t, t)
    info = NodeInfo(n, "unknown", n.name, _target_name(n))
    if _classify_long_tail(info, n, acts, active):
        return info
    x = _single(acts)
    info.x = x
    first = n.args[0] if n.args else None
    if n.target in _ATEN_IDENTITY and x is not None and first is x:
        info.kind = "identity"
    elif n.target in _ATEN_RESHAPE and x is not None and first is x:
        info.kind, info.extra = "structural", {"reshape": True, "copies": True, "keeps_sign": True}
    elif n.target in _ATEN_STRUCTURAL:
        info.kind, info.extra = "structural", {"reshape": False, "copies": True,
                                               "keeps_sign": n.target not in _ATEN_SIGN_CHANGING}
    elif t in _SOFTMAX_FUNCTIONS and x is not None and first is x and isinstance(call_arg(n, 1, "dim"), int):
        info.kind, info.nonneg, info.extra = "softmax", True, {"dim": call_arg(n, 1, "dim")}
    elif t in _MATMUL_FUNCTIONS:
        _classify_matmul(info, n, active)
    elif t is F.rms_norm and x is not None and first is x:
        shape = call_arg(n, 1, "normalized_shape")
        eps = call_arg(n, 3, "eps")
        info.kind = "layer_norm"
        info.extra = {"normalized_ndim": len(shape) if isinstance(shape, (tuple, list)) else 1, "centered": False,
                      "ln_eps": eps if eps is not None else torch.finfo(x.meta["lrpfx_value"].dtype).eps}
        info.weight = call_arg(n, 2, "weight")
    elif t is F.linear and x is not None and first is x:
        info.kind, info.layer = "linear", Linear()
        info.weight, info.bias = call_arg(n, 1, "weight"), call_arg(n, 2, "bias")
    elif t in _CONV_FUNCTIONS and x is not None and first is x:
        dim = _CONV_FUNCTIONS[t]
        w = call_arg(n, 1, "weight")
        kw = {"stride": call_arg(n, 3, "stride", 1), "padding": call_arg(n, 4, "padding", 0),
              "dilation": call_arg(n, 5, "dilation", 1), "groups": call_arg(n, 6, "groups", 1)}
        try:
            info.layer = _conv_layer(kw, dim, w.meta["lrpfx_value"].shape)
        except (AttributeError, KeyError):  # weight without recorded shape: leave it unknown
            return info
        info.kind, info.weight, info.bias = "conv", w, call_arg(n, 2, "bias")
    elif t in _CONV_T_FUNCTIONS and x is not None and first is x:
        dim = _CONV_T_FUNCTIONS[t]
        info.kind = "conv_transpose"
        info.layer = ConvTranspose(dim, _tuple(call_arg(n, 3, "stride", 1), dim), _tuple(call_arg(n, 4, "padding", 0), dim),
                                   _tuple(call_arg(n, 5, "output_padding", 0), dim), _tuple(call_arg(n, 7, "dilation", 1), dim),
                                   call_arg(n, 6, "groups", 1))
        info.weight, info.bias = call_arg(n, 1, "weight"), call_arg(n, 2, "bias")
    elif t is F.batch_norm and x is not None and first is x and not call_arg(n, 5, "training", False):
        info.kind = "batchnorm"
        info.extra = {"mean": call_arg(n, 1, "running_mean"), "var": call_arg(n, 2, "running_var"),
                      "bn_weight": call_arg(n, 3, "weight"), "bn_bias": call_arg(n, 4, "bias"), "eps": call_arg(n, 7, "eps", 1e-5)}
    elif t is F.layer_norm and x is not None and first is x:
        shape = call_arg(n, 1, "normalized_shape")
        info.kind = "layer_norm"
        info.extra = {"normalized_ndim": len(shape) if isinstance(shape, (tuple, list)) else 1,
                      "ln_eps": call_arg(n, 4, "eps", 1e-5)}
        info.weight, info.bias = call_arg(n, 2, "weight"), call_arg(n, 3, "bias")
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
        keeps_sign = t not in (F.interpolate, torch.masked_fill, torch.where) and not (
            t is F.pad and call_arg(n, 3, "value", 0) not in (0, 0.0, None))
        info.kind, info.extra = "structural", {"reshape": False, "copies": t is not F.interpolate,
                                               "keeps_sign": keeps_sign}
    else:
        _classify_arithmetic(info, _arith_kind(t, _ADD_FUNCTIONS, _SUB_FUNCTIONS, _MUL_FUNCTIONS, _DIV_FUNCTIONS,
                                               _NEG_FUNCTIONS), n, acts, active)
    return info


def _classify_method(n: fx.Node, acts, active) -> NodeInfo:
    name = out_of_place_method(n.target)
    info = NodeInfo(n, "unknown", n.name, f"Tensor.{name}")
    if _classify_long_tail(info, n, acts, active):
        return info
    x = _single(acts)
    info.x = x
    self_is_x = x is not None and n.args and n.args[0] is x
    if name == "softmax" and self_is_x and isinstance(call_arg(n, 1, "dim"), int):
        info.kind, info.nonneg, info.extra = "softmax", True, {"dim": call_arg(n, 1, "dim")}
    elif name in ("matmul", "bmm", "__matmul__"):
        _classify_matmul(info, n, active)
    elif name in _ACTIVATION_METHODS and self_is_x:
        info.kind, info.nonneg = "activation", name in _NONNEG_METHODS
        info.extra = {"relu": name == "relu", "zero_at_zero": name not in _NONZERO_AT_ZERO_METHODS}
    elif name in _IDENTITY_METHODS and self_is_x:
        info.kind = "identity"
    elif name in _RESHAPE_METHODS and self_is_x:
        info.kind, info.extra = "structural", {"reshape": True, "copies": True, "keeps_sign": True}
    elif name in _STRUCTURAL_METHODS:
        info.kind, info.extra = "structural", {"reshape": False, "copies": True, "keeps_sign": name != "masked_fill"}
    elif name in _REDUCE_METHODS and self_is_x:
        info.kind = "reduce"
    else:
        _classify_arithmetic(info, _arith_kind(name, _ADD_METHODS, _SUB_METHODS, _MUL_METHODS, _DIV_METHODS,
                                               _NEG_METHODS), n, acts, active)
    return info


def _classify_long_tail(info: NodeInfo, n: fx.Node, acts, active) -> bool:
    """The rows of the long-tail tables (casts and views shaped like another tensor, clamp, max/min/top-k over
    an axis, powers, grouped expert products, scatter sums, ATen's batch_norm); True when one matched."""
    name = op_name(n)
    first = n.args[0] if n.args else None
    if name in _SCATTER_SUM_NAMES:  # the tensor summed into, the summands, or both may be activations
        info.kind = "reduce"
        return True
    if not (isinstance(first, fx.Node) and first in active):
        return False
    info.x = first
    if name in _LIKE_NAMES and len(acts) > 1:  # x.type_as(y) and friends: y gives a shape or dtype only
        info.kind, info.extra = {"type_as": ("identity", {}), "to": ("identity", {}),
                                 "expand_as": ("structural", {"reshape": False, "copies": True, "keeps_sign": True})
                                 }.get(name, ("structural", {"reshape": True, "copies": True, "keeps_sign": True}))
        return True
    if len(acts) != 1:
        return False
    if name in _CLAMP_NAMES:
        return _classify_clamp(info, n, name)
    if name in _SELECT_NAMES and _selects(n, name):
        info.kind = "max_pool"  # no window spec: relevance is routed by the op's own gradient (winner takes all)
        return True
    if name == "pow" and _exponent(n) is not None:
        e = _exponent(n)
        info.kind, info.nonneg = "activation", float(e).is_integer() and int(e) % 2 == 0
        info.extra = {"relu": False, "zero_at_zero": e > 0}
        return True
    if name in _GROUPED_MM_NAMES and isinstance(call_arg(n, 2, "offs"), fx.Node):  # linear in the routed tokens
        info.kind, info.weight, info.extra = "linear", call_arg(n, 1, "mat2"), {"offs": call_arg(n, 2, "offs")}
        return True
    if n.target is aten.batch_norm.default and not call_arg(n, 5, "training", False):
        info.kind = "batchnorm"
        info.extra = {"mean": call_arg(n, 3, "running_mean"), "var": call_arg(n, 4, "running_var"),
                      "bn_weight": call_arg(n, 1, "weight"), "bn_bias": call_arg(n, 2, "bias"),
                      "eps": call_arg(n, 7, "eps", 1e-5)}
        return info.extra["mean"] is not None
    return False


def _classify_clamp(info: NodeInfo, n: fx.Node, name: str) -> bool:
    """clamp/clip with number (or constant tensor) bounds: an activation; clamp(min=0) is a ReLU."""
    if name == "clamp_min":
        low, high = call_arg(n, 1, "min"), None
    elif name == "clamp_max":
        low, high = None, call_arg(n, 1, "max")
    else:
        low, high = call_arg(n, 1, "min"), call_arg(n, 2, "max")
    numbers = all(b is None or (isinstance(b, (int, float)) and not isinstance(b, bool)) for b in (low, high))
    info.kind = "activation"
    info.nonneg = numbers and low is not None and low >= 0
    info.extra = {"relu": numbers and low == 0 and high is None,
                  "zero_at_zero": numbers and (low is None or low <= 0) and (high is None or high >= 0)}
    return True


def _selects(n: fx.Node, name: str) -> bool:
    """max/min over an axis or of everything (``torch.max(a, b)``, the elementwise maximum, does not select)."""
    if name in ("amax", "amin", "topk"):
        return True
    dim = call_arg(n, 1, "dim")
    return dim is None or (isinstance(dim, int) and not isinstance(dim, bool))


# library functions (by qualified name, so no import is needed) that are the identity in eval mode, with the
# position of their `training` argument
_EVAL_IDENTITY_BY_NAME = {"torchvision.ops.stochastic_depth.stochastic_depth": 3}


def _eval_identity(n: fx.Node) -> bool:
    position = _EVAL_IDENTITY_BY_NAME.get(_target_name(n))
    return position is not None and call_arg(n, position, "training", True) is False


def _classify_matmul(info: NodeInfo, n: fx.Node, active) -> None:
    """``a @ b`` of at least 2-D operands, one or both of them activations."""
    operands = list(n.args[:2])
    if len(operands) != 2 or any(isinstance(o, fx.Node) and _rank(o) < 2 for o in operands):
        return
    flags = tuple(not _is_constant(o, active) for o in operands)
    if any(flags) and all(isinstance(o, fx.Node) for o in operands):
        info.kind, info.extra = "matmul", {"active": flags}


def _rank(node: fx.Node) -> int:
    value = node.meta.get("lrpfx_value")
    return len(value.shape) if value is not None and value.is_tensor else 0


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
