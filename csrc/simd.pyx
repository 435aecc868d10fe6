"""SIMD kernels in float32, compiled per instruction set (C: simd.h and its kernel files).

* ``gather``: a conv forward, or one stride phase of a conv's dx, straight from the NHWC
  source (a direct convolution: no column matrix is written, nothing but the input is
  kept for the backward); ``dw``: the weight gradient from x and dy in place.
* ``wino_maxpool``: a 3x3, stride-1 conv fused with a 2x2 max pool by Winograd
  F(2x2, 3x3) (csrc/wino.h, the inference plan's kernel), with the argmax of gather_maxpool;
  ``wino_conv``: the same conv without the pool (a stride-1 3x3 conv's dx).
* ``maxpool_forward`` / ``maxpool_backward``: max pooling with pool.pyx's semantics, the
  channels as the vector axis.

The kernels, their blocking and the run-time choice of instruction set are described in
simd.h; this module checks arguments, splits the work into ranges and runs the ranges on
OpenMP threads. Results do not depend on the thread count: every output element is
computed by one call of a range, in an order fixed by the shapes.
"""
from cython.parallel cimport prange, threadid
from libc.stdlib cimport calloc, malloc, free

from omp_guard cimport fastcnn_max_threads

# Bumped whenever a signature here changes: fastcnn._extensions refuses a stale build.
ABI_VERSION = 6

from simd_h cimport *

cdef extern from "wino.h" nogil:
    Py_ssize_t fp_wino_scratch_floats(Py_ssize_t cs)
    void fp_wino_pool_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi,
                            float *scratch)
    void fp_wino_conv_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi,
                            float *scratch)
    Py_ssize_t fq_wino4_scratch_floats(Py_ssize_t cs)
    void fq_wino4_pool_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi,
                             float *scratch)
    void fq_wino4_conv_range(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi,
                             float *scratch)

#: The instruction sets the kernels are compiled for, in FC_ISA_* order.
ISAS = ("generic", "avx2", "avx512")

# Choose the build now, once, with the GIL held: kernels running on OpenMP threads then
# only read the choice (its lazy first use inside a parallel region would be a data race).
fc_get_isa()

cdef enum:
    # Fewer multiply-adds than this run on one thread: waking the OpenMP team costs tens
    # of microseconds on a shared machine, about what one core needs for this much work.
    PARALLEL_MIN_MACS = 1 << 20
    # Grid points per parallel range: a multiple of every block height (3, 6).
    RANGE_QUANTUM = 24
    # Fewer values than this (window taps read, or dx values written) pool on one thread.
    POOL_PARALLEL_MIN = 1 << 17


def supported_isas():
    """The instruction sets this CPU runs, best last (``generic`` always)."""
    return tuple(name for i, name in enumerate(ISAS) if fc_isa_supported(i))


def isa():
    """The instruction set the kernels run now (the best supported, unless set)."""
    return ISAS[fc_get_isa()]


def set_isa(name):
    """Runs the kernels on ``name`` (one of :func:`supported_isas`): for tests and benchmarks.

    Not for use while another thread runs a kernel.
    """
    if name not in ISAS:
        raise ValueError(f"isa must be one of {ISAS}, got {name!r}")
    if not fc_isa_supported(ISAS.index(name)):
        raise ValueError(f"isa {name!r} is not supported by this CPU "
                         f"(supported: {supported_isas()})")
    fc_set_isa(ISAS.index(name))


