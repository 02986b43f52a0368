"""Composites: which rule each node gets (docs/rules.md), and the rule-string parser.

A :class:`Composite` is immutable and hashable. Resolution for one node, most specific first:
``by_name`` (qualified-name glob) > ``predicates`` > ``first`` (first affine node in execution order) >
``by_type`` (module class, function, or kind string) > ``conv`` / ``linear`` > the default of the node's kind.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

from .errors import RuleError
from .graph.scans import SCAN_PARTS, scan_parameters
from .kinds import Kind
from .rules import (RULE_CLASSES, AlphaBeta, ConstantAttention, Epsilon, Flat, Gamma, Gradient, MatmulUniform,
                    MulUniform, Norm, NormIdentity, Pass, PatternAttribution, PatternNet, RecurrentLRP, Rule, Softmax,
                    Structural, WinnerTakesAll, ZBox, ZPlus)

_CONV_KINDS = {Kind.CONV, Kind.CONV_TRANSPOSE}

# kind defaults (docs/rules.md): the rule a node kind gets when nothing else matched
DEFAULTS: Dict[Kind, Rule] = {
    Kind.LINEAR: Epsilon(), Kind.CONV: Epsilon(), Kind.CONV_TRANSPOSE: Epsilon(),
    Kind.ACTIVATION: Pass(), Kind.IDENTITY: Pass(), Kind.SCALE: Pass(), Kind.BATCHNORM: Pass(),
    Kind.MAX_POOL: WinnerTakesAll(), Kind.AVG_POOL: Norm(), Kind.REDUCE: Norm(), Kind.ADD: Norm(),
    Kind.STRUCTURAL: Structural(), Kind.MUL: MulUniform(), Kind.LAYER_NORM: NormIdentity(),
    Kind.SOFTMAX: Softmax(), Kind.MATMUL: MatmulUniform(), Kind.RECURRENT: RecurrentLRP(),
}


def _pairs(mapping) -> Tuple[Tuple[Any, Rule], ...]:
    if mapping is None:
        return ()
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    pairs = tuple((k, parse_rule(v)) for k, v in items)
    return pairs


@dataclass(frozen=True)
class Composite:
    """A mapping from nodes to rules.

    ``conv`` and ``linear`` are the rules of convolution and linear nodes; ``first`` overrides them for the first
    affine node in execution order; ``by_type`` maps module classes (``nn.Conv2d``), functions (``F.conv2d``) or
    kind strings (``"avg_pool"``, ``"add"``) to rules; ``by_name`` maps qualified-name globs (``"features.0"``,
    ``"layer4.*.conv2"``) to rules; ``predicates`` is a sequence of ``(fn(node_info) -> bool, rule)``.
    ``start`` is the initial relevance: ``"logit"`` (target logit) or ``"one"`` (one-hot).
    ``times_input`` multiplies the input relevance by the input (``gradient*input``).
    ``constants`` are qualified-name globs of nodes whose values are held constant: no relevance flows into them
    or anything computed only from them (MambaLRP's selective-scan parameters, say), as with statistics.
    """

    conv: Optional[Rule] = None
    linear: Optional[Rule] = None
    first: Optional[Rule] = None
    by_type: Any = ()
    by_name: Any = ()
    predicates: Any = ()
    default: Optional[Rule] = None
    start: str = "logit"
    times_input: bool = False
    label: str = "custom"
    constants: Tuple[str, ...] = ()
    # a glob of ``constants`` that matches no node is an error; a preset for one family (MambaLRP) may apply to
    # models without such nodes (then an op it would have held, the scan's exp, is refused by name instead)
    constants_must_match: bool = True

    def __post_init__(self):
        for attr in ("conv", "linear", "first", "default"):
            value = getattr(self, attr)
            if value is not None:
                object.__setattr__(self, attr, parse_rule(value))
        object.__setattr__(self, "by_type", _pairs(self.by_type))
        object.__setattr__(self, "by_name", _pairs(self.by_name))
        object.__setattr__(self, "predicates", _pairs(self.predicates))
        object.__setattr__(self, "constants", (self.constants,) if isinstance(self.constants, str)
                           else tuple(self.constants))
        if self.start not in ("logit", "one"):
            raise RuleError(f"start must be 'logit' or 'one', got {self.start!r}")

    def rule_for(self, info, is_first: bool) -> Tuple[Rule, str]:
        """The rule for one classified node and the mapping that chose it (for the rule table)."""
        for pattern, rule in self.by_name:
            if fnmatch.fnmatchcase(info.name, pattern) or fnmatch.fnmatchcase(info.node.name, pattern):
                return rule, f"by_name[{pattern!r}]"
        for predicate, rule in self.predicates:
            if predicate(info):
                return rule, f"predicate {getattr(predicate, '__name__', 'fn')}"
        if is_first and self.first is not None:
            return self.first, "first"
        for key, rule in self.by_type:
            if _type_matches(key, info):
                return rule, f"by_type[{getattr(key, '__name__', key)}]"
        if info.kind in _CONV_KINDS and self.conv is not None:
            return self.conv, "conv"
        if info.kind == Kind.LINEAR and self.linear is not None:
            return self.linear, "linear"
        if self.default is not None and info.kind in self.default.kinds:
            return self.default, "default"
        if info.kind in DEFAULTS:
            return DEFAULTS[info.kind], f"{info.kind} default"
        return None, "none"


def _type_matches(key, info) -> bool:
    if isinstance(key, str):
        return key == info.kind
    if isinstance(key, type):
        return info.module is not None and isinstance(info.module, key)
    return info.node.op == "call_function" and info.node.target is key


# ---- presets ----------------------------------------------------------------------------------------------
def EpsilonPlus(epsilon: float = 1e-6, zero_bias: bool = False) -> Composite:
    return Composite(conv=ZPlus(zero_bias=zero_bias), linear=Epsilon(epsilon, zero_bias), label="epsilon-plus")


def EpsilonPlusFlat(epsilon: float = 1e-6, zero_bias: bool = False) -> Composite:
    return Composite(conv=ZPlus(zero_bias=zero_bias), linear=Epsilon(epsilon, zero_bias), first=Flat(),
                     label="epsilon-plus-flat")


def EpsilonGammaBox(low=-3.0, high=3.0, epsilon: float = 1e-6, gamma: float = 0.25,
                    zero_bias: bool = False) -> Composite:
    return Composite(conv=Gamma(gamma, zero_bias=zero_bias), linear=Epsilon(epsilon, zero_bias),
                     first=ZBox(low, high), label="epsilon-gamma-box")


def EpsilonAlpha2Beta1(epsilon: float = 1e-6, zero_bias: bool = False) -> Composite:
    """Zennit's EpsilonAlpha2Beta1: AlphaBeta(2, 1) on conv nodes, Epsilon on linear nodes."""
    return Composite(conv=AlphaBeta(2, 1, zero_bias=zero_bias), linear=Epsilon(epsilon, zero_bias),
                     label="epsilon-alpha2beta1")


def EpsilonAlpha2Beta1Flat(epsilon: float = 1e-6, zero_bias: bool = False) -> Composite:
    """Zennit's EpsilonAlpha2Beta1Flat: as EpsilonAlpha2Beta1, with Flat on the first affine node."""
    return Composite(conv=AlphaBeta(2, 1, zero_bias=zero_bias), linear=Epsilon(epsilon, zero_bias), first=Flat(),
                     label="epsilon-alpha2beta1-flat")


def AttnLRP(epsilon: float = 0.0, zero_bias: bool = False) -> Composite:
    """AttnLRP (Achtibat et al., ICML 2024): epsilon on linear/conv nodes, the softmax rule, uniform bilinear
    products and gates, LayerNorm/RMSNorm with the scale held constant, the identity on GELU/SiLU. The default
    ``epsilon=0`` is the reference implementation's (LXT 2.1, gradient × input of its modified backward)."""
    return Composite(**_transformer_rules(epsilon, zero_bias, MatmulUniform(epsilon)), label="attnlrp")


def CPLRP(epsilon: float = 1e-6, zero_bias: bool = False) -> Composite:
    """CP-LRP (Ali et al. 2022): as :func:`AttnLRP`, but attention weights are constants, so relevance flows
    through the values only (the softmax and ``QKᵀ`` get none)."""
    return Composite(**_transformer_rules(epsilon, zero_bias, ConstantAttention(epsilon)), label="cp-lrp")


def _transformer_rules(epsilon: float, zero_bias: bool, matmul: Rule) -> Dict[str, Any]:
    return dict(conv=Epsilon(epsilon, zero_bias), linear=Epsilon(epsilon, zero_bias),
                by_type=(("matmul", matmul), ("layer_norm", NormIdentity(epsilon, zero_bias)))
                + _proportional_steps(epsilon, zero_bias))


def MambaLRP(epsilon: float = 0.0, zero_bias: bool = False) -> Composite:
    """MambaLRP (Jafari et al., NeurIPS 2024) for selective state-space and linear-attention blocks: the scan's
    data-dependent parameters are held constant, so relevance flows through the state recurrence as through a
    linear map of the signal. Mamba's Δ, B, C come out of ``x_proj`` (held by name); Mamba2-style mixers (Bamba,
    Zamba2, Falcon-H1, Granite 4), Gated DeltaNet (Qwen3-Next, Qwen3.5) and RWKV compute them inside the mixer and
    :func:`lrpfx.graph.scans.scan_parameters` recognises them: step sizes Δ (and DeltaNet's β), decays and
    normalising weights (``exp`` of activations), keys and queries (B and C). SiLU and Softplus pass relevance
    on, RMSNorm keeps its scale fixed, gates such as ``y · silu(z)`` split half-half, linear and conv maps take
    epsilon (0 by default: with ``zero_bias=True`` the relevance is conserved, and it equals gradient × input
    of the modified backward). docs/hybrid.md derives the rule for each family."""
    base = _transformer_rules(epsilon, zero_bias, MatmulUniform(epsilon))
    return Composite(**base, constants=SCAN_CONSTANTS, constants_must_match=False, label="mamba-lrp")


# Mamba's x_proj (Δ, B, C) by name; everything else a mixer computes by what it does
SCAN_CONSTANTS = ("*.x_proj", scan_parameters)


def _proportional_steps(eps: float, zero_bias: bool = False) -> Tuple[Tuple[str, Rule], ...]:
    """Norm with the given stabiliser on every step that splits relevance in proportion to contributions (sums,
    average pools, means): a rule's or preset's epsilon must reach them, or LRP-0 would not be LRP-0. An unfolded
    BatchNorm is the affine map ``x·scale + shift``: Epsilon with the same stabiliser (its shift is a bias)."""
    return tuple((kind, Norm(eps, zero_bias)) for kind in (Kind.ADD, Kind.AVG_POOL, Kind.REDUCE)) + (
        (Kind.RECURRENT, RecurrentLRP(eps, zero_bias)),  # its sums and linear maps take the same epsilon
        (Kind.BATCHNORM, Epsilon(eps, zero_bias)))


def single(rule: Rule, label: Optional[str] = None) -> Composite:
    """One rule on every conv and linear node, the kind defaults elsewhere; its epsilon (if it has one) is also
    the stabiliser of sums and average pools."""
    eps = getattr(rule, "eps", None)
    by_type = _proportional_steps(float(eps), getattr(rule, "zero_bias", False)) if eps is not None else ()
    return Composite(conv=rule, linear=rule, by_type=by_type, label=label or rule.describe())


def gradient(times_input: bool = False) -> Composite:
    """The plain gradient of the target logit (``times_input``: gradient × input)."""
    return Composite(default=Gradient(), by_type=tuple((k, Gradient()) for k in DEFAULTS) + ((Kind.UNKNOWN, Gradient()),),
                     start="one", times_input=times_input,
                     label="gradient*input" if times_input else "gradient")


def patterns(patterns, attribution: bool = False) -> Composite:
    """PatternNet (or PatternAttribution) on Linear/Conv nodes, the gradient everywhere else (ReLU and max
    pooling gate as in the forward)."""
    rule = (PatternAttribution if attribution else PatternNet)(patterns)
    others = tuple((k, Gradient()) for k in DEFAULTS if k not in (Kind.LINEAR, Kind.CONV))
    return Composite(conv=rule, linear=rule, by_type=others + ((Kind.UNKNOWN, Gradient()),),
                     label="patternattribution" if attribution else "patternnet")


PATTERN_PRESETS = ("patternnet", "patternattribution")

# ``rule="auto"`` (the default): the preset is chosen from what the model's graph contains (:func:`choose_preset`)
AUTO = Composite(label="auto")


def choose_preset(kinds, names, scan_parts=()) -> Tuple[str, str]:
    """The preset for a graph of these node kinds and qualified names, with the parts of a scan
    :func:`lrpfx.graph.scans.scan_parameters` found in it, and why: Mamba's ``x_proj``, or a scan's step sizes,
    keys or normalised weights (Mamba2-style mixers, Gated DeltaNet, RWKV) make a state-space or hybrid model
    (MambaLRP), attention or normalisation layers a transformer (AttnLRP; a Flat first layer would land on one
    projection), and so do token embeddings with gated convolutions (LFM2's blocks) or with products of
    activations (linear attention without softmax, MiniMax's lightning attention), convolutions a CNN
    (epsilon-plus-flat: z+ in the convolutions, a flat first layer), anything else an MLP or a recurrent net
    (epsilon: a Flat first layer would give every input feature the same relevance)."""
    kinds = set(kinds)
    if any(fnmatch.fnmatchcase(name, "*.x_proj") or name == "x_proj" for name in names) and Kind.MATMUL in kinds:
        return "mamba-lrp", "a selective state-space model (x_proj found)"
    found = sorted(set(scan_parts) & SCAN_PARTS)
    if found:
        return "mamba-lrp", f"a state-space or linear-attention model ({found[0].split(' (')[0]} found)"
    if Kind.SOFTMAX in kinds or Kind.LAYER_NORM in kinds:
        found = "attention" if Kind.SOFTMAX in kinds else "normalisation layers"
        return "attnlrp", f"a transformer ({found} found)"
    if {Kind.EMBEDDING, Kind.MUL} <= kinds and kinds & _CONV_KINDS:  # LFM2's blocks: C ⊙ conv(B ⊙ x)
        return "attnlrp", "a gated convolutional language model (token embeddings, gates and convolutions found)"
    if {Kind.EMBEDDING, Kind.MATMUL} <= kinds:  # linear attention without softmax or a norm module (MiniMax)
        return "attnlrp", "a linear-attention language model (token embeddings and products of activations found)"
    if kinds & _CONV_KINDS:
        return "epsilon-plus-flat", "a CNN (convolutions found)"
    return "epsilon", "a network of linear layers (no convolution, attention or normalisation found)"


PRESETS: Dict[str, Callable[[], Composite]] = {
    "epsilon-plus": EpsilonPlus,
    "epsilon-plus-flat": EpsilonPlusFlat,
    "epsilon-gamma-box": EpsilonGammaBox,
    "epsilon-alpha2beta1": EpsilonAlpha2Beta1,
    "epsilon-alpha2beta1-flat": EpsilonAlpha2Beta1Flat,
    "attnlrp": AttnLRP,
    "cp-lrp": CPLRP,
    "mamba-lrp": MambaLRP,
    "gradient": gradient,
    "gradient*input": lambda: gradient(times_input=True),
}

# rule names usable in strings: name -> (constructor, number of parameters allowed)
# rule strings beyond the rule classes' own names (``Rule.name``, registered as each class is defined)
_ALIASES: Dict[str, Callable[..., Rule]] = {
    "zero": lambda: Epsilon(0.0), "alpha1beta0": lambda: AlphaBeta(1, 0), "alpha2beta1": lambda: AlphaBeta(2, 1),
    # TorchLRP's "gamma+epsilon": gamma and epsilon both 0.1 unless given
    "gamma+epsilon": lambda gamma=0.1, eps=0.1: Gamma(gamma, eps),
}
_NOT_FROM_STRINGS = (PatternNet,)  # need fitted patterns: built by the "patternnet" presets instead


def rule_names() -> Dict[str, Callable[..., Rule]]:
    """Every rule string: the names of rule classes (users' included) and the aliases."""
    classes = {name: cls for name, cls in RULE_CLASSES.items() if not issubclass(cls, _NOT_FROM_STRINGS)}
    return {**classes, **_ALIASES}


_CALL = re.compile(r"^\s*([a-z0-9+*\-]+)\s*(?:\((.*)\))?\s*$")


def _parse_number(text: str, whole: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise RuleError(f"rule string {whole!r}: {text.strip()!r} is not a number") from None


# rule names that make sense as ``rule=`` for a whole model (they apply to conv and linear nodes)
_MODEL_RULE_NAMES = ("epsilon", "zero", "gamma", "zplus", "alpha1beta0", "alpha2beta1", "alphabeta", "zbox", "flat",
                     "wsquare", "gamma+epsilon")


def known_rule_strings(for_model: bool = False) -> str:
    """The rule strings a user can pass: presets and model-wide rules for ``rule=``, every rule name for a
    composite's mappings."""
    names = set(PRESETS) | set(PATTERN_PRESETS) | set(_MODEL_RULE_NAMES) | {"auto"} if for_model else set(rule_names())
    return ", ".join(sorted(names))


def _did_you_mean(word: str, for_model: bool) -> str:
    names = known_rule_strings(for_model).split(", ")
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def parse_rule(rule: Union[str, Rule], for_model: bool = False) -> Rule:
    """A rule object from a rule object or a rule string such as ``"epsilon(0.1)"`` or ``"zbox(-3,3)"``."""
    if isinstance(rule, Rule):
        return rule
    if not isinstance(rule, str):
        raise RuleError(f"expected a rule string or a lrpfx.rules object, got {type(rule).__name__}")
    match = _CALL.match(rule.lower())
    names = rule_names()
    if not match or match.group(1) not in names:
        word = match.group(1) if match else rule.strip().lower()
        raise RuleError(f"unknown rule {rule!r}; {_did_you_mean(word, for_model)}known rules: "
                        f"{known_rule_strings(for_model)}")
    name, params = match.group(1), match.group(2)
    values = [] if not params or not params.strip() else [_parse_number(p, rule) for p in params.split(",")]
    try:
        return names[name](*values)
    except TypeError:
        raise RuleError(f"rule string {rule!r}: wrong number of parameters for {name!r}") from None


def as_composite(rule: Union[str, Rule, Composite, None], patterns_=None) -> Composite:
    """Anything the public API accepts as ``rule=`` turned into a Composite (``patterns_`` for the pattern keys);
    None and ``"auto"`` give :data:`AUTO`, resolved per graph by :func:`choose_preset`."""
    if isinstance(rule, Composite):
        return rule
    if rule is None or (isinstance(rule, str) and rule.strip().lower() == "auto"):
        return AUTO
    if isinstance(rule, str) and rule.strip().lower() in PATTERN_PRESETS:
        if patterns_ is None:
            raise RuleError(f"rule {rule!r} needs fitted patterns: patterns=lrpfx.fit_patterns(model, loader)")
        return patterns(patterns_, attribution=rule.strip().lower() == "patternattribution")
    if isinstance(rule, str) and rule.strip().lower() in PRESETS:
        return PRESETS[rule.strip().lower()]()
    parsed = parse_rule(rule, for_model=True)
    return single(parsed, label=rule if isinstance(rule, str) else None)


__all__ = ["Composite", "MambaLRP", "EpsilonPlus", "EpsilonPlusFlat", "EpsilonGammaBox", "EpsilonAlpha2Beta1",
           "EpsilonAlpha2Beta1Flat", "AttnLRP", "CPLRP", "single", "gradient", "PRESETS", "parse_rule", "as_composite", "DEFAULTS", "AUTO",
           "choose_preset"]
