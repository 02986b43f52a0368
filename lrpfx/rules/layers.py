"""Layer specs: the static description of an affine node (which op, strides, padding, ...).

A spec knows how to run its layer forward with given (possibly modified) weights and how to apply the
transposed layer (the vector-Jacobian product with respect to the input). Specs are NamedTuples so that the
program's generated code prints them as constructor calls (``Conv(2, (1, 1), ...)``) that can be read and
re-evaluated.

Relevance tensors may carry one extra leading axis (several targets explained at once, ``[K, B, ...]``) while
the layer's input has shape ``[B, ...]``; the transposes fold that axis into the batch.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
import torch.nn.functional as F

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_CONV_INPUT_GRAD = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input, 3: torch.nn.grad.conv3d_input}


def _vjp(fn, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    _, pullback = torch.func.vjp(fn, x)
    return pullback(s)[0]


def _per_target(transpose):
    """Let a batch-first transpose accept ``s`` with an extra leading target axis ``[K, B, ...]``."""

    def wrapped(self, s, w, x_shape):
        if s.dim() == len(x_shape):
            return transpose(self, s, w, x_shape)
        k, b = s.shape[0], s.shape[1]
        out = transpose(self, s.flatten(0, 1), w, (k * b, *x_shape[1:]))
        return out.unflatten(0, (k, b))

    wrapped.__doc__ = transpose.__doc__
    return wrapped


class Linear(NamedTuple):
    """``F.linear``; the channel axis is the last one."""

    def forward(self, x, w, b=None):
        return F.linear(x, w, b)

    def transpose(self, s, w, x_shape):
        return s @ w

    def bias_view(self, b):
        return b


class Conv(NamedTuple):
    """``F.conv{dim}d`` with explicit integer padding (``'same'`` is resolved when the spec is built)."""

    dim: int
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int
    padding_mode: str = "zeros"
    # F.pad order (last dim first, both sides) for padding modes other than zeros
    pad: Tuple[int, ...] = ()

    def forward(self, x, w, b=None):
        if self.padding_mode != "zeros":
            x = F.pad(x, self.pad, mode=self.padding_mode)
            return _CONV[self.dim](x, w, b, self.stride, 0, self.dilation, self.groups)
        return _CONV[self.dim](x, w, b, self.stride, self.padding, self.dilation, self.groups)

    @_per_target
    def transpose(self, s, w, x_shape):
        if self.padding_mode != "zeros":
            return _vjp(lambda t: self.forward(t, w), torch.zeros(x_shape, dtype=s.dtype, device=s.device), s)
        return _CONV_INPUT_GRAD[self.dim](x_shape, w, s, self.stride, self.padding, self.dilation, self.groups)

    def bias_view(self, b):
        return b.view(-1, *([1] * self.dim))


class ConvTranspose(NamedTuple):
    """``F.conv_transpose{dim}d``; its transpose is the ordinary convolution with the same weight."""

    dim: int
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    output_padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int

    def forward(self, x, w, b=None):
        return _CONV_T[self.dim](x, w, b, self.stride, self.padding, self.output_padding, self.groups, self.dilation)

    @_per_target
    def transpose(self, s, w, x_shape):
        out = _CONV[self.dim](s, w, None, self.stride, self.padding, self.dilation, self.groups)
        # with output_padding >= stride (allowed when dilation > 1) the adjoint has extra trailing positions
        # that belong to no input: crop them
        return out[(Ellipsis, *[slice(0, n) for n in x_shape[2:]])]

    def bias_view(self, b):
        return b.view(-1, *([1] * self.dim))


class ChannelAffine(NamedTuple):
    """An unfolded BatchNorm seen as an elementwise affine map ``x * w + b`` along channel axis 1."""

    ndim: int

    def _view(self, t):
        return t.view(-1, *([1] * (self.ndim - 2)))

    def forward(self, x, w, b=None):
        out = x * self._view(w)
        return out if b is None else out + self._view(b)

    def transpose(self, s, w, x_shape):
        return s * self._view(w)

    def bias_view(self, b):
        return self._view(b)


_AVG_POOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_ADAPTIVE_AVG_POOL = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_ADAPTIVE_MAX_POOL = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}


class AvgPool(NamedTuple):
    """``F.avg_pool{dim}d``: a fixed non-negative linear map (no parameters); its transpose is PyTorch's
    average-pooling backward kernel, which only needs the input's shape."""

    dim: int
    kernel_size: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: object = None

    def forward(self, x, w=None, b=None):
        if self.dim == 1:
            return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return _AVG_POOL[self.dim](x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                   self.count_include_pad, self.divisor_override)

    @_per_target
    def transpose(self, s, w, x_shape):
        if self.dim == 1:
            spec = AvgPool(2, (1, *self.kernel_size), (1, *self.stride), (0, *self.padding), self.ceil_mode,
                           self.count_include_pad, self.divisor_override)
            return spec.transpose(s.unsqueeze(-2), w, (*x_shape[:-1], 1, x_shape[-1])).squeeze(-2)
        backward = torch.ops.aten.avg_pool2d_backward if self.dim == 2 else torch.ops.aten.avg_pool3d_backward
        return backward(s, s.new_empty(x_shape), list(self.kernel_size), list(self.stride), list(self.padding),
                        self.ceil_mode, self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool(NamedTuple):
    """``F.adaptive_avg_pool{dim}d`` as a fixed linear map; transposed by PyTorch's backward kernel."""

    dim: int
    output_size: Tuple

    def forward(self, x, w=None, b=None):
        return _ADAPTIVE_AVG_POOL[self.dim](x, self.output_size)

    @_per_target
    def transpose(self, s, w, x_shape):
        if self.dim == 1:
            return torch.ops.aten._adaptive_avg_pool2d_backward(
                s.unsqueeze(-2), s.new_empty((*x_shape[:-1], 1, x_shape[-1]))).squeeze(-2)
        backward = (torch.ops.aten._adaptive_avg_pool2d_backward if self.dim == 2
                    else torch.ops.aten._adaptive_avg_pool3d_backward)
        return backward(s, s.new_empty(x_shape))


class MaxPool(NamedTuple):
    """``F.max_pool{dim}d`` (``adaptive=True``: ``F.adaptive_max_pool{dim}d`` with ``kernel_size`` the output
    size). ``winners`` gives, per output element, the flat spatial index of the input element it took."""

    dim: int
    kernel_size: Tuple
    stride: Tuple = ()
    padding: Tuple = ()
    dilation: Tuple = ()
    ceil_mode: bool = False
    adaptive: bool = False

    def winners(self, x):
        return self.pool_with_winners(x)[1]

    def pool_with_winners(self, x):
        """``(values, indices)``: the pooled values and the flat spatial index of each one's input element."""
        if self.adaptive:
            return _ADAPTIVE_MAX_POOL[self.dim](x, self.kernel_size, return_indices=True)
        return _MAX_POOL[self.dim](x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode,
                                   return_indices=True)
