"""What both front-ends share: the record of every node's value (:class:`ValueInfo` under
:data:`lrpfx.meta_keys.VALUE`, from running the graph once or from torch.export's own record) and where in the
user's code a failure happened.
"""
from __future__ import annotations

import linecache
import traceback
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode

from .. import meta_keys
from ..errors import InputError, torch_message
from ..graph.nodes import attribute, is_own_file, source_line
from ..graph.recurrent import holds_packed, packed_error


def _user_frame(exc: BaseException) -> Optional[traceback.FrameSummary]:
    """The innermost frame of the traceback that belongs to the user's code (not torch, not lrpfx)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not is_own_file(f.filename)]
    return frames[-1] if frames else None


def failure_location(exc: BaseException) -> str:
    """``\n  at file:line, in function:\n      code`` for the user's innermost frame of ``exc``, or ''."""
    frame = _user_frame(exc)
    if frame is None:
        return ""
    code = (frame.line or linecache.getline(frame.filename, frame.lineno)).strip()
    return f"\n  at {frame.filename}:{frame.lineno}, in {frame.name}:\n      {code}"


@dataclass(frozen=True)
class ValueInfo:
    """What one node produced when the graph ran on the example inputs."""

    is_tensor: bool
    shape: Tuple[int, ...] = ()
    dtype: Optional[torch.dtype] = None
    tuple_len: Optional[int] = None  # set when the node produced a tuple/list of tensors
    holds_float: bool = False  # a float tensor, or a (nested) container with one: a value relevance could flow through
    nested: bool = False  # a tuple with flat tuples of tensors among its items (an LSTM's ``(out, (h, c))``)

    @property
    def is_float_tensor(self) -> bool:
        return self.is_tensor and self.dtype is not None and (self.dtype.is_floating_point or self.dtype.is_complex)


def _holds_float(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point() or value.is_complex()
    if isinstance(value, (tuple, list)):
        return any(_holds_float(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_float(v) for v in value.values())
    return False


def _describe(value) -> ValueInfo:
    floats = _holds_float(value)
    if isinstance(value, torch.Tensor):
        return ValueInfo(True, tuple(_size(d) for d in value.shape), value.dtype, holds_float=floats)
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, torch.Tensor) for v in value):
        return ValueInfo(False, (), value[0].dtype, tuple_len=len(value), holds_float=floats)
    if _tuple_of_tensors_or_tuples(value):  # one nesting level; tracked only where a rule reads it (recurrent)
        first = next(v if isinstance(v, torch.Tensor) else v[0] for v in value)
        return ValueInfo(False, (), first.dtype, tuple_len=len(value), holds_float=floats, nested=True)
    return ValueInfo(False, holds_float=floats)


def _tuple_of_tensors_or_tuples(value) -> bool:
    def flat(v):
        return type(v) in (tuple, list) and v and all(isinstance(u, torch.Tensor) for u in v)

    return bool(type(value) in (tuple, list) and value and all(isinstance(v, torch.Tensor) or flat(v) for v in value))


class _Recorder(fx.Interpreter):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra_traceback = False  # the error names the node and the user's line; fx's own frames would bury it

    def run_node(self, n: fx.Node):
        try:
            value = super().run_node(n)
        except Exception as exc:
            raise InputError(f"the model failed on these inputs at node '{n.name}'{source_line(n)}: "
                             f"{type(exc).__name__}: {torch_message(exc)}") from exc
        if holds_packed(value):
            raise packed_error(n, source_line(n))
        n.meta[meta_keys.VALUE] = _describe(value)
        return value


def record_values(gm: fx.GraphModule, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Run ``gm`` once on ``inputs``, storing a :class:`ValueInfo` in every node's ``meta``; returns the output."""
    with torch.no_grad():
        return _Recorder(gm).run(*inputs)


def values_from_export(gm: fx.GraphModule) -> bool:
    """Store every node's :class:`ValueInfo` from what torch.export recorded (``meta["val"]``, fake tensors with
    symbolic sizes at their example values) instead of running the model again. Nodes lrpfx's rewrites added
    (the split attention) are run on fake tensors. False, with nothing stored, where that fails — then
    :func:`record_values` runs the graph."""
    fakes = {n: n.meta["val"] for n in gm.graph.nodes if "val" in n.meta and n.op != "output"}
    mode = detect_fake_mode(list(fakes.values()))
    values = {}
    for n in gm.graph.nodes:
        if n.op == "get_attr":
            value = attribute(gm, n.target)
        elif n.op == "output":
            value = fx.node.map_arg(n.args[0], fakes.get)
        elif n.meta.get(meta_keys.WHOLE_MODULE):  # a leaf kept whole may return a tuple export never recorded
            return False
        elif n in fakes:
            value = fakes[n]
        elif mode is not None and n.op == "call_function":
            try:
                with mode:
                    value = fakes[n] = n.target(*fx.node.map_arg(n.args, fakes.get),
                                                **fx.node.map_arg(n.kwargs, fakes.get))
            except Exception:  # an op fake tensors cannot run: record by running the graph instead
                return False
        else:
            return False
        if holds_packed(value):
            raise packed_error(n, source_line(n))
        try:
            values[n] = _describe(value)
        except _NoHint:  # a size export knows only as a symbol: record by running the graph instead
            return False
    for n, value in values.items():
        n.meta[meta_keys.VALUE] = value
    return True


class _NoHint(Exception):
    """A symbolic size without an example value (a size computed from data): the graph must run instead."""


def _size(d) -> int:
    """A size as an int: a symbolic size (torch.export's dynamic axes) at its example value."""
    if isinstance(d, int):
        return d
    if d.node.hint is None:  # an unbacked size: export made it up from data, its example value is not kept
        raise _NoHint(str(d))
    return int(d.node.hint)


def calls_of(nodes: List[fx.Node]) -> List[List[fx.Node]]:
    """The ops of one module path split into connected groups: one group per call of the module."""
    inside, group_of, groups = set(nodes), {}, []
    for n in nodes:  # graph order: a node's inputs inside the path are grouped before it
        linked = {group_of[a] for a in n.all_input_nodes if a in inside}
        if not linked:
            groups.append([n])
            group_of[n] = len(groups) - 1
            continue
        keep = min(linked)
        for other in sorted(linked - {keep}):  # n joins two groups: merge them
            for m in groups[other]:
                group_of[m] = keep
            groups[keep].extend(groups[other])
            groups[other] = []
        groups[keep].append(n)
        group_of[n] = keep
    order = {n: i for i, n in enumerate(nodes)}
    return [sorted(g, key=order.get) for g in groups if g]
