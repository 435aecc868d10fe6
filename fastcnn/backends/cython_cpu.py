"""Cython kernels compiled from csrc/ (OpenMP), with NumPy's BLAS for the GEMMs.

A float32 convolution (but a first layer with few filters) is a *direct* convolution
(csrc/simd.pyx, micro-kernels in csrc/conv_kernels.h): register-blocked outer products
straight from the NHWC input, the bias added in registers, dW from x and dy in
place, dx as the same kernel over dy per stride phase. It never builds a column matrix and
keeps only x for the backward; it runs at 90-110% of the machine's SGEMM rate on the
standard deep shapes, where im2col + GEMM spends a third of its time moving columns.

A float32 3x3 stride-1 conv with 16+ channels and filters runs by Winograd F(4x4, 3x3)
instead (csrc/wino.h: 2.25 multiplies per output instead of 9; :func:`_winograd_pays`):
the forward (plain, or fused with a 2x2 max pool) and dx, dW staying direct.
``FASTCNN_WINOGRAD=0`` turns it off (fastcnn/backends/_winograd.py).

Every other convolution (float64, and first layers with both few channels and few
filters, which would leave the direct kernel's blocks mostly empty) is im2col -> GEMM ->
bias, and its backward GEMM -> col2im. The GEMMs are NumPy ``matmul`` calls made here,
*between* the compiled passes and never inside a parallel region (BLAS threads nested in
OpenMP threads oversubscribe the cores). The compiled passes do the memory-bound rest in
parallel: patch packing straight from the unpadded input, the col2im gather, bias
(+ activation) epilogues, pooling, activations and the fused losses. Every kernel runs
float32 and float64 natively (fused types, no upcast; the direct convolution and the SIMD
max pooling are float32 only), never writes to its inputs, and gives bitwise-identical
results for any OpenMP thread count.

Two shortcuts skip im2col because the input already IS the patch matrix (a reshape, no
copy): 1x1 kernels with stride 1 and no padding, and kernels that cover the whole unpadded
input.
"""
from __future__ import annotations

import functools

import numpy as np

from fastcnn import _extensions
from fastcnn.backends import _buffers, _checks, _conv_phases, _winograd
from fastcnn.shapes import padded_output_shape

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def is_available():
    """``(True, "")`` when the compiled extensions loaded, else ``(False, reason)``."""
    if _extensions.HAVE_CYTHON:
        return True, ""
    return False, f"{_extensions.IMPORT_ERROR}; {_extensions.FIX_HINT}"


class _Unavailable:
    """Stands in for a missing extension module: any use raises require_cython()'s error."""

    def __getattr__(self, name):
        _extensions.require_cython()


_conv = _extensions.modules.get("conv", _Unavailable())
_pool = _extensions.modules.get("pool", _Unavailable())
_elt = _extensions.modules.get("elementwise", _Unavailable())
_simd = _extensions.modules.get("simd", _Unavailable())
_dwc = _extensions.modules.get("depthwise", _Unavailable())
_bn = _extensions.modules.get("batchnorm", _Unavailable())
_ACT_NONE = 0
# A float32 conv takes the direct path unless it has both few input channels and few
# filters (a first layer such as LeNet-5's 1 -> 6): the kernel's blocks are 16 filters wide
# and its reductions kh*kw*C long, so such a conv would leave them mostly empty (measured
# on 28x28x1 -> 6, 5x5 'same': direct 2.2 ms forward, im2col + GEMM 1.3).
_DIRECT_MIN_CHANNELS = 5
_DIRECT_MIN_FILTERS = 16


def _direct(dtype, c, f) -> bool:
    """Whether a conv on ``c`` channels with ``f`` filters takes the direct path."""
    return dtype == np.float32 and (c >= _DIRECT_MIN_CHANNELS or f >= _DIRECT_MIN_FILTERS)


# --- argument checks (cheap; the compiled code trusts what passes them) -------------------


def _float_array(a, name, dtype=None, ndim=None):
    """``a`` as a C-contiguous float array (no copy when it already is one)."""
    # What a model passes, checked first in a few attribute reads (a batch-1 forward makes
    # about 15 of these calls: the general path below costs ~1 us each).
    if (type(a) is np.ndarray and a.flags.c_contiguous and a.dtype in _FLOATS
            and (dtype is None or a.dtype == dtype) and (ndim is None or a.ndim == ndim)):
        return a
    if hasattr(a, "copy_to_host"):  # a CUDA device array: never an implicit device->host copy
        raise TypeError(f"{name} must be a float32 or float64 numpy array, got {_checks._got(a)}")
    a = np.asarray(a)
    if a.dtype not in _FLOATS:
        raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but the op runs in {dtype}: "
            f"all arrays of one op must share one float dtype"
        )
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


def _check_shape(a, expected, name):
    if a.shape != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {a.shape}")


def _pair(value, name, minimum):
    try:
        a, b = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair of ints, got {value!r}") from None
    if a < minimum or b < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return a, b


_GEOMETRIES: dict = {}


