"""Rewrites of a model's layer sequence that change no result, only the work done.

A model runs a list of *steps*: its layers, except where a pattern below lets two of them
run cheaper together. A step has the layer protocol's ``forward(x, training)`` and
``backward(dy, need_dx)``; the layers inside keep their weights, gradients and names, so
nothing outside the model's step loop can tell the difference.

* **ReLU, then max pooling** (``Conv2D(..., activation='relu')``, ``Dense(...,
  activation='relu')`` or ``Activation('relu')``, followed by ``MaxPooling2D``): ReLU is
  non-decreasing, so it commutes with a maximum, ``maxpool(relu(z)) == relu(maxpool(z))``,
  and runs on the pooled tensor, a quarter of the size for 2x2 pools (for a 64x26x26x64
  conv output: 2.8M values forward and backward become 0.7M). The gradients are the same
  too: max pooling sends a window's gradient to its first maximum; where that maximum is
  positive it is the first maximum of ``relu(z)`` as well, and where it is not, ReLU's
  derivative (0 at and below 0) zeroes the gradient in both orders. Padded windows take
  only real values (-inf padding), so this holds for every pool size, stride and padding.
  When the producer is a Conv2D and the backend has the fused op
  ``conv2d_maxpool2d_forward`` (fastcnn.backends), the conv and the pool run as one kernel
  too: the conv output never reaches memory. The layers still run their own backwards,
  on the contexts the fused op returns.
"""
from __future__ import annotations

from .. import activations, backends
from .conv import Conv2D
from .core import Activation
from .kernel_layer import KernelLayer
from .pooling import MaxPooling2D


class ReluAfterMaxPool:
    """``producer`` (its ReLU held back), ``pool``, then the ReLU on the pooled values."""

    def __init__(self, producer, pool):
        self.producer = producer
        self.pool = pool
        self.layers = (producer, pool)
        self._cache = None

    def forward(self, x, training=False):
        backend = backends.current()
        y = self._conv_pool(backend, x, training)
        if y is None:
            y = self.producer.forward(x, training, activate=False)
            y = self.pool.forward(y, training)
        y, ctx = activations.forward(backend, "relu", y)
        if training:
            self._cache = (backend, ctx)
        return y

    def backward(self, dy, need_dx=True):
        backend, ctx = self._cache
        self._cache = None
        dy = activations.backward(backend, "relu", dy, ctx)
        return self.producer.backward(self.pool.backward(dy), need_dx)

    def _conv_pool(self, backend, x, training):
        """The pooled conv output from the backend's fused kernel, or None."""
        conv, pool = self.producer, self.pool
        if not isinstance(conv, Conv2D):
            return None
        out = backend.conv2d_maxpool2d_forward(x, conv.kernel, conv.bias, conv.strides,
                                               conv._pad, pool.pool_size, pool.strides,
                                               pool._pad)
        if out is None:
            return None
        y, conv_ctx, pool_ctx = out
        if training:
            conv.keep_for_backward(backend, conv_ctx)
            pool.keep_for_backward(backend, pool_ctx)
        return y

    def __repr__(self):
        return f"ReluAfterMaxPool({self.producer.name!r}, {self.pool.name!r})"


def _relu_producer(layer) -> bool:
    return (isinstance(layer, (KernelLayer, Activation))
            and getattr(layer, "activation", None) == "relu")


def steps(layers) -> list:
    """The steps that run ``layers`` in order: each layer, or a fused pair in its place."""
    out, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if i + 1 < len(layers) and _relu_producer(layer) and isinstance(layers[i + 1],
                                                                          MaxPooling2D):
            out.append(ReluAfterMaxPool(layer, layers[i + 1]))
            i += 2
        else:
            out.append(layer)
            i += 1
    return out


def layers_of(step) -> tuple:
    """The model layers a step runs."""
    return getattr(step, "layers", (step,))
