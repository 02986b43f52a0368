"""The rule protocol. A rule is a frozen (hashable) dataclass that says *what* one relevance step computes and with
which hyper-parameters; the computation is a pure function. A rule class declares

- ``kinds``: the node kinds (:class:`lrpfx.graph.Kind`) it may be assigned to (``"*"``: any),
- its properties, which the analyses read instead of asking for the class (``proportional``,
  ``folds_batchnorm``, :meth:`keeps_zeros`),
- ``function``: its pure relevance function, called by the program with the node's values and
  :meth:`arguments` as keywords. For affine kinds (linear, conv, conv_transpose, batchnorm) the signature is
  ``function(x, weight, bias, z, r, *, layer, **arguments) -> R_x``; for single-input kinds
  ``function(x, out, r, **arguments) -> R_x``.

Each subclass registers its ``name`` so rule strings (``"epsilon(0.1)"``) find it. Emitters that need more than
one function call (sums, attention, folding) are registered per (rule class, kind) in :mod:`lrpfx.program.emit`.
"""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Callable, ClassVar, Dict, Optional

from ..errors import RuleError

# rule name -> class, filled as rule classes are defined (rule strings, "did you mean")
RULE_CLASSES: Dict[str, type] = {}


def check_eps(eps: float, name: str = "eps") -> None:
    if not isinstance(eps, (int, float)) or math.isnan(eps) or eps < 0:
        raise RuleError(f"{name} must be a float >= 0, got {eps!r}")


class Rule:
    """Base class of all rules. Subclasses are frozen dataclasses; see the module docstring for the protocol."""

    kinds: ClassVar[frozenset] = frozenset()
    name: ClassVar[str] = "rule"
    # the input relevance is ``x * (something finite)``: zero wherever the input value is zero
    proportional: ClassVar[bool] = False
    # acts on an affine map, so a BatchNorm right after it is folded into its weights
    folds_batchnorm: ClassVar[bool] = False
    # the pure relevance function (a staticmethod-like class attribute; None: an emitter of its own does the work)
    function: ClassVar[Optional[Callable]] = None
    # What emitters may rely on, named after what it enables (lrpfx.program never tests a rule's class):
    # with eps == 0 the step is exact in the modified-gradient form (relevance per value: LRP-0 on affine maps, sums,
    # pools, norms, bilinear products). Not inherited: a subclass may change the step.
    exact_per_value: ClassVar[bool] = False
    # the step is LRP-epsilon's quotient x ⊙ Wᵀ(R ⊘ (z + ε)): a BatchNorm scale may go on the quotient instead of
    # into the weights, a grouped expert product takes it per expert
    epsilon_quotient: ClassVar[bool] = False
    # the step routes relevance by the op's own gradient (a custom Function's backward, a grouped product's Wᵀ)
    follows_gradient: ClassVar[bool] = False
    # attention weights are held constant: relevance flows through the values only (CP-LRP)
    holds_attention: ClassVar[bool] = False
    # a bilinear product split uniformly between its operands (AttnLRP): the split attention may run fused
    splits_uniformly: ClassVar[bool] = False
    # node kinds on which the step hands on relevance per value whatever its epsilon (routing steps)
    routes_per_value: ClassVar[frozenset] = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            RULE_CLASSES.setdefault(cls.name, cls)
        if "exact_per_value" not in cls.__dict__:
            cls.exact_per_value = False

    def extra_inputs(self) -> tuple:
        """``(name, value)`` pairs the rule's function takes after the relevance (ZBox's bounds): scalars, or
        tensors the program holds as constants."""
        return ()

    def __post_init__(self):
        """The checks every rule shares (a stabiliser ``eps`` is a float >= 0); rules with parameters of their
        own check them after calling this."""
        if hasattr(self, "eps"):
            check_eps(self.eps)

    def arguments(self) -> dict:
        """The keyword arguments of :attr:`function`: the rule's hyper-parameters (its dataclass fields)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def keeps_zeros(self, info) -> bool:
        """Whether relevance reaches an input element only through output elements that are zero whenever it is
        zero (copies, winner-takes-all, ``f(0) = 0`` activations under Pass) — for the support analysis."""
        return False

    def describe(self) -> str:
        params = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({params})"


def relevance_function(fn):
    """Store a plain function as a rule's :attr:`Rule.function` (a class attribute must not become a method)."""
    return staticmethod(fn)
