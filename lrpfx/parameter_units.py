"""Units of a model's parameters: output channels, neurons and attention heads, and parameter relevance summed
per unit.

A *unit* is one output of an affine layer: an output channel of a convolution (``"channel"``) or an output
feature of a linear layer (``"neuron"``). Its weights are the weight's slice along the output axis, plus its
bias entry; its relevance is the sum of their relevance. An attention *head* ``h`` of a layer with ``H`` heads
and output projection ``W_o`` (``[d_model, H·d_head]``) is the block of ``d_head`` input columns of ``W_o`` that
read head ``h``'s output: its relevance is the relevance of those columns, i.e. everything that flows through
the head into the block's output (the output projection's bias belongs to no head).
"""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Tuple

import torch
from torch import nn

from .errors import InputError
from .rules.layers import ConvTranspose, Linear

UNIT_KINDS = ("channel", "neuron", "head")
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_OUT_PROJECTIONS = ("o_proj", "out_proj")  # children that are a block's output projection (HF, torch, CLIP, BART)
_HEAD_COUNTS = ("num_heads", "num_attention_heads", "n_heads", "n_head")


class Unit(NamedTuple):
    """The units of one affine layer: ``weight``'s slices along ``axis`` (and ``bias``'s entries). With a
    BatchNorm folded in, ``bias`` is the BatchNorm's (it carries the folded bias's relevance) and ``also`` the
    layer's own bias and the BatchNorm's weight: masking a unit zeroes them too, so its output is 0."""

    kind: str  # "channel" or "neuron"
    weight: str  # parameter names
    bias: Optional[str]
    axis: int  # the weight's output axis
    also: Tuple[str, ...] = ()


class Heads(NamedTuple):
    """The heads of one attention block: column blocks of its output projection's weight."""

    out_weight: str  # parameter name of the output projection's weight, [d_model, num_heads * head_dim]
    num_heads: int


def layer_name(weight: str) -> str:
    """A layer's key: its weight's name without ``.weight`` (``"features.0"``), else the weight's name."""
    return weight[:-len(".weight")] if weight.endswith(".weight") else weight


def module_units(model: nn.Module) -> Dict[str, Unit]:
    """The units of every Linear, Conv and ConvTranspose module of ``model`` and of the in-projections of its
    ``nn.MultiheadAttention`` blocks, keyed by layer name (module registration order)."""
    units: Dict[str, Unit] = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.Linear):
            units[name] = Unit("neuron", f"{prefix}weight", f"{prefix}bias" if m.bias is not None else None, 0)
        elif isinstance(m, _CONVS):
            units[name] = Unit("channel", f"{prefix}weight", f"{prefix}bias" if m.bias is not None else None, 0)
        elif isinstance(m, _CONV_TRANSPOSES) and m.groups == 1:
            units[name] = Unit("channel", f"{prefix}weight", f"{prefix}bias" if m.bias is not None else None, 1)
        elif isinstance(m, nn.MultiheadAttention) and m.in_proj_weight is not None:
            bias = f"{prefix}in_proj_bias" if m.in_proj_bias is not None else None
            units[f"{prefix}in_proj_weight"] = Unit("neuron", f"{prefix}in_proj_weight", bias, 0)
    return units


def layer_units(model: nn.Module, uses: Iterable) -> Dict[str, Unit]:
    """The units of the affine ops a recorded graph calls (``uses``: :class:`lrpfx.parameters.AffineUse`), in
    the order of their first call; a functional op on a parameter counts as a layer of its own."""
    by_weight = {u.weight: (name, u) for name, u in module_units(model).items()}
    units: Dict[str, Unit] = {}
    for use in uses:
        if use.fold is not None:
            if isinstance(use.layer, ConvTranspose) and use.layer.groups != 1:
                continue  # grouped output channels: no single output axis
            kind = "neuron" if isinstance(use.layer, Linear) else "channel"
            bias = use.fold.bias or use.bias
            also = tuple(n for n in (use.bias, use.fold.weight) if n is not None and n != bias)
            name, unit = layer_name(use.weight), Unit(kind, use.weight, bias, _output_axis(use.layer), also)
        elif use.weight in by_weight:
            name, unit = by_weight[use.weight]
        elif isinstance(use.layer, Linear) or not isinstance(use.layer, ConvTranspose):
            kind = "neuron" if isinstance(use.layer, Linear) else "channel"
            name, unit = layer_name(use.weight), Unit(kind, use.weight, use.bias, 0)
        else:
            continue  # a functional transposed convolution: its output axis depends on the groups
        units.setdefault(name, unit)
    return units


def _output_axis(layer) -> int:
    return 1 if isinstance(layer, ConvTranspose) else 0


