"""CUDA kernels through numba-cuda: the ``cuda`` backend.

This module is the Python side of the backend: it checks arguments (with the shared checks
of :mod:`fastcnn.backends._checks`), moves arrays between host and device, allocates
outputs, picks grid sizes and launches the kernels of :mod:`fastcnn.backends._cuda`, where
the kernel design is described.

Array kinds
-----------
Every op accepts NumPy arrays or numba device arrays (C-contiguous, one float dtype).

* All array arguments NumPy: the inputs are copied to the device, and the results come back
  as NumPy arrays (what the generic contract tests and a casual user see).
* Any array argument on the device: the results stay on the device (a model trained under
  :func:`fastcnn._device.scope` keeps weights, optimizer state and activations there).
  One exception: a loss VALUE always comes back as a host 0-d array. It is one number that
  every caller reads at once (the model logs it and checks it for NaN after each step), so
  a device copy would only add a second transfer; the loss gradient stays on the device.

``ctx`` holds device arrays (the forward's inputs on the device, max-pool winners, outputs
of activations); only this module's backwards read it. A kernel never writes its inputs,
and results are fresh device allocations, so nothing returned aliases an input.

Determinism: no kernel uses float atomics; every output is written by one thread with a
summation order that depends only on the shapes, so two runs give identical bits.

Beyond the kernel contract (:data:`fastcnn.backends.OPS`) the module offers the optimizer
updates (:func:`sgd_update`, :func:`adam_update`, :func:`rmsprop_update`, ... in place) and the
few device helpers :mod:`fastcnn._device` needs (:func:`to_device`, :func:`to_host`,
:func:`add_scaled`, :func:`multiply`, :func:`sum_squares`, :func:`zeros`).

Without numba-cuda, or without a GPU and without the simulator, this module still imports;
:func:`is_available` then says what is missing.
"""
from __future__ import annotations

import math

import numpy as np

from ..shapes import padded_output_shape
from ._checks import (
    check_batchnorm_args as _check_batchnorm_args,
    check_conv_args as _check_conv_args,
    check_depthwise_args as _check_depthwise_args,
    check_dense_args as _check_dense_args,
    check_float as _check_float,
    check_labels as _check_labels,
    check_pool_windows_touch_input as _check_pool_windows_touch_input,
    check_rank as _check_rank,
    check_same_dtype as _check_same_dtype,
    output_shape as _output_shape,
)

INSTALL_HINT = 'pip install "fastcnn[cuda]"'
SIMULATOR_HINT = (
    "to run the cuda backend without a GPU (slowly: for tests), set NUMBA_ENABLE_CUDASIM=1 "
    "in the environment before numba is first imported"
)

try:
    import numba
    from numba import cuda
except ImportError as exc:  # numba / numba-cuda are an optional extra
    numba = cuda = None
    _IMPORT_ERROR = (
        f"numba with numba-cuda is not installed ({exc}); install it with: {INSTALL_HINT}"
    )
else:
    _IMPORT_ERROR = None
    from ._cuda import batchnorm as _kbn
    from ._cuda import conv as _kconv
    from ._cuda import depthwise as _kdw
    from ._cuda import elementwise as _kelem
    from ._cuda import losses as _kloss
    from ._cuda import optim as _kopt
    from ._cuda import pool as _kpool
    from ._cuda._jit import TILE, launch_1d as _launch_1d, reduce_threads as _reduce_threads


#: Tells :mod:`fastcnn._device` that models on this backend keep their arrays on the device.
DEVICE_RESIDENT = True


def is_available():
    """``(True, "")`` when kernels can run (a usable GPU, or the CUDA simulator), else
    ``(False, reason)`` saying what is missing and how to get it."""
    if _IMPORT_ERROR is not None:
        return False, _IMPORT_ERROR
    if getattr(cuda, "implementation", None) != "NVIDIA":
        return False, (
            f"numba's deprecated built-in CUDA target is installed, not the numba-cuda "
            f"package (numba {numba.__version__}); install it with: {INSTALL_HINT}"
        )
    if cuda.is_available():
        return True, ""
    return False, (
        f"no usable CUDA GPU: {_driver_error()}; {SIMULATOR_HINT}"
    )


def _driver_error() -> str:
    try:
        cuda.current_context()
    except Exception as exc:  # noqa: BLE001 - the message is the point
        message = " ".join(str(exc).split()).rstrip(" :")
        return message or type(exc).__name__
    return "numba.cuda.is_available() is False"


def simulated() -> bool:
    """True when the kernels run in numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1)."""
    return cuda is not None and bool(numba.config.ENABLE_CUDASIM)


# ----------------------------------------------------------------------------------------
# Host <-> device
# ----------------------------------------------------------------------------------------

#: CUDA_ERROR_OUT_OF_MEMORY, the driver's result code for a failed allocation.
_CUDA_ERROR_OUT_OF_MEMORY = 2


def is_device_array(a) -> bool:
    """True for a numba CUDA device array (simulator arrays included)."""
    return cuda is not None and bool(cuda.devicearray.is_cuda_ndarray(a))


def _allocate(shape, dtype):
    """The raw device allocation (a seam: tests replace it to simulate a full GPU)."""
    return cuda.device_array(shape, dtype=dtype)


def _copy_to_device(a):
    """The raw host-to-device copy (a seam like :func:`_allocate`)."""
    return cuda.to_device(a)


def _is_out_of_memory(exc) -> bool:
    if isinstance(exc, MemoryError):
        return True
    code = getattr(exc, "code", None)
    try:
        if code is not None and int(code) == _CUDA_ERROR_OUT_OF_MEMORY:
            return True
    except (TypeError, ValueError):
        pass
    return "OUT_OF_MEMORY" in str(code) or "out of memory" in str(exc).lower()


def _out_of_memory(exc, shape, dtype, what, batch):
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    for_batch = f" (batch of {batch} samples)" if batch is not None else ""
    hint = ("use a smaller batch_size" if batch is not None
            else "free device memory or use a smaller model")
    return MemoryError(
        f"out of GPU memory: {what}{for_batch} needs an array of shape {tuple(shape)} "
        f"{np.dtype(dtype).name}, {nbytes:,} bytes; {hint} ({type(exc).__name__}: {exc})"
    )


def _empty(shape, dtype, what="an output", batch=None):
    shape = tuple(int(d) for d in shape)
    try:
        return _allocate(shape, dtype)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise _out_of_memory(exc, shape, dtype, what, batch) from exc
        raise


