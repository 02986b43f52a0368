"""Rule objects: immutable, hashable configuration of one relevance step.

A rule object only says *what* to compute and with which hyper-parameters; the computation lives in the pure
functions of :mod:`lrpfx.rules.affine`, :mod:`lrpfx.rules.elementwise` and :mod:`lrpfx.rules.structural`, which
the program builder calls. ``kinds`` lists the node kinds (see :mod:`lrpfx.graph.classify`) a rule can be assigned to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import ClassVar, Union

import torch

from ..errors import RuleError

# Node kinds whose relevance step is an affine rule (weights and bias, possibly a folded BatchNorm).
AFFINE_KINDS = frozenset({"linear", "conv", "conv_transpose", "batchnorm"})
# Node kinds that are linear maps without parameters: the "Norm" family (epsilon on a fixed map).
NORM_KINDS = frozenset({"avg_pool", "reduce", "add"})
# Node kinds whose output has the shape of their single activation input, so R can pass unchanged.
PASSABLE_KINDS = frozenset({"activation", "identity", "scale", "batchnorm", "layer_norm", "unknown"})


def _check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or math.isnan(eps) or eps < 0:
        raise RuleError(f"{name} must be a float >= 0, got {eps!r}")


class Rule:
    """Base class of all rules. Subclasses are frozen dataclasses; ``kinds`` says where they apply."""

    kinds: ClassVar[frozenset] = frozenset()
    name: ClassVar[str] = "rule"

    def describe(self) -> str:
        params = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({params})"


@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon; ``Epsilon(0)`` is LRP-0. On parameter-free linear nodes it is the Norm rule with this eps."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS | NORM_KINDS
    name: ClassVar[str] = "epsilon"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class Gamma(Rule):
    """Generalized LRP-gamma (sign-aware; the textbook ``W + gamma W+`` rule for non-negative inputs)."""

    gamma: float = 0.25
    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "gamma"

    def __post_init__(self):
        _check_eps(self.eps)
        if not isinstance(self.gamma, (int, float)) or math.isnan(self.gamma) or self.gamma < 0:
            raise RuleError(f"gamma must be a float >= 0, got {self.gamma!r}")


@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha`` times the positive part minus ``beta`` times the negative part."""

    alpha: float = 2.0
    beta: float = 1.0
    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "alphabeta"

    def __post_init__(self):
        _check_eps(self.eps)
        if self.alpha < 0 or self.beta < 0:
            raise RuleError(f"alpha and beta must both be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if abs((self.alpha - self.beta) - 1.0) > 1e-12:
            raise RuleError(
                f"alpha - beta must equal 1 (got alpha={self.alpha}, beta={self.beta}); "
                "use e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )


@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z+ (equals ``AlphaBeta(1, 0)``)."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "zplus"

    def __post_init__(self):
        _check_eps(self.eps)


Bound = Union[float, torch.Tensor]


@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """LRP-z^B for inputs bounded by ``low`` and ``high`` (scalars or tensors broadcastable to the input)."""

    low: Bound = -3.0
    high: Bound = 3.0
    eps: float = 1e-6
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "zbox"

    def __post_init__(self):
        _check_eps(self.eps)
        for bound_name in ("low", "high"):
            bound = getattr(self, bound_name)
            if not isinstance(bound, (int, float, torch.Tensor)):
                raise RuleError(f"ZBox {bound_name} must be a float or a tensor, got {type(bound).__name__}")
        if bool((torch.as_tensor(self.low) > torch.as_tensor(self.high)).any()):
            raise RuleError(f"ZBox needs low <= high everywhere, got low={self.low}, high={self.high}")


@dataclass(frozen=True)
class Flat(Rule):
    """LRP-flat: relevance spread evenly over the receptive field (inputs and weights set to one, no bias)."""

    eps: float = 1e-6
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "flat"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class WSquare(Rule):
    """LRP-w^2: input set to one, parameters squared."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    name: ClassVar[str] = "wsquare"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class Pass(Rule):
    """Identity: the relevance of the output is handed to the (single) activation input unchanged."""

    kinds: ClassVar[frozenset] = PASSABLE_KINDS
    name: ClassVar[str] = "pass"


@dataclass(frozen=True)
class Norm(Rule):
    """Split relevance by each input's contribution to the output (pooling, sums, residual adds).

    On a sum with constant summands (a position embedding, an attention bias) the constants act as a bias and
    keep their share; ``zero_bias=True`` leaves them out, so the activations get all of it (conservation)."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = NORM_KINDS | {"max_pool"}
    name: ClassVar[str] = "norm"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class WinnerTakesAll(Rule):
    """Max pooling: all relevance of a window goes to its maximum (the gradient of max pooling)."""

    kinds: ClassVar[frozenset] = frozenset({"max_pool"})
    name: ClassVar[str] = "wta"


@dataclass(frozen=True)
class Structural(Rule):
    """Route relevance back through a structural op with its vector-Jacobian product (exact, conserving)."""

    kinds: ClassVar[frozenset] = frozenset({"structural", "identity", "unknown", "max_pool"})
    name: ClassVar[str] = "structural"


@dataclass(frozen=True)
class Gradient(Rule):
    """The plain gradient through this node (its vector-Jacobian product); any node kind."""

    kinds: ClassVar[frozenset] = frozenset({"*"})
    name: ClassVar[str] = "gradient"


@dataclass(frozen=True)
class MulUniform(Rule):
    """Elementwise product of activations: each operand that depends on the input gets ``R / n``."""

    kinds: ClassVar[frozenset] = frozenset({"mul"})
    name: ClassVar[str] = "mul-uniform"


@dataclass(frozen=True)
class NormIdentity(Rule):
    """LayerNorm treated as linear with its standard deviation held constant (epsilon on centring and bias)."""

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = frozenset({"layer_norm"})
    name: ClassVar[str] = "norm-identity"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class Softmax(Rule):
    """AttnLRP's softmax rule: ``R_in = x · (R - s · ΣR)`` along the softmax axis; ``-inf`` inputs get 0."""

    kinds: ClassVar[frozenset] = frozenset({"softmax"})
    name: ClassVar[str] = "softmax"


@dataclass(frozen=True)
class MatmulUniform(Rule):
    """AttnLRP's bilinear rule for ``A @ B``: each operand that depends on the input gets the epsilon rule on
    ``R / n`` (``n`` such operands), ``R_A = A · ((R / stab(n·O)) @ Bᵀ)``, ``R_B = B · (Aᵀ @ (R / stab(n·O)))``."""

    eps: float = 1e-6
    kinds: ClassVar[frozenset] = frozenset({"matmul"})
    name: ClassVar[str] = "matmul-uniform"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True)
class ConstantAttention(Rule):
    """CP-LRP: in ``A @ V`` with ``A`` a softmax output (attention weights), ``A`` is held constant and ``V``
    gets all the relevance by the epsilon rule; the softmax and ``QKᵀ`` get none. A product without a
    softmax operand falls back to :class:`MatmulUniform`."""

    eps: float = 1e-6
    kinds: ClassVar[frozenset] = frozenset({"matmul"})
    name: ClassVar[str] = "constant-attention"

    def __post_init__(self):
        _check_eps(self.eps)


@dataclass(frozen=True, eq=False)
class PatternNet(Rule):
    """PatternNet (docs/rules.md): the gradient pass with each affine weight replaced by its fitted pattern."""

    patterns: object = None  # lrpfx.patterns.Patterns
    kinds: ClassVar[frozenset] = frozenset({"linear", "conv"})
    name: ClassVar[str] = "patternnet"

    def describe(self) -> str:
        return f"{type(self).__name__}(kind={getattr(self.patterns, 'kind', None)!r})"


@dataclass(frozen=True, eq=False)
class PatternAttribution(PatternNet):
    """PatternAttribution (docs/rules.md): the gradient pass with each affine weight replaced by ``W * A``."""

    name: ClassVar[str] = "patternattribution"


from .recurrent import RecurrentLRP  # noqa: E402  (defined next to its functions; it subclasses Rule)


def applies_to(rule: Rule, kind: str) -> bool:
    return "*" in rule.kinds or kind in rule.kinds


__all__ = [
    "Rule", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare", "Pass", "Norm",
    "WinnerTakesAll", "Structural", "Gradient", "MulUniform", "NormIdentity", "Softmax", "MatmulUniform",
    "ConstantAttention", "PatternNet", "PatternAttribution", "RecurrentLRP",
    "applies_to",
    "AFFINE_KINDS", "NORM_KINDS", "PASSABLE_KINDS",
]
