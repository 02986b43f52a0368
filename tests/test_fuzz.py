"""Architecture fuzzing: random small networks against the LRP properties of docs/rules.md ("Which properties
hold") and an independent slow reference evaluator (``tests/helpers/slow_reference.py``).

Every network is built from a *recipe*, plain data (dicts, strings, ints) drawn by hypothesis and turned into an
``nn.Module`` subclass by :func:`build_model` (same recipe, same weights): Conv1d/Conv2d/Linear stacks (groups,
dilation, stride, ``padding="same"``, reflect/circular/replicate padding modes) with ReLU/LeakyReLU/GELU in
module, functional and method forms, some in place; max/average/adaptive pooling with various kernel, stride,
padding, ceil_mode and count_include_pad; BatchNorm where it folds (right after a conv/linear) and where it
cannot (at the input, after a concat); residual adds (two- and three-way; ``+``, ``torch.add``, ``.add``,
``+=``), differences (``x - conv(x)``), scaling/shifting by constants; ``torch.cat``/``torch.concat``,
split/chunk/getitem; flatten/view/reshape/permute/transpose and channels-last Linear; constant/zero/reflection
padding and nearest/linear/bicubic resizing; SE-style gating ``x * sigmoid(fc(pool(x)))``; modules called twice
(a conv, a BatchNorm, the root's ReLU); a pre-activation block whose in-place ReLU also changes the tensor its skip
connection reads. Shapes are small (batch 2, spatial 6-10, channels 2-6), float64, BatchNorm statistics random;
the target is the argmax, explicit classes, or a random initial relevance shaped like the output.

Properties (each in its own hypothesis test, fixed seed via ``derandomize=True``):

* every property first checks that the program's forward output equals the model's (run on a copy of the input);
* ``test_lrp0_equals_gradient_times_input``: on ReLU-only members (no LeakyReLU/GELU/gating, no mixing
  interpolation), LRP-0 with Norm(0) on sums/average pooling and Epsilon(0) on unfoldable BatchNorm equals
  gradient × input of the target logit (of ``Σ out·R0/out`` for an initial relevance ``R0``). The gradient is taken
  on a twin of the model built from the same recipe with every in-place op written out of place (autograd refuses
  some of the in-place patterns) and the in-place aliasing spelled out; the twin's output must equal the model's.
* ``test_conservation_with_zero_bias``: LRP-0 with ``zero_bias=True``. Per sample, the relevance at the input, at
  the output and at every node that *dominates* the output (every path from the input to the output passes
  through it, so all relevance flows through it) sums to the initial relevance. Branch nodes (one side of a
  residual, one piece of a split) are not dominators and are not checked. Where a layer's bias-free output ``z'``
  is exactly 0 at a position that still receives relevance (a dead receptive field under a positive bias, a
  constant padding value, ``x + c``), LRP-0 drops that relevance by definition (0/0 := 0, the constant keeps its
  share); the slow reference with the same composite recognises the nodes below such a loss, and there the
  dominator's sum is checked against the reference's sum at that node instead.
* ``test_presets_equal_slow_reference``: ``epsilon-plus-flat`` and ``epsilon-gamma-box`` equal the slow reference
  evaluator: the input relevance and the relevance at every node lrpfx reports, rtol 1e-8 in float64.
* ``test_compiled_equals_eager`` (``slow``): ``compile=True`` equals eager on 3 small recipes, float32.

Example counts: ``LRPFX_FUZZ_PROFILE=ci`` (the default) runs 200 examples over the three cheap properties
(70 + 70 + 60) without shrinking; ``LRPFX_FUZZ_PROFILE=slow`` runs 10x as many, shrinks failures, and compiles
12 recipes. Every shrunk counterexample found is kept at the end as a plain regression test
(``test_regression_*``).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import pytest
import torch
import torch.fx as fx
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from torch import nn

import lrpfx
from lrpfx.rules import Epsilon, Norm

from tests.helpers import slow_reference as sref

DT = torch.float64
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
              pytest.mark.usefixtures("one_thread")]

PROFILE = os.environ.get("LRPFX_FUZZ_PROFILE", "ci")
SCALE = {"ci": 1, "slow": 10}[PROFILE]

LRP0 = lrpfx.Composite(conv=Epsilon(0), linear=Epsilon(0),
                       by_type={"add": Norm(0), "avg_pool": Norm(0), "reduce": Norm(0), "batchnorm": Epsilon(0)})
LRP0_ZERO_BIAS = lrpfx.Composite(conv=Epsilon(0, zero_bias=True), linear=Epsilon(0, zero_bias=True),
                                 by_type={"add": Norm(0), "avg_pool": Norm(0), "reduce": Norm(0)})


# CI does not shrink (hypothesis may spend minutes on it): a failure prints the generated recipe, which reproduces
# as a plain test; the slow profile shrinks
PHASES = {"ci": (Phase.explicit, Phase.generate),
          "slow": (Phase.explicit, Phase.generate, Phase.shrink)}[PROFILE]


def fuzz_settings(n: int):
    return settings(max_examples=n * SCALE, derandomize=True, deadline=None, database=None, print_blob=False,
                    phases=PHASES, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                          HealthCheck.filter_too_much])


# =============================================================================================================
# recipes -> models
# =============================================================================================================
RELU_ACTS = ["ReLU", "ReLU_", "shared", "F.relu", "F.relu_", "torch.relu", "x.relu", "x.relu_", "x.relu_;", "none"]
OTHER_ACTS = ["LeakyReLU", "LeakyReLU_", "F.leaky_relu", "F.leaky_relu_", "GELU", "F.gelu"]
INPLACE_ACTS = {"ReLU_", "F.relu_", "x.relu_", "x.relu_;", "LeakyReLU_", "F.leaky_relu_"}


def _act_module(spec: str, inplace: bool) -> Optional[nn.Module]:
    if spec in ("ReLU", "ReLU_"):
        return nn.ReLU(inplace=inplace and spec.endswith("_"))
    if spec in ("LeakyReLU", "LeakyReLU_"):
        return nn.LeakyReLU(0.1, inplace=inplace and spec.endswith("_"))
    if spec == "GELU":
        return nn.GELU()
    return None


class Act(nn.Module):
    """One activation in one of its spellings. ``shared`` calls the root's ReLU module (a module used twice)."""

    def __init__(self, spec: str, inplace: bool, shared: Optional[nn.Module], fresh: bool = True):
        super().__init__()
        # in place only on a tensor this block just produced (never on a view of the block's input)
        self.spec, self.inplace = spec, inplace and fresh
        self.m = _act_module(spec, self.inplace)
        self._shared = (shared,)  # not registered here: the root owns it

    def forward(self, x):
        s = self.spec
        if s == "none":
            return x
        if self.m is not None:
            return self.m(x)
        if s == "shared":
            return self._shared[0](x)
        if s == "F.relu":
            return F.relu(x)
        if s == "F.relu_":
            return F.relu(x, inplace=self.inplace)
        if s == "torch.relu":
            return torch.relu(x)
        if s == "x.relu":
            return x.relu()
        if s == "x.relu_":
            return x.relu_() if self.inplace else x.relu()
        if s == "x.relu_;":  # statement form: the result is discarded, x itself changes
            if not self.inplace:
                return x.relu()
            x.relu_()
            return x
        if s == "F.leaky_relu":
            return F.leaky_relu(x, 0.2)
        if s == "F.leaky_relu_":
            return F.leaky_relu(x, 0.2, inplace=self.inplace)
        if s == "F.gelu":
            return F.gelu(x)
        raise AssertionError(s)


