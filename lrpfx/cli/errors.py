"""The command line's own error, and how any failure is told in one line."""
from __future__ import annotations

from ..errors import LrpfxError


class CliError(LrpfxError):
    """A command-line usage error: bad --model spec, missing file, wrong suffix."""


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (LrpfxError, OSError, ImportError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"
