"""The ``@njit`` kernels of the ``numba`` backend: every one of them lives in THIS file.

Why one file: numba's ``cache=True`` keys a cached kernel on the source file it was defined
in, not on the helpers it calls or the flags it was compiled with. A helper edited in
another module, or a fastmath flag changed elsewhere, would leave stale machine code in
``__pycache__``. With every kernel, helper and :data:`FASTMATH` here, any edit of this file
invalidates every cached kernel at once. Kernels read no module-level values at run time
(numba would freeze them into the cache): sizes and switches are arguments.

Performance design (NHWC activations, HWIO kernels, C-contiguous arrays):

* **Conv forward and conv dx are one kernel**, :func:`conv_gather_dot`: a *gather* over
  output pixels. Each pixel's receptive field is packed into one contiguous row of a small
  per-thread tile ("im2col of a tile": ``tile x K`` values that stay in L1/L2, never the
  whole column matrix), then a register-blocked 4x4 micro-kernel computes 4 pixels x 4
  output channels at once as dot products over K. The dot products run over contiguous
  memory, so LLVM vectorises them with packed FMAs and 16 independent accumulators (no
  loop-carried store, which a channels-innermost ``y[f] += x * w[f]`` loop would have).
  Padding costs nothing in the inner loop: the packer writes zeros for padded taps.
  dx is the same gather, done per stride *phase*: the dx pixels with
  ``(ih + top) % sh == rh`` receive gradient only from kernel rows ``rh, rh + sh, ...``,
  so each phase is a stride-1 correlation of ``dy`` with a sub-kernel, and no dx value is
  ever scattered or shared between threads.
* **Small reductions** (K below a few dozen, e.g. a first layer on 1 or 3 channels) use
  :func:`conv_gather_axpy` instead: a dot product of length 9 cannot fill a vector, but the
  channels-innermost update ``y[f] += x * w[f]`` can.
* **Conv dW** (:func:`conv_dw`) is parallel over blocks of dW rows ``(kh, kw, C_in)``;
  every thread reduces ITS rows over ALL pixels in a fixed order, so there is no shared
  ``+=`` and the result is bitwise the same for any thread count. ``dy`` is transposed
  once (:func:`transpose_colsum`, which also yields db) so that both operands of the
  micro-kernel are contiguous along the pixel axis.
* Pools are parallel over output rows (forward) and over images (backward scatter: each
  thread owns its dx[n]). Element-wise ops have a serial kernel on a range and a parallel
  driver that splits the array into chunks; the Python side picks by size, because a
  parallel launch costs microseconds that a small array does not repay.

float32 stays float32: every constant is made with ``dtype.type(...)`` (a bare ``0.5`` or
``1`` times a float32 would be float64 inside numba, silently doubling the cost).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

#: The ONE fastmath flag set of every kernel. Deliberately WITHOUT ``nnan`` / ``ninf``:
#: those let LLVM assume no NaN/inf exists, which breaks ``isnan``-style checks
#: (``v != v``), the -inf semantics of max pooling and NaN propagation. ``reassoc`` is
#: what lets LLVM vectorise reductions; ``contract`` fuses multiply-adds into FMAs.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})

_FLAGS = set(FASTMATH)  # numba wants a set, not a frozenset
_SERIAL = dict(cache=True, nogil=True, fastmath=_FLAGS, error_model="numpy")
_PARALLEL = dict(_SERIAL, parallel=True)
# Helpers are inlined into the kernels at numba IR level (so they are part of each
# kernel's cache entry and of its optimisation scope).
_INLINE = dict(inline="always", fastmath=_FLAGS, error_model="numpy")


# ----------------------------------------------------------------------------------------
# The micro-kernel: 4 x 4 dot products over contiguous rows
# ----------------------------------------------------------------------------------------


@njit(**_INLINE)
def _dot4x4(a0, a1, a2, a3, b0, b1, b2, b3, n):
    """``s[4*i + j] = sum_k a_i[k] * b_j[k]`` for k < n: 16 independent accumulators.

    Per step: 8 loads feed 16 FMAs, so the loop is bound by FMA throughput, not loads;
    with ``reassoc`` LLVM turns each scalar accumulator into a vector one.
    """
    z = a0.dtype.type(0)
    s00 = z; s01 = z; s02 = z; s03 = z  # noqa: E702
    s10 = z; s11 = z; s12 = z; s13 = z  # noqa: E702
    s20 = z; s21 = z; s22 = z; s23 = z  # noqa: E702
    s30 = z; s31 = z; s32 = z; s33 = z  # noqa: E702
    for k in range(n):
        x0 = a0[k]
        x1 = a1[k]
        x2 = a2[k]
        x3 = a3[k]
        w0 = b0[k]
        w1 = b1[k]
        w2 = b2[k]
        w3 = b3[k]
        s00 += x0 * w0
        s01 += x0 * w1
        s02 += x0 * w2
        s03 += x0 * w3
        s10 += x1 * w0
        s11 += x1 * w1
        s12 += x1 * w2
        s13 += x1 * w3
        s20 += x2 * w0
        s21 += x2 * w1
        s22 += x2 * w2
        s23 += x2 * w3
        s30 += x3 * w0
        s31 += x3 * w1
        s32 += x3 * w2
        s33 += x3 * w3
    return (s00, s01, s02, s03, s10, s11, s12, s13,
            s20, s21, s22, s23, s30, s31, s32, s33)


# ----------------------------------------------------------------------------------------
# Convolution: forward and dx (gather), dW, db
# ----------------------------------------------------------------------------------------


@njit(**_INLINE)
def _pack_row(src, row, n, by, bx, nth, ntw, dty, dtx):
    """``row[(ti*ntw + tj)*C + c] = src[n, by + dty*ti, bx + dtx*tj, c]`` (0 outside).

    Entries past ``nth*ntw*C`` (the padding of the row to a multiple of 16) are zeroed.
    """
    _, hs, ws, cs = src.shape
    zero = row.dtype.type(0)
    for e in range(nth * ntw * cs, row.size):
        row[e] = zero
    for ti in range(nth):
        sy = by + dty * ti
        base = ti * ntw * cs
        if sy < 0 or sy >= hs:
            for e in range(ntw * cs):
                row[base + e] = zero
            continue
        for tj in range(ntw):
            sx = bx + dtx * tj
            o = base + tj * cs
            if sx < 0 or sx >= ws:
                for c in range(cs):
                    row[o + c] = zero
            else:
                s = src[n, sy, sx]
                for c in range(cs):
                    row[o + c] = s[c]


@njit(**_PARALLEL)
def conv_gather_dot(src, wm, bias, out, nth, ntw, dty, dtx, grid_u, grid_v,
                    by0, bsy, bx0, bsx, oy0, osy, ox0, osx, tile, nthreads):
    """``out[pixel, f] = bias[f] + sum_k packed(pixel)[k] * wm[f, k]`` over a pixel grid.

    The grid is ``(N, grid_u, grid_v)``. Grid point ``(n, u, v)`` writes output pixel
    ``out[n, oy0 + u*osy, ox0 + v*osx, :]``; its packed row holds the taps
    ``src[n, by0 + u*bsy + dty*ti, bx0 + v*bsx + dtx*tj, :]`` for ``ti < nth, tj < ntw``
    (zero outside ``src``). Conv forward: ``src = x``, taps step +1 from
    ``(u*sh - top, v*sw - left)``. Conv dx (one stride phase): ``src = dy``, taps step -1.
    ``wm`` is ``(C_out, K)`` with ``K >= nth*ntw*C_src`` a multiple of 16 and zero
    columns past the real taps: a dot product whose length is a multiple of the vector
    width never runs LLVM's scalar remainder loop (16 scalar accumulators, slow).
    ``tile`` is a multiple of 4; ``nthreads`` tiles are processed round-robin, one
    per-thread packing buffer each.
    """
    n_img = src.shape[0]
    co, k = wm.shape
    _, ho_img, wo_img, _ = out.shape
    out2d = out.reshape(n_img * ho_img * wo_img, co)
    per_img = grid_u * grid_v
    total = n_img * per_img
    ntiles = (total + tile - 1) // tile
    for t in prange(nthreads):
        a = np.empty((tile, k), dtype=src.dtype)
        dest = np.empty(tile, dtype=np.int64)
        for tix in range(t, ntiles, nthreads):
            q0 = tix * tile
            m = min(tile, total - q0)
            for r in range(m):
                q = q0 + r
                nn = q // per_img
                rem = q - nn * per_img
                u = rem // grid_v
                v = rem - u * grid_v
                dest[r] = (nn * ho_img + oy0 + u * osy) * wo_img + ox0 + v * osx
                _pack_row(src, a[r], nn, by0 + u * bsy, bx0 + v * bsx, nth, ntw, dty, dtx)
            # 4 pixels x 4 channels per micro-kernel call. A ragged edge repeats the last
            # valid row/column: it recomputes and rewrites the same value, which is
            # cheaper than a separate remainder kernel and never reads unpacked rows.
            for r0 in range(0, m, 4):
                r1 = min(r0 + 1, m - 1)
                r2 = min(r0 + 2, m - 1)
                r3 = min(r0 + 3, m - 1)
                a0 = a[r0]
                a1 = a[r1]
                a2 = a[r2]
                a3 = a[r3]
                d0 = dest[r0]
                d1 = dest[r1]
                d2 = dest[r2]
                d3 = dest[r3]
                for f0 in range(0, co, 4):
                    f1 = min(f0 + 1, co - 1)
                    f2 = min(f0 + 2, co - 1)
                    f3 = min(f0 + 3, co - 1)
                    s = _dot4x4(a0, a1, a2, a3, wm[f0], wm[f1], wm[f2], wm[f3], k)
                    # The epilogue: where a fused activation would go.
                    out2d[d0, f0] = s[0] + bias[f0]
                    out2d[d0, f1] = s[1] + bias[f1]
                    out2d[d0, f2] = s[2] + bias[f2]
                    out2d[d0, f3] = s[3] + bias[f3]
                    out2d[d1, f0] = s[4] + bias[f0]
                    out2d[d1, f1] = s[5] + bias[f1]
                    out2d[d1, f2] = s[6] + bias[f2]
                    out2d[d1, f3] = s[7] + bias[f3]
                    out2d[d2, f0] = s[8] + bias[f0]
                    out2d[d2, f1] = s[9] + bias[f1]
                    out2d[d2, f2] = s[10] + bias[f2]
                    out2d[d2, f3] = s[11] + bias[f3]
                    out2d[d3, f0] = s[12] + bias[f0]
                    out2d[d3, f1] = s[13] + bias[f1]
                    out2d[d3, f2] = s[14] + bias[f2]
                    out2d[d3, f3] = s[15] + bias[f3]


@njit(**_PARALLEL)
def conv_gather_axpy(src, wk, bias, out, nth, ntw, dty, dtx, grid_u, grid_v,
                     by0, bsy, bx0, bsx, oy0, osy, ox0, osx):
    """:func:`conv_gather_dot` for SHORT reductions, with ``wk = wm.T`` ``(K, C_out)``.

    Each tap value is broadcast against a contiguous row of ``wk``: the innermost loop
    runs over the output channels, which vectorises for any K (a dot product of length
    9 would not). Parallel over output pixels; each pixel's row is written by one thread.
    """
    n_img, hs, ws, cs = src.shape
    co = wk.shape[1]
    _, ho_img, wo_img, _ = out.shape
    out2d = out.reshape(n_img * ho_img * wo_img, co)
    per_img = grid_u * grid_v
    for q in prange(n_img * per_img):
        nn = q // per_img
        rem = q - nn * per_img
        u = rem // grid_v
        v = rem - u * grid_v
        orow = out2d[(nn * ho_img + oy0 + u * osy) * wo_img + ox0 + v * osx]
        for f in range(co):
            orow[f] = bias[f]
        by = by0 + u * bsy
        bx = bx0 + v * bsx
        for ti in range(nth):
            sy = by + dty * ti
            if sy < 0 or sy >= hs:
                continue
            for tj in range(ntw):
                sx = bx + dtx * tj
                if sx < 0 or sx >= ws:
                    continue
                srow = src[nn, sy, sx]
                base = (ti * ntw + tj) * cs
                for c in range(cs):
                    av = srow[c]
                    wr = wk[base + c]
                    for f in range(co):
                        orow[f] += av * wr[f]


@njit(**_PARALLEL)
def transpose_colsum(a, at, colsum):
    """``at[:, :P] = a.T`` and ``colsum = a.sum(axis=0)`` for ``a`` (P, F), in one pass.

    ``at`` may be wider than P: its extra columns are zeroed (padding for the dW tiles).
    Parallel over blocks of 16 columns: each thread reads a 64-byte slab of every row and
    owns its columns' sums, so the sums are race-free and thread-count independent.
    """
    p_total, f_total = a.shape
    nblocks = (f_total + 15) // 16
    for fb in prange(nblocks):
        f0 = fb * 16
        f1 = min(f_total, f0 + 16)
        for f in range(f0, f1):
            colsum[f] = a.dtype.type(0)
            for p in range(p_total, at.shape[1]):
                at[f, p] = a.dtype.type(0)
        for p in range(p_total):
            for f in range(f0, f1):
                v = a[p, f]
                at[f, p] = v
                colsum[f] += v


@njit(**_PARALLEL)
def conv_dw(xt, dyt, dw2, kh, kw, sh, sw, pt, pl, ho, wo, kblock, ptile, nthreads):
    """``dw2[k, f] = sum_p patch(p)[k] * dy[p, f]``, k = (a*kw + b)*C + c, p = (n, i, j).

    Both operands come channel-major so that the pixel axis is contiguous: ``xt`` is x
    transposed to (C, N, H, W) and ``dyt`` is dy transposed to (F, P) with zero columns
    up to a multiple of 16 past the P = N*Ho*Wo real ones. Work is split over blocks of
    ``kblock`` dW rows (a multiple of 4). For ``ptile`` pixels at a time (a multiple of
    16, so dot products have no scalar remainder) a thread packs its rows' tap values --
    for a fixed tap and channel, the pixels of one output row are a strided run of one
    input row, a plain copy when sw == 1 -- and accumulates 4x4 blocks of dW with the
    micro-kernel. Each dW element is owned by one thread and summed in the same order
    whatever the thread count.
    """
    c_in, n_img, h, w = xt.shape
    k_total, f_total = dw2.shape
    p_total = n_img * ho * wo
    nkb = (k_total + kblock - 1) // kblock
    zero = xt.dtype.type(0)
    for t in prange(nthreads):
        a = np.empty((kblock, ptile), dtype=xt.dtype)
        seg = np.empty((ptile // max(1, wo) + 2, 5), dtype=np.int64)
        for kb in range(t, nkb, nthreads):
            k0 = kb * kblock
            kn = min(kblock, k_total - k0)
            for kk in range(kn):
                for f in range(f_total):
                    dw2[k0 + kk, f] = zero
            for p0 in range(0, p_total, ptile):
                pn = min(ptile, p_total - p0)
                pn16 = min(ptile, (pn + 15) // 16 * 16)
                # The tile's pixels as output-row segments (image, row, columns j0..j1,
                # tile offset): decoded once, shared by every dW row of the block.
                nseg = 0
                p = p0
                while p < p0 + pn:
                    row = p // wo
                    j0 = p - row * wo
                    j1 = min(wo, j0 + p0 + pn - p)
                    nn = row // ho
                    seg[nseg, 0] = nn
                    seg[nseg, 1] = row - nn * ho
                    seg[nseg, 2] = j0
                    seg[nseg, 3] = j1
                    seg[nseg, 4] = p - p0 - j0  # a[kk, o + j] is output column j
                    nseg += 1
                    p += j1 - j0
                for kk in range(kn):
                    k = k0 + kk
                    tap = k // c_in
                    c = k - tap * c_in
                    ta = tap // kw
                    tb = tap - ta * kw
                    # Output columns j whose input column j*sw + tb - left is real.
                    j_lo = min(wo, max(0, -((tb - pl) // sw)))
                    j_hi = max(j_lo, min(wo, (w - 1 + pl - tb) // sw + 1))
                    arow = a[kk]
                    plane = xt[c]
                    for g in range(nseg):
                        j0 = seg[g, 2]
                        j1 = seg[g, 3]
                        o = seg[g, 4]
                        ih = seg[g, 1] * sh + ta - pt
                        if ih < 0 or ih >= h:
                            for j in range(j0, j1):
                                arow[o + j] = zero
                            continue
                        src = plane[seg[g, 0], ih]
                        for j in range(j0, min(j1, j_lo)):
                            arow[o + j] = zero
                        shift = tb - pl
                        if sw == 1:  # a contiguous run: lets LLVM copy whole vectors
                            for j in range(max(j0, j_lo), min(j1, j_hi)):
                                arow[o + j] = src[j + shift]
                        else:
                            for j in range(max(j0, j_lo), min(j1, j_hi)):
                                arow[o + j] = src[j * sw + shift]
                        for j in range(max(j0, j_hi), j1):
                            arow[o + j] = zero
                    for e in range(pn, pn16):
                        arow[e] = zero
                for r0 in range(0, kn, 4):
                    nr = min(4, kn - r0)
                    a0 = a[r0, :pn16]
                    a1 = a[min(r0 + 1, kn - 1), :pn16]
                    a2 = a[min(r0 + 2, kn - 1), :pn16]
                    a3 = a[min(r0 + 3, kn - 1), :pn16]
                    for f0 in range(0, f_total, 4):
                        nf = min(4, f_total - f0)
                        s = _dot4x4(a0, a1, a2, a3,
                                    dyt[f0, p0:p0 + pn16],
                                    dyt[min(f0 + 1, f_total - 1), p0:p0 + pn16],
                                    dyt[min(f0 + 2, f_total - 1), p0:p0 + pn16],
                                    dyt[min(f0 + 3, f_total - 1), p0:p0 + pn16], pn16)
                        # Accumulating: a repeated (clamped) row/column must NOT be added
                        # twice, so only the nr x nf real entries are stored.
                        for ri in range(nr):
                            for fi in range(nf):
                                dw2[k0 + r0 + ri, f0 + fi] += s[4 * ri + fi]


# ----------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------


@njit(**_PARALLEL)
def maxpool_forward(x, y, arg, ph, pw, sh, sw, pt, pl):
    """Max over the REAL elements of each window (padding acts as -inf: it is skipped).

    ``arg`` gets the window-relative tap ``a*pw + b`` of the winner. Taps are scanned in
    row-major order and a later tap wins only if strictly greater, so the FIRST maximum
    wins ties; a NaN beats any number and the first NaN stays (NaN propagates, as
    ``np.argmax`` does). Parallel over output rows.
    """
    n_img, h, w, c_total = x.shape
    _, ho, wo, _ = y.shape
    for r in prange(n_img * ho):
        n = r // ho
        i = r - n * ho
        h0 = i * sh - pt
        a0 = max(0, -h0)
        a1 = min(ph, h - h0)
        for j in range(wo):
            w0 = j * sw - pl
            b0 = max(0, -w0)
            b1 = min(pw, w - w0)
            yr = y[n, i, j]
            ar = arg[n, i, j]
            xr = x[n, h0 + a0, w0 + b0]
            first = a0 * pw + b0
            for c in range(c_total):
                yr[c] = xr[c]
                ar[c] = first
            for a in range(a0, a1):
                for b in range(b0, b1):
                    tap = a * pw + b
                    if tap == first:
                        continue
                    xr = x[n, h0 + a, w0 + b]
                    for c in range(c_total):
                        v = xr[c]
                        best = yr[c]
                        if v > best or (v != v and best == best):
                            yr[c] = v
                            ar[c] = tap


@njit(**_PARALLEL)
def maxpool_backward(dy, arg, dx, pw, sh, sw, pt, pl):
    """Scatters ``dy`` to each window's winner; ``dx`` must arrive zero-filled.

    Parallel over images: windows overlap when stride < pool, and the thread that owns
    image n is the only writer of dx[n], so the ``+=`` never races.
    """
    n_img, ho, wo, c_total = dy.shape
    for n in prange(n_img):
        for i in range(ho):
            for j in range(wo):
                dyr = dy[n, i, j]
                ar = arg[n, i, j]
                for c in range(c_total):
                    tap = ar[c]
                    a = tap // pw
                    dx[n, i * sh - pt + a, j * sw - pl + tap - a * pw, c] += dyr[c]


@njit(**_PARALLEL)
def avgpool_forward(x, y, ph, pw, sh, sw, pt, pl):
    """Mean over the REAL elements of each window (the divisor ignores padding)."""
    n_img, h, w, c_total = x.shape
    _, ho, wo, _ = y.shape
    one = x.dtype.type(1)
    for r in prange(n_img * ho):
        n = r // ho
        i = r - n * ho
        h0 = i * sh - pt
        a0 = max(0, -h0)
        a1 = min(ph, h - h0)
        for j in range(wo):
            w0 = j * sw - pl
            b0 = max(0, -w0)
            b1 = min(pw, w - w0)
            yr = y[n, i, j]
            for c in range(c_total):
                yr[c] = x.dtype.type(0)
            for a in range(a0, a1):
                for b in range(b0, b1):
                    xr = x[n, h0 + a, w0 + b]
                    for c in range(c_total):
                        yr[c] += xr[c]
            inv = one / x.dtype.type((a1 - a0) * (b1 - b0))
            for c in range(c_total):
                yr[c] *= inv


@njit(**_PARALLEL)
def avgpool_backward(dy, dx, ph, pw, sh, sw, pt, pl):
    """Spreads ``dy / count`` over each window's real elements; ``dx`` arrives zeroed.

    Parallel over images (each thread owns dx[n]; overlapping windows accumulate).
    """
    n_img, ho, wo, c_total = dy.shape
    _, h, w, _ = dx.shape
    one = dy.dtype.type(1)
    for n in prange(n_img):
        for i in range(ho):
            h0 = i * sh - pt
            a0 = max(0, -h0)
            a1 = min(ph, h - h0)
            for j in range(wo):
                w0 = j * sw - pl
                b0 = max(0, -w0)
                b1 = min(pw, w - w0)
                inv = one / dy.dtype.type((a1 - a0) * (b1 - b0))
                dyr = dy[n, i, j]
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        dxr = dx[n, h0 + a, w0 + b]
                        for c in range(c_total):
                            dxr[c] += dyr[c] * inv


# ----------------------------------------------------------------------------------------
# Element-wise activations (flat 1-D views). op: 0 relu, 1 sigmoid, 2 tanh
# ----------------------------------------------------------------------------------------


@njit(**_SERIAL)
def unary_forward_range(x, y, op, lo, hi):
    """``y[lo:hi] = f(x[lo:hi])``; NaN in gives NaN out for every op."""
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    if op == 0:
        for i in range(lo, hi):
            v = x[i]
            # 'v <= 0' is False for NaN, so NaN passes through (np.maximum does the same).
            y[i] = zero if v <= zero else v
    elif op == 1:
        for i in range(lo, hi):
            v = x[i]
            # e = exp(-|v|) <= 1 never overflows; both branches are the same function.
            e = np.exp(-np.abs(v))
            y[i] = (one if v >= zero else e) / (one + e)
    else:
        for i in range(lo, hi):
            y[i] = np.tanh(x[i])


@njit(**_PARALLEL)
def unary_forward_parallel(x, y, op, chunk):
    nchunks = (x.size + chunk - 1) // chunk
    for t in prange(nchunks):
        unary_forward_range(x, y, op, t * chunk, min(x.size, (t + 1) * chunk))


@njit(**_SERIAL)
def unary_backward_range(dy, y, dx, op, lo, hi):
    """``dx = dy * f'(x)`` written in terms of the forward OUTPUT ``y``."""
    zero = y.dtype.type(0)
    one = y.dtype.type(1)
    if op == 0:
        for i in range(lo, hi):
            # y > 0 exactly where x > 0: the derivative at 0 (and at NaN) is 0.
            dx[i] = dy[i] if y[i] > zero else zero
    elif op == 1:
        for i in range(lo, hi):
            v = y[i]
            dx[i] = dy[i] * (v * (one - v))
    else:
        for i in range(lo, hi):
            v = y[i]
            dx[i] = dy[i] * (one - v * v)


