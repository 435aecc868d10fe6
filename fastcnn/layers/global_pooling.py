"""GlobalAveragePooling2D and GlobalMaxPooling2D: (N, H, W, C) -> (N, C).

Written in NumPy at the layer level: one reduction over H*W per channel, bound by memory
traffic, so the layers run unchanged (and identically) on every backend.
"""
from __future__ import annotations

import numpy as np

from .base import Layer
from .conv import check_data_format, check_rank4


class _GlobalPooling2D(Layer):
    def __init__(self, *, data_format=None, keepdims=False, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.keepdims = bool(keepdims)

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, type(self).__name__)
        n, h, w, c = input_shape   # any height and width (None: known per call)
        return (n, 1, 1, c) if self.keepdims else (n, c)

    def get_config(self):
        return {**super().get_config(), "keepdims": self.keepdims}


class GlobalAveragePooling2D(_GlobalPooling2D):
    """The mean of each feature map."""

    def forward(self, x, training=False):
        return x.mean(axis=(1, 2), keepdims=self.keepdims), x.shape

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        shape = ctx
        n, h, w, c = shape
        # Every position of a map gets an equal share of its output's gradient.
        share = dy.reshape(n, 1, 1, c) * (1.0 / (h * w))
        return np.ascontiguousarray(np.broadcast_to(share, shape)), ()


class GlobalMaxPooling2D(_GlobalPooling2D):
    """The max of each feature map; the FIRST maximum (row-major) takes the gradient."""

    def forward(self, x, training=False):
        n, h, w, c = x.shape
        flat = x.reshape(n, h * w, c)
        # argmax returns the first maximum: the contract's tie rule.
        idx = flat.argmax(axis=1)                                   # (n, c)
        y = np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0, :]
        return (y.reshape(n, 1, 1, c) if self.keepdims else y), (idx, x.shape)

    def backward(self, dy, ctx, need_dx=True):
        idx, shape = ctx
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        n, h, w, c = shape
        dx = np.zeros((n, h * w, c), dtype=dy.dtype)
        np.put_along_axis(dx, idx[:, None, :], dy.reshape(n, 1, c), axis=1)
        return dx.reshape(shape), ()
