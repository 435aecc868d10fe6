"""Differentiable operations on Tensors, Variables and arrays (the op level of
:mod:`fastcnn.autodiff`): what a custom loss, layer or training loop is written with.

Every operation takes Tensors, Variables, NumPy arrays or Python numbers, returns a
:class:`~fastcnn.autodiff.Tensor`, and records its backward on any open
:class:`~fastcnn.autodiff.GradientTape` that watches an input. Names and signatures are
Keras 3's ``keras.ops`` where it has the operation. Each backward is checked against
numerical gradients (float64, random upstream gradients) in ``tests/test_ops.py``.

Broadcasting follows NumPy; the gradient of a broadcast input is summed back to its shape.

Where the values are computed
-----------------------------
* Most operations compute with NumPy, on host arrays. Given a device array (the 'cuda'
  backend's, e.g. a layer weight inside a device scope) they raise NotImplementedError
  naming the operation and the backend: nothing is ever copied to the host silently.
* The activations that :mod:`fastcnn.activations` knows (``relu``, ``sigmoid``, ``tanh``,
  ``softmax`` and whatever else ``activations.KNOWN`` lists) run the ACTIVE backend's
  kernel pair (``fastcnn.backends.current()``), host or device arrays alike;
  ``reshape`` is a view on either; 2-D ``matmul`` of device arrays runs the backend's
  dense kernels. The losses with ``from_logits=True`` go through :mod:`fastcnn.nn`
  (the backend's fused cross-entropy kernels).

Gradients that TensorFlow defines by convention follow TensorFlow: ``maximum`` and
``minimum`` give a tie to ``x``; ``clip`` passes the gradient at the bounds; ``max`` /
``min`` share it among tied elements; ``abs`` and ``sign`` have 0 at 0; integer results
(``argmax``, comparisons, ``one_hot``) are constants the tape does not trace.
"""
from __future__ import annotations

import builtins

import numpy as np

import functools

from . import _device, activations as _activations, backends, config
from .autodiff import Tensor, record, value_of
from .autodiff import convert_to_tensor as _convert_to_tensor
from .autodiff import stop_gradient as _stop_gradient