@njit(**_PARALLEL)
def unary_backward_parallel(dy, y, dx, op, chunk):
    nchunks = (dy.size + chunk - 1) // chunk
    for t in prange(nchunks):
        unary_backward_range(dy, y, dx, op, t * chunk, min(dy.size, (t + 1) * chunk))


# ----------------------------------------------------------------------------------------
# Softmax and the fused losses (rows of a 2-D array; small, so serial)
# ----------------------------------------------------------------------------------------


@njit(**_INLINE)
def _row_logsumexp(z):
    """``log(sum(exp(z)))`` shifted by the row max: every exponent is <= 0."""
    m = z[0]
    for k in range(1, z.size):
        if z[k] > m or z[k] != z[k]:
            m = z[k]
    total = z.dtype.type(0)
    for k in range(z.size):
        total += np.exp(z[k] - m)
    return m + np.log(total)


@njit(**_SERIAL)
def softmax_rows(x, y):
    for r in range(x.shape[0]):
        lse = _row_logsumexp(x[r])
        for k in range(x.shape[1]):
            y[r, k] = np.exp(x[r, k] - lse)


@njit(**_SERIAL)
def softmax_backward_rows(dy, y, dx):
    """``dx = y * (dy - sum(dy * y))`` per row (the softmax Jacobian applied to dy)."""
    for r in range(y.shape[0]):
        dot = y.dtype.type(0)
        for k in range(y.shape[1]):
            dot += dy[r, k] * y[r, k]
        for k in range(y.shape[1]):
            dx[r, k] = y[r, k] * (dy[r, k] - dot)


