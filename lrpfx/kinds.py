"""The vocabulary of classification: what kind of node a node is (:class:`Kind`), the typed facts a kind carries,
and :class:`OpSpec`, one row of the op registry (:mod:`lrpfx.graph.registry`).

A kind decides which rules may apply (``Rule.kinds``) and which default rule a node gets. Kinds are strings too
(``Kind.ADD == "add"``), so composites can name them (``by_type={"add": ...}``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, List, Optional, Tuple

import torch.fx as fx
from . import meta_keys


class Kind(str, Enum):
    """What a node computes, as far as relevance is concerned."""

    INPUT = "input"
    EMBEDDING = "embedding"  # a lookup of token ids: where relevance stops
    LINEAR = "linear"
    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    BATCHNORM = "batchnorm"  # eval-mode BatchNorm: an affine map per channel
    ACTIVATION = "activation"  # elementwise nonlinearity
    IDENTITY = "identity"  # dropout in eval mode, copies, casts
    SCALE = "scale"  # product or quotient with a constant, negation
    MAX_POOL = "max_pool"  # max pooling, max/min/top-k over an axis
    AVG_POOL = "avg_pool"
    REDUCE = "reduce"  # sums and means, scatter sums
    ADD = "add"  # sums and differences of activations (and constants)
    MUL = "mul"  # elementwise product of two activations
    STRUCTURAL = "structural"  # moves or copies elements: views, cat, pad, gather, interpolation
    LAYER_NORM = "layer_norm"  # LayerNorm, RMSNorm
    SOFTMAX = "softmax"
    MATMUL = "matmul"  # product of two activations (attention) or of an activation and a constant
    RECURRENT = "recurrent"  # a whole LSTM/GRU/RNN layer
    UNKNOWN = "unknown"

    # behave as the plain string everywhere (sets of kind strings, messages, rule tables)
    __hash__ = str.__hash__
    __str__ = str.__str__
    __format__ = str.__format__


AFFINE_KINDS = frozenset({Kind.LINEAR, Kind.CONV, Kind.CONV_TRANSPOSE, Kind.BATCHNORM})
WEIGHTED_KINDS = frozenset({Kind.LINEAR, Kind.CONV, Kind.CONV_TRANSPOSE})  # a weight, possibly a bias
NORM_KINDS = frozenset({Kind.AVG_POOL, Kind.REDUCE, Kind.ADD})  # linear maps without parameters
# the output has the shape of the single activation input, so a relevance can pass unchanged
PASSABLE_KINDS = frozenset({Kind.ACTIVATION, Kind.IDENTITY, Kind.SCALE, Kind.BATCHNORM, Kind.LAYER_NORM, Kind.UNKNOWN})


# ---- typed facts, one small dataclass per kind that needs more than its weight/bias/layer ------------------------
@dataclass(frozen=True)
class Elementwise:
    """An activation: ``f(x)`` elementwise."""

    relu: bool = False  # max(x, 0) wherever it is not capped (ReLU, ReLU6, clamp(min=0))
    zero_at_zero: bool = True  # f(0) = 0 (matters for the relevance-support analysis)


@dataclass(frozen=True)
class Moves:
    """A structural op: output elements are taken from the input (or interpolated, or padded)."""

    reshape: bool = False  # only the shape changes
    copies: bool = True  # every output element is an input element or zero (no interpolation)
    keeps_sign: bool = True  # a non-negative input gives a non-negative output


@dataclass(frozen=True)
class Terms:
    """A sum of activations with signs; the other summands are constants."""

    terms: Tuple[fx.Node, ...]
    signs: Tuple[int, ...]


@dataclass(frozen=True)
class BatchNormStats:
    """Running statistics and affine parameters of an eval-mode BatchNorm (paths or nodes)."""

    mean: Any
    var: Any
    weight: Any
    bias: Any
    eps: float


@dataclass(frozen=True)
class Normalisation:
    """LayerNorm (centred) or RMSNorm (not) over the last ``ndim`` axes; GroupNorm (``groups > 0``) over groups of
    the channel axis 1 and all axes after it, with a weight and bias per channel."""

    ndim: int
    eps: float
    centered: bool = True
    groups: int = 0


@dataclass(frozen=True)
class Axis:
    """The axis of a softmax."""

    dim: int


@dataclass(frozen=True)
class Product:
    """``a @ b``: which operands are activations, and which one (if any) is a softmax output."""

    active: Tuple[bool, bool]
    softmax_operand: Optional[int] = None


@dataclass(frozen=True)
class Lookup:
    """An embedding of the token ids held by placeholder ``source``."""

    source: fx.Node


@dataclass(frozen=True)
class Recurrence:
    """The initial state a recurrent layer was called with: None, one node, or a tuple of nodes."""

    hx: Any


@dataclass(frozen=True)
class Grouped:
    """A grouped product of mixture-of-experts tokens: ``offs`` delimits each expert's rows."""

    offs: fx.Node


