"""Captum-style ``LRP`` and ``LayerLRP`` backed by lrpfx's relevance programs.

Switching from Captum is an import change::

    from lrpfx.captum import LRP, LayerLRP          # instead of: from captum.attr import LRP, LayerLRP

    attribution = LRP(model).attribute(x, target=3)
    layer_relevance = LayerLRP(model, model.features[2]).attribute(x, target=3)

The arguments both share behave as in Captum: a tuple of inputs gives a tuple of attributions, ``target`` is an
int, a list or tensor of one index per sample, a tuple (or list of tuples) of indices into a >2-d output,
``additional_forward_args`` are passed to ``forward`` after the inputs and are not explained (they are constants
to the relevance program), and ``return_convergence_delta=True`` also returns ``output - sum(attribution)`` per
sample. Attributions are plain tensors shaped like the inputs (``captum.attr.visualization`` takes them).

The default rule is Captum's: LRP-epsilon with epsilon 1e-9 on every convolution and linear layer (also average
pooling and sums), relevance passed through activations; at max pooling the winner gets all of ``R`` (Captum's
epsilon there gives it ``R·z/(z+1e-9)``: the same up to 1e-9/z). ``rule=`` takes any lrpfx rule or composite
instead; Captum's per-module ``module.rule = EpsilonRule(eps)`` attributes are honoured.
Differences: ``target=None`` explains each sample's argmax class (Captum needs one output per sample there);
BatchNorm after a convolution is folded into it, so that convolution's own output has no relevance of its own
(ask for the BatchNorm). Captum is not needed to import this module.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import graph, rebind
from .api import Explainer, eval_mode
from .composites import Composite, as_composite
from .errors import InputError, RuleError, TargetError
from .program.builder import intermediate_keys
from .rules import Epsilon, Norm, Pass, WinnerTakesAll
from .frontend.common import record_values
from .frontend.fx import trace
from .graph.registry import REGISTRY
from .kinds import Kind

CAPTUM_EPSILON = 1e-9


def captum_default() -> Composite:
    """Captum's default LRP rules: epsilon 1e-9 on conv, linear, average pooling and sums."""
    eps = CAPTUM_EPSILON
    return Composite(conv=Epsilon(eps), linear=Epsilon(eps), by_type={"avg_pool": Norm(eps), "add": Norm(eps)},
                     label="captum-default")


class _Run(NamedTuple):
    relevances: Tuple[Optional[torch.Tensor], ...]
    intermediate: Dict[str, torch.Tensor]
    selected: torch.Tensor  # the explained output value per sample, [B]