__all__ = [
    "add", "subtract", "multiply", "divide", "negative", "power", "matmul", "abs",
    "getitem", "reshape", "transpose", "sum", "mean", "max", "min",
    "square", "sqrt", "exp", "log", "log1p", "sign", "maximum", "minimum", "where", "clip",
    "dot", "var", "std", "argmax", "argmin", "expand_dims", "squeeze", "concatenate",
    "stack", "split", "tile", "pad", "convert_to_tensor", "stop_gradient", "cast", "zeros",
    "ones", "zeros_like", "ones_like", "one_hot", "logsumexp", "equal", "not_equal",
    "greater", "greater_equal", "less", "less_equal",
    "relu", "relu6", "sigmoid", "tanh", "softplus", "softsign", "silu", "elu", "selu",
    "leaky_relu", "log_sigmoid", "softmax", "log_softmax",
    "categorical_crossentropy", "sparse_categorical_crossentropy", "binary_crossentropy",
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


def _refuse_device(op, args):
    for x in args:
        if isinstance(x, (list, tuple)):
            _refuse_device(op, x)
            continue
        v = value_of(x)
        if _device.is_device_array(v):
            raise NotImplementedError(
                f"fastcnn.ops.{op} computes with NumPy on host arrays and got a device array "
                f"of the 'cuda' backend; nothing is copied to the host "
                f"silently: copy it explicitly (tensor.numpy()), or use the operations that "
                f"run the backend's kernels (fastcnn.nn, the activations)")


def _host_only(fn):
    """Decorator: the operation raises NotImplementedError for a device array input."""
    op = fn.__name__

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _refuse_device(op, args)
        if kwargs:
            _refuse_device(op, tuple(kwargs.values()))
        return fn(*args, **kwargs)
    return wrapper


def _float_array(x, op, argument="x"):
    """``x`` as a host array of a float dtype (integers and bools become floatx)."""
    a = np.asarray(value_of(x))
    if a.dtype.kind in "biu":
        a = a.astype(config.floatx())
    elif a.dtype.kind != "f":
        raise TypeError(f"fastcnn.ops.{op}: {argument} must hold real numbers, got dtype "
                        f"{a.dtype}")
    return a


def _kernel_array(x, op, argument="x"):
    """``x`` as an array a backend kernel takes: a device array as it is, else a
    C-contiguous float32/float64 NumPy array (other dtypes become floatx)."""
    v = value_of(x)
    if _device.is_device_array(v):
        return v
    a = _float_array(v, op, argument)
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(config.floatx())
    return np.ascontiguousarray(a)


def _match(g, value):
    """A gradient in the kind of array (host or device) its input ``value`` was: a host
    input mixed with device ones (a host Variable with a device batch) gets a host
    gradient, so that a source's gradient is always where the source lives."""
    if g is None:
        return None
    v = value_of(value)
    if _device.is_device_array(g) and not _device.is_device_array(v):
        return _device.to_host(g)
    return g


def _kernel_grad(g, like):
    """An upstream gradient as a kernel takes it: contiguous, of ``like``'s dtype."""
    if _device.is_device_array(g) or _device.is_device_array(like):
        return g
    return np.ascontiguousarray(g, dtype=like.dtype)


# ---------------------------------------------------------------------- arithmetic


@_host_only
def add(x, y):
    """``x + y`` (broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.add(a, b)

    def backward(g, needs):
        return (_unbroadcast(g, _shape_of(a)) if needs[0] else None,
                _unbroadcast(g, _shape_of(b)) if needs[1] else None)
    return _one("add", (x, y), out, backward)


@_host_only
def subtract(x, y):
    """``x - y`` (broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.subtract(a, b)

    def backward(g, needs):
        return (_unbroadcast(g, _shape_of(a)) if needs[0] else None,
                _unbroadcast(-g, _shape_of(b)) if needs[1] else None)
    return _one("subtract", (x, y), out, backward)


@_host_only
def multiply(x, y):
    """``x * y`` (element-wise, broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.multiply(a, b)

    def backward(g, needs):
        return (_unbroadcast(g * b, _shape_of(a)) if needs[0] else None,
                _unbroadcast(g * a, _shape_of(b)) if needs[1] else None)
    return _one("multiply", (x, y), out, backward)


@_host_only
def divide(x, y):
    """``x / y`` (element-wise, broadcasting)."""
    a, b = _array(x), _array(y)
    out = np.divide(a, b)

    def backward(g, needs):
        return (_unbroadcast(g / b, _shape_of(a)) if needs[0] else None,
                _unbroadcast(-g * out / b, _shape_of(b)) if needs[1] else None)
    return _one("divide", (x, y), out, backward)


@_host_only
def negative(x):
    """``-x``."""
    return _one("negative", (x,), np.negative(_array(x)), lambda g, needs: (-g,))


@_host_only
def abs(x):  # noqa: A001 (Keras's and NumPy's name)
    """``|x|``; the gradient at 0 is 0 (``sign``)."""
    a = _array(x)
    return _one("abs", (x,), np.abs(a), lambda g, needs: (g * np.sign(a),))


@_host_only
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
    """Matrix product (NumPy's ``@``, batched over leading axes). Two 2-D device arrays
    run the active backend's dense kernels (``dense_forward`` / ``dense_backward``)."""
    if _device.is_device_array(value_of(x)) or _device.is_device_array(value_of(y)):
        return _matmul_kernels(x, y)
    a, b = np.asarray(_array(x)), np.asarray(_array(y))
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs arrays of rank >= 1, got shapes {a.shape} and {b.shape}")
    out = a @ b

    def backward(g, needs):
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g2 = np.asarray(g)
        if b.ndim == 1:     # first: with two vectors g is 0-d, and becomes (1, 1)
            g2 = np.expand_dims(g2, -1)
        if a.ndim == 1:
            g2 = np.expand_dims(g2, -2)
        ga = gb = None
        if needs[0]:
            ga = g2 @ np.swapaxes(b2, -1, -2)
            ga = _unbroadcast(ga, a2.shape).reshape(a.shape)
        if needs[1]:
            gb = np.swapaxes(a2, -1, -2) @ g2
            gb = _unbroadcast(gb, b2.shape).reshape(b.shape)
        return ga, gb
    return _one("matmul", (x, y), out, backward)


def _matmul_kernels(x, y):
    a, b = _kernel_array(x, "matmul"), _kernel_array(y, "matmul", "y")
    if len(a.shape) != 2 or len(b.shape) != 2:
        raise NotImplementedError(
            f"fastcnn.ops.matmul on device arrays (the 'cuda' backend) takes two 2-D arrays "
            f"(the backend's dense kernels), got shapes {tuple(a.shape)} and "
            f"{tuple(b.shape)}; reshape them first")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} do not "
                         f"chain (x's last axis must equal y's first)")
    backend = backends.current()
    out, ctx = backend.dense_forward(a, b, None)

    def backward(g, needs):
        dx, dw, _ = backend.dense_backward(_kernel_grad(g, out), ctx)
        return _match(dx, x), _match(dw, y)
    return _one("matmul", (x, y), out, backward)


# ------------------------------------------------------------------------- shapes


@_host_only
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
    """``x`` with a new shape (one -1 allowed); a view, of a device array too."""
    v = value_of(x)
    a = v if _device.is_device_array(v) else np.asarray(_array(x))
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    old = tuple(a.shape)
    out = a.reshape(shape)
    return _one("reshape", (x,), out, lambda g, needs: (g.reshape(old),))


@_host_only
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


@_host_only
def sum(x, axis=None, keepdims=False):  # noqa: A001
    """Sum over ``axis`` (all axes by default)."""
    a = np.asarray(_array(x))
    out = np.sum(a, axis=axis, keepdims=keepdims)

    def backward(g, needs):
        return (np.broadcast_to(_expand(g, a.shape, axis, keepdims), a.shape).copy(),)
    return _one("sum", (x,), np.asarray(out), backward)


@_host_only
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


@_host_only
def max(x, axis=None, keepdims=False):  # noqa: A001
    """Maximum over ``axis``; tied maxima share the gradient equally."""
    return _extremum("max", np.max, x, axis, keepdims)


@_host_only
def min(x, axis=None, keepdims=False):  # noqa: A001
    """Minimum over ``axis``; tied minima share the gradient equally."""
    return _extremum("min", np.min, x, axis, keepdims)



def _axes_tuple(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if np.isscalar(axis) else tuple(axis)
    return tuple(sorted(int(a) % builtins.max(ndim, 1) for a in axes))


@_host_only
def var(x, axis=None, keepdims=False):
    """Population variance over ``axis`` (all axes by default), as ``keras.ops.var``."""
    a = _float_array(x, "var")
    m = np.mean(a, axis=axis, keepdims=True)
    out = np.mean(np.square(a - m), axis=axis, keepdims=keepdims)
    count = a.size // builtins.max(np.asarray(out).size, 1) if a.size else 1

    def backward(g, needs):
        return (_expand(g, a.shape, axis, keepdims) * (2.0 / count) * (a - m),)
    return _one("var", (x,), np.asarray(out, dtype=a.dtype), backward)


@_host_only
def std(x, axis=None, keepdims=False):
    """Population standard deviation over ``axis``; its gradient is infinite where the
    deviation is 0 (as ``sqrt``'s is)."""
    return sqrt(var(x, axis=axis, keepdims=keepdims))


# ----------------------------------------------------------------------- element-wise


def _unary(name, x, fn, grad):
    """An element-wise op: ``fn(a)`` forward, ``grad(g, a, out)`` backward."""
    a = _float_array(x, name)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = np.asarray(fn(a), dtype=a.dtype)

    def backward(g, needs):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return (np.asarray(grad(g, a, out), dtype=a.dtype),)
    return _one(name, (x,), out, backward)


@_host_only
def square(x):
    """``x ** 2``."""
    return _unary("square", x, np.square, lambda g, a, out: 2 * a * g)


@_host_only
def sqrt(x):
    """``sqrt(x)``; the gradient ``1 / (2 sqrt(x))`` is infinite at 0 (TensorFlow's too)."""
    return _unary("sqrt", x, np.sqrt, lambda g, a, out: g / (2 * out))


@_host_only
def exp(x):
    """``e ** x``."""
    return _unary("exp", x, np.exp, lambda g, a, out: g * out)


@_host_only
def log(x):
    """Natural logarithm."""
    return _unary("log", x, np.log, lambda g, a, out: g / a)


@_host_only
def log1p(x):
    """``log(1 + x)``, accurate for small ``x``."""
    return _unary("log1p", x, np.log1p, lambda g, a, out: g / (1 + a))


@_host_only
def sign(x):
    """-1, 0 or 1; its gradient is 0 everywhere (TensorFlow's rule)."""
    return _unary("sign", x, np.sign, lambda g, a, out: np.zeros_like(a))


def _binary_select(name, x, y, x_wins):
    a, b = _array(x), _array(y)
    out = np.maximum(a, b) if name == "maximum" else np.minimum(a, b)

    def backward(g, needs):
        # TensorFlow's rule: x takes the gradient where x >= y (maximum) / x <= y
        # (minimum), ties included; y gets the rest.
        mask = np.broadcast_to(x_wins(np.asarray(a), np.asarray(b)), np.shape(out))
        return (_unbroadcast(np.where(mask, g, 0), np.shape(a)) if needs[0] else None,
                _unbroadcast(np.where(mask, 0, g), np.shape(b)) if needs[1] else None)
    return _one(name, (x, y), np.asarray(out), backward)


@_host_only
def maximum(x, y):
    """Element-wise maximum (broadcasting); a tie gives the gradient to ``x``."""
    return _binary_select("maximum", x, y, np.greater_equal)


@_host_only
def minimum(x, y):
    """Element-wise minimum (broadcasting); a tie gives the gradient to ``x``."""
    return _binary_select("minimum", x, y, np.less_equal)


@_host_only
def where(condition, x1=None, x2=None):
    """``x1`` where ``condition`` holds, else ``x2`` (broadcasting); the condition has no
    gradient. With only ``condition``: the indices of its non-zero elements (NumPy's
    ``nonzero``), as constants."""
    c = np.asarray(value_of(condition)).astype(bool)
    if x1 is None and x2 is None:
        return tuple(Tensor(i) for i in np.nonzero(c))
    if x1 is None or x2 is None:
        raise ValueError("where: give both x1 and x2, or neither")
    a, b = _array(x1), _array(x2)
    out = np.where(c, a, b)

    def backward(g, needs):
        cm = np.broadcast_to(c, np.shape(out))
        return (None,
                _unbroadcast(np.where(cm, g, 0), np.shape(a)) if needs[1] else None,
                _unbroadcast(np.where(cm, 0, g), np.shape(b)) if needs[2] else None)
    return _one("where", (condition, x1, x2), np.asarray(out), backward)


@_host_only
def clip(x, x_min, x_max):
    """``x`` limited to ``[x_min, x_max]`` (bounds may be arrays that broadcast). As
    ``tf.clip_by_value``, ``x`` keeps its gradient AT a bound; a bound gets the gradient
    where it is the value."""
    a, lo, hi = _array(x), _array(x_min), _array(x_max)
    if np.any(np.asarray(lo) > np.asarray(hi)):
        raise ValueError(f"clip: x_min must be <= x_max, got x_min={x_min!r}, x_max={x_max!r}")
    out = np.asarray(np.clip(a, lo, hi))
    if np.ndim(a) == out.ndim and isinstance(a, np.ndarray):
        out = out.astype(a.dtype, copy=False)

    def backward(g, needs):
        below = np.broadcast_to(np.asarray(a) < lo, out.shape)
        above = np.broadcast_to(np.asarray(a) > hi, out.shape)
        return (_unbroadcast(np.where(below | above, 0, g), np.shape(a)) if needs[0] else None,
                _unbroadcast(np.where(below, g, 0), np.shape(lo)) if needs[1] else None,
                _unbroadcast(np.where(above, g, 0), np.shape(hi)) if needs[2] else None)
    return _one("clip", (x, x_min, x_max), out, backward)


def dot(x, y):
    """NumPy's ``dot``: a product with a scalar, the inner product of vectors, the matrix
    product; an N-D ``x`` with a 1-D or 2-D ``y`` contracts ``x``'s last axis."""
    a, b = value_of(x), value_of(y)
    if np.ndim(a) == 0 or np.ndim(b) == 0:
        return multiply(x, y)
    if len(np.shape(b)) > 2 and len(np.shape(a)) > 1:
        raise NotImplementedError(
            f"fastcnn.ops.dot of shapes {np.shape(a)} and {np.shape(b)} (y of rank > 2) is "
            f"not implemented; use matmul (batched) or reshape")
    return matmul(x, y)


def _no_grad(value):
    """A constant result: integer or boolean values the tape does not trace."""
    return Tensor(np.asarray(value))


@_host_only
def argmax(x, axis=None, keepdims=False):
    """Index of the (first) maximum along ``axis`` (of the flattened array for None); no
    gradient."""
    return _no_grad(np.argmax(np.asarray(_array(x)), axis=axis, keepdims=keepdims))


@_host_only
def argmin(x, axis=None, keepdims=False):
    """Index of the (first) minimum along ``axis``; no gradient."""
    return _no_grad(np.argmin(np.asarray(_array(x)), axis=axis, keepdims=keepdims))


def _compare(fn):
    @_host_only
    def compare(x1, x2):
        return _no_grad(fn(np.asarray(_array(x1)), np.asarray(_array(x2))))
    compare.__name__ = compare.__qualname__ = fn.__name__
    compare.__doc__ = f"Element-wise ``{fn.__name__}`` as booleans (no gradient)."
    return compare


equal = _compare(np.equal)
not_equal = _compare(np.not_equal)
greater = _compare(np.greater)
greater_equal = _compare(np.greater_equal)
less = _compare(np.less)
less_equal = _compare(np.less_equal)


# ----------------------------------------------------------------------- shapes, more


@_host_only
def expand_dims(x, axis):
    """``x`` with a new axis of length 1 at ``axis``."""
    a = np.asarray(_array(x))
    out = np.expand_dims(a, axis)
    return _one("expand_dims", (x,), out, lambda g, needs: (np.reshape(g, a.shape),))


@_host_only
def squeeze(x, axis=None):
    """``x`` without its length-1 axes (only ``axis`` when given)."""
    a = np.asarray(_array(x))
    if axis is not None:
        for ax in ((axis,) if np.isscalar(axis) else axis):
            if not -a.ndim <= ax < a.ndim or a.shape[ax] != 1:
                raise ValueError(f"squeeze: axis {ax} of shape {a.shape} is not of length 1")
    out = np.squeeze(a, axis=axis)
    return _one("squeeze", (x,), out, lambda g, needs: (np.reshape(g, a.shape),))


@_host_only
def concatenate(xs, axis=0):
    """Joins the arrays ``xs`` along an existing ``axis``."""
    xs = list(xs)
    if not xs:
        raise ValueError("concatenate needs at least one array")
    arrays = [np.asarray(_array(x)) for x in xs]
    try:
        out = np.concatenate(arrays, axis=axis)
    except ValueError as exc:
        raise ValueError(f"concatenate along axis {axis}: shapes "
                         f"{[a.shape for a in arrays]} do not match ({exc})") from None
    ax = axis % out.ndim
    bounds = np.cumsum([a.shape[ax] for a in arrays])[:-1]

    def backward(g, needs):
        parts = np.split(g, bounds, axis=ax)
        return tuple(p if n else None for p, n in zip(parts, needs))
    return record("concatenate", tuple(xs), [out],
                  lambda dys, needs: backward(dys[0], needs))[0]


@_host_only
def stack(x, axis=0):
    """Joins arrays of one shape along a NEW ``axis``."""
    xs = list(x)
    if not xs:
        raise ValueError("stack needs at least one array")
    arrays = [np.asarray(_array(v)) for v in xs]
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"stack: every array must have the same shape, got "
                         f"{[a.shape for a in arrays]}")
    out = np.stack(arrays, axis=axis)
    ax = axis % out.ndim

    def backward(g, needs):
        return tuple(np.take(g, i, axis=ax) if n else None for i, n in enumerate(needs))
    return record("stack", tuple(xs), [out], lambda dys, needs: backward(dys[0], needs))[0]


@_host_only
def split(x, indices_or_sections, axis=0):
    """NumPy's ``split``: a list of Tensors (equal sections, or cut at the indices)."""
    a = np.asarray(_array(x))
    try:
        parts = np.split(a, indices_or_sections, axis=axis)
    except ValueError as exc:
        raise ValueError(f"split: {indices_or_sections!r} along axis {axis} of shape "
                         f"{a.shape}: {exc}") from None

    def backward(dys, needs):
        return (np.concatenate([np.asarray(d) for d in dys], axis=axis),)
    return record("split", (x,), [np.ascontiguousarray(p) for p in parts], backward)


@_host_only
def tile(x, repeats):
    """``x`` repeated ``repeats`` times along each axis (NumPy's ``tile``)."""
    a = np.asarray(_array(x))
    reps = (int(repeats),) if np.isscalar(repeats) else tuple(int(r) for r in repeats)
    out = np.tile(a, reps)
    n = builtins.max(len(reps), a.ndim)
    reps_n = (1,) * (n - len(reps)) + reps
    shape_n = (1,) * (n - a.ndim) + a.shape

    def backward(g, needs):
        # out has shape (r0*s0, r1*s1, ...): split each axis into (r, s) and sum the r's.
        inter = [d for pair in zip(reps_n, shape_n) for d in pair]
        gs = np.reshape(g, inter).sum(axis=tuple(range(0, 2 * n, 2)))
        return (gs.reshape(a.shape),)
    return _one("tile", (x,), out, backward)


@_host_only
def pad(x, pad_width, mode="constant", constant_values=None):
    """Pads with a constant (``mode='constant'``, 0 by default), NumPy's ``pad_width``."""
    if mode != "constant":
        raise NotImplementedError(f"fastcnn.ops.pad supports mode='constant' only, got "
                                  f"mode={mode!r}")
    a = np.asarray(_array(x))
    widths = np.broadcast_to(np.asarray(pad_width, dtype=np.int64), (a.ndim, 2)) \
        if np.ndim(pad_width) < 2 else np.asarray(pad_width, dtype=np.int64)
    if widths.shape != (a.ndim, 2) or (widths < 0).any():
        raise ValueError(f"pad: pad_width must give (before, after) >= 0 for each of the "
                         f"{a.ndim} axes, got {pad_width!r}")
    out = np.pad(a, widths, mode="constant",
                 constant_values=0 if constant_values is None else constant_values)
    index = tuple(slice(int(lo), int(lo) + d) for (lo, _), d in zip(widths, a.shape))
    return _one("pad", (x,), out, lambda g, needs: (np.ascontiguousarray(g[index]),))


# ------------------------------------------------------------------ tensors and dtypes


def convert_to_tensor(x, dtype=None, sparse=None):
    """``x`` as a Tensor (integers become floatx unless ``dtype`` says otherwise)."""
    if sparse:
        raise NotImplementedError("fastcnn has no sparse tensors")
    return _convert_to_tensor(x, dtype=dtype)


def stop_gradient(variable):
    """The same values, as a Tensor the tape does not trace through."""
    return _stop_gradient(variable)


@_host_only
def cast(x, dtype):
    """``x`` as ``dtype``; the gradient flows back only between float dtypes."""
    a = np.asarray(_array(x))
    dtype = np.dtype(dtype)
    out = a.astype(dtype)
    if not (a.dtype.kind == "f" and dtype.kind == "f"):
        return Tensor(out)
    return _one("cast", (x,), out, lambda g, needs: (np.asarray(g).astype(a.dtype),))


def _shape_arg(shape):
    return (int(shape),) if np.isscalar(shape) else tuple(int(d) for d in shape)


def zeros(shape, dtype=None):
    """A constant Tensor of zeros (floatx by default)."""
    return Tensor(np.zeros(_shape_arg(shape), dtype=dtype or config.floatx()))


def ones(shape, dtype=None):
    """A constant Tensor of ones (floatx by default)."""
    return Tensor(np.ones(_shape_arg(shape), dtype=dtype or config.floatx()))


def zeros_like(x, dtype=None):
    """Zeros shaped like ``x`` (its dtype by default); on the device for a device array."""
    v = value_of(x)
    if _device.is_device_array(v) and (dtype is None or np.dtype(dtype) == v.dtype):
        return Tensor(_device.zeros_like(v))
    _refuse_device("zeros_like", (v,))
    return Tensor(np.zeros(np.shape(v), dtype=dtype or np.asarray(v).dtype))


@_host_only
def ones_like(x, dtype=None):
    """Ones shaped like ``x`` (its dtype by default)."""
    v = np.asarray(value_of(x))
    return Tensor(np.ones(v.shape, dtype=dtype or v.dtype))


@_host_only
def one_hot(x, num_classes, axis=-1, dtype=None):
    """Integer labels ``x`` as one-hot rows along a new ``axis`` (a constant)."""
    labels = np.asarray(value_of(x))
    if labels.dtype.kind not in "iu":
        if labels.size and not (labels == np.round(labels)).all():
            raise ValueError("one_hot: x must hold integer class labels")
        labels = labels.astype(np.int64)
    out = (labels[..., None] == np.arange(int(num_classes))).astype(dtype or config.floatx())
    return Tensor(np.moveaxis(out, -1, axis) if axis != -1 else out)


@_host_only
def logsumexp(x, axis=None, keepdims=False):
    """``log(sum(exp(x)))`` over ``axis``, without overflow; the gradient is the softmax."""
    a = _float_array(x, "logsumexp")
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    s = np.sum(np.exp(a - m), axis=axis, keepdims=True)
    full = np.log(s) + m
    out = full if keepdims else (np.squeeze(full, axis=axis) if axis is not None
                                 else full.reshape(()))

    def backward(g, needs):
        return (np.exp(a - full) * _expand(g, a.shape, axis, keepdims),)
    return _one("logsumexp", (x,), np.asarray(out, dtype=a.dtype), backward)


# ------------------------------------------------------------------------ activations


def _has_kernel(name) -> bool:
    """True when :mod:`fastcnn.activations` maps ``name`` to a backend kernel pair."""
    return name in _activations.KNOWN and not _activations.is_identity(name)


def _kernel_activation(name, x, **params):
    """``name`` through the ACTIVE backend's kernel pair (host or device arrays);
    ``params`` (an activation's own, e.g. ``alpha``) go to the kernel."""
    backend = backends.current()
    a = _kernel_array(x, name)
    y, ctx = _activations.forward(backend, name, a, **params)

    def backward(g, needs):
        return (_activations.backward(backend, name, _kernel_grad(g, y), ctx),)
    return _one(name, (x,), y, backward)


def _activation(name, x, fn, grad, use_kernel=True, **params):
    """The kernel pair when there is one (and ``use_kernel``), else NumPy on the host."""
    if use_kernel and _has_kernel(name):
        return _kernel_activation(name, x, **params)
    _refuse_device(name, (x,))
    return _unary(name, x, fn, grad)


def _sigmoid_np(a):
    e = np.exp(-np.abs(a))
    return np.where(a >= 0, 1, e) / (1 + e)


def relu(x):
    """``max(x, 0)``; the derivative at 0 is 0."""
    return _activation("relu", x, lambda a: np.maximum(a, 0), lambda g, a, out: g * (a > 0))


def relu6(x):
    """``min(max(x, 0), 6)``; the gradient passes where ``0 < x < 6``."""
    return _activation("relu6", x, lambda a: np.minimum(np.maximum(a, 0), 6),
                       lambda g, a, out: g * ((a > 0) & (a < 6)))


def sigmoid(x):
    """``1 / (1 + exp(-x))``."""
    return _activation("sigmoid", x, _sigmoid_np, lambda g, a, out: g * out * (1 - out))


def tanh(x):
    """Hyperbolic tangent."""
    return _activation("tanh", x, np.tanh, lambda g, a, out: g * (1 - out * out))


def softplus(x):
    """``log(1 + exp(x))``, without overflow."""
    return _activation("softplus", x, lambda a: np.logaddexp(0, a),
                       lambda g, a, out: g * _sigmoid_np(a))


def softsign(x):
    """``x / (1 + |x|)``."""
    return _activation("softsign", x, lambda a: a / (1 + np.abs(a)),
                       lambda g, a, out: g / np.square(1 + np.abs(a)))


def silu(x):
    """``x * sigmoid(x)`` (swish)."""
    def grad(g, a, out):
        s = _sigmoid_np(a)
        return g * (s + a * s * (1 - s))
    return _activation("silu", x, lambda a: a * _sigmoid_np(a), grad)


def log_sigmoid(x):
    """``log(sigmoid(x)) = -softplus(-x)``."""
    return _activation("log_sigmoid", x, lambda a: -np.logaddexp(0, -a),
                       lambda g, a, out: g * _sigmoid_np(-a))


def elu(x, alpha=1.0):
    """``x`` for ``x > 0``, else ``alpha * (exp(x) - 1)``."""
    return _activation("elu", x, lambda a: np.where(a > 0, a, alpha * np.expm1(a)),
                       lambda g, a, out: g * np.where(a > 0, 1, alpha * np.exp(a)),
                       alpha=float(alpha))


_SELU_ALPHA = 1.6732632423543772
_SELU_SCALE = 1.0507009873554805


def selu(x):
    """``scale * elu(x, alpha)`` with Keras's constants."""
    return _activation(
        "selu", x, lambda a: _SELU_SCALE * np.where(a > 0, a, _SELU_ALPHA * np.expm1(a)),
        lambda g, a, out: g * _SELU_SCALE * np.where(a > 0, 1, _SELU_ALPHA * np.exp(a)))


def leaky_relu(x, negative_slope=0.2):
    """``x`` for ``x > 0``, else ``negative_slope * x`` (Keras's op default 0.2)."""
    return _activation("leaky_relu", x, lambda a: np.where(a > 0, a, negative_slope * a),
                       lambda g, a, out: g * np.where(a > 0, 1, negative_slope),
                       negative_slope=float(negative_slope))


def _erf(a):
    import math
    return np.vectorize(math.erf, otypes=[a.dtype])(a) if a.size else a.copy()


def gelu(x, approximate=True):
    """Gaussian error linear unit (``keras.ops.gelu``: the tanh approximation by default,
    the exact ``x/2 * (1 + erf(x / sqrt 2))`` with ``approximate=False``)."""
    if approximate:
        c, k = 0.7978845608028654, 0.044715

        def fn(a):
            return 0.5 * a * (1 + np.tanh(c * (a + k * a ** 3)))

        def grad(g, a, out):
            t = np.tanh(c * (a + k * a ** 3))
            return g * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * c * (1 + 3 * k * a * a))
        return _activation("gelu_approximate", x, fn, grad)

    def grad_exact(g, a, out):
        return g * (0.5 * (1 + _erf(a / np.sqrt(2))) + a * np.exp(-0.5 * a * a)
                    / np.sqrt(2 * np.pi))
    return _activation("gelu", x, lambda a: 0.5 * a * (1 + _erf(a / np.sqrt(2))),
                       grad_exact)