def attention_heads(model: nn.Module, heads: Optional[Mapping[str, int]] = None) -> Dict[str, Heads]:
    """The attention blocks of ``model``: ``nn.MultiheadAttention``, modules with an ``o_proj``/``out_proj``
    Linear child and a head count (``num_heads``, ``num_attention_heads``, ``n_heads``, ``n_head``, or in
    their ``config``), and BERT-style blocks (``self.num_attention_heads`` with ``output.dense``). ``heads``
    adds or overrides blocks as ``{output projection weight name: number of heads}``."""
    found: Dict[str, Heads] = {}
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, nn.MultiheadAttention):
            found[name] = Heads(f"{prefix}out_proj.weight", m.num_heads)
            continue
        count = _head_count(m)
        child = next((c for c in _OUT_PROJECTIONS if isinstance(getattr(m, c, None), nn.Linear)), None)
        if count is not None and child is not None:
            found[name] = Heads(f"{prefix}{child}.weight", count)
        inner, output = getattr(m, "self", None), getattr(m, "output", None)
        if isinstance(inner, nn.Module) and isinstance(getattr(output, "dense", None), nn.Linear) \
                and _head_count(inner) is not None:
            found[name] = Heads(f"{prefix}output.dense.weight", _head_count(inner))
    for weight, count in (heads or {}).items():
        found[layer_name(weight)] = Heads(weight, int(count))
    return found


def _head_count(m: nn.Module) -> Optional[int]:
    for source in (m, getattr(m, "config", None)):
        for attr in _HEAD_COUNTS:
            value = getattr(source, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return None


def unit_sums(relevance: Mapping[str, torch.Tensor], unit: Unit) -> torch.Tensor:
    """Relevance of each unit of a layer: its weight slice summed, plus its bias entry."""
    w = relevance[unit.weight]
    total = w.transpose(0, unit.axis).reshape(w.shape[unit.axis], -1).sum(1)
    if unit.bias is not None and unit.bias in relevance:
        total = total + relevance[unit.bias]
    return total


def head_sums(relevance: Mapping[str, torch.Tensor], block: Heads) -> torch.Tensor:
    """Relevance of each head: the output projection's input columns of that head, summed."""
    w = relevance[block.out_weight]
    if w.shape[-1] % block.num_heads:
        raise InputError(f"'{block.out_weight}' has {w.shape[-1]} input columns, not a multiple of its "
                         f"{block.num_heads} heads: pass heads={{'{block.out_weight}': <number of heads>}}")
    return w.reshape(w.shape[0], block.num_heads, -1).sum((0, 2))


def per_unit(relevance: Mapping[str, torch.Tensor], model: nn.Module, kind: Optional[str] = None,
             units: Optional[Mapping[str, Unit]] = None) -> Dict[str, torch.Tensor]:
    """``{layer: relevance per unit}`` from a parameter relevance ``{name: tensor}`` of ``model``: each output
    channel (Conv) or neuron (Linear) gets the relevance of its weights and bias. ``kind`` keeps one kind
    (``"channel"`` or ``"neuron"``); layers without relevance are left out."""
    if kind not in (None, "channel", "neuron"):
        raise InputError(f"kind must be 'channel', 'neuron' or None (both), got {kind!r}")
    units = module_units(model) if units is None else units
    return {name: unit_sums(relevance, u) for name, u in units.items()
            if u.weight in relevance and (kind is None or u.kind == kind)}


def per_head(relevance: Mapping[str, torch.Tensor], model: nn.Module,
             heads: Optional[Mapping[str, int]] = None) -> Dict[str, torch.Tensor]:
    """``{attention block: relevance per head}`` (:func:`attention_heads` finds the blocks; ``heads`` as there)."""
    return {name: head_sums(relevance, block) for name, block in attention_heads(model, heads).items()
            if block.out_weight in relevance}


class ParameterRelevance(dict):
    """``{parameter name: relevance}`` (each shaped like its parameter, summed over the batch), with the views
    per unit: :meth:`per_unit` (output channels and neurons) and :meth:`per_head` (attention heads)."""

    def __init__(self, values: Mapping[str, torch.Tensor], units: Mapping[str, Unit],
                 heads: Mapping[str, Heads]):
        super().__init__(values)
        self.units, self.heads = dict(units), dict(heads)

    def per_unit(self, kind: Optional[str] = None) -> Dict[str, torch.Tensor]:
        """``{layer: tensor[units]}``: the relevance of each output channel / neuron, in the order the layers
        are first called. ``kind="channel"`` or ``"neuron"`` keeps one kind."""
        if kind not in (None, "channel", "neuron"):
            raise InputError(f"kind must be 'channel', 'neuron' or None (both), got {kind!r}")
        return {name: unit_sums(self, u) for name, u in self.units.items() if kind is None or u.kind == kind}

    def per_head(self) -> Dict[str, torch.Tensor]:
        """``{attention block: tensor[num_heads]}``: the relevance through each head (the module docstring)."""
        return {name: head_sums(self, block) for name, block in self.heads.items() if block.out_weight in self}

    @property
    def last_layer(self) -> Optional[str]:
        """The layer called last (the classifier of most models): :func:`lrpfx.prune` keeps it by default."""
        return next(reversed(self.units), None)


def matching(names: Iterable[str], patterns: Iterable[str]) -> List[str]:
    """The names that match any of the globs ``patterns``."""
    patterns = list(patterns)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
