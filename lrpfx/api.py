"""Public entry points: :func:`explain`, :class:`Explainer`, :func:`export`.

An Explainer turns (model, rule) into a function of the input: on the first call for an input signature it
traces, classifies, canonizes, assigns rules and builds the relevance program (:mod:`lrpfx.program.builder`), then
caches it — compiled with ``torch.compile`` when asked — and runs it without an autograd graph (with one when
built ``differentiable``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import locks, pipeline, rebind
from .composites import Composite, as_composite
from .errors import InputError, OutputError, TargetError
from .frontend import multimodal
from .frontend.export import input_shape_pattern
from .locks import eval_mode
from .pipeline import FRONTENDS
from .program.faster import FasterOf, compile_program
from .program.program import RelevanceProgram
from .rules import Rule
from .explanation import Explanation
from . import meta_keys

Inputs = Union[torch.Tensor, Sequence[torch.Tensor], Mapping[str, Any]]
# inputs whose relevance is the explanation's main ``relevance`` when the input is a dict, in this order
PRIMARY_INPUTS = ("input_ids", "inputs_embeds", "pixel_values", "input_values", "input_features", "x")


def _as_tuple(x) -> Tuple[torch.Tensor, ...]:
    if isinstance(x, torch.Tensor):
        return (x,)
    if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
        return tuple(x)
    raise InputError(f"expected a tensor, a tuple of tensors or a dict of named inputs, got {type(x).__name__}")


class ModelInputs(NamedTuple):
    """Inputs as the program takes them: tensors in order, their names (dict inputs) and fixed options."""

    tensors: Tuple[torch.Tensor, ...]
    names: Optional[Tuple[str, ...]] = None
    options: Tuple[Tuple[str, Any], ...] = ()


def split_inputs(x: Inputs) -> ModelInputs:
    """A tensor, a tuple of tensors, or a dict of named inputs (tensors, plus fixed options such as flags)."""
    if isinstance(x, Mapping):
        static = {k for k, v in x.items() if multimodal.is_static_value(k, v)}  # image grids: options by value
        for k in static:
            multimodal.check_static_value(k, x[k])
        tensors = tuple((k, v) for k, v in x.items() if isinstance(v, torch.Tensor) and k not in static)
        options = tuple((k, v) for k, v in x.items()
                        if v is not None and (k in static or not isinstance(v, torch.Tensor)))
        if not tensors:
            raise InputError(f"the input dict has no tensors (keys: {list(x)}): pass e.g. {{'input_ids': ids}}")
        return ModelInputs(tuple(v for _, v in tensors), tuple(k for k, _ in tensors), options)
    return ModelInputs(_as_tuple(x))


def _signature(inputs: ModelInputs, static: bool = False) -> tuple:
    """Cache key of the inputs. fx programs are traced shape-generically in the batch axis; named inputs go to
    the export front-end, whose programs carry the shapes they serve (checked by :func:`_serves`)."""
    def shape(t):
        if static:
            return tuple(t.shape)
        return t.dim() if inputs.names is not None else tuple(t.shape[1:])

    shapes = tuple((shape(t), t.dtype, t.device.type) for t in inputs.tensors)
    return shapes, inputs.names, repr(tuple((k, multimodal.option_key(v)) for k, v in inputs.options))


def _serves(pattern: tuple, inputs: ModelInputs) -> bool:
    """Whether inputs fit a program's shape pattern (``None``: any size on that axis)."""
    return len(pattern) == len(inputs.tensors) and all(
        len(p) == t.dim() and all(d is None or d == n for d, n in zip(p, t.shape))
        for p, t in zip(pattern, inputs.tensors))


