"""An independent, slow reference evaluator of LRP composites (docs/rules.md: affine nodes, nodes without parameters, composites).

Nothing here imports lrpfx. The model is traced with plain ``torch.fx.symbolic_trace`` only to get the order of
its operations; everything else is done here from the contract's formulas:

* the forward runs node by node with every in-place op replaced by its out-of-place form, keeping every value;
  readers of a tensor that an in-place op changed are rewired to read that op's result (the model's semantics);
* each node is classified by this module's own tables (conv/linear, BatchNorm, activations, pooling, sums,
  products, structural ops);
* a BatchNorm directly after a Conv/Linear whose output has no other consumer is folded here
  (``W' = W·s``, ``b' = (b - μ)·s + β``, ``s = γ/√(var + eps)``);
* relevance flows backwards node by node. Every affine rule is evaluated in the generic four-step form with
  ``torch.autograd``: the rule's modified forward ``z = Σ_t f(x_t, W_t) + b'`` is built from leaf copies of
  the modified inputs ``x_t``, ``s = R / stab(z)``, ``c_t = ∂(z·s)/∂x_t`` and ``R_in = Σ_t x_t · c_t``.
  Parameter-free linear ops (average pooling, sums, means, adds of activations or constants) use the Norm form
  ``x · Jᵀ(R / stab(f(x)))``, structural ops (views, cat, split, pad, resize) and winner-takes-all max pooling
  use ``Jᵀ R``, products of two activations split ``R`` uniformly, everything elementwise passes ``R`` unchanged.

This is deliberately naive (no sign-knowledge shortcuts, no closed-form transposed layers, full generalized
Gamma with both branches) so that it checks the program builder's optimisations rather than repeating them.
"""
from __future__ import annotations

import copy
import operator
from typing import Any, Dict, Tuple

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

# ---- rules (plain tuples) ----------------------------------------------------------------------------------
# ("epsilon", eps, zero_bias) ("zplus", eps) ("gamma", gamma, eps) ("flat", eps) ("zbox", low, high, eps)
# ("pass",) ("norm", eps) ("wta",) ("uniform",) ("structural",)


def composite(name: str) -> Dict[str, tuple]:
    """Per-kind rules of a preset (docs/rules.md, "Presets") or of the test composites used by the fuzz suite."""
    rest = {"add": ("norm", 1e-6), "avg_pool": ("norm", 1e-6), "reduce": ("norm", 1e-6), "batchnorm": ("pass",),
            "max_pool": ("wta",), "mul": ("uniform",)}
    if name == "epsilon-plus-flat":
        return {**rest, "first": ("flat", 1e-6), "conv": ("zplus", 1e-6), "linear": ("epsilon", 1e-6, False)}
    if name == "epsilon-plus":
        return {**rest, "first": None, "conv": ("zplus", 1e-6), "linear": ("epsilon", 1e-6, False)}
    if name == "epsilon-gamma-box":
        return {**rest, "first": ("zbox", -3.0, 3.0, 1e-6), "conv": ("gamma", 0.25, 1e-6),
                "linear": ("epsilon", 1e-6, False)}
    if name in ("lrp0", "lrp0-zero-bias"):
        zb = name == "lrp0-zero-bias"
        return {**rest, "first": None, "conv": ("epsilon", 0.0, zb), "linear": ("epsilon", 0.0, zb),
                "add": ("norm", 0.0), "avg_pool": ("norm", 0.0), "reduce": ("norm", 0.0),
                "batchnorm": ("pass",) if zb else ("epsilon", 0.0, False)}
    raise ValueError(name)


# ---- the stabilised division ---------------------------------------------------------------------------------
def stab_div(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    """``r / (z + eps·sign0(z))`` with ``sign0(0) = +1``; for ``eps == 0`` zero denominators give 0."""
    if eps == 0:
        safe = torch.where(z == 0, torch.ones_like(z), z)
        return torch.where(z == 0, torch.zeros_like(r), r / safe)
    sign0 = torch.where(z >= 0, torch.ones_like(z), -torch.ones_like(z))
    return r / (z + eps * sign0)


# ---- node classification (own tables) ------------------------------------------------------------------------
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.ELU, nn.Tanh, nn.Sigmoid, nn.Softplus,
                 nn.Hardswish, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.gelu, F.silu, F.elu, torch.sigmoid, F.sigmoid, torch.tanh,
                   F.tanh, F.dropout, F.softplus, F.hardswish, F.mish}
