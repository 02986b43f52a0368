"""The input-dependent parameters of selective scans and linear-attention recurrences, found in the graph.

MambaLRP holds a scan's parameters constant, so that the layer is linear in its signal (docs/hybrid.md). Mamba's
parameters come out of one module (``x_proj``) and are held by name; Mamba2-style mixers (state-space duality:
Mamba2, Bamba, Zamba2, Falcon-H1, Granite 4) and Gated DeltaNet (Qwen3-Next, Qwen3.5) compute them inside the
mixer, so they are recognised by what they do:

- a **step size** is a ``softplus`` whose value reaches an ``exp`` (Δ, from which the decays ``exp(A·Δ)`` come);
- a **decay or normalised weight** is an ``exp`` of an activation not computed from held values alone (RWKV's
  weights ``exp(k + u - max)``);
- **keys and queries** (B and C of a state-space mixer) are chunks of one split of a convolution's output that
  are contracted with each other (``C·Bᵀ``, ``q·kᵀ``, ``k·kᵀ``); the chunk scaled by a step size is the signal
  (``x·Δ``) and stays explained;
- a **write strength** is a sigmoid that scales the keys (Gated DeltaNet's β).

Everything computed only from held values is constant as well (the cumulative sums, a triangular solve's
coefficients), so the recurrence is linear in the signal.
"""
from __future__ import annotations

from typing import Dict, FrozenSet, Iterable, Set

import torch.fx as fx

from .nodes import op_name
from .. import meta_keys

STEP = "scan step size (softplus feeding an exp)"
DECAY = "scan decay (exp of an activation)"
WEIGHT = "normalised weight (exp of an activation less a running maximum)"
KEY = "scan key or query (a chunk contracted with another)"
STRENGTH = "scan write strength (a sigmoid scaling a key)"
# what makes a model a state-space or linear-attention model for ``rule="auto"`` (a bare exp does not)
SCAN_PARTS = frozenset({STEP, KEY, WEIGHT})

_SPLITS = {"split_with_sizes", "split", "chunk"}
# ops that hand a chunk on unchanged in value (views, casts, padding, index selections)
_CARRY = {"view", "reshape", "_unsafe_view", "permute", "transpose", "expand", "clone", "contiguous", "to",
          "_to_copy", "repeat_interleave", "pad", "constant_pad_nd", "slice", "select", "unsqueeze", "squeeze",
          "alias", "t", "flatten", "unflatten", "tensor_split", "getitem", "float", "type_as"}
# besides: products and sums with fixed values, and the pieces of an L2 normalisation's scale
_THROUGH = {"mul", "div", "rsqrt", "sum", "pow", "add", "mean", "clamp", "clamp_min"}
_CONTRACTIONS = {"bmm", "mm", "matmul", "einsum"}
_CONVOLUTIONS = {"conv1d", "convolution", "conv2d"}
_REACH = 40  # ops between a step size and its exp (casts, padding, chunking, cumulative sums)
_LOOK_BACK = 24  # ops between a split chunk and the contraction that reads it


def scan_parameters(gm: fx.GraphModule) -> Dict[fx.Node, str]:
    """The nodes to hold constant, each with what it is (see the module docstring)."""
    nodes = list(gm.graph.nodes)
    found: Dict[fx.Node, str] = {}
    for n in nodes:
        if op_name(n) == "softplus" and _reaches_exp(n):
            found[n] = STEP
    fixed = _fixed(nodes, found)
    for n in nodes:
        if op_name(n) == "exp" and n.args and isinstance(n.args[0], fx.Node) and n.args[0] not in fixed:
            found[n] = WEIGHT if _less_a_maximum(n.args[0]) else DECAY
    fixed = _fixed(nodes, found)
    memo: Dict[fx.Node, FrozenSet[fx.Node]] = {}
    signals = _scaled_by_steps(nodes, found, fixed, memo)
    for n in nodes:
        if op_name(n) in _CONTRACTIONS:
            for chunk in _contracted_chunks(n, fixed, memo) - signals:
                found.setdefault(chunk, KEY)
    keys = {n for n, what in found.items() if what == KEY}
    for n in nodes:  # Gated DeltaNet's β scales the keys it writes with (and the values)
        if op_name(n) == "mul" and len(n.all_input_nodes) == 2:
            for a, b in (n.all_input_nodes, reversed(n.all_input_nodes)):
                gate = _carried_from(b, "sigmoid")
                if gate is not None and gate not in fixed and _chunks(a, fixed, memo) & keys:
                    found.setdefault(gate, STRENGTH)
    return found


