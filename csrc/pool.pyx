"""Max and average pooling over NHWC tensors, forward and backward.

Windows are clipped to the image instead of reading a padded copy: for max-pooling that is
exactly -inf padding (a padded tap never wins), for average pooling it is division by the
number of REAL elements in the window.

Max-pool ties: the FIRST maximum in row-major window order wins (strict ``>`` while scanning
rows top to bottom, columns left to right), as PyTorch's CPU kernel and the reference do. A NaN
wins over any number and the first NaN stays, as np.argmax (the reference) does.
``argmax`` holds, per output element, the flat position ``h*W + w`` of the winner inside its
image (-1 for a window that lies wholly in the padding: its gradient goes nowhere).

Backward passes scatter into ``dx`` (zeroed by the caller). When window rows of different
output rows cannot overlap (stride >= pool along H), output rows are distributed over
threads; otherwise whole images are, so one thread owns each ``dx[n]``. Either way no two
threads touch one element and each element's summation order is fixed: bitwise-identical
results for any thread count.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport INFINITY

from omp_guard cimport threads_for

ABI_VERSION = 6


cdef inline bint _wins(floating v, floating best) noexcept nogil:
    # np.argmax's rule (the reference): a strictly greater value wins, so the FIRST maximum
    # keeps ties; the first NaN beats any number and then nothing beats it, so NaN
    # propagates to y and the gradient goes to the NaN.
    return (v > best) | ((v != v) & (best == best))


cdef inline void _max_step(floating v, floating* best, int* arg, int pos) noexcept nogil:
    cdef floating b = best[0]
    cdef int a = arg[0]
    cdef bint take = _wins(v, b)
    best[0] = v if take else b
    arg[0] = pos if take else a


cdef inline void _max_row(const floating* x, floating* y, int* arg, Py_ssize_t n,
                          Py_ssize_t ho, Py_ssize_t H, Py_ssize_t W, Py_ssize_t C,
                          Py_ssize_t Wo, Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh,
                          Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    # y and arg point at output row (n, ho): Wo*C values each.
    cdef Py_ssize_t wo, hi, wi, c, h0, h1, w0, w1
    cdef const floating* src
    cdef int pos
    h0 = max(ho * sh - pt, 0)
    h1 = min(ho * sh - pt + ph, H)
    for wo in range(Wo):
        w0 = max(wo * sw - pl, 0)
        w1 = min(wo * sw - pl + pw, W)
        if h0 >= h1 or w0 >= w1:
            for c in range(C):
                y[c] = -INFINITY
                arg[c] = -1
        else:
            # Seed with the first real tap, then only a strictly larger value replaces it.
            src = x + ((n * H + h0) * W + w0) * C
            pos = <int> (h0 * W + w0)
            for c in range(C):
                y[c] = src[c]
                arg[c] = pos
            for hi in range(h0, h1):
                for wi in range(w0, w1):
                    src = x + ((n * H + hi) * W + wi) * C
                    pos = <int> (hi * W + wi)
                    # Branch-free over the contiguous channels: every value is loaded and
                    # stored whatever wins, so gcc turns the loop into SIMD compares and
                    # blends. The former `if src[c] > y[c]: y[c] = ...` was a conditional
                    # store: scalar code and a mispredicted jump per element (20x slower).
                    for c in range(C):
                        _max_step(src[c], &y[c], &arg[c], pos)
        y += C
        arg += C


def maxpool_forward(const floating[:, :, :, ::1] x not None, floating[:, :, :, ::1] y not None,
                    int[:, :, :, ::1] argmax not None, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    """Fills ``y`` and ``argmax`` (both (N, Ho, Wo, C)) from ``x`` (N, H, W, C)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t Ho = y.shape[1], Wo = y.shape[2], r
    _check_out(y.shape, N, C, "y")
    _check_same_shape(argmax.shape, y.shape, "maxpool_forward: argmax vs y")
    if H * W >= 2 ** 31:
        raise ValueError(f"maxpool_forward: images of {H}x{W} exceed int32 argmax positions")
    if N * Ho * Wo * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef int* ap = &argmax[0, 0, 0, 0]
    cdef int nt = threads_for(N * Ho * Wo * C * ph * pw)
    for r in prange(N * Ho, nogil=True, schedule="static", num_threads=nt):
        _max_row(xp, yp + r * Wo * C, ap + r * Wo * C, r // Ho, r % Ho, H, W, C, Wo,
                 ph, pw, sh, sw, pt, pl)