_PASS_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone"}
_MAX_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
_MAX_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d}
_AVG_POOL = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_AVG_POOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d}
_STRUCT_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ReflectionPad1d,
                   nn.ReflectionPad2d, nn.Upsample)
_STRUCT_FUNCTIONS = {torch.cat, torch.concat, torch.flatten, torch.reshape, torch.permute, torch.transpose,
                     torch.split, torch.chunk, torch.squeeze, torch.unsqueeze, operator.getitem, F.pad,
                     F.interpolate}
_STRUCT_METHODS = {"view", "reshape", "flatten", "permute", "transpose", "chunk", "split", "squeeze", "unsqueeze",
                   "expand", "__getitem__", "view_as"}
_REDUCE_FUNCTIONS = {torch.sum, torch.mean}
_REDUCE_METHODS = {"sum", "mean"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub}
_MUL = {operator.mul, operator.imul, torch.mul}
_INPLACE = {operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub}
_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


class Reference:
    """Relevance of ``x`` for ``model`` under a composite (``slow_reference.composite(name)``).

    ``Reference(model).relevance(x, comp, target)`` returns ``(input_relevance, output, per_node)`` where
    ``per_node`` maps fx node names to the relevance at that node's output (a list of tensors for tuple values).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.gm = fx.symbolic_trace(model)
        self._explicit_aliasing()
        self.nodes = list(self.gm.graph.nodes)

    def _explicit_aliasing(self):
        """An in-place op changes its first argument for every later reader (``identity = x; relu_(x);
        ... + identity``): later readers read the op's result. The forward below runs everything out of place, so
        rewire those readers to the in-place node (the model's own semantics, made explicit in the graph)."""
        order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        for n in list(self.gm.graph.nodes):
            if not (n.args and isinstance(n.args[0], fx.Node)):
                continue
            if n.op == "call_module":
                inplace = bool(getattr(self._module(n.target), "inplace", False))
            elif n.op == "call_function":
                inplace = n.target in _INPLACE or bool(n.kwargs.get("inplace"))
            elif n.op == "call_method":
                inplace = n.target.endswith("_") and not n.target.endswith("__")
            else:
                inplace = False
            if inplace:
                for user in list(n.args[0].users):
                    if user is not n and order[user] > order[n]:
                        user.replace_input_with(n.args[0], n)

    # ---- forward -----------------------------------------------------------------------------------------
    def _module(self, target: str) -> nn.Module:
        return self.gm.get_submodule(target)

    def _run(self, n: fx.Node, env: Dict[fx.Node, Any]):
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == "get_attr":
            obj = self.gm
            for part in n.target.split("."):
                obj = getattr(obj, part)
            return obj
        if n.op == "call_module":
            m = self._module(n.target)
            if getattr(m, "inplace", False):
                m = copy.copy(m)
                m.inplace = False
            return m(*args, **kwargs)
        if n.op == "call_function":
            fn = _INPLACE.get(n.target, n.target)
            if kwargs.get("inplace"):
                kwargs = {**kwargs, "inplace": False}
            return fn(*args, **kwargs)
        if n.op == "call_method":
            name = n.target
            if name.endswith("_") and not name.endswith("__"):
                name = name[:-1]
            return getattr(args[0], name)(*args[1:], **kwargs)
        raise AssertionError(n.op)

    def forward(self, x: torch.Tensor):
        env: Dict[fx.Node, Any] = {}
        active = set()
        out = None
        for n in self.nodes:
            if n.op == "placeholder":
                env[n] = x
                active.add(n)
                continue
            if n.op == "output":
                out = n.args[0]
                continue
            env[n] = self._run(n, env)
            v = env[n]
            floaty = (isinstance(v, torch.Tensor) and v.is_floating_point()) or (
                isinstance(v, (tuple, list)) and v and all(isinstance(t, torch.Tensor) for t in v))
            if floaty and any(a in active for a in n.all_input_nodes):
                active.add(n)
        return env, active, out

    # ---- classification --------------------------------------------------------------------------------
    def kind(self, n: fx.Node, active) -> str:
        acts = [a for a in n.all_input_nodes if a in active]
        if n.op == "call_module":
            m = self._module(n.target)
            if isinstance(m, (nn.Conv1d, nn.Conv2d)):
                return "conv"
            if isinstance(m, nn.Linear):
                return "linear"
            if isinstance(m, _BN):
                return "batchnorm"
            if isinstance(m, _PASS_MODULES):
                return "pass"
            if isinstance(m, _MAX_POOL):
                return "max_pool"
            if isinstance(m, _AVG_POOL):
                return "avg_pool"
            if isinstance(m, _STRUCT_MODULES):
                return "structural"
        elif n.op == "call_function":
            t = n.target
            if t in _PASS_FUNCTIONS:
                return "pass"
            if t in _MAX_POOL_FUNCTIONS:
                return "max_pool"
            if t in _AVG_POOL_FUNCTIONS:
                return "avg_pool"
            if t in _REDUCE_FUNCTIONS or (t is F.interpolate and n.kwargs.get("mode", "nearest") != "nearest"):
                return "reduce"  # interpolation other than nearest mixes values: the proportional rule
            if t in _STRUCT_FUNCTIONS:
                return "structural"
            if t in _ADD:
                return "add"
            if t in _MUL:
                return "mul" if len(acts) == 2 else "pass"
            if t is operator.truediv and n.args[0] in active and n.args[1] not in active:
                return "pass"
            if t in (operator.neg, torch.neg):
                return "pass"
        elif n.op == "call_method":
            name = n.target[:-1] if n.target.endswith("_") and not n.target.endswith("__") else n.target
            if name in _PASS_METHODS:
                return "pass"
            if name in _STRUCT_METHODS:
                return "structural"
            if name in _REDUCE_METHODS:
                return "reduce"
            if name == "add":
                return "add"
            if name == "mul":
                return "mul" if len(acts) == 2 else "pass"
        raise NotImplementedError(f"slow reference: no rule for node {n.name} ({n.op} {n.target})")

    # ---- relevance ---------------------------------------------------------------------------------------
    def relevance(self, x: torch.Tensor, comp: Dict[str, tuple], target=None):
        with torch.no_grad():
            env, active, out_node = self.forward(x)
        kinds = {n: self.kind(n, active) for n in self.nodes if n in active and n.op != "placeholder"}
        # folding: BatchNorm whose input is a conv/linear output with this BatchNorm as its only consumer
        folded_into: Dict[fx.Node, fx.Node] = {}
        for n, k in kinds.items():
            if k != "batchnorm":
                continue
            producer = n.args[0]
            if kinds.get(producer) in ("conv", "linear") and len(producer.users) == 1:
                if kinds[producer] == "linear" and env[producer].dim() != 2:
                    continue
                folded_into[producer] = n
        first = next((n for n in self.nodes if kinds.get(n) in ("conv", "linear")), None)

        output = env[out_node]
        if target is not None and torch.as_tensor(target).is_floating_point():
            r_out = torch.as_tensor(target)  # an initial relevance, used as is
        else:
            idx = output.argmax(-1) if target is None else torch.as_tensor(target)
            r_out = output * F.one_hot(idx, output.shape[-1]).to(output.dtype)

        rel: Dict[fx.Node, Any] = {}

        def add(node, value, index=None):
            if index is None:
                rel[node] = value if node not in rel else rel[node] + value
            else:
                pieces = rel.setdefault(node, {})
                pieces[index] = value if index not in pieces else pieces[index] + value

        add(out_node, r_out)
        per_node: Dict[str, Any] = {}
        for n in reversed(self.nodes):
            if n not in active or n not in rel:
                continue
            r = rel[n]
            if isinstance(r, dict):  # a tuple-valued node: fill missing pieces with zeros
                r = [r.get(i, torch.zeros_like(v)) for i, v in enumerate(env[n])]
            per_node[n.name] = r
            if n.op == "placeholder":
                continue
            k = kinds[n]
            if n in folded_into:
                raise AssertionError("relevance reached a folded affine node directly")
            acts = [a for a in n.all_input_nodes if a in active]
            if k in ("conv", "linear") or (k == "batchnorm" and n.args[0] in folded_into):
                self._affine(n, k, env, r, comp, first, add)
            elif k == "batchnorm":
                rule = comp["batchnorm"]
                x_node = n.args[0]
                if rule[0] == "pass":
                    add(x_node, r)
                else:
                    w, b = _bn_scale_shift(self._module(n.target))
                    view = (-1,) + (1,) * (env[x_node].dim() - 2)
                    terms = [(env[x_node], lambda t, w=w: t * w.view(view))]
                    bias = b.view(view)
                    add(x_node, _generic(terms, bias, r, rule[1]))
            elif k == "pass":
                assert len(acts) == 1, n
                add(acts[0], _sum_to(r, env[acts[0]].shape))
            elif k == "max_pool":
                rule = comp["max_pool"]
                assert rule == ("wta",)
                add(acts[0], self._vjp(n, env, active, r, norm_eps=None)[acts[0]])
            elif k in ("avg_pool", "reduce", "add"):
                rule = comp[k]
                assert rule[0] == "norm"
                for a, ra in self._vjp(n, env, active, r, norm_eps=rule[1]).items():
                    add(a, ra)
            elif k == "mul":
                share = r / 2
                for operand in n.args[:2]:
                    add(operand, _sum_to(share, env[operand].shape))
            elif k == "structural":
                if n.op == "call_function" and n.target is operator.getitem and isinstance(env[n.args[0]],
                                                                                           (tuple, list)):
                    add(n.args[0], r, index=n.args[1])
                    continue
                for a, ra in self._vjp(n, env, active, r, norm_eps=None).items():
                    add(a, ra)
            else:
                raise AssertionError(k)
        placeholder = next(n for n in self.nodes if n.op == "placeholder")
        r_in = rel.get(placeholder, torch.zeros_like(x))
        return r_in, output, per_node

    def _vjp(self, n, env, active, r, norm_eps):
        """``Jᵀ r`` (``norm_eps`` None) or ``x · Jᵀ(r / stab(f(x)))`` for every activation argument of ``n``."""
        leaves: Dict[fx.Node, torch.Tensor] = {}
        sub = dict(env)
        for a in n.all_input_nodes:
            if a in active:
                leaves[a] = env[a].detach().clone().requires_grad_(True)
                sub[a] = leaves[a]
        with torch.enable_grad():
            z = self._run(n, sub)
            if isinstance(z, (tuple, list)):
                outs, grads_out = list(z), list(r)
            else:
                outs, grads_out = [z], [r if norm_eps is None else stab_div(r, z.detach(), norm_eps)]
            grads = torch.autograd.grad(outs, list(leaves.values()), grads_out, allow_unused=True)
        result = {}
        for (a, leaf), g in zip(leaves.items(), grads):
            g = torch.zeros_like(leaf) if g is None else g
            result[a] = g if norm_eps is None else env[a] * g
        return result

    def _affine(self, n, k, env, r, comp, first, add):
        if k == "batchnorm":  # folded: the affine node is the BatchNorm's input
            bn, producer = self._module(n.target), n.args[0]
        else:
            bn, producer = None, n
        layer = self._module(producer.target)
        x_node = producer.args[0]
        x = env[x_node]
        w = layer.weight.detach()
        b = layer.bias.detach() if layer.bias is not None else None
        if bn is not None:
            s, shift = _bn_scale_shift(bn)
            w = w * s.view(-1, *([1] * (w.dim() - 1)))
            b = shift + (s * b if b is not None else 0 * s)  # (b - μ)·s + β = b·s + (β - μ·s)
        kind = "linear" if isinstance(layer, nn.Linear) else "conv"
        rule = comp["first"] if (producer is first and comp.get("first") is not None) else comp[kind]
        f = _layer_function(layer)
        view = (lambda t: t) if kind == "linear" else (lambda t: t.view(-1, *([1] * (x.dim() - 2))))
        add(x_node, affine_rule(rule, f, x, w, b, r, view))


def _bn_scale_shift(bn: nn.Module) -> Tuple[torch.Tensor, torch.Tensor]:
    """``y = x·s + shift`` of an eval-mode BatchNorm."""
    s = 1.0 / torch.sqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        s = s * bn.weight.detach()
    shift = -bn.running_mean * s
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return s, shift


def _layer_function(layer: nn.Module):
    if isinstance(layer, nn.Linear):
        return lambda x, w: F.linear(x, w)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    if layer.padding_mode != "zeros":  # reflect/circular/replicate: pad first, then a valid convolution
        pad = layer._reversed_padding_repeated_twice
        return lambda x, w: conv(F.pad(x, pad, mode=layer.padding_mode), w, None, layer.stride, 0, layer.dilation,
                                 layer.groups)
    return lambda x, w: conv(x, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _generic(terms, bias, r, eps, mask=None):
    """``z = Σ f_t(x_t) + bias``, ``s = r / stab(z)`` (0 outside ``mask``), ``Σ_t x_t · ∂(z·s)/∂x_t``."""
    leaves = [t.detach().clone().requires_grad_(True) for t, _ in terms]
    with torch.enable_grad():
        z = sum(f(leaf) for leaf, (_, f) in zip(leaves, terms))
        if bias is not None:
            z = z + bias
        s = stab_div(r, z.detach(), eps)
        if mask is not None:
            s = torch.where(mask, s, torch.zeros_like(s))
        grads = torch.autograd.grad(z, leaves, s, allow_unused=True)
    total = 0
    for (t, _), g in zip(terms, grads):
        if g is not None:
            total = total + t * g
    return total if isinstance(total, torch.Tensor) else torch.zeros_like(terms[0][0])


def affine_rule(rule, f, x, w, b, r, bias_view):
    """The affine rules of docs/rules.md in the four-step form, with ``f(x, W)`` the bias-free layer and
    ``bias_view(b)`` the bias broadcast against its output."""
    name = rule[0]
    pos, neg = (lambda t: t.clamp(min=0)), (lambda t: t.clamp(max=0))

    def term(inp, weight):
        return (inp, lambda t, weight=weight: f(t, weight))

    if name == "epsilon":
        _, eps, zero_bias = rule
        bias = None if (b is None or zero_bias) else b
        return _generic([term(x, w)], _view(bias, bias_view), r, eps)
    if name == "zplus":
        bias = None if b is None else pos(b)
        return _generic([term(pos(x), pos(w)), term(neg(x), neg(w))], _view(bias, bias_view), r, rule[1])
    if name == "flat":
        ones_x, ones_w = torch.ones_like(x), torch.ones_like(w)
        return _generic([term(ones_x, ones_w)], None, r, rule[1])
    if name == "zbox":
        _, low, high, eps = rule
        lo = torch.full_like(x, low)
        hi = torch.full_like(x, high)
        return _generic([term(x, w), term(lo, -pos(w)), term(hi, -neg(w))], None, r, eps)
    if name == "gamma":
        _, g, eps = rule
        z_plain = f(x, w) + (0 if b is None else _view(b, bias_view))
        up, down = w + g * pos(w), w + g * neg(w)
        b_up = None if b is None else _view(b + g * pos(b), bias_view)
        b_down = None if b is None else _view(b + g * neg(b), bias_view)
        r_up = _generic([term(pos(x), up), term(neg(x), down)], b_up, r, eps, mask=z_plain > 0)
        r_down = _generic([term(pos(x), down), term(neg(x), up)], b_down, r, eps, mask=z_plain < 0)
        return r_up + r_down
    raise NotImplementedError(rule)


def _view(b, bias_view):
    return None if b is None else bias_view(b)


def _sum_to(t: torch.Tensor, shape) -> torch.Tensor:
    if tuple(t.shape) == tuple(shape):
        return t
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and t.shape[i] != 1)
    return t.sum(dim=axes, keepdim=True)


def reference_relevance(model: nn.Module, x: torch.Tensor, preset: str, target=None):
    """``(input_relevance, output, per_node)`` of ``model`` at ``x`` under a preset name (see :func:`composite`)."""
    return Reference(model).relevance(x, composite(preset), target)
