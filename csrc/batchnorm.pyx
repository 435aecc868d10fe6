"""Batch normalisation over the last axis of a (rows, C) matrix, float32 and float64 (OpenMP).

Every loop runs over the C contiguous channels of one row at a time (what the compiler
vectorises), rows in fixed blocks. The per-channel reductions (the statistics, dgamma and
dbeta) are accumulated in double, one partial per block of ``block_rows(C)`` rows (a count
fixed by the shape, never by the thread count), and the partials are combined here in
block order: results are bitwise the same for any number of threads.

* ``statistics``: per block, the block mean then the sum of squared deviations from it
  (the block's second read comes from the cache), combined in block order with Chan's
  pairwise update: one pass over x in memory, no E[x^2] - E[x]^2 cancellation.
* ``normalize``: ``y = (x - mean) * inv_std (* gamma) (+ beta)`` in x's dtype.
* ``grad_sums``: ``(sum dy, sum dy * x_hat)`` per channel (dbeta, dgamma).
* ``dx_train``: ``dx = ((dy - x_hat * k2) - k1) * scale`` (the batch-statistics gradient).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free

from omp_guard cimport threads_for

# Bumped whenever a signature here changes: fastcnn._extensions refuses a stale build.
ABI_VERSION = 6

cdef enum:
    # Rows per block: about this many elements (a block stays in L1/L2 for its second read).
    BLOCK_ELEMENTS = 4096
    MIN_BLOCK_ROWS = 8


cpdef Py_ssize_t block_rows(Py_ssize_t c):
    """Rows per reduction block for ``c`` channels (depends on ``c`` only)."""
    cdef Py_ssize_t b = BLOCK_ELEMENTS // c if c > 0 else BLOCK_ELEMENTS
    return b if b > MIN_BLOCK_ROWS else MIN_BLOCK_ROWS


cdef void _stats_block(const floating *x, Py_ssize_t rows, Py_ssize_t C,
                       double *mean, double *m2) noexcept nogil:
    """``mean`` and ``m2`` (sum of squared deviations) of ``rows`` rows of x."""
    cdef Py_ssize_t r, c
    cdef const floating *row
    cdef double inv = 1.0 / <double>rows
    cdef double d
    for c in range(C):
        mean[c] = 0.0
        m2[c] = 0.0
    for r in range(rows):
        row = x + r * C
        for c in range(C):
            mean[c] += <double>row[c]
    for c in range(C):
        mean[c] *= inv
    for r in range(rows):
        row = x + r * C
        for c in range(C):
            d = <double>row[c] - mean[c]
            m2[c] += d * d


def statistics(const floating[:, ::1] x not None, floating[::1] mean_out not None,
               floating[::1] var_out not None):
    """Writes the per-channel mean and biased variance of x's rows (R >= 1)."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1]
    if mean_out.shape[0] != C or var_out.shape[0] != C:
        raise ValueError(f"batchnorm: mean/var outputs must have {C} values")
    if R == 0 or C == 0:
        raise ValueError("batchnorm: statistics of an empty batch")
    cdef Py_ssize_t B = block_rows(C)
    cdef Py_ssize_t nb = (R + B - 1) // B, blk, r0, c
    cdef double *part = <double *>malloc(2 * nb * C * sizeof(double))
    if part == NULL:
        raise MemoryError()
    cdef const floating *xp = &x[0, 0]
    cdef int nt = threads_for(R * C)
    cdef double n_a, n_b, n, delta, mean_c, m2_c
    cdef Py_ssize_t k
    try:
        with nogil:
            if nt == 1 or nb == 1:
                for blk in range(nb):
                    r0 = blk * B
                    _stats_block(xp + r0 * C, min(B, R - r0), C, part + 2 * blk * C,
                                 part + (2 * blk + 1) * C)
            else:
                for blk in prange(nb, schedule="static", num_threads=nt):
                    _stats_block(xp + blk * B * C, min(B, R - blk * B), C,
                                 part + 2 * blk * C, part + (2 * blk + 1) * C)
            # Chan et al.'s combination, in block order.
            for c in range(C):
                n_a = <double>min(B, R)
                mean_c = part[c]
                m2_c = part[C + c]
                for k in range(1, nb):
                    n_b = <double>min(B, R - k * B)
                    n = n_a + n_b
                    delta = part[2 * k * C + c] - mean_c
                    mean_c = mean_c + delta * (n_b / n)
                    m2_c = m2_c + part[(2 * k + 1) * C + c] + delta * delta * (n_a * n_b / n)
                    n_a = n
                mean_out[c] = <floating>mean_c
                var_out[c] = <floating>(m2_c / <double>R)
    finally:
        free(part)


