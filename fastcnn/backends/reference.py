"""Readable NumPy loops: the oracle, and a walk through CNN backpropagation.

Every other backend is tested against this module, so it is written to be *read*: each
kernel is a loop over output positions whose body is the formula from the maths, and each
backward says why its gradient has the form it has. Speed is not a goal (only the channel
axis is vectorised inside a loop body), but every kernel runs in float32 and float64 and
returns the dtype it was given.

Layout
------
Activations are NHWC: ``x[n, r, c, ch]`` is channel ``ch`` of the pixel at row ``r``,
column ``c`` of image ``n``. Conv kernels are HWIO: ``w[a, b, ch, f]`` is the weight that
connects channel ``ch`` of the pixel at offset ``(a, b)`` inside a window to output
channel (filter) ``f``. ``stride = (sh, sw)`` and ``pad = ((top, bottom), (left, right))``
come precomputed from :mod:`fastcnn.shapes`.

Forward of a window op
----------------------
Pad the input (zeros for conv and average pooling, -inf for max pooling) to ``xp``. The
window of output position ``(i, j)`` is then the block ``xp[n, i*sh : i*sh+kh,
j*sw : j*sw+kw, :]`` and, for a conv::

    y[n, i, j, f] = b[f] + sum_{a, b, ch} xp[n, i*sh + a, j*sw + b, ch] * w[a, b, ch, f]

Backward: the chain rule, one tap at a time
-------------------------------------------
A backward receives ``dy = dL/dy`` (same shape as ``y``) and returns ``dL/d(input)`` for
each input. Each output ``y[n, i, j, f]`` is a sum of products; the chain rule says that an
input's gradient is the sum, over every output it touched, of ``dy`` at that output times
the local derivative of that output with respect to the input. So a backward loops over
the SAME output positions as the forward and, for each, *scatters* ``dy`` back to every
input that fed the position, weighted by the local derivative:

* ``d y[n,i,j,f] / d xp[n, i*sh+a, j*sw+b, ch] = w[a, b, ch, f]``
  so ``dxp[window] += w @ dy[n, i, j]``  (sum over f).
* ``d y[n,i,j,f] / d w[a, b, ch, f] = xp[n, i*sh+a, j*sw+b, ch]``
  so ``dw += window outer dy[n, i, j]``  (summed over every n, i, j: the same weight is
  used at every position, so all positions contribute to its gradient).
* ``d y[n,i,j,f] / d b[f] = 1``  so ``db = dy.sum over (n, i, j)``.

An input pixel belongs to several overlapping windows when the stride is smaller than
the kernel, which is why the scatter ACCUMULATES (``+=``). Gradients that land on padding
are simply discarded: padding is a constant, not an input, so ``dx`` is ``dxp`` with the
padding cropped off.

``ctx`` is a plain tuple holding what a backward needs (the padded input, indices, ...).
It is only meaningful to this module's own backward. It may hold references to the
forward's inputs, which callers must therefore not change in place between a forward and
its backward (no kernel ever changes its inputs).
"""
from __future__ import annotations

import math

import numpy as np

from ._checks import (
    check_dense_args as _check_dense_args,
    check_conv_args as _check_conv_args,
    check_depthwise_args as _check_depthwise_args,
    output_shape as _output_shape,
    check_pool_windows_touch_input as _check_pool_windows_touch_input,
    check_float as _check_float,
    check_same_dtype as _check_same_dtype,
    check_rank as _check_rank,
    check_labels as _check_labels,
    check_batchnorm_args as _check_batchnorm_args,
)

# ----------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, w, b, stride, pad):
    """2-D cross-correlation (what deep learning calls convolution), NHWC x HWIO."""
    _check_conv_args(x, w, b)
    n_batch, h, wd, c_in = x.shape
    kh, kw, _, c_out = w.shape
    sh, sw = stride
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")

    xp = _pad(x, pad, 0)
    y = np.empty((n_batch, ho, wo, c_out), dtype=x.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, i * sh : i * sh + kh, j * sw : j * sw + kw, :]  # (kh, kw, C)
                # patch[..., None] * w multiplies every tap (a, b, ch) with the weights of
                # all filters at once; summing over the taps leaves one value per filter.
                y[n, i, j, :] = np.sum(patch[..., None] * w, axis=(0, 1, 2))
    if b is not None:
        y += b
    return y, (xp, w, b is not None, x.shape, stride, pad)