def _last_axis(axis, ndim):
    return axis is None or axis == -1 or (ndim and axis == ndim - 1)


def _row_wise(name, x, axis):
    """A row-wise activation's kernel pair along ``axis`` (another axis is moved last
    first; on device arrays only the last axis)."""
    v = value_of(x)
    ndim = len(np.shape(v)) if not _device.is_device_array(v) else len(v.shape)
    if ndim == 0:
        raise ValueError(f"{name} needs an array of rank >= 1, got a scalar")
    if _last_axis(axis, ndim):
        return _kernel_activation(name, x)
    _refuse_device(name, (x,))
    ax = int(axis) % ndim
    backend = backends.current()
    a = _kernel_array(x, name)
    y2, ctx = _activations.forward(backend, name,
                                   np.ascontiguousarray(np.moveaxis(a, ax, -1)))

    def backward(g, needs):
        g2 = np.ascontiguousarray(np.moveaxis(np.asarray(g, dtype=a.dtype), ax, -1))
        return (np.moveaxis(_activations.backward(backend, name, g2, ctx), -1, ax),)
    return _one(name, (x,), np.moveaxis(y2, -1, ax), backward)


def softmax(x, axis=-1):
    """``exp(x) / sum(exp(x))`` along ``axis``, through the backend's softmax kernels
    (another axis is moved last first; on device arrays only the last axis)."""
    return _row_wise("softmax", x, axis)


