"""The stages in order, without an Explainer: front-end (a recorded graph of the model), graph (classify and
analyse), assign (a rule per node), canonize (fold BatchNorm, non-negativity, relevance support) and build (the
relevance program). Each stage is a function of the previous one's result, so each can be run and tested alone::

    gm = lrpfx.pipeline.graph_of(model, x)
    program = lrpfx.pipeline.build_program(gm, lrpfx.composites.EpsilonPlusFlat())
    output, (relevance,) = program(x, target=3)
"""
from __future__ import annotations

import logging
import warnings
from typing import Dict, Iterable, Optional, Sequence

import torch
import torch.fx as fx
from torch import nn

from . import graph
from .assign import choose_rules, rule_table
from .composites import AUTO, Composite, as_composite, choose_preset
from .graph.scans import scan_parameters
from .errors import InputError, LrpfxError, LrpfxWarning, TraceError, UnsupportedOpError
from .frontend.attention import decompose_attention
from .frontend.export import export_graph
from .frontend.common import record_values, values_from_export
from .frontend.fx import trace
from .frontend.normalise import normalise
from .graph import canonize
from .graph.nodes import source_line
from .kinds import Kind
from .locks import eval_mode
from .program.builder import FORMS, ProgramBuilder
from .program.checkpoint import blocks_of
from .program.program import RelevanceProgram
from . import meta_keys

FRONTENDS = ("auto", "fx", "export")
log = logging.getLogger("lrpfx")


def graph_of(model: nn.Module, tensors, *, names: Optional[Sequence[str]] = None, options: Optional[dict] = None,
             frontend: str = "auto", leaf_modules: Iterable = (), output=None, dynamic=None,
             composite: Optional[Composite] = None) -> fx.GraphModule:
    """Stage 1: the model's graph, recorded on the example inputs, from the front-end that can explain it
    (``frontend="auto"``: torch.fx, else torch.export for Hugging Face models, torch.nn attention, named inputs
    and graphs fx leaves unexplained under ``composite``). The model runs in eval mode and is handed back as it
    was."""
    tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
    with eval_mode(model):
        return front_end(model, tensors, names, options or {}, frontend, tuple(leaf_modules), output, dynamic,
                          composite or AUTO)[0]


def front_end(model, tensors, names, options, frontend, leaf_modules, output, dynamic, composite):
    """The recorded graph and the front-end that made it (``"fx"`` or ``"export"``); see :func:`graph_of`."""
    choice = frontend
    if choice == "auto":
        choice = "export" if names is not None or needs_export(model) else "fx"

    def exported():
        gm = export_graph(model, names, tensors, options, leaf_modules, output, dynamic=dynamic)
        if not values_from_export(gm):  # a rewrite left a node without export's record: run the graph once
            record_values(gm, tensors)
        return gm

    if choice == "export":
        return exported(), "export"
    if names is not None:
        raise InputError("named (dict) inputs need the torch.export front-end: use frontend='auto' or 'export'")
    try:
        gm = trace(model, len(tensors), leaf_modules, output)
        record_values(gm, tensors)
        changed = decompose_attention(gm)  # F.scaled_dot_product_attention, split using the recorded shapes
        if normalise(gm) or changed:  # lrpfx.frontend.normalise: baddbmm, spelled-out activations, named tuples
            record_values(gm, tensors)
    except TraceError as exc:
        if frontend != "auto":
            raise
        try:
            return exported(), "export"
        except LrpfxError as second:
            raise TraceError(f"{exc}\n\ntorch.export failed as well:\n{second}") from exc
    if frontend == "auto" and unexplained(gm, composite):
        try:  # an op fx keeps whole (a wrapped function, a module) may be plain ops to torch.export
            other = exported()
            if not unexplained(other, composite):
                return other, "export"
        except LrpfxError:
            pass
    return gm, "fx"


def needs_export(model: nn.Module) -> bool:
    """Models torch.fx cannot trace or explain op by op: Hugging Face models and torch.nn attention."""
    if type(model).__module__.startswith("transformers."):
        return True
    return any(isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
               for m in model.modules())


def unexplained(gm: fx.GraphModule, composite: Composite) -> bool:
    """Whether some node has no rule (an op the registry does not know and the composite does not name), or the
    output depends on the input through a node lrpfx does not track."""
    graph.hold_constant(gm, composite.constants, composite.constants_must_match)
    infos = graph.classify(gm)
    return graph.untracked_dependency(gm, infos) is not None or any(
        composite.rule_for(info, False)[0] is None for info in infos.values()
        if info.kind not in (Kind.INPUT, Kind.EMBEDDING))


