"""The depthwise convolution in C SIMD (depthwise.h, depthwise_kernels.h), float32 and float64.

* ``forward``: y from x, the kernel as (kh*kw, C*M) and an optional bias;
* ``dx``: the input gradient, a gather per stride phase (every dx element written once);
* ``dw``: per-block partial sums of dW (and db) that the caller adds in block order;
* ``backward``: ``dw_partials`` and ``dx`` in one pass over dy (3x3, M = 1, column stride
  <= 2: each band of dy rows feeds dW, then the dx rows it completes, while in L2).

This module checks arguments, fills the job and runs row ranges on OpenMP threads. Results
do not depend on the thread count: every output element (and every dW partial) is computed
by one call, in an order fixed by the shapes.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport malloc, free

from omp_guard cimport threads_for

# Bumped whenever a signature here changes: fastcnn._extensions refuses a stale build.
ABI_VERSION = 6

cdef extern from "depthwise.h" nogil:
    ctypedef struct dwc_job:
        const void *x
        const void *wt
        const void *bias
        const void *dy
        void *y
        void *dx
        void *part
        Py_ssize_t n, h, w, c, m, cm, ho, wo, kh, kw, sh, sw, pt, pl
        Py_ssize_t block_rows
        int with_db
        int act

    int dwc_isa_supported(int isa)
    void dwc_set_isa(int isa)
    int dwc_get_isa()
    Py_ssize_t dwc_scratch_forward(const dwc_job *g)
    Py_ssize_t dwc_scratch_dx(const dwc_job *g)
    Py_ssize_t dwc_output_offset(const dwc_job *g, const void *src, Py_ssize_t item,
                                 Py_ssize_t out_w, Py_ssize_t out_bytes, int for_dx)
    void dwc_forward_rows_f32(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_forward_rows_f64(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_dx_rows_f32(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_dx_rows_f64(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_dw_blocks_f32(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_dw_blocks_f64(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_bwd_blocks_f32(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)
    void dwc_bwd_blocks_f64(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch)

ctypedef void (*range_fn)(const dwc_job *g, Py_ssize_t lo, Py_ssize_t hi, void *scratch) noexcept nogil

#: The instruction sets the kernels are compiled for, in DWC_ISA_* order.
ISAS = ("generic", "avx2", "avx512")

# Chosen now, once, with the GIL held (a lazy first use inside a parallel region would race).
dwc_get_isa()

cdef enum:
    # dW's (n, i) rows are cut into at most this many blocks (a count fixed by the shape,
    # never by the thread count): the partials the caller adds.
    DW_MAX_BLOCKS = 32
    # ... and each block has at least this many output pixels (rows of wo): a block's
    # partial costs a memset, a read-modify-write per band and a sum here, which a row of
    # 7 pixels did not pay for (batch 1 7x7x960 dW 18 -> 11 us, batch 8 121 -> 108 us,
    # 14x14x384 at batch 1 23 -> 15 us, C harness).
    DW_MIN_BLOCK_PIXELS = 64


def supported_isas():
    """The instruction sets this CPU runs, best last (``generic`` always)."""
    return tuple(name for i, name in enumerate(ISAS) if dwc_isa_supported(i))


def isa():
    """The instruction set the kernels run now (the best supported, unless set)."""
    return ISAS[dwc_get_isa()]


def set_isa(name):
    """Runs the kernels on ``name`` (one of :func:`supported_isas`): for tests and benchmarks.

    Not for use while another thread runs a kernel.
    """
    if name not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {name!r}")
    if not dwc_isa_supported(ISAS.index(name)):
        raise ValueError(f"isa {name!r} is not supported by this CPU "
                         f"(supported: {supported_isas()})")
    dwc_set_isa(ISAS.index(name))


#: forward's activations (depthwise.h: DWC_ACT_*)
_ACTS = {"linear": 0, "relu": 1, "relu6": 2}


cdef dwc_job _job(Py_ssize_t n, Py_ssize_t h, Py_ssize_t w, Py_ssize_t c, Py_ssize_t m,
                  Py_ssize_t ho, Py_ssize_t wo, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
                  Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t wt_rows,
                  Py_ssize_t wt_cols):
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or pt < 0 or pl < 0 or m < 1:
        raise ValueError("depthwise: kernel, stride and multiplier must be >= 1, pads >= 0")
    if wt_rows != kh * kw or wt_cols != c * m:
        raise ValueError(f"depthwise: w has shape {(wt_rows, wt_cols)}, "
                         f"expected {(kh * kw, c * m)}")
    cdef dwc_job g
    g.x = g.wt = g.bias = g.dy = NULL
    g.y = g.dx = g.part = NULL
    g.n, g.h, g.w, g.c, g.m, g.cm = n, h, w, c, m, c * m
    g.ho, g.wo, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = ho, wo, kh, kw, sh, sw, pt, pl
    g.block_rows, g.with_db, g.act = 1, 0, 0
    return g


cdef void _run(range_fn fn, dwc_job *g, Py_ssize_t units, Py_ssize_t work,
               Py_ssize_t per_thread, size_t item) except *:
    """Runs ``fn`` over [0, units) in one contiguous range per thread."""
    cdef int nt = threads_for(work)
    cdef int t
    if nt > units:
        nt = <int>units
    if nt < 1:
        nt = 1
    cdef char *scratch = NULL
    if per_thread:
        scratch = <char *>malloc(nt * per_thread * item)
        if scratch == NULL:
            raise MemoryError()
    try:
        with nogil:
            if nt == 1:
                fn(g, 0, units, scratch)
            else:
                for t in prange(nt, schedule="static", num_threads=nt):
                    fn(g, units * t // nt, units * (t + 1) // nt,
                       scratch + t * per_thread * item)
    finally:
        free(scratch)


cdef Py_ssize_t _block_rows(Py_ssize_t rows, Py_ssize_t wo) noexcept:
    """dW's (n, i) rows per partial block: a function of the shape only."""
    cdef Py_ssize_t b = (rows + DW_MAX_BLOCKS - 1) // DW_MAX_BLOCKS
    cdef Py_ssize_t least = (DW_MIN_BLOCK_PIXELS + wo - 1) // wo
    return b if b >= least else least


