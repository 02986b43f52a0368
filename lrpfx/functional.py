"""Relevance as a pure function of the parameters, buffers, input and target (docs/functional.md).

:func:`functional` builds the model's relevance program in the differentiable form (every step an op autograd
and :mod:`torch.func` can follow) and hands it back as ``f(params, buffers, x, target) -> R``: the program's
``GraphModule`` run by :func:`torch.func.functional_call` with the given tensors in place of the model's. The
program holds the model's parameters and buffers by reference (:mod:`lrpfx.rebind`), under names of its own
(``params.fc.weight``, a module call's ``fc.weight``); the function maps the model's names onto them.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Mapping, Optional

import torch
from torch import nn

from . import locks
from .api import Explainer, split_inputs
from .errors import InputError
from .locks import eval_mode
from .rebind import named_tensors, names_by_id


def program_names(program: nn.Module, model: nn.Module) -> Dict[str, List[str]]:
    """For each of ``model``'s parameter and buffer names, the names under which ``program`` holds that tensor."""
    names = names_by_id(model)
    found: Dict[str, List[str]] = defaultdict(list)
    held = list(program.named_parameters(remove_duplicate=False)) + list(program.named_buffers(remove_duplicate=False))
    for path, t in held:
        name = names.get(id(t))
        if name is not None:
            found[name].append(path)
    return dict(found)


class RelevanceFunction:
    """``f(params, buffers, x, target=None) -> R``: the relevance of ``x`` (shaped like ``x``) for the model with
    ``params`` and ``buffers`` (dicts by the model's qualified names, as ``dict(model.named_parameters())``;
    names left out keep the model's own tensors). ``x`` is a batch like the example, or one sample (one axis
    less, as inside :func:`torch.func.vmap` over samples); ``target`` as for :class:`~lrpfx.Explainer` (None:
    the argmax, class indices, or a float initial relevance). Gradients flow to ``x`` and to every tensor
    passed."""

    def __init__(self, model: nn.Module, explainer: Explainer, example: torch.Tensor):
        self.model, self.explainer = model, explainer
        self.program = explainer.program(example)
        self.graph_module = self.program.graph_module
        self.aliases = program_names(self.graph_module, model)
        self.known = set(named_tensors(model))
        self.batched_dim = example.dim()

    def __call__(self, params: Mapping[str, torch.Tensor], buffers: Optional[Mapping[str, torch.Tensor]], x,
                 target=None) -> torch.Tensor:
        tensors = {}
        for name, t in {**params, **(buffers or {})}.items():
            if name not in self.known:
                raise InputError(f"'{name}' is no parameter or buffer of the model; pass names of "
                                 "dict(model.named_parameters()) and dict(model.named_buffers())")
            tensors.update((alias, t) for alias in self.aliases.get(name, ()))  # unused by the program: no-op
        single = x.dim() == self.batched_dim - 1
        if single:  # one sample: a batch of one
            x = x.unsqueeze(0)
            target = _one_sample_target(target, x.device)
        elif x.dim() != self.batched_dim:
            raise InputError(f"x has {x.dim()} axes; the program was built for inputs of {self.batched_dim} axes "
                             f"(a batch) or {self.batched_dim - 1} (one sample)")
        elif isinstance(target, int) and not isinstance(target, bool):
            target = torch.full((x.shape[0],), target, dtype=torch.long, device=x.device)
        with locks.running(), eval_mode(self.model), torch.enable_grad():
            _, (relevance, *_) = torch.func.functional_call(self.graph_module, tensors, (x, target))
        return relevance[0] if single else relevance


def _one_sample_target(target, device):
    """One sample's target as a batch of one: a class index, a 0-d LongTensor, or an initial relevance."""
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool):
        return torch.tensor([target], device=device)
    return target.unsqueeze(0)


def functional(model: nn.Module, rule="epsilon-plus-flat", x_example=None, **options) -> Callable:
    """Relevance as a pure function ``f(params, buffers, x, target) -> R`` (:class:`RelevanceFunction`) that works
    with :func:`torch.func.grad`, :func:`torch.func.vmap`, :func:`torch.func.jacrev` and
    :func:`torch.func.functional_call`: the differentiable relevance program of ``model`` built on
    ``x_example`` (one float tensor with a batch axis), not a second implementation. ``options`` go to
    :class:`~lrpfx.Explainer`::

        f = lrpfx.functional(model, "epsilon", x)
        params = {k: v.detach() for k, v in model.named_parameters()}
        grads = torch.func.grad(lambda p: f(p, {}, x, 0).sum())(params)
    """
    if x_example is None:
        raise InputError("functional needs an example input (x_example=) to build the program on")
    tensors = split_inputs(x_example).tensors
    if len(tensors) != 1 or not tensors[0].is_floating_point():
        raise InputError("functional takes one float input tensor; for several or named inputs use "
                         "Explainer(model, rule, differentiable=True)")
    explainer = Explainer(model, rule, differentiable=True, **options)
    explainer._check_inputs(tensors)
    return RelevanceFunction(model, explainer, tensors[0])