cdef inline Py_ssize_t _ceil_div(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # Not -(-a // b): with cdivision, // truncates towards zero.
    return (a + b - 1) // b


cdef int _threads(Py_ssize_t macs, Py_ssize_t units) noexcept nogil:
    cdef int nt = fastcnn_max_threads()
    if macs < PARALLEL_MIN_MACS or nt < 1:
        return 1
    return <int>min(<Py_ssize_t>nt, max(units, 1))


#: gather's activations (simd.h's FC_ACT_*)
_ACTS = {"linear": 0, "relu": 1, "relu6": 2}


def gather(const float[:, :, :, ::1] src not None, const float[:, ::1] w not None,
           bias, float[:, :, :, ::1] out not None,
           Py_ssize_t nth, Py_ssize_t ntw, Py_ssize_t grid_u, Py_ssize_t grid_v,
           Py_ssize_t by0, Py_ssize_t bsy, Py_ssize_t bx0, Py_ssize_t bsx,
           Py_ssize_t oy0, Py_ssize_t osy, Py_ssize_t ox0, Py_ssize_t osx,
           str activation="linear"):
    """``out[n, oy0 + u*osy, ox0 + v*osx, f] = act(bias[f] + sum_k tap_k * w[k, f])``.

    Tap ``k = (ti*ntw + tj)*C + c`` of grid point ``(n, u, v)`` is
    ``src[n, by0 + u*bsy + ti, bx0 + v*bsx + tj, c]``, zero outside src. ``w`` is
    ``(nth*ntw*C, co_pad)`` with co_pad a multiple of 16 and at least ``out``'s channel
    count (columns past it are ignored); ``bias`` is None or co_pad float32 values.
    ``activation``: 'linear', 'relu' or 'relu6', applied in the epilogue before the only
    store (relu: v <= 0 -> 0, a NaN kept; relu6: then v > 6 -> 6). Output pixels off the
    grid are not written.
    """
    if activation not in _ACTS:
        raise ValueError(f"gather: activation must be one of {sorted(_ACTS)}, "
                         f"got {activation!r}")
    if grid_u < 0 or grid_v < 0 or (grid_u and grid_v and (
            min(oy0, oy0 + (grid_u - 1) * osy) < 0
            or max(oy0, oy0 + (grid_u - 1) * osy) >= out.shape[1]
            or min(ox0, ox0 + (grid_v - 1) * osx) < 0
            or max(ox0, ox0 + (grid_v - 1) * osx) >= out.shape[2])):
        raise ValueError("gather: the grid writes outside out")
    cdef fc_gather g
    g.oy0, g.osy, g.ox0, g.osx = oy0, osy, ox0, osx
    g.arg, g.conv_wo = NULL, 0
    g.act = _ACTS[activation]
    # The rightmost window starts at bx0 + (grid_v - 1)*bsx.
    _run_gather(src, w, bias, out, nth, ntw, grid_u, grid_v, by0, bsy, bx0, bsx,
                bx0 + (grid_v - 1) * bsx, &g)


def gather_maxpool(const float[:, :, :, ::1] src not None, const float[:, ::1] w not None,
                   bias, float[:, :, :, ::1] out not None, int[:, :, :, ::1] argmax not None,
                   Py_ssize_t nth, Py_ssize_t ntw, Py_ssize_t by0, Py_ssize_t bsy,
                   Py_ssize_t bx0, Py_ssize_t bsx, Py_ssize_t conv_ho, Py_ssize_t conv_wo):
    """A conv forward (as :func:`gather` with the grid of the conv output, conv pixel
    ``(cy, cx)`` taking its taps from ``(by0 + cy*bsy, bx0 + cx*bsx)``) followed by a 2x2,
    stride-2, 'valid' max pool, without the conv output ever being stored: ``out`` gets
    the pooled maxima, ``argmax`` the winners' flat positions ``cy*conv_wo + cx`` (the
    format of :func:`maxpool_forward`). out's spatial shape must be the pooled one,
    ``(conv_ho // 2, conv_wo // 2)``.
    """
    if out.shape[1] != conv_ho // 2 or out.shape[2] != conv_wo // 2:
        raise ValueError(f"gather_maxpool: out is {out.shape[1]}x{out.shape[2]}, the 2x2 pool "
                         f"of a {conv_ho}x{conv_wo} conv output is "
                         f"{conv_ho // 2}x{conv_wo // 2}")
    if any(argmax.shape[i] != out.shape[i] for i in range(4)):
        raise ValueError("gather_maxpool: argmax must have out's shape")
    cdef fc_gather g
    g.oy0, g.osy, g.ox0, g.osx = 0, 1, 0, 1
    g.act = 0
    g.arg = &argmax[0, 0, 0, 0] if argmax.size else NULL
    g.conv_wo = conv_wo
    # The rightmost window of the conv starts at bx0 + (2*wo - 1)*bsx.
    _run_gather(src, w, bias, out, nth, ntw, out.shape[1], out.shape[2], by0, bsy, bx0, bsx,
                bx0 + (2 * out.shape[2] - 1) * bsx, &g)


cdef Py_ssize_t _bind_job(fc_gather *g, const float[:, :, :, ::1] src, bias,
                          float[:, :, :, ::1] out, Py_ssize_t co_pad, Py_ssize_t grid_u,
                          Py_ssize_t grid_v, Py_ssize_t by0, Py_ssize_t bsy, Py_ssize_t bx0,
                          Py_ssize_t bsx, str what, str weights) except -1:
    """What the direct and the Winograd jobs share: checks the images, the padded filter
    count ``co_pad`` of the packed weights (named ``weights``) and the bias, binds them and
    the grid into ``g``; returns the number of grid points, 0 when there is nothing to do.
    ``bias`` stays referenced by the caller, so its pointer outlives this call."""
    cdef Py_ssize_t n = src.shape[0], co = out.shape[3]
    if out.shape[0] != n:
        raise ValueError(f"{what}: out has {out.shape[0]} images, src {n}")
    if co_pad % 16 != 0 or co_pad < co:
        raise ValueError(f"{what}: {weights} has {co_pad} columns: not a multiple of 16 >= {co}")
    cdef const float[::1] b
    g.bias = NULL
    if bias is not None:
        b = bias
        if b.shape[0] != co_pad:
            raise ValueError(f"{what}: bias has {b.shape[0]} values, expected {co_pad}")
        g.bias = &b[0]
    if n * grid_u * grid_v == 0 or co == 0:
        return 0
    g.src = &src[0, 0, 0, 0]
    g.n_img, g.hs, g.ws, g.cs = n, src.shape[1], src.shape[2], src.shape[3]
    g.co, g.co_pad = co, co_pad
    g.out = &out[0, 0, 0, 0]
    g.ho, g.wo = out.shape[1], out.shape[2]
    g.grid_u, g.grid_v = grid_u, grid_v
    g.by0, g.bsy, g.bx0, g.bsx = by0, bsy, bx0, bsx
    return n * grid_u * grid_v


cdef _run_gather(const float[:, :, :, ::1] src, const float[:, ::1] w, bias,
                 float[:, :, :, ::1] out, Py_ssize_t nth, Py_ssize_t ntw,
                 Py_ssize_t grid_u, Py_ssize_t grid_v, Py_ssize_t by0, Py_ssize_t bsy,
                 Py_ssize_t bx0, Py_ssize_t bsx, Py_ssize_t last_x, fc_gather *g):
    """Checks what gather and gather_maxpool share, fills the rest of ``g`` and runs it
    (the pooled variant when ``g.arg`` is set), in ranges over OpenMP threads."""
    cdef Py_ssize_t cs = src.shape[3]
    if nth < 1 or ntw < 1 or w.shape[0] != nth * ntw * cs:
        raise ValueError(f"gather: w has {w.shape[0]} rows, expected {nth}*{ntw}*{cs}")
    cdef Py_ssize_t total = _bind_job(g, src, bias, out, w.shape[1], grid_u, grid_v, by0, bsy,
                                      bx0, bsx, "gather", "w")
    if total == 0:
        return
    g.w = &w[0, 0]
    g.nth, g.ntw = nth, ntw
    # A kernel row is one run of consecutive floats when no window crosses src's sides.
    g.run = cs
    if bx0 >= 0 and last_x + ntw <= src.shape[2]:
        g.run = ntw * cs
    cdef bint pooled = g.arg != NULL
    cdef Py_ssize_t points = total * 4 if pooled else total  # conv pixels computed
    # a block of windows inside the columns takes whole kernel rows (conv_kernels.h)
    cdef float *zeros = <float *>calloc(max(ntw * cs, 1), sizeof(float))
    if zeros == NULL:
        raise MemoryError()
    g.zeros = zeros
    # About 4 ranges per thread, each a whole number of blocks.
    cdef int nt = _threads(points * nth * ntw * cs * g.co, total // RANGE_QUANTUM)
    cdef Py_ssize_t step = _ceil_div(_ceil_div(total, 4 * nt), RANGE_QUANTUM) * RANGE_QUANTUM
    cdef Py_ssize_t nranges = _ceil_div(total, step), r
    try:
        with nogil:
            if nt == 1:
                if pooled:
                    fc_gather_pool_range(g, 0, total)
                else:
                    fc_gather_range(g, 0, total)
            else:
                for r in prange(nranges, schedule="dynamic", num_threads=nt):
                    if pooled:
                        fc_gather_pool_range(g, r * step, min(total, (r + 1) * step))
                    else:
                        fc_gather_range(g, r * step, min(total, (r + 1) * step))
    finally:
        free(zeros)


def wino_maxpool(const float[:, :, :, ::1] src not None, const float[:, :, ::1] u not None,
                 bias, float[:, :, :, ::1] out not None, argmax,
                 Py_ssize_t by0, Py_ssize_t bx0, int m=2):
    """A 3x3, stride-1 conv followed by a 2x2, stride-2, 'valid' max pool, by Winograd
    F(2x2, 3x3) (csrc/plan_wino.h): conv pixel ``(cy, cx)`` takes its taps from
    ``src[n, by0 + cy + (0..2), bx0 + cx + (0..2), :]`` (zero outside src); pooled point
    ``(i, j)`` is the window of conv pixels ``(2i + a, 2j + b)``. ``u`` is the transformed
    kernel ``G g G^T`` laid out ``(16, C, co_pad)`` (fastcnn/backends/_winograd.py), co_pad a
    multiple of 16 and at least out's channel count; ``bias`` None or co_pad float32
    values. ``argmax`` None, or int32 of out's shape: the winners' flat positions
    ``cy*(2*Wo) + cx`` (the format of :func:`gather_maxpool`; first maximum wins, NaN
    propagates). Rounding differs from the direct conv (:func:`gather_maxpool`) in the last
    bits; the result does not depend on the thread count. ``m``: the output tile, 2
    (F(2x2, 3x3), ``u`` of 16 positions) or 4 (F(4x4, 3x3), 36 positions: two pool windows
    a side per tile, 2.25 multiplies per output instead of 4).
    """
    cdef fc_gather g
    cdef int[:, :, :, ::1] arg
    g.act = 0
    g.arg = NULL
    if argmax is not None:
        arg = argmax
        if any(arg.shape[i] != out.shape[i] for i in range(4)):
            raise ValueError("wino_maxpool: argmax must have out's shape")
        if arg.size:
            g.arg = &arg[0, 0, 0, 0]
    g.conv_wo = 2 * out.shape[2]
    if m == 2:
        _run_wino(src, u, bias, out, by0, bx0, out.shape[1], out.shape[2], 2, True, &g)
    else:
        _run_wino(src, u, bias, out, by0, bx0, _ceil_div(out.shape[1], 2),
                  _ceil_div(out.shape[2], 2), m, True, &g)


def wino_conv(const float[:, :, :, ::1] src not None, const float[:, :, ::1] u not None,
              bias, float[:, :, :, ::1] out not None, Py_ssize_t by0, Py_ssize_t bx0,
              int m=2):
    """A 3x3, stride-1 conv by Winograd F(2x2, 3x3), every output stored: ``out[n, i, j]``
    takes its taps from ``src[n, by0 + i + (0..2), bx0 + j + (0..2), :]`` (zero outside
    src); ``u``, ``bias``, ``m`` as for :func:`wino_maxpool`. The conv's dx in training:
    dy correlated with the flipped, transposed kernel."""
    cdef fc_gather g
    g.arg, g.conv_wo, g.act = NULL, 0, 0
    _run_wino(src, u, bias, out, by0, bx0, _ceil_div(out.shape[1], m),
              _ceil_div(out.shape[2], m), m, False, &g)


ctypedef void (*wino_range_fn)(const fc_gather *g, Py_ssize_t q_lo, Py_ssize_t q_hi,
                               float *scratch) noexcept nogil


cdef _run_wino(const float[:, :, :, ::1] src, const float[:, :, ::1] u, bias,
               float[:, :, :, ::1] out, Py_ssize_t by0, Py_ssize_t bx0, Py_ssize_t grid_u,
               Py_ssize_t grid_v, int m, bint pooled, fc_gather *g):
    """Checks what wino_maxpool and wino_conv share, fills the rest of ``g`` and runs it
    in ranges of tiles over OpenMP threads."""
    cdef Py_ssize_t cs = src.shape[3], co = out.shape[3], co_pad = u.shape[2]
    if m != 2 and m != 4:
        raise ValueError(f"wino: m (the output tile) must be 2 or 4, got {m}")
    if u.shape[0] != (m + 2) * (m + 2) or u.shape[1] != cs:
        raise ValueError(f"wino: u has shape {(u.shape[0], u.shape[1], co_pad)}, "
                         f"expected ({(m + 2) * (m + 2)}, {cs}, co_pad)")
    cdef Py_ssize_t total = _bind_job(g, src, bias, out, co_pad, grid_u, grid_v, by0, 1, bx0, 1,
                                      "wino", "u")
    if total == 0:
        return
    g.w = &u[0, 0, 0]
    g.run, g.nth, g.ntw = cs, 3, 3
    g.oy0, g.osy, g.ox0, g.osx = 0, 1, 0, 1
    # Ranges of whole register blocks (RANGE_QUANTUM is a multiple of every FP_WMR), about
    # 4 per thread; each thread its own scratch.
    cdef int nt = _threads(total * (m + 2) * (m + 2) * cs * co, total // RANGE_QUANTUM)
    cdef Py_ssize_t step = _ceil_div(_ceil_div(total, 4 * nt), RANGE_QUANTUM) * RANGE_QUANTUM
    cdef Py_ssize_t nranges = _ceil_div(total, step), r
    cdef Py_ssize_t per = fp_wino_scratch_floats(cs) if m == 2 else fq_wino4_scratch_floats(cs)
    cdef wino_range_fn fn
    if m == 2:
        fn = fp_wino_pool_range if pooled else fp_wino_conv_range
    else:
        fn = fq_wino4_pool_range if pooled else fq_wino4_conv_range
    cdef float *zeros = <float *>calloc(max(cs, 1), sizeof(float))
    cdef float *scratch = <float *>malloc(nt * per * sizeof(float))
    if zeros == NULL or scratch == NULL:
        free(zeros)
        free(scratch)
        raise MemoryError()
    g.zeros = zeros
    try:
        with nogil:
            if nt == 1:
                fn(g, 0, total, scratch)
            else:
                for r in prange(nranges, schedule="dynamic", num_threads=nt):
                    fn(g, r * step, min(total, (r + 1) * step), scratch + threadid() * per)
    finally:
        free(zeros)
        free(scratch)


def dw(const float[:, :, :, ::1] x not None, const float[:, :, :, ::1] dy not None,
       float[:, ::1] dw not None, Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t sh,
       Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    """``dw[(a*kw + b)*C + c, f] = sum_(n,i,j) x[n, i*sh - pt + a, j*sw - pl + b, c]
    * dy[n, i, j, f]`` (taps outside x count as zero)."""
    cdef Py_ssize_t n = x.shape[0], c = x.shape[3], f = dy.shape[3]
    cdef Py_ssize_t ho = dy.shape[1], wo = dy.shape[2]
    if dy.shape[0] != n:
        raise ValueError(f"dw: dy has {dy.shape[0]} images, x {n}")
    if dw.shape[0] != kh * kw * c or dw.shape[1] != f:
        raise ValueError(f"dw: dw has shape {(dw.shape[0], dw.shape[1])}, "
                         f"expected {(kh * kw * c, f)}")
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or pt < 0 or pl < 0:
        raise ValueError("dw: kernel and stride must be >= 1, pads >= 0")
    cdef fc_dw g
    cdef Py_ssize_t k, j
    if n * ho * wo == 0 or c == 0 or f == 0:
        for k in range(dw.shape[0]):
            for j in range(f):
                dw[k, j] = 0
        return
    g.x = &x[0, 0, 0, 0]
    g.n_img, g.h, g.w, g.c = n, x.shape[1], x.shape[2], c
    g.dy = &dy[0, 0, 0, 0]
    g.ho, g.wo, g.f, g.f_pad = ho, wo, f, _ceil_div(f, 16) * 16
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = kh, kw, sh, sw, pt, pl
    g.dw = &dw[0, 0]
    # A whole kernel row is one group of dw rows when no window crosses the image's left or
    # right side: fewer ragged blocks, and full blocks for few channels (c < block_rows).
    cdef bint rows_whole = pl == 0 and (wo - 1) * sw + kw <= x.shape[2]
    g.run = kw * c if rows_whole else c
    g.block_rows = fc_dw_block_rows()
    g.tile_rows = max(1, FC_DW_TILE_PIXELS // wo)
    cdef Py_ssize_t units = (kh if rows_whole else kh * kw) * _ceil_div(g.run, g.block_rows)
    cdef int nt = _threads(n * ho * wo * kh * kw * c * f, units)
    cdef Py_ssize_t per_thread = fc_dw_scratch_floats(&g)
    cdef float *scratch = NULL
    cdef int t
    if per_thread:
        scratch = <float *>malloc(nt * per_thread * sizeof(float))
        if scratch == NULL:
            raise MemoryError()
    try:
        with nogil:
            if nt == 1:
                fc_dw_range(&g, 0, units, scratch)
            else:
                # Contiguous ranges of blocks: each thread owns its rows of dw.
                for t in prange(nt, schedule="static", num_threads=nt):
                    fc_dw_range(&g, units * t // nt, units * (t + 1) // nt,
                                scratch + t * per_thread)
    finally:
        free(scratch)


cdef fc_pool _pool_job(const float[:, :, :, ::1] x, Py_ssize_t ho, Py_ssize_t wo,
                       Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                       Py_ssize_t pt, Py_ssize_t pl):
    if ph < 1 or pw < 1 or sh < 1 or sw < 1 or pt < 0 or pl < 0:
        raise ValueError("pool: window and stride must be >= 1, pads >= 0")
    cdef fc_pool g
    g.x = &x[0, 0, 0, 0] if x.shape[0] else NULL
    g.n_img, g.h, g.w, g.c = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    g.ho, g.wo, g.ph, g.pw, g.sh, g.sw, g.pt, g.pl = ho, wo, ph, pw, sh, sw, pt, pl
    g.y, g.arg, g.dy, g.dx = NULL, NULL, NULL, NULL
    return g


cdef _check_pooled(Py_ssize_t *shape, Py_ssize_t *arg_shape, Py_ssize_t n, Py_ssize_t c,
                   str name):
    if shape[0] != n or shape[3] != c:
        raise ValueError(f"pool: {name} has shape {[shape[i] for i in range(4)]}, "
                         f"expected ({n}, Ho, Wo, {c})")
    if any(arg_shape[i] != shape[i] for i in range(4)):
        raise ValueError(f"pool: argmax must have {name}'s shape")


def maxpool_forward(const float[:, :, :, ::1] x not None, float[:, :, :, ::1] y not None,
                    int[:, :, :, ::1] argmax not None, Py_ssize_t ph, Py_ssize_t pw,
                    Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    """``y`` = window maxima, ``argmax`` = the winners' flat positions ``h*W + w`` in their
    image (pool.pyx's format: first maximum wins, NaN propagates)."""
    _check_pooled(y.shape, argmax.shape, x.shape[0], x.shape[3], "y")
    cdef fc_pool g = _pool_job(x, y.shape[1], y.shape[2], ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t rows = y.shape[0] * y.shape[1]
    if rows == 0 or y.shape[2] == 0 or y.shape[3] == 0:
        return
    g.y = &y[0, 0, 0, 0]
    g.arg = &argmax[0, 0, 0, 0]
    _run_pool_rows(fc_maxpool_rows, &g, rows, rows * y.shape[2] * y.shape[3] * ph * pw)


def maxpool_backward(const float[:, :, :, ::1] dy not None, const int[:, :, :, ::1] argmax not None,
                     float[:, :, :, ::1] dx not None, Py_ssize_t ph, Py_ssize_t pw,
                     Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    """dx of max pooling for windows that do not overlap (``sh >= ph``, ``sw >= pw``): every
    element of the image rows that windows cover is written (dy where it won, else 0);
    rows outside every window are left as they are (the caller zeroes them)."""
    _check_pooled(dy.shape, argmax.shape, dx.shape[0], dx.shape[3], "dy")
    if sh < ph or sw < pw:
        raise ValueError(f"pool: maxpool_backward needs non-overlapping windows, got pool "
                         f"{(ph, pw)} with stride {(sh, sw)}")
    cdef fc_pool g = _pool_job(dx, dy.shape[1], dy.shape[2], ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t rows = dy.shape[0] * dy.shape[1]
    if rows == 0 or dx.shape[2] == 0 or dx.shape[3] == 0:
        return
    g.dy = &dy[0, 0, 0, 0]
    g.arg = <int *>&argmax[0, 0, 0, 0]
    g.dx = &dx[0, 0, 0, 0]
    _run_pool_rows(fc_maxpool_backward_rows, &g, rows, rows * ph * dx.shape[2] * dx.shape[3])


def avgpool_forward(const float[:, :, :, ::1] x not None, float[:, :, :, ::1] y not None,
                    Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                    Py_ssize_t pl):
    """``y`` = each window's mean over its real (unpadded) taps (pool.pyx's, bitwise)."""
    if y.shape[0] != x.shape[0] or y.shape[3] != x.shape[3]:
        raise ValueError(f"pool: y has shape {[y.shape[i] for i in range(4)]}, expected "
                         f"({x.shape[0]}, Ho, Wo, {x.shape[3]})")
    cdef fc_pool g = _pool_job(x, y.shape[1], y.shape[2], ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t rows = y.shape[0] * y.shape[1]
    if rows == 0 or y.shape[2] == 0 or y.shape[3] == 0:
        return
    g.y = &y[0, 0, 0, 0]
    _run_pool_rows(fc_avgpool_rows, &g, rows, rows * y.shape[2] * y.shape[3] * ph * pw)


def avgpool_backward(const float[:, :, :, ::1] dy not None, float[:, :, :, ::1] dx not None,
                     Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                     Py_ssize_t pt, Py_ssize_t pl):
    """dx of average pooling for windows that do not overlap (``sh >= ph``, ``sw >= pw``):
    every element of the image rows that windows cover is written (dy / count inside a
    window, else 0); rows outside every window are left as they are (the caller zeroes
    them)."""
    if dy.shape[0] != dx.shape[0] or dy.shape[3] != dx.shape[3]:
        raise ValueError(f"pool: dy has shape {[dy.shape[i] for i in range(4)]}, expected "
                         f"({dx.shape[0]}, Ho, Wo, {dx.shape[3]})")
    if sh < ph or sw < pw:
        raise ValueError(f"pool: avgpool_backward needs non-overlapping windows, got pool "
                         f"{(ph, pw)} with stride {(sh, sw)}")
    cdef fc_pool g = _pool_job(dx, dy.shape[1], dy.shape[2], ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t rows = dy.shape[0] * dy.shape[1]
    if rows == 0 or dx.shape[2] == 0 or dx.shape[3] == 0:
        return
    g.dy = &dy[0, 0, 0, 0]
    g.dx = &dx[0, 0, 0, 0]
    _run_pool_rows(fc_avgpool_backward_rows, &g, rows, rows * ph * dx.shape[2] * dx.shape[3])


ctypedef void (*pool_rows_fn)(const fc_pool *g, Py_ssize_t r_lo, Py_ssize_t r_hi) noexcept nogil


cdef void _run_pool_rows(pool_rows_fn fn, fc_pool *g, Py_ssize_t rows, Py_ssize_t work):
    """Runs ``fn`` over the output rows, on OpenMP threads when there is enough work."""
    cdef int nt = fastcnn_max_threads()
    cdef Py_ssize_t r
    nt = 1 if work < POOL_PARALLEL_MIN or nt < 1 else <int>min(<Py_ssize_t>nt, rows)
    with nogil:
        if nt == 1:
            fn(g, 0, rows)
        else:
            for r in prange(rows, schedule="static", num_threads=nt):
                fn(g, r, r + 1)
