"""Vectorised NumPy: strided views + one GEMM per op (the default backend).

No Python loop here runs over pixels or images; the only loops run over the ``kh*kw``
taps of a window (9 for a 3x3 kernel), each iteration being one whole-array NumPy
operation. What makes it fast, pass by pass over memory (``X`` = input size, ``Y`` =
output size, ``K = kh*kw``):

* **conv forward**: one padding copy (only when there is padding), one copy that turns the
  strided window view into the column matrix (``K*X/(sh*sw)`` elements written), then ONE
  GEMM ``cols (N*Ho*Wo, kh*kw*C) @ w (kh*kw*C, F)`` and the bias added in place on its
  output. The NHWC layout makes each window ``(kh, kw, C)`` a row of the column matrix in
  exactly the order of the HWIO kernel's rows, so ``w.reshape(kh*kw*C, F)`` is a free view:
  no transpose anywhere. BLAS does >95% of the arithmetic at near-peak speed.
* **conv backward**: ``dW = cols.T @ dy2d`` (one GEMM, reusing the forward's column
  matrix kept in ``ctx``), ``dcols = dy2d @ w2d.T`` (one GEMM), then col2im: K strided
  ``+=`` passes of size ``Y*C`` into the padded dx buffer. A strided slice ``+=`` is exact
  when windows overlap, which a fancy-index ``+=`` is not (it drops repeated indices).
* **max pool**: one window copy (``K*Y``), one argmax pass and one gather; backward K
  passes, each selecting ``dy`` where the stored argmax equals the tap and adding it into
  that tap's strided slice. Argmax indices are stored in the smallest integer type
  (uint8 for windows up to 16x16), so each backward pass reads 1 byte per output element.
  Non-overlapping windows without padding (stride == pool, the usual ``MaxPooling2D(2)``)
  take a fast path: each input pixel belongs to exactly one tap's slice, so the backward
  ASSIGNS instead of zero-filling and accumulating.
* **avg pool**: a sum over the strided window view (no copy) and one division by the count
  of real elements per window (computed from the padding with 1-D arithmetic, no padded
  ones-array); backward one division then K strided ``+=`` passes (assignments on the
  non-overlapping fast path).
* **dense**: GEMMs. **Activations and losses**: a few element-wise passes, numerically
  stable, never editing an input.

float32 stays float32 throughout: constants are created in the input's dtype and NumPy 2
(NEP 50) keeps Python scalars from promoting arrays.

``ctx`` is a tuple private to this module. It may hold references to the forward's inputs
(dense keeps ``x``; a 1x1 stride-1 unpadded conv's column matrix is a view of ``x``), so
callers must not change those in place before the matching backward.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _buffers
from ._checks import (
    check_conv_args as _check_conv_args,
    check_depthwise_args as _check_depthwise_args,
    output_shape as _output_shape,
    check_pool_windows_touch_input as _check_pool_windows_touch_input,
    check_float as _check_float,
    check_same_dtype as _check_same_dtype,
    check_rank as _check_rank,
    check_labels as _check_labels,
)

# ----------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, stride, pad):
    _check_conv_args(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")

    xp = _pad(x, pad, 0)
    # (N, Ho, Wo, kh, kw, C) in this order: reshaping to 2-D puts tap (a, b, ch) at column
    # (a*kw + b)*C + ch, the same row index the HWIO kernel has after its reshape.
    cols = _columns(_windows(xp, (kh, kw), stride, (ho, wo)), stride, xp.shape[1:3])
    w2d = w.reshape(kh * kw * c, f)
    y2d = np.matmul(cols, w2d, **_buffers.out_arg((n * ho * wo, f), x.dtype))
    if b is not None:
        y2d += b
    return y2d.reshape(n, ho, wo, f), (cols, w, b is not None, x.shape, stride, pad)


def conv2d_backward(dy, ctx, need_dx=True):
    cols, w, has_bias, x_shape, stride, pad = ctx
    kh, kw, c, f = w.shape
    n, ho, wo, _ = dy.shape
    dy2d = dy.reshape(n * ho * wo, f)  # a view; never written to

    dw = (cols.T @ dy2d).reshape(w.shape)
    db = dy2d.sum(axis=0) if has_bias else None
    if not need_dx:  # a first layer: skip the second GEMM and col2im
        return None, dw, db
    dcols = np.matmul(dy2d, w.reshape(kh * kw * c, f).T,
                      **_buffers.out_arg(cols.shape, dy.dtype)).reshape(n, ho, wo, kh, kw, c)
    dx = _scatter_taps(
        lambda a, b: dcols[:, :, :, a, b, :], x_shape, (kh, kw), stride, pad, (ho, wo), dy.dtype
    )
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# Depthwise convolution
# ----------------------------------------------------------------------------------------
# No channel sum, so no GEMM: each output value is kh*kw multiply-adds. Every pass is one
# np.einsum over the strided window view (N, Ho, Wo, kh, kw, C) of the padded input,
# which reduces the taps in its inner loop without materialising anything. Measured at 1
# thread (float32, batch 8, 3x3, MobileNetV2 shapes) against one ``y += view * w[a, b]``
# pass per tap (the first guess: K passes reading and writing y, with a temporary each):
# forward 9.4 vs 21.6 ms on 56x56x144 s1, 8.2 vs 30.1 ms on 112x112x96 s2; dW as one
# einsum 6.3 vs 11.7 (einsum per tap) vs 18.6 ms (product + sum per tap). dx is the
# stride-1 correlation of dy, spread onto the input grid (zeros between rows/columns for
# stride > 1) and padded, with the kernel flipped: one einsum again, 11 vs 23-46 ms for the
# per-tap strided ``+=`` scatter of conv's col2im at s1, about even at s2 (37 vs 41 ms).
# A depth multiplier M > 1 runs one einsum per m (strided channel views): with m innermost
# einsum's inner loop is 2 long (forward 24 vs 15 ms at 56x56x32, M=2).


def depthwise_conv2d_forward(x, w, b, stride, pad):
    _check_depthwise_args(x, w, b)
    n, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")

    xp = _pad(x, pad, 0)
    v = _windows(xp, (kh, kw), stride, (ho, wo))  # (N, Ho, Wo, kh, kw, C), a view
    y = _buffers.output((n, ho, wo, c * m), x.dtype)
    if m == 1:
        np.einsum("nhwabc,abc->nhwc", v, w[:, :, :, 0], out=y)
    else:
        y5 = y.reshape(n, ho, wo, c, m)  # channel c*M + m is y5[..., c, m]
        for k in range(m):
            np.einsum("nhwabc,abc->nhwc", v, w[:, :, :, k], out=y5[..., k])
    if b is not None:
        y += b
    return y, (xp, w, b is not None, x.shape, stride, pad)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    xp, w, has_bias, x_shape, stride, pad = ctx
    kh, kw, c, m = w.shape
    n, ho, wo, _ = dy.shape
    _, h, wd, _ = x_shape
    (sh, sw), ((top, _), (left, _)) = stride, pad

    v = _windows(xp, (kh, kw), stride, (ho, wo))
    # dw[a, b, c, m] = sum over (n, i, j) of tap (a, b) of channel c times dy (c, m).
    dw = np.einsum("nhwabc,nhwcm->abcm", v, dy.reshape(n, ho, wo, c, m))
    db = dy.sum(axis=(0, 1, 2)) if has_bias else None
    if not need_dx:
        return None, dw, db

    # dx[r, s] = sum over (i, a) with i*sh + a = r + top (and the same along columns) of
    # dy[i] * w[a]: a correlation of dy, placed at rows i*sh + (kh - 1 - top) of a zero
    # grid of (h + kh - 1) rows, with the kernel flipped (tap a reads grid row r + kh-1-a).
    # dy values that fall past the grid only ever reached padding.
    grid = _buffers.output((n, h + kh - 1, wd + kw - 1, c * m), dy.dtype, zero=True)
    oh, ow = kh - 1 - top, kw - 1 - left
    ni = min(ho, (h + kh - 2 - oh) // sh + 1)
    nj = min(wo, (wd + kw - 2 - ow) // sw + 1)
    grid[:, oh : oh + sh * (ni - 1) + 1 : sh, ow : ow + sw * (nj - 1) + 1 : sw, :] = (
        dy[:, :ni, :nj, :])
    w_flip = w[::-1, ::-1]
    dx = _buffers.output(x_shape, dy.dtype)
    if m == 1:
        np.einsum("nhwabc,abc->nhwc", _windows(grid, (kh, kw), (1, 1), (h, wd)),
                  w_flip[:, :, :, 0], out=dx)
    else:
        part = _buffers.output(x_shape, dy.dtype)
        for k in range(m):
            # Channel (c, k) of the grid is a strided view; each m adds its own pass.
            vk = _windows(grid[..., k::m], (kh, kw), (1, 1), (h, wd))
            np.einsum("nhwabc,abc->nhwc", vk, w_flip[:, :, :, k], out=dx if k == 0 else part)
            if k:
                dx += part
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------


def maxpool2d_forward(x, pool, stride, pad):
    _check_float("x", x)
    _check_rank("x", x, 4, "(N, H, W, C)")
    n, h, wd, c = x.shape
    ph, pw = pool
    ho, wo = _output_shape((h, wd), pool, stride, pad, "pool")
    _check_pool_windows_touch_input((h, wd), pool, stride, pad, (ho, wo))

    xp = _pad(x, pad, -np.inf)  # -inf never wins a max; a 0 would beat negative inputs
    windows = _windows(xp, pool, stride, (ho, wo)).reshape(n, ho, wo, ph * pw, c)
    # np.argmax returns the FIRST maximum in the row-major (a*pw + b) tap order: the
    # contract's tie rule. It also returns the first NaN, so NaNs propagate to y.
    arg = windows.argmax(axis=3)
    y = np.take_along_axis(windows, arg[:, :, :, None, :], axis=3)[:, :, :, 0, :]
    arg = arg.astype(np.min_scalar_type(ph * pw - 1))
    return y, (arg, x.shape, pool, stride, pad)


def maxpool2d_backward(dy, ctx):
    arg, x_shape, (ph, pw), stride, pad = ctx
    n, ho, wo, _ = dy.shape
    zero = dy.dtype.type(0)
    # Tap (a, b) receives dy exactly where it was its window's (first) maximum.
    return _scatter_taps(
        lambda a, b: np.where(arg == a * pw + b, dy, zero),
        x_shape, (ph, pw), stride, pad, (ho, wo), dy.dtype,
    )


def avgpool2d_forward(x, pool, stride, pad):
    _check_float("x", x)
    _check_rank("x", x, 4, "(N, H, W, C)")
    n, h, wd, c = x.shape
    ho, wo = _output_shape((h, wd), pool, stride, pad, "pool")
    _check_pool_windows_touch_input((h, wd), pool, stride, pad, (ho, wo))

    xp = _pad(x, pad, 0)
    count = _real_counts((h, wd), pool, stride, pad, (ho, wo), x.dtype)
    y = _windows(xp, pool, stride, (ho, wo)).sum(axis=(3, 4))
    y /= count
    return y, (count, x.shape, pool, stride, pad)


def avgpool2d_backward(dy, ctx):
    count, x_shape, pool, stride, pad = ctx
    n, ho, wo, _ = dy.shape
    g = dy / count  # every element of a window receives dy / (real elements in it)
    return _scatter_taps(lambda a, b: g, x_shape, pool, stride, pad, (ho, wo), dy.dtype)


# ----------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------


# One BLAS GEMM (x @ w, its transposes for the backward), as in the reference: the
# registry binds the reference's dense_forward / dense_backward here (fastcnn info: "=reference").
REUSES = {"dense": "reference", "batchnorm": "reference", "batchnorm_statistics": "reference"}


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


def relu_forward(x):
    _check_float("x", x)
    y = np.maximum(x, x.dtype.type(0), **_buffers.out_arg(x.shape, x.dtype))  # keeps NaN
    return y, y


def relu_backward(dy, ctx):
    # y > 0 exactly where x > 0: the derivative at 0 (and at NaN) is 0.
    # np.where(y > 0, dy, 0) is right but branches per element (10 ms on 2.8M random
    # signs); dy * (y > 0) is fast but turns an inf or NaN dy into NaN where it must give 0.
    # So: AND dy's bits with an all-ones / all-zeros mask: exactly dy or +0, any dy.
    bits = np.dtype(f"u{dy.dtype.itemsize}")
    mask = np.greater(ctx, 0, out=_buffers.output(ctx.shape, bits))  # 1 or 0
    np.negative(mask, out=mask)  # 1 -> all ones (unsigned wrap-around), 0 -> 0
    np.bitwise_and(mask, dy.view(bits), out=mask)
    return mask.view(dy.dtype)


def sigmoid_forward(x):
    _check_float("x", x)
    y = _sigmoid(x)
    return y, y


def sigmoid_backward(dy, ctx):
    y = ctx
    dx = np.subtract(y.dtype.type(1), y, **_buffers.out_arg(y.shape, y.dtype))
    np.multiply(y, dx, out=dx)
    return np.multiply(dy, dx, out=dx)   # dy * (y * (1 - y)), one buffer


def tanh_forward(x):
    _check_float("x", x)
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, ctx):
    y = ctx
    # dy * (1 - y*y) in ONE fresh buffer (no temporaries): same operations, same rounding.
    dx = np.multiply(y, y, **_buffers.out_arg(y.shape, y.dtype))
    np.subtract(dx.dtype.type(1), dx, out=dx)
    np.multiply(dy, dx, out=dx)
    return dx


def softmax_forward(x):
    _check_float("x", x)
    e = np.subtract(x, x.max(axis=-1, keepdims=True), **_buffers.out_arg(x.shape, x.dtype))
    np.exp(e, out=e)  # e is our own temporary
    e /= e.sum(axis=-1, keepdims=True)
    return e, e


def softmax_backward(dy, ctx):
    y = ctx
    # y * (dy - sum(dy * y)) in one buffer: the same operations in the same order
    t = np.multiply(dy, y, **_buffers.out_arg(y.shape, np.result_type(dy, y)))
    s = np.sum(t, axis=-1, keepdims=True)
    np.subtract(dy, s, out=t)
    return np.multiply(y, t, out=t)


# The other activations (the ReLU family, ELU/SELU, GELU, SiLU, softplus, softsign, the
# hard ones, exponential, log_softmax): vectorised NumPy shared with the compiled CPU
# backends (fastcnn/backends/_activations.py, which documents the formulas).
from ._activations import (  # noqa: E402
    relu_general_forward, relu_general_backward, relu6_forward, relu6_backward,
    leaky_relu_forward, leaky_relu_backward, elu_forward, elu_backward,
    selu_forward, selu_backward, gelu_forward, gelu_backward,
    gelu_approximate_forward, gelu_approximate_backward, silu_forward, silu_backward,
    softplus_forward, softplus_backward, softsign_forward, softsign_backward,
    hard_sigmoid_forward, hard_sigmoid_backward, hard_silu_forward, hard_silu_backward,
    exponential_forward, exponential_backward, log_softmax_forward, log_softmax_backward,
    prelu_forward, prelu_backward,
)


# ----------------------------------------------------------------------------------------
# Fused losses
# ----------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, targets):
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_same_dtype("targets", targets, logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    n = logits.shape[0]
    log_s, s = _log_softmax_and_softmax(logits)
    loss = -np.vdot(targets, log_s) / n
    dlogits = s
    dlogits *= targets.sum(axis=1, keepdims=True)
    dlogits -= targets
    dlogits /= n
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sparse_softmax_cross_entropy(logits, labels):
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_labels(labels, logits.shape)
    n = logits.shape[0]
    rows = np.arange(n)
    log_s, s = _log_softmax_and_softmax(logits)
    loss = -log_s[rows, labels].sum() / n
    dlogits = s
    dlogits[rows, labels] -= 1  # exactly one (row, label) pair per row: no repeats
    dlogits /= n
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sigmoid_cross_entropy(logits, targets):
    _check_float("logits", logits)
    _check_same_dtype("targets", targets, logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    x, t = logits, targets
    e = np.exp(-np.abs(x))  # <= 1: shared by the loss and the sigmoid, never overflows
    # log(1 + exp(x)) - x*t, written as max(x, 0) + log1p(exp(-|x|)) - x*t
    elementwise = np.maximum(x, 0) - x * t + np.log1p(e)
    loss = elementwise.sum() / x.size
    s = np.where(x >= 0, 1, e) / (1 + e)
    s -= t
    s /= x.size
    return np.asarray(loss, dtype=x.dtype), s


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _sigmoid(x):
    # (1 if x >= 0 else e) / (1 + e) with e = exp(-|x|) <= 1: no overflow for any x.
    # The select is np.maximum(e, x >= 0): 1 where x >= 0 (e <= 1), e where x < 0 (e >= 0),
    # NaN for a NaN x. np.where would branch per element (3x slower on random signs).
    e = np.abs(x, **_buffers.out_arg(x.shape, x.dtype))
    np.negative(e, out=e)
    np.exp(e, out=e)
    y = np.maximum(e, x >= 0, dtype=x.dtype, **_buffers.out_arg(x.shape, x.dtype))
    e += 1
    y /= e
    return y


def _log_softmax_and_softmax(z):
    shifted = z - z.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    sums = e.sum(axis=1, keepdims=True)
    shifted -= np.log(sums)  # now log_softmax
    e /= sums  # now softmax
    return shifted, e


def _pad(x, pad, value):
    """x itself when there is no padding (read-only use), else a new padded array."""
    (top, bottom), (left, right) = pad
    if not (top or bottom or left or right):
        return x
    n, h, w, c = x.shape
    # In x's dtype: the -inf fill is created in float32 for float32 input.
    xp = _buffers.output((n, h + top + bottom, w + left + right, c), x.dtype)
    xp.fill(value)
    xp[:, top : top + h, left : left + w, :] = x
    return xp


def _columns(v, stride, spatial):
    """The window view ``v`` (N, Ho, Wo, kh, kw, C) of the padded input as the column
    matrix: a view of it for a 1x1 stride-1 kernel and for one window covering the whole
    padded image, else a copy into an aligned (pooled) buffer."""
    n, ho, wo, kh, kw, c = v.shape
    if (kh, kw, *stride) == (1, 1, 1, 1) or (kh, kw) == tuple(spatial):
        return v.reshape(n * ho * wo, kh * kw * c)
    cols = _buffers.output((n * ho * wo, kh * kw * c), v.dtype)
    cols.reshape(v.shape)[...] = v
    return cols


def _windows(xp, window, stride, out):
    """Read-only strided view ``(N, Ho, Wo, kh, kw, C)`` of every window of ``xp``.

    ``view[n, i, j, a, b, ch] = xp[n, i*sh + a, j*sw + b, ch]``: no data is copied.
    ``out`` comes from padded_output_shape, so the last window ends inside ``xp``.
    """
    (kh, kw), (sh, sw), (ho, wo) = window, stride, out
    n, _, _, c = xp.shape
    s_n, s_h, s_w, s_c = xp.strides
    return as_strided(
        xp,
        shape=(n, ho, wo, kh, kw, c),
        strides=(s_n, s_h * sh, s_w * sw, s_h, s_w, s_c),
        writeable=False,
    )


def _scatter_taps(tap_values, x_shape, window, stride, pad, out, dtype):
    """col2im: ``dx`` with ``tap_values(a, b)`` (N, Ho, Wo, C) added at every window's tap.

    Tap ``(a, b)`` of window ``(i, j)`` sits at padded position ``(i*sh + a, j*sw + b)``,
    so all windows' tap (a, b) form ONE strided slice of the padded buffer, and within a
    slice no position repeats: ``+=`` on it is exact. Overlaps between windows happen only
    ACROSS taps, which the loop accumulates one after the other.
    """
    n, h, wd, c = x_shape
    (kh, kw), (sh, sw), ((top, bottom), (left, right)), (ho, wo) = window, stride, pad, out
    padded = top or bottom or left or right
    if (sh, sw) == (kh, kw) and not padded:
        # Non-overlapping windows tiling the top-left (Ho*kh, Wo*kw) block: each pixel of
        # that block is in exactly one tap's slice, so assign (no zero fill, no read-back)
        # and zero only the rows/columns no window reached.
        dx = _buffers.output(x_shape, dtype)
        dx[:, ho * kh :, :, :] = 0
        dx[:, : ho * kh, wo * kw :, :] = 0
        for a in range(kh):
            for b in range(kw):
                dx[:, a : ho * kh : kh, b : wo * kw : kw, :] = tap_values(a, b)
        return dx
    dxp = _buffers.output((n, h + top + bottom, wd + left + right, c), dtype, zero=True)
    for a in range(kh):
        for b in range(kw):
            dxp[:, a : a + sh * (ho - 1) + 1 : sh, b : b + sw * (wo - 1) + 1 : sw, :] += (
                tap_values(a, b)
            )
    if not padded:
        return dxp
    # Crop with the same offsets the forward padded with.
    dx = _buffers.output(x_shape, dtype)
    dx[...] = dxp[:, top : top + h, left : left + wd, :]
    return dx


def _real_counts(spatial, window, stride, pad, out, dtype):
    """``(Ho, Wo, 1)``: the number of real (unpadded) elements in each window."""
    (h, wd), (kh, kw), (sh, sw), ((top, _), (left, _)), (ho, wo) = (
        spatial, window, stride, pad, out,
    )
    # Window i covers padded rows [i*sh, i*sh + kh); real rows are [top, top + h).
    starts = np.arange(ho) * sh
    rows = np.minimum(starts + kh, top + h) - np.maximum(starts, top)
    starts = np.arange(wo) * sw
    cols = np.minimum(starts + kw, left + wd) - np.maximum(starts, left)
    return np.multiply.outer(rows, cols).astype(dtype)[:, :, None]


