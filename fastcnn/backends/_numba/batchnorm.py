"""The ``@njit`` batch-normalisation kernels of the ``numba`` backend, x as (rows, C).

Self-contained on purpose (kernels.py's rule): numba's ``cache=True`` keys a kernel on the
file it is defined in, so every kernel, helper and flag these use lives in THIS file.

The structure of csrc/batchnorm.pyx: loops over the contiguous channels of one row
(vectorised), rows in fixed blocks of ``block`` rows (a count fixed by the shape); the
per-channel sums are float64, one partial per block, combined serially in block order, so
results do not depend on the thread count. Statistics: per block the mean, then the sum of
squared deviations from it (the second read hits the cache), combined with Chan's update.
"""
from __future__ import annotations

from numba import njit, prange

# kernels.FASTMATH's set, repeated here (see the module doc): no nnan / ninf.
_FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}
_PARALLEL = dict(parallel=True, fastmath=_FASTMATH, cache=True, nogil=True)
_SERIAL = dict(fastmath=_FASTMATH, cache=True, nogil=True)


@njit(**_PARALLEL)
def stats_partials(x, block, part):
    """``part[b, 0]`` = mean and ``part[b, 1]`` = sum of squared deviations of block b."""
    rows, c_total = x.shape
    for b in prange(part.shape[0]):
        r0 = b * block
        r1 = min(rows, r0 + block)
        m = part[b, 0]
        q = part[b, 1]
        for c in range(c_total):
            m[c] = 0.0
            q[c] = 0.0
        for r in range(r0, r1):
            row = x[r]
            for c in range(c_total):
                m[c] += row[c]
        inv = 1.0 / (r1 - r0)
        for c in range(c_total):
            m[c] *= inv
        for r in range(r0, r1):
            row = x[r]
            for c in range(c_total):
                d = row[c] - m[c]
                q[c] += d * d


@njit(**_SERIAL)
def stats_combine(part, block, rows, mean, var):
    """Chan's pairwise combination of the blocks, in block order."""
    for c in range(part.shape[2]):
        n_a = float(min(block, rows))
        m = part[0, 0, c]
        q = part[0, 1, c]
        for k in range(1, part.shape[0]):
            n_b = float(min(block, rows - k * block))
            n = n_a + n_b
            delta = part[k, 0, c] - m
            m = m + delta * (n_b / n)
            q = q + part[k, 1, c] + delta * delta * (n_a * n_b / n)
            n_a = n
        mean[c] = m
        var[c] = q / rows


@njit(**_PARALLEL)
def normalize(x, mean, inv_std, gamma, beta, has_gamma, has_beta, y, block):
    rows, c_total = x.shape
    nb = (rows + block - 1) // block
    for b in prange(nb):
        for r in range(b * block, min(rows, (b + 1) * block)):
            xr = x[r]
            yr = y[r]
            if has_gamma and has_beta:
                for c in range(c_total):
                    yr[c] = (xr[c] - mean[c]) * inv_std[c] * gamma[c] + beta[c]
            elif has_gamma:
                for c in range(c_total):
                    yr[c] = (xr[c] - mean[c]) * inv_std[c] * gamma[c]
            elif has_beta:
                for c in range(c_total):
                    yr[c] = (xr[c] - mean[c]) * inv_std[c] + beta[c]
            else:
                for c in range(c_total):
                    yr[c] = (xr[c] - mean[c]) * inv_std[c]


@njit(**_PARALLEL)
def grad_partials(x, dy, mean, inv_std, block, part):
    """``part[b, 0]`` = sum of dy, ``part[b, 1]`` = sum of dy * x_hat over block b."""
    rows, c_total = x.shape
    for b in prange(part.shape[0]):
        s1 = part[b, 0]
        s2 = part[b, 1]
        for c in range(c_total):
            s1[c] = 0.0
            s2[c] = 0.0
        for r in range(b * block, min(rows, (b + 1) * block)):
            xr = x[r]
            dr = dy[r]
            for c in range(c_total):
                xh = (xr[c] - mean[c]) * inv_std[c]
                s1[c] += dr[c]
                s2[c] += dr[c] * xh


@njit(**_SERIAL)
def grad_combine(part, dbeta, dgamma):
    for c in range(part.shape[2]):
        s1 = 0.0
        s2 = 0.0
        for k in range(part.shape[0]):
            s1 += part[k, 0, c]
            s2 += part[k, 1, c]
        dbeta[c] = s1
        dgamma[c] = s2


@njit(**_PARALLEL)
def dx_train(x, dy, mean, inv_std, scale, k1, k2, dx, block):
    """``dx = ((dy - x_hat * k2) - k1) * scale``."""
    rows, c_total = x.shape
    nb = (rows + block - 1) // block
    for b in prange(nb):
        for r in range(b * block, min(rows, (b + 1) * block)):
            xr = x[r]
            dr = dy[r]
            o = dx[r]
            for c in range(c_total):
                xh = (xr[c] - mean[c]) * inv_std[c]
                o[c] = ((dr[c] - xh * k2[c]) - k1[c]) * scale[c]