cdef void _sum_blocks(floating *p, Py_ssize_t nb, Py_ssize_t n) noexcept nogil:
    """p[0:n] += p[b*n:(b+1)*n] for b = 1 .. nb-1, in that order (a vectorised loop: NumPy's
    add.reduce over the block axis took 39 us for 28 blocks of 7x7x960's 10 x 960 sums)."""
    cdef Py_ssize_t b, i
    cdef floating *q
    for b in range(1, nb):
        q = p + b * n
        for i in range(n):
            p[i] += q[i]


def output_offset(const floating[:, :, :, ::1] src not None, tuple out_shape, Py_ssize_t m,
                  Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                  Py_ssize_t pl, bint for_dx):
    """Bytes past a 4096-byte page boundary at which the output (of shape ``out_shape``) of
    :func:`forward` (``for_dx`` false: ``src`` is x) or :func:`dx` (true: ``src`` is dy),
    with the forward's strides and top / left pads, runs fastest: its lines three lines
    past ``src``'s, and on a line unless the kernels realign a source and an output that
    share a line offset, where at ``src``'s (depthwise.h, dwc_output_offset)."""
    if len(out_shape) != 4:
        raise ValueError(f"out_shape must have 4 dimensions (N, H, W, C), got {out_shape!r}")
    cdef dwc_job g
    g.m, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = m, kh, kw, sh, sw, pt, pl
    g.cm = src.shape[3] if for_dx else src.shape[3] * m
    if for_dx:   # src is dy (N, Ho, Wo, C), the output dx (N, H, W, C)
        g.ho, g.wo, g.h, g.w = src.shape[1], src.shape[2], out_shape[1], out_shape[2]
    else:
        g.h, g.w, g.ho, g.wo = src.shape[1], src.shape[2], out_shape[1], out_shape[2]
    cdef Py_ssize_t out_bytes = sizeof(floating)
    for d in out_shape:
        out_bytes *= d
    if src.size == 0:
        return 0
    return dwc_output_offset(&g, &src[0, 0, 0, 0], sizeof(floating), out_shape[2], out_bytes,
                             for_dx)


