"""Element-wise and row-wise kernels: activations, their backwards, and small helpers.

One thread per element (or per row for softmax, whose rows are short: class scores or
the channels of one pixel). Arrays arrive flattened to 1-D (2-D for softmax).
NaN semantics follow the reference: relu and sigmoid propagate NaN, relu's derivative at
0 is 0, and a NaN in a softmax row makes the whole row NaN.
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import REDUCE_BLOCK, kernel


@kernel("void({t}[::1], {t}[::1])")
def relu_forward(T):
    def relu_forward(x, y):
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            # 'v != v' keeps NaN (np.maximum propagates it): a diverging model is noticed.
            y[i] = v if (v > T(0) or v != v) else T(0)
    return relu_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def relu_backward(T):
    def relu_backward(dy, y, dx):
        i = cuda.grid(1)
        if i < dy.size:
            dx[i] = dy[i] if y[i] > T(0) else T(0)
    return relu_backward


@kernel("void({t}[::1], {t}[::1])")
def sigmoid_forward(T):
    def sigmoid_forward(x, y):
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            # exp(-|x|) <= 1 never overflows: 1/(1+e) for x >= 0, e/(1+e) below.
            e = math.exp(-abs(v))
            y[i] = (T(1) if v >= T(0) else e) / (T(1) + e)
    return sigmoid_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def sigmoid_backward(T):
    def sigmoid_backward(dy, y, dx):
        i = cuda.grid(1)
        if i < dy.size:
            s = y[i]
            dx[i] = dy[i] * s * (T(1) - s)
    return sigmoid_backward


@kernel("void({t}[::1], {t}[::1])")
def tanh_forward(T):
    def tanh_forward(x, y):
        i = cuda.grid(1)
        if i < x.size:
            y[i] = math.tanh(x[i])
    return tanh_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def tanh_backward(T):
    def tanh_backward(dy, y, dx):
        i = cuda.grid(1)
        if i < dy.size:
            t = y[i]
            dx[i] = dy[i] * (T(1) - t * t)
    return tanh_backward


@kernel("void({t}[:, ::1], {t}[:, ::1])")
def softmax_forward(T):
    def softmax_forward(x, y):
        n = cuda.grid(1)
        if n < x.shape[0]:
            k = x.shape[1]
            # Subtracting the row max makes every exponent <= 0 (no overflow) and one
            # term of the sum exactly 1 (no division by 0).
            m = x[n, 0]
            for j in range(1, k):
                if x[n, j] > m:
                    m = x[n, j]
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


@kernel("void({t}[::1], {t}[::1], {t}, {t}[::1])")
def add_scaled(T):
    def add_scaled(a, b, alpha, out):
        i = cuda.grid(1)
        if i < a.size:
            out[i] = a[i] + alpha * b[i]
    return add_scaled


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def multiply(T):
    def multiply(a, b, out):
        i = cuda.grid(1)
        if i < a.size:
            out[i] = a[i] * b[i]
    return multiply


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