class LRP:
    """``captum.attr.LRP`` with lrpfx underneath: ``LRP(model, rule=...).attribute(inputs, target=...)``.

    ``rule`` is any lrpfx ``rule=`` (default: Captum's rules, :func:`captum_default`); further keyword options go
    to :class:`lrpfx.Explainer` (``leaf_modules``, ``compile``, ...)."""

    def __init__(self, model: nn.Module, rule=None, **options):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.rule = as_composite(captum_default() if rule is None else rule)
        _with_module_rules(model, self.rule)  # refuses an untranslatable Captum rule attribute now
        self.options = options
        self._bound: Dict[tuple, nn.Module] = {}  # argument kinds -> the model with those arguments bound
        # model or bound model -> its Explainer and, per program, the tensor references to rebind
        self._explainers: Dict[nn.Module, Tuple[Explainer, Dict[int, Optional[list]]]] = {}

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def has_convergence_delta(self) -> bool:
        return True

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False,
                  verbose: bool = False):
        """Relevance of every input, shaped like it (a tuple for a tuple of inputs)."""
        is_tuple, tensors = _format_inputs(inputs)
        run = self._run(tensors, target, additional_forward_args, intermediate=False, verbose=verbose)
        result = _format_output(is_tuple, run.relevances)
        if return_convergence_delta:
            return result, self.compute_convergence_delta(result, run.selected)
        return result

    def compute_convergence_delta(self, attributions, output: torch.Tensor) -> torch.Tensor:
        """``output - sum(attributions)`` per sample (summed over every input of a tuple), as Captum."""
        parts = attributions if isinstance(attributions, tuple) else (attributions,)
        total = sum(a.reshape(a.shape[0], -1).sum(1) for a in parts if a is not None)
        return output.flatten() - total.flatten()

    # ---- running ----------------------------------------------------------------------------------------------
    def _run(self, tensors: Tuple[torch.Tensor, ...], target, extras, intermediate: bool, verbose: bool) -> _Run:
        extras = _format_extras(extras)
        x = tensors[0] if len(tensors) == 1 else tensors
        lrpfx_target, initial = _as_target(target, tensors[0].shape[0], tensors[0].device)
        model = self.model if not extras else self._with_arguments(len(tensors), extras)
        if initial is not None:  # tuple targets index a >2-d output: start from output * one-hot, as Captum
            with torch.no_grad(), eval_mode(model):
                output = model(*tensors)
            lrpfx_target = initial(output)
        explainer = self._explainer(model, x, intermediate, initial is not None)
        if verbose:
            print(explainer.program(x, intermediate=intermediate, target_is_relevance=initial is not None).rule_table())
        res = explainer(x, target=lrpfx_target, intermediate=intermediate)
        relevances = res.relevance if isinstance(res.relevance, tuple) else (res.relevance,)
        return _Run(relevances, res.intermediate, _selected(res.output, lrpfx_target))

    def _with_arguments(self, n_inputs: int, extras: tuple) -> nn.Module:
        """The model with ``extras`` bound as its trailing forward arguments; one wrapper per kind of arguments
        (their dtypes, shapes past the batch axis, fixed values), its buffers set to this call's tensors."""
        key = (n_inputs, _extras_key(extras))
        if key not in self._bound:
            self._bound[key] = _bind_arguments(self.model, n_inputs, extras)
        bound = self._bound[key]
        _set_arguments(bound, extras)
        return bound

    def _explainer(self, model: nn.Module, x, intermediate: bool, is_relevance: bool) -> Explainer:
        """The Explainer of ``model`` with its program pointed at the current argument tensors."""
        composite = _with_module_rules(self.model, self.rule)  # the rule attributes the model carries now
        if model not in self._explainers or self._explainers[model][0].composite != composite:
            self._explainers[model] = (Explainer(model, composite, **self.options), {})
        explainer, slots = self._explainers[model]
        if model is self.model:
            return explainer  # the program shares the model's parameters: nothing to rebind
        program = explainer.program(x, intermediate=intermediate, target_is_relevance=is_relevance).graph_module
        if id(program) not in slots:
            slots[id(program)] = rebind.slots(program, model)
        found = slots[id(program)]
        if found is None:  # the program holds a tensor it cannot be rebound from: one program for this call
            return Explainer(model, composite, **self.options)
        rebind.bind(found, rebind.named_tensors(model))
        return explainer