def check_output(output: torch.Tensor, allow_nonfinite: bool) -> None:
    """A NaN or Inf in the explained output makes every relevance meaningless: say so instead of returning it."""
    if not allow_nonfinite and output.is_floating_point() and not bool(torch.isfinite(output).all()):
        rows = output.reshape(output.shape[0], -1) if output.dim() else output.reshape(1, 1)
        bad = (~torch.isfinite(rows)).any(1).nonzero().flatten().tolist()
        raise OutputError(f"the model's output contains NaN or Inf (samples {bad}): the relevance would be "
                          "meaningless. Check the inputs and the model in this dtype (some models overflow in "
                          "float16 or return NaN for padded rows); pass allow_nonfinite=True to get it anyway")


class Explainer:
    """A reusable explanation function for one model and one rule/composite.

    ``Explainer(model, rule="auto", compile=False)`` builds a relevance program per input signature (dtype,
    device, shape past the batch axis) on first use and caches it. ``rule="auto"`` (the default) chooses the
    preset by what the model's graph contains: AttnLRP for transformers, epsilon-plus-flat for CNNs, epsilon
    for MLPs (:func:`lrpfx.composites.choose_preset`; the rule table says which). The model is never modified;
    it is run in eval semantics and handed back with its ``training`` flags as they were.
    ``differentiable=True`` builds the program in the differentiable form and runs it with autograd on, so the
    relevance has gradients w.r.t. the input and the parameters (docs/functional.md); ``form`` names the form
    directly (``"per-value"``, the default, or ``"relevance"``: :func:`lrpfx.pipeline.build_program`).
    ``checkpoint=True`` (the decoder layers) or a glob of module paths (``"model.layers.*"``): the relevance pass
    runs each block's forward again before its steps, so only the values between blocks are kept (long contexts).
    """

    def __init__(self, model: nn.Module, rule: Union[str, Rule, Composite] = "auto", *,
                 compile: bool = False, mode: Optional[str] = None, leaf_modules: Iterable = (),
                 output: Optional[Callable] = None, start: Optional[str] = None, allow_nonfinite: bool = False,
                 patterns=None, frontend: str = "auto", dynamic: Optional[bool] = None,
                 differentiable: bool = False, form: Optional[str] = None, checkpoint=None):
        if not isinstance(model, nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if frontend not in FRONTENDS:
            raise InputError(f"frontend must be one of {FRONTENDS}, got {frontend!r}")
        self.model = model
        if patterns is not None:
            patterns.check(model)
        composite = as_composite(rule, patterns)
        if start is not None:
            composite = dataclasses.replace(composite, start=start)
        self.composite = composite
        self.compile, self.mode = compile, mode
        self.leaf_modules, self.output = tuple(leaf_modules), output
        self.allow_nonfinite = allow_nonfinite
        self.frontend = frontend
        self.dynamic = dynamic  # torch.export front-end: which input axes may vary (lrpfx.frontend.export.dynamic_axes)
        self._cache: Dict[tuple, "_Entry"] = {}
        self._state: Optional[rebind.ModelState] = None  # the model the cached programs were built for
        # the program's form (lrpfx.pipeline.build_program); differentiable: relevance with autograd on
        self.form = form or ("differentiable" if differentiable else "per-value")
        if self.form not in pipeline.FORMS or (differentiable and self.form != "differentiable"):
            raise InputError(f"form must be one of {pipeline.FORMS} (and 'differentiable' with differentiable=True), "
                             f"got {form!r}")
        self.differentiable = self.form == "differentiable"
        self.checkpoint = checkpoint  # blocks whose forward the relevance pass runs again (lrpfx.program.checkpoint)

    @property
    def compiled_choice(self) -> Dict[str, Optional[str]]:
        """With ``compile=True``: per built program, keyed by the inputs it serves (``"float32[*, 3, 32, 32]"``,
        ``*`` where any size is served; one entry per input, joined by ``", "``), ``"compiled"`` or ``"eager"``,
        whichever ran faster on the first calls, or None while still undecided (:mod:`lrpfx.program.faster`)."""
        return {_describe_inputs(key[0], entry.shapes): entry.run.choice for key, entry in self._cache.items()
                if isinstance(entry.run, FasterOf)}

    # ---- building -------------------------------------------------------------------------------------------
    def program(self, x: Inputs, intermediate: bool = False, target_is_relevance: bool = False) -> RelevanceProgram:
        """The relevance program for inputs like ``x`` (built and cached on first use). ``target_is_relevance``
        says the program will be given initial relevances (float targets) rather than class indices."""
        return self._entry(split_inputs(self._prepared(x)), intermediate, target_is_relevance).program

    def _entry(self, inputs: ModelInputs, intermediate: bool, target_is_relevance: bool, plan=None) -> "_Entry":
        # a float target is an arbitrary initial relevance: the relevance-support analysis must not assume
        # ``output * onehot``, so it gets its own program
        key = (_signature(inputs), intermediate, target_is_relevance) + (() if plan is None else (plan,))
        self._follow_model()
        entry, full_key = self._lookup(key, inputs)
        if entry is not None:  # a built program: no lock, so runs in other threads go on meanwhile
            return entry
        with locks.tracing():  # exclusive: building traces; another thread may have built it meanwhile
            entry, full_key = self._lookup(key, inputs)
            if entry is None:
                entry = self._build(inputs, intermediate, target_is_relevance, plan)
                self._settle_model()
                self._cache[full_key] = entry
            return entry

    def _settle_model(self) -> None:
        """After a build: a model that changed itself while traced (Hugging Face installs its output-recording
        hooks on the first call) is taken as it is now; programs built before that change go."""
        state = rebind.model_state(self.model)
        if not state.same(self._state):
            self._state, self._cache = state, {}

    def _follow_model(self) -> None:
        """Keep the cache to programs of the model as it is now: after a parameter or buffer was replaced, the
        programs are pointed at the new tensors (:mod:`lrpfx.rebind`); after any other change (a module swapped,
        a dtype, device or configuration changed, a hook added) they are built again. Changes of tensor values
        in place need nothing: programs read the model's tensors."""
        state = rebind.model_state(self.model)
        if state.same(self._state):
            return
        with locks.tracing():  # exclusive: no run uses a program while its references change
            old, self._state = self._state, state
            if old is None or not state.same_modules(old):
                self._cache = {}
                return
            # the program may hold the old tensors (its own references) or the new ones (through the model's modules)
            names, tensors = {**state.names_by_id(), **old.names_by_id()}, state.named_tensors()
            self._cache = {key: entry for key, entry in self._cache.items() if _rebound(entry, names, tensors)}

    def _lookup(self, key: tuple, inputs: ModelInputs) -> Tuple[Optional["_Entry"], tuple]:
        """The cached program for ``key`` that serves ``inputs`` (or None), and the key it is (to be) stored
        under. Dict reads and writes are atomic, so lookups need no lock."""
        entry = self._cache.get(key)
        if entry is not None and not _serves(entry.shapes, inputs):
            key = key + (_signature(inputs, static=True),)  # export fixed an axis: a program per shape
            entry = self._cache.get(key)
        return entry, key

    def _build(self, inputs: ModelInputs, intermediate: bool, target_is_relevance: bool, plan=None) -> "_Entry":
        with eval_mode(self.model):
            gm, frontend = pipeline.front_end(self.model, inputs.tensors, inputs.names, dict(inputs.options),
                                               self.frontend, self.leaf_modules, self.output, self.dynamic,
                                               self.composite)
        out_info = next(n for n in gm.graph.nodes if n.op == "output").args[0].meta[meta_keys.VALUE]
        if not out_info.is_float_tensor:
            raise TargetError(f"the model's output is not a float tensor ({out_info}); pass output= to select one")
        program = pipeline.build_program(gm, self.composite, intermediate=intermediate,
                                         start_is_relevance=target_is_relevance, plan=plan, form=self.form,
                                         checkpoint=self.checkpoint)
        run = program.graph_module
        if self.compile:  # compiled unless eager proves faster on the first calls (lrpfx.program.faster)
            run = FasterOf(run, compile_program(run, self.mode, inputs.tensors[0].device),
                           label=f"the program for inputs {_signature(inputs)}")
        if frontend == "export":
            pattern = input_shape_pattern(gm)
        else:  # fx: any batch size
            pattern = tuple((None, *t.shape[1:]) for t in inputs.tensors)
        return _Entry(program, run, out_info.shape, pattern)

    # ---- running --------------------------------------------------------------------------------------------
    def __call__(self, x: Inputs, target=None, intermediate: bool = False, targets=None, conditions=None,
                 condition_batch_size: Optional[int] = None, parameters: bool = False) -> Explanation:
        """Explain ``x`` (a tensor, a tuple of tensors, or a dict of named inputs such as
        ``{"input_ids": ids, "attention_mask": mask}``). ``targets=[3, 5, 7]`` (or a LongTensor ``[K]`` or
        ``[B, K]``) gives K explanations per sample from one forward pass: ``relevance`` then has shape
        ``[B, K, ...]`` (``relevance[:, k]`` is target k), and so has every intermediate relevance.
        ``conditions=[{"y": 3, "features.28": [50]}, ...]`` gives K conditional relevances, ``[B, K, ...]``, run
        ``condition_batch_size`` at a time (:func:`lrpfx.concepts.explain_conditions`). ``parameters=True``
        adds the relevance of every affine weight and bias, summed over the batch (:mod:`lrpfx.parameters`)."""
        if parameters:  # the parameter relevance is built on a plain call (lrpfx.parameters imports this module)
            from .parameters import check_parameter_call, explain_parameters
            check_parameter_call(targets, conditions)
            return explain_parameters(self, x, target=target, intermediate=intermediate)
        if conditions is not None:
            # concepts are built on the Explainer (lrpfx.concepts imports this module): the shortcut reaches up
            from .concepts.relevance import explain_conditions
            return explain_conditions(self, x, conditions, target=target, targets=targets,
                                      intermediate=intermediate, batch_size=condition_batch_size)
        return self._explain(x, target, targets, intermediate)

    def _explain(self, x: Inputs, target, targets, intermediate, plan=None) -> Explanation:
        """One run of the program for ``x``; ``plan`` (hashable, with ``builder_options(gm, infos)``) chooses
        what else the program records, as for conditions and unit relevance (:mod:`lrpfx.units`)."""
        inputs = split_inputs(self._prepared(x))
        self._check_inputs(inputs.tensors)
        # build (or fetch) the one program this call needs; its recorded output shape validates the target
        is_relevance = targets is None and isinstance(target, torch.Tensor) and target.is_floating_point()
        entry = self._entry(inputs, bool(intermediate) and plan is None, is_relevance, plan)
        first = inputs.tensors[0]
        batch = first.shape[0]
        if targets is not None:
            if target is not None:
                raise TargetError("pass either target= or targets=, not both")
            target = _check_targets(targets, entry.out_shape, batch, first.device)
        else:
            target = _check_target(target, entry.out_shape, batch, first.device)
        with locks.running(), eval_mode(self.model), torch.enable_grad() if self.differentiable else torch.no_grad():
            result = entry.run(*inputs.tensors, target)
        output, relevances = result[0], list(result[1])
        check_output(output, self.allow_nonfinite)
        inter = dict(result[2]) if intermediate and len(result) > 2 else {}
        if targets is not None:  # [K, B, ...] -> [B, K, ...]; an input no relevance reached is all zeros
            relevances = [None if r is None else _per_sample(r) for r in relevances]
            inter = {name: _per_sample(r) for name, r in inter.items()}
        if inputs.names is None:
            relevance = relevances[0] if len(relevances) == 1 else tuple(relevances)
            return Explanation(relevance, output, inter, token_ids=_token_ids(inputs.tensors[0], relevances[0]))
        named = dict(zip(inputs.names, relevances))
        main = _primary_input(named)
        return Explanation(named[main], output, inter, inputs=named,
                           token_ids=_token_ids(dict(zip(inputs.names, inputs.tensors))[main], named[main]))

    def _prepared(self, x: Inputs) -> Inputs:
        """Named inputs completed with what the model would compute from values in Python (3-D positions)."""
        return multimodal.with_positions(self.model, x) if isinstance(x, Mapping) else x

    def _check_inputs(self, inputs: Tuple[torch.Tensor, ...]) -> None:
        params = list(self.model.parameters())
        # the dtype to match is a float parameter's: a quantized weight may be stored as integers (bitsandbytes)
        param = next((p for p in params if p.is_floating_point()), params[0] if params else None)
        for i, t in enumerate(inputs):
            if t.dim() == 0 or t.shape[0] == 0:
                raise InputError(f"input {i} has an empty batch (shape {tuple(t.shape)}): pass at least one sample")
            if param is not None and param.is_meta:
                raise InputError("the model's parameters are on the meta device: load real weights first "
                                 "(model.to_empty(device=...) and load_state_dict)")
            if param is not None and param.is_floating_point() and t.is_floating_point() and t.dtype != param.dtype:
                raise InputError(f"input {i} has dtype {t.dtype} but the model's parameters are {param.dtype}: "
                                 f"convert one of them, e.g. x.to({param.dtype}) or model.to({t.dtype})")
            if param is not None and t.device != param.device:
                raise InputError(f"input {i} is on {t.device} but the model is on {param.device}: "
                                 f"move it with x.to('{param.device}')")
            if t.is_floating_point() and not self.allow_nonfinite and not bool(torch.isfinite(t).all()):
                raise InputError(f"input {i} contains NaN or Inf: clean it, or pass allow_nonfinite=True")


def _check_target(target, out_shape, batch: int, device) -> Optional[torch.Tensor]:
    num_classes = out_shape[-1] if out_shape else 0
    if target is None:
        if len(out_shape) != 2:
            raise TargetError(f"the output has shape {tuple(out_shape)}, not [batch, classes]: pass target= as a "
                              "tensor shaped like the output (the initial relevance)")
        return None
    if isinstance(target, bool):
        raise TargetError("target must be an int, a LongTensor[B] or a tensor shaped like the output, not a bool")
    if isinstance(target, int):
        target = torch.full((batch,), target, dtype=torch.long, device=device)
    if not isinstance(target, torch.Tensor):
        try:
            target = torch.as_tensor(target, device=device)
        except Exception:
            raise TargetError(f"target must be an int, a LongTensor[B] or a tensor, got {type(target).__name__}")
    target = target.to(device)
    if target.is_floating_point():
        expected = (batch, *out_shape[1:])
        if tuple(target.shape) != expected:
            raise TargetError(f"a float target is the initial relevance and must be shaped like the output "
                              f"{expected}, got {tuple(target.shape)}")
        return target
    if len(out_shape) != 2:
        raise TargetError(f"class-index targets need a [batch, classes] output; the output has shape "
                          f"{tuple(out_shape)}: pass the initial relevance as a tensor shaped like the output")
    if target.dim() == 0:
        target = target.expand(batch)
    if target.shape != (batch,):
        raise TargetError(f"target must hold one class index per sample, shape ({batch},), got "
                          f"{tuple(target.shape)}")
    if bool(((target < 0) | (target >= num_classes)).any()):
        raise TargetError(f"target class out of range: the model has {num_classes} outputs (0..{num_classes - 1}), "
                          f"got {target.tolist()}")
    return target.long()


class _Entry(NamedTuple):
    """A built program with what running it needs: the callable (compiled or not), the output shape recorded
    at build time (validates targets), and the input shapes it serves."""

    program: RelevanceProgram
    run: Callable
    out_shape: Tuple[int, ...]
    shapes: tuple  # per input, its shape with None where any size is served


def _describe_inputs(signature: tuple, shapes: tuple) -> str:
    """Inputs a program serves, readably: ``"float32[*, 3, 32, 32]"`` per input (``name: `` for named inputs)."""
    names = signature[1] or (None,) * len(shapes)
    parts = []
    for name, (_, dtype, _device), shape in zip(names, signature[0], shapes):
        dims = ", ".join("*" if d is None else str(d) for d in shape)
        parts.append(f"{name + ': ' if name else ''}{str(dtype).replace('torch.', '')}[{dims}]")
    return ", ".join(parts)


def _rebound(entry: _Entry, names: Dict[int, str], tensors: Dict[str, torch.Tensor]) -> bool:
    """Point an eager program at the model's current tensors; False when it must be built again instead (a
    compiled program, or one holding a tensor rebinding cannot follow)."""
    if entry.run is not entry.program.graph_module:
        return False
    found = rebind.slots(entry.program.graph_module, names)
    if found is None:
        return False
    rebind.bind(found, tensors)
    return True


def _primary_input(named: Dict[str, Any]) -> str:
    """The input whose relevance is the explanation's ``relevance``."""
    for name in PRIMARY_INPUTS:
        if named.get(name) is not None:
            return name
    return next((name for name, r in named.items() if r is not None), next(iter(named)))


def _token_ids(x: torch.Tensor, relevance) -> Optional[torch.Tensor]:
    """The ids of an integer input explained at its embedding (relevance has an extra hidden axis)."""
    if x.is_floating_point() or relevance is None:
        return None
    return x


def _per_sample(r: torch.Tensor) -> torch.Tensor:
    """A multi-target relevance ``[K, B, ...]`` as ``[B, K, ...]`` (item by item for a tuple-valued node)."""
    if isinstance(r, tuple):
        return tuple(_per_sample(t) for t in r)
    return r.movedim(0, 1)


def _check_targets(targets, out_shape, batch: int, device) -> torch.Tensor:
    """``targets`` ([K] shared classes or [B, K] per sample) as a LongTensor [B, K], validated."""
    if len(out_shape) != 2:
        raise TargetError(f"targets= needs a [batch, classes] output; the output has shape {tuple(out_shape)}")
    try:
        t = torch.as_tensor(targets, device=device)
    except Exception:
        raise TargetError(f"targets must be a list of class indices or a LongTensor, got {type(targets).__name__}")
    if t.is_floating_point() or t.dtype == torch.bool or t.numel() == 0:
        raise TargetError(f"targets must be non-empty integer class indices, got {targets!r}")
    if t.dim() == 1:
        t = t.unsqueeze(0).expand(batch, -1)
    if t.dim() != 2 or t.shape[0] != batch:
        raise TargetError(f"targets must have shape [K] or [batch={batch}, K], got {tuple(t.shape)}")
    num_classes = out_shape[-1]
    if bool(((t < 0) | (t >= num_classes)).any()):
        raise TargetError(f"target class out of range: the model has {num_classes} outputs "
                          f"(0..{num_classes - 1}), got {t.tolist()}")
    return t.long()


def explain(model: nn.Module, x: Inputs, rule: Union[str, Rule, Composite] = "auto", target=None,
            **options) -> Any:
    """Relevance of ``x`` for ``model``'s prediction (or ``target``), shaped like ``x``."""
    return Explainer(model, rule, **options)(x, target=target).relevance


def export(model: nn.Module, x: Inputs, rule: Union[str, Rule, Composite] = "auto",
           intermediate: bool = False, **options) -> RelevanceProgram:
    """The relevance program for ``model`` and inputs like ``x``: readable code, rule table, GraphModule."""
    explainer = Explainer(model, rule, **options)
    explainer._check_inputs(split_inputs(x).tensors)
    return explainer.program(x, intermediate=intermediate)