def forward(const floating[:, :, :, ::1] x not None, const floating[:, ::1] wt not None,
            const floating[::1] bias, floating[:, :, :, ::1] y not None,
            Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
            Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t m, str activation="linear"):
    """``y[n, i, j, c*m + k] = act(bias[c*m + k] + sum_(a, b) x[n, i*sh - pt + a, j*sw - pl + b,
    c] * wt[a*kw + b, c*m + k])`` (taps outside x count as zero); ``bias`` may be None;
    ``activation``: 'linear', 'relu' or 'relu6', applied to each block of y's rows right
    after it is computed (no pass of its own)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[3]
    cdef dwc_job g = _job(n, x.shape[1], x.shape[2], c, m, y.shape[1], y.shape[2],
                          kh, kw, sh, sw, pt, pl, wt.shape[0], wt.shape[1])
    if y.shape[0] != n or y.shape[3] != c * m:
        raise ValueError(f"depthwise: y has shape {[y.shape[i] for i in range(4)]}, expected "
                         f"({n}, Ho, Wo, {c * m})")
    if bias is not None and bias.shape[0] != c * m:
        raise ValueError(f"depthwise: bias has {bias.shape[0]} values, expected {c * m}")
    if activation not in _ACTS:
        raise ValueError(f"depthwise: activation must be one of {sorted(_ACTS)}, "
                         f"got {activation!r}")
    g.act = _ACTS[activation]
    cdef Py_ssize_t rows = n * g.ho
    if rows == 0 or g.wo == 0 or c * m == 0:
        return
    g.x = &x[0, 0, 0, 0] if x.size else NULL
    g.wt = &wt[0, 0]
    g.bias = &bias[0] if bias is not None else NULL
    g.y = &y[0, 0, 0, 0]
    if floating is float:
        _run(dwc_forward_rows_f32, &g, rows, rows * g.wo * g.cm * kh * kw,
             dwc_scratch_forward(&g), sizeof(float))
    else:
        _run(dwc_forward_rows_f64, &g, rows, rows * g.wo * g.cm * kh * kw,
             dwc_scratch_forward(&g), sizeof(double))


def dx(const floating[:, :, :, ::1] dy not None, const floating[:, ::1] wt not None,
       floating[:, :, :, ::1] dx not None, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
       Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t m):
    """Overwrites ``dx`` (N, H, W, C) with the gradient of :func:`forward`'s x for ``dy``."""
    cdef Py_ssize_t n = dx.shape[0], c = dx.shape[3]
    cdef dwc_job g = _job(n, dx.shape[1], dx.shape[2], c, m, dy.shape[1], dy.shape[2],
                          kh, kw, sh, sw, pt, pl, wt.shape[0], wt.shape[1])
    if dy.shape[0] != n or dy.shape[3] != c * m:
        raise ValueError(f"depthwise: dy has shape {[dy.shape[i] for i in range(4)]}, expected "
                         f"({n}, Ho, Wo, {c * m})")
    cdef Py_ssize_t rows = n * g.h
    if rows == 0 or g.w == 0 or c == 0:
        return
    if g.ho == 0 or g.wo == 0:
        for i in range(n):
            dx[i, :, :, :] = 0
        return
    g.dy = &dy[0, 0, 0, 0]
    g.wt = &wt[0, 0]
    g.dx = &dx[0, 0, 0, 0]
    if floating is float:
        _run(dwc_dx_rows_f32, &g, rows, rows * g.w * g.cm * kh * kw,
             dwc_scratch_dx(&g), sizeof(float))
    else:
        _run(dwc_dx_rows_f64, &g, rows, rows * g.w * g.cm * kh * kw,
             dwc_scratch_dx(&g), sizeof(double))


def dw_partials(const floating[:, :, :, ::1] x not None, const floating[:, :, :, ::1] dy not None,
                Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
                Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t m, bint with_db):
    """``(1, kh*kw + 1, C*M)``: dW (rows a*kw + b) and, when ``with_db``, db (the last
    row). Fixed blocks of (n, i) rows (block k: ``[k*block_rows, (k+1)*block_rows)``, a
    count that depends on the shapes only) each sum into a partial, and the partials are
    added in block order here (so the result is the same for any thread count). Callers
    still sum the returned axis 0 (one block now; it was one per block)."""
    import numpy as np
    cdef Py_ssize_t n = x.shape[0], c = x.shape[3]
    cdef dwc_job g = _job(n, x.shape[1], x.shape[2], c, m, dy.shape[1], dy.shape[2],
                          kh, kw, sh, sw, pt, pl, kh * kw, c * m)
    if dy.shape[0] != n or dy.shape[3] != c * m:
        raise ValueError(f"depthwise: dy has shape {[dy.shape[i] for i in range(4)]}, expected "
                         f"({n}, Ho, Wo, {c * m})")
    cdef Py_ssize_t rows = n * g.ho
    dtype = np.float32 if floating is float else np.float64
    if rows == 0 or g.wo == 0 or c * m == 0 or x.size == 0:
        return np.zeros((1, kh * kw + 1, c * m), dtype=dtype)
    g.block_rows = _block_rows(rows, g.wo)
    cdef Py_ssize_t nblocks = (rows + g.block_rows - 1) // g.block_rows
    part = np.empty((nblocks, kh * kw + 1, c * m), dtype=dtype)
    cdef floating[:, :, ::1] pv = part
    g.x = &x[0, 0, 0, 0]
    g.dy = &dy[0, 0, 0, 0]
    g.part = &pv[0, 0, 0]
    g.with_db = with_db
    # Scratch: one expanded x row (M > 1).
    cdef Py_ssize_t per_thread = 0 if m == 1 else g.w * g.cm
    if floating is float:
        _run(dwc_dw_blocks_f32, &g, nblocks, rows * g.wo * g.cm * kh * kw, per_thread,
             sizeof(float))
    else:
        _run(dwc_dw_blocks_f64, &g, nblocks, rows * g.wo * g.cm * kh * kw, per_thread,
             sizeof(double))
    with nogil:
        _sum_blocks(&pv[0, 0, 0], nblocks, (kh * kw + 1) * c * m)
    return part[:1]