def _log_softmax_np(a, axis):
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    shifted = a - m
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def log_softmax(x, axis=-1):
    """``x - logsumexp(x)`` along ``axis`` (stable); gradient ``g - softmax * sum(g)``.
    The backend's kernel pair when :mod:`fastcnn.activations` has one, else NumPy."""
    if _has_kernel("log_softmax"):
        return _row_wise("log_softmax", x, axis)
    return _log_softmax_host(x, axis)


def _log_softmax_host(x, axis):
    _refuse_device("log_softmax", (x,))
    a = _float_array(x, "log_softmax")
    if a.ndim == 0:
        raise ValueError("log_softmax needs an array of rank >= 1, got a scalar")
    out = _log_softmax_np(a, axis)

    def backward(g, needs):
        return (g - np.exp(out) * np.sum(g, axis=axis, keepdims=True),)
    return _one("log_softmax", (x,), out.astype(a.dtype, copy=False), backward)


def _kernel_names():
    """Activations that :mod:`fastcnn.activations` knows and this module has no function
    for yet: each becomes ``fastcnn.ops.<name>(x)`` running its kernel pair."""
    for name in _activations.KNOWN:
        if _has_kernel(name) and name not in globals():
            def op(x, _name=name):
                return _kernel_activation(_name, x)
            op.__name__ = op.__qualname__ = name
            op.__doc__ = f"The {name!r} activation through the active backend's kernel pair."
            globals()[name] = op
            __all__.append(name)


