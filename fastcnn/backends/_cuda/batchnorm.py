"""Batch normalisation kernels: x seen as (R rows, C channels), channels last.

* Per-channel reductions (the statistics; dbeta and dgamma) are cut into S fixed chunks of
  rows (S depends on the shapes only): one thread per (chunk, channel) reduces its chunk in
  row order into ``partial`` (a warp's threads read consecutive channels of one row:
  coalesced), then one thread per channel combines the S partials in chunk order. The
  statistics are per-chunk (mean, sum of squared deviations from it), combined with
  Chan's update; no float atomics, so results are bitwise the same on every run and GPU.
* Element-wise passes (normalise, dx) are one thread per element.
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import kernel


@kernel("void({t}[:, ::1], {t}[:, :, ::1], int64)")
def bn_stats_partials(T):
    def bn_stats_partials(x, partial, rows):
        idx = cuda.grid(1)
        chunks, _, c_total = partial.shape
        if idx >= chunks * c_total:
            return
        k = idx // c_total
        c = idx - k * c_total
        r0 = k * rows
        r1 = min(r0 + rows, x.shape[0])
        s = T(0)
        for r in range(r0, r1):
            s += x[r, c]
        m = s / T(r1 - r0)
        q = T(0)
        for r in range(r0, r1):
            d = x[r, c] - m
            q += d * d
        partial[k, 0, c] = m
        partial[k, 1, c] = q
    return bn_stats_partials


@kernel("void({t}[:, :, ::1], int64, int64, {t}[::1], {t}[::1])")
def bn_stats_combine(T):
    def bn_stats_combine(partial, rows, total, mean, var):
        c = cuda.grid(1)
        chunks = partial.shape[0]
        if c >= partial.shape[2]:
            return
        n_a = T(min(rows, total))
        m = partial[0, 0, c]
        q = partial[0, 1, c]
        for k in range(1, chunks):
            n_b = T(min(rows, total - k * rows))
            n = n_a + n_b
            delta = partial[k, 0, c] - m
            m = m + delta * (n_b / n)
            q = q + partial[k, 1, c] + delta * delta * (n_a * n_b / n)
            n_a = n
        mean[c] = m
        var[c] = q / T(total)
    return bn_stats_combine


@kernel("void({t}[::1], {t}, {t}[::1])")
def bn_inv_std(T):
    def bn_inv_std(var, epsilon, inv_std):
        c = cuda.grid(1)
        if c < var.size:
            inv_std[c] = T(1) / math.sqrt(var[c] + epsilon)
    return bn_inv_std


@kernel("void({t}[:, ::1], {t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}[:, ::1], boolean, "
        "boolean)")
def bn_normalize(T):
    def bn_normalize(x, mean, inv_std, gamma, beta, y, has_gamma, has_beta):
        idx = cuda.grid(1)
        c_total = x.shape[1]
        if idx >= x.shape[0] * c_total:
            return
        r = idx // c_total
        c = idx - r * c_total
        v = (x[r, c] - mean[c]) * inv_std[c]
        if has_gamma:
            v = v * gamma[c]
        if has_beta:
            v = v + beta[c]
        y[r, c] = v
    return bn_normalize


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[::1], {t}[::1], {t}[:, :, ::1], int64)")
def bn_grad_partials(T):
    def bn_grad_partials(x, dy, mean, inv_std, partial, rows):
        idx = cuda.grid(1)
        chunks, _, c_total = partial.shape
        if idx >= chunks * c_total:
            return
        k = idx // c_total
        c = idx - k * c_total
        r0 = k * rows
        r1 = min(r0 + rows, x.shape[0])
        s1 = T(0)
        s2 = T(0)
        for r in range(r0, r1):
            g = dy[r, c]
            s1 += g
            s2 += g * ((x[r, c] - mean[c]) * inv_std[c])
        partial[k, 0, c] = s1
        partial[k, 1, c] = s2
    return bn_grad_partials


@kernel("void({t}[:, :, ::1], {t}[::1], {t}[::1])")
def bn_grad_combine(T):
    def bn_grad_combine(partial, dbeta, dgamma):
        c = cuda.grid(1)
        if c >= partial.shape[2]:
            return
        s1 = T(0)
        s2 = T(0)
        for k in range(partial.shape[0]):
            s1 += partial[k, 0, c]
            s2 += partial[k, 1, c]
        dbeta[c] = s1
        dgamma[c] = s2
    return bn_grad_combine


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[::1], {t}[::1], {t}[::1], {t}[::1], {t}[::1], "
        "boolean, boolean, {t}[:, ::1])")
def bn_dx(T):
    def bn_dx(x, dy, mean, inv_std, gamma, dbeta, dgamma, has_gamma, training, dx):
        """Inference: ``dy * gamma * inv_std``; training:
        ``((dy - x_hat * dgamma / R) - dbeta / R) * gamma * inv_std``."""
        idx = cuda.grid(1)
        c_total = x.shape[1]
        n = x.shape[0]
        if idx >= n * c_total:
            return
        r = idx // c_total
        c = idx - r * c_total
        scale = gamma[c] * inv_std[c] if has_gamma else inv_std[c]
        if training:
            xh = (x[r, c] - mean[c]) * inv_std[c]
            dx[r, c] = ((dy[r, c] - xh * (dgamma[c] / T(n))) - dbeta[c] / T(n)) * scale
        else:
            dx[r, c] = dy[r, c] * scale
    return bn_dx


@kernel("void({t}[::1], {t}[::1], {t}, {t})")
def bn_moving_update(T):
    def bn_moving_update(moving, batch, momentum, rest):
        """``moving = moving * momentum + batch * rest`` in place (Keras's rule, ``rest``
        = 1 - momentum rounded to the dtype as NumPy rounds it on the host)."""
        c = cuda.grid(1)
        if c < moving.size:
            kept = moving[c] * momentum
            moving[c] = kept + rest * batch[c]
    return bn_moving_update
