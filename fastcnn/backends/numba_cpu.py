"""Numba @njit kernels (parallel, cached): the ``numba`` backend.

This module is the thin Python side: it checks arguments, allocates outputs, picks a
kernel variant and its blocking for the shape, and calls the compiled kernels of
:mod:`fastcnn.backends._numba.kernels` (where the performance design is described).

Threads: every parallel kernel runs on numba's thread pool (``NUMBA_NUM_THREADS``,
:func:`threads`, ``numba.set_num_threads``). Dense layers call NumPy's ``@`` (BLAS) from
Python, never from inside a parallel region, so the two pools never nest. The numba
kernels' results do not depend on the thread count: every value is computed by one
thread, and every sum runs in an order fixed by the shapes (never split per thread), so
1 and 2 threads agree bitwise (the dense GEMMs are BLAS's business).

Memory: arrays returned to the caller (outputs, gradients) are always fresh (never one
still in use), 64-byte aligned from 64K elements up and reused from 32 MiB up
(:func:`._buffers.output`). Internal
scratch that does not outlive a call (the channel-major copies of x and dy in the conv
backward) comes from a small per-thread, per-shape cache and is reused across calls.

Compilation: kernels compile lazily, per dtype, on first use, and are cached on disk
(``cache=True``): the first process pays the JIT time, later ones load machine code.
Without numba this module still imports; :func:`is_available` then says why the backend
is missing.
"""
from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict

import numpy as np

from ..shapes import padded_output_shape
from . import _buffers, _conv_phases
from ._checks import (
    check_conv_args as _check_conv_args,
    check_depthwise_args as _check_depthwise_args,
    output_shape as _output_shape,
    check_float as _check_float,
    check_same_dtype as _check_same_dtype,
    check_rank as _check_rank,
    check_batchnorm_args as _check_batchnorm_args,
)

try:
    import numba
except ImportError as exc:  # numba is an optional extra
    numba = None
    _UNAVAILABLE = (
        f"numba is not installed or failed to import ({exc}); "
        "install it with: pip install 'fastcnn[numba]'"
    )
else:
    _UNAVAILABLE = None
    from ._numba import batchnorm as _kbn
    from ._numba import kernels as _k

    #: The fastmath flags of every kernel (no nnan/ninf: NaN and -inf keep their meaning).
    FASTMATH = _k.FASTMATH


if numba is not None:
    from numba.core import event as _numba_event

    class _CompileNotice(_numba_event.Listener):
        """Says once, on stderr, that the kernels are being compiled (a numba:compile
        event, which numba fires only when a kernel is not in its on-disk cache): the
        first use on a machine compiles for about a minute in all, without a word
        otherwise. ``FASTCNN_COMPILE_MESSAGE=0`` silences it."""

        MESSAGE = ("fastcnn: compiling the numba backend's kernels for this machine (the "
                   "first use takes up to about a minute; later runs load them from "
                   "numba's on-disk cache). FASTCNN_COMPILE_MESSAGE=0 silences this.")

        def __init__(self):
            self.shown = False

        def on_start(self, event):
            if self.shown:
                return
            dispatcher = (getattr(event, "data", None) or {}).get("dispatcher")
            module = getattr(getattr(dispatcher, "py_func", None), "__module__", None)
            if module != _k.__name__:
                return   # another library's (or the user's) numba function
            self.shown = True
            if os.environ.get("FASTCNN_COMPILE_MESSAGE", "1") != "0":
                print(self.MESSAGE, file=sys.stderr, flush=True)

        def on_end(self, event):
            pass

    #: The listener (``COMPILE_NOTICE.shown``: whether a kernel compiled in this process).
    COMPILE_NOTICE = _CompileNotice()
    _numba_event.register("numba:compile", COMPILE_NOTICE)


def is_available():
    """``(True, "")`` when numba imports, else ``(False, reason with the install hint)``."""
    if _UNAVAILABLE is not None:
        return False, _UNAVAILABLE
    return True, ""


def threads() -> int:
    """Threads the parallel kernels use now (``numba.get_num_threads()``)."""
    return numba.get_num_threads()


