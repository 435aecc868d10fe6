"""Convolution kernels (NHWC x HWIO), also used for dense layers as 1x1 convolutions.

Forward: an implicit GEMM. With ``M = N*Ho*Wo`` output pixels and ``K = kh*kw*C`` taps,
``y[M, F] = X[M, K] @ W[K, F] + b`` where row ``m = (n, i, j)`` of X is the patch under
output pixel (i, j) of image n, and column ``k = (a, b, ch)`` is its tap: HWIO makes
``w.reshape(K, F)`` exactly W. X is never built: each block stages TILE x TILE pieces of
X (read from x on the fly, zero where the window hangs over the padding) and of W in
shared memory, and every thread accumulates one output over the K axis in a fixed order.

dW and db: ``dW_ext[K+1, F] = X_ext[M, K+1]^T @ dY[M, F]``, where the extra column of X_ext
is all ones, so that row K of the product is ``db = dy summed over M``. The reduction over
M is split into S fixed-size chunks (S depends only on the shapes, never on the device),
one partial per chunk, then :func:`reduce_splits` adds the S partials in order: no float
atomics, so results are the same on every run and every GPU.

dx: a gather, one thread per input element: the thread visits every (kernel tap, output
pixel) pair that read its element and sums ``dy * w`` in a fixed order. No two threads
write the same element, so there are no atomics and no races.
"""
from __future__ import annotations

from numba import cuda

from ._jit import TILE, TILE_PAD, kernel


@kernel("void({t}[:, :, :, ::1], {t}[:, ::1], {t}[::1], {t}[:, ::1], boolean, "
        "int64, int64, int64, int64, int64, int64, int64, int64)")
def conv_forward(T):
    def conv_forward(x, w, b, y, has_bias, kh, kw, sh, sw, pt, pl, ho, wo):
        # x (N, H, W, C); w (K, F) = HWIO flattened; y (M, F) = NHWC output flattened.
        a_tile = cuda.shared.array((TILE, TILE), T)   # X[row block, k block]
        b_tile = cuda.shared.array((TILE, TILE), T)   # W[k block, col block]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        _, h, wd, c = x.shape
        m_total, f_total = y.shape
        k_total = w.shape[0]
        row = cuda.blockIdx.x * TILE + ty   # output pixel (large: grid x has no 65535 cap)
        col = cuda.blockIdx.y * TILE + tx   # filter
        # The output pixel this thread stages patch values for (row of X).
        n = row // (ho * wo)
        rem = row - n * (ho * wo)
        i = rem // wo
        j = rem - i * wo
        acc = T(0)
        for k0 in range(0, k_total, TILE):
            k = k0 + tx
            v = T(0)
            if row < m_total and k < k_total:
                a = k // (kw * c)
                r2 = k - a * (kw * c)
                bb = r2 // c
                ch = r2 - bb * c
                r = i * sh - pt + a
                q = j * sw - pl + bb
                if r >= 0 and r < h and q >= 0 and q < wd:
                    v = x[n, r, q, ch]
            a_tile[ty, tx] = v
            kb = k0 + ty
            b_tile[ty, tx] = w[kb, col] if (kb < k_total and col < f_total) else T(0)
            cuda.syncthreads()
            for t in range(TILE):
                acc += a_tile[ty, t] * b_tile[t, tx]
            cuda.syncthreads()
        if row < m_total and col < f_total:
            y[row, col] = acc + b[col] if has_bias else acc
    return conv_forward


@kernel("void({t}[:, :, :, ::1], {t}[:, ::1], {t}[:, :, ::1], "
        "int64, int64, int64, int64, int64, int64, int64, int64, int64)")
