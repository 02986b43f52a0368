"""PatternNet / PatternAttribution statistics (docs/rules.md, PatternNet), fitted in one streaming pass.

For every Linear/Conv node the fit accumulates, per output unit j, float64 running means over the rows of the
layer input ``X`` (conv: one row per output position, the receptive-field patch), the bias-free output
``Y = XWᵀ`` and a mask ``M`` (all ones for ``kind="all"``, ``Y > 0`` for ``kind="positive"``):
``E[x]_j``, ``E[xy]_j`` (both over the rows where ``M`` is set), ``E[y]_j`` (over all rows). Sums over
patches are computed without unfolding: ``Σ_n X_ni M_nj`` is the weight gradient of the layer for the output
gradient ``M``, which PyTorch computes with stride, padding, dilation and groups respected. The pattern is
``a_j = cov_j / (w_jᵀ cov_j)`` with ``cov = E[xy] - E[x]·E[y]``. Only one batch's statistics exist at a time.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Optional, Union

import torch
import torch.fx as fx
from torch import nn

from . import graph
from .errors import InputError, RuleError
from .frontend.common import record_values
from .frontend.fx import trace
from .locks import eval_mode, tracing
from .progress import Progress

_WEIGHT_GRAD = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight, 3: torch.nn.grad.conv3d_weight}


def structure_hash(model: nn.Module) -> str:
    """A hash of the model's module types and parameter names/shapes (not values): which model patterns fit."""
    h = hashlib.sha256()
    for name, module in model.named_modules():
        h.update(f"{name}:{type(module).__name__};".encode())
    for name, p in model.named_parameters():
        h.update(f"{name}:{tuple(p.shape)};".encode())
    return h.hexdigest()[:16]


@dataclass(eq=False)
class Patterns:
    """Fitted patterns, one tensor per affine node (keyed by qualified module name), shaped like its weight."""

    patterns: Dict[str, torch.Tensor]
    kind: str
    structure: str

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.patterns[name]

    def __contains__(self, name: str) -> bool:
        return name in self.patterns

    def save(self, path: Union[str, Path]) -> None:
        """Save as safetensors (``.safetensors``, when the package is installed) or a torch file."""
        path = Path(path)
        tensors = {f"pattern.{k}": v.contiguous() for k, v in self.patterns.items()}
        meta = {"kind": self.kind, "structure": self.structure, "layers": ",".join(self.patterns)}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(path), metadata=meta)
        else:
            torch.save({"tensors": tensors, "meta": meta}, path)

    @classmethod
    def load(cls, path: Union[str, Path], model: Optional[nn.Module] = None) -> "Patterns":
        """Load patterns; with ``model`` given, check they were fitted on a model of the same structure."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata()
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        else:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            tensors, meta = blob["tensors"], blob["meta"]
        loaded = cls({k[len("pattern."):]: v for k, v in tensors.items()}, meta["kind"], meta["structure"])
        if model is not None:
            loaded.check(model)
        return loaded

    def check(self, model: nn.Module) -> None:
        if structure_hash(model) != self.structure:
            raise RuleError(
                f"these patterns were fitted on a different model structure ({self.structure}, this model is "
                f"{structure_hash(model)}): fit them again with lrpfx.fit_patterns(model, loader)")


class _Accumulator:
    """Running float64 means of one affine node's pattern statistics, merged batch by batch by counts."""

    def __init__(self):
        self.ex = self.exy = self.count = None  # per (output unit, weight entry); count per output unit
        self.ey = None
        self.rows = 0

    @staticmethod
    def _merge(mean, count, batch_sum, batch_count):
        total = count + batch_count
        safe = torch.where(total > 0, total, torch.ones_like(total))
        return torch.where(total > 0, (mean * count + batch_sum) / safe, mean), total

    def add(self, sum_x, sum_xy, count, sum_y, rows):
        if self.ex is None:
            self.ex, self.exy = torch.zeros_like(sum_x), torch.zeros_like(sum_xy)
            self.count = torch.zeros_like(count)
            self.ey = torch.zeros_like(sum_y)
        shape = (-1,) + (1,) * (sum_x.dim() - 1)
        c = self.count.view(shape)
        self.ex, _ = self._merge(self.ex, c, sum_x, count.view(shape))
        self.exy, new_c = self._merge(self.exy, c, sum_xy, count.view(shape))
        self.count = new_c.view(-1)
        self.ey = (self.ey * self.rows + sum_y) / (self.rows + rows)
        self.rows += rows

    def pattern(self, weight: torch.Tensor) -> torch.Tensor:
        shape = (-1,) + (1,) * (weight.dim() - 1)
        cov = self.exy - self.ex * self.ey.view(shape)
        w = weight.detach().to(torch.float64)
        denominator = (w * cov).flatten(1).sum(1).view(shape)
        denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
        return (cov / denominator).to(weight.dtype)


