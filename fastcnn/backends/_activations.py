"""Vectorised NumPy activation kernels shared by the CPU backends (im2col, numba, cython).

These are the activations of :mod:`fastcnn.activations` beyond relu / sigmoid / tanh /
softmax (which every backend writes itself). A CPU backend that has no faster kernel for
one of them imports it from here, so the op is listed in that backend's capability table
as its own: it runs in the calling backend's process on NumPy arrays, never on another
backend. The numba and cython backends replace the ReLU family and the hard (piecewise)
activations with compiled single-pass kernels; the transcendental ones stay here, because
NumPy's exp / log1p / tanh are SIMD while numba's and libm's are scalar.

Rules kept by every function (the kernel contract, see :mod:`fastcnn.backends`):

* float32 stays float32: constants are Python floats, which NumPy 2 (NEP 50) does not let
  promote an array, or ``dtype.type(...)``;
* no input is ever modified and no result aliases an input; ``ctx`` may hold the input
  ``x`` itself (a reference), so a caller must not change ``x`` before the backward;
* NaN in gives NaN out; nothing overflows for finite inputs except ``exponential`` (whose
  value does).

Formulas and their derivatives (``s`` = sigmoid, Keras 3 / TensorFlow definitions):

=====================  ==============================================  ===================
op                     forward                                         derivative
=====================  ==============================================  ===================
relu_general           ``a = x if x > t else 0``; clipped to           1 inside, ``slope``
(slope, max, t)        ``[0, max]`` (``[0, inf)`` when t == 0);         where ``x <= t``
                       ``a - slope * max(t - x, 0)``
relu6                  ``min(max(x, 0), 6)``                           1 on ``(0, 6)``
leaky_relu (slope)     ``x if x > 0 else slope * x``                   1 / ``slope``
elu (alpha)            ``x if x > 0 else alpha * (exp(x) - 1)``        1 / ``y + alpha``
selu                   ``scale * elu(x, alpha)`` (fixed constants)     ``scale`` / ``y +
                                                                       scale*alpha``
gelu                   ``x/2 * erfc(-x / sqrt 2)``                     ``Phi(x) + x phi(x)``
gelu_approximate       ``x/2 * (1 + tanh(c (x + 0.044715 x^3)))``      product rule
silu (swish)           ``x * s(x)``                                    ``s (1 + x (1 - s))``
softplus               ``max(x, 0) + log1p(exp(-|x|))``                ``s(x)``
softsign               ``x / (1 + |x|)``                               ``1 / (1 + |x|)^2``
hard_sigmoid           ``relu6(x + 3) / 6``                            1/6 on ``(-3, 3)``
hard_silu (swish)      ``x * hard_sigmoid(x)``                         0, ``(2x + 3)/6``, 1
prelu (alpha)          ``x if x > 0 else alpha * x``, alpha            1 / alpha; alpha's:
                       broadcast over the batch and shared axes        ``sum(dy min(x, 0))``
exponential            ``exp(x)``                                      ``y``
log_softmax            ``x - logsumexp(x)`` over the last axis         ``dy - exp(y)
                                                                       sum(dy)``
=====================  ==============================================  ===================
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import check_float as _check_float, check_same_dtype as _check_same_dtype

#: SELU's constants (Klambauer et al. 2017; TensorFlow's values, to double precision).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
#: sqrt(2 / pi) and the cubic coefficient of GELU's tanh approximation (TensorFlow's).
GELU_C = 0.7978845608028654
GELU_K = 0.044715
_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327


def relu_general_params(negative_slope, max_value, threshold):
    """``(slope, low, high, threshold)`` as floats: the clip interval of the positive part.

    Keras clips the thresholded input to ``[0, max_value]`` when ``max_value`` is given,
    and takes ``max(x, 0)`` when ``threshold == 0``; with neither (a non-zero threshold and
    no maximum) the part above the threshold is ``x`` itself, unclipped.
    """
    slope = float(negative_slope)
    t = float(threshold)
    high = math.inf if max_value is None else float(max_value)
    low = 0.0 if (t == 0.0 or max_value is not None) else -math.inf
    return slope, low, high, t


def _check_dy(dy, like):
    _check_same_dtype("dy", dy, like)
    if dy.shape != like.shape:
        raise ValueError(f"dy must have the forward output's shape {like.shape}, got {dy.shape}")


def _sigmoid(x):
    # (1 if x >= 0 else e) / (1 + e) with e = exp(-|x|) <= 1: no overflow for any x.
    e = np.exp(-np.abs(x))
    y = np.maximum(e, x >= 0, dtype=x.dtype)  # 1 where x >= 0, e below; NaN stays NaN
    e += 1
    y /= e
    return y


# ---------------------------------------------------------------- the ReLU family


def relu_general_forward(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's ``relu(x, negative_slope, max_value, threshold)``."""
    _check_float("x", x)
    slope, low, high, t = relu_general_params(negative_slope, max_value, threshold)
    zero = x.dtype.type(0)
    if t == 0.0:
        a = np.maximum(x, zero)  # propagates NaN
    else:
        a = np.where(x <= t, zero, x)  # NaN fails 'x <= t' and passes through
        if low != -math.inf:
            np.maximum(a, x.dtype.type(low), out=a)
    if high != math.inf:
        np.minimum(a, x.dtype.type(high), out=a)
    if slope != 0.0:
        if t == 0.0:  # a - slope * max(-x, 0) == a + slope * min(x, 0), exactly
            neg = np.minimum(x, zero)
            neg *= x.dtype.type(slope)
            a += neg
        else:
            neg = np.subtract(x.dtype.type(t), x)
            np.maximum(neg, zero, out=neg)
            neg *= x.dtype.type(slope)
            a -= neg
    return a, (x, (slope, low, high, t))


