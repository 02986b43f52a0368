"""Rule objects: immutable, hashable configuration of one relevance step.

A rule object only says *what* to compute and with which hyper-parameters; the computation lives in the pure
functions of :mod:`lrpfx.rules.affine`, :mod:`lrpfx.rules.elementwise` and :mod:`lrpfx.rules.structural`, which
the program builder calls. ``kinds`` lists the node kinds (see :mod:`lrpfx.graph.classification`) a rule can be assigned to.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Union

import torch

from ..errors import RuleError
from ..kinds import AFFINE_KINDS, NORM_KINDS, PASSABLE_KINDS, Kind
from . import affine
from .base import RULE_CLASSES, Rule, relevance_function
from .recurrent import RecurrentLRP


# what affine rules share: their function takes (x, weight, bias, z, r, *, layer, eps, ...) and folds BatchNorm
class _AffineRule(Rule):
    kinds: ClassVar[frozenset] = AFFINE_KINDS
    folds_batchnorm: ClassVar[bool] = True
    input_sign: ClassVar[bool] = False  # the function takes ``x_nonneg`` (skips products with x⁻ known to be 0)
    positive_shortcut: ClassVar[bool] = False  # the function takes ``positive_only`` and ``z_is_relu``

    def arguments(self) -> dict:
        args = {"eps": float(self.eps)}
        if hasattr(self, "zero_bias"):
            args["zero_bias"] = self.zero_bias
        return args

    def divides_by_relu(self) -> bool:
        """Whether the step may divide by ``relu(z)`` instead of ``z`` where its relevance vanishes for z <= 0."""
        return False


@dataclass(frozen=True)
class Epsilon(_AffineRule):
    """LRP-epsilon; ``Epsilon(0)`` is LRP-0. On parameter-free linear nodes it is the Norm rule with this eps."""

    exact_per_value: ClassVar[bool] = True
    epsilon_quotient: ClassVar[bool] = True

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = AFFINE_KINDS | NORM_KINDS
    name: ClassVar[str] = "epsilon"
    proportional: ClassVar[bool] = True
    positive_shortcut: ClassVar[bool] = True
    function = relevance_function(affine.epsilon)

    def divides_by_relu(self) -> bool:
        return not self.zero_bias and self.eps > 0



@dataclass(frozen=True)
class Gamma(_AffineRule):
    """Generalized LRP-gamma (sign-aware; the textbook ``W + gamma W+`` rule for non-negative inputs)."""

    gamma: float = 0.25
    eps: float = 1e-6
    zero_bias: bool = False
    name: ClassVar[str] = "gamma"
    proportional: ClassVar[bool] = True
    input_sign: ClassVar[bool] = True
    positive_shortcut: ClassVar[bool] = True
    function = relevance_function(affine.gamma)

    def arguments(self) -> dict:
        return {"gamma": float(self.gamma), "eps": self.eps, "zero_bias": self.zero_bias}

    def divides_by_relu(self) -> bool:
        return not self.zero_bias

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.gamma, (int, float)) or math.isnan(self.gamma) or self.gamma < 0:
            raise RuleError(f"gamma must be a float >= 0, got {self.gamma!r}")


@dataclass(frozen=True)
class AlphaBeta(_AffineRule):
    """LRP-alpha-beta: ``alpha`` times the positive part minus ``beta`` times the negative part."""

    alpha: float = 2.0
    beta: float = 1.0
    eps: float = 1e-6
    zero_bias: bool = False
    name: ClassVar[str] = "alphabeta"
    proportional: ClassVar[bool] = True
    input_sign: ClassVar[bool] = True
    function = relevance_function(affine.alpha_beta)

    def arguments(self) -> dict:
        return {"alpha": float(self.alpha), "beta": float(self.beta), "eps": self.eps, "zero_bias": self.zero_bias}

    def __post_init__(self):
        super().__post_init__()
        if self.alpha < 0 or self.beta < 0:
            raise RuleError(f"alpha and beta must both be >= 0, got alpha={self.alpha}, beta={self.beta}")
        if abs((self.alpha - self.beta) - 1.0) > 1e-12:
            raise RuleError(
                f"alpha - beta must equal 1 (got alpha={self.alpha}, beta={self.beta}); "
                "use e.g. AlphaBeta(2, 1) or AlphaBeta(1, 0)"
            )


@dataclass(frozen=True)
class ZPlus(_AffineRule):
    """LRP-z+ (equals ``AlphaBeta(1, 0)``)."""

    eps: float = 1e-6
    zero_bias: bool = False
    name: ClassVar[str] = "zplus"
    proportional: ClassVar[bool] = True
    input_sign: ClassVar[bool] = True
    function = relevance_function(affine.zplus)



Bound = Union[float, torch.Tensor]


@dataclass(frozen=True, eq=False)
class ZBox(_AffineRule):
    """LRP-z^B for inputs bounded by ``low`` and ``high`` (scalars or tensors broadcastable to the input)."""

    low: Bound = -3.0
    high: Bound = 3.0
    eps: float = 1e-6
    name: ClassVar[str] = "zbox"
    function = relevance_function(affine.zbox)  # called with the bounds after r (lrpfx.program.emit)

    def extra_inputs(self) -> tuple:
        return (("low", self.low), ("high", self.high))

    def __post_init__(self):
        super().__post_init__()
        for bound_name in ("low", "high"):
            bound = getattr(self, bound_name)
            if not isinstance(bound, (int, float, torch.Tensor)):
                raise RuleError(f"ZBox {bound_name} must be a float or a tensor, got {type(bound).__name__}")
        if bool((torch.as_tensor(self.low) > torch.as_tensor(self.high)).any()):
            raise RuleError(f"ZBox needs low <= high everywhere, got low={self.low}, high={self.high}")


@dataclass(frozen=True)
class Flat(_AffineRule):
    """LRP-flat: relevance spread evenly over the receptive field (inputs and weights set to one, no bias)."""

    eps: float = 1e-6
    name: ClassVar[str] = "flat"
    function = relevance_function(affine.flat)



@dataclass(frozen=True)
class WSquare(_AffineRule):
    """LRP-w^2: input set to one, parameters squared."""

    eps: float = 1e-6
    zero_bias: bool = False
    name: ClassVar[str] = "wsquare"
    function = relevance_function(affine.wsquare)



@dataclass(frozen=True)
class Pass(Rule):
    """Identity: the relevance of the output is handed to the (single) activation input unchanged."""

    routes_per_value: ClassVar[frozenset] = frozenset({Kind.SCALE})

    kinds: ClassVar[frozenset] = PASSABLE_KINDS
    name: ClassVar[str] = "pass"

    def keeps_zeros(self, info) -> bool:
        return info.kind in (Kind.IDENTITY, Kind.SCALE) or (
            info.kind == Kind.ACTIVATION and info.facts is not None and info.facts.zero_at_zero)


@dataclass(frozen=True)
class Norm(Rule):
    """Split relevance by each input's contribution to the output (pooling, sums, residual adds).

    On a sum with constant summands (a position embedding, an attention bias) the constants act as a bias and
    keep their share; ``zero_bias=True`` leaves them out, so the activations get all of it (conservation)."""

    exact_per_value: ClassVar[bool] = True

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = NORM_KINDS | {Kind.MAX_POOL}
    name: ClassVar[str] = "norm"
    proportional: ClassVar[bool] = True



@dataclass(frozen=True)
class WinnerTakesAll(Rule):
    """Max pooling: all relevance of a window goes to its maximum (the gradient of max pooling)."""

    kinds: ClassVar[frozenset] = frozenset({Kind.MAX_POOL})
    name: ClassVar[str] = "wta"

    def keeps_zeros(self, info) -> bool:
        return True


@dataclass(frozen=True)
class Structural(Rule):
    """Route relevance back through a structural op with its vector-Jacobian product (exact, conserving)."""

    routes_per_value: ClassVar[frozenset] = frozenset({Kind.STRUCTURAL})

    kinds: ClassVar[frozenset] = frozenset({Kind.STRUCTURAL, Kind.IDENTITY, Kind.UNKNOWN, Kind.MAX_POOL})
    name: ClassVar[str] = "structural"

    def keeps_zeros(self, info) -> bool:
        return info.kind in (Kind.MAX_POOL, Kind.IDENTITY) or (
            info.kind == Kind.STRUCTURAL and info.facts is not None and info.facts.copies)


@dataclass(frozen=True)
class Gradient(_AffineRule):
    """The plain gradient through this node (its vector-Jacobian product); any node kind."""

    follows_gradient: ClassVar[bool] = True
    routes_per_value: ClassVar[frozenset] = frozenset({Kind.STRUCTURAL})

    kinds: ClassVar[frozenset] = frozenset({"*"})
    name: ClassVar[str] = "gradient"
    function = relevance_function(affine.gradient)  # on affine nodes; elsewhere the node's own VJP

    def arguments(self) -> dict:
        return {}


@dataclass(frozen=True)
class MulUniform(Rule):
    """Elementwise product of activations: each operand that depends on the input gets ``R / n``."""

    kinds: ClassVar[frozenset] = frozenset({Kind.MUL})
    name: ClassVar[str] = "mul-uniform"

    def keeps_zeros(self, info) -> bool:
        return True


@dataclass(frozen=True)
class NormIdentity(Rule):
    """LayerNorm treated as linear with its standard deviation held constant (epsilon on centring and bias)."""

    exact_per_value: ClassVar[bool] = True

    eps: float = 1e-6
    zero_bias: bool = False
    kinds: ClassVar[frozenset] = frozenset({Kind.LAYER_NORM})
    name: ClassVar[str] = "norm-identity"
    proportional: ClassVar[bool] = True



@dataclass(frozen=True)
class Softmax(Rule):
    """AttnLRP's softmax rule: ``R_in = x · (R - s · ΣR)`` along the softmax axis; ``-inf`` inputs get 0."""

    routes_per_value: ClassVar[frozenset] = frozenset({Kind.SOFTMAX})

    kinds: ClassVar[frozenset] = frozenset({Kind.SOFTMAX})
    name: ClassVar[str] = "softmax"