def _layer_sums(info: graph.NodeInfo, x: torch.Tensor, weight: torch.Tensor, kind: str):
    """Σ_n X M, Σ_n X Y M, Σ_n M (per unit), Σ_n Y (per unit) and the row count for one batch, in float64."""
    x64, w64 = x.detach().to(torch.float64), weight.detach().to(torch.float64)
    y = info.layer.forward(x64, w64)  # bias-free output, one row per output position
    mask = (y > 0).to(torch.float64) if kind == "positive" else torch.ones_like(y)
    if info.kind == "linear":
        xf, yf, mf = x64.reshape(-1, x64.shape[-1]), y.reshape(-1, y.shape[-1]), mask.reshape(-1, y.shape[-1])
        return mf.T @ xf, (yf * mf).T @ xf, mf.sum(0), yf.sum(0), yf.shape[0]
    layer = info.layer
    grad = _WEIGHT_GRAD[layer.dim]
    if layer.padding_mode != "zeros":
        x64 = torch.nn.functional.pad(x64, layer.pad, mode=layer.padding_mode)
        padding = 0
    else:
        padding = layer.padding
    sum_x = grad(x64, w64.shape, mask, layer.stride, padding, layer.dilation, layer.groups)
    sum_xy = grad(x64, w64.shape, y * mask, layer.stride, padding, layer.dilation, layer.groups)
    units = [0] + list(range(2, y.dim()))
    rows = y.numel() // y.shape[1]
    return sum_x, sum_xy, mask.sum(units), y.sum(units), rows


class _Collector(fx.Interpreter):
    """Runs the traced model and feeds each affine node's input to its accumulator."""

    def __init__(self, gm, targets: Dict[fx.Node, graph.NodeInfo], accumulators, weights, kind):
        super().__init__(gm)
        self.targets, self.accumulators, self.weights, self.kind = targets, accumulators, weights, kind

    def run_node(self, n):
        value = super().run_node(n)
        info = self.targets.get(n)
        if info is not None:
            x = self.env[info.x]
            self.accumulators[info.name].add(*_layer_sums(info, x, self.weights[info.name], self.kind))
        return value


def _batches(loader: Iterable, max_batches: Optional[int]):
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


def fit_patterns(model: nn.Module, loader: Iterable, kind: str = "all", max_batches: Optional[int] = None,
                 device=None, progress: bool = True) -> Patterns:
    """Fit PatternNet patterns for every Linear/Conv node of ``model`` over ``loader`` (one pass).

    ``loader`` yields input batches (or ``(inputs, labels)`` tuples). ``kind="positive"`` restricts the
    statistics to rows where the layer's bias-free output is positive. The model is run in eval mode and left
    as it was.
    """
    if kind not in ("all", "positive"):
        raise RuleError(f"kind must be 'all' or 'positive', got {kind!r}")
    batches = _batches(loader, max_batches)
    total = max_batches if max_batches is not None else (len(loader) if hasattr(loader, "__len__") else None)
    bar = Progress(total, f"fitting patterns ({kind})", unit="batch", enabled=None if progress else False)
    gm = targets = accumulators = weights = None
    seen = 0
    with tracing(), eval_mode(model), torch.no_grad():  # it traces the model as it goes: alone
        for x in batches:
            if device is not None:
                x = x.to(device)
            if gm is None:
                gm = trace(model, 1)
                record_values(gm, (x,))
                infos = graph.classify(gm)
                targets = {n: i for n, i in infos.items() if i.kind in ("linear", "conv")}
                weights = {i.name: _weight_of(gm, i) for i in targets.values()}
                accumulators = {i.name: _Accumulator() for i in targets.values()}
            _Collector(gm, targets, accumulators, weights, kind).run(x)
            seen += 1
            bar.update(1)
    bar.close()
    if seen == 0:
        raise InputError("the loader yielded no batches: patterns need data")
    patterns = {name: acc.pattern(weights[name]) for name, acc in accumulators.items()}
    return Patterns(patterns, kind, structure_hash(model))


def _weight_of(gm: fx.GraphModule, info: graph.NodeInfo) -> torch.Tensor:
    weight = graph.parameter_of(gm, info.weight)
    if weight is not None:
        return weight
    raise RuleError(f"patterns need the weight of '{info.name}' as a parameter; functional layers with computed "
                    "weights are not supported")