_kernel_names()
swish = silu
hard_swish = globals().get("hard_silu")
if hard_swish is None:
    del hard_swish
else:
    __all__.append("hard_swish")
__all__ += ["gelu", "swish"]


# ----------------------------------------------------------------------------- losses
# Per-sample values, as keras.ops computes them with the TensorFlow backend. Probabilities
# are clipped to [epsilon, 1 - epsilon] (Keras's 1e-7); the clip passes no gradient where
# it is active. With from_logits=True the work goes to fastcnn.nn (the backend's fused
# kernels, stable for any logit).


def _epsilon():
    from .losses import EPSILON
    return EPSILON


def _check_same_shape(op, target_shape, output_shape):
    if tuple(target_shape) != tuple(output_shape):
        raise ValueError(f"{op}: target and output must have the same shape, got "
                         f"target.shape={tuple(target_shape)}, "
                         f"output.shape={tuple(output_shape)}")
    if not output_shape:
        raise ValueError(f"{op}: target and output must be at least rank 1, got scalars")


def categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """``-sum(target * log(p))`` along ``axis``, one value per sample. Probabilities are
    renormalised to sum to 1, then clipped (Keras)."""
    t, o = value_of(target), value_of(output)
    _check_same_shape("categorical_crossentropy", _shape_any(t), _shape_any(o))
    if from_logits:
        from . import nn
        return nn.softmax_cross_entropy_with_logits(target, output, axis=axis)
    _refuse_device("categorical_crossentropy", (target, output))
    p = _float_array(output, "categorical_crossentropy", "output")
    ta = np.asarray(t, dtype=p.dtype)
    eps = _epsilon()
    s = np.sum(p, axis=axis, keepdims=True)
    q = p / s
    c = np.clip(q, eps, 1.0 - eps)
    log_c = np.log(c)
    out = -np.sum(ta * log_c, axis=axis)

    def backward(g, needs):
        ge = np.expand_dims(g, axis)
        dt = -log_c * ge if needs[0] else None
        dp = None
        if needs[1]:
            gq = -ta / c * ge * ((q >= eps) & (q <= 1.0 - eps))
            # through q = p / sum(p): dL/dp_j = (gq_j - sum_k gq_k q_k) / s
            dp = (gq - np.sum(gq * q, axis=axis, keepdims=True)) / s
        return dt, dp
    return _one("categorical_crossentropy", (target, output), out.astype(p.dtype), backward)