def relu_general_backward(dy, ctx):
    x, (slope, low, high, t) = ctx
    _check_dy(dy, x)
    inside = x > t
    if low != -math.inf:
        inside &= x > low
    if high != math.inf:
        inside &= x < high
    g = inside.astype(x.dtype)
    if slope != 0.0:
        g += x.dtype.type(slope) * (x <= t)
    g *= dy
    return g


def relu6_forward(x):
    return relu_general_forward(x, 0.0, 6.0, 0.0)


def relu6_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def leaky_relu_forward(x, negative_slope=0.2):
    return relu_general_forward(x, negative_slope, None, 0.0)


def leaky_relu_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


# ------------------------------------------------------------ exponential family


def elu_forward(x, alpha=1.0):
    _check_float("x", x)
    alpha = float(alpha)
    # expm1 of min(x, 0): no overflow warning from the branch that is not taken.
    y = np.expm1(np.minimum(x, x.dtype.type(0)))
    y *= x.dtype.type(alpha)
    y = np.where(x > 0, x, y)
    return y, (x, y, alpha)


def elu_backward(dy, ctx):
    x, y, alpha = ctx
    _check_dy(dy, y)
    return dy * np.where(x > 0, y.dtype.type(1), y + y.dtype.type(alpha))


def selu_forward(x):
    _check_float("x", x)
    y = np.expm1(np.minimum(x, x.dtype.type(0)))
    y *= x.dtype.type(SELU_SCALE * SELU_ALPHA)
    y = np.where(x > 0, x.dtype.type(SELU_SCALE) * x, y)
    return y, y


def selu_backward(dy, ctx):
    y = ctx
    _check_dy(dy, y)
    # y > 0 exactly where x > 0 (both constants are positive).
    one = y.dtype.type
    return dy * np.where(y > 0, one(SELU_SCALE), y + one(SELU_SCALE * SELU_ALPHA))


def exponential_forward(x):
    _check_float("x", x)
    y = np.exp(x)
    return y, y


def exponential_backward(dy, ctx):
    _check_dy(dy, ctx)
    return dy * ctx


# --------------------------------------------------------------- smooth gates


_erfc = np.frompyfunc(math.erfc, 1, 1)


def erfc(v):
    """Element-wise ``math.erfc`` (NumPy has no erf): float64 precision, in v's dtype."""
    return _erfc(v.astype(np.float64, copy=False)).astype(v.dtype)


def gelu_forward(x):
    _check_float("x", x)
    # Phi(x) = erfc(-x / sqrt 2) / 2 (TensorFlow's form: accurate for negative x too).
    y = erfc(-x * x.dtype.type(_SQRT_HALF))
    y *= x
    y *= x.dtype.type(0.5)
    return y, x


def gelu_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    t = x.dtype.type
    phi = np.exp(t(-0.5) * x * x) * t(_INV_SQRT_2PI)
    g = t(0.5) * erfc(-x * t(_SQRT_HALF)) + x * phi
    return dy * g


def gelu_approximate_forward(x):
    _check_float("x", x)
    t = x.dtype.type
    u = np.tanh(t(GELU_C) * (x + t(GELU_K) * (x * x * x)))
    u += t(1)
    u *= x
    u *= t(0.5)
    return u, x


def gelu_approximate_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    t = x.dtype.type
    x2 = x * x
    th = np.tanh(t(GELU_C) * (x + t(GELU_K) * (x2 * x)))
    du = t(GELU_C) * (t(1) + t(3 * GELU_K) * x2)
    g = t(0.5) * (t(1) + th) + t(0.5) * x * (t(1) - th * th) * du
    return dy * g


def silu_forward(x):
    _check_float("x", x)
    y = _sigmoid(x)
    y *= x
    return y, x


