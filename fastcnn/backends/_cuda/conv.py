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

from ._jit import TILE, TILE_PAD, device_function, kernel

# ------------------------------------------- NHWC geometry, shared with the pooling kernels


@device_function
def unravel3(idx, d1, d2):
    """``(i0, i1, i2)`` of the flat row-major index ``idx`` of a (d0, d1, d2) array."""
    i0 = idx // (d1 * d2)
    rem = idx - i0 * (d1 * d2)
    i1 = rem // d2
    return i0, i1, rem - i1 * d2


@device_function
def nhwc_index(idx, shape):
    """``(n, r, q, ch)`` of the flat index ``idx`` of a C-contiguous NHWC array."""
    _, h, wd, c = shape
    pixel = idx // c
    n, r, q = unravel3(pixel, h, wd)
    return n, r, q, idx - pixel * c


@device_function
def read_padded(x, n, r, q, ch, pad):
    """``x[n, r, q, ch]``, or ``pad`` where (r, q) lies in the padding around the image."""
    _, h, wd, _ = x.shape
    if r >= 0 and r < h and q >= 0 and q < wd:
        return x[n, r, q, ch]
    return pad


@device_function
def windows_over(p, size, stride, count):
    """``(first, last)``: the windows ``o`` of ``range(count)``, each covering padded
    positions ``[o * stride, o * stride + size)``, that cover padded position ``p``
    (none when first > last). Floor division rounds toward -inf, as this needs."""
    return max(0, (p - size) // stride + 1), min(count - 1, p // stride)


# ------------------------------------------------------------------------------ kernels


@kernel("void({t}[:, :, :, ::1], {t}[:, ::1], {t}[::1], {t}[:, ::1], boolean, "
        "int64, int64, int64, int64, int64, int64, int64, int64)")
def conv_forward(T):
    def conv_forward(x, w, b, y, has_bias, kh, kw, sh, sw, pt, pl, ho, wo):
        # x (N, H, W, C); w (K, F) = HWIO flattened; y (M, F) = NHWC output flattened.
        a_tile = cuda.shared.array((TILE, TILE), T)   # X[row block, k block]
        b_tile = cuda.shared.array((TILE, TILE), T)   # W[k block, col block]
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        c = x.shape[3]
        m_total, f_total = y.shape
        k_total = w.shape[0]
        row = cuda.blockIdx.x * TILE + ty   # output pixel (large: grid x has no 65535 cap)
        col = cuda.blockIdx.y * TILE + tx   # filter
        # The output pixel this thread stages patch values for (row of X).
        n, i, j = unravel3(row, ho, wo)
        acc = T(0)
        for k0 in range(0, k_total, TILE):
            k = k0 + tx
            v = T(0)
            if row < m_total and k < k_total:
                a, bb, ch = unravel3(k, kw, c)   # the tap (column of X)
                v = read_padded(x, n, i * sh - pt + a, j * sw - pl + bb, ch, T(0))
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
        c = x.shape[3]
        m_total, f_total = dy.shape
        k_total = kh * kw * c
        k_base = cuda.blockIdx.y * TILE
        f_base = cuda.blockIdx.x * TILE
        m_begin = cuda.blockIdx.z * rows_per_split
        m_end = min(m_total, m_begin + rows_per_split)
        # Staging: this thread loads tap k = k_base + tx of pixel m0 + ty, and dy of
        # filter f_base + tx at pixel m0 + ty.
        k = k_base + tx
        a, bb, ch = unravel3(k, kw, c)
        acc = T(0)
        for m0 in range(m_begin, m_end, TILE):
            m = m0 + ty
            v = T(0)
            g = T(0)
            if m < m_end:
                if k < k_total:
                    n, i, j = unravel3(m, ho, wo)
                    v = read_padded(x, n, i * sh - pt + a, j * sw - pl + bb, ch, T(0))
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
        if idx >= dx.size:
            return
        n, r, q, ch = nhwc_index(idx, dx.shape)
        kh, kw, _, f_total = w.shape
        _, ho, wo, _ = dy.shape
        pr = r + pt   # padded coordinates
        pq = q + pl
        # The output pixels whose window holds (pr, pq), each through tap
        # (pr - i * sh, pq - j * sw); walked with i and j descending so that the taps
        # ascend (row-major over the kernel).
        i_first, i_last = windows_over(pr, kh, sh, ho)
        j_first, j_last = windows_over(pq, kw, sw, wo)
        acc = T(0)
        for i in range(i_last, i_first - 1, -1):
            a = pr - i * sh
            for j in range(j_last, j_first - 1, -1):
                bb = pq - j * sw
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