def normalize(const floating[:, ::1] x not None, const floating[::1] mean not None,
              const floating[::1] inv_std not None, const floating[::1] gamma,
              const floating[::1] beta, floating[:, ::1] y not None):
    """``y = (x - mean) * inv_std``, times gamma, plus beta (either may be None)."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1]
    if y.shape[0] != R or y.shape[1] != C or mean.shape[0] != C or inv_std.shape[0] != C:
        raise ValueError("batchnorm: normalize shapes disagree")
    if (gamma is not None and gamma.shape[0] != C) or (beta is not None and beta.shape[0] != C):
        raise ValueError("batchnorm: gamma/beta must have one value per channel")
    if R == 0 or C == 0:
        return
    cdef const floating *xp = &x[0, 0]
    cdef floating *yp = &y[0, 0]
    cdef const floating *mp = &mean[0]
    cdef const floating *sp = &inv_std[0]
    cdef const floating *gp = &gamma[0] if gamma is not None else NULL
    cdef const floating *bp = &beta[0] if beta is not None else NULL
    cdef Py_ssize_t B = block_rows(C)
    cdef Py_ssize_t nb = (R + B - 1) // B, blk
    cdef int nt = threads_for(R * C)
    with nogil:
        if nt == 1 or nb == 1:
            _normalize_rows(xp, yp, mp, sp, gp, bp, 0, R, C)
        else:
            for blk in prange(nb, schedule="static", num_threads=nt):
                _normalize_rows(xp, yp, mp, sp, gp, bp, blk * B, min(R, (blk + 1) * B), C)


cdef void _normalize_rows(const floating *x, floating *y, const floating *mean,
                          const floating *inv_std, const floating *gamma,
                          const floating *beta, Py_ssize_t r0, Py_ssize_t r1,
                          Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t r, c
    cdef const floating *xr
    cdef floating *yr
    for r in range(r0, r1):
        xr = x + r * C
        yr = y + r * C
        if gamma != NULL and beta != NULL:
            for c in range(C):
                yr[c] = (xr[c] - mean[c]) * inv_std[c] * gamma[c] + beta[c]
        elif gamma != NULL:
            for c in range(C):
                yr[c] = (xr[c] - mean[c]) * inv_std[c] * gamma[c]
        elif beta != NULL:
            for c in range(C):
                yr[c] = (xr[c] - mean[c]) * inv_std[c] + beta[c]
        else:
            for c in range(C):
                yr[c] = (xr[c] - mean[c]) * inv_std[c]


cdef void _grad_block(const floating *x, const floating *dy, const floating *mean,
                      const floating *inv_std, Py_ssize_t rows, Py_ssize_t C,
                      double *sdy, double *sdyxh) noexcept nogil:
    cdef Py_ssize_t r, c
    cdef const floating *xr
    cdef const floating *dr
    cdef floating xh
    for c in range(C):
        sdy[c] = 0.0
        sdyxh[c] = 0.0
    for r in range(rows):
        xr = x + r * C
        dr = dy + r * C
        for c in range(C):
            xh = (xr[c] - mean[c]) * inv_std[c]
            sdy[c] += <double>dr[c]
            sdyxh[c] += <double>dr[c] * <double>xh


def grad_sums(const floating[:, ::1] x not None, const floating[:, ::1] dy not None,
              const floating[::1] mean not None, const floating[::1] inv_std not None,
              floating[::1] dbeta not None, floating[::1] dgamma not None):
    """Writes ``dbeta = sum_r dy`` and ``dgamma = sum_r dy * x_hat`` (x_hat in x's dtype,
    as the forward computes it; sums in double, per block, added in block order)."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1]
    if dy.shape[0] != R or dy.shape[1] != C or mean.shape[0] != C or inv_std.shape[0] != C \
            or dbeta.shape[0] != C or dgamma.shape[0] != C:
        raise ValueError("batchnorm: grad_sums shapes disagree")
    cdef Py_ssize_t c, k
    if C == 0:
        return
    if R == 0:
        for c in range(C):
            dbeta[c] = 0
            dgamma[c] = 0
        return
    cdef Py_ssize_t B = block_rows(C)
    cdef Py_ssize_t nb = (R + B - 1) // B, blk, r0
    cdef double *part = <double *>malloc(2 * nb * C * sizeof(double))
    if part == NULL:
        raise MemoryError()
    cdef const floating *xp = &x[0, 0]
    cdef const floating *dp = &dy[0, 0]
    cdef const floating *mp = &mean[0]
    cdef const floating *sp = &inv_std[0]
    cdef int nt = threads_for(R * C)
    cdef double s1, s2
    try:
        with nogil:
            if nt == 1 or nb == 1:
                for blk in range(nb):
                    r0 = blk * B
                    _grad_block(xp + r0 * C, dp + r0 * C, mp, sp, min(B, R - r0), C,
                                part + 2 * blk * C, part + (2 * blk + 1) * C)
            else:
                for blk in prange(nb, schedule="static", num_threads=nt):
                    _grad_block(xp + blk * B * C, dp + blk * B * C, mp, sp,
                                min(B, R - blk * B), C,
                                part + 2 * blk * C, part + (2 * blk + 1) * C)
            for c in range(C):
                s1 = 0.0
                s2 = 0.0
                for k in range(nb):
                    s1 = s1 + part[2 * k * C + c]
                    s2 = s2 + part[(2 * k + 1) * C + c]
                dbeta[c] = <floating>s1
                dgamma[c] = <floating>s2
    finally:
        free(part)


