"""Ops lrpfx knows by design to carry no relevance (constant rows) or to have no rule (refused rows), each with
the reason: the analyses hold the first constant (:func:`lrpfx.graph.analyses.constant_by_design`), and a refusal
names the op and its reason instead of guessing. Both are rows of the op registry (:mod:`lrpfx.graph.registry`)
and count in the Core ATen coverage (:mod:`lrpfx.graph.coverage`).
"""
from __future__ import annotations

import torch

from ..kinds import Kind as K, OpSpec

aten = torch.ops.aten

# ---- values that carry no relevance by design (matched by bare name; see analyses.constant_by_design) -------------
SHAPE_ONLY = "depends on a tensor's shape, dtype or device only, never on its values"
INDEX = "a boolean or integer result (a mask, an index, a count): it selects, it carries no relevance"
RANDOM = "random numbers: independent of the input's values"
STATISTIC = "a statistic: a normalisation is explained with its scale held fixed"
SCALAR = "a Python number read out of a tensor: a control value"

CONSTANT_ROWS = [
    OpSpec(K.UNKNOWN, names=("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor", "zeros_like",
                             "ones_like", "full_like", "empty_like", "size", "sym_size", "sym_numel", "sym_stride",
                             "sym_storage_offset", "sym_is_contiguous", "numel", "empty", "empty_strided",
                             "empty_permuted", "full",
                             "zeros", "ones", "arange", "scalar_tensor", "fill", "rand_like", "randn_like",
                             "randint_like"), constant=SHAPE_ONLY, label="shape only"),
    OpSpec(K.UNKNOWN, names=("eq", "ne", "lt", "le", "gt", "ge", "isinf", "isnan", "isfinite", "isneginf",
                             "isposinf", "logical_and", "logical_or", "logical_xor", "logical_not", "bitwise_and",
                             "bitwise_or", "bitwise_xor", "bitwise_not", "bitwise_left_shift",
                             "bitwise_right_shift", "any", "all", "argmax", "argmin", "argsort", "nonzero",
                             "searchsorted", "bucketize", "unique", "bincount"), constant=INDEX,
           label="mask or index"),
    OpSpec(K.UNKNOWN, names=("rand", "randn", "randint", "randperm", "bernoulli", "multinomial", "normal",
                             "uniform", "poisson"), constant=RANDOM, label="random"),
    OpSpec(K.UNKNOWN, names=("var", "std", "var_mean", "std_mean", "norm", "vector_norm", "linalg_vector_norm"),
           constant=STATISTIC, label="statistic"),
    OpSpec(K.UNKNOWN, names=("_local_scalar_dense", "item"), constant=SCALAR, label="scalar"),
]

# ---- ops lrpfx refuses by design, with the reason its error and docs/ops.md give -----------------------------------
_ELEMENTWISE = ("an elementwise function outside an activation layer: whether relevance passes through it (an "
                "activation: Pass()) or stops there (a gate, a scale: hold it constant) depends on its role in the "
                "model, so lrpfx asks: assign a rule by name")
_PIECEWISE = ("piecewise constant (a rounding, a quantiser): its gradient is zero almost everywhere, yet its value "
              "follows the input: assign Pass() by name to pass relevance through, or hold it constant")
_TWO_INPUTS = ("an elementwise function of two tensors that is neither a sum nor a product, a maximum or a "
               "minimum: assign Gradient() by name")
_MIXING = ("a scatter that reduces (sum, product, max, ... of the elements sent to one place): no rule yet; a "
           "scatter_add is a sum and explained")
_TRAINING = "a training-mode op: explain the model in eval mode (model.eval())"
_BACKWARD = "a backward op: it appears in training graphs only, never in a model's forward"


def _refuse(reason: str, *ops, label: str = "", parametrised: bool = False, elementwise: bool = False) -> OpSpec:
    return OpSpec(K.UNKNOWN, functions=tuple(getattr(aten, op) for op in ops), names=ops, refusal=reason,
                  label=label or ops[0], parametrised=parametrised, elementwise=elementwise)


REFUSED_ROWS = [
    _refuse(_ELEMENTWISE, "abs", "acos", "acosh", "asin", "asinh", "atan", "atanh", "cos", "cosh", "erf", "erfc",
            "erfinv", "exp", "exp2", "expm1", "log", "log10", "log1p", "log2", "reciprocal", "rsqrt", "sin",
            "sinh", "sqrt", "tan", "digamma", "lgamma", label="elementwise function", elementwise=True),
    _refuse(_PIECEWISE, "round", "floor", "ceil", "trunc", "sign", label="piecewise constant", elementwise=True),
    _refuse("a sawtooth (x - c·floor(x/c)): no rule", "fmod", "remainder", "frac", label="remainder"),
    _refuse(_TWO_INPUTS, "atan2", "hypot", label="elementwise of two"),
    _refuse(_MIXING, "scatter_reduce", label="mixing linear map"),
    _refuse("interpolates at positions computed from the data: no rule", "grid_sampler_2d", label="grid sample"),
    _refuse("a product of many factors along an axis: no conservative rule", "prod", "cumprod", label="product"),
    _refuse("distances between vectors (norms of differences): no LRP rule", "_cdist_forward", "_pdist_forward",
            label="distances"),
    _refuse("a Fourier transform to or from complex values: lrpfx explains real-valued graphs", "_fft_r2c",
            "_fft_c2r", "_fft_c2c", label="fft"),
    _refuse("sums or means of embedding rows by offsets: write it as an embedding lookup and a sum",
            "_embedding_bag", label="embedding bag"),
    _refuse("log-probabilities: explain the logits (select them with output=) or the softmax", "_log_softmax",
            label="log_softmax"),
    _refuse("bias + a @ b: the export front-end reads it as a linear layer where the matrix is a parameter "
            "(GPT-2's Conv1D); a product of activations plus a bias has no rule", "addmm", label="addmm",
            parametrised=True),
    _refuse("the export front-end reads it as aten.batch_norm when only its output is used; with its saved "
            "statistics read it has no rule", "_native_batch_norm_legit_no_training", label="batch norm (fused)"),
    _refuse("LayerNorm with its statistics as extra outputs (a decomposed program): lrpfx reads aten.layer_norm, "
            "which torch.export keeps", "native_layer_norm", label="layer norm (fused)"),
    _refuse("GroupNorm with its statistics as extra outputs (a decomposed program): lrpfx reads aten.group_norm, "
            "which torch.export keeps", "native_group_norm", label="group norm (fused)", parametrised=True),
    _refuse("resizes a tensor in place (its elements are undefined): write the tensor a model computes",
            "resize_", label="resize"),
    _refuse(_TRAINING, "native_dropout", "_native_batch_norm_legit", label="training mode"),
    _refuse(_BACKWARD, "_adaptive_avg_pool2d_backward", "avg_pool2d_backward", "convolution_backward",
            "embedding_dense_backward", "max_pool2d_with_indices_backward", "native_group_norm_backward",
            "native_layer_norm_backward", label="backward"),
]