class LayerLRP(LRP):
    """``captum.attr.LayerLRP``: relevance at a layer's output (or input, ``attribute_to_layer_input=True``).

    ``layer`` is a module of ``model``, its qualified name (``"features.3"``), or a list of them (the result is
    then a list)."""

    def __init__(self, model: nn.Module, layer, rule=None, **options):
        super().__init__(model, rule, **options)
        self.layer = layer
        self._names = [_layer_name(model, item) for item in (layer if isinstance(layer, list) else [layer])]
        self._input_keys: Dict[tuple, Dict[str, Union[str, int]]] = {}

    def attribute(self, inputs, target=None, additional_forward_args=None, return_convergence_delta: bool = False,
                  attribute_to_layer_input: bool = False, verbose: bool = False):
        _, tensors = _format_inputs(inputs)
        run = self._run(tensors, target, additional_forward_args, intermediate=True, verbose=verbose)
        if attribute_to_layer_input:
            extras = _format_extras(additional_forward_args)
            keys = self._layer_input_keys(tensors, extras)
            results = [run.relevances[keys[name]] if isinstance(keys[name], int) else run.intermediate[keys[name]]
                       for name in self._names]
        else:
            results = [self._output_relevance(run.intermediate, name) for name in self._names]
        result = results if isinstance(self.layer, list) else results[0]
        if return_convergence_delta:
            deltas = [self.compute_convergence_delta(r, run.selected) for r in results]
            return result, deltas if isinstance(self.layer, list) else deltas[0]
        return result

    def _output_relevance(self, intermediate: Dict[str, torch.Tensor], name: str) -> torch.Tensor:
        if name in intermediate:
            return intermediate[name]
        raise InputError(
            f"layer '{name}' has no relevance of its own in the program: it is folded into the BatchNorm after it "
            f"(ask for that BatchNorm), called more than once, or not on a path to the output. Layers with "
            f"relevance: {list(intermediate)}")

    def _layer_input_keys(self, tensors, extras) -> Dict[str, Union[str, int]]:
        """For each layer, the intermediate key of the node feeding it, or the position of the model input that
        feeds it. The relevance at a layer's input is the total at that tensor, as Captum's tensor hook sees it."""
        key = (_extras_key(extras), tuple((t.shape[1:], t.dtype) for t in tensors))
        if key not in self._input_keys:
            self._input_keys[key] = _input_keys(self.model, tensors, extras, self._names,
                                                self.options.get("leaf_modules", ()), self.options.get("output"))
        return self._input_keys[key]


# ---- inputs, targets, outputs -------------------------------------------------------------------------------------
def _format_inputs(inputs) -> Tuple[bool, Tuple[torch.Tensor, ...]]:
    if isinstance(inputs, torch.Tensor):
        return False, (inputs,)
    if isinstance(inputs, tuple) and inputs and all(isinstance(t, torch.Tensor) for t in inputs):
        return True, inputs
    raise InputError(f"inputs must be a tensor or a tuple of tensors (as in Captum), got {type(inputs).__name__}")


def _format_output(is_tuple: bool, relevances: Tuple[Optional[torch.Tensor], ...]):
    return tuple(relevances) if is_tuple else relevances[0]


def _format_extras(extras) -> tuple:
    if extras is None:
        return ()
    return extras if isinstance(extras, tuple) else (extras,)


def _as_target(target, batch: int, device):
    """Captum's target as lrpfx's: (class indices or None, None), or (None, a function of the output giving
    the initial relevance) for tuple targets into a >2-d output."""
    if target is None:
        return None, None
    if isinstance(target, bool):
        raise TargetError("target must be an int, a list or tensor of class indices, or a tuple, not a bool")
    if isinstance(target, int):
        return target, None
    if isinstance(target, torch.Tensor):
        if target.is_floating_point() or target.dtype == torch.bool:
            raise TargetError(f"target must hold integer indices, got a {target.dtype} tensor")
        if target.numel() == 1:
            return int(target.item()), None
        if target.dim() != 1 or target.shape[0] != batch:
            raise TargetError(f"a target tensor must hold one index per example, shape ({batch},), "
                              f"got {tuple(target.shape)}")
        return target.to(device).long(), None
    if isinstance(target, tuple):
        return None, _initial_from_indices([target] * batch, batch)
    if isinstance(target, list):
        if len(target) != batch:
            raise TargetError(f"a target list must hold one entry per example ({batch}), got {len(target)}")
        if all(isinstance(t, int) and not isinstance(t, bool) for t in target):
            return torch.tensor(target, dtype=torch.long, device=device), None
        if all(isinstance(t, tuple) for t in target):
            return None, _initial_from_indices(target, batch)
    raise TargetError(f"target must be an int, a list or 1-d tensor of ints (one per example), a tuple of indices "
                      f"or a list of tuples, got {target!r}")