def build_program(gm: fx.GraphModule, composite, *, intermediate=False, start_is_relevance: bool = False,
                  plan=None, form: str = "per-value", checkpoint=None) -> RelevanceProgram:
    """Stages 2-5 on a recorded graph (:func:`graph_of`): classify, assign, canonize, build. ``composite`` is a
    :class:`~lrpfx.composites.Composite`, a rule or a rule string; ``start_is_relevance``: the program will be
    given initial relevances rather than class indices; ``plan``: conditions of concept relevance
    (:mod:`lrpfx.concepts`); ``form``: ``"per-value"`` (relevance per value where that is exact, the fastest),
    ``"relevance"`` (relevance at every step) or ``"differentiable"`` (a program that runs with autograd on, so
    its relevance has gradients w.r.t. inputs and parameters: docs/functional.md); ``checkpoint``: True, a glob of
    module paths or a list of globs naming blocks whose forward the relevance pass runs again, so the forward
    keeps only the values between blocks (:mod:`lrpfx.program.checkpoint`)."""
    if form not in FORMS:
        raise InputError(f"form must be one of {FORMS}, got {form!r}")
    composite, infos, rules, reasons = assign(gm, composite)
    canonize.mark_nonnegative(infos)
    table = rule_table(infos, rules, reasons)
    output = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    # a float target is an arbitrary initial relevance: the support analysis must not assume ``output * onehot``
    canonize.mark_positive_only(infos, rules, output,
                                proportional_start=composite.start == "logit" and not start_is_relevance)
    options = {"intermediate": intermediate, **({} if plan is None else plan.builder_options(gm, infos))}
    if checkpoint:
        options["blocks"] = blocks_of(gm, checkpoint)
    builder = ProgramBuilder(gm, infos, rules, start=composite.start, times_input=composite.times_input, form=form,
                             **options)
    return RelevanceProgram(builder.build(), table, composite, differentiable=form == "differentiable")


def assign(gm: fx.GraphModule, composite):
    """Stages 2-3 on a recorded graph: classify, assign the composite's rules (the preset where it is ``"auto"``)
    and fold BatchNorms into the affine layers before them. Returns the composite used, the node facts, the
    rules and the reasons the rule table shows."""
    composite = as_composite(composite)
    chosen = None
    if composite is AUTO:
        composite, chosen = default_composite(gm)
    graph.hold_constant(gm, composite.constants, composite.constants_must_match)
    infos = graph.classify(gm)
    check_dependencies(gm, infos)
    rules, reasons = choose_rules(infos, composite)
    if chosen is not None:
        reasons = {n: f"{chosen}: {why}" for n, why in reasons.items()}
    canonize.fold_batchnorms(infos, rules)
    return composite, infos, rules, reasons


def default_composite(gm: fx.GraphModule):
    """The preset for a model explained without a rule (:func:`lrpfx.composites.choose_preset`), and the words
    the rule table shows for it; logged once per built program."""
    infos = graph.classify(gm)
    name, why = choose_preset((info.kind for info in infos.values()), (info.name for info in infos.values()),
                              scan_parameters(gm).values())
    log.info("no rule given: using %r, the default for %s; pass rule= to choose another", name, why)
    return as_composite(name), f"default for {why.split(' (')[0]}"


def check_dependencies(gm: fx.GraphModule, infos: Dict[fx.Node, graph.NodeInfo]) -> None:
    """Refuse a graph in which relevance would silently stop at a node lrpfx does not track, and say so when an
    input's relevance is zero because the output does not depend on it."""
    node = graph.untracked_dependency(gm, infos)
    if node is not None:
        value = node.meta[meta_keys.VALUE]
        container = not value.is_tensor and (value.tuple_len is None or value.nested)
        what = "a nested tuple or other container" if container else f"a value lrpfx does not track ({value})"
        raise UnsupportedOpError(
            f"the output depends on the input through node '{node.name}' ({graph.op_label(node)}){source_line(node)}, "
            f"which returns {what}; lrpfx cannot propagate relevance through it and would return a wrong zero. "
            "Ways out: make the op return one tensor or a flat tuple of tensors (unpack nested results in a "
            "wrapper module), or replace it by ops lrpfx knows (see the rule table of a model without it).")
    for n in graph.unreached_inputs(gm, infos):
        warnings.warn(f"the output does not depend on input '{n.name}': its relevance is zero by the model's "
                      "structure, not by a rule", LrpfxWarning, stacklevel=5)


