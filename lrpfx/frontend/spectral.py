"""The real part of Fourier transforms of a real value (FNet's token mixing: ``fft(fft(h, -1), -2).real``) as one
node: linear in ``h`` and real on both ends, so it mixes values like any linear map (kind ``reduce``, the
proportional rule), while the complex values between the transforms carry no relevance of their own.
"""
from __future__ import annotations

import builtins
import torch
import torch.fx as fx

from ..graph.mixing import RealSpectrum
from ..graph.nodes import op_name

aten = torch.ops.aten
_REAL = (aten.real.default, torch.real)


def _is_real_part(n: fx.Node) -> bool:
    if n.op != "call_function":
        return False
    return n.target in _REAL or (n.target is builtins.getattr and len(n.args) == 2 and n.args[1] == "real")


def _is_transform(n) -> bool:
    return isinstance(n, fx.Node) and n.op == "call_function" and op_name(n).startswith("fft_") \
        and op_name(n) not in ("fft_irfft", "fft_irfft2", "fft_irfftn", "fft_hfft", "fft_fftfreq", "fft_rfftfreq",
                               "fft_fftshift", "fft_ifftshift") \
        and bool(n.args) and isinstance(n.args[0], fx.Node) \
        and not any(isinstance(a, fx.Node) for a in (*n.args[1:], *n.kwargs.values()))


def fuse_real_spectra(gm: fx.GraphModule) -> bool:
    """Replace every ``.real`` of a chain of transforms (each read only by the next) by one :class:`RealSpectrum`
    call on the chain's real input."""
    changed = False
    for n in list(gm.graph.nodes):
        if not _is_real_part(n) or not _is_transform(n.args[0]):
            continue
        chain, node = [], n.args[0]
        while _is_transform(node) and len(node.users) == 1:
            chain.append(node)
            node = node.args[0]
        if not chain:
            continue
        steps = tuple((c.target, tuple(c.args[1:]), dict(c.kwargs)) for c in reversed(chain))
        with gm.graph.inserting_before(n):
            fused = gm.graph.call_function(RealSpectrum(steps), (node,))
        fused.meta.update(n.meta)
        n.replace_all_uses_with(fused)
        gm.graph.erase_node(n)
        for c in chain:
            gm.graph.erase_node(c)
        changed = True
    if changed:
        gm.recompile()
    return changed
