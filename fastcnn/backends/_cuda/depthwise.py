"""Depthwise convolution kernels (NHWC x Keras's depthwise kernel ``(kh, kw, C, M)``).

Output channel ``o = ch*M + m`` reads input channel ``ch`` only, through ``w[:, :, ch, m]``.
A depthwise conv has kh*kw multiply-adds per output (no sum over channels), so there is no
GEMM to tile: every kernel here is one thread per output element, with the channel as the
fastest index so that a warp reads and writes consecutive addresses (NHWC).

* forward: one thread per ``y`` element sums its kh*kw taps (zero in the padding) and adds
  the bias.
* dx: a gather, one thread per ``dx`` element: it visits the output pixels whose window
  holds its element (:func:`.conv.windows_over`) and, for each, the M outputs of its
  channel, in a fixed order. No two threads write one element: no atomics, no races.
* dW and db: ``dW_ext[k, o]`` (k < kh*kw a tap, k = kh*kw the ones row that makes db) is a
  sum over the N*Ho*Wo output pixels, cut into S fixed chunks (S depends on the shapes
  only); one thread per (chunk, k, o) sums its chunk in pixel order into ``partial``, and
  :func:`.conv.reduce_splits` adds the S partials in chunk order. No float atomics, so
  results are bitwise the same on every run and every GPU.
"""
from __future__ import annotations

from numba import cuda

from ._jit import kernel
from .conv import nhwc_index, read_padded, unravel3, windows_over


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], {t}[::1], {t}[:, :, :, ::1], boolean, "
        "int64, int64, int64, int64)")
def depthwise_forward(T):
    def depthwise_forward(x, w, b, y, has_bias, sh, sw, pt, pl):
        idx = cuda.grid(1)
        if idx >= y.size:
            return
        n, i, j, o = nhwc_index(idx, y.shape)
        kh, kw, _, mult = w.shape
        ch = o // mult
        m = o - ch * mult
        acc = T(0)
        for a in range(kh):
            for bb in range(kw):
                acc += read_padded(x, n, i * sh - pt + a, j * sw - pl + bb, ch, T(0)) \
                    * w[a, bb, ch, m]
        y[n, i, j, o] = acc + b[o] if has_bias else acc
    return depthwise_forward


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], {t}[:, :, :, ::1], "
        "int64, int64, int64, int64)")
def depthwise_dx(T):
    def depthwise_dx(dy, w, dx, sh, sw, pt, pl):
        idx = cuda.grid(1)
        if idx >= dx.size:
            return
        n, r, q, ch = nhwc_index(idx, dx.shape)
        kh, kw, _, mult = w.shape
        _, ho, wo, _ = dy.shape
        pr = r + pt   # padded coordinates
        pq = q + pl
        # The output pixels whose window holds (pr, pq), through tap (pr - i*sh, pq - j*sw),
        # walked so that the taps ascend (row-major over the kernel), as conv_dx does.
        i_first, i_last = windows_over(pr, kh, sh, ho)
        j_first, j_last = windows_over(pq, kw, sw, wo)
        acc = T(0)
        for i in range(i_last, i_first - 1, -1):
            a = pr - i * sh
            for j in range(j_last, j_first - 1, -1):
                bb = pq - j * sw
                for m in range(mult):
                    acc += dy[n, i, j, ch * mult + m] * w[a, bb, ch, m]
        dx[n, r, q, ch] = acc
    return depthwise_dx


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], {t}[:, :, ::1], "
        "int64, int64, int64, int64, int64, int64, int64)")
def depthwise_dw(T):
    def depthwise_dw(x, dy, partial, kh, kw, sh, sw, pt, pl, rows_per_split):
        # partial (S, kh*kw + 1, C*M): chunk s of the output pixels, tap k (or the ones
        # row k = kh*kw: db), output channel o.
        idx = cuda.grid(1)
        splits, k_ext, f_total = partial.shape
        if idx >= splits * k_ext * f_total:
            return
        s, k, o = unravel3(idx, k_ext, f_total)
        _, ho, wo, _ = dy.shape
        mult = f_total // x.shape[3]
        ch = o // mult
        a = k // kw
        bb = k - a * kw
        m_total = dy.shape[0] * ho * wo
        m_begin = s * rows_per_split
        m_end = min(m_total, m_begin + rows_per_split)
        acc = T(0)
        for p in range(m_begin, m_end):
            n, i, j = unravel3(p, ho, wo)
            g = dy[n, i, j, o]
            if k < k_ext - 1:
                acc += read_padded(x, n, i * sh - pt + a, j * sw - pl + bb, ch, T(0)) * g
            else:
                acc += g
        partial[s, k, o] = acc
    return depthwise_dw
