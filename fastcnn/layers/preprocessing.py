"""Rescaling (Keras's ``keras.layers.Rescaling``): ``y = x * scale + offset``.

An elementwise affine map in NumPy at the layer level (memory-bound; runs unchanged on
every backend). Typical use: ``Rescaling(1 / 255)`` as the first layer, so the model takes
raw pixel values.
"""
from __future__ import annotations

import math
import numbers

from .base import Layer


def _finite_number(value, argument):
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(float(value))):
        raise ValueError(f"{argument} must be a finite number, got {value!r}")
    return float(value)


class Rescaling(Layer):
    """Multiplies by ``scale`` and adds ``offset`` (scalars), in the model's dtype."""

    def __init__(self, scale, offset=0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _finite_number(scale, "scale")
        self.offset = _finite_number(offset, "offset")

    def _build(self, input_shape, dtype):
        return input_shape

    def forward(self, x, training=False):
        # Python floats: a float32 x stays float32 (NumPy 2 scalar promotion).
        y = x * self.scale
        if self.offset != 0.0:
            y += self.offset
        return y, None

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        return dy * self.scale, ()

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}