def maxpool_backward(const floating[:, :, :, ::1] dy not None, const int[:, :, :, ::1] argmax not None,
                     floating[:, :, :, ::1] dx not None, Py_ssize_t ph, Py_ssize_t sh):
    """Adds ``dy`` into ``dx`` (zeroed by the caller) at the ``argmax`` positions."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], r, n, ho
    _check_out(dy.shape, N, C, "dy")
    _check_same_shape(argmax.shape, dy.shape, "maxpool_backward: argmax vs dy")
    if N * Ho * Wo * C == 0:
        return
    cdef const floating* dyp = &dy[0, 0, 0, 0]
    cdef const int* ap = &argmax[0, 0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0, 0]
    cdef int nt = threads_for(N * Ho * Wo * C)
    if sh >= ph:  # output rows touch disjoint dx rows
        for r in prange(N * Ho, nogil=True, schedule="static", num_threads=nt):
            _max_scatter(dyp + r * Wo * C, ap + r * Wo * C, dxp + (r // Ho) * H * W * C,
                         Wo * C, C)
    else:
        for n in prange(N, nogil=True, schedule="static", num_threads=nt):
            _max_scatter(dyp + n * Ho * Wo * C, ap + n * Ho * Wo * C, dxp + n * H * W * C,
                         Ho * Wo * C, C)


cdef inline void _max_scatter(const floating* dy, const int* arg, floating* dxn,
                              Py_ssize_t count, Py_ssize_t C) noexcept nogil:
    # dy/arg: `count` consecutive output values of one image (whole rows); dxn: that image.
    # Two loops instead of `k % C` per element: an integer division per value cost more
    # than the scatter itself.
    cdef Py_ssize_t j, c, a
    for j in range(count // C):
        for c in range(C):
            a = arg[j * C + c]
            if a >= 0:
                dxn[a * C + c] += dy[j * C + c]


cdef enum:
    AVG_BLOCK = 32   # channels summed at once in registers by the average pooling


cdef inline void _avg_row(const floating* x, floating* y, Py_ssize_t n, Py_ssize_t ho,
                          Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t Wo,
                          Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                          Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    # The sums run in a local block of AVG_BLOCK channels: summed through y (which the
    # compiler must assume may alias x) every add was a store and a reload, 1.1 ns per
    # input value (64x28x28x6 float32: 340 us). Same order of additions as before: bitwise.
    cdef Py_ssize_t wo, hi, wi, c, c0, cn, h0, h1, w0, w1
    cdef const floating* src
    cdef floating count
    cdef floating acc[AVG_BLOCK]
    h0 = max(ho * sh - pt, 0)
    h1 = min(ho * sh - pt + ph, H)
    for wo in range(Wo):
        w0 = max(wo * sw - pl, 0)
        w1 = min(wo * sw - pl + pw, W)
        if h0 >= h1 or w0 >= w1:  # a window wholly in the padding averages nothing
            for c in range(C):
                y[c] = 0
            y += C
            continue
        count = <floating> ((h1 - h0) * (w1 - w0))
        c0 = 0
        while c0 < C:
            cn = min(<Py_ssize_t>AVG_BLOCK, C - c0)
            for c in range(cn):
                acc[c] = 0
            for hi in range(h0, h1):
                for wi in range(w0, w1):
                    src = x + ((n * H + hi) * W + wi) * C + c0
                    for c in range(cn):
                        acc[c] += src[c]
            for c in range(cn):
                y[c0 + c] = acc[c] / count
            c0 += AVG_BLOCK
        y += C


def avgpool_forward(const floating[:, :, :, ::1] x not None, floating[:, :, :, ::1] y not None,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                    Py_ssize_t pt, Py_ssize_t pl):
    """Fills ``y`` (N, Ho, Wo, C): each window's mean over its real (unpadded) elements."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t Ho = y.shape[1], Wo = y.shape[2], r
    _check_out(y.shape, N, C, "y")
    if N * Ho * Wo * C == 0:
        return
    cdef const floating* xp = &x[0, 0, 0, 0]
    cdef floating* yp = &y[0, 0, 0, 0]
    cdef int nt = threads_for(N * Ho * Wo * C * ph * pw)
    for r in prange(N * Ho, nogil=True, schedule="static", num_threads=nt):
        _avg_row(xp, yp + r * Wo * C, r // Ho, r % Ho, H, W, C, Wo, ph, pw, sh, sw, pt, pl)


cdef inline void _avg_scatter_row(const floating* dy, floating* dxn, Py_ssize_t ho,
                                  Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t Wo,
                                  Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                                  Py_ssize_t pt, Py_ssize_t pl) noexcept nogil:
    # dy: output row (n, ho) (Wo*C values); dxn: image n of dx.
    cdef Py_ssize_t wo, hi, wi, c, c0, cn, h0, h1, w0, w1
    cdef floating count
    cdef floating* dst
    cdef floating q[AVG_BLOCK]
    h0 = max(ho * sh - pt, 0)
    h1 = min(ho * sh - pt + ph, H)
    for wo in range(Wo):
        w0 = max(wo * sw - pl, 0)
        w1 = min(wo * sw - pl + pw, W)
        if h0 < h1 and w0 < w1:
            # each quotient once per window (it was one division per tap), then added
            count = <floating> ((h1 - h0) * (w1 - w0))
            c0 = 0
            while c0 < C:
                cn = min(<Py_ssize_t>AVG_BLOCK, C - c0)
                for c in range(cn):
                    q[c] = dy[c0 + c] / count
                for hi in range(h0, h1):
                    for wi in range(w0, w1):
                        dst = dxn + (hi * W + wi) * C + c0
                        for c in range(cn):
                            dst[c] += q[c]
                c0 += AVG_BLOCK
        dy += C


def avgpool_backward(const floating[:, :, :, ::1] dy not None, floating[:, :, :, ::1] dx not None,
                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t pt, Py_ssize_t pl):
    """Adds each ``dy`` value / window count into its window's real elements of ``dx``
    (zeroed by the caller)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t Ho = dy.shape[1], Wo = dy.shape[2], r, n, ho
    _check_out(dy.shape, N, C, "dy")
    if N * Ho * Wo * C == 0:
        return
    cdef const floating* dyp = &dy[0, 0, 0, 0]
    cdef floating* dxp = &dx[0, 0, 0, 0]
    cdef int nt = threads_for(N * Ho * Wo * C * ph * pw)
    if sh >= ph:  # output rows touch disjoint dx rows
        for r in prange(N * Ho, nogil=True, schedule="static", num_threads=nt):
            _avg_scatter_row(dyp + r * Wo * C, dxp + (r // Ho) * H * W * C, r % Ho,
                             H, W, C, Wo, ph, pw, sh, sw, pt, pl)
    else:
        for n in prange(N, nogil=True, schedule="static", num_threads=nt):
            for ho in range(Ho):
                _avg_scatter_row(dyp + (n * Ho + ho) * Wo * C, dxp + n * H * W * C, ho,
                                 H, W, C, Wo, ph, pw, sh, sw, pt, pl)


cdef _check_out(Py_ssize_t* shape, Py_ssize_t N, Py_ssize_t C, str name):
    if shape[0] != N or shape[3] != C:
        raise ValueError(f"{name} has batch/channels {(shape[0], shape[3])}, "
                         f"expected {(N, C)}")


cdef _check_same_shape(Py_ssize_t* a, Py_ssize_t* b, str what):
    if a[0] != b[0] or a[1] != b[1] or a[2] != b[2] or a[3] != b[3]:
        raise ValueError(f"{what}: shapes differ ({(a[0], a[1], a[2], a[3])} vs "
                         f"{(b[0], b[1], b[2], b[3])})")
