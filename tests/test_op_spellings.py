"""An op is known by what it is, not by how it is spelled: torch's aliases (``torch.multiply``,
``Tensor.subtract``, ``torch.concatenate`` ...), every ATen overload of an op (``aten.conv2d.padding``,
``aten.sum.default``, ``aten.tensor_split.indices``) and ``masked_scatter``, on both front-ends.

The reference is independent of lrpfx: LRP-0 (``rule="zero"``) equals gradient × input on bias-free networks made
of affine maps, ReLUs and copies (float64).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.graph.ops import canonical_name, function_key, torch_aliases
from tests.helpers.lrp0 import assert_lrp0_is_gradient_times_input, build, randn

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


def test_aliases_are_read_from_torch_itself():
    aliases = torch_aliases()
    for alias, op in {"multiply": "mul", "subtract": "sub", "divide": "div", "true_divide": "div", "clip": "clamp",
                      "absolute": "abs", "concatenate": "cat", "swapdims": "transpose", "moveaxis": "movedim"}.items():
        assert aliases[alias] == op
    assert canonical_name("sigmoid") == "sigmoid"  # torch.sigmoid documents special.expit as its alias, not a rename
    assert function_key(torch.multiply) is torch.mul
    assert function_key(torch.ops.aten.multiply.Tensor) is torch.ops.aten.mul
    assert function_key(torch.ops.aten.conv2d.padding) is torch.ops.aten.conv2d


class Aliases(nn.Module):
    """Every op spelled by one of torch's aliases, functions and Tensor methods."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6, bias=False), nn.Linear(6, 4, bias=False)

    def forward(self, x):
        h = torch.multiply(self.a(x), 0.5).subtract(torch.relu(x).multiply(2.0))
        h = torch.true_divide(h, 3.0).divide(0.7)
        h = torch.concatenate([h, torch.negative(h)], 1).clip(min=0)
        h = torch.swapdims(h.reshape(2, 2, 6), 1, 2).moveaxis(1, 2).reshape(2, 12)
        return self.b(h[:, :6] + torch.subtract(h[:, 6:], x))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_aliases_explain_as_their_ops(frontend):
    assert_lrp0_is_gradient_times_input(build(Aliases), randn(2, 6), frontend)


class SamePadding(nn.Module):
    """String paddings (SigLIP's patch embedding), a sum over all axes and a split at a list of indices."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(2, 3, 3, padding="same", bias=False)
        self.even = nn.Conv2d(3, 3, (2, 4), padding="same", bias=False)
        self.valid = nn.Conv2d(3, 4, 2, padding="valid", bias=False)

    def forward(self, x):
        h = self.valid(torch.relu(self.even(torch.relu(self.same(x)))))  # 2x4 kernel: odd pads at the end
        parts = torch.tensor_split(h, [1, 3], dim=1)
        total = parts[0].sum() + parts[1].sum(dim=(1, 2, 3)) * 0.5  # sum over all axes: aten.sum.default
        return torch.stack([total + parts[2].sum(dim=(1, 2, 3)), total - parts[2].sum(dim=(1, 2, 3))], 1)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_overloads_string_padding_sum_of_all_axes_split_at_indices(frontend):
    model = build(SamePadding)
    x = randn(2, 2, 5, 5)
    assert_lrp0_is_gradient_times_input(model, x, frontend)
    if frontend == "export":  # the model does reach the registry as these overloads
        targets = {str(n.target) for n in torch.export.export(model, (x,)).graph.nodes}
        assert {"aten.conv2d.padding", "aten.sum.default", "aten.tensor_split.indices"} <= targets


class ImageTokens(nn.Module):
    """A vision-language model's merge: image features written into the token sequence where the mask is set."""

    def __init__(self):
        super().__init__()
        self.text, self.image = nn.Linear(4, 5, bias=False), nn.Linear(3, 5, bias=False)
        self.head = nn.Linear(5, 2, bias=False)
        self.register_buffer("slots", torch.tensor([False, True, True, False, True, False]))

    def forward(self, x):
        tokens = torch.relu(self.text(x[:, :, :4]))  # [B, 6, 5]
        features = torch.relu(self.image(x[:, :3, 4:7])).reshape(-1, 5)  # [B*3, 5]
        mask = self.slots[None, :, None].expand_as(tokens)
        merged = tokens.masked_scatter(mask, features)
        merged = merged + torch.masked_scatter(tokens, ~mask, merged * 0.5)
        return self.head(merged).sum(1)


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_masked_scatter_is_a_copy(frontend):
    model = build(ImageTokens)
    x = randn(2, 6, 7)
    assert_lrp0_is_gradient_times_input(model, x, frontend)
    # relevance reaches both the kept tokens and the written image features
    target = torch.tensor([0, 1])
    relevance = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target).relevance
    assert relevance[:, :, :4].abs().sum() > 0 and relevance[:, :3, 4:7].abs().sum() > 0