def _shape_any(v):
    return tuple(v.shape) if _device.is_device_array(v) else np.shape(v)


def _labels(op, target, output_shape):
    """Integer labels for ``output_shape`` (a trailing axis of 1 is squeezed, as Keras)."""
    t = value_of(target)
    if _device.is_device_array(t):
        raise NotImplementedError(f"{op}: labels must be a host (NumPy) array; the logits "
                                  f"may be on the device")
    t = np.asarray(t)
    if t.ndim == len(output_shape) and t.ndim and t.shape[-1] == 1:
        t = t.reshape(t.shape[:-1])
    if t.shape != tuple(output_shape[:-1]):
        raise ValueError(f"{op}: target must have the shape of output up to its last axis, "
                         f"{tuple(output_shape[:-1])}, got target.shape={t.shape} "
                         f"(output.shape={tuple(output_shape)})")
    if t.dtype.kind not in "iu":
        if t.dtype.kind == "f" and t.size and not (np.isfinite(t).all()
                                                    and (t == np.round(t)).all()):
            raise ValueError(f"{op}: target must hold integer class labels, got "
                             f"non-integer values")
        if t.dtype.kind not in "fb":
            raise TypeError(f"{op}: target must hold integer class labels, got dtype "
                            f"{t.dtype}")
        t = t.astype(np.int64)
    k = output_shape[-1]
    if t.size and (t.min() < 0 or t.max() >= k):
        bad = t[(t < 0) | (t >= k)].reshape(-1)[0]
        raise ValueError(f"{op}: labels must lie in [0, {k}) for {k} classes, got label "
                         f"{bad}")
    return t


