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


# ---------------------------------------------- the other activations of fastcnn.activations
# Formulas and derivatives: fastcnn/backends/_activations.py. Each backward's second array
# is what its forward kept: the output y (selu, hard_sigmoid, exponential) or the input x.


@kernel("void({t}[::1], {t}[::1], {t}, {t}, {t}, {t}, boolean)")
def relu_general_forward(T):
    def relu_general_forward(x, y, s, lw, hg, th, has_slope):
        """Keras's relu(x, negative_slope=s, ...): x above th (else 0) clipped to [lw, hg]
        (+-inf: no bound), minus s * max(th - x, 0); tests a NaN fails keep it."""
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            a = T(0) if v <= th else v
            if a < lw:
                a = lw
            if a > hg:
                a = hg
            if has_slope:  # else skipped: 0 * inf would make relu(-inf) NaN
                n = th - v
                if n > T(0):
                    a = a - s * n
            y[i] = a
    return relu_general_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}, {t}, {t}, {t}, boolean, boolean)")
def relu_general_backward(T):
    def relu_general_backward(dy, x, dx, s, lw, hg, th, has_slope, unbounded):
        i = cuda.grid(1)
        if i < dy.size:
            v = x[i]
            if v > th and v > lw and (unbounded or v < hg):
                dx[i] = dy[i]
            elif has_slope and v <= th:
                dx[i] = s * dy[i]
            else:
                dx[i] = T(0)
    return relu_general_backward


@kernel("void({t}[::1], {t}[::1], {t})")
def elu_forward(T):
    def elu_forward(x, y, alpha):
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            y[i] = v if v > T(0) else alpha * math.expm1(v)
    return elu_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1], {t})")
def elu_backward(T):
    def elu_backward(dy, x, y, dx, alpha):
        i = cuda.grid(1)
        if i < dy.size:
            dx[i] = dy[i] if x[i] > T(0) else dy[i] * (y[i] + alpha)
    return elu_backward


# SELU's constants and GELU's (TensorFlow's values); T(...) keeps float32 kernels float32.
SELU_SCALE = 1.0507009873554804934193349852946
SELU_SCALE_ALPHA = 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717


@device_function
def selu(T, v):
    return T(SELU_SCALE) * v if v > T(0) else T(SELU_SCALE_ALPHA) * math.expm1(v)


@device_function
def selu_grad(T, dy, y):
    # y > 0 exactly where x > 0.
    return dy * T(SELU_SCALE) if y > T(0) else dy * (y + T(SELU_SCALE_ALPHA))


@device_function
def gelu(T, v):
    return T(0.5) * v * math.erfc(-v * T(0.7071067811865476))


@device_function
def gelu_grad(T, dy, v):
    cdf = T(0.5) * math.erfc(-v * T(0.7071067811865476))
    pdf = T(0.3989422804014327) * math.exp(T(-0.5) * v * v)
    return dy * (cdf + v * pdf)


@device_function
def gelu_approximate(T, v):
    u = T(0.7978845608028654) * (v + T(0.044715) * v * v * v)
    return T(0.5) * v * (T(1) + math.tanh(u))


@device_function
def gelu_approximate_grad(T, dy, v):
    t = math.tanh(T(0.7978845608028654) * (v + T(0.044715) * v * v * v))
    du = T(0.7978845608028654) * (T(1) + T(3 * 0.044715) * v * v)
    return dy * (T(0.5) * (T(1) + t) + T(0.5) * v * (T(1) - t * t) * du)


@device_function
def silu(T, v):
    return v * sigmoid(T, v)


@device_function
def silu_grad(T, dy, v):
    s = sigmoid(T, v)
    return dy * (s * (T(1) + v * (T(1) - s)))


@device_function
def softplus(T, v):
    # max(x, 0) + log1p(exp(-|x|)): no overflow for any x.
    return (v if v > T(0) else T(0)) + math.log1p(math.exp(-abs(v)))


@device_function
def softplus_grad(T, dy, v):
    return dy * sigmoid(T, v)


@device_function
def softsign(T, v):
    return v / (T(1) + abs(v))


@device_function
def softsign_grad(T, dy, v):
    d = T(1) + abs(v)
    return dy / (d * d)


@device_function
def hard_sigmoid(T, v):
    # relu6(x + 3) / 6; a NaN fails both tests and passes through.
    a = v + T(3)
    if a < T(0):
        a = T(0)
    if a > T(6):
        a = T(6)
    return a / T(6)


@device_function
def hard_sigmoid_grad(T, dy, y):
    return dy / T(6) if (y > T(0) and y < T(1)) else T(0)


@device_function
def hard_silu(T, v):
    return v * hard_sigmoid(T, v)


@device_function
def hard_silu_grad(T, dy, v):
    if v <= T(-3):  # at -3 and 3 themselves: TensorFlow's 0 and 1
        return T(0)
    if v >= T(3):
        return dy
    return dy * ((v + v + T(3)) / T(6))


@device_function
def exponential(T, v):
    return math.exp(v)