def conv2d_backward(dy, ctx, need_dx=True):
    """``(dx, dw, db)`` of :func:`conv2d_forward` (``db`` is None when there was no bias).

    ``need_dx=False`` (a model's first layer: nothing consumes its input gradient) returns
    ``dx=None``; the fast backends then skip that work, here it is simply dropped.
    """
    xp, w, has_bias, x_shape, (sh, sw), ((top, _), (left, _)) = ctx
    kh, kw = w.shape[:2]
    n_batch, ho, wo, _ = dy.shape
    _, h, wd, _ = x_shape

    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                rows = slice(i * sh, i * sh + kh)
                cols = slice(j * sw, j * sw + kw)
                g = dy[n, i, j, :]  # (C_out,): dL/dy at this position, one value per filter
                # Each tap xp[n, r, c, ch] of this window reached output f through weight
                # w[a, b, ch, f]; the chain rule sums over the filters it fed:
                # (kh, kw, C_in, C_out) @ (C_out,) -> (kh, kw, C_in). '+=' because
                # overlapping windows send gradient to the same input pixel.
                dxp[n, rows, cols, :] += w @ g
                # Weight w[a, b, ch, f] multiplied the tap xp[n, r, c, ch] into output f,
                # so its gradient from this position is tap * g[f]: an outer product.
                dw += xp[n, rows, cols, :][..., None] * g
    # The bias is added once to every output position of its filter.
    db = dy.sum(axis=(0, 1, 2)) if has_bias else None
    # Gradient that landed on padding belongs to no input: crop it away.
    dx = dxp[:, top : top + h, left : left + wd, :].copy()
    return (dx if need_dx else None), dw, db


# ----------------------------------------------------------------------------------------
# Depthwise convolution
# ----------------------------------------------------------------------------------------
#
# A depthwise conv is a conv in which channels never mix: input channel ``ch`` is
# correlated with its OWN ``M`` small kernels ``w[:, :, ch, m]`` (M = Keras's
# depth_multiplier), giving ``M`` output channels, laid out ``ch*M + m``::
#
#     y[n, i, j, ch*M + m] = b[ch*M + m]
#                            + sum_{a, b} xp[n, i*sh + a, j*sw + b, ch] * w[a, b, ch, m]
#
# Compared with conv2d_forward's formula the sum over input channels is gone: each output
# reads ONE input channel, so the work is kh*kw multiply-adds per output value instead of
# kh*kw*C. (It is a conv2d with C groups of one channel each, which is how PyTorch spells
# it: conv2d(groups=C).) The windows, stride and padding are exactly a conv's.