def sparse_categorical_crossentropy(target, output, from_logits=False, axis=-1):
    """Categorical cross-entropy with integer labels ``target`` (shape of ``output``
    without its last axis), one value per sample. Probabilities are clipped, then their
    log is taken as logits (Keras's TensorFlow backend): ``-log(c_label / sum(c))``."""
    o = value_of(output)
    shape = _shape_any(o)
    if not shape:
        raise ValueError("sparse_categorical_crossentropy: output must be at least rank 1, "
                         "got a scalar")
    if not _last_axis(axis, len(shape)):
        raise ValueError(f"sparse_categorical_crossentropy: only axis=-1 is supported, got "
                         f"axis={axis}")
    labels = _labels("sparse_categorical_crossentropy", target, shape)
    if from_logits:
        from . import nn
        return nn.sparse_softmax_cross_entropy_with_logits(labels, output)
    _refuse_device("sparse_categorical_crossentropy", (output,))
    p = _float_array(output, "sparse_categorical_crossentropy", "output")
    eps = _epsilon()
    c = np.clip(p, eps, 1.0 - eps)
    sums = c.sum(axis=-1)
    picked = np.take_along_axis(c, labels[..., None], axis=-1)[..., 0]
    out = np.log(sums) - np.log(picked)

    def backward(g, needs):
        d = np.broadcast_to((g / sums)[..., None], p.shape).copy()
        hot = labels[..., None] == np.arange(p.shape[-1])
        d -= hot * (g / picked)[..., None]
        d *= (p >= eps) & (p <= 1.0 - eps)
        return None, d.astype(p.dtype, copy=False)
    return _one("sparse_categorical_crossentropy", (target, output),
                out.astype(p.dtype), backward)