def silu_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    s = _sigmoid(x)
    one = x.dtype.type(1)
    return dy * (s * (one + x * (one - s)))


def softplus_forward(x):
    _check_float("x", x)
    y = np.log1p(np.exp(-np.abs(x)))
    y += np.maximum(x, x.dtype.type(0))
    return y, x


def softplus_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    return dy * _sigmoid(x)


def softsign_forward(x):
    _check_float("x", x)
    d = np.abs(x)
    d += x.dtype.type(1)
    return x / d, x


def softsign_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    d = np.abs(x)
    d += x.dtype.type(1)
    d *= d
    return dy / d


# -------------------------------------------------------------- hard (piecewise)


def hard_sigmoid_forward(x):
    _check_float("x", x)
    t = x.dtype.type
    y = x + t(3)
    np.clip(y, t(0), t(6), out=y)  # NaN stays NaN
    y /= t(6)
    return y, y


def hard_sigmoid_backward(dy, ctx):
    y = ctx
    _check_dy(dy, y)
    inside = (y > 0) & (y < 1)  # exactly -3 < x < 3
    return dy * (inside.astype(y.dtype) / y.dtype.type(6))


def hard_silu_forward(x):
    _check_float("x", x)
    t = x.dtype.type
    y = x + t(3)
    np.clip(y, t(0), t(6), out=y)
    y /= t(6)
    y *= x
    return y, x


def hard_silu_backward(dy, ctx):
    x = ctx
    _check_dy(dy, x)
    t = x.dtype.type
    g = (t(2) * x + t(3)) / t(6)
    g = np.where(x <= -3, t(0), np.where(x >= 3, t(1), g))  # TensorFlow's values at +-3
    return dy * g


# ----------------------------------------------------------------- log_softmax


def log_softmax_forward(x):
    """``x - logsumexp(x)`` over the last axis (any rank >= 1)."""
    _check_float("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis for log_softmax, got a 0-d array")
    if x.size == 0:
        y = np.empty_like(x)
        return y, y
    y = x - x.max(axis=-1, keepdims=True)
    y -= np.log(np.exp(y).sum(axis=-1, keepdims=True))
    return y, y


def log_softmax_backward(dy, ctx):
    y = ctx
    _check_dy(dy, y)
    return dy - np.exp(y) * dy.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------- prelu


def check_prelu_alpha(x, alpha):
    """alpha must have x's dtype and x's shape without the batch axis, with 1 along the
    shared axes (what broadcasts to every sample)."""
    _check_same_dtype("alpha", alpha, x)
    want = tuple(x.shape[1:])
    if (len(alpha.shape) != len(want)
            or any(a not in (1, d) for a, d in zip(alpha.shape, want))):
        raise ValueError(f"alpha must have the shape of x without its batch axis, {want}, "
                         f"with 1 along shared axes; got {tuple(alpha.shape)} for x of shape "
                         f"{tuple(x.shape)}")


def prelu_reduced_axes(x_shape, alpha_shape):
    """The axes of x that alpha's gradient sums over: the batch and alpha's size-1 axes."""
    return (0,) + tuple(i + 1 for i, (a, d) in enumerate(zip(alpha_shape, x_shape[1:]))
                        if a == 1 and d != 1)


def prelu_forward(x, alpha):
    _check_float("x", x)
    if x.ndim < 1:
        raise ValueError("x must have a batch axis for prelu, got a 0-d array")
    check_prelu_alpha(x, alpha)
    zero = x.dtype.type(0)
    y = np.minimum(x, zero)
    y *= alpha
    y += np.maximum(x, zero)  # max(x, 0) + alpha * min(x, 0): Keras's relu(x) - alpha relu(-x)
    return y, (x, alpha)


def prelu_backward(dy, ctx):
    x, alpha = ctx
    _check_dy(dy, x)
    zero = x.dtype.type(0)
    neg = np.minimum(x, zero)
    neg *= dy
    dalpha = neg.sum(axis=prelu_reduced_axes(x.shape, alpha.shape), keepdims=True)
    dalpha = dalpha.reshape(alpha.shape)
    # d/dx: 1 above 0, alpha below, 0 at 0 (TensorFlow's relu derivatives).
    g = np.where(x < 0, alpha, zero)
    g += x > 0
    g *= dy
    return g, dalpha


#: Every op this module defines (forward and backward names), for the backends' imports.
OPS = tuple(
    f"{name}_{way}"
    for name in ("relu_general", "relu6", "leaky_relu", "elu", "selu", "gelu",
                 "gelu_approximate", "silu", "softplus", "softsign", "hard_sigmoid",
                 "hard_silu", "exponential", "log_softmax", "prelu")
    for way in ("forward", "backward")
)
