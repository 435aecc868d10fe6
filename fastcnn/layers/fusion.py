"""Rewrites of a graph that change no result, only the work done.

The executor (:mod:`fastcnn.executor`) runs a graph's nodes as *steps*; :func:`plan` finds
pairs of adjacent nodes, the first feeding only the second, that run cheaper together. A
fused step has the stateless step protocol, ``forward(x, training) -> (y, ctx)`` and
``backward(dy, ctx, need_dx) -> (dx, grads)``, and runs the layers' own ``forward`` /
``backward`` (or a backend's fused kernel whose contexts those backwards take): the layers
keep their weights and names, and nothing outside the step can tell the difference.

* **ReLU, then max pooling** (``Conv2D(..., activation='relu')``, ``Dense(...,
  activation='relu')`` or ``Activation('relu')``, whose output feeds only a
  ``MaxPooling2D``): ReLU is non-decreasing, so it commutes with a maximum,
  ``maxpool(relu(z)) == relu(maxpool(z))``, and runs on the pooled tensor, a quarter of
  the size for 2x2 pools (for a 64x26x26x64 conv output: 2.8M values forward and backward
  become 0.7M). The gradients are the same too: max pooling sends a window's gradient to
  its first maximum; where that maximum is positive it is the first maximum of
  ``relu(z)`` as well, and where it is not, ReLU's derivative (0 at and below 0) zeroes
  the gradient in both orders. Padded windows take only real values (-inf padding), so
  this holds for every pool size, stride and padding. When the producer is a Conv2D and
  the backend has the fused op ``conv2d_maxpool2d_forward`` (fastcnn.backends), the conv
  and the pool run as one kernel too: the conv output never reaches memory.
"""
from __future__ import annotations

from .. import activations, backends, shapes
from .conv import Conv2D
from .core import Activation
from .kernel_layer import KernelLayer
from .pooling import MaxPooling2D


#: Activations that commute with a max AND give bitwise the same gradients in both orders:
#: piecewise linear with slopes 0 and 1 (no rounding on the kept values, and a tie created
#: by the activation only happens where its slope is 0). leaky_relu or elu also commute
#: with max, but rounding can make two different inputs equal outputs, and the gradient
#: would then land on another position of the window: not fused.
FUSABLE = ("relu", "relu6")


class ReluAfterMaxPool:
    """``producer`` (its ReLU or ReLU6 held back), ``pool``, then that activation on the
    pooled values."""

    def __init__(self, producer_node, pool_node):
        self.producer = producer_node          # graph nodes (the executor wires them)
        self.consumer = pool_node
        self.conv = producer_node.layer
        self.pool = pool_node.layer
        self.params_layer = self.conv          # whose weights the step's grads are
        self.act = self.conv.activation

    def forward(self, x, training=False):
        backend = backends.current()
        conv, pool = self.conv, self.pool
        out = None
        if isinstance(conv, Conv2D) and conv.dilation_rate == (1, 1):  # the fused kernel
            x_pad = conv._window.pad(x.shape)
            ho, wo = shapes.padded_output_shape(x.shape[1:3], conv.kernel_size, conv.strides,
                                                x_pad)
            out = backend.conv2d_maxpool2d_forward(x, conv.kernel, conv.bias, conv.strides,
                                                   x_pad, pool.pool_size, pool.strides,
                                                   pool._window.pad((None, ho, wo)))
        if out is not None:
            y, conv_ctx, pool_ctx = out
            conv_ctx = conv.op_context(backend, conv_ctx)
            pool_ctx = pool.op_context(backend, pool_ctx)
        else:
            y, conv_ctx = conv.forward(x, training, activate=False)
            y, pool_ctx = pool.forward(y, training)
        y, relu_ctx = activations.forward(backend, self.act, y)
        return y, (backend, conv_ctx, pool_ctx, relu_ctx)

    def backward(self, dy, ctx, need_dx=True):
        backend, conv_ctx, pool_ctx, relu_ctx = ctx
        dy = activations.backward(backend, self.act, dy, relu_ctx)
        dy, _ = self.pool.backward(dy, pool_ctx)
        return self.conv.backward(dy, conv_ctx, need_dx)

    def __repr__(self):
        return f"ReluAfterMaxPool({self.conv.name!r}, {self.pool.name!r})"


def _relu_producer(layer) -> bool:
    return (isinstance(layer, (KernelLayer, Activation))
            and getattr(layer, "activation", None) in FUSABLE)


def plan(nodes, consumers, keep) -> list:
    """The fused groups of ``nodes`` (topological order): a ReLU producer whose one output
    feeds exactly one node, a MaxPooling2D, and is not in ``keep`` (the ids of graph
    outputs and of nodes that must run alone)."""
    by_input = {}
    for n in nodes:
        if len(n.inputs) == 1 and isinstance(n.layer, MaxPooling2D):
            by_input[id(n.inputs[0])] = n
    groups = []
    for n in nodes:
        if len(n.outputs) != 1 or not _relu_producer(n.layer) or id(n) in keep:
            continue
        out = n.outputs[0]
        pool = by_input.get(id(out))
        if pool is None or consumers.get(id(out)) != 1 or id(out) in keep:
            continue
        groups.append(ReluAfterMaxPool(n, pool))
    return groups
