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
* **Conv dW** (:func:`conv_dw`) reduces over pixels. x and dy are first laid out
  channel-major on a common pixel grid (:func:`to_channel_major`, which also yields db),
  so that every kernel tap is a constant shift along one contiguous pixel axis and the
  micro-kernel runs on the arrays in place, with no im2col copy. Parallel over blocks of
  dW rows ``(kh, kw, C_in)``: every thread reduces ITS rows over ALL pixels in a fixed
  order, so there is no shared ``+=`` and the result is bitwise the same for any thread
  count. Tiny patches on more channels (a 1x1 conv on 5-16 channels) use
  :func:`conv_dw_small` instead: outer products into partial dWs of FIXED pixel chunks,
  summed in chunk order.
* **Few input channels** (a first layer on 1-4 channels: patches of only 9-27 values,
  too short for the gather's dot products) use their own direct kernels,
  :func:`conv_few_forward` and :func:`conv_few_dw`: x goes channel-major onto the
  conv_dw pixel grid, the forward vectorises over PIXELS (4 taps x 4 output channels
  per pass over L1-resident accumulator rows), and dW runs the 4 x 4 dot micro-kernel
  over tiles of pixels against a per-tile channel-major copy of dy, with per-image
  partials summed in image order. Neither keeps anything but x for the backward, and
  neither ever builds a column matrix.
* **Depthwise convs** (:func:`depthwise_forward`, :func:`depthwise_dx`,
  :func:`depthwise_dw`) have no channel sum, so no dot products: loops over pixels with
  the contiguous channel loop innermost (vectorised). The forward is parallel over
  output rows, dx is a gather parallel over dx rows (no shared ``+=``), dW sums into
  partials per FIXED chunk of output rows, added in chunk order by the caller. 3x3
  windows inside the image (MobileNet's case) are one 9-FMA pass per pixel
  (:func:`_taps9`); dW at stride 1 reduces 4 pixels per tap in registers (:func:`_acc4`).
* Pools are parallel over output rows (forward) and over images (backward scatter: each
  thread owns its dx[n]). Element-wise ops have a serial kernel on a range and a parallel
  driver that splits the array into chunks; the Python side picks by size, because a
  parallel launch costs microseconds that a small array does not repay.

Two rules every loop here follows, each worth up to 10x:

* float32 stays float32: every constant is made with ``dtype.type(...)`` (a bare ``0.5``
  or ``1`` times a float32 is float64 inside numba, silently halving the vector width).
* Inner loops index from 0 with the loop variable of a ``range`` (offsets go into a
  slice taken before the loop). An index like ``base + i`` makes numba emit a
  negative-index wraparound check per element, which keeps LLVM from vectorising.

Known limit: numba's pip builds have no vector math library (llvmlite lacks SVML), so
``exp`` / ``tanh`` are scalar libm calls: sigmoid and tanh on large arrays run far below
NumPy's SIMD versions. The standard models apply them to tiny arrays only.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

#: The ONE fastmath flag set of every kernel. Deliberately WITHOUT ``nnan`` / ``ninf``:
#: those let LLVM assume no NaN/inf exists, which breaks ``isnan``-style checks
#: (``v != v``), the -inf semantics of max pooling and NaN propagation. ``reassoc`` is
#: what lets LLVM vectorise reductions; ``contract`` fuses multiply-adds into FMAs.
FASTMATH = frozenset({"nsz", "arcp", "contract", "afn", "reassoc"})
#: The one exception: softmax and the softmax cross-entropies must compute
#: ``(z - max) - log(sum)`` in that order, and ``reassoc`` lets LLVM rewrite it as
#: ``z - (max + log(sum))``, which rounds ``log(sum)`` away at the scale of the max (a
#: softmax of 0.49989 for ``[1e4, 1e4, -1e4]`` in float32, a loss of 0 at 1e30). They
#: work on (N, classes) rows, where vectorised reductions buy nothing.
ROW_FASTMATH = FASTMATH - {"reassoc"}

_FLAGS = set(FASTMATH)  # numba wants a set, not a frozenset
_SERIAL = dict(cache=True, nogil=True, fastmath=_FLAGS, error_model="numpy")
_PARALLEL = dict(_SERIAL, parallel=True)
# Helpers are inlined into the kernels at numba IR level (so they are part of each
# kernel's cache entry and of its optimisation scope).
_INLINE = dict(inline="always", fastmath=_FLAGS, error_model="numpy")
_ROWS = dict(_SERIAL, fastmath=set(ROW_FASTMATH))
_ROWS_INLINE = dict(_INLINE, fastmath=set(ROW_FASTMATH))


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


@njit(**_INLINE)
def _dot4x1(a0, a1, a2, a3, b0, n):
    """``s[i] = sum_k a_i[k] * b0[k]``: the micro-kernel for fewer than 4 output channels."""
    z = a0.dtype.type(0)
    s0 = z
    s1 = z
    s2 = z
    s3 = z
    for k in range(n):
        w0 = b0[k]
        s0 += a0[k] * w0
        s1 += a1[k] * w0
        s2 += a2[k] * w0
        s3 += a3[k] * w0
    return s0, s1, s2, s3


# ----------------------------------------------------------------------------------------
# Convolution: forward and dx (gather), dW, db
# ----------------------------------------------------------------------------------------


@njit(**_INLINE)
def _copy(dst, src):
    for e in range(dst.size):
        dst[e] = src[e]


@njit(**_INLINE)
def _fill(dst, value):
    for e in range(dst.size):
        dst[e] = value


@njit(**_INLINE)
def _pack_row(src_flat, hs, ws, cs, row, n, by, bx, nth, ntw):
    """``row[(ti*ntw + tj)*cs + c] = src[n, by + ti, bx + tj, c]`` (0 outside src).

    ``src_flat`` is the (N, hs, ws, cs) source flattened. For one kernel row ti the taps
    tj are consecutive pixels of one source row, so the in-range ones are ONE contiguous
    run of memory: a single long vectorised copy per kernel row. Entries past
    ``nth*ntw*cs`` (the padding of the row to a multiple of 16) are zeroed.

    Offsets are applied by slicing, and loops index from 0: an index computed as
    ``base + e`` makes numba emit a negative-index wraparound check per element, which
    blocks vectorisation (measured: a 10x slower copy).
    """
    zero = row.dtype.type(0)
    run = ntw * cs
    _fill(row[nth * run:], zero)
    tj_lo = min(ntw, max(0, -bx))
    tj_hi = max(tj_lo, min(ntw, ws - bx))
    for ti in range(nth):
        dst = row[ti * run:(ti + 1) * run]
        sy = by + ti
        if sy < 0 or sy >= hs:
            _fill(dst, zero)
            continue
        _fill(dst[:tj_lo * cs], zero)
        s0 = ((n * hs + sy) * ws + bx + tj_lo) * cs
        _copy(dst[tj_lo * cs:tj_hi * cs], src_flat[s0:s0 + (tj_hi - tj_lo) * cs])
        _fill(dst[tj_hi * cs:], zero)


@njit(**_PARALLEL)
def conv_gather_dot(src, wm, bias, out, nth, ntw, grid_u, grid_v,
                    by0, bsy, bx0, bsx, oy0, osy, ox0, osx, tile, nthreads):
    """``out[pixel, f] = bias[f] + sum_k packed(pixel)[k] * wm[f, k]`` over a pixel grid.

    The grid is ``(N, grid_u, grid_v)``. Grid point ``(n, u, v)`` writes output pixel
    ``out[n, oy0 + u*osy, ox0 + v*osx, :]``; its packed row holds the taps
    ``src[n, by0 + u*bsy + ti, bx0 + v*bsx + tj, :]`` for ``ti < nth, tj < ntw``
    (zero outside ``src``). Conv forward: ``src = x``, taps from
    ``(u*sh - top, v*sw - left)``. Conv dx (one stride phase): ``src = dy`` and the
    sub-kernel flipped, so that its taps too run forward through ``src``.
    ``wm`` is ``(C_out, K)`` with ``K >= nth*ntw*C_src`` a multiple of 16 and zero
    columns past the real taps: a dot product whose length is a multiple of the vector
    width never runs LLVM's scalar remainder loop (16 scalar accumulators, slow).
    ``tile`` is a multiple of 4; ``nthreads`` tiles are processed round-robin, one
    per-thread packing buffer each.
    """
    n_img, hs, ws, cs = src.shape
    co, k = wm.shape
    _, ho_img, wo_img, _ = out.shape
    out2d = out.reshape(n_img * ho_img * wo_img, co)
    src_flat = src.reshape(src.size)
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
                _pack_row(src_flat, hs, ws, cs, a[r], nn, by0 + u * bsy, bx0 + v * bsx,
                          nth, ntw)
            # 4 pixels x 4 channels per micro-kernel call. A ragged edge repeats the last
            # valid row/column: it recomputes and rewrites the same value, which is
            # cheaper than a separate remainder kernel and never reads unpacked rows.
            if co < 4:  # e.g. dx of a first layer on 1 or 3 channels: no clamped waste
                for f in range(co):
                    b = bias[f]
                    for r0 in range(0, m, 4):
                        r1 = min(r0 + 1, m - 1)
                        r2 = min(r0 + 2, m - 1)
                        r3 = min(r0 + 3, m - 1)
                        s = _dot4x1(a[r0], a[r1], a[r2], a[r3], wm[f], k)
                        out2d[dest[r0], f] = s[0] + b
                        out2d[dest[r1], f] = s[1] + b
                        out2d[dest[r2], f] = s[2] + b
                        out2d[dest[r3], f] = s[3] + b
                continue
            # Channels outer: the 4 weight rows stay in L1 while the tile streams by.
            for f0 in range(0, co, 4):
                f1 = min(f0 + 1, co - 1)
                f2 = min(f0 + 2, co - 1)
                f3 = min(f0 + 3, co - 1)
                w0 = wm[f0]
                w1 = wm[f1]
                w2 = wm[f2]
                w3 = wm[f3]
                b0 = bias[f0]
                b1 = bias[f1]
                b2 = bias[f2]
                b3 = bias[f3]
                for r0 in range(0, m, 4):
                    r1 = min(r0 + 1, m - 1)
                    r2 = min(r0 + 2, m - 1)
                    r3 = min(r0 + 3, m - 1)
                    s = _dot4x4(a[r0], a[r1], a[r2], a[r3], w0, w1, w2, w3, k)
                    d0 = dest[r0]
                    d1 = dest[r1]
                    d2 = dest[r2]
                    d3 = dest[r3]
                    # The epilogue: where a fused activation would go.
                    out2d[d0, f0] = s[0] + b0
                    out2d[d0, f1] = s[1] + b1
                    out2d[d0, f2] = s[2] + b2
                    out2d[d0, f3] = s[3] + b3
                    out2d[d1, f0] = s[4] + b0
                    out2d[d1, f1] = s[5] + b1
                    out2d[d1, f2] = s[6] + b2
                    out2d[d1, f3] = s[7] + b3
                    out2d[d2, f0] = s[8] + b0
                    out2d[d2, f1] = s[9] + b1
                    out2d[d2, f2] = s[10] + b2
                    out2d[d2, f3] = s[11] + b3
                    out2d[d3, f0] = s[12] + b0
                    out2d[d3, f1] = s[13] + b1
                    out2d[d3, f2] = s[14] + b2
                    out2d[d3, f3] = s[15] + b3


@njit(**_PARALLEL)
def to_channel_major(a, out, grid_h, grid_w, sy, oy, sx, ox, colsum):
    """``out[c, (n*grid_h + u)*grid_w + v] = a[n, u*sy + oy, v*sx + ox, c]`` (0 outside a).

    Columns of ``out`` past ``N*grid_h*grid_w`` are zeroed too; ``colsum[c]`` receives
    the sum of the values copied into row c. Parallel over images: each image is read
    once, pixel by pixel (all channels of a pixel are one cache line or a few), while
    its rows of ``out`` are written as C sequential streams. The column sums are summed
    per image, then over images in a fixed order (race-free, thread-count independent).
    """
    n_img, h, w, c_total = a.shape
    zero = a.dtype.type(0)
    per_img = grid_h * grid_w
    partial = np.empty((n_img, c_total), dtype=a.dtype)
    for n in prange(n_img):
        sums = partial[n]
        _fill(sums, zero)
        for u in range(grid_h):
            iy = u * sy + oy
            q0 = (n * grid_h + u) * grid_w
            for v in range(grid_w):
                ix = v * sx + ox
                if iy < 0 or iy >= h or ix < 0 or ix >= w:
                    for c in range(c_total):
                        out[c, q0 + v] = zero
                else:
                    src = a[n, iy, ix]
                    for c in range(c_total):
                        val = src[c]
                        out[c, q0 + v] = val
                        sums[c] += val
    for c in range(c_total):
        _fill(out[c, n_img * per_img:], zero)
        acc = zero
        for n in range(n_img):
            acc += partial[n, c]
        colsum[c] = acc


@njit(**_PARALLEL)
def conv_dw(xph, dyw, dw2, kh, kw, sh, sw, grid_w, qlen, kblock, qtile, nthreads):
    """``dw2[k, f] = sum over pixels of patch[k] * dy[f]``, k = (a*kw + b)*C + c.

    No im2col: the operands are laid out so that every tap is a constant SHIFT along one
    flat pixel axis. ``dyw[f, q]`` holds dy on a grid (N, grid_h, grid_w) with zeros
    outside the real Ho x Wo outputs; ``xph[phase, c, q]`` holds the zero-padded input's
    stride phase ``(a % sh, b % sw)`` on the same grid (``xp[n, u*sh + a%sh,
    v*sw + b%sw, c]`` at ``q = (n, u, v)``). Then tap (a, b) of output q reads phase
    entry ``q + (a//sh)*grid_w + b//sw``, so

        dw[(a, b, c), f] = sum_q xph[phase(a, b), c, q + shift(a, b)] * dyw[f, q]

    is a plain dot product over contiguous memory (the grid is wide enough that a real
    output's taps never wrap into the next row; wrapped reads meet dy == 0). ``qlen`` is
    a multiple of 16 and ``qtile`` too, so dot products have no scalar remainder. The
    price is the zero margin of the grid (about (H*W)/(Ho*Wo) - 1 extra FLOPs, 40% on
    13x13 -> 11x11, 7% on 56x56 'same'); the gain is no packing copy at all.

    Work is split over blocks of ``kblock`` dW rows (a multiple of 4); each dW element
    is owned by one thread and summed in the same order whatever the thread count.
    A non-finite input value read by a wrapped tap meets a 0 and gives NaN (0 * inf);
    finite inputs are exact.
    """
    c_in = xph.shape[1]
    k_total, f_total = dw2.shape
    pw_count = min(sw, kw)
    nkb = (k_total + kblock - 1) // kblock
    zero = dw2.dtype.type(0)
    for t in prange(nthreads):
        row_phase = np.empty(kblock, dtype=np.int64)
        row_c = np.empty(kblock, dtype=np.int64)
        row_shift = np.empty(kblock, dtype=np.int64)
        for kb in range(t, nkb, nthreads):
            k0 = kb * kblock
            kn = min(kblock, k_total - k0)
            for kk in range(kn):
                k = k0 + kk
                tap = k // c_in
                ta = tap // kw
                tb = tap - ta * kw
                row_c[kk] = k - tap * c_in
                row_phase[kk] = (ta % sh) * pw_count + tb % sw
                row_shift[kk] = (ta // sh) * grid_w + tb // sw
                for f in range(f_total):
                    dw2[k, f] = zero
            for q0 in range(0, qlen, qtile):
                qn = min(qtile, qlen - q0)
                for r0 in range(0, kn, 4):
                    nr = min(4, kn - r0)
                    r1 = min(r0 + 1, kn - 1)
                    r2 = min(r0 + 2, kn - 1)
                    r3 = min(r0 + 3, kn - 1)
                    o0 = row_shift[r0] + q0
                    o1 = row_shift[r1] + q0
                    o2 = row_shift[r2] + q0
                    o3 = row_shift[r3] + q0
                    a0 = xph[row_phase[r0], row_c[r0], o0:o0 + qn]
                    a1 = xph[row_phase[r1], row_c[r1], o1:o1 + qn]
                    a2 = xph[row_phase[r2], row_c[r2], o2:o2 + qn]
                    a3 = xph[row_phase[r3], row_c[r3], o3:o3 + qn]
                    for f0 in range(0, f_total, 4):
                        nf = min(4, f_total - f0)
                        s = _dot4x4(a0, a1, a2, a3,
                                    dyw[f0, q0:q0 + qn],
                                    dyw[min(f0 + 1, f_total - 1), q0:q0 + qn],
                                    dyw[min(f0 + 2, f_total - 1), q0:q0 + qn],
                                    dyw[min(f0 + 3, f_total - 1), q0:q0 + qn], qn)
                        # Accumulating: a repeated (clamped) row/column must NOT be added
                        # twice, so only the nr x nf real entries are stored.
                        for ri in range(nr):
                            for fi in range(nf):
                                dw2[k0 + r0 + ri, f0 + fi] += s[4 * ri + fi]


@njit(**_PARALLEL)
def conv_dw_small(x, dy, partial, kh, kw, sh, sw, pt, pl):
    """conv dW for TINY patches (K = kh*kw*C up to ~16, e.g. a 3x3 first layer on 1 channel).

    ``partial`` is ``(n_chunks, K4 + 1, F)``, K4 = K rounded up to 4. Pixels are split
    into ``n_chunks`` FIXED contiguous chunks (not one per thread, so the result does not
    depend on the thread count); each chunk accumulates ``patch(p) outer dy(p)`` into
    its own partial dW (rows < K4) and ``dy(p)`` into its partial db (row K4), four
    pixels per pass over the (L1-resident) partial rows, and the partials are summed in
    chunk order into ``partial[0]``. Unlike :func:`conv_dw`, no channel-major copy of dy
    is needed: for so little arithmetic that copy would cost more than the products.
    """
    n_img, h, w, c_in = x.shape
    _, ho, wo, f_total = dy.shape
    n_chunks, k4, _ = partial.shape
    k4 -= 1  # the last row is db
    per_img = ho * wo
    p_total = n_img * per_img
    dy2 = dy.reshape(p_total, f_total)
    x_flat = x.reshape(x.size)
    zero = x.dtype.type(0)
    chunk = (p_total + n_chunks - 1) // n_chunks
    for ch in prange(n_chunks):
        acc = partial[ch]
        for k in range(k4 + 1):
            _fill(acc[k], zero)
        acc_b = acc[k4]
        rows = np.empty((4, k4), dtype=x.dtype)
        lo = min(p_total, ch * chunk)
        hi = min(p_total, lo + chunk)
        p = lo
        while p < hi:
            g = min(4, hi - p)
            for r in range(g):
                q = p + r
                nn = q // per_img
                rem = q - nn * per_img
                i = rem // wo
                j = rem - i * wo
                _pack_row(x_flat, h, w, c_in, rows[r], nn, i * sh - pt, j * sw - pl, kh, kw)
            if g == 4:
                d0 = dy2[p]
                d1 = dy2[p + 1]
                d2 = dy2[p + 2]
                d3 = dy2[p + 3]
                for k in range(k4):
                    a0 = rows[0, k]
                    a1 = rows[1, k]
                    a2 = rows[2, k]
                    a3 = rows[3, k]
                    dst = acc[k]
                    for f in range(f_total):
                        dst[f] += a0 * d0[f] + a1 * d1[f] + a2 * d2[f] + a3 * d3[f]
                for f in range(f_total):
                    acc_b[f] += d0[f] + d1[f] + d2[f] + d3[f]
            else:
                for r in range(g):
                    d0 = dy2[p + r]
                    for k in range(k4):
                        a0 = rows[r, k]
                        dst = acc[k]
                        for f in range(f_total):
                            dst[f] += a0 * d0[f]
                    for f in range(f_total):
                        acc_b[f] += d0[f]
            p += g
    total = partial[0]
    for ch in range(1, n_chunks):
        for k in range(k4 + 1):
            dst = total[k]
            src = partial[ch, k]
            for f in range(f_total):
                dst[f] += src[f]


# ----------------------------------------------------------------------------------------
# Convolution on few input channels (a first layer): direct, on a flat pixel grid
# ----------------------------------------------------------------------------------------
# A first layer has 1-4 input channels, so a patch holds only K = kh*kw*C values (9..27
# for 3x3/5x5 kernels on 1 or 3 channels). The gather kernel above vectorises its dot
# products over K: too short to fill a vector, and each 4x4 block ends in 16 horizontal
# sums. im2col + GEMM writes and re-reads a column matrix of K floats per output pixel
# and keeps it alive until the backward. Here the vector axis is the PIXEL axis instead.
# A tile of output rows is laid out channel-major on the conv_dw grid: one row of a small
# per-thread buffer per (stride phase, channel), each holding the tile's grid rows
# (``x[n, u*sh + rh - pt, v*sw + rw - pl, c]`` at ``(u - u0)*grid_w + v``, 0 outside x),
# so that every tap (a, b, c) is a constant shift along one contiguous axis and
#     y[q, f] = bias[f] + sum_k w[k, f] * buffer(k)[q + shift(k)]
# is a sum of long, unit-stride axpy streams. The grid is wider than the output by the
# taps' reach (kw - 1)//sw, so a real output never wraps into the next row; the extra
# grid columns are computed and dropped (1.4% of the work on 150 -> 148 'valid', 14% on
# LeNet's 28x28 'same'). Nothing but the caller's x is needed again by the backward:
# each kernel builds its tiles from x itself (a tile's reach rows are built twice, a
# copy of C values per pixel against K*F multiply-adds).


@njit(**_INLINE)
def _odd_lines(n):
    """A row length >= n that is an ODD multiple of 16 elements (64 B in float32).

    For per-thread tiles whose rows are used at once (a transposing store writes one
    element into each of F rows; a pass reads 4 rows): with a row stride that is a
    multiple of 4 KiB, they all land in the same L1 sets and evict each other (measured:
    10x slower dW on shape A when the tile row happened to be 1024 floats long).
    """
    return (n + 31) // 32 * 32 + 16


@njit(**_INLINE)
def _grid_tile(x, n, u0, n_rows, buf, phases_w, sh, sw, pt, pl, grid_w):
    """Grid rows ``u0 .. u0 + n_rows - 1`` of image n into ``buf`` (phases*C, length).

    Row ``(rh*phases_w + rw)*C + c`` of buf gets ``x[n, u*sh + rh - pt, v*sw + rw - pl,
    c]`` at column ``(u - u0)*grid_w + v`` (0 outside x) and zeros after the last grid
    row. Per grid row, the in-range columns are one run: a contiguous copy for C == 1
    at stride 1, two short zero fills for the 'same' padding.
    """
    _, h, w, c_in = x.shape
    zero = x.dtype.type(0)
    for p in range(buf.shape[0]):
        ph = p // c_in
        c = p - ph * c_in
        rh = ph // phases_w
        rw = ph - rh * phases_w
        # Grid columns v whose input column v*sw + rw - pl lies inside x: [v_lo, v_hi).
        v_lo = min(grid_w, max(0, (pl - rw + sw - 1) // sw))
        v_hi = max(v_lo, min(grid_w, (w - 1 + pl - rw) // sw + 1))
        ix_lo = v_lo * sw + rw - pl
        plane = buf[p]
        for r in range(n_rows):
            dst = plane[r * grid_w:(r + 1) * grid_w]
            iy = (u0 + r) * sh + rh - pt
            if iy < 0 or iy >= h:
                _fill(dst, zero)
                continue
            _fill(dst[:v_lo], zero)
            _fill(dst[v_hi:], zero)
            src = x[n, iy, ix_lo:, c]
            mid = dst[v_lo:v_hi]
            for v in range(v_hi - v_lo):
                mid[v] = src[v * sw]
        _fill(plane[n_rows * grid_w:], zero)


@njit(**_INLINE)
def _tap_table(k_total, c_in, kw, sh, sw, phases_w, grid_w, plane_of, shift_of):
    """Buffer row and grid shift of each tap k = (a*kw + b)*C + c (see conv_dw)."""
    for k in range(k_total):
        tap = k // c_in
        c = k - tap * c_in
        ta = tap // kw
        tb = tap - ta * kw
        plane_of[k] = ((ta % sh) * phases_w + tb % sw) * c_in + c
        shift_of[k] = (ta // sh) * grid_w + tb // sw


@njit(**_INLINE)
def _taps4_out4(a0, a1, a2, a3, x0, x1, x2, x3, w, first, b):
    """``acc_f (=|+=) sum_t x_t * w[t, f]`` for 4 taps t and 4 channels f, over pixels.

    Per vector of pixels: 4 loads of x, 4 of acc, 4 stores and 16 FMAs, against 1 store
    per FMA for one tap at a time (the acc streams stay in L1; the stores bound it).
    ``first`` starts the sums at the bias instead of reading acc: no separate fill pass.
    """
    w00 = w[0, 0]; w01 = w[0, 1]; w02 = w[0, 2]; w03 = w[0, 3]  # noqa: E702
    w10 = w[1, 0]; w11 = w[1, 1]; w12 = w[1, 2]; w13 = w[1, 3]  # noqa: E702
    w20 = w[2, 0]; w21 = w[2, 1]; w22 = w[2, 2]; w23 = w[2, 3]  # noqa: E702
    w30 = w[3, 0]; w31 = w[3, 1]; w32 = w[3, 2]; w33 = w[3, 3]  # noqa: E702
    if first:
        b0 = b[0]
        b1 = b[1]
        b2 = b[2]
        b3 = b[3]
        for j in range(a0.size):
            v0 = x0[j]
            v1 = x1[j]
            v2 = x2[j]
            v3 = x3[j]
            a0[j] = b0 + (v0 * w00 + v1 * w10 + v2 * w20 + v3 * w30)
            a1[j] = b1 + (v0 * w01 + v1 * w11 + v2 * w21 + v3 * w31)
            a2[j] = b2 + (v0 * w02 + v1 * w12 + v2 * w22 + v3 * w32)
            a3[j] = b3 + (v0 * w03 + v1 * w13 + v2 * w23 + v3 * w33)
    else:
        for j in range(a0.size):
            v0 = x0[j]
            v1 = x1[j]
            v2 = x2[j]
            v3 = x3[j]
            a0[j] += v0 * w00 + v1 * w10 + v2 * w20 + v3 * w30
            a1[j] += v0 * w01 + v1 * w11 + v2 * w21 + v3 * w31
            a2[j] += v0 * w02 + v1 * w12 + v2 * w22 + v3 * w32
            a3[j] += v0 * w03 + v1 * w13 + v2 * w23 + v3 * w33


@njit(**_INLINE)
def _taps4_out1(a0, x0, x1, x2, x3, w, first, b0):
    """:func:`_taps4_out4` for one channel (the F % 4 channels left over)."""
    w0 = w[0]
    w1 = w[1]
    w2 = w[2]
    w3 = w[3]
    if first:
        for j in range(a0.size):
            a0[j] = b0 + (x0[j] * w0 + x1[j] * w1 + x2[j] * w2 + x3[j] * w3)
    else:
        for j in range(a0.size):
            a0[j] += x0[j] * w0 + x1[j] * w1 + x2[j] * w2 + x3[j] * w3


@njit(**_INLINE)
def _four_tap_rows(buf, plane_of, shift_of, k0, k_total, qn, zrow):
    """The rows of taps ``k0 .. k0+3`` over ``qn`` grid pixels: each tap is a constant shift
    along its plane of the channel-major tile; taps past ``k_total`` read zeros."""
    o0 = shift_of[k0]
    o1 = shift_of[k0 + 1]
    o2 = shift_of[k0 + 2]
    o3 = shift_of[k0 + 3]
    x0 = buf[plane_of[k0], o0:o0 + qn]
    x1 = buf[plane_of[k0 + 1], o1:o1 + qn] if k0 + 1 < k_total else zrow[:qn]
    x2 = buf[plane_of[k0 + 2], o2:o2 + qn] if k0 + 2 < k_total else zrow[:qn]
    x3 = buf[plane_of[k0 + 3], o3:o3 + qn] if k0 + 3 < k_total else zrow[:qn]
    return x0, x1, x2, x3


@njit(**_SERIAL)
def conv_few_forward_part(x, w4, bias, y, k_total, kw, sh, sw, pt, pl, phases_h, phases_w,
                          tile_rows, first, step):
    """``y = conv(x, w) + bias`` for few input channels, work units first, first+step, ...

    ``w4`` is ``(4*G, F)``: the HWIO kernel as (K, F) rows plus zero rows up to a
    multiple of 4 taps; a padded tap reads a zero row, so it adds exactly 0 (never
    0 * inf). Work unit: ``tile_rows`` output rows of one image. Its grid tile goes
    into this call's buffer; per 4 output channels, the taps run 4 at a time over the
    tile's accumulator rows (L1-resident), which are then written to y's real pixels.
    Every output value is computed by one unit, in an order fixed by the shapes:
    :func:`conv_few_forward` (one call per thread) and one serial call (first=0,
    step=1) give bitwise the same y.
    """
    c_in = x.shape[3]
    k4, f_total = w4.shape
    n_img, ho, wo, _ = y.shape
    kh = k_total // (kw * c_in)
    reach_rows = (kh - 1) // sh
    grid_w = wo + (kw - 1) // sw
    n_tiles = (ho + tile_rows - 1) // tile_rows
    qtile = tile_rows * grid_w
    buf_len = (tile_rows + reach_rows) * grid_w + (kw - 1) // sw
    buf = np.empty((phases_h * phases_w * c_in, _odd_lines(buf_len)), dtype=x.dtype)
    acc = np.empty((4, _odd_lines(qtile)), dtype=y.dtype)
    zrow = np.zeros(qtile, dtype=y.dtype)
    plane_of = np.zeros(k4, dtype=np.int64)
    shift_of = np.zeros(k4, dtype=np.int64)
    _tap_table(k_total, c_in, kw, sh, sw, phases_w, grid_w, plane_of, shift_of)
    for job in range(first, n_img * n_tiles, step):
        n = job // n_tiles
        i0 = (job - n * n_tiles) * tile_rows
        rows = min(tile_rows, ho - i0)
        qn = rows * grid_w
        _grid_tile(x, n, i0, rows + reach_rows, buf, phases_w, sh, sw, pt, pl, grid_w)
        for f0 in range(0, f_total, 4):
            nf = min(4, f_total - f0)
            for k0 in range(0, k4, 4):
                x0, x1, x2, x3 = _four_tap_rows(buf, plane_of, shift_of, k0, k_total, qn, zrow)
                if nf == 4:
                    _taps4_out4(acc[0, :qn], acc[1, :qn], acc[2, :qn], acc[3, :qn],
                                x0, x1, x2, x3, w4[k0:k0 + 4, f0:f0 + 4], k0 == 0,
                                bias[f0:f0 + 4])
                else:
                    for ff in range(nf):
                        _taps4_out1(acc[ff, :qn], x0, x1, x2, x3, w4[k0:k0 + 4, f0 + ff],
                                    k0 == 0, bias[f0 + ff])
            # The tile's real pixels (the first wo of each grid row) into NHWC y. This
            # transposing store costs about as much as the arithmetic when F is large
            # (measured 46% of shape A's forward, 42% of cats-vs-dogs' first conv).
            for r in range(rows):
                yr = y[n, i0 + r]
                if nf == 4:
                    s0 = acc[0, r * grid_w:r * grid_w + wo]
                    s1 = acc[1, r * grid_w:r * grid_w + wo]
                    s2 = acc[2, r * grid_w:r * grid_w + wo]
                    s3 = acc[3, r * grid_w:r * grid_w + wo]
                    for j in range(wo):
                        d = yr[j, f0:f0 + 4]
                        d[0] = s0[j]
                        d[1] = s1[j]
                        d[2] = s2[j]
                        d[3] = s3[j]
                else:
                    for ff in range(nf):
                        s0 = acc[ff, r * grid_w:r * grid_w + wo]
                        for j in range(wo):
                            yr[j, f0 + ff] = s0[j]


@njit(**_PARALLEL)
def conv_few_forward(x, w4, bias, y, k_total, kw, sh, sw, pt, pl, phases_h, phases_w,
                     tile_rows, nthreads):
    """:func:`conv_few_forward_part` on ``nthreads`` threads, units round-robin."""
    for t in prange(nthreads):
        conv_few_forward_part(x, w4, bias, y, k_total, kw, sh, sw, pt, pl, phases_h,
                              phases_w, tile_rows, t, nthreads)


@njit(**_SERIAL)
def conv_few_dw_part(x, dy, partial, db_partial, k_total, kw, sh, sw, pt, pl, phases_h,
                     phases_w, tile_rows, first, step):
    """Per-image dW and db of a few-channel conv, for images first, first+step, ...

    ``partial[n]`` is image n's ``(K4, F4)`` dW and ``db_partial[n]`` its ``(F4,)`` db
    (K and F rounded up to 4; :func:`sum_image_partials` then sums them). Tile by tile:
    the grid tile of x goes into this call's buffer as in the forward, dy's tile goes
    channel-major onto the same grid (zeros in the columns past Wo and past the tile;
    rows past F stay zero), its rows are summed into db, and
    ``dW[k, f] += sum_q buffer(k)[q + shift(k)] * dy_tile[f, q]`` runs as 4 x 4 blocks
    of dot products over the tile's pixels (the conv_dw micro-kernel). The dy tile is
    the only copy of dy ever made, and it stays in L1/L2. Each image is reduced by one
    call in a fixed order: any split of the images over threads gives the same bits.
    A wrapped tap (a grid column past Wo) reads a real x value against dy == 0: finite
    inputs are exact, an inf there gives NaN (as conv_dw).
    """
    c_in = x.shape[3]
    n_img, ho, wo, f_total = dy.shape
    _, k4, f4 = partial.shape
    kh = k_total // (kw * c_in)
    reach_rows = (kh - 1) // sh
    grid_w = wo + (kw - 1) // sw
    n_tiles = (ho + tile_rows - 1) // tile_rows
    qtile = (tile_rows * grid_w + 15) // 16 * 16
    # Dot products run over a multiple of 16 pixels, up to 15 past the tile's grid rows.
    buf_len = (tile_rows + reach_rows) * grid_w + (kw - 1) // sw + 16
    zero = dy.dtype.type(0)
    buf = np.empty((phases_h * phases_w * c_in, _odd_lines(buf_len)), dtype=x.dtype)
    dyt = np.zeros((f4, _odd_lines(qtile)), dtype=dy.dtype)
    zrow = np.zeros(qtile, dtype=dy.dtype)
    plane_of = np.zeros(k4, dtype=np.int64)
    shift_of = np.zeros(k4, dtype=np.int64)
    _tap_table(k_total, c_in, kw, sh, sw, phases_w, grid_w, plane_of, shift_of)
    for n in range(first, n_img, step):
        part = partial[n]
        for k in range(k4):
            _fill(part[k], zero)
        dbn = db_partial[n]
        _fill(dbn, zero)
        for tile in range(n_tiles):
            i0 = tile * tile_rows
            rows = min(tile_rows, ho - i0)
            qn = (rows * grid_w + 15) // 16 * 16
            _grid_tile(x, n, i0, rows + reach_rows, buf, phases_w, sh, sw, pt, pl, grid_w)
            # dy's tile channel-major: per dy row (in L1), one contiguous destination run
            # per channel (measured 1.4x faster than a pixel-by-pixel scatter).
            for r in range(rows):
                dyr = dy[n, i0 + r]
                for f in range(f_total):
                    dst = dyt[f, r * grid_w:(r + 1) * grid_w]
                    src = dyr[:, f]
                    for j in range(wo):
                        dst[j] = src[j]
                    _fill(dst[wo:], zero)
            for f in range(f_total):
                row = dyt[f, :qn]
                _fill(row[rows * grid_w:], zero)
                s = zero
                for q in range(qn):
                    s += row[q]
                dbn[f] += s
            for k0 in range(0, k4, 4):
                x0, x1, x2, x3 = _four_tap_rows(buf, plane_of, shift_of, k0, k_total, qn, zrow)
                for f0 in range(0, f4, 4):
                    s = _dot4x4(x0, x1, x2, x3, dyt[f0, :qn], dyt[f0 + 1, :qn],
                                dyt[f0 + 2, :qn], dyt[f0 + 3, :qn], qn)
                    p0 = part[k0, f0:f0 + 4]
                    p1 = part[k0 + 1, f0:f0 + 4]
                    p2 = part[k0 + 2, f0:f0 + 4]
                    p3 = part[k0 + 3, f0:f0 + 4]
                    p0[0] += s[0]
                    p0[1] += s[1]
                    p0[2] += s[2]
                    p0[3] += s[3]
                    p1[0] += s[4]
                    p1[1] += s[5]
                    p1[2] += s[6]
                    p1[3] += s[7]
                    p2[0] += s[8]
                    p2[1] += s[9]
                    p2[2] += s[10]
                    p2[3] += s[11]
                    p3[0] += s[12]
                    p3[1] += s[13]
                    p3[2] += s[14]
                    p3[3] += s[15]


@njit(**_PARALLEL)
def conv_few_dw(x, dy, partial, db_partial, k_total, kw, sh, sw, pt, pl, phases_h,
                phases_w, tile_rows, nthreads):
    """:func:`conv_few_dw_part` on ``nthreads`` threads, images round-robin."""
    for t in prange(nthreads):
        conv_few_dw_part(x, dy, partial, db_partial, k_total, kw, sh, sw, pt, pl, phases_h,
                         phases_w, tile_rows, t, nthreads)


@njit(**_SERIAL)
def sum_image_partials(partial, db_partial):
    """``partial[0] = sum_n partial[n]`` (and db), added in image order: the result does
    not depend on how the images were split over threads."""
    n_img, k4, f4 = partial.shape
    total = partial[0]
    db_total = db_partial[0]
    for n in range(1, n_img):
        for k in range(k4):
            dst = total[k]
            src = partial[n, k]
            for f in range(f4):
                dst[f] += src[f]
        src = db_partial[n]
        for f in range(f4):
            db_total[f] += src[f]


# ----------------------------------------------------------------------------------------
# Depthwise convolution. ``wk`` is the kernel (kh, kw, C, M) reshaped to (kh*kw, C*M):
# row ``a*kw + b`` holds tap (a, b)'s weights in OUTPUT channel order ``c*M + m``, so with
# M = 1 a tap is one element-wise multiply-add along the contiguous channels of an x
# pixel, a y pixel and a weight row (vectorised), and with M > 1 each x value feeds M
# consecutive outputs. No channel sum anywhere, so no dot-product micro-kernel: the work
# per output value is only kh*kw multiply-adds, and the kernels are loops over pixels with
# the channel loop innermost. Padding costs nothing: the tap ranges skip it.
# ----------------------------------------------------------------------------------------


@njit(**_INLINE)
def _taps9(out, start, s0, s1, s2, s3, s4, s5, s6, s7, s8,
           w0, w1, w2, w3, w4, w5, w6, w7, w8, n):
    """``out = start + sum_k s_k * w_k`` over 9 taps (a 3x3 window's), element-wise: one
    pass that reads each source once and writes ``out`` once, 9 FMAs per vector."""
    for c in range(n):
        out[c] = (start[c] + s0[c] * w0[c] + s1[c] * w1[c] + s2[c] * w2[c]
                  + s3[c] * w3[c] + s4[c] * w4[c] + s5[c] * w5[c]
                  + s6[c] * w6[c] + s7[c] * w7[c] + s8[c] * w8[c])


@njit(**_INLINE)
def _acc4(p, x0, d0, x1, d1, x2, d2, x3, d3, n):
    """``p += x0*d0 + x1*d1 + x2*d2 + x3*d3`` element-wise: one store stream (LLVM
    vectorises it; the 9 taps' partial rows updated in ONE loop, 10 store streams, it
    does not: measured 3-10x slower)."""
    for c in range(n):
        p[c] += x0[c] * d0[c] + x1[c] * d1[c] + x2[c] * d2[c] + x3[c] * d3[c]


@njit(**_PARALLEL)
def depthwise_forward(x, wk, bias, y, kh, kw, mult, sh, sw, pt, pl):
    """``y`` = bias + the taps' products, per output pixel; parallel over output rows.

    3x3 kernels with M = 1 (MobileNet's) take :func:`_taps9` on the pixels whose window
    lies inside the image: one pass per pixel instead of 9 read-modify-write passes
    over its output channels (measured 2x at 112x112x32). Border pixels and other
    kernels take the general loop, one tap at a time, skipping padded taps."""
    n_img, h, w, c_in = x.shape
    _, ho, wo, q_total = y.shape
    fast3 = kh == 3 and kw == 3 and mult == 1
    for r in prange(n_img * ho):
        n = r // ho
        i = r - n * ho
        h0 = i * sh - pt
        a0 = max(0, -h0)
        a1 = min(kh, h - h0)
        if fast3 and a0 == 0 and a1 == 3:
            xa, xb, xc = x[n, h0], x[n, h0 + 1], x[n, h0 + 2]
            # the pixels j whose 3 columns j*sw - pl + (0, 1, 2) all lie in [0, w)
            j0 = min(wo, -(-pl // sw))
            j1 = max(j0, min(wo, (w - 3 + pl) // sw + 1))
            for j in range(j0, j1):
                w0 = j * sw - pl
                _taps9(y[n, i, j], bias,
                       xa[w0], xa[w0 + 1], xa[w0 + 2], xb[w0], xb[w0 + 1], xb[w0 + 2],
                       xc[w0], xc[w0 + 1], xc[w0 + 2],
                       wk[0], wk[1], wk[2], wk[3], wk[4], wk[5], wk[6], wk[7], wk[8],
                       q_total)
        else:
            j0 = j1 = 0
        for j in range(wo):
            if j0 <= j < j1:
                continue
            w0 = j * sw - pl
            b0 = max(0, -w0)
            b1 = min(kw, w - w0)
            yr = y[n, i, j]
            for q in range(q_total):
                yr[q] = bias[q]
            for a in range(a0, a1):
                for b in range(b0, b1):
                    xr = x[n, h0 + a, w0 + b]
                    wr = wk[a * kw + b]
                    if mult == 1:
                        for q in range(q_total):
                            yr[q] += xr[q] * wr[q]
                    else:
                        for c in range(c_in):
                            xv = xr[c]
                            yc = yr[c * mult : (c + 1) * mult]
                            wc = wr[c * mult : (c + 1) * mult]
                            for m in range(mult):
                                yc[m] += xv * wc[m]


@njit(**_PARALLEL)
def depthwise_dx(dy, wk, dx, kh, kw, mult, sh, sw, pt, pl):
    """dx as a GATHER: each dx pixel sums, over the taps whose window started on the
    stride grid, ``dy`` of that window times the tap's weights (summed over m). Parallel
    over dx rows: every dx value is written by one thread, once, with no ``+=`` shared
    between threads (a scatter from dy would race where windows overlap)."""
    n_img, h, w, c_in = dx.shape
    _, ho, wo, q_total = dy.shape
    zero = dx.dtype.type(0)
    # Stride 1, 3x3, M = 1: a dx pixel whose 9 taps all land on dy is one _taps9 pass
    # (the correlation of dy with the flipped kernel), as in depthwise_forward.
    fast3 = kh == 3 and kw == 3 and mult == 1 and sh == 1 and sw == 1
    zeros = np.zeros(c_in, dtype=dx.dtype)
    for r in prange(n_img * h):
        n = r // h
        ih = r - n * h
        i0 = ih + pt   # dy row of tap a is i0 - a
        if fast3 and i0 >= 2 and i0 < ho:
            da, db, dc = dy[n, i0 - 2], dy[n, i0 - 1], dy[n, i0]
            # dx columns iw whose dy columns iw + pl - (0, 1, 2) all lie in [0, wo)
            j0 = min(w, max(0, 2 - pl))
            j1 = max(j0, min(w, wo - pl))
            for iw in range(j0, j1):
                u = iw + pl
                _taps9(dx[n, ih, iw], zeros,
                       dc[u], dc[u - 1], dc[u - 2], db[u], db[u - 1], db[u - 2],
                       da[u], da[u - 1], da[u - 2],
                       wk[0], wk[1], wk[2], wk[3], wk[4], wk[5], wk[6], wk[7], wk[8],
                       c_in)
        else:
            j0 = j1 = 0
        for iw in range(w):
            if j0 <= iw < j1:
                continue
            dxr = dx[n, ih, iw]
            for c in range(c_in):
                dxr[c] = zero
            for a in range(kh):
                ti = ih + pt - a  # = i*sh for the window row i whose tap a is this pixel
                if ti < 0 or ti % sh != 0 or ti // sh >= ho:
                    continue
                i = ti // sh
                for b in range(kw):
                    tj = iw + pl - b
                    if tj < 0 or tj % sw != 0 or tj // sw >= wo:
                        continue
                    dyr = dy[n, i, tj // sw]
                    wr = wk[a * kw + b]
                    if mult == 1:
                        for c in range(c_in):
                            dxr[c] += dyr[c] * wr[c]
                    else:
                        for c in range(c_in):
                            dyc = dyr[c * mult : (c + 1) * mult]
                            wc = wr[c * mult : (c + 1) * mult]
                            acc = zero
                            for m in range(mult):
                                acc += dyc[m] * wc[m]
                            dxr[c] += acc


@njit(**_PARALLEL)
def depthwise_dw(x, dy, partial, kh, kw, mult, sh, sw, pt, pl, rows_per_chunk):
    """Partial dW and db per FIXED chunk of output rows: ``partial[chunk, a*kw + b]``
    gets tap (a, b)'s products summed over the chunk's pixels, ``partial[chunk, kh*kw]``
    the chunk's dy sum. Chunks (not threads) are the unit, so the caller's sum over them
    in chunk order gives the same bits for any thread count, and no two threads ever
    add into one value."""
    n_img, h, w, c_in = x.shape
    _, ho, wo, q_total = dy.shape
    n_chunks = partial.shape[0]
    k_total = kh * kw
    zero = x.dtype.type(0)
    for chunk in prange(n_chunks):
        part = partial[chunk]
        for k in range(k_total + 1):
            pk = part[k]
            for q in range(q_total):
                pk[q] = zero
        pdb = part[k_total]
        r0 = chunk * rows_per_chunk
        r1 = min(n_img * ho, r0 + rows_per_chunk)
        for r in range(r0, r1):
            n = r // ho
            i = r - n * ho
            h0 = i * sh - pt
            a0 = max(0, -h0)
            a1 = min(kh, h - h0)
            # M = 1, stride 1: the pixels whose whole window lies inside the image
            # columns, 4 at a time: per tap, the 4 pixels' products are summed in
            # registers and added to the partial once (a quarter of the partials' loads
            # and stores; CPU time at 112x112x32, batch 8: 7.0-8.2 -> 4.8-5.3 ms). At
            # stride 2 it measured slower (112x112x96: 4.5 -> 6.0 ms), so not there.
            j0 = j1 = 0
            if mult == 1 and sw == 1:
                j0 = min(wo, -(-pl // sw))
                j1 = j0 + max(0, min(wo, (w - kw + pl) // sw + 1) - j0) // 4 * 4
                dyrow = dy[n, i]
                for j in range(j0, j1, 4):
                    d0, d1, d2, d3 = dyrow[j], dyrow[j + 1], dyrow[j + 2], dyrow[j + 3]
                    for q in range(q_total):
                        pdb[q] += d0[q] + d1[q] + d2[q] + d3[q]
                    for a in range(a0, a1):
                        xrow = x[n, h0 + a]
                        for b in range(kw):
                            u = j * sw - pl + b
                            _acc4(part[a * kw + b], xrow[u], d0, xrow[u + sw], d1,
                                  xrow[u + 2 * sw], d2, xrow[u + 3 * sw], d3, q_total)
            for j in range(wo):
                if j0 <= j < j1:
                    continue
                w0 = j * sw - pl
                b0 = max(0, -w0)
                b1 = min(kw, w - w0)
                dyr = dy[n, i, j]
                for q in range(q_total):
                    pdb[q] += dyr[q]
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        xr = x[n, h0 + a, w0 + b]
                        pk = part[a * kw + b]
                        if mult == 1:
                            for q in range(q_total):
                                pk[q] += xr[q] * dyr[q]
                        else:
                            for c in range(c_in):
                                xv = xr[c]
                                pc = pk[c * mult : (c + 1) * mult]
                                dyc = dyr[c * mult : (c + 1) * mult]
                                for m in range(mult):
                                    pc[m] += xv * dyc[m]


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
def maxpool_backward(dy, arg, dx, ph, pw, sh, sw, pt, pl):
    """Scatters ``dy`` to each window's winner; ``dx`` must arrive zero-filled.

    Per window, one pass per REAL tap over the contiguous channels adds ``dy`` where
    that tap won (a masked, vectorisable add; no per-element index arithmetic).
    Parallel over images: windows overlap when stride < pool, and the thread that owns
    image n is the only writer of dx[n], so the ``+=`` never races.
    """
    n_img, ho, wo, c_total = dy.shape
    _, h, w, _ = dx.shape
    zero = dy.dtype.type(0)
    for n in prange(n_img):
        for i in range(ho):
            h0 = i * sh - pt
            a0 = max(0, -h0)
            a1 = min(ph, h - h0)
            for j in range(wo):
                w0 = j * sw - pl
                b0 = max(0, -w0)
                b1 = min(pw, w - w0)
                dyr = dy[n, i, j]
                ar = arg[n, i, j]
                for a in range(a0, a1):
                    for b in range(b0, b1):
                        tap = a * pw + b
                        dxr = dx[n, h0 + a, w0 + b]
                        for c in range(c_total):
                            dxr[c] += dyr[c] if ar[c] == tap else zero


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
# Element-wise activations (flat 1-D views). op: 0 relu, 1 sigmoid, 2 tanh,
# 3 hard_sigmoid, 4 hard_silu, 5 gelu (erf form). The backward's second array is the
# forward OUTPUT for ops 0-3 and the forward INPUT for ops 4-5.
# ----------------------------------------------------------------------------------------


@njit(**_SERIAL)
def unary_forward_range(x, y, op, lo, hi):
    """``y[lo:hi] = f(x[lo:hi])``; NaN in gives NaN out for every op."""
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    xs = x[lo:hi]
    ys = y[lo:hi]
    if op == 0:
        for i in range(xs.size):
            v = xs[i]
            # 'v <= 0' is False for NaN, so NaN passes through (np.maximum does the same).
            ys[i] = zero if v <= zero else v
    elif op == 1:
        for i in range(xs.size):
            v = xs[i]
            # e = exp(-|v|) <= 1 never overflows; both branches are the same function.
            e = np.exp(-np.abs(v))
            ys[i] = (one if v >= zero else e) / (one + e)
    elif op == 2:
        for i in range(xs.size):
            ys[i] = np.tanh(xs[i])
    elif op == 3 or op == 4:
        three = x.dtype.type(3)
        six = x.dtype.type(6)
        for i in range(xs.size):
            v = xs[i]
            # relu6(v + 3) / 6 with comparisons a NaN fails, so NaN passes through.
            a = v + three
            if a < zero:
                a = zero
            if a > six:
                a = six
            ys[i] = a / six if op == 3 else v * (a / six)
    else:
        c = x.dtype.type(0.7071067811865476)  # 1 / sqrt(2)
        half = x.dtype.type(0.5)
        for i in range(xs.size):
            v = xs[i]
            ys[i] = half * v * math.erfc(-v * c)


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
    dys = dy[lo:hi]
    ys = y[lo:hi]
    dxs = dx[lo:hi]
    if op == 0:
        for i in range(dys.size):
            # y > 0 exactly where x > 0: the derivative at 0 (and at NaN) is 0.
            dxs[i] = dys[i] if ys[i] > zero else zero
    elif op == 1:
        for i in range(dys.size):
            v = ys[i]
            dxs[i] = dys[i] * (v * (one - v))
    elif op == 2:
        for i in range(dys.size):
            v = ys[i]
            dxs[i] = dys[i] * (one - v * v)
    elif op == 3:
        six = y.dtype.type(6)
        for i in range(dys.size):
            v = ys[i]
            # 0 < y < 1 exactly where -3 < x < 3.
            dxs[i] = dys[i] / six if (v > zero and v < one) else zero
    elif op == 4:
        three = y.dtype.type(3)
        six = y.dtype.type(6)
        for i in range(dys.size):
            v = ys[i]  # the input x
            d = dys[i]
            if v <= -three:  # at -3 and 3 themselves: TensorFlow's 0 and 1
                dxs[i] = zero
            elif v >= three:
                dxs[i] = d
            else:
                dxs[i] = d * ((v + v + three) / six)
    else:
        c = y.dtype.type(0.7071067811865476)  # 1 / sqrt(2)
        half = y.dtype.type(0.5)
        k = y.dtype.type(0.3989422804014327)  # 1 / sqrt(2 pi)
        for i in range(dys.size):
            v = ys[i]  # the input x
            dxs[i] = dys[i] * (half * math.erfc(-v * c) + v * (k * np.exp(-half * v * v)))


@njit(**_PARALLEL)
def unary_backward_parallel(dy, y, dx, op, chunk):
    nchunks = (dy.size + chunk - 1) // chunk
    for t in prange(nchunks):
        unary_backward_range(dy, y, dx, op, t * chunk, min(dy.size, (t + 1) * chunk))


@njit(**_SERIAL)
def relu_general_forward_range(x, y, slope, low, high, threshold, lo, hi):
    """Keras's relu with its arguments (relu6 and leaky_relu are cases of it):
    ``a = x if x > threshold else 0``, clipped to ``[low, high]`` (+-inf: no bound), minus
    ``slope * max(threshold - x, 0)``. Comparisons a NaN fails keep NaN in place."""
    zero = x.dtype.type(0)
    s = x.dtype.type(slope)
    lw = x.dtype.type(low)
    hg = x.dtype.type(high)
    th = x.dtype.type(threshold)
    xs = x[lo:hi]
    ys = y[lo:hi]
    if slope == 0.0:  # no negative part: 0 * inf would make relu(-inf) NaN
        for i in range(xs.size):
            v = xs[i]
            a = zero if v <= th else v
            if a < lw:
                a = lw
            if a > hg:
                a = hg
            ys[i] = a
    else:
        for i in range(xs.size):
            v = xs[i]
            a = zero if v <= th else v
            if a < lw:
                a = lw
            if a > hg:
                a = hg
            n = th - v
            ys[i] = a - s * (n if n > zero else zero)


@njit(**_PARALLEL)
def relu_general_forward_parallel(x, y, slope, low, high, threshold, chunk):
    nchunks = (x.size + chunk - 1) // chunk
    for t in prange(nchunks):
        relu_general_forward_range(x, y, slope, low, high, threshold, t * chunk,
                                   min(x.size, (t + 1) * chunk))


@njit(**_SERIAL)
def relu_general_backward_range(dy, x, dx, slope, low, high, threshold, lo, hi):
    """``dx = dy`` where the kept part is x (above the threshold, strictly inside the clip
    interval), ``slope * dy`` at and below the threshold, else 0 (0 for a NaN x)."""
    zero = x.dtype.type(0)
    s = x.dtype.type(slope)
    lw = x.dtype.type(low)
    hg = x.dtype.type(high)
    th = x.dtype.type(threshold)
    if high == np.inf:  # no upper bound: the derivative at x = +inf is 1
        hg = x.dtype.type(np.nan)  # 'v >= NaN' is False for every v
    dys = dy[lo:hi]
    xs = x[lo:hi]
    dxs = dx[lo:hi]
    if slope == 0.0:
        for i in range(dys.size):
            v = xs[i]
            dxs[i] = dys[i] if (v > th and v > lw and not v >= hg) else zero
    else:
        for i in range(dys.size):
            v = xs[i]
            d = dys[i]
            dxs[i] = d if (v > th and v > lw and not v >= hg) else (s * d if v <= th else zero)


@njit(**_PARALLEL)
def relu_general_backward_parallel(dy, x, dx, slope, low, high, threshold, chunk):
    nchunks = (dy.size + chunk - 1) // chunk
    for t in prange(nchunks):
        relu_general_backward_range(dy, x, dx, slope, low, high, threshold, t * chunk,
                                    min(dy.size, (t + 1) * chunk))


# ----------------------------------------------------------------------------------------
# Softmax and the fused losses (rows of a 2-D array; small, so serial)
# ----------------------------------------------------------------------------------------


@njit(**_ROWS_INLINE)
def _row_max_logsum(z):
    """``(m, log(sum(exp(z - m))))`` with ``m`` the row max: every exponent is <= 0.

    The two parts stay separate: ``log_softmax = (z - m) - logsum``. Adding them first
    (``logsumexp = m + logsum``) rounds ``logsum`` away at the scale of ``m`` (float32 keeps
    about 7 digits: at 1e4 a softmax of 0.5 became 0.49989, at 1e30 the loss became 0).
    """
    m = z[0]
    for k in range(1, z.size):
        if z[k] > m or z[k] != z[k]:
            m = z[k]
    total = z.dtype.type(0)
    for k in range(z.size):
        total += np.exp(z[k] - m)
    return m, np.log(total)


@njit(**_ROWS)
def softmax_rows(x, y):
    for r in range(x.shape[0]):
        m, logsum = _row_max_logsum(x[r])
        for k in range(x.shape[1]):
            y[r, k] = np.exp((x[r, k] - m) - logsum)


@njit(**_SERIAL)
def softmax_backward_rows(dy, y, dx):
    """``dx = y * (dy - sum(dy * y))`` per row (the softmax Jacobian applied to dy)."""
    for r in range(y.shape[0]):
        dot = y.dtype.type(0)
        for k in range(y.shape[1]):
            dot += dy[r, k] * y[r, k]
        for k in range(y.shape[1]):
            dx[r, k] = y[r, k] * (dy[r, k] - dot)


@njit(**_ROWS)
def softmax_cross_entropy(z, t, dz):
    """Returns the batch-mean loss; ``dz = (softmax(z) * sum(t) - t) / N``."""
    n, kk = z.shape
    inv_n = z.dtype.type(1) / z.dtype.type(n)
    loss = z.dtype.type(0)
    for r in range(n):
        m, logsum = _row_max_logsum(z[r])
        tsum = z.dtype.type(0)
        for k in range(kk):
            tsum += t[r, k]
            loss -= t[r, k] * ((z[r, k] - m) - logsum)  # -t * log_softmax
        for k in range(kk):
            dz[r, k] = (np.exp((z[r, k] - m) - logsum) * tsum - t[r, k]) * inv_n
    return loss * inv_n


@njit(**_ROWS)
def sparse_softmax_cross_entropy(z, labels, dz):
    """:func:`softmax_cross_entropy` with one-hot rows given as labels (already checked)."""
    n, kk = z.shape
    inv_n = z.dtype.type(1) / z.dtype.type(n)
    one = z.dtype.type(1)
    loss = z.dtype.type(0)
    for r in range(n):
        m, logsum = _row_max_logsum(z[r])
        lab = labels[r]
        loss -= (z[r, lab] - m) - logsum
        for k in range(kk):
            dz[r, k] = np.exp((z[r, k] - m) - logsum) * inv_n
        dz[r, lab] = (np.exp((z[r, lab] - m) - logsum) - one) * inv_n
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