def backward(const floating[:, :, :, ::1] x not None, const floating[:, :, :, ::1] dy not None,
             const floating[:, ::1] wt not None, floating[:, :, :, ::1] dx_out not None,
             Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw,
             Py_ssize_t pt, Py_ssize_t pl, Py_ssize_t m, bint with_db):
    """:func:`dw_partials` (returned) and :func:`dx` (into ``dx_out``, the shape of x)
    together: for a 3x3 kernel, M = 1, column stride <= 2 and a pixel of <= 576 bytes in
    ONE pass over dy (per band of dy rows, dW's sums, then the dx rows whose last dy row is
    in the band); else the two passes. The same partials and dx bits as the two separate
    calls."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[3]
    if (dx_out.shape[0] != n or dx_out.shape[1] != x.shape[1] or dx_out.shape[2] != x.shape[2]
            or dx_out.shape[3] != c):
        raise ValueError(f"depthwise: dx has shape {[dx_out.shape[i] for i in range(4)]}, "
                         f"expected {[x.shape[i] for i in range(4)]}")
    cdef dwc_job g = _job(n, x.shape[1], x.shape[2], c, m, dy.shape[1], dy.shape[2],
                          kh, kw, sh, sw, pt, pl, wt.shape[0], wt.shape[1])
    if dy.shape[0] != n or dy.shape[3] != c * m:
        raise ValueError(f"depthwise: dy has shape {[dy.shape[i] for i in range(4)]}, expected "
                         f"({n}, Ho, Wo, {c * m})")
    cdef Py_ssize_t rows = n * g.ho
    # A pixel of > 576 bytes (the row-by-row kernels): two passes. Fused, each band's dx
    # rows store while the next band's dW loads x and dy, and the loads that match a
    # pending store modulo 4 KiB wait: 8x28x28x192 took 0.69-1.38 ms by where dx sat
    # against dy, the two passes 0.59-0.62 (C harness); 14x14x384, 7x7x960 and 14x14x576
    # stride 2 the same either way. The banded ones gain a little fused (dy read once).
    if (m != 1 or kh != 3 or kw != 3 or sw > 2 or rows == 0 or g.wo == 0 or c == 0
            or x.size == 0 or c * <Py_ssize_t>sizeof(floating) > 576):
        part = dw_partials(x, dy, kh, kw, sh, sw, pt, pl, m, with_db)
        dx(dy, wt, dx_out, kh, kw, sh, sw, pt, pl, m)
        return part
    import numpy as np
    dtype = np.float32 if floating is float else np.float64
    g.block_rows = _block_rows(rows, g.wo)
    cdef Py_ssize_t nblocks = (rows + g.block_rows - 1) // g.block_rows
    part = np.empty((nblocks, kh * kw + 1, c), dtype=dtype)
    cdef floating[:, :, ::1] pv = part
    g.x = &x[0, 0, 0, 0]
    g.dy = &dy[0, 0, 0, 0]
    g.wt = &wt[0, 0]
    g.dx = &dx_out[0, 0, 0, 0]
    g.part = &pv[0, 0, 0]
    g.with_db = with_db
    cdef Py_ssize_t work = (rows * g.wo + n * g.h * g.w) * c * kh * kw
    if floating is float:
        _run(dwc_bwd_blocks_f32, &g, nblocks, work, 0, sizeof(float))
    else:
        _run(dwc_bwd_blocks_f64, &g, nblocks, work, 0, sizeof(double))
    with nogil:
        _sum_blocks(&pv[0, 0, 0], nblocks, (kh * kw + 1) * c)
    return part[:1]