def dx_train(const floating[:, ::1] x not None, const floating[:, ::1] dy not None,
             const floating[::1] mean not None, const floating[::1] inv_std not None,
             const floating[::1] scale not None, const floating[::1] k1 not None,
             const floating[::1] k2 not None, floating[:, ::1] dx not None):
    """``dx = ((dy - x_hat * k2) - k1) * scale`` with ``x_hat = (x - mean) * inv_std``:
    k1 = dbeta / R, k2 = dgamma / R, scale = gamma * inv_std."""
    cdef Py_ssize_t R = x.shape[0], C = x.shape[1]
    if dy.shape[0] != R or dy.shape[1] != C or dx.shape[0] != R or dx.shape[1] != C:
        raise ValueError("batchnorm: dx_train shapes disagree")
    if mean.shape[0] != C or inv_std.shape[0] != C or scale.shape[0] != C \
            or k1.shape[0] != C or k2.shape[0] != C:
        raise ValueError("batchnorm: per-channel vectors must have one value per channel")
    if R == 0 or C == 0:
        return
    cdef Py_ssize_t B = block_rows(C)
    cdef Py_ssize_t nb = (R + B - 1) // B, blk
    cdef int nt = threads_for(R * C)
    cdef const floating *xp = &x[0, 0]
    cdef const floating *dp = &dy[0, 0]
    cdef floating *op = &dx[0, 0]
    with nogil:
        if nt == 1 or nb == 1:
            _dx_rows(xp, dp, op, &mean[0], &inv_std[0], &scale[0], &k1[0], &k2[0], 0, R, C)
        else:
            for blk in prange(nb, schedule="static", num_threads=nt):
                _dx_rows(xp, dp, op, &mean[0], &inv_std[0], &scale[0], &k1[0], &k2[0],
                         blk * B, min(R, (blk + 1) * B), C)


cdef void _dx_rows(const floating *x, const floating *dy, floating *dx,
                   const floating *mean, const floating *inv_std, const floating *scale,
                   const floating *k1, const floating *k2, Py_ssize_t r0, Py_ssize_t r1,
                   Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t r, c
    cdef const floating *xr
    cdef const floating *dr
    cdef floating *o
    cdef floating xh
    for r in range(r0, r1):
        xr = x + r * C
        dr = dy + r * C
        o = dx + r * C
        for c in range(C):
            xh = (xr[c] - mean[c]) * inv_std[c]
            o[c] = ((dr[c] - xh * k2[c]) - k1[c]) * scale[c]