def to_device(a, what="an input", batch=None):
    """A device array with the values of ``a`` (a device array is returned as it is).

    A full GPU raises MemoryError naming ``what``, the bytes asked for and, when given,
    the batch size.
    """
    if is_device_array(a):
        if not a.is_c_contiguous():
            raise ValueError(
                f"{what} is a non-contiguous device array (shape {a.shape}, strides "
                f"{a.strides}); the cuda kernels need C-contiguous arrays")
        return a
    host = np.ascontiguousarray(a)
    try:
        return _copy_to_device(host)
    except Exception as exc:
        if _is_out_of_memory(exc):
            raise _out_of_memory(exc, host.shape, host.dtype, what, batch) from exc
        raise


def to_host(a):
    """A NumPy array: a fresh host copy of a device array; NumPy input as it is."""
    return a.copy_to_host() if is_device_array(a) else np.asarray(a)


def zeros(shape, dtype):
    """A device array of zeros."""
    return to_device(np.zeros(shape, dtype=dtype), "a zero-filled array")


def _meta(a):
    """What the shared (NumPy) argument checks can inspect: a device array becomes a NumPy
    view with its shape and dtype that owns no memory; anything else passes unchanged."""
    if is_device_array(a):
        return np.lib.stride_tricks.as_strided(
            np.zeros(1, dtype=a.dtype), shape=a.shape, strides=(0,) * len(a.shape),
            writeable=False)
    return a


def _any_device(*arrays) -> bool:
    return any(is_device_array(a) for a in arrays if a is not None)


def _deliver(out, on_device):
    return out if on_device else out.copy_to_host()


def _check_like(name, a, shape, dtype):
    """``a`` must have exactly ``shape`` and ``dtype`` (a gradient of a known output)."""
    meta = _meta(a)
    if not isinstance(meta, np.ndarray) or meta.dtype != dtype:
        got = meta.dtype if isinstance(meta, np.ndarray) else type(a).__name__
        raise TypeError(f"{name} must be an array of dtype {np.dtype(dtype)}, got {got}")
    if tuple(meta.shape) != tuple(shape):
        raise ValueError(f"{name} must have the forward output's shape {tuple(shape)}, "
                         f"got {tuple(meta.shape)}")


def _flat(a):
    return a.reshape(a.size)


# ----------------------------------------------------------------------------------------
# Convolution (and the GEMMs dense layers share with it)
# ----------------------------------------------------------------------------------------

# The dW reduction over M = N*Ho*Wo is cut into fixed chunks so that enough blocks run
# at once; the chunking depends on the shapes only, so results never depend on the GPU.
_DW_TARGET_BLOCKS = 256
_DW_MIN_ROWS = 256


