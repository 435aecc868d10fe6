"""Dilated (atrous) convolution on the ordinary conv kernels: TensorFlow's space-to-batch.

Used by Conv2D, DepthwiseConv2D, SeparableConv2D and Conv2DTranspose for
``dilation_rate != (1, 1)``. No backend kernel knows about dilation; this module turns a
dilated conv into an undilated one, exactly (same products, same sums), so every backend's
fast conv kernel (and its backward) does the work.

The trick, along one axis with dilation ``d``, stride 1, on the padded input ``xp``: output
row ``o`` reads rows ``o + a*d`` (``a`` the kernel tap). Write ``o = p + q*d`` with phase
``p = o mod d``: then it reads rows ``p + (q + a)*d``, i.e. rows ``q + a`` of the *phase
image* ``xp[p::d]``. So output rows of phase ``p`` are an ordinary (undilated, stride 1,
'valid') conv of the phase image ``xp[p::d]``. In 2-D there are ``dh*dw`` phase images of
size ``(Hp/dh, Wp/dw)``; stacked on the batch axis (``N*dh*dw`` images) they take ONE kernel
call, and the outputs are interleaved back (``y[:, p::dh, r::dw] = phase (p, r)``). The padded
input is first zero-extended to multiples of ``(dh, dw)``; the rows this adds only reach
outputs past the real output size, which are cropped.

Backward: ``dy`` is spread to the phase batch the same way (zeros at the cropped positions),
the kernel's own backward gives the phase batch's input gradient, the kernel gradient and
the bias gradient (sums over all phases, which is what the dilated conv's are), and the
input gradient is interleaved back and the padding cropped.

Keras refuses ``strides > 1`` with ``dilation_rate > 1`` for Conv2D and Conv2DTranspose but
not for the depthwise and separable convs, which its TensorFlow backend computes at stride 1
and subsamples; :func:`conv_forward` does the same for them.

This is NumPy data movement at the layer level (pad, reshape, transpose), so a layer using it
with a dilation > 1 does not run on device arrays (``runs_on_device`` False for it).
"""
from __future__ import annotations

import numpy as np

from .. import shapes


def effective_kernel(kernel_size, dilation_rate):
    """``(k - 1) * d + 1`` per axis: the span of a dilated kernel."""
    return tuple((k - 1) * d + 1 for k, d in zip(kernel_size, dilation_rate))


def window(spatial, kernel_size, strides, padding, dilation_rate, owner=None):
    """The :class:`fastcnn.shapes.Window` of a dilated window op (its effective kernel)."""
    return shapes.Window(spatial, effective_kernel(kernel_size, dilation_rate), strides,
                         padding, "kernel_size", owner)


def output_shape_and_pad(spatial, kernel_size, strides, padding, dilation_rate):
    """``((Ho, Wo), pad)`` of a dilated window op (TensorFlow's rule with the effective kernel)."""
    return shapes.window_output_shape(spatial, effective_kernel(kernel_size, dilation_rate),
                                      strides, padding, what="kernel_size")


def _op(backend, op, which):
    return getattr(backend, f"{op}_{which}")


def _to_phases(xp, dh, dw):
    """``(N, Hp, Wp, C)`` (Hp, Wp multiples of dh, dw) -> ``(dh*dw*N, Hp/dh, Wp/dw, C)``."""
    n, hp, wp, c = xp.shape
    v = xp.reshape(n, hp // dh, dh, wp // dw, dw, c).transpose(2, 4, 0, 1, 3, 5)
    return np.ascontiguousarray(v).reshape(dh * dw * n, hp // dh, wp // dw, c)


def _from_phases(z, n, dh, dw):
    """Inverse of :func:`_to_phases`: ``(dh*dw*N, Hq, Wq, C)`` -> ``(N, Hq*dh, Wq*dw, C)``."""
    _, hq, wq, c = z.shape
    v = z.reshape(dh, dw, n, hq, wq, c).transpose(2, 3, 0, 4, 1, 5)
    return np.ascontiguousarray(v).reshape(n, hq * dh, wq * dw, c)


def _dilated_forward(backend, op, x, w, b, pad, dilation):
    n, h, wd, _ = x.shape
    kh, kw = w.shape[:2]
    dh, dw = dilation
    (top, bottom), (left, right) = pad
    hp, wp = h + top + bottom, wd + left + right
    ho, wo = hp - (kh - 1) * dh, wp - (kw - 1) * dw
    hq, wq = -(-hp // dh), -(-wp // dw)          # phase image size (ceil)
    xp = np.zeros((n, hq * dh, wq * dw, x.shape[3]), dtype=x.dtype)
    xp[:, top:top + h, left:left + wd, :] = x
    z, ctx = _op(backend, op, "forward")(_to_phases(xp, dh, dw), w, b, (1, 1),
                                          ((0, 0), (0, 0)))
    y = _from_phases(z, n, dh, dw)[:, :ho, :wo, :]
    return np.ascontiguousarray(y), (ctx, x.shape, z.shape, pad, dilation)


def _dilated_backward(backend, op, dy, state, need_dx):
    ctx, x_shape, z_shape, pad, (dh, dw) = state
    n, h, wd, _ = x_shape
    _, hqo, wqo, f = z_shape
    (top, _), (left, _) = pad
    dfull = np.zeros((n, hqo * dh, wqo * dw, f), dtype=dy.dtype)
    dfull[:, :dy.shape[1], :dy.shape[2], :] = dy
    dz = _to_phases(dfull, dh, dw)
    dxq, dw_, db = _op(backend, op, "backward")(dz, ctx, need_dx)
    if not need_dx:
        return None, dw_, db
    dxp = _from_phases(dxq, n, dh, dw)
    return np.ascontiguousarray(dxp[:, top:top + h, left:left + wd, :]), dw_, db


def conv_forward(backend, x, w, b, strides, pad, dilation, op="conv2d"):
    """``(y, ctx)`` of the kernel op ``op`` ('conv2d' or 'depthwise_conv2d', same signature)
    with ``dilation``: the backend's op itself when the dilation is 1, else space-to-batch
    (module doc). ``pad`` is the explicit ``((t, b), (l, r))`` of the dilated op
    (:func:`output_shape_and_pad`)."""
    strides, dilation = tuple(strides), tuple(dilation)
    if dilation == (1, 1):
        y, ctx = _op(backend, op, "forward")(x, w, b, strides, pad)
        return y, ("plain", ctx)
    if strides == (1, 1):
        y, state = _dilated_forward(backend, op, x, w, b, pad, dilation)
        return y, ("dilated", state)
    # stride and dilation (depthwise/separable only, as Keras's TensorFlow backend): the
    # stride-1 dilated conv on the same padding, subsampled.
    full, state = _dilated_forward(backend, op, x, w, b, pad, dilation)
    sh, sw = strides
    y = np.ascontiguousarray(full[:, ::sh, ::sw, :])
    return y, ("subsampled", (state, full.shape, strides))


def conv_backward(backend, dy, ctx, need_dx=True, op="conv2d"):
    """``(dx, dw, db)`` of :func:`conv_forward`."""
    kind, state = ctx
    if kind == "plain":
        return _op(backend, op, "backward")(dy, state, need_dx)
    if kind == "dilated":
        return _dilated_backward(backend, op, dy, state, need_dx)
    inner, full_shape, (sh, sw) = state
    dfull = np.zeros(full_shape, dtype=dy.dtype)
    dfull[:, ::sh, ::sw, :] = dy
    return _dilated_backward(backend, op, dfull, inner, need_dx)