@njit(**_SERIAL)
def softmax_cross_entropy(z, t, dz):
    """Returns the batch-mean loss; ``dz = (softmax(z) * sum(t) - t) / N``."""
    n, kk = z.shape
    inv_n = z.dtype.type(1) / z.dtype.type(n)
    loss = z.dtype.type(0)
    for r in range(n):
        lse = _row_logsumexp(z[r])
        tsum = z.dtype.type(0)
        for k in range(kk):
            tsum += t[r, k]
            loss += t[r, k] * (lse - z[r, k])  # -t * log_softmax
        for k in range(kk):
            dz[r, k] = (np.exp(z[r, k] - lse) * tsum - t[r, k]) * inv_n
    return loss * inv_n


@njit(**_SERIAL)
def sparse_softmax_cross_entropy(z, labels, dz):
    """:func:`softmax_cross_entropy` with one-hot rows given as labels (already checked)."""
    n, kk = z.shape
    inv_n = z.dtype.type(1) / z.dtype.type(n)
    one = z.dtype.type(1)
    loss = z.dtype.type(0)
    for r in range(n):
        lse = _row_logsumexp(z[r])
        lab = labels[r]
        loss += lse - z[r, lab]
        for k in range(kk):
            dz[r, k] = np.exp(z[r, k] - lse) * inv_n
        dz[r, lab] = (np.exp(z[r, lab] - lse) - one) * inv_n
    return loss * inv_n


@njit(**_SERIAL)
def sigmoid_cross_entropy(z, t, dz):
    """Mean of ``max(z, 0) - z*t + log1p(exp(-|z|))`` over all elements (flat arrays).

    ``exp(-|z|) <= 1`` never overflows, so the loss is finite for any finite logit;
    ``dz = (sigmoid(z) - t) / size``.
    """
    zero = z.dtype.type(0)
    one = z.dtype.type(1)
    inv = one / z.dtype.type(z.size)
    loss = zero
    for i in range(z.size):
        v = z[i]
        e = np.exp(-np.abs(v))
        loss += (v if v > zero else zero) - v * t[i] + np.log1p(e)
        dz[i] = ((one if v >= zero else e) / (one + e) - t[i]) * inv
    return loss * inv