@dataclass(frozen=True)
class MatmulUniform(Rule):
    """AttnLRP's bilinear rule for ``A @ B``: each operand that depends on the input gets the epsilon rule on
    ``R / n`` (``n`` such operands), ``R_A = A · ((R / stab(n·O)) @ Bᵀ)``, ``R_B = B · (Aᵀ @ (R / stab(n·O)))``."""

    exact_per_value: ClassVar[bool] = True
    splits_uniformly: ClassVar[bool] = True

    eps: float = 1e-6
    kinds: ClassVar[frozenset] = frozenset({Kind.MATMUL})
    name: ClassVar[str] = "matmul-uniform"



@dataclass(frozen=True)
class ConstantAttention(Rule):
    """CP-LRP: in ``A @ V`` with ``A`` a softmax output (attention weights), ``A`` is held constant and ``V``
    gets all the relevance by the epsilon rule; the softmax and ``QKᵀ`` get none. A product without a
    softmax operand falls back to :class:`MatmulUniform`."""

    exact_per_value: ClassVar[bool] = True
    holds_attention: ClassVar[bool] = True

    eps: float = 1e-6
    kinds: ClassVar[frozenset] = frozenset({Kind.MATMUL})
    name: ClassVar[str] = "constant-attention"



@dataclass(frozen=True, eq=False)
class PatternNet(Rule):
    """PatternNet (docs/rules.md): the gradient pass with each affine weight replaced by its fitted pattern."""

    patterns: object = None  # lrpfx.patterns.Patterns
    kinds: ClassVar[frozenset] = frozenset({Kind.LINEAR, Kind.CONV})
    name: ClassVar[str] = "patternnet"
    attribution: ClassVar[bool] = False  # PatternAttribution: the pattern times the weight

    def describe(self) -> str:
        return f"{type(self).__name__}(kind={getattr(self.patterns, 'kind', None)!r})"


@dataclass(frozen=True, eq=False)
class PatternAttribution(PatternNet):
    """PatternAttribution (docs/rules.md): the gradient pass with each affine weight replaced by ``W * A``."""

    name: ClassVar[str] = "patternattribution"
    attribution: ClassVar[bool] = True


def applies_to(rule: Rule, kind: str) -> bool:
    return "*" in rule.kinds or kind in rule.kinds


__all__ = [
    "Rule", "Epsilon", "Gamma", "AlphaBeta", "ZPlus", "ZBox", "Flat", "WSquare", "Pass", "Norm",
    "WinnerTakesAll", "Structural", "Gradient", "MulUniform", "NormIdentity", "Softmax", "MatmulUniform",
    "ConstantAttention", "PatternNet", "PatternAttribution", "RecurrentLRP",
    "applies_to", "RULE_CLASSES",
    "AFFINE_KINDS", "NORM_KINDS", "PASSABLE_KINDS",
]
