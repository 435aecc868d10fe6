"""Memory-bound halves of an im2col convolution (NHWC activations, HWIO kernels).

The FLOPs of a convolution are in two GEMMs, which the Python wrapper
(fastcnn/backends/cython_cpu.py) hands to NumPy's BLAS *between* these kernels, never inside
a parallel region (BLAS threads inside OpenMP threads oversubscribe the cores). What remains
is data movement, done here in parallel:

* ``im2col``: packs every receptive field into one row of ``cols`` straight from the unpadded
  input; out-of-image taps are written as zeros (no padded copy of ``x`` is ever made).
* ``col2im``: the adjoint, written as a *gather*: each ``dx`` row (n, h) is owned by one
  thread and sums every ``dcols`` entry that maps onto it. No two threads write the same
  element (no race, no atomics) and every element's summation order is fixed, so results are
  bitwise identical for any thread count.

Row ``r = (n*Ho + ho)*Wo + wo`` of ``cols`` holds the patch in (i, j, c) order, i.e. column
``(i*kw + j)*C + c`` - exactly the row order of the HWIO kernel reshaped to (kh*kw*C, F).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from omp_guard cimport threads_for

# Bumped whenever a signature here changes: fastcnn._extensions refuses a stale build.
ABI_VERSION = 6


cdef inline void _im2col_row(const floating* x, floating* dst, Py_ssize_t n, Py_ssize_t ho,
                             Py_ssize_t Wo, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    # Fills the Wo rows of cols that belong to output row (n, ho).
    cdef Py_ssize_t wo, i, j, hi, wi, h0 = ho * sh - pt, w0
    cdef Py_ssize_t seg = kw * C  # one kernel row of a patch: contiguous in NHWC
    cdef size_t item = sizeof(floating)
    cdef const floating* xrow
    for wo in range(Wo):
        w0 = wo * sw - pl
        for i in range(kh):
            hi = h0 + i
            if hi < 0 or hi >= H:
                memset(dst, 0, seg * item)
            else:
                xrow = x + ((n * H + hi) * W) * C
                if w0 >= 0 and w0 + kw <= W:
                    memcpy(dst, xrow + w0 * C, seg * item)
                else:
                    for j in range(kw):
                        wi = w0 + j
                        if wi < 0 or wi >= W:
                            memset(dst + j * C, 0, C * item)
                        else:
                            memcpy(dst + j * C, xrow + wi * C, C * item)
            dst += seg


def im2col(const floating[:, :, :, ::1] x not None, floating[:, ::1] cols not None,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Ho, Py_ssize_t Wo):
    """Fills ``cols`` (N*Ho*Wo, kh*kw*C) from ``x`` (N, H, W, C); pads with zeros on the fly."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t K = kh * kw * C, r
    if cols.shape[0] != N * Ho * Wo or cols.shape[1] != K:
        raise ValueError(f"im2col: cols has shape {(cols.shape[0], cols.shape[1])}, "
                         f"expected {(N * Ho * Wo, K)}")
    if N * Ho * Wo * K == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* cp = &cols[0, 0]
    cdef int nt = threads_for(N * Ho * Wo * K)
    for r in prange(N * Ho, nogil=True, schedule="static", num_threads=nt):
        _im2col_row(xp, cp + r * Wo * K, r // Ho, r % Ho, Wo, H, W, C,
                    kh, kw, sh, sw, pt, pl)


cdef inline void _col2im_row(const floating* dcols, floating* dst, Py_ssize_t n, Py_ssize_t h,
                             Py_ssize_t Ho, Py_ssize_t Wo, Py_ssize_t W, Py_ssize_t C,
                             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                             Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    # dst is dx[n, h, :, :] (W*C values). Every (ho, wo, i, j) whose tap lands on row h adds
    # its C-vector; the loop order (i, then wo, then j) is the same for every thread count.
    cdef Py_ssize_t K = kh * kw * C, i, j, t, ho, wo, w, c, k, w0
    cdef const floating* src
    cdef floating* out
    memset(dst, 0, W * C * sizeof(floating))
    for i in range(kh):
        t = h + pt - i
        if t < 0 or t % sh != 0:
            continue
        ho = t // sh
        if ho >= Ho:
            continue
        for wo in range(Wo):
            src = dcols + ((n * Ho + ho) * Wo + wo) * K + i * kw * C
            w0 = wo * sw - pl
            if sw == 1 and w0 >= 0 and w0 + kw <= W:
                # stride 1, every tap inside: the kw*C values land on one contiguous span
                # of dst (one vector loop instead of kw loops of C; the adds to each
                # element in the same order: bitwise the same). LeNet-5's second conv dx
                # (C = 6, 5x5): its col2im took 0.49 ms.
                out = dst + w0 * C
                for k in range(kw * C):
                    out[k] += src[k]
                continue
            for j in range(kw):
                w = wo * sw - pl + j
                if w >= 0 and w < W:
                    out = dst + w * C
                    for c in range(C):
                        out[c] += src[j * C + c]


def col2im(const floating[:, ::1] dcols not None, floating[:, :, :, ::1] dx not None,
           Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
           Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t Ho, Py_ssize_t Wo):
    """Overwrites ``dx`` (N, H, W, C) with the sum of ``dcols`` (N*Ho*Wo, kh*kw*C) over taps."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t K = kh * kw * C, r
    if dcols.shape[0] != N * Ho * Wo or dcols.shape[1] != K:
        raise ValueError(f"col2im: dcols has shape {(dcols.shape[0], dcols.shape[1])}, "
                         f"expected {(N * Ho * Wo, K)}")
    if N * H * W * C == 0:
        return
    cdef floating* dxp = &dx[0, 0, 0, 0]
    if N * Ho * Wo * K == 0:
        memset(dxp, 0, N * H * W * C * sizeof(floating))
        return
    cdef const floating* dp = &dcols[0, 0]
    cdef int nt = threads_for(N * Ho * Wo * K)
    for r in prange(N * H, nogil=True, schedule="static", num_threads=nt):
        _col2im_row(dp, dxp + r * W * C, r // H, r % H, Ho, Wo, W, C,
                    kh, kw, sh, sw, pt, pl)