def _geometry(x_shape, window, stride, pad, what):
    """Checks a window op's arguments; returns ``(kh, kw, sh, sw, pt, pl, Ho, Wo)``.

    Memoised on the arguments (a model asks the same few questions every step; the checks
    cost ~3 us per call at batch 1). Unhashable arguments (lists) are checked every time.
    """
    try:
        key = (x_shape[1], x_shape[2], window, stride, pad, what)
        return _GEOMETRIES[key]
    except (KeyError, TypeError):
        pass
    geometry = _check_geometry(x_shape, window, stride, pad, what)
    try:
        if len(_GEOMETRIES) < 4096:
            _GEOMETRIES[key] = geometry
    except TypeError:
        pass
    return geometry


def _check_geometry(x_shape, window, stride, pad, what):
    kh, kw = _pair(window, what, 1)
    sh, sw = _pair(stride, "stride", 1)
    try:
        (pt, pb), (pl, pr) = ((int(p), int(q)) for p, q in pad)
    except (TypeError, ValueError):
        raise ValueError(f"pad must be ((top, bottom), (left, right)), got {pad!r}") from None
    if min(pt, pb, pl, pr) < 0:
        raise ValueError(f"pad must be >= 0, got {pad!r}")
    ho, wo = padded_output_shape(x_shape[1:3], (kh, kw), (sh, sw), ((pt, pb), (pl, pr)))
    if ho < 1 or wo < 1:
        raise ValueError(
            f"{what} {(kh, kw)} with pad {pad!r} does not fit the input's spatial size "
            f"{tuple(x_shape[1:3])}"
        )
    return kh, kw, sh, sw, pt, pl, ho, wo


def _pool_geometry(x_shape, pool, stride, pad):
    """As :func:`_geometry`, and refuses windows that lie wholly in the padding: such a
    window has no maximum and no mean (shapes.py never makes one)."""
    geometry = _geometry(x_shape, pool, stride, pad, "pool size")
    ph, pw, sh, sw, pt, pl, ho, wo = geometry
    for length, k, s, before, out, axis in (
        (x_shape[1], ph, sh, pt, ho, "H"), (x_shape[2], pw, sw, pl, wo, "W")
    ):
        if before >= k or (out - 1) * s >= before + length:
            raise ValueError(
                f"pad {pad!r} makes a pooling window of size {(ph, pw)} lie entirely in the "
                f"padding along {axis} (input {tuple(x_shape[1:3])}, stride {(sh, sw)})"
            )
    return geometry


def _bias(b, n_out, dtype):
    if b is None:
        return None
    b = _float_array(b, "b", dtype, ndim=1)
    _check_shape(b, (n_out,), "b")
    return b


# Outputs and workspaces come from _buffers.output (or out_arg): 64-byte aligned from 64K
# elements up, and from 32 MiB up reused without page faults. Per-channel vectors (db,
# mean, var, dgamma, dbeta) stay np.empty: always small.


def _bias_grad(dy2d):
    db = np.empty(dy2d.shape[1], dtype=dy2d.dtype)
    _elt.bias_grad(dy2d, db)
    return db


# --- convolution ----------------------------------------------------------------------------


def conv2d_forward(x, w, b, stride, pad):
    x = _float_array(x, "x", ndim=4)
    w = _float_array(w, "w", x.dtype, ndim=4)
    n, h, wd, c = x.shape
    kh, kw, c_in, f = w.shape
    if c_in != c:
        raise ValueError(
            f"w has {c_in} input channels (shape {w.shape}) but x has {c} (shape {x.shape})"
        )
    b = _bias(b, f, x.dtype)
    geometry = _geometry(x.shape, (kh, kw), stride, pad, "kernel size")
    if _direct(x.dtype, c, f):
        return _direct_forward(x, w, b, geometry)
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    unpadded = pt == 0 and pl == 0 and ho == (h - kh) // sh + 1 and wo == (wd - kw) // sw + 1
    k = kh * kw * c
    if unpadded and kh == 1 and kw == 1 and sh == 1 and sw == 1:
        cols, packed = x.reshape(n * ho * wo, k), False
    elif unpadded and (kh, kw) == (h, wd):
        cols, packed = x.reshape(n, k), False
    else:
        cols, packed = _buffers.output((n * ho * wo, k), x.dtype), True
        _conv.im2col(x, cols, kh, kw, sh, sw, pt, pl, ho, wo)
    w2d = w.reshape(k, f)
    y2d = np.matmul(cols, w2d, **_buffers.out_arg((n * ho * wo, f), x.dtype))
    if b is not None:
        _elt.bias_act(y2d, b, _ACT_NONE)
    ctx = (cols, packed, w2d, x.shape, w.shape, b is not None, geometry)
    return y2d.reshape(n, ho, wo, f), ctx