@dataclass(frozen=True)
class OpSpec:
    """One row of the op registry: every spelling of one op and what lrpfx knows about it.

    ``modules`` are ``nn.Module`` classes, ``functions`` torch/functional/operator callables and ATen overloads,
    ``methods`` Tensor method names, ``names`` bare op names that match all three spellings at once (for the long
    tail: ``"clamp"`` is ``torch.clamp``, ``Tensor.clamp`` and ``aten.clamp.default``). ``read(info, call)``, when
    given, fills the :class:`NodeInfo` ``info`` (its facts, weight, bias, layer) from the node's arguments, which
    ``call`` (a :class:`~lrpfx.graph.readers.Call`) reads by name or position, and returns False where this row
    does not apply after all (a convolution with graph-valued stride, say).
    """

    kind: Kind
    modules: Tuple[type, ...] = ()
    functions: Tuple[Callable, ...] = ()
    methods: Tuple[str, ...] = ()
    names: Tuple[str, ...] = ()
    nonneg: bool = False  # the output is >= 0 for any input (ReLU, sigmoid, softmax)
    zero_at_zero: bool = True  # f(0) = 0
    relu: bool = False
    reshape: bool = False
    copies: bool = True
    keeps_sign: bool = True
    read: Optional[Callable] = None
    inputs: str = "single"  # "single": the first argument is the only activation; "first": it is one; "any"
    label: str = ""  # a name for messages and the registry listing
    view: bool = False  # the output is a view of the first argument (an in-place op on it changes its base)
    shaped_like: bool = False  # the arguments after the first give a shape or a dtype only (``x.type_as(y)``)
    elementwise: bool = False  # each output element is a function of the same element of each input (casts, exp)
    parametrised: bool = False  # a module's one op that reads its parameters (a Linear's linear, an Embedding's)
    capped: bool = False  # a ReLU whose output is capped (ReLU6, hardtanh): not exactly max(x, 0)
    constant: str = ""  # its value carries no relevance by design, and why (a shape, a statistic, an index)
    refusal: str = ""  # no rule by design, and why: lrpfx names the op and this reason instead of guessing

    def __post_init__(self):
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "methods", tuple(self.methods))
        object.__setattr__(self, "names", tuple(self.names))

    @property
    def pointwise(self) -> bool:
        """Elementwise: activations, sums, products, scalings, and rows that say so."""
        return self.elementwise or self.kind in (Kind.ACTIVATION, Kind.ADD, Kind.MUL, Kind.SCALE)

    def default_facts(self):
        """The facts a row gives without reading arguments."""
        if self.kind == Kind.ACTIVATION:
            return Elementwise(self.relu, self.zero_at_zero)
        if self.kind == Kind.STRUCTURAL:
            return Moves(self.reshape, self.copies, self.keeps_sign)
        return None


@dataclass(eq=False)
class NodeInfo:
    """What lrpfx knows about one activation node. ``kind`` drives the choice of rule (see ``lrpfx.rules``);
    ``facts`` holds the kind's typed facts (:class:`Elementwise`, :class:`Terms`, ...) or None."""

    node: fx.Node
    kind: Kind
    name: str  # module qualified name for call_module nodes (or the op's module on export), else the node name
    op: str  # a readable label: module class or function name
    module: Any = None
    layer: Any = None  # a spec from lrpfx.rules.layers for affine and pooling nodes
    x: Optional[fx.Node] = None  # the activation input of single-input kinds
    weight: Any = None  # fx.Node or parameter path string ("features.0.weight") or None
    bias: Any = None
    activations: List[fx.Node] = field(default_factory=list)  # all activation inputs, in argument order
    facts: Any = None
    nonneg: bool = False  # the value is known to be >= 0
    spec: Optional[OpSpec] = None  # the registry row that matched
    # set by the analyses (lrpfx.graph.canonize):
    folded_into: Optional[fx.Node] = None  # a BatchNorm that absorbs this affine node
    fold_from: Optional["NodeInfo"] = None  # on a BatchNorm: the affine node it absorbs
    positive_only: bool = False  # the relevance arriving here is zero wherever the value is <= 0
    relu_output: Optional[fx.Node] = None  # a plain ReLU of this value, which a step may divide by instead

    @property
    def shape(self):
        return self.node.meta[meta_keys.VALUE].shape


def consumers_of(infos: "dict[fx.Node, NodeInfo]") -> "dict[fx.Node, List[fx.Node]]":
    """Per activation node, the activation nodes that read it, in graph order; a Conv/Linear folded into a
    BatchNorm reads as that BatchNorm (the BatchNorm's step hands the relevance straight to the layer's input)."""
    found: "dict[fx.Node, List[fx.Node]]" = {n: [] for n in infos}
    for n, info in infos.items():
        reader = info.folded_into if info.folded_into is not None else n
        for a in n.all_input_nodes:
            if a in infos and infos[a].folded_into is None and reader not in found[a]:
                found[a].append(reader)
    return found