# Bytes of one thread's packed conv tile: small enough to stay in L1/L2 with the
# weights of the 4 output channels in flight.
_TILE_BYTES = 32 * 1024
_TILE_MAX = 64
# conv dW with short patches (K <= _DW_SMALL_MAX_K): a fixed number of pixel chunks
# with a partial dW each, fixed so that the result does not depend on the thread count.
_DW_SMALL_MAX_K = 16
_DW_SMALL_CHUNKS = 16
# conv dW: pixels per micro-kernel dot product (a multiple of 16): long enough to
# amortise the 16 horizontal sums, short enough for the operands to stay in L2.
_DW_PIXEL_TILE = 1024
# Convs on at most this many input channels (a first layer) run the few-channel
# kernels (conv_few_forward / conv_few_dw; design in kernels.py, figures in auto.py).
# Measured on 5-8 channels they win on wide images (32x32x5 -> 16, 3x3 'same': forward
# 0.57 vs 1.59 ms) and lose on small ones (LeNet's 14x14x6 -> 16, 5x5: 0.77 vs 0.50, the
# grid's extra columns are 40% there), so the boundary stays at the first-layer case.
_FEW_CHANNELS = 4
# Few-channel kernels: grid pixels per work unit (whole grid rows). The forward's 4
# accumulator rows (16 KB in float32) stay in L1, dW's dy tile (F x 1024) in L2; longer
# rows amortise each pass's setup. Measured flat within noise from 512 to 2048.
_FEW_TILE = 1024
# Few-channel convs with fewer multiply-adds than this run serially: waking numba's
# second thread costs 20-45 us here (measured at batch 1: forward 29 us on 2 threads
# against 8 us on 1), about what one thread needs for this much work.
_FEW_PARALLEL_MIN_MACS = 1 << 19
# Element-wise ops on fewer elements than this run serially: a parallel launch costs
# a few microseconds, more than it saves on a small array.
_PARALLEL_MIN_SIZE = 1 << 16

_RELU, _SIGMOID, _TANH, _HARD_SIGMOID, _HARD_SILU, _GELU = 0, 1, 2, 3, 4, 5