def conv_dw(T):
    def conv_dw(x, dy, partial, kh, kw, sh, sw, pt, pl, ho, wo, rows_per_split):
        # partial[s] = X_ext[rows of split s]^T @ dy[rows of split s]; shape (S, K+1, F).
        x_tile = cuda.shared.array((TILE, TILE), T)    # X_ext[m block, k block]
        dy_tile = cuda.shared.array((TILE, TILE), T)   # dy[m block, f block]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        _, h, wd, c = x.shape
        m_total, f_total = dy.shape
        k_total = kh * kw * c
        k_base = cuda.blockIdx.y * TILE
        f_base = cuda.blockIdx.x * TILE
        m_begin = cuda.blockIdx.z * rows_per_split
        m_end = min(m_total, m_begin + rows_per_split)
        # Staging: this thread loads tap k = k_base + tx of pixel m0 + ty, and dy of
        # filter f_base + tx at pixel m0 + ty.
        k = k_base + tx
        a = k // (kw * c)
        r2 = k - a * (kw * c)
        bb = r2 // c
        ch = r2 - bb * c
        acc = T(0)
        for m0 in range(m_begin, m_end, TILE):
            m = m0 + ty
            v = T(0)
            g = T(0)
            if m < m_end:
                if k < k_total:
                    n = m // (ho * wo)
                    rem = m - n * (ho * wo)
                    i = rem // wo
                    j = rem - i * wo
                    r = i * sh - pt + a
                    q = j * sw - pl + bb
                    if r >= 0 and r < h and q >= 0 and q < wd:
                        v = x[n, r, q, ch]
                elif k == k_total:
                    v = T(1)   # the ones column: its row of the product is db
                if f_base + tx < f_total:
                    g = dy[m, f_base + tx]
            x_tile[ty, tx] = v
            dy_tile[ty, tx] = g
            cuda.syncthreads()
            for t in range(TILE):
                acc += x_tile[t, ty] * dy_tile[t, tx]
            cuda.syncthreads()
        out_k = k_base + ty
        out_f = f_base + tx
        if out_k <= k_total and out_f < f_total:
            partial[cuda.blockIdx.z, out_k, out_f] = acc
    return conv_dw


@kernel("void({t}[:, :, ::1], {t}[:, ::1], {t}[::1], boolean)")
def reduce_splits(T):
    def reduce_splits(partial, dw, db, has_bias):
        # One thread per (k, f) of dW_ext: the S partials are added in split order.
        idx = cuda.grid(1)
        splits, k_ext, f_total = partial.shape
        if idx < k_ext * f_total:
            k = idx // f_total
            f = idx - k * f_total
            s = T(0)
            for p in range(splits):
                s += partial[p, k, f]
            if k < k_ext - 1:
                dw[k, f] = s
            elif has_bias:
                db[f] = s
    return reduce_splits


@kernel("void({t}[:, :, :, ::1], {t}[:, :, :, ::1], {t}[:, :, :, ::1], "
        "int64, int64, int64, int64)")
def conv_dx(T):
    def conv_dx(dy, w, dx, sh, sw, pt, pl):
        idx = cuda.grid(1)
        n_total, h, wd, c = dx.shape
        if idx >= n_total * h * wd * c:
            return
        ch = idx % c
        q = (idx // c) % wd
        r = (idx // (c * wd)) % h
        n = idx // (c * wd * h)
        kh, kw, _, f_total = w.shape
        _, ho, wo, _ = dy.shape
        acc = T(0)
        # Input row r sits at padded row r + pt; kernel row a reaches it from output row
        # i = (r + pt - a) / sh when that is a whole number in [0, ho).
        for a in range(kh):
            ti = r + pt - a
            if ti < 0:
                break
            if ti % sh != 0 or ti // sh >= ho:
                continue
            i = ti // sh
            for bb in range(kw):
                tj = q + pl - bb
                if tj < 0:
                    break
                if tj % sw != 0 or tj // sw >= wo:
                    continue
                j = tj // sw
                for f in range(f_total):
                    acc += dy[n, i, j, f] * w[a, bb, ch, f]
        dx[n, r, q, ch] = acc
    return conv_dx


@kernel("void({t}[:, ::1], {t}[:, ::1], {t}[:, ::1])")
def matmul_nt(T):
    def matmul_nt(a, b, c):
        # c[M, N] = a[M, K] @ b[N, K]^T (the dense layer's dx = dy @ w^T), tiled.
        a_tile = cuda.shared.array((TILE, TILE), T)
        # b is staged transposed (see TILE_PAD).
        bt_tile = cuda.shared.array((TILE, TILE_PAD), T)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        m_total, k_total = a.shape
        n_total = b.shape[0]
        row = cuda.blockIdx.x * TILE + ty
        col = cuda.blockIdx.y * TILE + tx
        b_row = cuda.blockIdx.y * TILE + ty   # the row of b this thread stages
        acc = T(0)
        for k0 in range(0, k_total, TILE):
            k = k0 + tx
            a_tile[ty, tx] = a[row, k] if (row < m_total and k < k_total) else T(0)
            # Coalesced read of b[b_row, k0 + tx], stored as bt_tile[k, n].
            bt_tile[tx, ty] = b[b_row, k] if (b_row < n_total and k < k_total) else T(0)
            cuda.syncthreads()
            for t in range(TILE):
                acc += a_tile[ty, t] * bt_tile[t, tx]
            cuda.syncthreads()
        if row < m_total and col < n_total:
            c[row, col] = acc
    return matmul_nt