def _affine(dim, cin, cout, k=1, s=1, p=0, bias=True):
    if dim == 0:
        return nn.Linear(cin, cout, bias=bias)
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    return conv(cin, cout, k, stride=s, padding=p, bias=bias)


def _bn(dim, c):
    return nn.BatchNorm2d(c) if dim == 2 else nn.BatchNorm1d(c)


def _spatial(dim):
    return tuple(range(2, 2 + dim))


class ConvBlock(nn.Module):
    """conv/linear [+ BatchNorm (foldable)] [+ activation]."""

    def __init__(self, dim, cin, spec, inplace, shared):
        super().__init__()
        cout = spec["c"]
        k, s = (spec["k"], spec["s"]) if dim else (1, 1)
        p = min(spec["p"], k // 2) if dim else 0
        if dim == 0:
            self.conv = _affine(dim, cin, cout, bias=spec["bias"])
        else:
            # groups where the channels allow, dilation, padding modes and padding="same"
            g = spec.get("g", 1)
            g = g if (cin % g == 0 and cout % g == 0) else 1
            mode = spec.get("pm", "zeros")
            if mode == "same":
                p, s, mode = "same", 1, "zeros"
            elif mode != "zeros" and p == 0:
                p = 1
            conv = nn.Conv1d if dim == 1 else nn.Conv2d
            self.conv = conv(cin, cout, k, stride=s, padding=p, dilation=spec.get("d", 1), groups=g, bias=spec["bias"],
                             padding_mode=mode)
        self.bn = _bn(dim, cout) if spec["bn"] else None
        self.act = Act(spec["act"], inplace, shared)

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class PoolBlock(nn.Module):
    def __init__(self, dim, cin, spec, inplace, shared):
        super().__init__()
        assert dim > 0
        self.dim, self.spec = dim, spec
        kind, k, s, p, ceil = spec["kind"], spec["k"], spec["s"], spec["p"], spec["ceil"]
        p = min(p, k // 2)
        self.args = (k, s or k, p, ceil)
        self.pool = None
        if spec["form"] == "module":
            if kind == "max":
                self.pool = (nn.MaxPool1d if dim == 1 else nn.MaxPool2d)(k, s, p, ceil_mode=ceil)
            elif kind == "avg":
                self.pool = (nn.AvgPool1d if dim == 1 else nn.AvgPool2d)(k, s, p, ceil_mode=ceil,
                                                                       count_include_pad=spec["cip"])
            elif kind == "amax":
                self.pool = (nn.AdaptiveMaxPool1d if dim == 1 else nn.AdaptiveMaxPool2d)(spec["out"])
            else:
                self.pool = (nn.AdaptiveAvgPool1d if dim == 1 else nn.AdaptiveAvgPool2d)(spec["out"])

    def forward(self, x):
        if self.pool is not None:
            return self.pool(x)
        kind, dim = self.spec["kind"], self.dim
        k, s, p, ceil = self.args
        if kind == "max":
            return (F.max_pool1d if dim == 1 else F.max_pool2d)(x, k, s, p, ceil_mode=ceil)
        if kind == "avg":
            return (F.avg_pool1d if dim == 1 else F.avg_pool2d)(x, k, s, p, ceil_mode=ceil,
                                                                count_include_pad=self.spec["cip"])
        if kind == "amax":
            return (F.adaptive_max_pool1d if dim == 1 else F.adaptive_max_pool2d)(x, self.spec["out"])
        return (F.adaptive_avg_pool1d if dim == 1 else F.adaptive_avg_pool2d)(x, self.spec["out"])


class ResBlock(nn.Module):
    """``post(body(x) + x)`` with a one- or two-layer body; the add as ``+``, ``torch.add``, ``.add`` or ``+=``."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        k = spec["k"] if dim else 1
        self.conv1 = _affine(dim, c, c, k, 1, k // 2, spec["bias"])
        self.bn1 = _bn(dim, c) if spec["bn"] else None
        self.act1 = Act(spec["act"], inplace, shared)
        self.conv2 = _affine(dim, c, c, 1, 1, 0) if spec["two"] else None
        self.add, self.inplace = spec["add"], inplace
        self.post = Act(spec["post"], inplace, shared)

    def forward(self, x):
        y = self.conv1(x)
        if self.bn1 is not None:
            y = self.bn1(y)
        y = self.act1(y)
        if self.conv2 is not None:
            y = self.conv2(y)
        if self.add == "+=" and self.inplace:
            y += x
        elif self.add == ".add_;" and self.inplace:  # statement form
            y.add_(x)
        elif self.add == "torch.add":
            y = torch.add(x, y)
        elif self.add == ".add":
            y = y.add(x)
        else:
            y = x + y
        return self.post(y)


class Res3Block(nn.Module):
    """Three-way sum ``x + conv_a(x) + act(conv_b(x))`` in several orders and spellings."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.a = _affine(dim, c, c, 1, 1, 0)
        k = spec["k"] if dim else 1
        self.b = _affine(dim, c, c, k, 1, k // 2)
        self.bn = _bn(dim, c) if spec["bn"] else None
        self.act = Act(spec["act"], inplace, shared)
        self.form = spec["form"]

    def forward(self, x):
        a = self.a(x)
        b = self.b(x)
        if self.bn is not None:
            b = self.bn(b)
        b = self.act(b)
        if self.form == "x+a+b":
            return x + a + b
        if self.form == "a+b+x":
            return a + b + x
        return torch.add(torch.add(b, x), a)


class CatBlock(nn.Module):
    """``cat([branch1(x), branch2(x)], 1)`` [+ BatchNorm after the concat (not foldable)] [+ activation]."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.dim = dim
        self.b1 = _affine(dim, c, spec["c1"], 1, 1, 0)
        self.act1 = Act(spec["act"], inplace, shared)
        self.branch2 = spec["b2"] if dim else ("conv" if spec["b2"] == "pool" else spec["b2"])
        self.b2 = _affine(dim, c, spec["c2"], 3 if dim else 1, 1, 1 if dim else 0) if self.branch2 == "conv" else None
        self.cout = spec["c1"] + (spec["c2"] if self.branch2 == "conv" else c)
        self.bn = _bn(dim, self.cout) if spec["bn_after"] else None
        self.post = Act(spec["post"], inplace, shared)
        self.fn = spec["fn"]

    def forward(self, x):
        a = self.act1(self.b1(x))
        if self.branch2 == "conv":
            b = self.b2(x)
        elif self.branch2 == "pool":
            b = (F.max_pool1d if self.dim == 1 else F.max_pool2d)(x, 3, 1, 1)
        else:
            b = x
        parts = [a, b] if self.fn != "swap" else [b, a]
        y = torch.concat(parts, dim=1) if self.fn == "torch.concat" else torch.cat(parts, 1)
        if self.bn is not None:
            y = self.bn(y)
        return self.post(y)


class SplitBlock(nn.Module):
    """Split the channels (chunk/split/getitem), transform one piece, and merge (cat, add, or drop a piece)."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.form, self.merge = spec["form"], spec["merge"]
        if self.form in ("chunk", "torch.chunk", "getitem"):
            c1 = (c + 1) // 2
        else:
            c1 = max(1, min(c - 1, spec["c1"]))
        self.sizes = (c1, c - c1)
        if self.merge == "add" and c1 != c - c1:
            self.merge = "cat"
        self.conv = _affine(dim, c1, c if self.merge == "drop" else c1, 1, 1, 0)
        self.act = Act(spec["act"], inplace, shared)
        self.act_b = Act(spec["act_b"], inplace, shared, fresh=False)

    def forward(self, x):
        if self.form == "chunk":
            a, b = x.chunk(2, dim=1)
        elif self.form == "torch.chunk":
            a, b = torch.chunk(x, 2, 1)
        elif self.form == "getitem":
            parts = x.chunk(2, 1)
            a, b = parts[0], parts[1]
        elif self.form == "split":
            a, b = x.split(list(self.sizes), dim=1)
        else:
            a, b = torch.split(x, self.sizes, 1)
        a = self.act(self.conv(a))
        if self.merge == "drop":
            return a
        b = self.act_b(b)
        if self.merge == "add":
            return a + b
        return torch.cat([b, a] if self.merge == "cat_swap" else [a, b], dim=1)


class SEBlock(nn.Module):
    """Squeeze-and-excitation gate ``x * sigmoid(fc(pool(x)))``."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.dim, self.spec = dim, spec
        h = spec["hidden"]
        self.fc1 = nn.Linear(c, h if h else c)
        self.fc2 = nn.Linear(h, c) if h else None
        self.pool = (nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)) \
            if (dim and spec["pool"] == "module") else None
        self.gate = nn.Sigmoid() if spec["gate"] == "module" else None

    def forward(self, x):
        if self.dim == 0:
            g = x
        elif self.pool is not None:
            g = self.pool(x).flatten(1)
        elif self.spec["pool"] == "mean":
            g = x.mean(dim=_spatial(self.dim))
        else:
            g = (F.adaptive_avg_pool1d if self.dim == 1 else F.adaptive_avg_pool2d)(x, 1).view(x.size(0), -1)
        g = self.fc1(g)
        if self.fc2 is not None:
            g = self.fc2(F.relu(g))
        g = self.gate(g) if self.gate is not None else torch.sigmoid(g)
        if self.dim:
            g = g.view(g.shape[0], g.shape[1], *([1] * self.dim))
        return torch.mul(x, g) if self.spec["mul"] == "torch.mul" else x * g


class ReuseBlock(nn.Module):
    """One conv/linear module called twice; BatchNorms separate, shared, or none."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        k = spec["k"] if dim else 1
        self.conv = _affine(dim, c, c, k, 1, k // 2)
        self.bn1 = _bn(dim, c) if spec["bn"] != "none" else None
        self.bn2 = (self.bn1 if spec["bn"] == "shared" else _bn(dim, c)) if spec["bn"] != "none" else None
        self.act = Act(spec["act"], inplace, shared)

    def forward(self, x):
        y = self.conv(x)
        if self.bn1 is not None:
            y = self.bn1(y)
        y = self.conv(self.act(y))
        if self.bn2 is not None:
            y = self.bn2(y)
        return self.act(y)


class PermBlock(nn.Module):
    """Swap spatial axes (2d) or a Linear over channels in a channels-last layout, then back."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.dim, self.form = dim, spec["form"]
        if self.form == "swap" and dim != 2:
            self.form = "linear"
        self.fc = nn.Linear(c, spec["c"]) if self.form == "linear" else None
        self.act = Act(spec["act"], inplace, shared)
        self.how = spec["how"]

    def forward(self, x):
        if self.form == "swap":
            if self.how == "permute":
                return x.permute(0, 1, 3, 2)
            if self.how == "torch.permute":
                return torch.permute(x, (0, 1, 3, 2)).contiguous()
            return x.transpose(2, 3)
        if self.dim == 1:
            y = x.transpose(1, 2) if self.how != "torch.permute" else torch.permute(x, (0, 2, 1))
            y = self.act(self.fc(y))
            return y.permute(0, 2, 1)
        y = x.permute(0, 2, 3, 1) if self.how != "torch.permute" else torch.permute(x, (0, 2, 3, 1))
        y = self.act(self.fc(y))
        return y.permute(0, 3, 1, 2).contiguous()


class ViewBlock(nn.Module):
    """Round trips through flat views: ``view``/``reshape``/``flatten`` + ``view``."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.dim, self.form = dim, spec["form"]

    def forward(self, x):
        shape = x.shape
        if self.form == "view":
            y = x.view(x.size(0), -1)
        elif self.form == "reshape":
            y = x.reshape(shape[0], shape[1], -1)
        else:
            y = torch.flatten(x, 1)
        return y.view(shape)


class PadBlock(nn.Module):
    """Padding (zero, constant of either sign, reflection) or resizing (nearest, linear, bicubic), then a conv."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        assert dim > 0
        self.dim, self.form, self.value = dim, spec["form"], spec["value"]
        self.pad = None
        if self.form == "zero_module":
            self.pad = nn.ZeroPad2d(1) if dim == 2 else nn.ConstantPad1d(1, 0.0)
        elif self.form == "const_module":
            self.pad = (nn.ConstantPad2d if dim == 2 else nn.ConstantPad1d)((1, 0) * dim, self.value)
        elif self.form == "reflect_module":
            self.pad = (nn.ReflectionPad2d if dim == 2 else nn.ReflectionPad1d)(1)
        elif self.form == "upsample":
            self.pad = nn.Upsample(scale_factor=2, mode="nearest")
        self.conv = _affine(dim, c, spec["c"], 2, 2 if self.form == "upsample" else 1, 0)
        self.act = Act(spec["act"], inplace, shared)
        self.pre = Act(spec["pre"], inplace, shared, fresh=False)

    def forward(self, x):
        x = self.pre(x)
        if self.pad is not None:
            y = self.pad(x)
        elif self.form == "F.pad":
            y = F.pad(x, (0, 1, 1, 0)[: 2 * self.dim], value=self.value)
        else:  # F.interpolate, a quarter more samples per axis
            mode = {"nearest": "nearest", "linear": "linear" if self.dim == 1 else "bilinear",
                    "bicubic": "linear" if self.dim == 1 else "bicubic"}[self.form]
            y = F.interpolate(x, scale_factor=1.25, mode=mode) if mode == "nearest" else \
                F.interpolate(x, scale_factor=1.25, mode=mode, align_corners=False)
        return self.act(self.conv(y))


class ArithBlock(nn.Module):
    """Arithmetic with constants (scale, shift, negation) and differences of activations."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.form, self.value = spec["form"], spec["value"]
        self.conv = _affine(dim, c, c, 1, 1, 0)

    def forward(self, x):
        f, v = self.form, self.value
        if f == "x*c":
            return x * v
        if f == "c*x":
            return v * x
        if f == "x/c":
            return x / v
        if f == "-x":
            return -x
        if f == "x+c":
            return x + v
        if f == "c-x":
            return v - x
        if f == "x-conv":
            return x - self.conv(x)
        return torch.sub(self.conv(x), x)


class PreActBlock(nn.Module):
    """``identity = x; y = relu_(x)`` (in place: ``identity`` is clobbered too); ``conv(y) + identity``.

    The out-of-place twin spells the same semantics explicitly (``identity = y``)."""

    def __init__(self, dim, c, spec, inplace, shared):
        super().__init__()
        self.conv0 = _affine(dim, c, c, 1, 1, 0)
        k = spec["k"] if dim else 1
        self.conv1 = _affine(dim, c, c, k, 1, k // 2)
        self.form, self.inplace = spec["form"], inplace

    def forward(self, x):
        x = self.conv0(x)
        identity = x
        if not self.inplace:
            y = F.relu(x)
            identity = y
        elif self.form == "F.relu_":
            y = F.relu(x, inplace=True)
        else:
            y = x.relu_()
        return self.conv1(y) + identity


BLOCKS = {"conv": ConvBlock, "pool": PoolBlock, "res": ResBlock, "res3": Res3Block, "cat": CatBlock,
          "split": SplitBlock, "se": SEBlock, "reuse": ReuseBlock, "perm": PermBlock, "view": ViewBlock,
          "pad": PadBlock, "arith": ArithBlock, "preact": PreActBlock}


class Head(nn.Module):
    def __init__(self, dim, shape, spec, inplace, shared):
        super().__init__()
        self.dim, self.spec = dim, spec
        c = shape[0]
        if dim == 0 or spec["reduce"] == "flatten":
            features = 1
            for n in shape:
                features *= n
        else:
            features = c
        self.flatten = nn.Flatten() if spec["form"] == "nn.Flatten" else None
        self.gap = (nn.AdaptiveAvgPool1d(1) if dim == 1 else nn.AdaptiveAvgPool2d(1)) \
            if (dim and spec["reduce"] == "gap" and spec["form"] == "module") else None
        h = spec["hidden"]
        self.fc1 = nn.Linear(features, h) if h else None
        self.bn = nn.BatchNorm1d(h) if (h and spec["hbn"]) else None
        self.act = Act(spec["hact"], inplace, shared)
        self.drop = nn.Dropout(0.5) if spec["drop"] else None
        self.fc = nn.Linear(h or features, spec["classes"])

    def forward(self, x):
        if self.dim:
            reduce, form = self.spec["reduce"], self.spec["form"]
            if reduce == "flatten":
                if self.flatten is not None:
                    x = self.flatten(x)
                elif form == "view":
                    x = x.view(x.size(0), -1)
                elif form == "reshape":
                    x = x.reshape(x.shape[0], -1)
                elif form == "torch.flatten":
                    x = torch.flatten(x, 1)
                else:
                    x = x.flatten(1)
            elif reduce == "gap":
                if self.gap is not None:
                    x = self.gap(x)
                    x = self.flatten(x) if self.flatten is not None else x.flatten(1)
                elif form == "sum":
                    x = x.sum(dim=_spatial(self.dim))
                else:
                    x = x.mean(_spatial(self.dim))
            else:
                x = (F.adaptive_max_pool1d if self.dim == 1 else F.adaptive_max_pool2d)(x, 1).flatten(1)
        if self.fc1 is not None:
            x = self.fc1(x)
            if self.bn is not None:
                x = self.bn(x)
            x = self.act(x)
            if self.drop is not None:
                x = self.drop(x)
        return self.fc(x)


class FuzzNet(nn.Module):
    """The network a recipe describes. ``inplace=False`` builds the out-of-place twin (same parameters)."""

    def __init__(self, recipe: Dict[str, Any], inplace: bool = True):
        super().__init__()
        dim = recipe["dim"]
        self.relu = nn.ReLU(inplace=inplace and recipe["shared_inplace"])
        shape = (recipe["cin"],) + (tuple(recipe["size"][:dim]) if dim else ())
        self.bn_in = _bn(dim, recipe["cin"]) if recipe["bn_in"] else None
        # a conv + ReLU stem takes the first-layer rule (Flat/ZBox), so the blocks meet the conv rules
        self.stem = ConvBlock(dim, shape[0], {"c": recipe["stem"], "k": 3, "s": 1, "p": 1, "bias": True, "bn": False,
                                              "act": "ReLU"}, inplace, self.relu) if recipe["stem"] else None
        if self.stem is not None:
            shape = (recipe["stem"],) + shape[1:]
        blocks = []
        probe = torch.randn(2, *shape, dtype=DT)  # carries strides too: x.view after a permute must fail here
        probe = probe.abs() if self.stem is not None else probe
        for spec in recipe["blocks"]:
            if dim == 0 and spec["t"] in ("pool", "perm", "view", "pad"):
                continue
            if spec["t"] == "split" and shape[0] < 2:
                continue
            block = BLOCKS[spec["t"]](dim, shape[0], spec, inplace, self.relu).to(DT).eval()
            try:
                with torch.no_grad():
                    out = block(probe.clone() if probe.is_contiguous() else probe)
            except RuntimeError:  # the block does not fit this shape (kernel larger than the input, ...)
                continue
            if out.numel() == 0 or out.dim() != len(shape) + 1:
                continue
            shape, probe = tuple(out.shape[1:]), out
            blocks.append(block)
        self.blocks = nn.ModuleList(blocks)
        self.head = Head(dim, shape, recipe["head"], inplace, self.relu)
        try:
            with torch.no_grad():
                self.to(DT).eval()(torch.zeros(2, recipe["cin"], *recipe["size"][:dim], dtype=DT))
        except RuntimeError:  # x.view on a non-contiguous permuted tensor: the model itself is invalid
            self.head.spec = {**recipe["head"], "form": "reshape"}

    def forward(self, x):
        if self.bn_in is not None:
            x = self.bn_in(x)
        if self.stem is not None:
            x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def randomize_batchnorm(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                c = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=gen))
                sign = torch.where(torch.rand(c, generator=gen) < 0.15, -1.0, 1.0)
                m.weight.copy_(sign * (0.5 + torch.rand(c, generator=gen)))
                m.bias.copy_(0.3 * torch.randn(c, generator=gen))


def build_model(recipe: Dict[str, Any], inplace: bool = True, dtype=DT) -> FuzzNet:
    """The model of ``recipe`` with parameters drawn from ``recipe['seed']`` (global RNG untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        model = FuzzNet(recipe, inplace).to(DT)
    randomize_batchnorm(model, recipe["seed"] + 1)
    return model.to(dtype).eval()


def make_input(recipe: Dict[str, Any], dtype=DT) -> torch.Tensor:
    gen = torch.Generator().manual_seed(recipe["seed"] + 2)
    dim = recipe["dim"]
    shape = (2, recipe["cin"]) + (tuple(recipe["size"][:dim]) if dim else ())
    return torch.randn(*shape, generator=gen, dtype=DT).clamp(-3, 3).to(dtype)


def target_of(recipe: Dict[str, Any], model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The recipe's explicit targets, an initial relevance shaped like the output ("float"), or the argmax."""
    if recipe["target"] == "float":
        gen = torch.Generator().manual_seed(recipe["seed"] + 3)
        return torch.randn(2, recipe["head"]["classes"], generator=gen, dtype=DT).to(x.dtype)
    if recipe["target"] is not None:
        classes = recipe["head"]["classes"]
        return torch.tensor([t % classes for t in recipe["target"]])
    with torch.no_grad():
        return model(x).argmax(1)


# ---- hypothesis strategies ------------------------------------------------------------------------------------
def _acts(relu_only: bool):
    return st.sampled_from(RELU_ACTS if relu_only else RELU_ACTS + OTHER_ACTS)


def block_specs(relu_only: bool):
    act = _acts(relu_only)
    chans = st.integers(2, 6)
    conv = st.fixed_dictionaries({"t": st.just("conv"), "c": chans, "k": st.integers(1, 3), "s": st.integers(1, 2),
                                  "p": st.integers(0, 1), "bias": st.booleans(), "bn": st.booleans(), "act": act,
                                  "g": st.sampled_from([1, 1, 2]), "d": st.sampled_from([1, 1, 2]),
                                  "pm": st.sampled_from(["zeros", "zeros", "zeros", "same", "reflect", "circular",
                                                         "replicate"])})
    pool = st.fixed_dictionaries({"t": st.just("pool"), "kind": st.sampled_from(["max", "avg", "amax", "aavg"]),
                                  "form": st.sampled_from(["module", "F"]), "k": st.integers(2, 3),
                                  "s": st.sampled_from([None, 1, 2]), "p": st.integers(0, 1), "ceil": st.booleans(),
                                  "cip": st.booleans(), "out": st.integers(1, 4)})
    res = st.fixed_dictionaries({"t": st.just("res"), "k": st.sampled_from([1, 3]), "bias": st.booleans(),
                                 "bn": st.booleans(), "act": act, "two": st.booleans(),
                                 "add": st.sampled_from(["+", "+=", "torch.add", ".add", ".add_;"]), "post": act})
    res3 = st.fixed_dictionaries({"t": st.just("res3"), "k": st.sampled_from([1, 3]), "bn": st.booleans(),
                                  "act": act, "form": st.sampled_from(["x+a+b", "a+b+x", "torch.add"])})
    cat = st.fixed_dictionaries({"t": st.just("cat"), "c1": st.integers(1, 4), "c2": st.integers(1, 4),
                                 "b2": st.sampled_from(["conv", "id", "pool"]), "bn_after": st.booleans(),
                                 "act": act, "post": act,
                                 "fn": st.sampled_from(["torch.cat", "torch.concat", "swap"])})
    split = st.fixed_dictionaries({"t": st.just("split"),
                                   "form": st.sampled_from(["chunk", "torch.chunk", "getitem", "split", "torch.split"]),
                                   "c1": st.integers(1, 5),
                                   "merge": st.sampled_from(["cat", "cat_swap", "add", "drop"]),
                                   "act": act, "act_b": st.sampled_from(["none", "F.relu", "x.relu"])})
    se = st.fixed_dictionaries({"t": st.just("se"), "pool": st.sampled_from(["module", "mean", "F"]),
                                "hidden": st.sampled_from([0, 3]), "gate": st.sampled_from(["module", "torch"]),
                                "mul": st.sampled_from(["*", "torch.mul"])})
    reuse = st.fixed_dictionaries({"t": st.just("reuse"), "k": st.sampled_from([1, 3]),
                                   "bn": st.sampled_from(["none", "separate", "shared"]), "act": act})
    perm = st.fixed_dictionaries({"t": st.just("perm"), "form": st.sampled_from(["swap", "linear"]), "c": chans,
                                  "act": act, "how": st.sampled_from(["permute", "torch.permute", "transpose"])})
    view = st.fixed_dictionaries({"t": st.just("view"), "form": st.sampled_from(["view", "reshape", "flatten"])})
    # interpolation other than nearest mixes neighbours: LRP-0 (Structural there) is then not gradient x input
    pad_forms = ["zero_module", "const_module", "reflect_module", "upsample", "F.pad", "nearest"]
    pad = st.fixed_dictionaries({"t": st.just("pad"),
                                 "form": st.sampled_from(pad_forms if relu_only else pad_forms + ["linear", "bicubic"]),
                                 "value": st.sampled_from([0.0, 0.5, -0.5]), "c": chans, "act": act,
                                 "pre": st.sampled_from(["F.relu", "ReLU", "none"])})
    preact = st.fixed_dictionaries({"t": st.just("preact"), "k": st.sampled_from([1, 3]),
                                    "form": st.sampled_from(["F.relu_", "x.relu_"])})
    arith = st.fixed_dictionaries({"t": st.just("arith"),
                                   "form": st.sampled_from(["x*c", "c*x", "x/c", "-x", "x+c", "c-x", "x-conv",
                                                            "torch.sub"]),
                                   "value": st.sampled_from([0.5, -2.0, 3.0])})
    # draw the block type first (uniformly over a weighted list; shrinks towards a plain conv), then its spec
    options = {"conv": conv, "pool": pool, "res": res, "res3": res3, "cat": cat, "split": split, "reuse": reuse,
               "perm": perm, "view": view, "se": se, "pad": pad, "arith": arith, "preact": preact}
    kinds = ["conv", "cat", "pool", "res", "split", "res3", "view", "reuse", "perm", "conv", "pad", "arith", "cat",
             "preact", "pool", "res"]
    if not relu_only:
        kinds += ["se"]
    return st.sampled_from(kinds).flatmap(lambda k: options[k])


def recipes(relu_only: bool = False, max_blocks: int = 5):
    act = _acts(relu_only)
    head = st.fixed_dictionaries({
        "reduce": st.sampled_from(["flatten", "gap", "gmp"]),
        "form": st.sampled_from(["nn.Flatten", "view", "reshape", "torch.flatten", "x.flatten", "module", "mean",
                                 "sum"]),
        "hidden": st.sampled_from([0, 0, 5]), "hbn": st.booleans(), "hact": act, "drop": st.booleans(),
        "classes": st.integers(3, 5)})
    return st.fixed_dictionaries({
        "dim": st.sampled_from([2, 2, 1, 0]),
        "cin": st.integers(2, 6),
        "size": st.tuples(st.integers(6, 10), st.integers(6, 10)),
        "bn_in": st.booleans(),
        "stem": st.sampled_from([0, 3, 4]),
        "shared_inplace": st.booleans(),
        "blocks": st.lists(block_specs(relu_only), min_size=2, max_size=max_blocks),
        "head": head,
        "target": st.one_of(st.none(), st.tuples(st.integers(0, 4), st.integers(0, 4)), st.just("float")),
        "seed": st.integers(0, 2 ** 16),
    })


# =============================================================================================================
# helpers for the checks
# =============================================================================================================
def grad_times_input(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """x · ∂(target logit)/∂x; for an initial relevance R0 (float target) x · ∂(Σ out · (R0/out)|const)/∂x,
    which LRP-0 started from R0 equals."""
    x = x.detach().clone().requires_grad_(True)
    out = model(x)
    if target.is_floating_point():
        objective = (out * (target / out).detach()).sum()
    else:
        objective = out.gather(1, target[:, None]).sum()
    (g,) = torch.autograd.grad(objective, x)
    return (g * x).detach()


def start_relevance(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample total of the initial relevance: the target logit, or the float target's sum."""
    if target.is_floating_point():
        return target.sum(1)
    return output.gather(1, target[:, None])[:, 0]


def assert_close(actual, expected, rtol, what=""):
    """Elementwise ``rtol`` with ``atol = rtol * max|expected|`` (relevances are sums with cancellation)."""
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-300,
                               msg=lambda m: f"{what}: {m}")


def assert_same_output(output: torch.Tensor, model: nn.Module, x: torch.Tensor) -> None:
    """The program's forward computes what the model computes (on a copy: the model may work in place)."""
    with torch.no_grad():
        expected = model(x.clone())
    torch.testing.assert_close(output, expected, rtol=1e-12, atol=1e-12,
                               msg=lambda m: f"the program's output differs from the model's: {m}")


def intermediate_keys(model: nn.Module, x: torch.Tensor) -> Dict[str, str]:
    """node name -> the key lrpfx's ``Explanation.intermediate`` uses for it: the module's qualified name for a
    module called once, else the node name (README) — and the node name wherever a qualified name would collide
    with another node's name (module ``relu`` and the node ``relu`` of an ``F.relu`` call)."""
    ref = sref.Reference(model)
    with torch.no_grad():
        _, active, _ = ref.forward(x)
    nodes = [n for n in ref.nodes if n in active]
    label = {n.name: (n.target if n.op == "call_module" else n.name) for n in nodes}
    counts: Dict[str, int] = {}
    for v in label.values():
        counts[v] = counts.get(v, 0) + 1
    return {name: (v if counts[v] == 1 else name) for name, v in label.items()}


def dominators(model: nn.Module, x: torch.Tensor) -> List[str]:
    """Names of the activation nodes that every input-to-output path passes through (input and output included)."""
    ref = sref.Reference(model)
    with torch.no_grad():
        _, active, out = ref.forward(x)
    nodes = [n for n in ref.nodes if n in active]
    placeholder = nodes[0]

    def reaches_output(removed):
        seen, stack = {placeholder}, [placeholder]
        while stack:
            n = stack.pop()
            if n is out:
                return True
            for u in n.users:
                if u in active and u is not removed and u not in seen:
                    seen.add(u)
                    stack.append(u)
        return False

    return [n.name for n in nodes if n is placeholder or n is out or not reaches_output(n)]


def per_sample(r) -> torch.Tensor:
    if isinstance(r, (tuple, list)):
        return sum(per_sample(t) for t in r)
    return r.reshape(r.shape[0], -1).sum(1)


def folded_affine_nodes(model: nn.Module) -> set:
    """Conv/linear node names whose BatchNorm folds into them (lrpfx reports them under the BatchNorm)."""
    gm = sref.Reference(model).gm
    out = set()
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), (nn.BatchNorm1d, nn.BatchNorm2d)):
            p = n.args[0]
            if isinstance(p, fx.Node) and p.op == "call_module" and len(p.users) == 1 and isinstance(
                    gm.get_submodule(p.target), (nn.Conv1d, nn.Conv2d, nn.Linear)):
                out.add(p.name)
    return out


# =============================================================================================================
# the properties
# =============================================================================================================
def check_lrp0_gradient(recipe):
    model = build_model(recipe)
    twin = build_model(recipe, inplace=False)
    twin.load_state_dict(model.state_dict())
    x = make_input(recipe)
    target = target_of(recipe, twin, x)
    with torch.no_grad():
        torch.testing.assert_close(model(x.clone()), twin(x), rtol=1e-12, atol=1e-12)
    expected = grad_times_input(twin, x, target)
    x_before = x.clone()
    e = lrpfx.Explainer(model, LRP0)(x, target=target)
    assert torch.equal(x, x_before), "the explainer changed its input"
    assert_same_output(e.output, model, x)
    actual = e.relevance
    assert_close(actual, expected, 1e-8, "LRP-0 vs gradient x input")


def check_conservation(recipe):
    model = build_model(recipe)
    x = make_input(recipe)
    target = target_of(recipe, model, x)
    e = lrpfx.Explainer(model, LRP0_ZERO_BIAS)(x, target=target, intermediate=True)
    assert_same_output(e.output, model, x)
    logit = start_relevance(e.output, target)
    # LRP-0 drops relevance by definition where a layer's bias-free output z' is exactly 0 but relevance arrives
    # (0/0 := 0; a dead receptive field under a positive bias), and a constant summand (``x + c``, a padding value)
    # keeps its share. The slow reference with the same composite says where that happens: at a node where its
    # sum is the initial relevance, lrpfx's must be too; elsewhere lrpfx's sum must be the reference's.
    _, _, ref_nodes = sref.reference_relevance(model, x, "lrp0-zero-bias", target)
    keys = intermediate_keys(model, x)
    folded = folded_affine_nodes(model)
    checked = 0
    for name in dominators(model, x):
        if name in folded:
            continue
        key = keys[name]
        assert key in e.intermediate, (key, list(e.intermediate))
        r = e.intermediate[key]
        s = per_sample(r)
        mag = per_sample(r.abs() if isinstance(r, torch.Tensor) else torch.cat([t.abs().flatten(1) for t in r], 1))
        atol = float(1e-9 * (mag + logit.abs()).max()) + 1e-300
        ref_s = per_sample(ref_nodes[name]) if name in ref_nodes else torch.zeros_like(logit)
        lossless = bool(((ref_s - logit).abs() <= atol).all())
        expected = logit if lossless else ref_s
        torch.testing.assert_close(s, expected, rtol=0, atol=atol,
                                   msg=lambda m: f"conservation at {key} (lossless={lossless}): {m}")
        checked += 1
    assert checked >= 2  # at least the input and the output
    torch.testing.assert_close(e.relevance, e.intermediate["x"], rtol=0, atol=0)


def check_reference(recipe, presets=("epsilon-plus-flat", "epsilon-gamma-box")):
    model = build_model(recipe)
    x = make_input(recipe)
    target = target_of(recipe, model, x)
    keys = intermediate_keys(model, x)
    folded = folded_affine_nodes(model)
    ref = sref.Reference(model)
    for preset in presets:
        e = lrpfx.Explainer(model, preset)(x, target=target, intermediate=True)
        assert_same_output(e.output, model, x)
        r_ref, out_ref, per_node = ref.relevance(x, sref.composite(preset), target)
        torch.testing.assert_close(e.output, out_ref, rtol=1e-12, atol=1e-12)
        assert_close(e.relevance, r_ref, 1e-8, f"{preset}: input relevance")
        for name, r in per_node.items():
            if name in folded:
                continue
            key = keys[name]
            assert key in e.intermediate, (preset, key, list(e.intermediate))
            got = e.intermediate[key]
            if isinstance(r, list):
                assert len(got) == len(r)
                for i, (g, t) in enumerate(zip(got, r)):
                    assert_close(g, t, 1e-8, f"{preset}: relevance at {key}[{i}]")
            else:
                assert_close(got, r, 1e-8, f"{preset}: relevance at {key}")


@fuzz_settings(70)
@given(recipes(relu_only=True))
def test_lrp0_equals_gradient_times_input(recipe):
    check_lrp0_gradient(recipe)


@fuzz_settings(70)
@given(recipes())
def test_conservation_with_zero_bias(recipe):
    check_conservation(recipe)


@fuzz_settings(60)
@given(recipes())
def test_presets_equal_slow_reference(recipe):
    check_reference(recipe)


@pytest.mark.slow
@settings(max_examples=3 if PROFILE == "ci" else 12, derandomize=True, deadline=None, database=None,
          phases=PHASES, suppress_health_check=[HealthCheck.too_slow])
@given(recipes(max_blocks=2))
def test_compiled_equals_eager(recipe):
    model = build_model(recipe, dtype=torch.float32)
    x = make_input(recipe, dtype=torch.float32)
    target = target_of(recipe, model, x)
    for preset in ("epsilon-gamma-box",):
        eager = lrpfx.Explainer(model, preset)(x, target=target).relevance
        compiled = lrpfx.Explainer(model, preset, compile=True)(x, target=target).relevance
        assert_close(compiled, eager, 1e-4, f"{preset}: compiled vs eager")


# =============================================================================================================
# the slow reference checks itself where the answer is known
# =============================================================================================================
def test_slow_reference_lrp0_is_gradient_times_input():
    recipe = {"dim": 2, "cin": 3, "size": (8, 7), "bn_in": True, "stem": 0, "shared_inplace": False, "seed": 5,
              "blocks": [{"t": "conv", "c": 4, "k": 3, "s": 1, "p": 1, "bias": True, "bn": True, "act": "ReLU"},
                         {"t": "res", "k": 3, "bias": True, "bn": True, "act": "F.relu", "two": True, "add": "+",
                          "post": "none"},
                         {"t": "pool", "kind": "avg", "form": "F", "k": 2, "s": None, "p": 0, "ceil": False,
                          "cip": True, "out": 1}],
              "head": {"reduce": "flatten", "form": "view", "hidden": 5, "hbn": True, "hact": "ReLU", "drop": False,
                       "classes": 4},
              "target": None}
    model = build_model(recipe, inplace=False)
    x = make_input(recipe)
    target = target_of(recipe, model, x)
    r, _, _ = sref.reference_relevance(model, x, "lrp0", target)
    assert_close(r, grad_times_input(model, x, target), 1e-10, "slow reference LRP-0")


# =============================================================================================================
# shrunk counterexamples, kept as plain regression tests
# =============================================================================================================
_HEAD = {"reduce": "flatten", "form": "nn.Flatten", "hidden": 0, "hbn": False, "hact": "ReLU", "drop": False,
         "classes": 3}


def test_regression_inplace_relu_on_an_aliased_tensor():
    """lrpfx bug, fixed in b1af22d (found by test_lrp0_equals_gradient_times_input, shrunk). ``identity = x; F.relu(x,
    inplace=True)`` clobbers ``identity`` as well. The program runs the ReLU out of place but ``conv1(y) +
    identity`` still reads the original node, so the program computes another function than the model: its output
    differs, and so does every relevance."""
    recipe = {"dim": 2, "cin": 2, "size": (6, 6), "bn_in": False, "stem": 0, "shared_inplace": False,
              "blocks": [{"t": "view", "form": "view"}, {"t": "preact", "k": 1, "form": "F.relu_"}],
              "head": _HEAD, "target": None, "seed": 0}
    check_lrp0_gradient(recipe)


def test_regression_inplace_relu_on_an_aliased_tensor_minimal():
    class PreAct(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.c1 = nn.Linear(4, 4), nn.Linear(4, 4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            x = self.c0(x)
            identity = x
            y = F.relu(x, inplace=True)  # clobbers identity too
            return self.fc(self.c1(y) + identity)

    torch.manual_seed(0)
    model = PreAct().to(DT).eval()
    x = torch.randn(2, 4, dtype=DT)
    e = lrpfx.Explainer(model, "epsilon")(x, target=0)
    assert_same_output(e.output, model, x)


def test_regression_negative_constant_padding_is_not_nonnegative():
    """lrpfx bug, fixed in b1af22d (found by test_presets_equal_slow_reference, shrunk). mark_nonnegative treated every
    structural op as preserving ``x >= 0``, but constant padding with a negative value (and bicubic or other
    interpolation that overshoots) produces negative entries from a ReLU output. The next ZPlus/Gamma/AlphaBeta step
    then takes its ``x_nonneg`` shortcut and drops the ``x⁻`` terms: epsilon-plus-flat differs from the reference by
    up to 20x elementwise."""
    recipe = {"dim": 2, "cin": 2, "size": (6, 6), "bn_in": False, "stem": 3, "shared_inplace": False,
              "blocks": [{"t": "pad", "form": "const_module", "value": -0.5, "c": 2, "act": "ReLU", "pre": "F.relu"},
                         {"t": "conv", "c": 2, "k": 1, "s": 1, "p": 0, "bias": False, "bn": False, "act": "ReLU"}],
              "head": _HEAD, "target": None, "seed": 0}
    check_reference(recipe)


@pytest.mark.parametrize("form", ["F.pad", "bicubic"])
def test_regression_structural_ops_that_create_negatives(form):
    """Same bug through ``F.pad(..., value=-0.5)`` and ``F.interpolate(mode="bicubic")`` of a ReLU output."""
    recipe = {"dim": 2, "cin": 2, "size": (6, 6), "bn_in": False, "stem": 3, "shared_inplace": False,
              "blocks": [{"t": "pad", "form": form, "value": -0.5, "c": 2, "act": "ReLU", "pre": "none"},
                         {"t": "conv", "c": 2, "k": 1, "s": 1, "p": 0, "bias": False, "bn": False, "act": "ReLU"}],
              "head": _HEAD, "target": None, "seed": 0}
    check_reference(recipe)


class _ChunkPieceInPlace(nn.Module):
    """``a, b = x.chunk(2, 1); a.relu_()`` changes ``x`` too, and ``x`` is read again."""

    def __init__(self):
        super().__init__()
        self.c0, self.fc = nn.Linear(4, 4), nn.Linear(6, 3)

    def forward(self, x):
        x = self.c0(x)
        a, b = x.chunk(2, 1)
        a.relu_()
        return self.fc(torch.cat([x, b], 1))


class _ViewOfViewInPlace(nn.Module):
    """``z = x.view(...)[:, 0]; z.relu_()`` changes ``x`` (two views up), and ``x`` is read again."""

    def __init__(self):
        super().__init__()
        self.c0, self.fc = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        x = self.c0(x)
        y = x.view(x.shape[0], 2, 2)
        z = y[:, 0]
        z.relu_()
        return self.fc(x)


@pytest.mark.parametrize("make", [_ChunkPieceInPlace, _ViewOfViewInPlace], ids=["chunk-piece", "view-of-view"])
def test_regression_inplace_on_a_view_whose_base_is_read_again(make):
    """lrpfx bug: trace.functionalize_inplace refuses an in-place op on a view whose base is read again only when
    the view is one direct view op away from that base. A piece of ``chunk``/``split`` (a getitem of a tuple-valued
    view op) or a view of a view slips through: the program runs the op out of place, the later read of the base
    sees the unchanged values, and lrpfx silently explains another function (its output differs from the model's).
    Either refusing (UnsupportedOpError) or explaining the model's own function is fine."""
    torch.manual_seed(0)
    model = make().to(DT).eval()
    x = torch.randn(2, 4, dtype=DT)
    try:
        e = lrpfx.Explainer(model, "epsilon")(x, target=0)
    except lrpfx.UnsupportedOpError:
        return
    assert_same_output(e.output, model, x)


def test_regression_statement_form_inplace_op_is_kept():
    """lrpfx bug (found by test_lrp0_equals_gradient_times_input, shrunk). ``x.relu_()`` as a statement (result
    discarded, ``x`` itself changes) is removed by ``trace._select_output``'s dead-code elimination before
    ``functionalize_inplace`` can rewire the later reads of ``x`` to it: the program silently leaves the ReLU out
    (the rule table has no ReLU row) and explains another function."""
    recipe = {"dim": 2, "cin": 2, "size": (6, 6), "bn_in": False, "stem": 0, "shared_inplace": False,
              "blocks": [{"t": "conv", "c": 2, "k": 1, "s": 1, "p": 0, "bias": False, "bn": False, "act": "ReLU",
                          "g": 1, "d": 1, "pm": "zeros"},
                         {"t": "split", "form": "chunk", "c1": 1, "merge": "cat", "act": "x.relu_;",
                          "act_b": "none"}],
              "head": _HEAD, "target": None, "seed": 0}
    check_lrp0_gradient(recipe)


def test_regression_statement_form_inplace_op_is_kept_minimal():
    class Statement(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0, self.fc = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            x = self.c0(x)
            x.relu_()
            return self.fc(x)

    torch.manual_seed(0)
    model = Statement().to(DT).eval()
    x = torch.randn(2, 4, dtype=DT)
    e = lrpfx.Explainer(model, "epsilon")(x, target=0)
    assert_same_output(e.output, model, x)