# ----------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, stride, pad):
    _check_conv_args(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")
    x, w = _contiguous(x), _contiguous(w)
    bias = _contiguous(b) if b is not None else np.zeros(f, dtype=x.dtype)
    y = _buffers.output((n, ho, wo, f), x.dtype)
    if c <= _FEW_CHANNELS:
        _few_forward(x, w, bias, y, stride, pad)
    else:
        # Output pixel (i, j) reads taps x[n, i*sh - top + a, j*sw - left + b, :].
        _gather(x, w.reshape(kh * kw * c, f), bias, y, (kh, kw), (ho, wo),
                (-pt, sh, -pl, sw), (0, 1, 0, 1))
    # Only x (the caller's array, no copy) and w are kept: never a column matrix.
    return y, (x, w, b is not None, stride, pad)


def conv2d_backward(dy, ctx, need_dx=True):
    x, w, has_bias, stride, pad = ctx
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = padded_output_shape((h, wd), (kh, kw), stride, pad)
    _check_same_dtype("dy", dy, x)
    if dy.shape != (n, ho, wo, f):
        raise ValueError(f"dy must have the forward output's shape {(n, ho, wo, f)}, "
                         f"got {dy.shape}")
    dy = _contiguous(dy)
    t = threads()

    k = kh * kw * c
    if c <= _FEW_CHANNELS:
        dw, db = _few_dw(x, dy, w.shape, stride, pad)
    elif k <= _DW_SMALL_MAX_K and f >= 16:
        # Short patches on more channels (a 1x1 conv on 5-16 channels): outer products
        # into per-chunk partials. For so little arithmetic, the transposes of the
        # general path would cost more than the dW products themselves (measured 2.4x
        # on 3x3x1 -> 64, before that shape moved to the few-channel kernels).
        k4 = _round_up(k, 4)
        partial = _scratch("conv_dw_partial", (_DW_SMALL_CHUNKS, k4 + 1, f), x.dtype)
        _k.conv_dw_small(x, dy, partial, kh, kw, sh, sw, pt, pl)
        # Fresh copies: the partials are scratch that the next call overwrites.
        dw = partial[0, :k].reshape(w.shape).copy()
        db = partial[0, k4].copy()
    else:
        dw, db = _conv_dw(x, dy, w.shape, stride, pad, (ho, wo), t)
    if not need_dx:  # a first layer: nothing consumes dx
        return None, dw, (db if has_bias else None)

    # dx, one stride phase at a time, each a stride-1 gather over dy (_conv_phases).
    covered = _conv_phases.dx_is_covered(w.shape, stride)
    dx = _buffers.output(x.shape, x.dtype, zero=not covered)
    zeros_c = np.zeros(c, dtype=x.dtype)
    for phase in _conv_phases.dx_phases(x.shape, w, stride, pad):
        _gather(dy, phase.w_sub, zeros_c, dx, phase.taps, phase.grid, phase.base, phase.dest)
    return dx, dw, (db if has_bias else None)


def _conv_dw(x, dy, w_shape, stride, pad, out_hw, t):
    """dW (and db) of a conv with long patches: see kernels.conv_dw."""
    n, h, wd, c = x.shape
    kh, kw, _, f = w_shape
    (sh, sw), ((pt, _), (pl, _)), (ho, wo) = stride, pad, out_hw
    # dW reduces over pixels. dy and the stride phases of the zero-padded x go
    # channel-major onto one (N, grid_h, grid_w) pixel grid, on which every tap (a, b)
    # is a constant shift (see kernels.conv_dw); the same pass over dy sums db. The grid
    # is (Ho, Wo) plus the taps' reach, so a real output's taps never wrap a row.
    grid_h = ho + (kh - 1) // sh
    grid_w = wo + (kw - 1) // sw
    qlen = _round_up(n * grid_h * grid_w, 16)
    reach = ((kh - 1) // sh) * grid_w + (kw - 1) // sw
    dyw = _scratch("conv_dyw", (f, qlen), dy.dtype)
    db = np.empty(f, dtype=dy.dtype)
    _k.to_channel_major(dy, dyw, grid_h, grid_w, 1, 0, 1, 0, db)
    phases_h, phases_w = min(sh, kh), min(sw, kw)
    xph = _scratch("conv_xph", (phases_h * phases_w, c, qlen + _round_up(reach, 16)),
                   x.dtype)
    xsum = _scratch("conv_xsum", (c,), x.dtype)  # unused
    for rh in range(phases_h):
        for rw in range(phases_w):
            _k.to_channel_major(x, xph[rh * phases_w + rw], grid_h, grid_w,
                                sh, rh - pt, sw, rw - pl, xsum)

    k = kh * kw * c
    dw = _buffers.output(w_shape, x.dtype)
    # Blocks of dW rows are the unit of parallel work: about 4 per thread, 4..32 rows.
    kblock = min(32, max(4, _round_up(-(-k // (4 * t)), 4)))
    _k.conv_dw(xph, dyw, dw.reshape(k, f), kh, kw, sh, sw, grid_w, qlen, kblock,
               _DW_PIXEL_TILE, t)

    return dw, db


def _few_forward(x, w, bias, y, stride, pad):
    """Conv forward on few input channels into ``y``: see kernels.conv_few_forward."""
    kh, kw, c, f = w.shape
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    k = kh * kw * c
    w4 = np.zeros((_round_up(k, 4), f), dtype=w.dtype)  # zero taps up to a multiple of 4
    w4[:k] = w.reshape(k, f)
    grid_w = y.shape[2] + (kw - 1) // sw
    tile_rows = min(y.shape[1], max(1, _FEW_TILE // grid_w))
    args = (x, w4, bias, y, k, kw, sh, sw, pt, pl, min(sh, kh), min(sw, kw), tile_rows)
    if y.size * k < _FEW_PARALLEL_MIN_MACS:
        _k.conv_few_forward_part(*args, 0, 1)
    else:
        _k.conv_few_forward(*args, threads())


def _few_dw(x, dy, w_shape, stride, pad):
    """dW and db of a conv on few input channels: see kernels.conv_few_dw."""
    kh, kw, c, f = w_shape
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    k = kh * kw * c
    k4, f4 = _round_up(k, 4), _round_up(f, 4)
    partial = _scratch("conv_few_dw", (x.shape[0], k4, f4), x.dtype)
    db_partial = _scratch("conv_few_db", (x.shape[0], f4), x.dtype)
    grid_w = dy.shape[2] + (kw - 1) // sw
    tile_rows = min(dy.shape[1], max(1, _FEW_TILE // grid_w))
    args = (x, dy, partial, db_partial, k, kw, sh, sw, pt, pl, min(sh, kh), min(sw, kw),
            tile_rows)
    if dy.size * k < _FEW_PARALLEL_MIN_MACS:
        _k.conv_few_dw_part(*args, 0, 1)
    else:
        _k.conv_few_dw(*args, threads())
    _k.sum_image_partials(partial, db_partial)
    # Fresh copies: the partials are scratch that the next call overwrites.
    return partial[0, :k, :f].copy().reshape(w_shape), db_partial[0, :f].copy()


def _gather(src, wk, bias, out, taps, grid, base, dest):
    """Runs the conv gather kernel; ``wk`` is ``(K, C_out)`` in packed-tap order."""
    (nth, ntw), (grid_u, grid_v) = taps, grid
    k, c_out = wk.shape
    # (C_out, K16): each output channel's taps contiguous, zero-padded to a multiple of
    # 16 so that the micro-kernel's dot products have no scalar remainder. Measured: this
    # also beats a channels-innermost (axpy) kernel for short patches (K = 9..27, first
    # layers), whose many short loops cost more than the padded lanes.
    k16 = _round_up(k, 16)
    wm = np.zeros((c_out, k16), dtype=wk.dtype)
    wm[:, :k] = wk.T
    tile = min(_TILE_MAX, max(4, (_TILE_BYTES // (k16 * src.itemsize)) // 4 * 4))
    _k.conv_gather_dot(src, wm, bias, out, nth, ntw, grid_u, grid_v, *base, *dest, tile,
                       threads())


# ----------------------------------------------------------------------------------------
# Depthwise convolution (kernels.depthwise_*: loops over pixels, channels innermost)
# ----------------------------------------------------------------------------------------

# Depthwise dW: partial sums per fixed chunk of output rows, summed in chunk order, so
# the result does not depend on the thread count (see kernels.depthwise_dw).
_DEPTHWISE_DW_CHUNKS = 16


def depthwise_conv2d_forward(x, w, b, stride, pad):
    _check_depthwise_args(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")
    x, w = _contiguous(x), _contiguous(w)
    bias = _contiguous(b) if b is not None else np.zeros(c * m, dtype=x.dtype)
    y = _buffers.output((n, ho, wo, c * m), x.dtype)
    _k.depthwise_forward(x, w.reshape(kh * kw, c * m), bias, y, kh, kw, m, sh, sw, pt, pl)
    return y, (x, w, b is not None, stride, pad)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    x, w, has_bias, stride, pad = ctx
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    ho, wo = padded_output_shape((h, wd), (kh, kw), stride, pad)
    _check_same_dtype("dy", dy, x)
    if dy.shape != (n, ho, wo, c * m):
        raise ValueError(f"dy must have the forward output's shape {(n, ho, wo, c * m)}, "
                         f"got {dy.shape}")
    dy = _contiguous(dy)
    k = kh * kw

    rows = n * ho
    chunks = max(1, min(_DEPTHWISE_DW_CHUNKS, rows))
    per_chunk = max(1, -(-rows // chunks))
    chunks = max(1, -(-rows // per_chunk))  # no empty chunk (but one for an empty batch)
    partial = _scratch("depthwise_dw", (chunks, k + 1, c * m), x.dtype)
    _k.depthwise_dw(x, dy, partial, kh, kw, m, sh, sw, pt, pl, per_chunk)
    total = partial.sum(axis=0)  # chunk order; a fresh array (partial is scratch)
    dw = total[:k].reshape(w.shape)
    db = total[k].copy() if has_bias else None
    if not need_dx:
        return None, dw, db
    dx = _buffers.output(x.shape, x.dtype)
    _k.depthwise_dx(dy, w.reshape(k, c * m), dx, kh, kw, m, sh, sw, pt, pl)
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------


def maxpool2d_forward(x, pool, stride, pad):
    ho, wo = _pool_geometry(x, pool, stride, pad)
    x = _contiguous(x)
    y = _buffers.output((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    arg = _buffers.output(y.shape, np.int32)  # window-relative tap a*pw + b of the winner
    (ph, pw), (sh, sw), ((pt, _), (pl, _)) = pool, stride, pad
    _k.maxpool_forward(x, y, arg, ph, pw, sh, sw, pt, pl)
    return y, (arg, x.shape, pool, stride, pad)


def maxpool2d_backward(dy, ctx):
    arg, x_shape, (ph, pw), (sh, sw), ((pt, _), (pl, _)) = ctx
    dy = _check_pool_dy(dy, arg.shape)
    dx = _buffers.output(x_shape, dy.dtype, zero=True)
    _k.maxpool_backward(dy, arg, dx, ph, pw, sh, sw, pt, pl)
    return dx


def avgpool2d_forward(x, pool, stride, pad):
    ho, wo = _pool_geometry(x, pool, stride, pad)
    x = _contiguous(x)
    y = _buffers.output((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    (ph, pw), (sh, sw), ((pt, _), (pl, _)) = pool, stride, pad
    _k.avgpool_forward(x, y, ph, pw, sh, sw, pt, pl)
    return y, (x.shape, y.shape, pool, stride, pad)


def avgpool2d_backward(dy, ctx):
    x_shape, y_shape, (ph, pw), (sh, sw), ((pt, _), (pl, _)) = ctx
    dy = _check_pool_dy(dy, y_shape)
    dx = _buffers.output(x_shape, dy.dtype, zero=True)
    _k.avgpool_backward(dy, dx, ph, pw, sh, sw, pt, pl)
    return dx


def _pool_geometry(x, pool, stride, pad):
    _check_float("x", x)
    _check_rank("x", x, 4, "(N, H, W, C)")
    spatial = x.shape[1:3]
    ho, wo = _output_shape(spatial, pool, stride, pad, "pool")
    # A window made only of padding has no maximum and no mean (0/0).
    for length, k, s, (before, _), o, axis in zip(spatial, pool, stride, pad, (ho, wo), "HW"):
        if before >= k or (o - 1) * s >= before + length:
            raise ValueError(
                f"pad {pad} makes a pooling window of size {tuple(pool)} lie entirely in "
                f"the padding along {axis} (input {tuple(spatial)}, stride {tuple(stride)})"
            )
    return ho, wo


def _check_pool_dy(dy, y_shape):
    _check_float("dy", dy)
    if dy.shape != tuple(y_shape):
        raise ValueError(f"dy must have the forward output's shape {tuple(y_shape)}, "
                         f"got {dy.shape}")
    return _contiguous(dy)


# ----------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------
# The GEMMs are NumPy's ``@`` (BLAS), called here, outside any parallel region. Measured
# (see the issue note) against np.dot inside @njit (SciPy's BLAS, same speed plus the
# dispatch cost) and against this backend's own micro-kernel (fast for the forward, but
# dense backward products reduce over the short batch or unit axes, where BLAS's packed
# kernels win): BLAS is as fast or faster on every standard dense shape.


# One BLAS GEMM (x @ w, its transposes for the backward), as in the reference: the
# registry binds the reference's dense_forward / dense_backward here (fastcnn info: "=reference").
REUSES = {"dense": "reference"}


# ----------------------------------------------------------------------------------------
# Batch normalisation: _numba/batchnorm.py, the structure of csrc/batchnorm.pyx (rows in
# fixed blocks, float64 per-block partials combined in block order: thread-count
# independent). ctx keeps x itself.
# ----------------------------------------------------------------------------------------


def _bn_block(c):
    return max(8, 4096 // max(c, 1))


def batchnorm_statistics(x):
    _check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (batch, ..., channels), got shape {x.shape}")
    rows = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
    r, c = rows.shape
    mean = np.empty(c, dtype=x.dtype)
    var = np.empty(c, dtype=x.dtype)
    if r == 0:
        mean.fill(np.nan)
        var.fill(np.nan)
    elif c:
        block = _bn_block(c)
        part = np.empty(((r + block - 1) // block, 2, c))
        _kbn.stats_partials(rows, block, part)
        _kbn.stats_combine(part, block, r, mean, var)
    return mean, var


def batchnorm_forward(x, gamma, beta, mean, var, epsilon, training):
    _check_batchnorm_args(x, gamma, beta, mean, var)
    x = np.ascontiguousarray(x)
    rows = x.reshape(-1, x.shape[-1])
    mean = np.ascontiguousarray(mean).copy()   # ctx must not follow later in-place updates
    inv_std = 1.0 / np.sqrt(var + epsilon)     # the reference's rounding, in x's dtype
    y = _buffers.output(x.shape, x.dtype)
    if rows.size:
        _kbn.normalize(rows, mean, inv_std, inv_std if gamma is None else gamma,
                       inv_std if beta is None else beta, gamma is not None,
                       beta is not None, y.reshape(rows.shape), _bn_block(rows.shape[1]))
    return y, (bool(training), rows, mean, inv_std, gamma, beta is not None, x.shape)


def batchnorm_backward(dy, ctx, need_dx=True):
    training, rows, mean, inv_std, gamma, has_beta, shape = ctx
    _check_same_dtype("dy", dy, rows)
    if dy.shape != shape:
        raise ValueError(f"dy must have shape {shape}, got {dy.shape}")
    dy2 = np.ascontiguousarray(dy).reshape(rows.shape)
    r, c = rows.shape
    dbeta = np.zeros(c, dtype=rows.dtype)
    dgamma = np.zeros(c, dtype=rows.dtype)
    block = _bn_block(c)
    if r and c:
        part = np.empty(((r + block - 1) // block, 2, c))
        _kbn.grad_partials(rows, dy2, mean, inv_std, block, part)
        _kbn.grad_combine(part, dbeta, dgamma)
    grads = (dgamma if gamma is not None else None, dbeta if has_beta else None)
    if not need_dx:
        return (None, *grads)
    scale = inv_std if gamma is None else gamma * inv_std
    if not training:
        dx = np.multiply(dy2, scale, **_buffers.out_arg(rows.shape, np.result_type(dy2, scale)))
        return dx.reshape(shape), *grads
    dx = _buffers.output(shape, rows.dtype)
    if r and c:
        _kbn.dx_train(rows, dy2, mean, inv_std, scale, dbeta / r, dgamma / r,
                      dx.reshape(rows.shape), block)
    return dx, *grads


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


def _unary_forward(x, op):
    _check_float("x", x)
    x = _contiguous(x)
    y = _buffers.output(x.shape, x.dtype)
    xf, yf = x.reshape(-1), y.reshape(-1)
    if x.size < _PARALLEL_MIN_SIZE:
        _k.unary_forward_range(xf, yf, op, 0, x.size)
    else:
        _k.unary_forward_parallel(xf, yf, op, -(-x.size // threads()))
    return y, y


def _unary_backward(dy, y, op):
    _check_same_dtype("dy", dy, y)
    if dy.shape != y.shape:
        raise ValueError(f"dy must have the forward output's shape {y.shape}, got {dy.shape}")
    dy = _contiguous(dy)
    dx = _buffers.output(dy.shape, dy.dtype)
    args = (dy.reshape(-1), y.reshape(-1), dx.reshape(-1), op)
    if dy.size < _PARALLEL_MIN_SIZE:
        _k.unary_backward_range(*args, 0, dy.size)
    else:
        _k.unary_backward_parallel(*args, -(-dy.size // threads()))
    return dx


def relu_forward(x):
    return _unary_forward(x, _RELU)


def relu_backward(dy, ctx):
    return _unary_backward(dy, ctx, _RELU)


def sigmoid_forward(x):
    return _unary_forward(x, _SIGMOID)


def sigmoid_backward(dy, ctx):
    return _unary_backward(dy, ctx, _SIGMOID)


def tanh_forward(x):
    return _unary_forward(x, _TANH)


def tanh_backward(dy, ctx):
    return _unary_backward(dy, ctx, _TANH)


def _unary_forward_keep_x(x, op):
    """For ops whose backward reads the forward INPUT: ``(y, x)``."""
    _check_float("x", x)
    x = _contiguous(x)
    y, _ = _unary_forward(x, op)
    return y, x


def hard_sigmoid_forward(x):
    return _unary_forward(x, _HARD_SIGMOID)


def hard_sigmoid_backward(dy, ctx):
    return _unary_backward(dy, ctx, _HARD_SIGMOID)


def hard_silu_forward(x):
    return _unary_forward_keep_x(x, _HARD_SILU)


def hard_silu_backward(dy, ctx):
    return _unary_backward(dy, ctx, _HARD_SILU)


def gelu_forward(x):
    # libm's erfc per element: far faster than NumPy's per-element Python call to math.erfc
    return _unary_forward_keep_x(x, _GELU)


def gelu_backward(dy, ctx):
    return _unary_backward(dy, ctx, _GELU)


def relu_general_forward(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's relu with its arguments, one compiled pass (relu6, leaky_relu: cases of it)."""
    _check_float("x", x)
    params = _act.relu_general_params(negative_slope, max_value, threshold)
    x = _contiguous(x)
    y = _buffers.output(x.shape, x.dtype)
    xf, yf = x.reshape(-1), y.reshape(-1)
    if x.size < _PARALLEL_MIN_SIZE:
        _k.relu_general_forward_range(xf, yf, *params, 0, x.size)
    else:
        _k.relu_general_forward_parallel(xf, yf, *params, -(-x.size // threads()))
    return y, (x, params)


def relu_general_backward(dy, ctx):
    x, params = ctx
    _check_same_dtype("dy", dy, x)
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the forward output's shape {x.shape}, got {dy.shape}")
    dy = _contiguous(dy)
    dx = _buffers.output(dy.shape, dy.dtype)
    args = (dy.reshape(-1), x.reshape(-1), dx.reshape(-1), *params)
    if dy.size < _PARALLEL_MIN_SIZE:
        _k.relu_general_backward_range(*args, 0, dy.size)
    else:
        _k.relu_general_backward_parallel(*args, -(-dy.size // threads()))
    return dx


def relu6_forward(x):
    return relu_general_forward(x, 0.0, 6.0, 0.0)


def relu6_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def leaky_relu_forward(x, negative_slope=0.2):
    return relu_general_forward(x, negative_slope, None, 0.0)


def leaky_relu_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


# The transcendental activations stay in NumPy (its exp / log1p / tanh are SIMD; numba's
# pip builds call scalar libm), shared with the other CPU backends: _activations.py.
from ._activations import (  # noqa: E402
    elu_forward, elu_backward, selu_forward, selu_backward,
    gelu_approximate_forward, gelu_approximate_backward, silu_forward, silu_backward,
    softplus_forward, softplus_backward, softsign_forward, softsign_backward,
    exponential_forward, exponential_backward, log_softmax_forward, log_softmax_backward,
    prelu_forward, prelu_backward,
)
from . import _activations as _act  # noqa: E402


def softmax_forward(x):
    """Softmax over the last axis (any rank)."""
    _check_float("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis for softmax, got a 0-d array")
    x = _contiguous(x)
    y = _buffers.output(x.shape, x.dtype)
    if x.size:
        _k.softmax_rows(x.reshape(-1, x.shape[-1]), y.reshape(-1, x.shape[-1]))
    return y, y


def softmax_backward(dy, ctx):
    y = ctx
    _check_same_dtype("dy", dy, y)
    if dy.shape != y.shape:
        raise ValueError(f"dy must have the forward output's shape {y.shape}, got {dy.shape}")
    dy = _contiguous(dy)
    dx = _buffers.output(dy.shape, dy.dtype)
    if dy.size:
        k = y.shape[-1]
        _k.softmax_backward_rows(dy.reshape(-1, k), y.reshape(-1, k), dx.reshape(-1, k))
    return dx


# ----------------------------------------------------------------------------------------
# Fused losses
# ----------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, targets):
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_same_dtype("targets", targets, logits)
    _check_targets_shape(targets, logits)
    _check_nonempty(logits)
    logits, targets = _contiguous(logits), _contiguous(targets)
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _k.softmax_cross_entropy(logits, targets, dlogits)
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sparse_softmax_cross_entropy(logits, labels):
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_nonempty(logits)
    n, k = logits.shape
    if not isinstance(labels, np.ndarray) or labels.dtype.kind not in "iu":
        got = labels.dtype if isinstance(labels, np.ndarray) else type(labels).__name__
        raise TypeError(f"labels must be an integer numpy array of shape ({n},), got {got}")
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.min() < 0 or labels.max() >= k:
        bad = labels[(labels < 0) | (labels >= k)][0]
        raise ValueError(f"labels must lie in [0, {k}) for {k} classes, got label {bad}")
    logits = _contiguous(logits)
    # One integer type for the kernel: int8/int32/uint... would each compile anew.
    labels = np.array(labels, dtype=np.int64)  # a fresh, writeable, contiguous copy
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _k.sparse_softmax_cross_entropy(logits, labels, dlogits)
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sigmoid_cross_entropy(logits, targets):
    _check_float("logits", logits)
    _check_same_dtype("targets", targets, logits)
    _check_targets_shape(targets, logits)
    _check_nonempty(logits)
    logits, targets = _contiguous(logits), _contiguous(targets)
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _k.sigmoid_cross_entropy(logits.reshape(-1), targets.reshape(-1),
                                    dlogits.reshape(-1))
    return np.asarray(loss, dtype=logits.dtype), dlogits


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------

_scratch_local = threading.local()
# Scratch kept per Python thread: the most recently used buffers up to this many bytes.
# Kept buffers coexist with a train step's activations, so they count in its peak memory:
# at 128 MiB the cats-vs-dogs CNN (batch 32) kept its deep convs' channel-major copies of
# dy and x (about 95 MiB) for good, and its step peaked at 554 MiB against PyTorch's 420-445;
# at 16 MiB it peaks at 434 MiB. Buffers past the cap are allocated anew per call, which
# measured no slower (shape D backward 141-143 ms either way, B 10.5, E 12.2-13.1; the
# Fashion-MNIST CNN's 15 MiB at batch 128 still fits).
_SCRATCH_BYTES = 16 << 20


def _scratch(tag, shape, dtype):
    """A reusable INTERNAL buffer (never returned to a caller), one set per Python thread.

    Reuse spares the page faults of a fresh multi-megabyte allocation on every call;
    the per-thread cache keeps two threads running the backend from sharing a buffer. Contents are
    undefined: every kernel that uses one writes all of it first.
    """
    cache = getattr(_scratch_local, "cache", None)
    if cache is None:
        cache = _scratch_local.cache = OrderedDict()
    key = (tag, tuple(shape), np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is not None:
        cache.move_to_end(key)
        return buf
    buf = cache[key] = _buffers.empty(shape, dtype)
    total = sum(b.nbytes for b in cache.values())
    while total > _SCRATCH_BYTES and len(cache) > 1:
        _, old = cache.popitem(last=False)
        total -= old.nbytes
    return buf


def release_scratch() -> None:
    """Frees the calling thread's reusable internal buffers (the next call re-makes them).

    They persist between calls on purpose (see :func:`_scratch`); this hands their memory
    back, e.g. after training, or so that a measurement counts their first allocation.
    """
    cache = getattr(_scratch_local, "cache", None)
    if cache is not None:
        cache.clear()


def _contiguous(a):
    # The kernels are compiled for C-contiguous, writeable arrays; anything else is
    # copied once here (a no-op for the arrays the contract promises). A read-only array
    # is a distinct type to numba: passing it through would JIT-compile (and cache) a
    # second copy of every kernel, for a case that one copy handles.
    if a.flags.c_contiguous and a.flags.writeable:
        return a
    return np.array(a, order="C")


def _round_up(v, m):
    return -(-v // m) * m


def _check_targets_shape(targets, logits):
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )


def _check_nonempty(logits):
    if logits.size == 0:
        raise ValueError(f"logits must not be empty (a mean over no element), got shape "
                         f"{logits.shape}")
