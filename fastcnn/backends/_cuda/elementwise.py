"""Element-wise and row-wise kernels: activations, their backwards, and small helpers.

One thread per element (or per row for softmax, whose rows are short: class scores or
the channels of one pixel). Arrays arrive flattened to 1-D (2-D for softmax).
NaN semantics follow the reference: relu and sigmoid propagate NaN, relu's derivative at
0 is 0, and a NaN in a softmax row makes the whole row NaN.
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import REDUCE_BLOCK, device_function, kernel


# ------------------------------------------------------------- one thread per element


def _map_unary(T, op):
    """The kernel ``y[i] = op(T, x[i])``."""
    def map_unary(x, y):
        i = cuda.grid(1)
        if i < x.size:
            y[i] = op(T, x[i])
    return map_unary


def _map_binary(T, op):
    """The kernel ``out[i] = op(T, a[i], b[i])`` (activation backwards: ``a = dy, b = y``)."""
    def map_binary(a, b, out):
        i = cuda.grid(1)
        if i < a.size:
            out[i] = op(T, a[i], b[i])
    return map_binary


@device_function
def relu(T, v):
    # 'v != v' keeps NaN (np.maximum propagates it): a diverging model is noticed.
    return v if (v > T(0) or v != v) else T(0)


@device_function
def relu_grad(T, dy, y):
    return dy if y > T(0) else T(0)


@device_function
def sigmoid(T, v):
    # exp(-|x|) <= 1 never overflows: 1/(1+e) for x >= 0, e/(1+e) below.
    e = math.exp(-abs(v))
    return (T(1) if v >= T(0) else e) / (T(1) + e)


@device_function
def sigmoid_grad(T, dy, s):
    return dy * s * (T(1) - s)


@device_function
def tanh(T, v):
    return math.tanh(v)


@device_function
def tanh_grad(T, dy, t):
    return dy * (T(1) - t * t)


@device_function
def product(T, a, b):
    return a * b


@kernel("void({t}[::1], {t}[::1])")
def relu_forward(T):
    return _map_unary(T, relu)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def relu_backward(T):
    return _map_binary(T, relu_grad)


@kernel("void({t}[::1], {t}[::1])")
def sigmoid_forward(T):
    return _map_unary(T, sigmoid)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def sigmoid_backward(T):
    return _map_binary(T, sigmoid_grad)


@kernel("void({t}[::1], {t}[::1])")
def tanh_forward(T):
    return _map_unary(T, tanh)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def tanh_backward(T):
    return _map_binary(T, tanh_grad)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def multiply(T):
    return _map_binary(T, product)


@kernel("void({t}[::1], {t}[::1], {t}, {t}[::1])")
def add_scaled(T):
    def add_scaled(a, b, alpha, out):
        i = cuda.grid(1)
        if i < a.size:
            out[i] = a[i] + alpha * b[i]
    return add_scaled


# ------------------------------------------------------------------- one thread per row


@device_function
def row_max(z, n):
    """The largest of row ``n`` of ``z``. ``>`` passes over NaN, so a NaN is returned only
    from column 0; either way a NaN in the row makes the softmax using it all NaN."""
    m = z[n, 0]
    for j in range(1, z.shape[1]):
        if z[n, j] > m:
            m = z[n, j]
    return m


@device_function
def log_softmax_shift(T, z, n):
    """``(m, log(sum_j exp(z[n, j] - m)))`` with m the row max, so that
    ``log_softmax(z)[n, j] = z[n, j] - m - log_total``.

    Subtracting the row max makes every exponent <= 0 (no overflow) and one term of the
    sum exactly 1 (no log of 0).
    """
    m = row_max(z, n)
    total = T(0)
    for j in range(z.shape[1]):
        total += math.exp(z[n, j] - m)
    return m, math.log(total)


@kernel("void({t}[:, ::1], {t}[:, ::1])")
def softmax_forward(T):
    def softmax_forward(x, y):
        n = cuda.grid(1)
        if n < x.shape[0]:
            k = x.shape[1]
            # Subtracting the row max makes every exponent <= 0 (no overflow) and one
            # term of the sum exactly 1 (no division by 0).
            m = row_max(x, n)
            total = T(0)
            for j in range(k):
                e = math.exp(x[n, j] - m)
                y[n, j] = e
                total += e
            for j in range(k):
                y[n, j] = y[n, j] / total
    return softmax_forward


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[:, ::1])")
def softmax_backward(T):
    def softmax_backward(dy, y, dx):
        n = cuda.grid(1)
        if n < dy.shape[0]:
            k = dy.shape[1]
            s = T(0)
            for j in range(k):
                s += dy[n, j] * y[n, j]
            for j in range(k):
                dx[n, j] = y[n, j] * (dy[n, j] - s)
    return softmax_backward


@kernel("void({t}[::1], {t}[::1], int64, boolean)")
def reduce_sum(T):
    def reduce_sum(values, out, divisor, square):
        """``out[0] = sum(values or values**2) / divisor`` in ONE block, deterministically:
        thread t sums values[t::threads] in order, then a fixed shared-memory tree."""
        partial = cuda.shared.array(REDUCE_BLOCK, T)
        t = cuda.threadIdx.x
        threads = cuda.blockDim.x
        acc = T(0)
        for i in range(t, values.size, threads):
            v = values[i]
            acc += v * v if square else v
        partial[t] = acc
        cuda.syncthreads()
        half = threads // 2
        while half > 0:
            if t < half:
                partial[t] += partial[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            out[0] = partial[0] / T(divisor)
    return reduce_sum
