"""Fused losses: the per-row (per-element) loss and the gradient w.r.t. the logits in one
kernel; the batch mean is then a deterministic single-block reduction
(:func:`~fastcnn.backends._cuda.elementwise.reduce_sum`) of the per-row losses.

Stability as in the reference: ``log_softmax = z - max - log(sum(exp(z - max)))``, and the
sigmoid cross-entropy written in the logits, ``max(x, 0) - x*t + log1p(exp(-|x|))``.
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import kernel
from .elementwise import log_softmax_shift, sigmoid


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[::1], {t}[:, ::1])")
def softmax_cross_entropy(T):
    def softmax_cross_entropy(z, t, row_loss, dz):
        n = cuda.grid(1)
        rows, k = z.shape
        if n >= rows:
            return
        m, log_total = log_softmax_shift(T, z, n)
        loss = T(0)
        t_sum = T(0)
        for j in range(k):
            loss -= t[n, j] * (z[n, j] - m - log_total)
            t_sum += t[n, j]
        row_loss[n] = loss
        # d(-sum_k t_k log s_k)/dz_j = s_j * sum(t) - t_j, over N for the batch mean.
        for j in range(k):
            s = math.exp(z[n, j] - m - log_total)
            dz[n, j] = (s * t_sum - t[n, j]) / T(rows)
    return softmax_cross_entropy


@kernel("void({t}[:, ::1], int64[::1], {t}[::1], {t}[:, ::1], int32[::1])")
def sparse_softmax_cross_entropy(T):
    def sparse_softmax_cross_entropy(z, labels, row_loss, dz, bad):
        n = cuda.grid(1)
        rows, k = z.shape
        if n >= rows:
            return
        label = labels[n]
        if label < 0 or label >= k:
            # Every writer stores the same 1: the flag is deterministic without atomics.
            bad[0] = 1
            label = 0   # keeps the reads in bounds; the caller raises on the flag
        m, log_total = log_softmax_shift(T, z, n)
        row_loss[n] = -(z[n, label] - m - log_total)
        for j in range(k):
            s = math.exp(z[n, j] - m - log_total)
            if j == label:
                s -= T(1)
            dz[n, j] = s / T(rows)
    return sparse_softmax_cross_entropy


@kernel("void({t}[::1], {t}[::1], {t}[::1], {t}[::1])")
def sigmoid_cross_entropy(T):
    def sigmoid_cross_entropy(x, t, elem_loss, dx):
        i = cuda.grid(1)
        if i >= x.size:
            return
        v = x[i]
        e = math.exp(-abs(v))   # <= 1: no overflow for any logit
        elem_loss[i] = max(v, T(0)) - v * t[i] + math.log1p(e)
        dx[i] = (sigmoid(T, v) - t[i]) / T(x.size)
    return sigmoid_cross_entropy
