"""Writes into a buffer, out of place: the forward of ``buf[index] = value`` as the program runs it."""
import torch


def write_at(base: torch.Tensor, index, value) -> torch.Tensor:
    """A copy of ``base`` with ``value`` written at ``index`` (``base`` itself is left as it was)."""
    out = base.clone()
    out[index] = value
    return out