def _initial_from_indices(indices: Sequence[tuple], batch: int):
    def initial(output: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros_like(output)
        for b, index in enumerate(indices):
            if len(index) != output.dim() - 1:
                raise TargetError(f"a tuple target needs one index per output axis after the batch "
                                  f"({output.dim() - 1} for output shape {tuple(output.shape)}), got {index}")
            try:
                mask[(b, *index)] = 1
            except IndexError:
                raise TargetError(f"target {index} is out of range for output shape {tuple(output.shape)}") from None
        return output * mask
    return initial


def _selected(output: torch.Tensor, target) -> torch.Tensor:
    """The output value each sample's relevance starts from."""
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        return target.reshape(target.shape[0], -1).sum(1)
    flat = output.reshape(output.shape[0], -1)
    if target is None:
        index = flat.argmax(1)
    elif isinstance(target, int):
        index = torch.full((flat.shape[0],), target, dtype=torch.long, device=flat.device)
    else:
        index = target
    return flat.gather(1, index.reshape(-1, 1)).squeeze(1)


# ---- per-module Captum rules ----------------------------------------------------------------------------------
def _with_module_rules(model: nn.Module, composite: Composite) -> Composite:
    """Captum's ``module.rule = EpsilonRule(eps)`` attributes as by_name entries (most specific, so they win):
    epsilon on a conv or linear layer, the Norm rule with that epsilon on average pooling, and winner-takes-all on
    max pooling (Captum's epsilon there gives the winner ``R·z/(z+eps)``: the same up to eps/z)."""
    extra = []
    for name, module in model.named_modules():
        rule = getattr(module, "rule", None)
        if rule is None or not type(rule).__module__.startswith("captum"):
            continue
        kind = type(rule).__name__
        if kind == "IdentityRule":  # relevance handed on unchanged: lrpfx's Pass
            extra.append((name, Pass()))
            continue
        if kind != "EpsilonRule":
            raise RuleError(f"module '{name}' carries Captum's {kind}, which lrpfx.captum does not translate (only "
                            "EpsilonRule and IdentityRule are the same rule in both): remove the attribute and pass "
                            "rule=lrpfx.Composite(by_name={{'{}': {}}}){}".format(name, *_equivalent(rule)))
        eps = float(rule.STABILITY_FACTOR)
        if isinstance(module, _MAX_POOLS):
            extra.append((name, WinnerTakesAll()))
        elif isinstance(module, _AVG_POOLS):
            extra.append((name, Norm(eps)))
        elif not isinstance(module, nn.modules.batchnorm._BatchNorm):  # BatchNorm is folded into its conv
            extra.append((name, Epsilon(eps)))
    if not extra:
        return composite
    return Composite(**{**composite.__dict__, "by_name": tuple(extra) + tuple(composite.by_name)})


def _equivalent(rule) -> Tuple[str, str]:
    """The lrpfx rule closest to a Captum rule object, as code, and where the two differ."""
    kind = type(rule).__name__
    if kind == "GammaRule":
        return (f"lrpfx.rules.Gamma({float(rule.gamma)!r})", "; it equals Captum's GammaRule on non-negative inputs, "
                "positive outputs and zero biases (Captum keeps the bias as it is and is not sign-aware)")
    if kind == "Alpha1_Beta0_Rule":
        return ("lrpfx.rules.ZPlus()", ", which is AlphaBeta(1, 0); it equals Captum's Alpha1_Beta0_Rule on "
                "non-negative inputs and zero biases")
    return "lrpfx.rules.Epsilon(1e-9)", " (or any lrpfx rule)"


_MAX_POOLS = REGISTRY.modules_of(Kind.MAX_POOL)  # nn.MaxPool2d, nn.AdaptiveMaxPool1d, ...
_AVG_POOLS = REGISTRY.modules_of(Kind.AVG_POOL)


# ---- additional forward arguments ---------------------------------------------------------------------------------
_ARG = "_lrpfx_arg{}"


def _extras_key(extras: tuple) -> tuple:
    return tuple(("tensor", t.dtype, t.device.type, tuple(t.shape[1:]) if t.dim() else ())
                 if isinstance(t, torch.Tensor) else ("value", repr(t)) for t in extras)


def _bind_arguments(model: nn.Module, n_inputs: int, extras: tuple) -> nn.Module:
    """A view of ``model`` whose ``forward`` takes only the explained inputs and appends ``extras``: tensors
    held as buffers (constants the program reads), other values fixed. It shares every submodule and parameter
    with ``model`` (same qualified names), and ``model`` itself is not touched."""
    base = type(model)
    plan = tuple((True, _ARG.format(i)) if isinstance(a, torch.Tensor) else (False, a) for i, a in enumerate(extras))

    def call_with_arguments(self, *inputs):
        return base.forward(self, *inputs, *[getattr(self, v) if is_tensor else v for is_tensor, v in plan])

    # fx reads the number of inputs off forward's signature, so forward gets one named parameter per input
    names = ", ".join(f"input_{i}" for i in range(n_inputs))
    namespace: Dict[str, Any] = {}
    exec(f"def forward(self, {names}):\n    return self._lrpfx_call({names})\n", namespace)  # noqa: S102
    cls = type(base.__name__, (base,), {"forward": namespace["forward"], "_lrpfx_call": call_with_arguments,
                                        "__module__": base.__module__})
    bound = cls.__new__(cls)
    bound.__dict__.update(model.__dict__)
    bound._buffers = dict(model._buffers)  # its own buffer table: the arguments are registered here only
    _set_arguments(bound, extras)
    return bound


def _set_arguments(bound: nn.Module, extras: tuple) -> None:
    for i, a in enumerate(extras):
        if isinstance(a, torch.Tensor):
            bound._buffers[_ARG.format(i)] = a.detach()


# ---- layers -------------------------------------------------------------------------------------------------------
def _layer_name(model: nn.Module, layer) -> str:
    modules = dict(model.named_modules())
    if isinstance(layer, str):
        if layer not in modules or layer == "":
            raise InputError(f"model has no submodule '{layer}'; its modules: {[n for n in modules if n][:20]}")
        return layer
    if isinstance(layer, nn.Module):
        for name, module in modules.items():
            if module is layer and name:
                return name
        raise InputError(f"layer {type(layer).__name__} is not a submodule of the model: pass one of "
                         f"model's modules or its qualified name")
    raise InputError(f"layer must be a module of the model or its qualified name, got {type(layer).__name__}")


def _input_keys(model, tensors, extras, names, leaf_modules, output) -> Dict[str, Union[str, int]]:
    """Trace the model as the Explainer does and find, for each named layer, the key of its input's producer."""
    traced_model = _bind_arguments(model, len(tensors), extras) if extras else model
    gm = trace(traced_model, len(tensors), leaf_modules, output)
    record_values(gm, tensors)
    infos = graph.classify(gm)
    keys = intermediate_keys(infos)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    found: Dict[str, Union[str, int]] = {}
    for node, info in infos.items():
        if info.name in names and node.op == "call_module":
            if info.name in found:
                raise InputError(f"layer '{info.name}' is called more than once: its input relevance is not one "
                                 f"tensor (Captum refuses such layers too)")
            source = info.x
            if source in placeholders:
                found[info.name] = placeholders.index(source)
            elif source in keys:
                found[info.name] = keys[source]
            else:
                raise InputError(f"the input of layer '{info.name}' has no relevance of its own (it is folded "
                                 f"into another step); ask for the output of the layer before it")
    missing = [n for n in names if n not in found]
    if missing:
        raise InputError(f"layer(s) {missing} are not called on the path to the output, or not as whole modules")
    return found
