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

from ._jit import device_function, kernel
from .conv import nhwc_index, read_padded, windows_over


@device_function
def window_overlap(o, size, stride, pad_before, extent):
    """``[first, end)``: the real (unpadded) positions under window ``o`` along one axis.
    Average pooling sums over them only and divides by their count: padding adds nothing
    and is not counted."""
    start = o * stride - pad_before
    return max(start, 0), min(start + size, extent)


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], int32[:, :, :, ::1], "
        "int64, int64, int64, int64, int64, int64)")
def maxpool_forward(T):
    def maxpool_forward(x, y, argmax, ph, pw, sh, sw, pt, pl):
        idx = cuda.grid(1)
        if idx >= y.size:
            return
        n, i, j, ch = nhwc_index(idx, y.shape)
        best = T(-math.inf)
        best_k = 0
        first = True
        for a in range(ph):
            for bb in range(pw):
                v = read_padded(x, n, i * sh - pt + a, j * sw - pl + bb, ch, T(-math.inf))
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
        if idx >= dx.size:
            return
        n, r, q, ch = nhwc_index(idx, dx.shape)
        _, ho, wo, _ = dy.shape
        pr = r + pt   # padded coordinates
        pq = q + pl
        # The windows that hold (pr, pq), in row-major order (the reference's).
        i_lo, i_hi = windows_over(pr, ph, sh, ho)
        j_lo, j_hi = windows_over(pq, pw, sw, wo)
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
        if idx >= y.size:
            return
        n, i, j, ch = nhwc_index(idx, y.shape)
        _, h, wd, _ = x.shape
        r0, r1 = window_overlap(i, ph, sh, pt, h)
        q0, q1 = window_overlap(j, pw, sw, pl, wd)
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
        if idx >= dx.size:
            return
        n, r, q, ch = nhwc_index(idx, dx.shape)
        _, h, wd, _ = dx.shape
        _, ho, wo, _ = dy.shape
        pr = r + pt
        pq = q + pl
        i_lo, i_hi = windows_over(pr, ph, sh, ho)
        j_lo, j_hi = windows_over(pq, pw, sw, wo)
        acc = T(0)
        for i in range(i_lo, i_hi + 1):
            r0, r1 = window_overlap(i, ph, sh, pt, h)
            for j in range(j_lo, j_hi + 1):
                q0, q1 = window_overlap(j, pw, sw, pl, wd)
                acc += dy[n, i, j, ch] / T((r1 - r0) * (q1 - q0))
        dx[n, r, q, ch] = acc
    return avgpool_backward