def binary_crossentropy(target, output, from_logits=False):
    """``-(t log p + (1 - t) log(1 - p))`` element-wise (no reduction, as keras.ops).
    Probabilities are clipped; with ``from_logits`` the stable
    :func:`fastcnn.nn.sigmoid_cross_entropy_with_logits`."""
    t, o = value_of(target), value_of(output)
    if tuple(_shape_any(t)) != tuple(_shape_any(o)):
        raise ValueError(f"binary_crossentropy: target and output must have the same shape, "
                         f"got target.shape={tuple(_shape_any(t))}, "
                         f"output.shape={tuple(_shape_any(o))}")
    if from_logits:
        from . import nn
        return nn.sigmoid_cross_entropy_with_logits(labels=target, logits=output)
    _refuse_device("binary_crossentropy", (target, output))
    p = _float_array(output, "binary_crossentropy", "output")
    ta = np.asarray(t, dtype=p.dtype)
    eps = _epsilon()
    c = np.clip(p, eps, 1.0 - eps)
    log_c, log_1c = np.log(c), np.log(1.0 - c)
    out = -(ta * log_c + (1.0 - ta) * log_1c)

    def backward(g, needs):
        dt = -(log_c - log_1c) * g if needs[0] else None
        dp = None
        if needs[1]:
            dp = g * ((1.0 - ta) / (1.0 - c) - ta / c) * ((p >= eps) & (p <= 1.0 - eps))
        return dt, dp
    return _one("binary_crossentropy", (target, output), np.asarray(out, dtype=p.dtype),
                backward)


def _register_activation_functions():
    """``Dense(128, activation=fastcnn.ops.relu)`` stores the name 'relu' (a saved model
    holds names, not functions)."""
    from . import activations
    names = {"gelu": 'gelu_approximate'}
    for name in ("relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "elu", "selu",
                 "gelu", "softplus", "softsign", "silu", "swish", "leaky_relu",
                 "hard_sigmoid", "hard_silu", "hard_swish", "exponential"):
        function = globals().get(name)
        if callable(function):
            activations.register_function(function, names.get(name, name))


_register_activation_functions()
