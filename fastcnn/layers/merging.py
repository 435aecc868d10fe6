"""Keras's merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate.

A merge layer takes a LIST of inputs (``multiple_inputs = True``): ``_build`` receives a list
of shapes (batch first, None allowed) and returns the output shape, ``forward(inputs,
training) -> (y, ctx)`` a list of arrays, and ``backward(dy, ctx, need_dx) -> (dxs, ())``
returns one gradient per input (the layers have no weights). Nothing is kept on the layer.

Shapes, as Keras 3 (keras/src/layers/merging/base_merge.py, concatenate.py):

* every merge needs at least 2 inputs (Keras 3.15 also accepts 1; fastcnn refuses it, as
  Keras 2 did: merging one tensor is almost always a mistake), Subtract exactly 2;
* known batch sizes must agree;
* element-wise merges broadcast Keras's way: the shapes without the batch dimension are
  aligned on their LAST dimension (a shorter one gets 1s inserted right after the batch
  dimension), and two dimensions must be equal unless one of them is 1 or None; the output
  dimension is the other one, or None where either is None
  (``Merge._compute_elemwise_op_output_shape``);
* Concatenate needs inputs of one rank whose known dimensions agree everywhere except on
  ``axis``; the output's ``axis`` dimension is the sum (None if one is unknown), the other
  dimensions the known value (Keras would take the first input's, None included).

An error names the rule broken and every input shape; ``build`` (the base class) and
``compute_output_shape`` put the layer's name and class in front of it.

Gradients (``backward``):

* Add: ``dy`` for every input; the SAME array object (``dy`` itself, the op is the identity)
  is returned for every input whose shape is the output's, so the graph executor may
  receive one array several times and sums them into new arrays (nobody writes into a
  gradient in place);
* Subtract: ``dy`` for the first input, ``-dy`` (a new array) for the second;
* Average: ``dy / n``, computed once: the same new array for every input of the output's
  shape;
* Multiply: ``dy`` times the product of the other inputs, through TensorFlow's chain of
  binary products (``((x0 * x1) * x2) ...``, the same multiplications in the same order as
  ``tf.GradientTape`` on Keras's ``Multiply``): no division, so exact zeros are fine;
* Maximum / Minimum: the whole ``dy`` goes to the FIRST input (in list order) that holds the
  extreme, the others get 0. That is what TensorFlow gives for Keras's chain of
  ``tf.maximum`` (whose gradient sends a tie to its first argument: ``x >= y`` selects x;
  ``x <= y`` for tf.minimum), and the rule of fastcnn's max pooling;
* Concatenate: each input gets its slice of ``dy`` (a C-contiguous copy);
* where an input was broadcast, its gradient is summed back to the input's shape.

Devices: Add, Subtract, Average and Multiply of inputs of one fully known shape (apart from
the batch dimension) compute with :mod:`fastcnn._device`'s ``add_scaled`` / ``multiply``,
which run on the device for device arrays: such a layer sets ``runs_on_device = True`` when
it is built. On the device Average multiplies the sum by ``1/n`` (on the host it divides
by n, as Keras: the two differ by at most one rounding for n not a power of two).
Broadcasting merges, Maximum, Minimum and Concatenate compute in NumPy at the layer level
and stay ``runs_on_device = False``.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import _device
from .base import Layer, format_shape

__all__ = [
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    "add", "subtract", "multiply", "average", "maximum", "minimum", "concatenate",
]


def _format_shapes(shapes) -> str:
    return "[" + ", ".join(format_shape(s) for s in shapes) + "]"


def _is_dim(d) -> bool:
    return d is None or (isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0)


def _sum_to(g, shape):
    """``g`` summed over the axes where ``shape`` (same rank) has a 1 that ``g`` does not."""
    axes = tuple(i for i, (s, d) in enumerate(zip(shape, g.shape)) if s == 1 and d != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _need_flags(need_dx, n):
    """``need_dx`` as one bool per input (a bool for all of them, or a sequence)."""
    if isinstance(need_dx, (list, tuple)):
        if len(need_dx) != n:
            raise ValueError(f"need_dx lists {len(need_dx)} flags for {n} inputs")
        return [bool(f) for f in need_dx]
    return [bool(need_dx)] * n


class _Merge(Layer):
    """The shared part of the merge layers: a list of inputs, shape checks, no weights."""

    multiple_inputs = True
    runs_on_device = False
    _exactly = None    # Subtract: 2

    # ------------------------------------------------------------------ shapes
    def _checked_shapes(self, input_shape) -> list:
        cls = type(self).__name__
        if not isinstance(input_shape, (list, tuple)) or not all(
                isinstance(s, (list, tuple)) for s in input_shape):
            raise ValueError(
                f"A merge layer ({cls}) should be called on a list of inputs. Received: "
                f"input_shape={input_shape!r} (not a list of shapes)")
        for s in input_shape:
            if not s or not all(_is_dim(d) for d in s):
                raise ValueError(
                    f"every input shape must be a non-empty tuple of positive ints or "
                    f"None (batch first), got {s!r} in input_shape={list(input_shape)!r}")
        shapes = [tuple(None if d is None else int(d) for d in s) for s in input_shape]
        if self._exactly is not None and len(shapes) != self._exactly:
            raise ValueError(
                f"A `{cls}` layer should be called on exactly {self._exactly} inputs. "
                f"Received {len(shapes)}: input_shape={_format_shapes(shapes)}")
        if len(shapes) < 2:
            raise ValueError(
                f"A merge layer (`{cls}`) should be called on a list of at least 2 inputs. "
                f"Received {len(shapes)}: input_shape={_format_shapes(shapes)}")
        return shapes

    def _build(self, input_shape, dtype):
        shapes = self._checked_shapes(input_shape)
        return self._output_shape_for(shapes)

    def compute_output_shape(self, input_shape) -> tuple:
        """The output shape for a list of input shapes (checked as ``build`` checks them;
        the layer need not be built)."""
        try:
            return self._output_shape_for(self._checked_shapes(input_shape))
        except ValueError as exc:   # named as Layer.build names its errors
            raise ValueError(f"layer {self.name!r} ({type(self).__name__}): {exc}") from None

    def _output_shape_for(self, shapes) -> tuple:
        raise NotImplementedError

    def _batch(self, shapes):
        batches = {s[0] for s in shapes} - {None}
        if len(batches) > 1:
            raise ValueError(
                f"Cannot merge tensors with different batch sizes. "
                f"Received tensors with shapes {_format_shapes(shapes)}")
        return batches.pop() if batches else None


class _ElementwiseMerge(_Merge):
    """Add, Subtract, Multiply, Average, Maximum, Minimum."""

    _device_capable = False   # computes with _device's helpers when the shapes are equal

    def _output_shape_for(self, shapes) -> tuple:
        batch = self._batch(shapes)
        out = shapes[0][1:]
        for s in shapes[1:]:
            out = self._pair_shape(out, s[1:], shapes)
        return (batch,) + out

    def _pair_shape(self, a, b, shapes):
        # Keras 3's Merge._compute_elemwise_op_output_shape (shapes without the batch).
        if len(a) < len(b):
            a, b = b, a
        if not b:
            return a
        out = list(a[:len(a) - len(b)])
        for i, j in zip(a[len(a) - len(b):], b):
            if i is None or j is None:
                out.append(None)
            elif i == 1:
                out.append(j)
            elif j == 1 or i == j:
                out.append(i)
            else:
                raise ValueError(
                    f"Inputs have incompatible shapes. Received shapes "
                    f"{format_shape(a)} and {format_shape(b)} (without the batch dimension: "
                    f"aligned on the last dimension, two dimensions must be equal or one of "
                    f"them 1 or None); all input shapes: {_format_shapes(shapes)}")
        return tuple(out)

    def _build(self, input_shape, dtype):
        shapes = self._checked_shapes(input_shape)
        output_shape = self._output_shape_for(shapes)
        if self._device_capable:
            # One known shape for every input: no broadcasting, only _device's helpers.
            rest = shapes[0][1:]
            self.runs_on_device = None not in rest and all(s[1:] == rest for s in shapes)
        return output_shape

    # ----------------------------------------------------------------- compute
    @staticmethod
    def _aligned(inputs):
        """The inputs at one rank: 1s inserted after the batch dimension (as Keras)."""
        rank = max(x.ndim for x in inputs)
        return [x if x.ndim == rank else
                x.reshape((x.shape[0],) + (1,) * (rank - x.ndim) + tuple(x.shape[1:]))
                for x in inputs]

    def _on_device(self, inputs) -> bool:
        if not self._device_capable:
            return False
        on_device = _device.check_same_kind(inputs, f"the inputs of layer {self.name!r}")
        if on_device and len({tuple(x.shape) for x in inputs}) != 1:
            raise ValueError(
                f"layer {self.name!r} ({type(self).__name__}): on a device backend the inputs "
                f"must have one shape (no broadcasting), got "
                f"{_format_shapes([tuple(x.shape) for x in inputs])}")
        return on_device

    def forward(self, inputs, training=False):
        inputs = list(inputs)
        if self._on_device(inputs):
            return self._device_forward(inputs)
        xs = self._aligned(inputs)
        shapes = [x.shape for x in xs]
        y, extra = self._host_forward(xs)
        # Each input's gradient is reshaped back to its own (unaligned) shape.
        return y, (False, shapes, [x.shape for x in inputs], extra)

    def backward(self, dy, ctx, need_dx=True):
        on_device, shapes, input_shapes, extra = ctx
        need = _need_flags(need_dx, len(shapes))
        if not any(need):
            return [None] * len(shapes), ()
        if on_device:
            dxs = self._device_backward(dy, extra, need)
        else:
            dxs = self._host_backward(dy, shapes, extra, need)
            dxs = [None if g is None else
                   (_sum_to(g, s).reshape(shape) if g.shape != shape else g)
                   for g, s, shape in zip(dxs, shapes, input_shapes)]
        return dxs, ()

    def _host_forward(self, xs):
        raise NotImplementedError

    def _host_backward(self, dy, shapes, extra, need):
        raise NotImplementedError

    def _device_forward(self, inputs):
        raise NotImplementedError

    def _device_backward(self, dy, extra, need):
        raise NotImplementedError


def _chain(xs, op):
    """``op(...op(op(x0, x1), x2)..., xn)``, in place on the first intermediate result
    whenever the broadcast shape does not grow."""
    y = op(xs[0], xs[1])
    for x in xs[2:]:
        if np.broadcast_shapes(y.shape, x.shape) == y.shape:
            op(y, x, out=y)
        else:
            y = op(y, x)
    return y


class Add(_ElementwiseMerge):
    """The element-wise sum of the inputs (Keras's ``keras.layers.Add``)."""

    _device_capable = True

    def _host_forward(self, xs):
        return _chain(xs, np.add), None

    def _host_backward(self, dy, shapes, extra, need):
        # The identity: dy itself (the same object for every input, see the module doc).
        return [dy if n else None for n in need]

    def _device_forward(self, inputs):
        y = _device.add_scaled(inputs[0], inputs[1], 1.0)
        for x in inputs[2:]:
            y = _device.add_scaled(y, x, 1.0)
        return y, (True, [tuple(x.shape) for x in inputs], None, None)

    def _device_backward(self, dy, extra, need):
        return [dy if n else None for n in need]


class Subtract(_ElementwiseMerge):
    """``inputs[0] - inputs[1]`` (Keras's ``keras.layers.Subtract``): exactly two inputs."""

    _device_capable = True
    _exactly = 2

    def _host_forward(self, xs):
        return np.subtract(xs[0], xs[1]), None

    def _host_backward(self, dy, shapes, extra, need):
        second = None
        if need[1]:
            # Negated after the reduction (fewer elements; negation is exact either way).
            second = np.negative(_sum_to(dy, shapes[1]))
        return [dy if need[0] else None, second]

    def _device_forward(self, inputs):
        return (_device.add_scaled(inputs[0], inputs[1], -1.0),
                (True, [tuple(x.shape) for x in inputs], None, None))

    def _device_backward(self, dy, extra, need):
        second = _device.add_scaled(_device.zeros_like(dy), dy, -1.0) if need[1] else None
        return [dy if need[0] else None, second]


class Average(_ElementwiseMerge):
    """The element-wise mean of the inputs (Keras's ``keras.layers.Average``)."""

    _device_capable = True

    def _host_forward(self, xs):
        y = _chain(xs, np.add)
        # Keras divides the sum by the count (not a multiplication by 1/n).
        np.divide(y, y.dtype.type(len(xs)), out=y)
        return y, None

    def _host_backward(self, dy, shapes, extra, need):
        g = dy / dy.dtype.type(len(shapes))   # once: the same array for every input
        return [g if n else None for n in need]

    def _device_forward(self, inputs):
        y = _device.add_scaled(inputs[0], inputs[1], 1.0)
        for x in inputs[2:]:
            y = _device.add_scaled(y, x, 1.0)
        y = _device.add_scaled(_device.zeros_like(y), y, 1.0 / len(inputs))
        return y, (True, [tuple(x.shape) for x in inputs], None, None)

    def _device_backward(self, dy, extra, need):
        g = _device.add_scaled(_device.zeros_like(dy), dy, 1.0 / len(need))
        return [g if n else None for n in need]


class Multiply(_ElementwiseMerge):
    """The element-wise product of the inputs (Keras's ``keras.layers.Multiply``)."""

    _device_capable = True

    def _host_forward(self, xs):
        # prefixes[k] = x0 * ... * xk (what backward needs), y = the last one.
        prefixes = [xs[0]]
        for x in xs[1:]:
            prefixes.append(prefixes[-1] * x)
        return prefixes[-1], (xs, prefixes[:-1])

    def _host_backward(self, dy, shapes, extra, need):
        xs, prefixes = extra
        n = len(xs)
        dxs = [None] * n
        g = dy   # the gradient with respect to prefixes[k] (k = n - 1: y)
        for k in range(n - 1, 0, -1):
            if need[k]:
                dxs[k] = g * prefixes[k - 1]
            if not any(need[:k]):
                break
            g = _sum_to(g * xs[k], prefixes[k - 1].shape)
        else:
            if need[0]:
                dxs[0] = g   # a new array: the loop ran at least once (n >= 2)
        return dxs

    def _device_forward(self, inputs):
        prefixes = [inputs[0]]
        for x in inputs[1:]:
            prefixes.append(_device.multiply(prefixes[-1], x))
        return prefixes[-1], (True, [tuple(x.shape) for x in inputs], None,
                              (inputs, prefixes[:-1]))

    def _device_backward(self, dy, extra, need):
        xs, prefixes = extra
        n = len(xs)
        dxs = [None] * n
        g = dy
        for k in range(n - 1, 0, -1):
            if need[k]:
                dxs[k] = _device.multiply(g, prefixes[k - 1])
            if not any(need[:k]):
                break
            g = _device.multiply(g, xs[k])
        else:
            if need[0]:
                dxs[0] = g
        return dxs


class _Extreme(_ElementwiseMerge):
    """Maximum / Minimum: the first input holding the extreme takes the gradient."""

    _op = None          # np.maximum / np.minimum
    _better = None      # np.greater / np.less: strictly better than the extreme so far

    def _host_forward(self, xs):
        shape = np.broadcast_shapes(*(x.shape for x in xs))
        y = np.array(np.broadcast_to(xs[0], shape))
        # Which input holds the extreme: only a STRICTLY better value takes over, so a tie
        # stays with the earlier input.
        winner = np.zeros(shape, dtype=np.uint8 if len(xs) <= 255 else np.intp)
        for k, x in enumerate(xs[1:], start=1):
            winner[type(self)._better(x, y)] = k
            type(self)._op(y, x, out=y)
        return y, winner

    def _host_backward(self, dy, shapes, extra, need):
        winner = extra
        zero = dy.dtype.type(0)
        return [np.where(winner == k, dy, zero) if n else None for k, n in enumerate(need)]


class Maximum(_Extreme):
    """The element-wise maximum of the inputs (Keras's ``keras.layers.Maximum``); on a
    tie the first input holding the maximum receives the gradient."""

    _op = np.maximum
    _better = np.greater


class Minimum(_Extreme):
    """The element-wise minimum of the inputs (Keras's ``keras.layers.Minimum``); on a
    tie the first input holding the minimum receives the gradient."""

    _op = np.minimum
    _better = np.less


class Concatenate(_Merge):
    """Joins the inputs along ``axis`` (Keras's ``keras.layers.Concatenate(axis=-1)``)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise ValueError(f"axis must be an int, got {axis!r}")
        self.axis = int(axis)

    def _output_shape_for(self, shapes) -> tuple:
        cls = type(self).__name__
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1:
            raise ValueError(
                f"A `{cls}` layer requires inputs with matching shapes except for the "
                f"concatenation axis; the inputs have different ranks. Received: "
                f"input_shape={_format_shapes(shapes)}")
        rank = ranks.pop()
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"axis={self.axis} is out of range for inputs of rank {rank} (batch "
                f"first): expected -{rank} <= axis < {rank}. Received: "
                f"input_shape={_format_shapes(shapes)}")
        axis = self.axis % rank
        if axis != 0:
            self._batch(shapes)   # Keras's message for different batch sizes
        out = []
        for i in range(rank):
            dims = [s[i] for s in shapes]
            if i == axis:
                out.append(None if None in dims else sum(dims))
                continue
            known = set(dims) - {None}
            if len(known) > 1:
                raise ValueError(
                    f"A `{cls}` layer requires inputs with matching shapes except for the "
                    f"concatenation axis (axis={self.axis}): dimension {i} differs "
                    f"({', '.join('None' if d is None else str(d) for d in dims)}). Received: "
                    f"input_shape={_format_shapes(shapes)}")
            out.append(known.pop() if known else None)
        return tuple(out)

    def forward(self, inputs, training=False):
        inputs = list(inputs)
        axis = self.axis % inputs[0].ndim
        y = np.concatenate(inputs, axis=axis)
        return y, (axis, [x.shape[axis] for x in inputs])

    def backward(self, dy, ctx, need_dx=True):
        axis, sizes = ctx
        need = _need_flags(need_dx, len(sizes))
        dxs, start = [], 0
        for size, n in zip(sizes, need):
            if n:
                index = (slice(None),) * axis + (slice(start, start + size),)
                dxs.append(dy[index].copy())   # C-contiguous, never a view of dy
            else:
                dxs.append(None)
            start += size
        return dxs, ()

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# --------------------------------------------------- Keras's functional forms
def add(inputs, **kwargs):
    """``Add(**kwargs)(inputs)``: the element-wise sum of a list of tensors."""
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    """``Subtract(**kwargs)(inputs)``: ``inputs[0] - inputs[1]``."""
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    """``Multiply(**kwargs)(inputs)``: the element-wise product of a list of tensors."""
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    """``Average(**kwargs)(inputs)``: the element-wise mean of a list of tensors."""
    return Average(**kwargs)(inputs)


def maximum(inputs, **kwargs):
    """``Maximum(**kwargs)(inputs)``: the element-wise maximum of a list of tensors."""
    return Maximum(**kwargs)(inputs)


def minimum(inputs, **kwargs):
    """``Minimum(**kwargs)(inputs)``: the element-wise minimum of a list of tensors."""
    return Minimum(**kwargs)(inputs)


def concatenate(inputs, axis=-1, **kwargs):
    """``Concatenate(axis=axis, **kwargs)(inputs)``: a list of tensors joined on ``axis``."""
    return Concatenate(axis=axis, **kwargs)(inputs)
