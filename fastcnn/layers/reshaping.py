"""ZeroPadding2D and Reshape (Keras's reshaping layers), NHWC.

Pure data movement, written in NumPy at the layer level: no arithmetic for a backend
kernel to speed up, so they run unchanged on every backend.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _device
from .base import Layer, format_shape
from .conv import check_data_format, check_rank4


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_padding2d(padding):
    """``((top, bottom), (left, right))`` from an int, ``(sym_h, sym_w)`` or the full form."""
    expected = ("an int, a tuple (symmetric_height_pad, symmetric_width_pad) or "
                "((top_pad, bottom_pad), (left_pad, right_pad)) of ints >= 0")
    if _is_int(padding):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            _is_int(p) for p in padding):
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p)
            for p in padding):
        pads = (tuple(padding[0]), tuple(padding[1]))
    else:
        raise ValueError(f"padding must be {expected}, got {padding!r}")
    if any(v < 0 for pair in pads for v in pair):
        raise ValueError(f"padding must not be negative: expected {expected}, got {padding!r}")
    return tuple(tuple(int(v) for v in pair) for pair in pads)


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around each image (N, H, W, C)."""

    def __init__(self, padding=(1, 1), *, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = normalize_padding2d(padding)
        check_data_format(data_format)

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "ZeroPadding2D")
        n, h, w, c = input_shape
        (top, bottom), (left, right) = self.padding
        return (n, None if h is None else h + top + bottom,
                None if w is None else w + left + right, c)

    def forward(self, x, training=False):
        n, h, w, c = x.shape
        (top, bottom), (left, right) = self.padding
        y = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
        y[:, top:top + h, left:left + w, :] = x
        return y, (h, w)

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        h, w = ctx
        (top, _), (left, _) = self.padding
        # A copy: kernels want C-contiguous input, and dx must not alias dy.
        return np.ascontiguousarray(dy[:, top:top + h, left:left + w, :]), ()

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding]}


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (batch dimension excluded; one -1 allowed)."""

    runs_on_device = True  # a reshape, which device arrays support

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        if _is_int(target_shape):
            target_shape = (target_shape,)
        if (not isinstance(target_shape, (tuple, list)) or not target_shape
                or not all(_is_int(d) and (d > 0 or d == -1) for d in target_shape)
                or sum(d == -1 for d in target_shape) > 1):
            raise ValueError(
                f"target_shape must be a non-empty tuple of positive ints with at most one "
                f"-1 (batch dimension excluded), got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target_shape)
        self._resolved = None

    def _build(self, input_shape, dtype):
        if any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"Reshape needs every non-batch input dimension known, got "
                f"{format_shape(input_shape)}")
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(
                    f"target_shape {self.target_shape} cannot hold the {size} values of input "
                    f"shape {format_shape(input_shape)}: {size} is not a multiple of {known}")
            resolved = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            if known != size:
                raise ValueError(
                    f"target_shape {self.target_shape} holds {known} values but the input "
                    f"shape {format_shape(input_shape)} has {size} per sample")
            resolved = self.target_shape
        self._resolved = resolved
        return (input_shape[0],) + resolved

    def forward(self, x, training=False):
        return x.reshape((x.shape[0],) + self._resolved), tuple(x.shape)

    def backward(self, dy, ctx, need_dx=True):
        if not _device.is_device_array(dy):  # device arrays from the kernels are contiguous
            dy = np.ascontiguousarray(dy)
        return dy.reshape(ctx), ()

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}
