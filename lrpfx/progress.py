"""One progress bar for the whole package: tqdm when it is installed and wanted, silent otherwise.

The command line shows stages of one command (``step``), data-set runs show samples with their rate (``update``);
both are the same bar with a different unit.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator, Optional

import torch
from torch import nn


class Progress:
    """``Progress(total, desc, unit=...)``; ``enabled=None`` shows it only when stderr is a terminal."""

    def __init__(self, total: Optional[int], desc: str, *, unit: str = "it", enabled: Optional[bool] = None):
        self.bar = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        if unit == "stage":
            self.bar = tqdm(total=total, desc=desc, leave=False, file=sys.stderr,
                            bar_format="{desc}: {n_fmt}/{total_fmt} {postfix}")
        else:
            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)

    def update(self, n: int = 1, postfix: Optional[str] = None) -> None:
        if self.bar is not None:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(n)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """One stage of a command: its name shown while it runs, counted when it is done."""
        if self.bar is not None:
            self.bar.set_postfix_str(text)
        yield
        self.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def model_device(model: nn.Module) -> torch.device:
    """Where a model lives: its first parameter's (or buffer's) device, the CPU for a model without tensors."""
    p = next(iter(model.parameters()), None)
    if p is None:
        p = next(iter(model.buffers()), None)
    return p.device if p is not None else torch.device("cpu")