def conv2d_backward(dy, ctx, need_dx=True):
    if isinstance(ctx, _DirectCtx):
        return _direct_backward(dy, ctx, need_dx)
    cols, packed, w2d, x_shape, w_shape, has_bias, geometry = ctx
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    dy = _float_array(dy, "dy", w2d.dtype)
    _check_shape(dy, (x_shape[0], ho, wo, w_shape[3]), "dy")
    dy2d = dy.reshape(-1, w_shape[3])
    dw = np.matmul(cols.T, dy2d, **_buffers.out_arg(w2d.shape, dy.dtype)).reshape(w_shape)
    db = _bias_grad(dy2d) if has_bias else None
    if not need_dx:  # a first layer: skip the second GEMM and col2im
        return None, dw, db
    dcols = np.matmul(dy2d, w2d.T, **_buffers.out_arg(cols.shape, dy.dtype))
    if packed:
        dx = _buffers.output(x_shape, dy.dtype)
        _conv.col2im(dcols, dx, kh, kw, sh, sw, pt, pl, ho, wo)
    else:
        dx = dcols.reshape(x_shape)
    return dx, dw, db


def conv2d_maxpool2d_forward(x, w, b, stride, pad, pool, pool_stride, pool_pad):
    """The direct conv fused with a 2x2, stride-2, unpadded max pool (csrc/conv_kernels.h:
    the conv output never reaches memory, and conv rows/columns no window covers are not
    computed). None for other pools, float64 and the im2col path's convs.

    A 3x3, stride-1 conv with enough channels and filters (:func:`_winograd_pays`) runs
    by Winograd F(2x2, 3x3) instead (csrc/wino.h: each pool window is one 2x2 output tile,
    16 multiplies per channel and filter instead of 36): same outputs within float32
    rounding, same argmax format and ctx, so the backward is the direct one."""
    x = _float_array(x, "x", ndim=4)
    w = _float_array(w, "w", x.dtype, ndim=4)
    c, f = x.shape[3], w.shape[3]
    if (not _direct(x.dtype, c, f) or tuple(pool) != (2, 2) or tuple(pool_stride) != (2, 2)
            or tuple(map(tuple, pool_pad)) != ((0, 0), (0, 0)) or w.shape[2] != c):
        return None
    b = _bias(b, f, x.dtype)
    geometry = _geometry(x.shape, w.shape[:2], stride, pad, "kernel size")
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    if ho < 2 or wo < 2:
        return None
    n = x.shape[0]
    y = _buffers.output((n, ho // 2, wo // 2, f), x.dtype)
    argmax = _buffers.output(y.shape, np.int32)
    bias = None if b is None else _padded_columns(b.reshape(1, f))[0]
    # The conv is computed, and seen by the backward, as one whose output is only what
    # the windows cover (an odd last row or column gets no gradient): dy is (2*Hp, 2*Wp),
    # and dW, db and dx skip pixels that would only add zeros (Fashion-MNIST's 11x11 ->
    # 10x10: -17%). argmax positions are in that (2*Hp, 2*Wp) image.
    hc, wc = ho // 2 * 2, wo // 2 * 2
    wino = _winograd_pays(kh, kw, sh, sw, c, f)
    if wino:
        # F(4x4, 3x3) tiles hold 2x2 pool windows; on a pooled grid under 3x3 they would
        # mostly compute what no window covers.
        m = _winograd.tile() if min(y.shape[1], y.shape[2]) >= 3 else 2
        _simd.wino_maxpool(x, _winograd.transform_kernel(w, m), bias, y, argmax, -pt, -pl, m)
    if not wino or (y.size and not np.isfinite(y.max())):
        # A NaN or infinity: the direct kernel's result, whose NaNs reach exactly the
        # windows that read them (a Winograd tile's whole 6x6 input mixes into each of its
        # outputs, and inf - inf is NaN). The check costs 0.15 ms on 32x36x36x64.
        _simd.gather_maxpool(x, _padded_columns(w.reshape(-1, f)), bias, y, argmax, kh, kw,
                             -pt, sh, -pl, sw, hc, wc)
    pool_ctx = (argmax, (n, hc, wc, f), (2, 2, 2, 2, 0, 0, ho // 2, wo // 2))
    covered = (kh, kw, sh, sw, pt, pl, hc, wc)
    return y, _DirectCtx((x, w, b is not None, covered)), pool_ctx


# Winograd pays from 16 channels and 16 filters with F(4x4, 3x3) tiles (1 thread, AVX-512,
# batch 32-64, conv + pool forward, direct -> F(4x4) ms: 74x74x16->32 16.8 -> 9.8,
# 74x74x32->64 55 -> 24, 36x36x64->128 52 -> 19, 13x13x64->64 4.3 -> 2.2, 26x26x16->16
# 1.7 -> 1.0; dx, dy 72x72x32 -> 74x74x16: 20.8 -> 14.8). With fewer channels than a
# vector (8: 8.7 -> 7.7, 1.13x; a first layer's 3: 16.7 -> 22.5) the transforms eat the
# gain. F(2x2, 3x3) (FASTCNN_WINOGRAD=2) needs 32 filters (26x26x16->16: 1.8 -> 1.9).
_WINOGRAD_MIN_CHANNELS = 16
_WINOGRAD_MIN_FILTERS = {4: 16, 2: 32}
# dx of a 3x3 stride-1 conv (dy's f channels -> x's c) runs by Winograd without the pool
# (simd.wino_conv) by the same rule (b32, 1 thread, direct -> F(2x2) ms: dy 72x72x64 ->
# 74x74x32 64 -> 37, 34x34x128 -> 36x36x64 59 -> 31; F(4x4) below those).


def _winograd_pays(kh, kw, sh, sw, c, f) -> bool:
    """Whether a float32 3x3 stride-1 conv on ``c`` channels with ``f`` filters (+ 2x2 pool)
    runs by Winograd (``FASTCNN_WINOGRAD=0`` turns it off)."""
    return ((kh, kw, sh, sw) == (3, 3, 1, 1) and c >= _WINOGRAD_MIN_CHANNELS
            and f >= _WINOGRAD_MIN_FILTERS[_winograd.tile()] and _winograd.enabled())


def _winograd_tiles_pay(n, ho, wo, c, f, m) -> bool:
    """Whether a Winograd F(m x m, 3x3) conv (one :func:`_winograd_pays` admits) has the
    tiles to pay for its kernel: the transformed kernel, (m+2)^2 x C x F floats, is read
    again for each range of 24 tiles, so with few tiles and a large kernel it streams from
    memory, and 32 tiles are a single range, one thread. 8 images, direct / F(4x4) /
    F(2x2) ms, 1 thread: 7x7x512 -> 512 12.6 / 14.2 / 15.5 (2 threads 5.4 / 11.7 / 4.7),
    8x8x384 -> 384 8.7 / 8.2 / 5.9 (2 threads 4.0 / 5.1 / 2.2), but 7x7x160 -> 192
    (a 4.4 MB kernel) 1.16 / 0.76, 10x10x256 -> 256 (72 tiles) 5.5 / 3.3, 14x14x256 ->
    256 (128 tiles) 10.2 / 5.5: ResNet50's last stage, 7x7x512, runs direct."""
    tiles = n * -(-ho // m) * -(-wo // m)
    return tiles >= 64 or (m + 2) ** 2 * c * f * 4 <= 8 << 20


class _DirectCtx(tuple):
    """What the direct convolution keeps for the backward: x and w (the caller's arrays,
    no copy), whether there is a bias, and the geometry."""

    __slots__ = ()


def _padded_columns(a):
    """``a`` (rows, k) with its columns zero-padded to a multiple of 16, the direct kernel's
    channel quantum (no copy when they already are)."""
    k = a.shape[1]
    k16 = -(-k // 16) * 16
    if k16 == k:
        return np.ascontiguousarray(a)
    out = _buffers.output((a.shape[0], k16), a.dtype, zero=True)
    out[:, :k] = a
    return out


def _direct_forward(x, w, b, geometry):
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    n, f = x.shape[0], w.shape[3]
    y = _buffers.output((n, ho, wo, f), x.dtype)
    bias = None if b is None else _padded_columns(b.reshape(1, f))[0]
    m = _winograd.tile_for(ho, wo)
    if (_winograd_pays(kh, kw, sh, sw, x.shape[3], f)
            and _winograd_tiles_pay(n, ho, wo, x.shape[3], f, m)):
        # Winograd, as the fused conv + pool and dx (a non-finite result: the direct conv).
        _simd.wino_conv(x, _winograd.transform_kernel(w, m), bias, y, -pt, -pl, m)
        if y.size == 0 or np.isfinite(y.max()):
            return y, _DirectCtx((x, w, b is not None, geometry))
    # Output pixel (i, j) reads the taps x[n, i*sh - top + a, j*sw - left + b, :].
    _simd.gather(x, _padded_columns(w.reshape(-1, f)), bias, y, kh, kw, ho, wo,
                 -pt, sh, -pl, sw, 0, 1, 0, 1)
    return y, _DirectCtx((x, w, b is not None, geometry))


def _direct_backward(dy, ctx, need_dx):
    x, w, has_bias, geometry = ctx
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    n, h, wd, c = x.shape
    f = w.shape[3]
    dy = _float_array(dy, "dy", x.dtype)
    _check_shape(dy, (n, ho, wo, f), "dy")
    dw = _buffers.output(w.shape, x.dtype)
    _simd.dw(x, dy, dw.reshape(-1, f), kh, kw, sh, sw, pt, pl)
    db = _bias_grad(dy.reshape(-1, f)) if has_bias else None
    if not need_dx:
        return None, dw, db
    if c < _DIRECT_MIN_CHANNELS or (c <= 8 and kh * kw >= 25):
        # dx has only 1-4 channels (a conv on the raw image that is not a model's first
        # layer): the gather's 16-channel blocks would be mostly empty (shape A: 8.7 ms),
        # a GEMM into columns and their col2im gather take 2.2. With 5-8 channels the
        # blocks are still half empty, and with a 5x5 (or larger) kernel the GEMM wins
        # too: LeNet-5's second conv (64x14x14x6 -> 16, 5x5) dx 1.36 -> 1.02 ms, c=8
        # 1.53 -> 1.03; not with 3x3 kernels (28x28x6 -> 16: 2.93 vs 3.01; c=8 -> 32:
        # 4.79 vs 6.17) nor from 12 channels (14x14x12, 5x5: 1.20 vs 1.60); 1 thread,
        # 2026-12-07.
        dcols = np.matmul(dy.reshape(-1, f), w.reshape(-1, f).T,
                          **_buffers.out_arg((dy.size // f, kh * kw * c), x.dtype))
        dx = _buffers.output(x.shape, x.dtype)
        _conv.col2im(dcols, dx, kh, kw, sh, sw, pt, pl, ho, wo)
        return dx, dw, db
    if _winograd_pays(kh, kw, sh, sw, f, c):
        # dx[i, j] = sum_(a,b) dy[i + pt - a, j + pl - b] . w[a, b]^T: a 3x3 stride-1 conv of
        # dy (zero outside it) with the flipped, transposed kernel, its taps from
        # dy[i - (2 - pt) + a', ...]: by Winograd F(2x2, 3x3), every dx pixel written.
        dx = _buffers.output(x.shape, x.dtype)
        m = _winograd.tile_for(h, wd)
        u = _winograd.transform_kernel(w[::-1, ::-1].transpose(0, 1, 3, 2), m)
        _simd.wino_conv(dy, u, None, dx, pt - 2, pl - 2, m)
        if np.isfinite(dx.max()):   # else the direct dx below: NaNs exactly where it puts them
            return dx, dw, db
    stride, pad = (sh, sw), ((pt, 0), (pl, 0))  # the phases need only the leading pads
    covered = _conv_phases.dx_is_covered(w.shape, stride)
    dx = _buffers.output(x.shape, x.dtype, zero=not covered)
    for phase in _conv_phases.dx_phases(x.shape, w, stride, pad):
        (n_a, n_b), (grid_u, grid_v) = phase.taps, phase.grid
        _simd.gather(dy, _padded_columns(phase.w_sub), None, dx, n_a, n_b, grid_u, grid_v,
                     *phase.base, *phase.dest)
    return dx, dw, db


# --- depthwise convolution ------------------------------------------------------------------
# csrc/depthwise.h: C SIMD over the C*M output channels (float32 and float64), parallel
# over output rows; dx a gather per stride phase; dW and db as partial sums over a fixed
# number of row blocks, added here in block order (thread-count independent).


def _depthwise_output(src, shape, m, kh, kw, sh, sw, pt, pl, for_dx):
    """The output of a pass over ``src`` (x for the forward, dy for dx) where the kernels run
    fastest relative to it (depthwise.h, dwc_output_offset: off the L1 sets src's lines
    use, at src's line offset where they realign the two)."""
    return _buffers.empty(shape, src.dtype, align=_buffers.PAGE,
                          offset=_dwc.output_offset(src, shape, m, kh, kw, sh, sw, pt, pl,
                                                    for_dx))


def depthwise_conv2d_forward(x, w, b, stride, pad):
    _checks.check_depthwise_args(x, w, b)
    x = np.ascontiguousarray(x)
    w = np.ascontiguousarray(w)
    kh, kw, c, m = w.shape
    b = None if b is None else np.ascontiguousarray(b)
    geometry = _geometry(x.shape, (kh, kw), stride, pad, "kernel size")
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    y = _depthwise_output(x, (x.shape[0], ho, wo, c * m), m, kh, kw, sh, sw, pt, pl, False)
    _dwc.forward(x, w.reshape(kh * kw, c * m), b, y, kh, kw, sh, sw, pt, pl, m)
    return y, (x, w, b is not None, geometry)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    x, w, has_bias, geometry = ctx
    kh, kw, sh, sw, pt, pl, ho, wo = geometry
    c, m = w.shape[2], w.shape[3]
    dy = _float_array(dy, "dy", x.dtype)
    _check_shape(dy, (x.shape[0], ho, wo, c * m), "dy")
    dx = None
    if need_dx:
        # dW's partials and dx in one pass over dy (3x3, M = 1, column stride <= 2; else
        # the module runs the two passes): the same bits as dw_partials then dx.
        dx = _depthwise_output(dy, x.shape, m, kh, kw, sh, sw, pt, pl, True)
        part = _dwc.backward(x, dy, w.reshape(kh * kw, c * m), dx, kh, kw, sh, sw, pt, pl, m,
                             has_bias)
    else:
        part = _dwc.dw_partials(x, dy, kh, kw, sh, sw, pt, pl, m, has_bias)
    total = part[0] if part.shape[0] == 1 else np.add.reduce(part, axis=0)
    dw = total[: kh * kw].reshape(w.shape)
    db = total[kh * kw] if has_bias else None
    return dx, dw, db


# --- batch normalisation ----------------------------------------------------------------------
# csrc/batchnorm.pyx: x as (rows, C), loops over the contiguous channels of a row, rows in
# fixed blocks; the per-channel sums in double, one partial per block, added in block
# order (thread-count independent). Forward: statistics (one read of x) and normalise;
# backward: (dbeta, dgamma) sums and dx. ctx keeps x itself (no x_hat array is written).


def _bn_rows(x):
    x = np.ascontiguousarray(x)
    return x, x.reshape(-1, x.shape[-1])


def batchnorm_statistics(x):
    _checks.check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (batch, ..., channels), got shape {x.shape}")
    _, rows = _bn_rows(x)
    mean = np.empty(x.shape[-1], dtype=x.dtype)
    var = np.empty(x.shape[-1], dtype=x.dtype)
    if rows.shape[0] == 0:   # as NumPy's mean of nothing
        mean.fill(np.nan)
        var.fill(np.nan)
    elif rows.shape[1]:
        _bn.statistics(rows, mean, var)
    return mean, var


def batchnorm_forward(x, gamma, beta, mean, var, epsilon, training):
    _checks.check_batchnorm_args(x, gamma, beta, mean, var)
    x, rows = _bn_rows(x)
    mean = np.ascontiguousarray(mean).copy()   # ctx must not follow later in-place updates
    inv_std = 1.0 / np.sqrt(var + epsilon)     # the reference's rounding, in x's dtype
    gamma = None if gamma is None else np.ascontiguousarray(gamma)
    beta = None if beta is None else np.ascontiguousarray(beta)
    y = _buffers.output(x.shape, x.dtype)
    _bn.normalize(rows, mean, inv_std, gamma, beta, y.reshape(rows.shape))
    return y, (bool(training), rows, mean, inv_std, gamma, beta is not None, x.shape)


def batchnorm_backward(dy, ctx, need_dx=True):
    training, rows, mean, inv_std, gamma, has_beta, shape = ctx
    dy = _float_array(dy, "dy", rows.dtype)
    _check_shape(dy, shape, "dy")
    dy2 = dy.reshape(rows.shape)
    c = rows.shape[1]
    dbeta = np.empty(c, dtype=rows.dtype)
    dgamma = np.empty(c, dtype=rows.dtype)
    _bn.grad_sums(rows, dy2, mean, inv_std, dbeta, dgamma)
    grads = (dgamma if gamma is not None else None, dbeta if has_beta else None)
    if not need_dx:
        return (None, *grads)
    scale = inv_std if gamma is None else gamma * inv_std
    if not training:
        dx = np.multiply(dy2, scale, **_buffers.out_arg(rows.shape, np.result_type(dy2, scale)))
        return dx.reshape(shape), *grads
    n = rows.shape[0]
    dx = _buffers.output(shape, rows.dtype)
    _bn.dx_train(rows, dy2, mean, inv_std, scale, dbeta / n, dgamma / n, dx.reshape(rows.shape))
    return dx, *grads


# --- pooling --------------------------------------------------------------------------------


# float32 max pooling runs the SIMD kernels (csrc/pool_kernels.h: AVX-512 compares and
# blends over the channels, where pool.pyx's loops get SSE2), float64 pool.pyx; both
# write the same argmax format.


def maxpool2d_forward(x, pool, stride, pad):
    x = _float_array(x, "x", ndim=4)
    geometry = _pool_geometry(x.shape, pool, stride, pad)
    ph, pw, sh, sw, pt, pl, ho, wo = geometry
    n, c = x.shape[0], x.shape[3]
    y = _buffers.output((n, ho, wo, c), x.dtype)
    argmax = _buffers.output((n, ho, wo, c), np.int32)
    kernels = _simd if x.dtype == np.float32 else _pool
    kernels.maxpool_forward(x, y, argmax, ph, pw, sh, sw, pt, pl)
    return y, (argmax, x.shape, geometry)


def maxpool2d_backward(dy, ctx):
    argmax, x_shape, geometry = ctx
    ph, pw, sh, sw, pt, pl, ho, wo = geometry
    dy = _float_array(dy, "dy", ndim=4)
    _check_shape(dy, argmax.shape, "dy")
    if dy.dtype == np.float32 and sh >= ph and sw >= pw:
        # Windows do not overlap: the kernel writes every element of the rows they cover
        # (no zero fill, no scatter); only rows outside every window are zeroed here.
        dx = _buffers.output(x_shape, dy.dtype)
        _simd.maxpool_backward(dy, argmax, dx, ph, pw, sh, sw, pt, pl)
        return _zero_uncovered_rows(dx, geometry)
    dx = _buffers.output(x_shape, dy.dtype, zero=True)
    _pool.maxpool_backward(dy, argmax, dx, ph, sh)
    return dx


def _zero_uncovered_rows(dx, geometry):
    """Zeroes the image rows of ``dx`` that no pooling window covers (what the
    non-overlapping backward kernels leave as they are); returns ``dx``."""
    for lo, hi in _uncovered_rows(geometry, dx.shape[1]):
        dx[:, lo:hi] = 0
    return dx


@functools.lru_cache(maxsize=256)
def _uncovered_rows(geometry, h):
    """The ``(first, end)`` row ranges of an ``h``-row image outside every window."""
    ph, _, sh, _, pt, _, ho, _ = geometry
    gaps, covered = [], 0
    for i in range(ho):
        top = max(i * sh - pt, 0)
        if top > covered:   # a gap between windows (stride > pool); usually none
            gaps.append((covered, top))
        covered = max(covered, min(i * sh - pt + ph, h))
    if covered < h:
        gaps.append((covered, h))
    return tuple(gaps)


def avgpool2d_forward(x, pool, stride, pad):
    x = _float_array(x, "x", ndim=4)
    geometry = _pool_geometry(x.shape, pool, stride, pad)
    ph, pw, sh, sw, pt, pl, ho, wo = geometry
    y = _buffers.output((x.shape[0], ho, wo, x.shape[3]), x.dtype)
    # float32: csrc/pool_kernels.h (vectorised over the channels), float64: pool.pyx;
    # the same sums in the same order.
    (_simd if x.dtype == np.float32 else _pool).avgpool_forward(x, y, ph, pw, sh, sw, pt, pl)
    return y, (x.shape, x.dtype, geometry)


def avgpool2d_backward(dy, ctx):
    x_shape, dtype, geometry = ctx
    ph, pw, sh, sw, pt, pl, ho, wo = geometry
    dy = _float_array(dy, "dy", dtype)
    _check_shape(dy, (x_shape[0], ho, wo, x_shape[3]), "dy")
    if dtype == np.float32 and sh >= ph and sw >= pw:
        # as maxpool2d_backward: each covered element written once, no zero fill
        dx = _buffers.output(x_shape, dtype)
        _simd.avgpool_backward(dy, dx, ph, pw, sh, sw, pt, pl)
        return _zero_uncovered_rows(dx, geometry)
    dx = _buffers.output(x_shape, dtype, zero=True)
    _pool.avgpool_backward(dy, dx, ph, pw, sh, sw, pt, pl)
    return dx


# --- dense ----------------------------------------------------------------------------------


def dense_forward(x, w, b):
    x = _float_array(x, "x", ndim=2)
    w = _float_array(w, "w", x.dtype, ndim=2)
    if w.shape[0] != x.shape[1]:
        raise ValueError(
            f"w has {w.shape[0]} input features (shape {w.shape}) but x has {x.shape[1]} "
            f"(shape {x.shape})"
        )
    b = _bias(b, w.shape[1], x.dtype)
    # np.dot, not np.matmul: the same BLAS call and bits where matmul calls BLAS, but
    # matmul loops in C without BLAS on a transposed operand with a unit axis (batch 1's
    # dW = x.T @ dy: 22 us against 5 for the from-scratch CNN's 1352x10 dense layer).
    y = np.dot(x, w, **_buffers.out_arg((x.shape[0], w.shape[1]), x.dtype))
    if b is not None:
        _elt.bias_act(y, b, _ACT_NONE)
    return y, (x, w, b is not None)


def dense_backward(dy, ctx, need_dx=True):
    x, w, has_bias = ctx
    dy = _float_array(dy, "dy", x.dtype)
    _check_shape(dy, (x.shape[0], w.shape[1]), "dy")
    dx = np.dot(dy, w.T, **_buffers.out_arg(x.shape, x.dtype)) if need_dx else None
    dw = np.dot(x.T, dy, **_buffers.out_arg(w.shape, x.dtype))
    db = _bias_grad(dy) if has_bias else None
    return dx, dw, db


# --- activations (ctx = the forward output, which is all their backward needs) --------------


def _unary_forward(kernel, x):
    x = _float_array(x, "x")
    y = _buffers.output(x.shape, x.dtype)
    kernel(x.reshape(-1), y.reshape(-1))
    return y, y


def _unary_backward(kernel, dy, y):
    dy = _float_array(dy, "dy", y.dtype)
    _check_shape(dy, y.shape, "dy")
    dx = _buffers.output(y.shape, y.dtype)
    kernel(dy.reshape(-1), y.reshape(-1), dx.reshape(-1))
    return dx


def relu_forward(x):
    return _unary_forward(_elt.relu_forward, x)


def relu_backward(dy, ctx):
    return _unary_backward(_elt.relu_backward, dy, ctx)


def sigmoid_forward(x):
    # NumPy's SIMD exp (about 10x faster than the compiled kernel's scalar libm expf call),
    # then the reference's formula (1 if x >= 0 else e) / (1 + e) with e = exp(-|x|) <= 1
    # (no overflow for any x). The select is np.maximum(e, x >= 0): 1 where x >= 0 (e <= 1),
    # e where x < 0 (e >= 0), NaN for a NaN x; np.where would branch per element (3x slower).
    x = _float_array(x, "x")
    e = np.abs(x, **_buffers.out_arg(x.shape, x.dtype))
    np.negative(e, out=e)
    np.exp(e, out=e)
    y = np.maximum(e, x >= 0, dtype=x.dtype, **_buffers.out_arg(x.shape, x.dtype))
    e += 1
    y /= e
    return y, y


def sigmoid_backward(dy, ctx):
    return _unary_backward(_elt.sigmoid_backward, dy, ctx)


def tanh_forward(x):
    # NumPy's np.tanh is SIMD and ~80x faster than the scalar glibc tanhf the compiled
    # kernel calls; same contract (a fresh array of x's dtype), results as the reference.
    x = _float_array(x, "x")
    y = np.tanh(x, **_buffers.out_arg(x.shape, x.dtype))
    return y, y


def tanh_backward(dy, ctx):
    return _unary_backward(_elt.tanh_backward, dy, ctx)


def _keep_x_forward(kernel, x):
    """For activations whose backward reads the forward INPUT: ``(y, x)``."""
    x = _float_array(x, "x")
    y = _buffers.output(x.shape, x.dtype)
    kernel(x.reshape(-1), y.reshape(-1))
    return y, x


def hard_sigmoid_forward(x):
    return _unary_forward(_elt.hard_sigmoid_forward, x)


def hard_sigmoid_backward(dy, ctx):
    return _unary_backward(_elt.hard_sigmoid_backward, dy, ctx)


def hard_silu_forward(x):
    return _keep_x_forward(_elt.hard_silu_forward, x)


def hard_silu_backward(dy, ctx):
    return _unary_backward(_elt.hard_silu_backward, dy, ctx)


def gelu_forward(x):
    # C's erfc per element (NumPy has no erf: the shared NumPy version calls math.erfc).
    return _keep_x_forward(_elt.gelu_forward, x)


def gelu_backward(dy, ctx):
    return _unary_backward(_elt.gelu_backward, dy, ctx)


def relu_general_forward(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's relu with its arguments in one compiled pass (relu6, leaky_relu: cases)."""
    x = _float_array(x, "x")
    params = _act.relu_general_params(negative_slope, max_value, threshold)
    y = _buffers.output(x.shape, x.dtype)
    _elt.relu_general_forward(x.reshape(-1), y.reshape(-1), *params)
    return y, (x, params)


def relu_general_backward(dy, ctx):
    x, params = ctx
    dy = _float_array(dy, "dy", x.dtype)
    _check_shape(dy, x.shape, "dy")
    dx = _buffers.output(x.shape, x.dtype)
    _elt.relu_general_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1), *params)
    return dx


def relu6_forward(x):
    return relu_general_forward(x, 0.0, 6.0, 0.0)


def relu6_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def leaky_relu_forward(x, negative_slope=0.2):
    return relu_general_forward(x, negative_slope, None, 0.0)


def leaky_relu_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


# The exp / log1p / tanh based activations: NumPy's SIMD math beats libm's scalar calls
# (see sigmoid_forward above), shared with the other CPU backends in _activations.py.
from fastcnn.backends._activations import (  # noqa: E402
    elu_forward, elu_backward, selu_forward, selu_backward,
    gelu_approximate_forward, gelu_approximate_backward, silu_forward, silu_backward,
    softplus_forward, softplus_backward, softsign_forward, softsign_backward,
    exponential_forward, exponential_backward, log_softmax_forward, log_softmax_backward,
    prelu_forward, prelu_backward,
)
from fastcnn.backends import _activations as _act  # noqa: E402


def _rows(a):
    """A C-contiguous array as (rows, last axis): a view."""
    return a.reshape(-1, a.shape[-1]) if a.ndim else a.reshape(1, 1)


def softmax_forward(x):
    x = _float_array(x, "x")
    if x.ndim < 1:
        raise ValueError(f"x must have at least 1 axis for a softmax, got shape {x.shape}")
    y = _buffers.output(x.shape, x.dtype)
    if x.size:
        _elt.softmax_forward(_rows(x), _rows(y))
    return y, y


def softmax_backward(dy, ctx):
    y = ctx
    dy = _float_array(dy, "dy", y.dtype)
    _check_shape(dy, y.shape, "dy")
    dx = _buffers.output(y.shape, y.dtype)
    if y.size:
        _elt.softmax_backward(_rows(dy), _rows(y), _rows(dx))
    return dx


# --- fused losses ---------------------------------------------------------------------------


def _targets_like(targets, logits):
    targets = _float_array(targets, "targets", logits.dtype)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    return targets


def softmax_cross_entropy(logits, targets):
    logits = _float_array(logits, "logits", ndim=2)
    targets = _targets_like(targets, logits)
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _elt.softmax_cross_entropy(logits, targets, dlogits)
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sparse_softmax_cross_entropy(logits, labels):
    logits = _float_array(logits, "logits", ndim=2)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be an integer array of shape ({logits.shape[0]},), "
            f"got dtype {labels.dtype}"
        )
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {labels.shape}")
    # Range checked in the kernel (it must never read outside a row).
    labels = np.ascontiguousarray(labels, dtype=np.intp)
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _elt.sparse_softmax_cross_entropy(logits, labels, dlogits)
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sigmoid_cross_entropy(logits, targets):
    logits = _float_array(logits, "logits")
    targets = _targets_like(targets, logits)
    dlogits = _buffers.output(logits.shape, logits.dtype)
    loss = _elt.sigmoid_cross_entropy(logits.reshape(-1), targets.reshape(-1), dlogits.reshape(-1))
    return np.asarray(loss, dtype=logits.dtype), dlogits
