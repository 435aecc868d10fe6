"""Differentiable operations on Tensors, Variables and arrays (the op level of
:mod:`fastcnn.autodiff`): what a custom loss, layer or training loop is written with.

Every operation takes Tensors, Variables, NumPy arrays or Python numbers, computes its
result with NumPy (host arrays), returns a :class:`~fastcnn.autodiff.Tensor`, and records
its backward on any open :class:`~fastcnn.autodiff.GradientTape` that watches an input.
Each backward is checked against numerical gradients in ``tests/test_ops.py``.

Broadcasting follows NumPy; the gradient of a broadcast input is summed back to its shape.
"""
from __future__ import annotations

import builtins

import numpy as np

from .autodiff import Tensor, record, value_of

__all__ = [
    "add", "subtract", "multiply", "divide", "negative", "power", "matmul", "abs",
    "getitem", "reshape", "transpose", "sum", "mean", "max", "min",
]


# ----------------------------------------------------------------------- helpers


def _array(x):
    """The array behind ``x``; Python numbers and lists become NumPy values (a float
    Python number stays a weak scalar so that float32 arrays stay float32)."""
    v = value_of(x)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v
    return np.asarray(v)


def _unbroadcast(g, shape):
    """Sums ``g`` over the axes NumPy broadcast to reach it from ``shape``."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _shape_of(v):
    return np.shape(v)


def _one(name, inputs, value, backward):
    return record(name, inputs, [value], lambda dys, needs: backward(dys[0], needs))[0]


# ---------------------------------------------------------------------- arithmetic


def add(x, y):
    """``x + y`` (broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.add(a, b)

    def backward(g, needs):
        return (_unbroadcast(g, _shape_of(a)) if needs[0] else None,
                _unbroadcast(g, _shape_of(b)) if needs[1] else None)
    return _one("add", (x, y), out, backward)


def subtract(x, y):
    """``x - y`` (broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.subtract(a, b)

    def backward(g, needs):
        return (_unbroadcast(g, _shape_of(a)) if needs[0] else None,
                _unbroadcast(-g, _shape_of(b)) if needs[1] else None)
    return _one("subtract", (x, y), out, backward)


def multiply(x, y):
    """``x * y`` (element-wise, broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.multiply(a, b)

    def backward(g, needs):
        return (_unbroadcast(g * b, _shape_of(a)) if needs[0] else None,
                _unbroadcast(g * a, _shape_of(b)) if needs[1] else None)
    return _one("multiply", (x, y), out, backward)


def divide(x, y):
    """``x / y`` (element-wise, broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.divide(a, b)

    def backward(g, needs):
        return (_unbroadcast(g / b, _shape_of(a)) if needs[0] else None,
                _unbroadcast(-g * out / b, _shape_of(b)) if needs[1] else None)
    return _one("divide", (x, y), out, backward)


def negative(x):
    """``-x``."""
    return _one("negative", (x,), np.negative(_array(x)), lambda g, needs: (-g,))


def abs(x):  # noqa: A001 (Keras's and NumPy's name)
    """``|x|``; the gradient at 0 is 0 (``sign``)."""
    a = _array(x)
    return _one("abs", (x,), np.abs(a), lambda g, needs: (g * np.sign(a),))


def power(x, y):
    """``x ** y`` (broadcasting); the gradient with respect to ``y`` needs ``x > 0``."""
    a, b = _array(x), _array(y)
    out = np.power(a, b)

    def backward(g, needs):
        ga = gb = None
        if needs[0]:
            ga = _unbroadcast(g * b * np.power(a, np.subtract(b, 1)), _shape_of(a))
        if needs[1]:
            with np.errstate(divide="ignore", invalid="ignore"):
                log_a = np.where(np.asarray(a) > 0, np.log(np.where(np.asarray(a) > 0, a, 1)),
                                 0)
            gb = _unbroadcast(g * out * log_a, _shape_of(b))
        return ga, gb
    return _one("power", (x, y), out, backward)


def matmul(x, y):
    """Matrix product (NumPy's ``@``, batched over leading axes)."""
    a, b = np.asarray(_array(x)), np.asarray(_array(y))
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs arrays of rank >= 1, got shapes {a.shape} and {b.shape}")
    out = a @ b

    def backward(g, needs):
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = g
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        if b.ndim == 1:
            g2 = np.expand_dims(g2, -1)
        ga = gb = None
        if needs[0]:
            ga = g2 @ np.swapaxes(b2, -1, -2)
            ga = _unbroadcast(ga, a2.shape).reshape(a.shape)
        if needs[1]:
            gb = np.swapaxes(a2, -1, -2) @ g2
            gb = _unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb
    return _one("matmul", (x, y), out, backward)


# ------------------------------------------------------------------------- shapes


def getitem(x, index):
    """``x[index]`` (basic and advanced indexing); the gradient scatters back (summing
    repeated indices)."""
    a = np.asarray(_array(x))
    index = tuple(value_of(i) if isinstance(i, Tensor) else i for i in index) \
        if isinstance(index, tuple) else (value_of(index) if isinstance(index, Tensor)
                                          else index)
    out = a[index]

    def backward(g, needs):
        dx = np.zeros_like(a)
        np.add.at(dx, index, g)
        return (dx,)
    return _one("getitem", (x,), np.array(out) if np.ndim(out) == 0 else out, backward)


def reshape(x, shape):
    """``x`` with a new shape (one -1 allowed)."""
    a = np.asarray(_array(x))
    out = a.reshape(shape)
    return _one("reshape", (x,), out, lambda g, needs: (g.reshape(a.shape),))


def transpose(x, axes=None):
    """Permutes the axes (reverses them by default)."""
    a = np.asarray(_array(x))
    out = np.transpose(a, axes)
    inverse = None if axes is None else np.argsort(axes)
    return _one("transpose", (x,), out, lambda g, needs: (np.transpose(g, inverse),))


# ----------------------------------------------------------------------- reductions


def _expand(g, shape, axis, keepdims):
    """``g`` (a reduction's gradient) with the reduced axes back, ready to broadcast."""
    if axis is None:
        return np.reshape(g, (1,) * len(shape))
    if keepdims:
        return g
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    axes = tuple(sorted(a % len(shape) for a in axes))
    for a in axes:
        g = np.expand_dims(g, a)
    return g


def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (all axes by default)."""
    a = np.asarray(_array(x))
    out = np.sum(a, axis=axis, keepdims=keepdims)

    def backward(g, needs):
        return (np.broadcast_to(_expand(g, a.shape, axis, keepdims), a.shape).copy(),)
    return _one("sum", (x,), np.asarray(out), backward)


def mean(x, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes by default)."""
    a = np.asarray(_array(x))
    out = np.mean(a, axis=axis, keepdims=keepdims)
    count = a.size // builtins.max(np.asarray(out).size, 1) if a.size else 1

    def backward(g, needs):
        return (np.broadcast_to(_expand(g, a.shape, axis, keepdims) / count, a.shape).copy(),)
    return _one("mean", (x,), np.asarray(out, dtype=a.dtype), backward)


def _extremum(name, fn, x, axis, keepdims):
    a = np.asarray(_array(x))
    out = fn(a, axis=axis, keepdims=True)

    def backward(g, needs):
        # Ties share the gradient equally (TensorFlow's reduce_max rule).
        hit = (a == out)
        share = hit / hit.sum(axis=axis, keepdims=True)
        return (share * _expand(g, a.shape, axis, keepdims),)
    value = out if keepdims else np.squeeze(out, axis=axis) if axis is not None else \
        out.reshape(())
    return _one(name, (x,), np.asarray(value), backward)


def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return _extremum("max", np.max, x, axis, keepdims)


def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over ``axis``; tied minima share the gradient equally."""
    return _extremum("min", np.min, x, axis, keepdims)