def _less_a_maximum(n, depth: int = 0) -> bool:
    """``n`` is a sum or difference with a running maximum (``exp(k + u - max(...))``: RWKV's stabilised
    weighted average)."""
    if not isinstance(n, fx.Node) or depth > 4:
        return False
    if op_name(n) == "maximum":
        return True
    return op_name(n) in ("add", "sub", "to", "_to_copy") and any(
        _less_a_maximum(a, depth + 1) for a in n.all_input_nodes)


def _carried_from(n, name: str, depth: int = 0):
    """The ``name`` op whose value ``n`` carries unchanged (through views and casts), or None."""
    if not isinstance(n, fx.Node) or depth > 8:
        return None
    if op_name(n) == name:
        return n
    if op_name(n) in _CARRY and n.all_input_nodes:
        return _carried_from(n.all_input_nodes[0], name, depth + 1)
    return None


def _reaches_exp(start: fx.Node) -> bool:
    seen, frontier = {start}, [start]
    while frontier and len(seen) < _REACH:
        n = frontier.pop()
        for user in n.users:
            if op_name(user) == "exp":
                return True
            if user not in seen:
                seen.add(user)
                frontier.append(user)
    return False


def _fixed(nodes: Iterable[fx.Node], held) -> Set[fx.Node]:
    """Nodes whose value depends on no input except through held ones (parameters, constants, held values);
    sizes count as fixed."""
    fixed: Set[fx.Node] = set()
    for n in nodes:
        if n.op == "get_attr" or n in held or _no_relevance(n) or (
                n.op == "call_function" and all(a in fixed for a in n.all_input_nodes)):
            fixed.add(n)
    return fixed


def _no_relevance(n: fx.Node) -> bool:
    """A size or another Python number (not a tensor: an integer tensor may hold token ids)."""
    value = n.meta.get(meta_keys.VALUE)
    return n.op == "call_function" and value is not None and not value.is_tensor and value.tuple_len is None \
        and not value.holds_float


def _chunks(n, fixed: Set[fx.Node], memo: Dict[fx.Node, FrozenSet[fx.Node]], depth: int = 0) -> FrozenSet[fx.Node]:
    """The chunks of a split of a convolution's output that ``n`` carries, through views, casts, padding, index
    selections and products with fixed values (a normalisation's scale counts: it is a statistic of the chunk),
    looking back a few dozen ops (a scan's operands are that close to their split)."""
    if not isinstance(n, fx.Node) or n in fixed or depth > _LOOK_BACK:
        return frozenset()
    if n not in memo:
        memo[n] = frozenset()  # a node met again on its own path carries nothing new
        name = op_name(n)
        if name == "getitem" and isinstance(n.args[0], fx.Node) and op_name(n.args[0]) in _SPLITS:
            memo[n] = frozenset({n}) if _from_convolution(n.args[0].args[0]) else frozenset()
        elif name in _CARRY or name in _THROUGH:
            memo[n] = frozenset().union(*(_chunks(a, fixed, memo, depth + 1) for a in n.all_input_nodes))
    return memo[n]


def _from_convolution(n, depth: int = 0) -> bool:
    """A short causal convolution produced ``n`` (through casts, views, slicing and its activation)."""
    if not isinstance(n, fx.Node) or depth > 8:
        return False
    name = op_name(n)
    if name in _CONVOLUTIONS:
        return True
    if name in _CARRY or name in ("silu", "gelu", "relu", "sigmoid"):
        return any(_from_convolution(a, depth + 1) for a in n.all_input_nodes)
    return False


def _contracted_chunks(n: fx.Node, fixed: Set[fx.Node], memo) -> Set[fx.Node]:
    """The chunks of one split that meet in the contraction ``n`` (none if its operands come from elsewhere)."""
    operands = [a for a in n.all_input_nodes if a not in fixed]
    if len(operands) != 2:
        return set()
    left, right = (_chunks(a, fixed, memo) for a in operands)
    splits = {c.args[0] for c in left} & {c.args[0] for c in right}
    return {c for c in left | right if c.args[0] in splits}


def _scaled_by_steps(nodes, found: Dict[fx.Node, str], fixed: Set[fx.Node], memo) -> Set[fx.Node]:
    """Chunks multiplied by a step size itself (through casts, views and clamps): the signal of a scan
    (``x·Δ``); a product with a decay computed from the step (``B·exp(...)``) does not count."""
    steps = {n for n, what in found.items() if what == STEP}
    for n in nodes:
        if n not in steps and op_name(n) in _CARRY | {"clamp", "clamp_min", "clamp_max"} and any(
                a in steps for a in n.all_input_nodes):
            steps.add(n)
    signals: Set[fx.Node] = set()
    for n in nodes:
        if op_name(n) == "mul" and any(a in steps for a in n.all_input_nodes):
            for a in n.all_input_nodes:
                if a not in fixed:
                    signals |= _chunks(a, fixed, memo)
    return signals
