"""What may run at the same time in several threads: many program runs, or one trace alone.

torch.fx's tracer patches ``torch.nn.Module.__call__`` process-wide while it traces (and export patches more), so a
module called by a program run in another thread during a trace would be recorded into that trace. Runs of built
programs share nothing else: they may proceed together. :func:`tracing` is exclusive (and re-entrant for the
thread that holds it); :func:`running` is shared, and waits only while some other thread traces.

The eval-mode switch is shared too: :func:`eval_mode` counts the threads using a model and hands the ``training``
flags back when the last one leaves, so one thread's exit never flips a model another thread is still running.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Dict, Iterator, List, Tuple

from torch import nn

_state = threading.Condition(threading.Lock())
_runs: Dict[int, int] = {}  # thread id -> its nesting depth of running()
_tracer = None  # thread id of the thread that traces
_trace_depth = 0


@contextlib.contextmanager
def tracing() -> Iterator[None]:
    """Exclusive: no other thread traces or runs a program meanwhile."""
    global _tracer, _trace_depth
    me = threading.get_ident()
    with _state:
        while (_tracer is not None and _tracer != me) or any(t != me for t in _runs):
            _state.wait()
        _tracer, _trace_depth = me, _trace_depth + 1
    try:
        yield
    finally:
        with _state:
            _trace_depth -= 1
            if _trace_depth == 0:
                _tracer = None
            _state.notify_all()


@contextlib.contextmanager
def running() -> Iterator[None]:
    """Shared: any number of threads run programs together; waits while another thread traces."""
    me = threading.get_ident()
    with _state:
        while _tracer is not None and _tracer != me:
            _state.wait()
        _runs[me] = _runs.get(me, 0) + 1
    try:
        yield
    finally:
        with _state:
            _runs[me] -= 1
            if _runs[me] == 0:
                del _runs[me]
            _state.notify_all()


_eval_lock = threading.Lock()
_eval_users: Dict[int, Tuple[int, List[Tuple[nn.Module, bool]]]] = {}  # id(model) -> (users, saved flags)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval semantics and hand it back with every module's ``training`` flag as it was (when the
    last thread using it leaves)."""
    key = id(model)
    with _eval_lock:
        users, flags = _eval_users.get(key, (0, None))
        if users == 0:
            flags = [(m, m.training) for m in model.modules()]
            model.eval()
        _eval_users[key] = (users + 1, flags)
    try:
        yield
    finally:
        with _eval_lock:
            users, flags = _eval_users[key]
            if users == 1:
                del _eval_users[key]
                for m, flag in flags:
                    m.training = flag
            else:
                _eval_users[key] = (users - 1, flags)