def _dw_splits(m, k_ext, f):
    tiles = -(-k_ext // TILE) * -(-f // TILE)
    wanted = max(1, -(-_DW_TARGET_BLOCKS // tiles))
    rows = max(_DW_MIN_ROWS, -(-m // wanted))
    rows = -(-rows // TILE) * TILE
    return -(-m // rows), rows


def _gemm_forward(x4, w2, bias, y2, kh, kw, stride, pad, ho, wo):
    """``y2 = im2col(x4) @ w2 (+ bias)`` on the device (shapes already checked)."""
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    m, f = y2.shape
    if m == 0 or f == 0:
        return
    has_bias = bias is not None
    grid = (-(-m // TILE), -(-f // TILE))
    _kconv.conv_forward[x4.dtype][grid, (TILE, TILE)](
        x4, w2, bias if has_bias else _flat(w2), y2, has_bias,
        kh, kw, sh, sw, pt, pl, ho, wo)


def _gemm_dw(x4, dy2, k, kh, kw, stride, pad, ho, wo, has_bias, batch):
    """``(dw2 (K, F), db (F,) or None)`` = ``[im2col(x4), 1]^T @ dy2`` on the device."""
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    m, f = dy2.shape
    dtype = x4.dtype
    if m == 0 or f == 0:  # an empty batch: nothing to sum
        return zeros((k, f), dtype), (zeros((f,), dtype) if has_bias else None)
    dw2 = _empty((k, f), dtype, "a weight gradient")
    db = _empty((f,), dtype, "a bias gradient") if has_bias else None
    splits, rows = _dw_splits(m, k + 1, f)
    partial = _empty((splits, k + 1, f), dtype, "the partial sums of a weight gradient",
                     batch)
    grid = (-(-f // TILE), -(-(k + 1) // TILE), splits)
    _kconv.conv_dw[dtype][grid, (TILE, TILE)](
        x4, dy2, partial, kh, kw, sh, sw, pt, pl, ho, wo, rows)
    _launch_1d(_kconv.reduce_splits, dtype, (k + 1) * f,
               partial, dw2, db if has_bias else _flat(dw2), has_bias)
    return dw2, db


def conv2d_forward(x, w, b, stride, pad):
    _check_conv_args(_meta(x), _meta(w), _meta(b))
    on_device = _any_device(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")
    xd = to_device(x, "x", batch=n)
    wdv = to_device(w, "w")
    bd = to_device(b, "b") if b is not None else None
    y = _empty((n, ho, wo, f), x.dtype, "a conv output", n)
    _gemm_forward(xd, wdv.reshape(kh * kw * c, f), bd, y.reshape(n * ho * wo, f),
                  kh, kw, stride, pad, ho, wo)
    return _deliver(y, on_device), (xd, wdv, b is not None, tuple(stride), pad)


def conv2d_backward(dy, ctx, need_dx=True):
    xd, wdv, has_bias, stride, pad = ctx
    n, h, wd, c = xd.shape
    kh, kw, _, f = wdv.shape
    ho, wo = padded_output_shape((h, wd), (kh, kw), stride, pad)
    _check_like("dy", dy, (n, ho, wo, f), xd.dtype)
    on_device = _any_device(dy)
    dyd = to_device(dy, "dy", batch=n)
    dw2, db = _gemm_dw(xd, dyd.reshape(n * ho * wo, f), kh * kw * c, kh, kw, stride, pad,
                       ho, wo, has_bias, n)
    dw = _deliver(dw2.reshape(kh, kw, c, f), on_device)
    db = _deliver(db, on_device) if has_bias else None
    if not need_dx:  # a first layer: nothing consumes dx
        return None, dw, db
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    dx = _empty(xd.shape, xd.dtype, "a conv input gradient", n)
    _launch_1d(_kconv.conv_dx, xd.dtype, dx.size, dyd, wdv, dx, sh, sw, pt, pl)
    return _deliver(dx, on_device), dw, db


# ----------------------------------------------------------------------------------------
# Depthwise convolution (kernels: _cuda/depthwise.py)
# ----------------------------------------------------------------------------------------

# dW's sum over the N*Ho*Wo output pixels is cut into fixed chunks (one thread per chunk,
# tap and channel), at least this many pixels each; the chunking depends on the shapes
# only, and the partials are added in chunk order: deterministic, no float atomics.
_DEPTHWISE_DW_THREADS = 1 << 16
_DEPTHWISE_DW_MIN_ROWS = 256


def _depthwise_splits(m, k_ext, f):
    """``(chunks, pixels per chunk)`` for dW's reduction over ``m`` output pixels."""
    wanted = max(1, -(-_DEPTHWISE_DW_THREADS // (k_ext * f)))
    rows = max(_DEPTHWISE_DW_MIN_ROWS, -(-m // wanted))
    return -(-m // rows), rows


def depthwise_conv2d_forward(x, w, b, stride, pad):
    _check_depthwise_args(_meta(x), _meta(w), _meta(b))
    on_device = _any_device(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")
    stride = tuple(int(s) for s in stride)
    pad = tuple((int(p), int(q)) for p, q in pad)
    xd = to_device(x, "x", batch=n)
    wdv = to_device(w, "w")
    bd = to_device(b, "b") if b is not None else None
    y = _empty((n, ho, wo, c * m), x.dtype, "a depthwise conv output", n)
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    _launch_1d(_kdw.depthwise_forward, x.dtype, y.size, xd, wdv,
               bd if bd is not None else _flat(wdv), y, b is not None, sh, sw, pt, pl)
    return _deliver(y, on_device), (xd, wdv, b is not None, stride, pad)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    xd, wdv, has_bias, stride, pad = ctx
    n, h, wd, c = xd.shape
    kh, kw, _, m = wdv.shape
    f, k = c * m, kh * kw
    ho, wo = padded_output_shape((h, wd), (kh, kw), stride, pad)
    _check_like("dy", dy, (n, ho, wo, f), xd.dtype)
    on_device = _any_device(dy)
    dtype = xd.dtype
    dyd = to_device(dy, "dy", batch=n)
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    pixels = n * ho * wo
    if pixels == 0 or f == 0:  # nothing to sum
        dw2, db = zeros((k, f), dtype), (zeros((f,), dtype) if has_bias else None)
    else:
        dw2 = _empty((k, f), dtype, "a weight gradient")
        db = _empty((f,), dtype, "a bias gradient") if has_bias else None
        splits, rows = _depthwise_splits(pixels, k + 1, f)
        partial = _empty((splits, k + 1, f), dtype, "the partial sums of a weight gradient", n)
        _launch_1d(_kdw.depthwise_dw, dtype, partial.size, xd, dyd, partial,
                   kh, kw, sh, sw, pt, pl, rows)
        _launch_1d(_kconv.reduce_splits, dtype, (k + 1) * f,
                   partial, dw2, db if has_bias else _flat(dw2), has_bias)
    dw = _deliver(dw2.reshape(kh, kw, c, m), on_device)
    db = _deliver(db, on_device) if has_bias else None
    if not need_dx:
        return None, dw, db
    dx = _empty(xd.shape, dtype, "a depthwise conv input gradient", n)
    _launch_1d(_kdw.depthwise_dx, dtype, dx.size, dyd, wdv, dx, sh, sw, pt, pl)
    return _deliver(dx, on_device), dw, db


# ----------------------------------------------------------------------------------------
# Batch normalisation (kernels: _cuda/batchnorm.py), x as (rows, C)
# ----------------------------------------------------------------------------------------

# The per-channel reductions over the rows are cut into fixed chunks (one thread per chunk
# and channel), at least this many rows each; the chunking depends on the shapes only and
# the partials are combined in chunk order: deterministic, no float atomics.
_BN_THREADS = 1 << 16
_BN_MIN_ROWS = 256


def _bn_splits(rows, c):
    """``(chunks, rows per chunk)`` for a per-channel reduction over ``rows`` rows."""
    wanted = max(1, -(-_BN_THREADS // max(c, 1)))
    per = max(_BN_MIN_ROWS, -(-rows // wanted))
    return -(-rows // per), per


def _bn_2d(a):
    shape = tuple(a.shape)
    return a.reshape(math.prod(shape[:-1]), shape[-1])


def batchnorm_statistics(x):
    meta = _meta(x)
    _check_float("x", meta)
    if meta.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (batch, ..., channels), got shape {meta.shape}")
    on_device = _any_device(x)
    xd = to_device(x, "x", batch=x.shape[0])
    x2 = _bn_2d(xd)
    rows, c = x2.shape
    mean = _empty((c,), x.dtype, "a batch mean")
    var = _empty((c,), x.dtype, "a batch variance")
    if rows == 0 or c == 0:
        nan = to_device(np.full((c,), np.nan, dtype=x.dtype), "a batch statistic")
        mean, var = nan, to_device(np.full((c,), np.nan, dtype=x.dtype), "a batch statistic")
    else:
        chunks, per = _bn_splits(rows, c)
        partial = _empty((chunks, 2, c), x.dtype, "the partial sums of batch statistics")
        _launch_1d(_kbn.bn_stats_partials, x.dtype, chunks * c, x2, partial, per)
        _launch_1d(_kbn.bn_stats_combine, x.dtype, c, partial, per, rows, mean, var)
    return _deliver(mean, on_device), _deliver(var, on_device)


def batchnorm_forward(x, gamma, beta, mean, var, epsilon, training):
    _check_batchnorm_args(_meta(x), _meta(gamma), _meta(beta), _meta(mean), _meta(var))
    on_device = _any_device(x, gamma, beta, mean, var)
    dtype = x.dtype
    xd = to_device(x, "x", batch=x.shape[0])
    x2 = _bn_2d(xd)
    c = x2.shape[1]
    # Copies of the statistics: ctx must not follow a later in-place moving update.
    meand = _empty((c,), dtype, "a batch-norm mean")
    meand.copy_to_device(to_device(mean, "mean"))
    inv_std = _empty((c,), dtype, "a batch-norm 1/sqrt(var + epsilon)")
    _launch_1d(_kbn.bn_inv_std, dtype, c, to_device(var, "var"), np.dtype(dtype).type(epsilon),
               inv_std)
    gd = to_device(gamma, "gamma") if gamma is not None else None
    bd = to_device(beta, "beta") if beta is not None else None
    y = _empty(xd.shape, dtype, "a batch-norm output", x.shape[0])
    _launch_1d(_kbn.bn_normalize, dtype, x2.size, x2, meand, inv_std,
               gd if gd is not None else inv_std, bd if bd is not None else inv_std,
               _bn_2d(y), gd is not None, bd is not None)
    return _deliver(y, on_device), (bool(training), xd, meand, inv_std, gd, bd is not None)


def batchnorm_backward(dy, ctx, need_dx=True):
    training, xd, meand, inv_std, gd, has_beta = ctx
    _check_like("dy", dy, xd.shape, xd.dtype)
    on_device = _any_device(dy)
    dtype = xd.dtype
    dyd = to_device(dy, "dy", batch=xd.shape[0])
    x2, dy2 = _bn_2d(xd), _bn_2d(dyd)
    rows, c = x2.shape
    if rows == 0 or c == 0:
        dbeta, dgamma = zeros((c,), dtype), zeros((c,), dtype)
    else:
        dbeta = _empty((c,), dtype, "a beta gradient")
        dgamma = _empty((c,), dtype, "a gamma gradient")
        chunks, per = _bn_splits(rows, c)
        partial = _empty((chunks, 2, c), dtype, "the partial sums of batch-norm gradients")
        _launch_1d(_kbn.bn_grad_partials, dtype, chunks * c, x2, dy2, meand, inv_std,
                   partial, per)
        _launch_1d(_kbn.bn_grad_combine, dtype, c, partial, dbeta, dgamma)
    dx = None
    if need_dx:
        dx = _empty(xd.shape, dtype, "a batch-norm input gradient", xd.shape[0])
        _launch_1d(_kbn.bn_dx, dtype, x2.size, x2, dy2, meand, inv_std,
                   gd if gd is not None else inv_std, dbeta, dgamma, gd is not None,
                   training, _bn_2d(dx))
        dx = _deliver(dx, on_device)
    return (dx, _deliver(dgamma, on_device) if gd is not None else None,
            _deliver(dbeta, on_device) if has_beta else None)


def batchnorm_moving_update(moving, batch, momentum):
    """``moving = moving * momentum + batch * (1 - momentum)`` in place on the device
    (BatchNormalization's moving statistics inside a device scope)."""
    if moving.size:
        t = np.dtype(moving.dtype).type
        _launch_1d(_kbn.bn_moving_update, moving.dtype, moving.size, moving,
                   to_device(batch, "a batch statistic"), t(momentum), t(1.0 - momentum))


# ----------------------------------------------------------------------------------------
# Dense: a 1x1 convolution of (N, 1, 1, D) images, and one more tiled GEMM for dx
# ----------------------------------------------------------------------------------------

_UNIT = ((1, 1), ((0, 0), (0, 0)))  # stride and padding of a 1x1 convolution


def dense_forward(x, w, b):
    _check_dense_args(_meta(x), _meta(w), _meta(b))
    on_device = _any_device(x, w, b)
    n, d = x.shape
    u = w.shape[1]
    xd = to_device(x, "x", batch=n)
    wdv = to_device(w, "w")
    bd = to_device(b, "b") if b is not None else None
    y = _empty((n, u), x.dtype, "a dense output", n)
    _gemm_forward(xd.reshape(n, 1, 1, d), wdv, bd, y, 1, 1, *_UNIT, 1, 1)
    return _deliver(y, on_device), (xd, wdv, b is not None)


def dense_backward(dy, ctx, need_dx=True):
    xd, wdv, has_bias = ctx
    n, d = xd.shape
    u = wdv.shape[1]
    _check_like("dy", dy, (n, u), xd.dtype)
    on_device = _any_device(dy)
    dyd = to_device(dy, "dy", batch=n)
    dx = None
    if need_dx:
        dx = _empty((n, d), xd.dtype, "a dense input gradient", n)
        if n and d:
            grid = (-(-n // TILE), -(-d // TILE))
            _kconv.matmul_nt[xd.dtype][grid, (TILE, TILE)](dyd, wdv, dx)
    dw, db = _gemm_dw(xd.reshape(n, 1, 1, d), dyd, d, 1, 1, *_UNIT, 1, 1, has_bias, n)
    return (None if dx is None else _deliver(dx, on_device), _deliver(dw, on_device),
            _deliver(db, on_device) if has_bias else None)


# ----------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------


def _pool_setup(x, pool, stride, pad, what):
    """Checks a pooling input. Returns it on the device, the output allocated (``what``
    names it in a MemoryError), the kernels' geometry arguments, and whether x was
    already on the device."""
    _check_float("x", _meta(x))
    _check_rank("x", _meta(x), 4, "(N, H, W, C)")
    n, h, wd, c = x.shape
    ho, wo = _output_shape((h, wd), pool, stride, pad, "pool")
    _check_pool_windows_touch_input((h, wd), pool, stride, pad, (ho, wo))
    (ph, pw), (sh, sw), ((pt, _), (pl, _)) = pool, stride, pad
    on_device = _any_device(x)
    xd = to_device(x, "x", batch=n)
    y = _empty((n, ho, wo, c), x.dtype, what, n)
    return xd, y, (ph, pw, sh, sw, pt, pl), on_device


def maxpool2d_forward(x, pool, stride, pad):
    xd, y, geometry, on_device = _pool_setup(x, pool, stride, pad, "a max-pool output")
    argmax = _empty(y.shape, np.int32, "the max-pool winners", x.shape[0])
    _launch_1d(_kpool.maxpool_forward, x.dtype, y.size, xd, y, argmax, *geometry)
    return _deliver(y, on_device), (argmax, tuple(x.shape), x.dtype, geometry)


def maxpool2d_backward(dy, ctx):
    argmax, x_shape, dtype, geometry = ctx
    _check_like("dy", dy, argmax.shape, dtype)
    on_device = _any_device(dy)
    dyd = to_device(dy, "dy", batch=x_shape[0])
    dx = _empty(x_shape, dtype, "a max-pool input gradient", x_shape[0])
    _launch_1d(_kpool.maxpool_backward, dtype, dx.size, dyd, argmax, dx, *geometry)
    return _deliver(dx, on_device)


def avgpool2d_forward(x, pool, stride, pad):
    xd, y, geometry, on_device = _pool_setup(x, pool, stride, pad, "an average-pool output")
    _launch_1d(_kpool.avgpool_forward, x.dtype, y.size, xd, y, *geometry)
    return _deliver(y, on_device), (tuple(y.shape), tuple(x.shape), x.dtype, geometry)


def avgpool2d_backward(dy, ctx):
    out_shape, x_shape, dtype, geometry = ctx
    _check_like("dy", dy, out_shape, dtype)
    on_device = _any_device(dy)
    dyd = to_device(dy, "dy", batch=x_shape[0])
    dx = _empty(x_shape, dtype, "an average-pool input gradient", x_shape[0])
    _launch_1d(_kpool.avgpool_backward, dtype, dx.size, dyd, dx, *geometry)
    return _deliver(dx, on_device)


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


def _unary_forward(kernel, x, what):
    _check_float("x", _meta(x))
    on_device = _any_device(x)
    batch = x.shape[0] if len(x.shape) else None
    xd = to_device(x, "x", batch=batch)
    y = _empty(x.shape, x.dtype, what, batch)
    _launch_1d(kernel, x.dtype, y.size, _flat(xd), _flat(y))
    return _deliver(y, on_device), y


def _unary_backward(kernel, dy, y, what):
    _check_like("dy", dy, y.shape, y.dtype)
    on_device = _any_device(dy)
    batch = y.shape[0] if len(y.shape) else None
    dyd = to_device(dy, "dy", batch=batch)
    dx = _empty(y.shape, y.dtype, what, batch)
    _launch_1d(kernel, y.dtype, dx.size, _flat(dyd), _flat(y), _flat(dx))
    return _deliver(dx, on_device)


def relu_forward(x):
    return _unary_forward(_kelem.relu_forward, x, "a relu output")


def relu_backward(dy, ctx):
    return _unary_backward(_kelem.relu_backward, dy, ctx, "a relu input gradient")


def sigmoid_forward(x):
    return _unary_forward(_kelem.sigmoid_forward, x, "a sigmoid output")


def sigmoid_backward(dy, ctx):
    return _unary_backward(_kelem.sigmoid_backward, dy, ctx, "a sigmoid input gradient")


def tanh_forward(x):
    return _unary_forward(_kelem.tanh_forward, x, "a tanh output")


def tanh_backward(dy, ctx):
    return _unary_backward(_kelem.tanh_backward, dy, ctx, "a tanh input gradient")


def _unary_forward_keep_x(kernel, x, what):
    """For activations whose backward reads the forward INPUT: ctx is x on the device."""
    _check_float("x", _meta(x))
    on_device = _any_device(x)
    batch = x.shape[0] if len(x.shape) else None
    xd = to_device(x, "x", batch=batch)
    y = _empty(x.shape, x.dtype, what, batch)
    _launch_1d(kernel, x.dtype, y.size, _flat(xd), _flat(y))
    return _deliver(y, on_device), xd


def relu_general_forward(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's relu with its arguments (relu6 and leaky_relu are cases of it)."""
    from ._activations import relu_general_params

    _check_float("x", _meta(x))
    slope, low, high, t = relu_general_params(negative_slope, max_value, threshold)
    on_device = _any_device(x)
    batch = x.shape[0] if len(x.shape) else None
    xd = to_device(x, "x", batch=batch)
    y = _empty(x.shape, x.dtype, "a relu output", batch)
    T = np.dtype(x.dtype).type
    params = (T(slope), T(low), T(high), T(t))
    _launch_1d(_kelem.relu_general_forward, x.dtype, y.size, _flat(xd), _flat(y), *params,
               slope != 0.0)
    return _deliver(y, on_device), (xd, params, slope != 0.0, high == math.inf)


def relu_general_backward(dy, ctx):
    xd, params, has_slope, unbounded = ctx
    _check_like("dy", dy, xd.shape, xd.dtype)
    on_device = _any_device(dy)
    batch = xd.shape[0] if len(xd.shape) else None
    dyd = to_device(dy, "dy", batch=batch)
    dx = _empty(xd.shape, xd.dtype, "a relu input gradient", batch)
    _launch_1d(_kelem.relu_general_backward, xd.dtype, dx.size, _flat(dyd), _flat(xd),
               _flat(dx), *params, has_slope, unbounded)
    return _deliver(dx, on_device)


def relu6_forward(x):
    return relu_general_forward(x, 0.0, 6.0, 0.0)


def relu6_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def leaky_relu_forward(x, negative_slope=0.2):
    return relu_general_forward(x, negative_slope, None, 0.0)


def leaky_relu_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def elu_forward(x, alpha=1.0):
    _check_float("x", _meta(x))
    on_device = _any_device(x)
    batch = x.shape[0] if len(x.shape) else None
    xd = to_device(x, "x", batch=batch)
    y = _empty(x.shape, x.dtype, "an elu output", batch)
    a = np.dtype(x.dtype).type(alpha)
    _launch_1d(_kelem.elu_forward, x.dtype, y.size, _flat(xd), _flat(y), a)
    return _deliver(y, on_device), (xd, y, a)


def elu_backward(dy, ctx):
    xd, y, a = ctx
    _check_like("dy", dy, y.shape, y.dtype)
    on_device = _any_device(dy)
    batch = y.shape[0] if len(y.shape) else None
    dyd = to_device(dy, "dy", batch=batch)
    dx = _empty(y.shape, y.dtype, "an elu input gradient", batch)
    _launch_1d(_kelem.elu_backward, y.dtype, dx.size, _flat(dyd), _flat(xd), _flat(y),
               _flat(dx), a)
    return _deliver(dx, on_device)


def _activation_pair(name, keep_x):
    """``<name>_forward`` / ``<name>_backward`` over the element-wise kernels of that name:
    the backward reads the forward's input (keep_x) or its output."""
    fwd_kernel = getattr(_kelem, f"{name}_forward") if _IMPORT_ERROR is None else None
    bwd_kernel = (getattr(_kelem, "multiply" if name == "exponential" else f"{name}_backward")
                  if _IMPORT_ERROR is None else None)
    what = f"a {name} output"

    def forward(x):
        if keep_x:
            return _unary_forward_keep_x(fwd_kernel, x, what)
        return _unary_forward(fwd_kernel, x, what)

    def backward(dy, ctx):
        return _unary_backward(bwd_kernel, dy, ctx, f"a {name} input gradient")

    forward.__name__, backward.__name__ = f"{name}_forward", f"{name}_backward"
    return forward, backward


selu_forward, selu_backward = _activation_pair("selu", keep_x=False)
gelu_forward, gelu_backward = _activation_pair("gelu", keep_x=True)
gelu_approximate_forward, gelu_approximate_backward = _activation_pair("gelu_approximate",
                                                                       keep_x=True)
silu_forward, silu_backward = _activation_pair("silu", keep_x=True)
softplus_forward, softplus_backward = _activation_pair("softplus", keep_x=True)
softsign_forward, softsign_backward = _activation_pair("softsign", keep_x=True)
hard_sigmoid_forward, hard_sigmoid_backward = _activation_pair("hard_sigmoid", keep_x=False)
hard_silu_forward, hard_silu_backward = _activation_pair("hard_silu", keep_x=True)
# exponential's derivative is its output: the backward is dy * y (the multiply kernel).
exponential_forward, exponential_backward = _activation_pair("exponential", keep_x=False)


def _prelu_layout(x_shape, alpha_shape):
    """Host index arrays of a PReLU: ``aidx[p]`` (alpha's flat index at position p of one
    sample) and alpha's positions grouped by alpha element (``order``, ``offsets``)."""
    per_sample = tuple(x_shape[1:])
    count = math.prod(alpha_shape)
    aidx = np.broadcast_to(np.arange(count, dtype=np.int64).reshape(alpha_shape),
                           per_sample).ravel()
    order = np.argsort(aidx, kind="stable").astype(np.int64)
    offsets = np.searchsorted(aidx[order], np.arange(count + 1)).astype(np.int64)
    return np.ascontiguousarray(aidx), order, offsets


def prelu_forward(x, alpha):
    """``x`` if ``x > 0`` else ``alpha * x``, alpha broadcast over the batch and its size-1
    (shared) axes."""
    from ._activations import check_prelu_alpha

    _check_float("x", _meta(x))
    if len(x.shape) < 1:
        raise ValueError("x must have a batch axis for prelu, got a 0-d array")
    check_prelu_alpha(_meta(x), _meta(alpha))
    on_device = _any_device(x, alpha)
    xd = to_device(x, "x", batch=x.shape[0])
    ad = to_device(alpha, "alpha")
    aidx, order, offsets = _prelu_layout(tuple(x.shape), tuple(alpha.shape))
    aidx_d = to_device(aidx, "prelu's alpha index")
    y = _empty(x.shape, x.dtype, "a prelu output", x.shape[0])
    if y.size:
        _launch_1d(_kelem.prelu_forward, x.dtype, y.size, _flat(xd), _flat(ad), aidx_d,
                   _flat(y))
    return _deliver(y, on_device), (xd, ad, aidx_d, order, offsets)


def prelu_backward(dy, ctx):
    """``(dx, dalpha)``; dalpha reduced without atomics: per position over the batch, then
    per alpha element over its positions, in a fixed order."""
    xd, ad, aidx_d, order, offsets = ctx
    _check_like("dy", dy, xd.shape, xd.dtype)
    on_device = _any_device(dy)
    dyd = to_device(dy, "dy", batch=xd.shape[0])
    dx = _empty(xd.shape, xd.dtype, "a prelu input gradient", xd.shape[0])
    dalpha = _empty(ad.shape, ad.dtype, "prelu's alpha gradient")
    positions = aidx_d.size
    partial = _empty((positions,), xd.dtype, "prelu's per-position sums")
    if dx.size:
        _launch_1d(_kelem.prelu_backward_dx, xd.dtype, dx.size, _flat(dyd), _flat(xd),
                   _flat(ad), aidx_d, _flat(dx))
    _launch_1d(_kelem.prelu_position_sums, xd.dtype, positions, _flat(dyd), _flat(xd),
               partial)
    _launch_1d(_kelem.prelu_alpha_sums, xd.dtype, dalpha.size, partial,
               to_device(order, "prelu's position order"),
               to_device(offsets, "prelu's position offsets"), _flat(dalpha))
    return _deliver(dx, on_device), _deliver(dalpha, on_device)


def _row_wise_forward(kernel, x, what):
    """A kernel over the rows of the last axis (softmax, log_softmax): ``(y, y)``."""
    _check_float("x", _meta(x))
    if len(x.shape) == 0:
        raise ValueError(f"x must have at least one axis ({what} runs over the last one)")
    on_device = _any_device(x)
    rows, k = _rows(x.shape)
    xd = to_device(x, "x", batch=x.shape[0])
    y = _empty(x.shape, x.dtype, f"a {what} output", x.shape[0])
    if k:
        _launch_1d(kernel, x.dtype, rows, xd.reshape(rows, k), y.reshape(rows, k))
    return _deliver(y, on_device), y


def _row_wise_backward(kernel, dy, y, what):
    """The backward of :func:`_row_wise_forward`'s kernel, from its output ``y``."""
    _check_like("dy", dy, y.shape, y.dtype)
    on_device = _any_device(dy)
    rows, k = _rows(y.shape)
    dyd = to_device(dy, "dy", batch=y.shape[0])
    dx = _empty(y.shape, y.dtype, f"a {what} input gradient", y.shape[0])
    if k:
        _launch_1d(kernel, y.dtype, rows, dyd.reshape(rows, k), y.reshape(rows, k),
                   dx.reshape(rows, k))
    return _deliver(dx, on_device)


def log_softmax_forward(x):
    return _row_wise_forward(_kelem.log_softmax_forward, x, "log_softmax")


def log_softmax_backward(dy, ctx):
    return _row_wise_backward(_kelem.log_softmax_backward, dy, ctx, "log_softmax")


def _rows(shape):
    """Softmax works on rows of the last axis: ``(rows, k)`` of any shape."""
    # tuple(): the simulator's device-array shapes refuse negative indices.
    shape = tuple(shape)
    k = shape[-1] if shape else 1
    return (math.prod(shape) // k if k else 0), k


def softmax_forward(x):
    return _row_wise_forward(_kelem.softmax_forward, x, "softmax")


def softmax_backward(dy, ctx):
    return _row_wise_backward(_kelem.softmax_backward, dy, ctx, "softmax")


# ----------------------------------------------------------------------------------------
# Fused losses
# ----------------------------------------------------------------------------------------


def _mean(values, divisor, square=False):
    """``sum(values) / divisor`` reduced on the device, as a host 0-d array of the values'
    dtype (see the module doc: a loss value always comes back to the host)."""
    dtype = values.dtype
    out = _empty((1,), dtype, "a loss value")
    threads = _reduce_threads(values.size)
    _kelem.reduce_sum[dtype][1, threads](values, out, max(divisor, 1), square)
    return np.asarray(out.copy_to_host()[0], dtype=dtype)


def _check_targets(logits, targets):
    _check_same_dtype("targets", _meta(targets), _meta(logits))
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"targets must have the shape of logits {tuple(logits.shape)}, got "
            f"{tuple(targets.shape)}")


def softmax_cross_entropy(logits, targets):
    _check_float("logits", _meta(logits))
    _check_rank("logits", _meta(logits), 2, "(N, K)")
    _check_targets(logits, targets)
    on_device = _any_device(logits, targets)
    n, k = logits.shape
    zd = to_device(logits, "logits", batch=n)
    td = to_device(targets, "targets", batch=n)
    row_loss = _empty((n,), logits.dtype, "the per-sample losses", n)
    dz = _empty((n, k), logits.dtype, "a loss gradient", n)
    if k:
        _launch_1d(_kloss.softmax_cross_entropy, logits.dtype, n, zd, td, row_loss, dz)
    return _mean(row_loss, n), _deliver(dz, on_device)


def sparse_softmax_cross_entropy(logits, labels):
    _check_float("logits", _meta(logits))
    _check_rank("logits", _meta(logits), 2, "(N, K)")
    n, k = logits.shape
    on_device = _any_device(logits, labels)
    if is_device_array(labels):
        # Values are checked by the kernel (a flag read back below), not on the host.
        if labels.dtype.kind not in "iu" or tuple(labels.shape) != (n,):
            raise TypeError(
                f"labels must be an integer array of shape ({n},), got a device array of "
                f"dtype {labels.dtype} and shape {tuple(labels.shape)}")
        if labels.dtype != np.int64:
            labels = to_device(labels.copy_to_host().astype(np.int64), "labels", n)
    else:
        _check_labels(labels, (n, k))
        labels = np.ascontiguousarray(labels, dtype=np.int64)
    zd = to_device(logits, "logits", batch=n)
    ld = to_device(labels, "labels", batch=n)
    row_loss = _empty((n,), logits.dtype, "the per-sample losses", n)
    dz = _empty((n, k), logits.dtype, "a loss gradient", n)
    bad = to_device(np.zeros(1, np.int32), "a label-check flag")
    _launch_1d(_kloss.sparse_softmax_cross_entropy, logits.dtype, n, zd, ld, row_loss, dz,
               bad)
    if is_device_array(labels) and bad.copy_to_host()[0]:
        host = labels.copy_to_host()
        wrong = host[(host < 0) | (host >= k)][0]
        raise ValueError(f"labels must lie in [0, {k}) for {k} classes, got label {wrong}")
    return _mean(row_loss, n), _deliver(dz, on_device)


def sigmoid_cross_entropy(logits, targets):
    _check_float("logits", _meta(logits))
    _check_targets(logits, targets)
    on_device = _any_device(logits, targets)
    size = math.prod(logits.shape)
    batch = logits.shape[0] if len(logits.shape) else None
    zd = to_device(logits, "logits", batch=batch)
    td = to_device(targets, "targets", batch=batch)
    elem_loss = _empty((size,), logits.dtype, "the per-element losses", batch)
    dz = _empty(logits.shape, logits.dtype, "a loss gradient", batch)
    _launch_1d(_kloss.sigmoid_cross_entropy, logits.dtype, size, _flat(zd), _flat(td),
               elem_loss, _flat(dz))
    return _mean(elem_loss, size), _deliver(dz, on_device)


# ----------------------------------------------------------------------------------------
# Optimizer updates (in place) and device helpers; not part of the kernel contract
# ----------------------------------------------------------------------------------------


class _InPlace:
    """Device views of the arrays an in-place update writes; NumPy ones are copied in and,
    by :meth:`finish`, back into the same NumPy arrays."""

    def __init__(self, w):
        self.dtype = w.dtype
        self.shape = tuple(w.shape)
        self._back = []

    def state(self, name, a):
        """``a`` (a weight or optimizer slot, written in place) on the device."""
        self._check(name, a)
        if is_device_array(a):
            return _flat(to_device(a, name))
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise ValueError(f"{name} must be a writeable C-contiguous array (updated in "
                             f"place)")
        d = to_device(a, name)
        self._back.append((d, a))
        return _flat(d)

    def read(self, name, a):
        """``a`` (a gradient: only read) on the device."""
        self._check(name, a)
        return _flat(to_device(a, name))

    def _check(self, name, a):
        meta = _meta(a)
        if not isinstance(meta, np.ndarray) or meta.dtype != self.dtype \
                or tuple(meta.shape) != self.shape:
            got = (f"{meta.dtype} {tuple(meta.shape)}" if isinstance(meta, np.ndarray)
                   else type(a).__name__)
            raise ValueError(f"{name} must be an array of dtype {self.dtype} and shape "
                             f"{self.shape} (the weight's), got {got}")

    def finish(self):
        for d, host in self._back:
            d.copy_to_host(host)


def sgd_update(w, g, velocity, lr, momentum, nesterov):
    """Keras's SGD step in place (:class:`fastcnn.optimizers.SGD`); ``velocity`` is None
    when ``momentum`` is 0."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    has_momentum = velocity is not None
    if has_momentum != (momentum > 0):
        raise ValueError(f"velocity must be given exactly when momentum > 0 (momentum="
                         f"{momentum}, velocity {'given' if has_momentum else 'None'})")
    wd = run.state("w", w)
    gd = run.read("g", g)
    md = run.state("velocity", velocity) if has_momentum else wd
    t = w.dtype.type
    _launch_1d(_kopt.sgd_update, w.dtype, wd.size, wd, gd, md, t(lr), t(momentum),
               has_momentum, bool(nesterov))
    run.finish()


def adam_update(w, g, m, v, lr, beta_1, beta_2, epsilon, iteration, v_hat=None):
    """Keras's Adam step in place (:class:`fastcnn.optimizers.Adam`); ``iteration`` is the
    1-based step count; ``v_hat`` the AMSGrad slot (None without AMSGrad)."""
    _check_float("w", _meta(w))
    if iteration < 1:
        raise ValueError(f"iteration must be >= 1 (the 1-based step count), got {iteration}")
    run = _InPlace(w)
    wd, gd = run.state("w", w), run.read("g", g)
    md, vd = run.state("m", m), run.state("v", v)
    vhd = run.state("v_hat", v_hat) if v_hat is not None else wd
    # Keras's expression in the weights' dtype, as the host optimizer computes it.
    t = w.dtype.type
    alpha = t(lr) * np.sqrt(t(1) - t(beta_2) ** t(iteration)) / (t(1) - t(beta_1) ** t(iteration))
    _launch_1d(_kopt.adam_update, w.dtype, wd.size, wd, gd, md, vd, vhd, t(alpha),
               t(1.0 - beta_1), t(1.0 - beta_2), t(epsilon), v_hat is not None)
    run.finish()


def rmsprop_update(w, g, velocity, average_gradient, momentum_slot, lr, rho, momentum,
                   epsilon):
    """Keras's RMSprop step in place (:class:`fastcnn.optimizers.RMSprop`);
    ``average_gradient`` is None unless centered, ``momentum_slot`` None when momentum is 0."""
    _check_float("w", _meta(w))
    if (momentum_slot is not None) != (momentum > 0):
        raise ValueError(f"momentum_slot must be given exactly when momentum > 0 "
                         f"(momentum={momentum})")
    run = _InPlace(w)
    wd, gd = run.state("w", w), run.read("g", g)
    veld = run.state("velocity", velocity)
    centered = average_gradient is not None
    avgd = run.state("average_gradient", average_gradient) if centered else wd
    momd = run.state("momentum_slot", momentum_slot) if momentum_slot is not None else wd
    t = w.dtype.type
    _launch_1d(_kopt.rmsprop_update, w.dtype, wd.size, wd, gd, veld, avgd, momd, t(lr),
               t(rho), t(1.0 - rho), t(epsilon), t(momentum), centered,
               momentum_slot is not None)
    run.finish()


def adagrad_update(w, g, accumulator, lr, epsilon):
    """Keras's Adagrad step in place (:class:`fastcnn.optimizers.Adagrad`)."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    wd, gd, ad = run.state("w", w), run.read("g", g), run.state("accumulator", accumulator)
    t = w.dtype.type
    _launch_1d(_kopt.adagrad_update, w.dtype, wd.size, wd, gd, ad, t(lr), t(epsilon))
    run.finish()


def adadelta_update(w, g, accumulated_grad, accumulated_delta_var, lr, rho, epsilon):
    """Keras's Adadelta step in place (:class:`fastcnn.optimizers.Adadelta`)."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    wd, gd = run.state("w", w), run.read("g", g)
    egd = run.state("accumulated_grad", accumulated_grad)
    edd = run.state("accumulated_delta_var", accumulated_delta_var)
    t = w.dtype.type
    _launch_1d(_kopt.adadelta_update, w.dtype, wd.size, wd, gd, egd, edd, t(lr), t(rho),
               t(1.0 - rho), t(epsilon))
    run.finish()


def adamax_update(w, g, m, u, lr, beta_1, beta_2, epsilon, iteration):
    """Keras's Adamax step in place (:class:`fastcnn.optimizers.Adamax`); ``iteration`` is
    the 1-based step count."""
    _check_float("w", _meta(w))
    if iteration < 1:
        raise ValueError(f"iteration must be >= 1 (the 1-based step count), got {iteration}")
    run = _InPlace(w)
    wd, gd = run.state("w", w), run.read("g", g)
    md, ud = run.state("m", m), run.state("u", u)
    t = w.dtype.type
    _launch_1d(_kopt.adamax_update, w.dtype, wd.size, wd, gd, md, ud, t(lr), t(1.0 - beta_1),
               t(beta_2), t(epsilon), t(1) - t(beta_1) ** t(iteration))
    run.finish()


def nadam_update(w, g, m, v, lr, beta_1, beta_2, epsilon, u_next, d_next, c_g, d_now,
                 bias_2):
    """Keras's Nadam step in place (:class:`fastcnn.optimizers.Nadam`): ``m_hat =
    u_next * m / d_next + c_g * g / d_now``, ``w -= m_hat * lr / (sqrt(v / bias_2) + eps)``
    (the step's coefficients from ``Nadam._coefficients``)."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    wd, gd = run.state("w", w), run.read("g", g)
    md, vd = run.state("m", m), run.state("v", v)
    t = w.dtype.type
    _launch_1d(_kopt.nadam_update, w.dtype, wd.size, wd, gd, md, vd, t(lr),
               t(1) - t(beta_1), t(1) - t(beta_2), t(epsilon), t(u_next), t(d_next), t(c_g),
               t(d_now), t(bias_2))
    run.finish()


def lion_update(w, g, m, lr, beta_1, beta_2):
    """Keras's Lion step in place (:class:`fastcnn.optimizers.Lion`)."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    wd, gd, md = run.state("w", w), run.read("g", g), run.state("m", m)
    t = w.dtype.type
    _launch_1d(_kopt.lion_update, w.dtype, wd.size, wd, gd, md, t(lr), t(beta_1),
               t(1) - t(beta_1), t(beta_2), t(1) - t(beta_2))
    run.finish()


def weight_decay_update(w, weight_decay, lr):
    """``w -= w * weight_decay * lr`` in place (the optimizers' ``weight_decay``)."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    wd = run.state("w", w)
    t = w.dtype.type
    _launch_1d(_kopt.weight_decay_update, w.dtype, wd.size, wd, t(weight_decay), t(lr))
    run.finish()


def ema_update(average, w, momentum, overwrite):
    """``average = momentum * average + (1 - momentum) * w`` in place (``use_ema``); with
    ``overwrite`` the weight takes the new average."""
    _check_float("w", _meta(w))
    run = _InPlace(w)
    ad, wd = run.state("average", average), run.state("w", w)
    t = w.dtype.type
    _launch_1d(_kopt.ema_update, w.dtype, wd.size, ad, wd, t(momentum),
               t(1) - t(momentum), bool(overwrite))
    run.finish()


def scale_gradient(g, a, b):
    """``g * a / b`` as a new array (gradient clipping by norm, loss-scale division)."""
    _check_float("g", _meta(g))
    on_device = _any_device(g)
    gd = to_device(g, "g")
    out = _empty(g.shape, g.dtype, "a clipped gradient")
    t = g.dtype.type
    _launch_1d(_kopt.scale_gradient, g.dtype, out.size, _flat(gd), t(a), t(b), _flat(out))
    return _deliver(out, on_device)


def clip_gradient(g, value):
    """``clip(g, -value, value)`` as a new array (``clipvalue``)."""
    _check_float("g", _meta(g))
    on_device = _any_device(g)
    gd = to_device(g, "g")
    out = _empty(g.shape, g.dtype, "a clipped gradient")
    _launch_1d(_kopt.clip_gradient, g.dtype, out.size, _flat(gd), g.dtype.type(value),
               _flat(out))
    return _deliver(out, on_device)


def _binary(kernel, a, b, *scalars, what):
    _check_float("a", _meta(a))
    _check_same_dtype("b", _meta(b), _meta(a))
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b must have the shape of a {tuple(a.shape)}, got {tuple(b.shape)}")
    on_device = _any_device(a, b)
    ad, bd = to_device(a, "a"), to_device(b, "b")
    out = _empty(a.shape, a.dtype, what)
    _launch_1d(kernel, a.dtype, out.size, _flat(ad), _flat(bd), *scalars, _flat(out))
    return _deliver(out, on_device)


def add_scaled(a, b, alpha):
    """``a + alpha * b`` as a new array (a regularizer's gradient joining a weight's)."""
    _check_float("a", _meta(a))
    return _binary(_kelem.add_scaled, a, b, a.dtype.type(alpha), what="a sum")


def multiply(a, b):
    """``a * b`` element-wise as a new array (dropout masks)."""
    return _binary(_kelem.multiply, a, b, what="a product")


def sum_squares(a) -> float:
    """``sum(a ** 2)`` as a Python float (an L2 penalty), reduced on the device."""
    _check_float("a", _meta(a))
    ad = to_device(a, "a")
    return float(_mean(_flat(ad), 1, square=True))