@kernel("void({t}[::1], {t}[::1])")
def selu_forward(T):
    return _map_unary(T, selu)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def selu_backward(T):
    return _map_binary(T, selu_grad)


@kernel("void({t}[::1], {t}[::1])")
def gelu_forward(T):
    return _map_unary(T, gelu)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def gelu_backward(T):
    return _map_binary(T, gelu_grad)


@kernel("void({t}[::1], {t}[::1])")
def gelu_approximate_forward(T):
    return _map_unary(T, gelu_approximate)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def gelu_approximate_backward(T):
    return _map_binary(T, gelu_approximate_grad)


@kernel("void({t}[::1], {t}[::1])")
def silu_forward(T):
    return _map_unary(T, silu)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def silu_backward(T):
    return _map_binary(T, silu_grad)


@kernel("void({t}[::1], {t}[::1])")
def softplus_forward(T):
    return _map_unary(T, softplus)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def softplus_backward(T):
    return _map_binary(T, softplus_grad)


@kernel("void({t}[::1], {t}[::1])")
def softsign_forward(T):
    return _map_unary(T, softsign)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def softsign_backward(T):
    return _map_binary(T, softsign_grad)


@kernel("void({t}[::1], {t}[::1])")
def hard_sigmoid_forward(T):
    return _map_unary(T, hard_sigmoid)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def hard_sigmoid_backward(T):
    return _map_binary(T, hard_sigmoid_grad)


@kernel("void({t}[::1], {t}[::1])")
def hard_silu_forward(T):
    return _map_unary(T, hard_silu)


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def hard_silu_backward(T):
    return _map_binary(T, hard_silu_grad)


@kernel("void({t}[::1], {t}[::1])")
def exponential_forward(T):
    return _map_unary(T, exponential)


# PReLU: alpha broadcasts over the batch and the shared axes. Positions p of one sample
# (x viewed as (N, P)) read alpha[aidx[p]]; alpha's gradient is reduced in two gathers
# (no atomics, fixed order): per position over the batch, then per alpha element over
# its positions, listed contiguously in ``order`` between ``offsets[a]`` and
# ``offsets[a + 1]``.


@kernel("void({t}[::1], {t}[::1], int64[::1], {t}[::1])")
def prelu_forward(T):
    def prelu_forward(x, alpha, aidx, y):
        i = cuda.grid(1)
        if i < x.size:
            v = x[i]
            y[i] = v if v > T(0) else alpha[aidx[i % aidx.size]] * v
    return prelu_forward


@kernel("void({t}[::1], {t}[::1], {t}[::1], int64[::1], {t}[::1])")
def prelu_backward_dx(T):
    def prelu_backward_dx(dy, x, alpha, aidx, dx):
        i = cuda.grid(1)
        if i < dy.size:
            v = x[i]
            if v > T(0):
                dx[i] = dy[i]
            elif v < T(0):
                dx[i] = alpha[aidx[i % aidx.size]] * dy[i]
            else:
                dx[i] = T(0)
    return prelu_backward_dx


@kernel("void({t}[::1], {t}[::1], {t}[::1])")
def prelu_position_sums(T):
    def prelu_position_sums(dy, x, partial):
        """``partial[p] = sum_n dy[n, p] * min(x[n, p], 0)`` with (N, P) flat views."""
        p = cuda.grid(1)
        positions = partial.size
        if p < positions:
            acc = T(0)
            for i in range(p, dy.size, positions):
                v = x[i]
                if v < T(0):
                    acc += dy[i] * v
            partial[p] = acc
    return prelu_position_sums


@kernel("void({t}[::1], int64[::1], int64[::1], {t}[::1])")
def prelu_alpha_sums(T):
    def prelu_alpha_sums(partial, order, offsets, dalpha):
        a = cuda.grid(1)
        if a < dalpha.size:
            acc = T(0)
            for j in range(offsets[a], offsets[a + 1]):
                acc += partial[order[j]]
            dalpha[a] = acc
    return prelu_alpha_sums


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


@kernel("void({t}[:, ::1], {t}[:, ::1])")
def log_softmax_forward(T):
    def log_softmax_forward(x, y):
        n = cuda.grid(1)
        if n < x.shape[0]:
            # (x - m) - log(sum(exp(x - m))), in that order (m + log(sum) would round
            # log(sum) away at the scale of m).
            m, log_total = log_softmax_shift(T, x, n)
            for j in range(x.shape[1]):
                y[n, j] = (x[n, j] - m) - log_total
    return log_softmax_forward


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[:, ::1])")
def log_softmax_backward(T):
    def log_softmax_backward(dy, y, dx):
        """``dx = dy - exp(y) * sum(dy)`` per row (exp(y) is the softmax)."""
        n = cuda.grid(1)
        if n < dy.shape[0]:
            s = T(0)
            for j in range(dy.shape[1]):
                s += dy[n, j]
            for j in range(dy.shape[1]):
                dx[n, j] = dy[n, j] - math.exp(y[n, j]) * s
    return log_softmax_backward


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
