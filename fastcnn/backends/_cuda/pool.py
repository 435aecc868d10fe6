"""Max and average pooling (NHWC): forwards one thread per output element, backwards as
gathers, one thread per input element (no atomics, a fixed summation order).

Max pooling treats the padding as -inf and stores, per output, the row-major position
``a * pw + b`` of the winner inside its window. The winner is chosen exactly as
``np.argmax`` over the -inf-padded window (the reference): the FIRST maximum, and the
first NaN if the window holds one (NaN wins, so a diverging model is noticed).
"""
from __future__ import annotations

import math

from numba import cuda

from ._jit import kernel


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], int32[:, :, :, ::1], "
        "int64, int64, int64, int64, int64, int64)")
def maxpool_forward(T):
    def maxpool_forward(x, y, argmax, ph, pw, sh, sw, pt, pl):
        idx = cuda.grid(1)
        n_total, ho, wo, c = y.shape
        if idx >= n_total * ho * wo * c:
            return
        ch = idx % c
        j = (idx // c) % wo
        i = (idx // (c * wo)) % ho
        n = idx // (c * wo * ho)
        _, h, wd, _ = x.shape
        best = T(-math.inf)
        best_k = 0
        first = True
        for a in range(ph):
            r = i * sh - pt + a
            for bb in range(pw):
                q = j * sw - pl + bb
                v = T(-math.inf)   # the padding
                if r >= 0 and r < h and q >= 0 and q < wd:
                    v = x[n, r, q, ch]
                k = a * pw + bb
                if first:
                    best = v
                    best_k = k
                    first = False
                elif best == best and (v > best or v != v):
                    # 'best == best': once a NaN is chosen nothing replaces it.
                    best = v
                    best_k = k
        y[n, i, j, ch] = best
        argmax[n, i, j, ch] = best_k
    return maxpool_forward


@kernel("void({t}[:, :, :, ::1], int32[:, :, :, ::1], {t}[:, :, :, ::1], "
        "int64, int64, int64, int64, int64, int64)")
def maxpool_backward(T):
    def maxpool_backward(dy, argmax, dx, ph, pw, sh, sw, pt, pl):
        idx = cuda.grid(1)
        n_total, h, wd, c = dx.shape
        if idx >= n_total * h * wd * c:
            return
        ch = idx % c
        q = (idx // c) % wd
        r = (idx // (c * wd)) % h
        n = idx // (c * wd * h)
        _, ho, wo, _ = dy.shape
        pr = r + pt   # padded coordinates
        pq = q + pl
        # Windows i with i*sh <= pr < i*sh + ph, in row-major order (the reference's).
        i_lo = max(0, (pr - ph) // sh + 1)
        i_hi = min(ho - 1, pr // sh)
        j_lo = max(0, (pq - pw) // sw + 1)
        j_hi = min(wo - 1, pq // sw)
        acc = T(0)
        for i in range(i_lo, i_hi + 1):
            for j in range(j_lo, j_hi + 1):
                if argmax[n, i, j, ch] == (pr - i * sh) * pw + (pq - j * sw):
                    acc += dy[n, i, j, ch]
        dx[n, r, q, ch] = acc
    return maxpool_backward


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], "
        "int64, int64, int64, int64, int64, int64)")
def avgpool_forward(T):
    def avgpool_forward(x, y, ph, pw, sh, sw, pt, pl):
        idx = cuda.grid(1)
        n_total, ho, wo, c = y.shape
        if idx >= n_total * ho * wo * c:
            return
        ch = idx % c
        j = (idx // c) % wo
        i = (idx // (c * wo)) % ho
        n = idx // (c * wo * ho)
        _, h, wd, _ = x.shape
        # The window's overlap with the real (unpadded) input: padding adds nothing to the
        # sum and is not counted in the divisor.
        r0 = max(i * sh - pt, 0)
        r1 = min(i * sh - pt + ph, h)
        q0 = max(j * sw - pl, 0)
        q1 = min(j * sw - pl + pw, wd)
        s = T(0)
        for r in range(r0, r1):
            for q in range(q0, q1):
                s += x[n, r, q, ch]
        y[n, i, j, ch] = s / T((r1 - r0) * (q1 - q0))
    return avgpool_forward


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], "
        "int64, int64, int64, int64, int64, int64)")
def avgpool_backward(T):
    def avgpool_backward(dy, dx, ph, pw, sh, sw, pt, pl):
        idx = cuda.grid(1)
        n_total, h, wd, c = dx.shape
        if idx >= n_total * h * wd * c:
            return
        ch = idx % c
        q = (idx // c) % wd
        r = (idx // (c * wd)) % h
        n = idx // (c * wd * h)
        _, ho, wo, _ = dy.shape
        pr = r + pt
        pq = q + pl
        i_lo = max(0, (pr - ph) // sh + 1)
        i_hi = min(ho - 1, pr // sh)
        j_lo = max(0, (pq - pw) // sw + 1)
        j_hi = min(wo - 1, pq // sw)
        acc = T(0)
        for i in range(i_lo, i_hi + 1):
            rows = min(i * sh - pt + ph, h) - max(i * sh - pt, 0)
            for j in range(j_lo, j_hi + 1):
                cols = min(j * sw - pl + pw, wd) - max(j * sw - pl, 0)
                acc += dy[n, i, j, ch] / T(rows * cols)
        dx[n, r, q, ch] = acc
    return avgpool_backward