def depthwise_conv2d_forward(x, w, b, stride, pad):
    """Depthwise 2-D cross-correlation, NHWC x ``(kh, kw, C, M)`` -> ``(N, Ho, Wo, C*M)``."""
    _check_depthwise_args(x, w, b)
    n_batch, h, wd, c = x.shape
    kh, kw, _, m = w.shape
    sh, sw = stride
    ho, wo = _output_shape((h, wd), (kh, kw), stride, pad, "kernel")

    xp = _pad(x, pad, 0)
    y = np.empty((n_batch, ho, wo, c * m), dtype=x.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                patch = xp[n, i * sh : i * sh + kh, j * sw : j * sw + kw, :]  # (kh, kw, C)
                # patch[..., None] * w pairs tap (a, b, ch) with ITS channel's M weights
                # w[a, b, ch, :] (broadcast over m). Summing over the taps (a, b) only,
                # NOT over ch, leaves one value per (ch, m); the row-major reshape of that
                # (C, M) block is exactly the channel order ch*M + m.
                y[n, i, j, :] = np.sum(patch[..., None] * w, axis=(0, 1)).reshape(c * m)
    if b is not None:
        y += b
    return y, (xp, w, b is not None, x.shape, stride, pad)


def depthwise_conv2d_backward(dy, ctx, need_dx=True):
    """``(dx, dw, db)`` of :func:`depthwise_conv2d_forward` (db None without a bias).

    The same scatter as conv2d_backward (read that one first), with the channel sum gone:
    the local derivatives of ``y[n, i, j, ch*M + m]`` are

    * ``w[a, b, ch, m]`` with respect to ``xp[n, i*sh + a, j*sw + b, ch]`` (and 0 with
      respect to every other channel: channels never mix), so an input tap collects
      gradient from its own channel's M outputs only: a sum over m, not over filters;
    * ``xp[n, i*sh + a, j*sw + b, ch]`` with respect to ``w[a, b, ch, m]``, summed over
      every position (n, i, j) because the kernel is shared by all of them;
    * 1 with respect to ``b[ch*M + m]``.
    """
    xp, w, has_bias, x_shape, (sh, sw), ((top, _), (left, _)) = ctx
    kh, kw, c, m = w.shape
    n_batch, ho, wo, _ = dy.shape
    _, h, wd, _ = x_shape

    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                rows = slice(i * sh, i * sh + kh)
                cols = slice(j * sw, j * sw + kw)
                # dL/dy at this position, as (C, M): g[ch, m] belongs to output ch*M + m.
                g = dy[n, i, j, :].reshape(c, m)
                # Tap (a, b, ch) fed outputs (ch, 0..M-1) through w[a, b, ch, 0..M-1]:
                # (kh, kw, C, M) * (C, M) summed over m -> (kh, kw, C). '+=' because
                # overlapping windows send gradient to the same input pixel.
                dxp[n, rows, cols, :] += np.sum(w * g, axis=3)
                # w[a, b, ch, m] multiplied tap (a, b, ch) into output (ch, m): its
                # gradient from this position is tap * g[ch, m] (no sum over ch: each
                # weight belongs to one channel).
                dw += xp[n, rows, cols, :][..., None] * g
    # The bias is added once to every output position of its channel.
    db = dy.sum(axis=(0, 1, 2)) if has_bias else None
    # Gradient that landed on padding belongs to no input: crop it away.
    dx = dxp[:, top : top + h, left : left + wd, :].copy()
    return (dx if need_dx else None), dw, db


# ----------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------


def maxpool2d_forward(x, pool, stride, pad):
    """Max over each window; padding is -inf so it can never be the maximum."""
    _check_float("x", x)
    _check_rank("x", x, 4, "(N, H, W, C)")
    n_batch, h, wd, c = x.shape
    ph, pw = pool
    sh, sw = stride
    ho, wo = _output_shape((h, wd), pool, stride, pad, "pool")
    _check_pool_windows_touch_input((h, wd), pool, stride, pad, (ho, wo))

    # Zero padding would be wrong: in a window of negative numbers, a padded 0 would win.
    xp = _pad(x, pad, -np.inf)
    y = np.empty((n_batch, ho, wo, c), dtype=x.dtype)
    # argmax[n, i, j, ch] = position k of the winner inside its window, k = a*pw + b
    # (row-major: a is the row offset, b the column offset; note pw, not ph).
    argmax = np.empty((n_batch, ho, wo, c), dtype=np.intp)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                window = xp[n, i * sh : i * sh + ph, j * sw : j * sw + pw, :]
                flat = window.reshape(ph * pw, c)  # row-major order of the taps
                # np.argmax returns the FIRST maximum: the tie rule of the contract.
                k = np.argmax(flat, axis=0)
                argmax[n, i, j, :] = k
                y[n, i, j, :] = flat[k, np.arange(c)]
    return y, (argmax, xp.shape, x.shape, pool, stride, pad)


def maxpool2d_backward(dy, ctx):
    """Routes each ``dy`` to the (first) maximum of its window; other inputs get 0."""
    argmax, xp_shape, x_shape, (ph, pw), (sh, sw), ((top, _), (left, _)) = ctx
    n_batch, ho, wo, c = dy.shape
    _, h, wd, _ = x_shape
    channels = np.arange(c)

    # y = max(window) is locally y = window[k*], so dy/dwindow is 1 at the winner k* and
    # 0 elsewhere: the whole gradient goes to one input (the first max on ties).
    dxp = np.zeros(xp_shape, dtype=dy.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                k = argmax[n, i, j, :]
                rows = i * sh + k // pw  # window-relative k -> padded coordinates
                cols = j * sw + k % pw
                # One winner per channel, so (rows, cols, channels) never repeats inside
                # this statement and the fancy-index '+=' is exact; overlapping windows
                # are accumulated across iterations of the loop.
                dxp[n, rows, cols, channels] += dy[n, i, j, :]
    # Crop with the SAME offsets the forward padded with.
    return dxp[:, top : top + h, left : left + wd, :].copy()


def avgpool2d_forward(x, pool, stride, pad):
    """Mean over each window's REAL (unpadded) elements, as Keras does for 'same'."""
    _check_float("x", x)
    _check_rank("x", x, 4, "(N, H, W, C)")
    n_batch, h, wd, c = x.shape
    ph, pw = pool
    sh, sw = stride
    ho, wo = _output_shape((h, wd), pool, stride, pad, "pool")
    _check_pool_windows_touch_input((h, wd), pool, stride, pad, (ho, wo))

    xp = _pad(x, pad, 0)  # zeros add nothing to a sum; the divisor ignores them
    count = _real_counts((h, wd), pool, stride, pad, (ho, wo), x.dtype)
    y = np.empty((n_batch, ho, wo, c), dtype=x.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                window = xp[n, i * sh : i * sh + ph, j * sw : j * sw + pw, :]
                y[n, i, j, :] = window.sum(axis=(0, 1)) / count[i, j]
    return y, (count, xp.shape, x.shape, pool, stride, pad)


def avgpool2d_backward(dy, ctx):
    """Spreads each ``dy`` evenly over the real elements of its window."""
    count, xp_shape, x_shape, (ph, pw), (sh, sw), ((top, _), (left, _)) = ctx
    n_batch, ho, wo, _ = dy.shape
    _, h, wd, _ = x_shape

    # y = (sum of the window) / count, so dy/d(each element) = 1 / count. Padded
    # elements also receive 1/count here, but they are cropped away below, and count
    # only counted real elements, so the real ones get exactly what they contributed.
    dxp = np.zeros(xp_shape, dtype=dy.dtype)
    for n in range(n_batch):
        for i in range(ho):
            for j in range(wo):
                dxp[n, i * sh : i * sh + ph, j * sw : j * sw + pw, :] += (
                    dy[n, i, j, :] / count[i, j]
                )
    return dxp[:, top : top + h, left : left + wd, :].copy()


# ----------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------


def dense_forward(x, w, b):
    """``y[n, u] = sum_d x[n, d] * w[d, u] + b[u]``."""
    _check_dense_args(x, w, b)
    y = x @ w
    if b is not None:
        y += b
    return y, (x, w, b is not None)


def dense_backward(dy, ctx, need_dx=True):
    """``(dx, dw, db)`` of :func:`dense_forward` (dx None when ``need_dx`` is False)."""
    x, w, has_bias = ctx
    # dy[n, u]/dx[n, d] = w[d, u]  ->  dx[n, d] = sum_u dy[n, u] * w[d, u]  = dy @ w.T
    dx = dy @ w.T if need_dx else None
    # dy[n, u]/dw[d, u] = x[n, d], summed over the batch  ->  dw = x.T @ dy
    dw = x.T @ dy
    # dy[n, u]/db[u] = 1, summed over the batch
    db = dy.sum(axis=0) if has_bias else None
    return dx, dw, db


# ----------------------------------------------------------------------------------------
# Batch normalisation (channels last, any rank: the rows are every position of every sample)
# ----------------------------------------------------------------------------------------
#
# x is seen as a matrix of R = x.size // C rows (every sample, every pixel) and C channels.
# Per channel c, with mean m_c and (biased) variance v_c:
#
#     x_hat[r, c] = (x[r, c] - m_c) / sqrt(v_c + eps),     y = gamma * x_hat + beta
#
# In training the statistics are the batch's own (batchnorm_statistics(x)); in inference
# they are the layer's moving statistics, constants. These are Keras's numbers: the mean,
# then the variance as the mean of the squared centred values (two passes, no E[x^2] -
# E[x]^2 cancellation), 1 / sqrt(v + eps), all in x's dtype.


def batchnorm_statistics(x):
    """``(mean, var)`` per channel (the last axis) over every other axis; var is biased."""
    _check_float("x", x)
    if x.ndim < 2:
        raise ValueError(f"x must have rank >= 2 (batch, ..., channels), got shape {x.shape}")
    flat = x.reshape(-1, x.shape[-1])
    mean = flat.mean(axis=0)
    centered = flat - mean
    var = np.einsum("ij,ij->j", centered, centered) / flat.shape[0]
    return mean, var


def batchnorm_forward(x, gamma, beta, mean, var, epsilon, training):
    """``y = gamma * (x - mean) / sqrt(var + epsilon) + beta`` per channel.

    ``training`` says that ``mean`` and ``var`` are x's own batch statistics (then the
    backward differentiates through them); False: constants (the moving statistics).
    """
    _check_batchnorm_args(x, gamma, beta, mean, var)
    flat = x.reshape(-1, x.shape[-1])
    inv_std = 1.0 / np.sqrt(var + epsilon)
    x_hat = flat - mean
    x_hat *= inv_std
    if gamma is not None:
        y = x_hat * gamma
        if beta is not None:
            y += beta
    else:
        y = x_hat + beta if beta is not None else x_hat.copy()
    return y.reshape(x.shape), (bool(training), x_hat, inv_std, gamma, beta is not None,
                                x.shape)


def batchnorm_backward(dy, ctx, need_dx=True):
    """``(dx, dgamma, dbeta)`` of :func:`batchnorm_forward` (dgamma / dbeta None where
    gamma / beta was None; dx None when need_dx is False).

    y = gamma * x_hat + beta, so ``dbeta = sum_r dy`` and ``dgamma = sum_r dy * x_hat``
    (each parameter is shared by the R rows of its channel).

    Inference: x_hat = (x - m) * s with s = 1 / sqrt(v + eps) a constant, so the map is
    affine per channel and ``dx = dy * gamma * s``.

    Training: m and v are functions of every x of the channel. With g = dy * gamma (the
    gradient with respect to x_hat) and s as above,
    ``d x_hat[r] / d x[q] = s * (delta_rq - 1/R - x_hat[r] * x_hat[q] / R)``
    (the mean's derivative is 1/R; the variance's is 2 (x[q] - m) / R, which through
    s = (v + eps)^(-1/2) becomes -s * x_hat[q] / R after the factors cancel), so

        dx[q] = s * (g[q] - mean_r(g) - x_hat[q] * mean_r(g * x_hat))
              = gamma * s * (dy[q] - dbeta / R - x_hat[q] * dgamma / R).
    """
    training, x_hat, inv_std, gamma, has_beta, shape = ctx
    dy = dy.reshape(-1, shape[-1])
    dbeta = dy.sum(axis=0)
    dgamma = np.einsum("ij,ij->j", dy, x_hat)
    grads = (dgamma if gamma is not None else None, dbeta if has_beta else None)
    if not need_dx:
        return (None, *grads)
    scale = inv_std if gamma is None else gamma * inv_std
    if not training:
        return (dy * scale).reshape(shape), *grads
    n = dy.shape[0]
    dx = x_hat * (dgamma / n)
    np.subtract(dy, dx, out=dx)
    dx -= dbeta / n
    dx *= scale
    return dx.reshape(shape), *grads


# ----------------------------------------------------------------------------------------
# Activations (element-wise, except softmax which works along the last axis)
# ----------------------------------------------------------------------------------------


def relu_forward(x):
    """``max(x, 0)``; NaN stays NaN so that a diverging model is noticed."""
    _check_float("x", x)
    y = np.maximum(x, x.dtype.type(0))
    return y, y


def relu_backward(dy, ctx):
    """``dy`` where the input was > 0, else 0 (the derivative at exactly 0 is taken as 0)."""
    y = ctx
    # y > 0 exactly where x > 0. np.where builds a new array: dy is never edited.
    return np.where(y > 0, dy, dy.dtype.type(0))


def sigmoid_forward(x):
    """``1 / (1 + exp(-x))``, computed without overflow for any x."""
    _check_float("x", x)
    y = _sigmoid(x)
    return y, y


def sigmoid_backward(dy, ctx):
    """``dy * y * (1 - y)``: the sigmoid's derivative written in terms of its output."""
    y = ctx
    return dy * y * (1 - y)


def tanh_forward(x):
    _check_float("x", x)
    y = np.tanh(x)
    return y, y


def tanh_backward(dy, ctx):
    """``dy * (1 - y**2)``: the derivative of tanh written in terms of its output."""
    y = ctx
    return dy * (1 - y * y)


def softmax_forward(x):
    """``exp(x) / sum(exp(x))`` along the last axis.

    Softmax does not change when a constant is subtracted from a row, so subtracting the
    row's maximum first makes every exponent <= 0: no overflow, and at least one term of
    the denominator is exactly 1, so no division by 0 either.
    """
    _check_float("x", x)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    y = e / e.sum(axis=-1, keepdims=True)
    return y, y


def softmax_backward(dy, ctx):
    """``y * (dy - sum(dy * y))`` along the last axis.

    The Jacobian is ``dy_i/dx_j = y_i * (delta_ij - y_j)``, so
    ``dx_j = sum_i dy_i * y_i * (delta_ij - y_j) = y_j * dy_j - y_j * sum_i dy_i * y_i``.
    """
    y = ctx
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))


# The activations beyond relu / sigmoid / tanh / softmax (Keras 3's definitions). Each
# backward recomputes the derivative from what its forward kept in ctx; "d" below is
# d(output)/d(input) at each element.

# SELU's fixed constants and GELU's, to double precision (TensorFlow's values).
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946
GELU_C = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


def relu_general_forward(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras's ``relu(x, negative_slope, max_value, threshold)``, step by step as Keras
    writes it: keep x above the threshold (else 0); clip to ``[0, max_value]`` if a maximum
    is given, or take ``max(., 0)`` when the threshold is 0; then subtract
    ``negative_slope * max(threshold - x, 0)``."""
    _check_float("x", x)
    slope, t = float(negative_slope), float(threshold)
    y = np.where(x > t, x, 0)
    if max_value is not None:
        y = np.clip(y, 0, float(max_value))
    elif t == 0:
        y = np.maximum(y, 0)
    if slope != 0:
        y = y - slope * np.maximum(t - x, 0)
    y = np.where(np.isnan(x), x, y)  # NaN propagates (np.where above turned it into 0)
    return y.astype(x.dtype), (x, slope, max_value, t)


def relu_general_backward(dy, ctx):
    """d = 1 where the kept part is x itself (above the threshold, and strictly inside the
    clip interval when it clips); + slope at and below the threshold; 0 elsewhere."""
    x, slope, max_value, t = ctx
    inside = x > t
    if max_value is not None:
        inside = inside & (x > 0) & (x < float(max_value))
    elif t == 0:
        inside = inside & (x > 0)
    d = np.where(inside, 1.0, 0.0) + np.where(x <= t, slope, 0.0)
    return (dy * d).astype(dy.dtype)


def relu6_forward(x):
    """``min(max(x, 0), 6)``."""
    return relu_general_forward(x, 0.0, 6.0, 0.0)


def relu6_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def leaky_relu_forward(x, negative_slope=0.2):
    """``x`` if ``x > 0`` else ``negative_slope * x``."""
    return relu_general_forward(x, negative_slope, None, 0.0)


def leaky_relu_backward(dy, ctx):
    return relu_general_backward(dy, ctx)


def elu_forward(x, alpha=1.0):
    """``x`` if ``x > 0`` else ``alpha * (exp(x) - 1)``."""
    _check_float("x", x)
    negative = alpha * np.expm1(np.minimum(x, 0))  # min: no overflow in the unused branch
    y = np.where(x > 0, x, negative).astype(x.dtype)
    return y, (x, float(alpha))


def elu_backward(dy, ctx):
    """d = 1 for x > 0, else ``alpha * exp(x)``."""
    x, alpha = ctx
    d = np.where(x > 0, 1.0, alpha * np.exp(np.minimum(x, 0)))
    return (dy * d).astype(dy.dtype)


def selu_forward(x):
    """``scale * elu(x, alpha)`` with SELU's fixed constants."""
    _check_float("x", x)
    y = SELU_SCALE * np.where(x > 0, x, SELU_ALPHA * np.expm1(np.minimum(x, 0)))
    return y.astype(x.dtype), x


def selu_backward(dy, ctx):
    x = ctx
    d = SELU_SCALE * np.where(x > 0, 1.0, SELU_ALPHA * np.exp(np.minimum(x, 0)))
    return (dy * d).astype(dy.dtype)


def _normal_cdf(x):
    # Phi(x) = erfc(-x / sqrt(2)) / 2, one element at a time with the standard library.
    return np.vectorize(lambda v: 0.5 * math.erfc(-v / math.sqrt(2.0)), otypes=[float])(x)


def _normal_pdf(x):
    return np.exp(-0.5 * np.square(x)) / math.sqrt(2.0 * math.pi)


def gelu_forward(x):
    """``x * Phi(x)``, Phi the standard normal CDF (Keras's 'gelu': the exact form)."""
    _check_float("x", x)
    return (x * _normal_cdf(x)).astype(x.dtype), x


def gelu_backward(dy, ctx):
    """d = ``Phi(x) + x * phi(x)``, phi the standard normal density."""
    x = ctx
    return (dy * (_normal_cdf(x) + x * _normal_pdf(x))).astype(dy.dtype)


def gelu_approximate_forward(x):
    """``x/2 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` (gelu(approximate=True))."""
    _check_float("x", x)
    u = GELU_C * (x + GELU_K * x**3)
    return (0.5 * x * (1 + np.tanh(u))).astype(x.dtype), x


def gelu_approximate_backward(dy, ctx):
    """d = ``(1 + tanh u)/2 + x/2 * (1 - tanh(u)^2) * du/dx``."""
    x = ctx
    u = GELU_C * (x + GELU_K * x**3)
    du = GELU_C * (1 + 3 * GELU_K * x**2)
    d = 0.5 * (1 + np.tanh(u)) + 0.5 * x * (1 - np.tanh(u) ** 2) * du
    return (dy * d).astype(dy.dtype)


def silu_forward(x):
    """``x * sigmoid(x)`` (Keras's 'silu', alias 'swish')."""
    _check_float("x", x)
    return (x * _sigmoid(x)).astype(x.dtype), x


def silu_backward(dy, ctx):
    """d = ``s + x * s * (1 - s)`` with ``s = sigmoid(x)``."""
    x = ctx
    s = _sigmoid(x)
    return (dy * (s + x * s * (1 - s))).astype(dy.dtype)


def softplus_forward(x):
    """``log(1 + exp(x))`` written as ``max(x, 0) + log1p(exp(-|x|))`` (no overflow)."""
    _check_float("x", x)
    y = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    return y.astype(x.dtype), x


def softplus_backward(dy, ctx):
    """d = ``sigmoid(x)``."""
    return (dy * _sigmoid(ctx)).astype(dy.dtype)


def softsign_forward(x):
    """``x / (1 + |x|)``."""
    _check_float("x", x)
    return (x / (1 + np.abs(x))).astype(x.dtype), x


def softsign_backward(dy, ctx):
    """d = ``1 / (1 + |x|)^2``."""
    return (dy / (1 + np.abs(ctx)) ** 2).astype(dy.dtype)


def hard_sigmoid_forward(x):
    """Keras 3's ``relu6(x + 3) / 6``: 0 below -3, 1 above 3, linear between."""
    _check_float("x", x)
    return (np.clip(x + 3, 0, 6) / 6).astype(x.dtype), x


def hard_sigmoid_backward(dy, ctx):
    """d = 1/6 on ``(-3, 3)``, else 0."""
    x = ctx
    return (dy * np.where((x > -3) & (x < 3), 1 / 6, 0.0)).astype(dy.dtype)


def hard_silu_forward(x):
    """``x * hard_sigmoid(x)`` (alias 'hard_swish')."""
    _check_float("x", x)
    return (x * np.clip(x + 3, 0, 6) / 6).astype(x.dtype), x


def hard_silu_backward(dy, ctx):
    """d = ``hard_sigmoid(x) + x * hard_sigmoid'(x)``: 0 up to -3, 1 from 3 on, ``(2x + 3)
    / 6`` between (at -3 and 3 themselves hard_sigmoid' is 0, as TensorFlow's relu6')."""
    x = ctx
    d = np.where(x <= -3, 0.0, np.where(x >= 3, 1.0, (2 * x + 3) / 6))
    return (dy * d).astype(dy.dtype)


def prelu_forward(x, alpha):
    """``x`` if ``x > 0`` else ``alpha * x``; ``alpha`` has x's shape without the batch
    axis, with 1 along the axes it is shared over (it broadcasts to every sample)."""
    _check_float("x", x)
    _check_same_dtype("alpha", alpha, x)
    if alpha.ndim != x.ndim - 1 or any(a not in (1, d) for a, d in zip(alpha.shape, x.shape[1:])):
        raise ValueError(f"alpha must have the shape of x without its batch axis, "
                         f"{x.shape[1:]}, with 1 along shared axes; got {alpha.shape}")
    y = np.where(x > 0, x, alpha * x)
    return y.astype(x.dtype), (x, alpha)


def prelu_backward(dy, ctx):
    """``(dx, dalpha)``: d/dx is 1 above 0, alpha below, 0 at 0; d/dalpha of each element
    is ``x`` where ``x < 0``, summed over every position alpha was broadcast to."""
    x, alpha = ctx
    dx = dy * np.where(x > 0, 1.0, np.where(x < 0, alpha, 0.0))
    per_element = dy * np.minimum(x, 0)
    broadcast_axes = (0,) + tuple(i + 1 for i in range(alpha.ndim)
                                  if alpha.shape[i] == 1 and x.shape[i + 1] != 1)
    dalpha = per_element.sum(axis=broadcast_axes, keepdims=True).reshape(alpha.shape)
    return dx.astype(dy.dtype), dalpha.astype(dy.dtype)


def exponential_forward(x):
    _check_float("x", x)
    y = np.exp(x)
    return y, y


def exponential_backward(dy, ctx):
    """d = ``exp(x)``, the forward output itself."""
    return dy * ctx


def log_softmax_forward(x):
    """``x - logsumexp(x)`` along the last axis (the row max subtracted first)."""
    _check_float("x", x)
    if x.ndim == 0:
        raise ValueError("x must have at least one axis for log_softmax, got a 0-d array")
    if x.size == 0:
        y = np.empty_like(x)
        return y, y
    shifted = x - x.max(axis=-1, keepdims=True)
    y = shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
    return y, y


def log_softmax_backward(dy, ctx):
    """``dy - softmax * sum(dy)`` along the last axis.

    ``d y_i / d x_j = delta_ij - softmax_j``, so ``dx_j = dy_j - softmax_j * sum_i dy_i``;
    softmax is ``exp(y)``.
    """
    y = ctx
    return dy - np.exp(y) * np.sum(dy, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------------------
# Fused losses: the forward and the gradient with respect to the logits in one call,
# because the fused gradient is simpler and far more accurate than chaining the
# backward of softmax (or sigmoid) with the backward of a log.
# ----------------------------------------------------------------------------------------


def softmax_cross_entropy(logits, targets):
    """Mean over rows of ``-sum_k t[n, k] * log_softmax(logits)[n, k]`` and its gradient.

    With ``s = softmax(z)`` and ``log s_k = z_k - logsumexp(z)``::

        d(-sum_k t_k log s_k)/dz_j = -t_j + (sum_k t_k) * s_j

    which is ``s - t`` for a one-hot (or any normalised) row; dividing by N makes it the
    gradient of the batch MEAN.
    """
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_same_dtype("targets", targets, logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    n = logits.shape[0]
    log_s = _log_softmax(logits)
    loss = -np.sum(targets * log_s) / n
    dlogits = (np.exp(log_s) * targets.sum(axis=1, keepdims=True) - targets) / n
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sparse_softmax_cross_entropy(logits, labels):
    """:func:`softmax_cross_entropy` with integer class labels ``(N,)`` in ``[0, K)``.

    A label ``k`` is the one-hot row ``e_k``, so the loss is ``-log_softmax[n, k]`` and the
    gradient is ``(softmax - e_k) / N``.
    """
    _check_float("logits", logits)
    _check_rank("logits", logits, 2, "(N, K)")
    _check_labels(labels, logits.shape)
    n = logits.shape[0]
    rows = np.arange(n)
    log_s = _log_softmax(logits)
    loss = -np.sum(log_s[rows, labels]) / n
    dlogits = np.exp(log_s)
    dlogits[rows, labels] -= 1  # one label per row: each (row, label) pair is unique
    dlogits /= n
    return np.asarray(loss, dtype=logits.dtype), dlogits


def sigmoid_cross_entropy(logits, targets):
    """Mean over ALL elements of ``-t log s(x) - (1 - t) log(1 - s(x))`` and its gradient.

    Written in the logits, the loss is ``log(1 + exp(x)) - x*t``; with
    ``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))`` no exponent is ever positive, so it
    is finite for any x. Its derivative is ``s(x) - t``, divided by the element count for
    the mean.
    """
    _check_float("logits", logits)
    _check_same_dtype("targets", targets, logits)
    if targets.shape != logits.shape:
        raise ValueError(
            f"targets must have the shape of logits {logits.shape}, got {targets.shape}"
        )
    x, t = logits, targets
    elementwise = np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))
    loss = elementwise.sum() / x.size
    dlogits = (_sigmoid(x) - t) / x.size
    return np.asarray(loss, dtype=x.dtype), dlogits


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------


def _sigmoid(x):
    # For x >= 0, 1 / (1 + exp(-x)); for x < 0 the algebraically equal exp(x) / (1 + exp(x)).
    # Both use e = exp(-|x|) <= 1, which never overflows (it may underflow to 0: harmless).
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1, e) / (1 + e)


def _log_softmax(z):
    # log softmax(z) = z - logsumexp(z); shifting by the row max keeps exp() <= 1.
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _pad(x, pad, value):
    """A new (N, H + top + bottom, W + left + right, C) array with x in the middle."""
    (top, bottom), (left, right) = pad
    n, h, w, c = x.shape
    xp = np.full((n, h + top + bottom, w + left + right, c), value, dtype=x.dtype)
    xp[:, top : top + h, left : left + w, :] = x
    return xp


def _real_counts(spatial, window, stride, pad, out, dtype):
    """``count[i, j]`` = how many real (unpadded) input elements window (i, j) covers."""
    (h, wd), (ph, pw), (sh, sw), ((top, _), (left, _)), (ho, wo) = (
        spatial, window, stride, pad, out,
    )
    count = np.empty((ho, wo), dtype=dtype)
    for i in range(ho):
        # Window rows in padded coordinates are [i*sh, i*sh + ph); the real rows are
        # [top, top + h). The count is the length of the overlap (same for columns).
        rows = min(i * sh + ph, top + h) - max(i * sh, top)
        for j in range(wo):
            cols = min(j * sw + pw, left + wd) - max(j * sw, left)
            count[i, j] = rows * cols
    return count


