"""Conv2DTranspose (Keras 3's ``keras.layers.Conv2DTranspose``), NHWC, on the conv kernel ops.

Keras's kernel is ``(kh, kw, filters, C)``: read as an HWIO kernel it maps ``filters``
channels to ``C``, i.e. it is the kernel of the *forward* conv from the output space
(``filters`` channels, size ``O``) to the input space (``C`` channels, size ``I``). The
transpose conv is that conv's input gradient (TensorFlow's ``conv2d_backprop_input``), with
the forward conv's padding computed from ``O`` by TensorFlow's rule.

Derivation along one axis (stride ``s``, effective kernel ``k``, the forward conv's padding
``pb`` before): the forward conv is ``x[i] = sum_a ypad[i*s + a] W[a]`` with
``ypad[t] = y[t - pb]``, so its transpose is ``y[t] = sum_{i, a: i*s + a = t + pb} x[i] W[a]^T``.
With ``xz`` = x with ``s - 1`` zeros inserted between samples (``xz[i*s] = x[i]``) that is
``y[t] = sum_a xz[t + pb - a] W[a]^T``; substituting ``a' = k - 1 - a`` gives an ordinary
stride-1 conv of ``xz`` padded by ``L = k - 1 - pb`` before and
``R = O - 1 + pb - (I - 1)*s`` after, with the spatially flipped kernel with its last two
axes swapped (``(kh, kw, C, filters)``). With a dilation (stride 1 then) the forward runs
exactly that.

Without dilation the forward skips the zeros (``s*s`` times less work for stride ``s``):
output ``t`` with ``t + pb = q*s + r`` only meets the taps ``a = r + j*s``, and
``y[q*s + r - pb] = sum_j x[q - j] W[r + j*s]^T``: per phase ``r`` an ordinary stride-1 conv
of ``x`` with the flipped sub-kernel ``W[r::s][::-1]`` (transposed to ``(kh', kw', C,
filters)``), its padding chosen so that its outputs are the phase's ``q`` range
(:func:`_phase_plan`); ``sh*sw`` kernel calls, whose outputs are written into ``y[:, t0::sh,
t1::sw]``. A phase no tap reaches (stride > kernel) holds the bias only.

The backward needs no zero-inserted buffers: ``dx`` is the forward conv of ``dy`` (stride
``s``, padding ``pb``) with Keras's kernel as it is, and ``dkernel`` is that conv's kernel
gradient with ``x`` as the upstream gradient (``conv2d_backward(x, ctx)``, no dx); ``dbias``
sums ``dy``. Dilation (only with stride 1, as Keras) goes through
:mod:`fastcnn.layers._dilation` in both directions.

The zero insertion, flip and pads are NumPy at the layer level: the layer does not run on
device arrays (``runs_on_device`` False).
"""
from __future__ import annotations

import numpy as np

from .. import shapes
from . import _dilation
from .base import positive_int
from .conv import check_data_format, check_strides_dilation
from .depthwise import _known_spatial, check_activity_regularizer
from .kernel_layer import KernelLayer


def deconv_output_length(length, kernel, stride, padding, output_padding, dilation):
    """Keras's ``_get_output_shape_given_tf_padding`` (the transpose conv's output size)."""
    kernel = (kernel - 1) * dilation + 1
    if padding == "valid":
        if output_padding is None:
            output_padding = max(kernel, stride) - kernel
        return (length - 1) * stride + kernel + output_padding
    if output_padding is None:
        return length * stride
    return (length - 1) * stride + kernel % 2 + output_padding


def _phase_plan(n_in, n_out, k, s, pb):
    """Per phase ``r`` along one axis: ``(r, t0, count, lo, hi, pad)``: output rows
    ``t0, t0 + s, ...`` (``count`` of them) are the stride-1 'valid' conv of ``x[lo:hi]`` padded
    by ``pad = (before, after)`` with the flipped taps ``r, r + s, ...`` (module doc)."""
    plans = []
    for r in range(s):
        kr = len(range(r, k, s))
        q0 = -((r - pb) // s)                      # ceil((pb - r) / s)
        q1 = (n_out - 1 + pb - r) // s
        count = q1 - q0 + 1
        if count <= 0:
            continue
        t0 = q0 * s + r - pb
        if kr == 0:
            plans.append((r, t0, count, None, None, None))
            continue
        before = kr - 1 - q0
        after = count + kr - 1 - before - n_in
        lo, hi = max(-before, 0), n_in - max(-after, 0)
        plans.append((r, t0, count, lo, hi, (max(before, 0), max(after, 0))))
    return plans


def phase_forward(backend, x, kernel, bias, strides, pad, out_hw):
    """The transpose conv without dilation, per output phase (module doc): ``x`` ``(N, H, W,
    C)``, ``kernel`` ``(kh, kw, filters, C)`` (Keras's and ``tf.nn.conv2d_transpose``'s
    layout), ``bias`` ``(filters,)`` or None, ``pad`` the forward conv's ``((t, b), (l, r))``
    from the output space, ``out_hw`` the output's ``(H', W')``."""
    n, h, w, _ = x.shape
    oh, ow = out_hw
    sh, sw = strides
    kh, kw, filters, _ = kernel.shape
    rows = _phase_plan(h, oh, kh, sh, pad[0][0])
    cols = _phase_plan(w, ow, kw, sw, pad[1][0])
    y = np.empty((n, oh, ow, filters), dtype=x.dtype)
    for rh, th, ch, lo_h, hi_h, pad_h in rows:
        for rw, tw, cw, lo_w, hi_w, pad_w in cols:
            target = y[:, th::sh, tw::sw, :][:, :ch, :cw, :]
            if pad_h is None or pad_w is None or hi_h <= lo_h or hi_w <= lo_w:
                target[...] = 0 if bias is None else bias   # no tap reaches these rows
                continue
            sub = kernel[rh::sh, rw::sw][::-1, ::-1].transpose(0, 1, 3, 2)
            xs = x[:, lo_h:hi_h, lo_w:hi_w, :]
            z, _ = backend.conv2d_forward(np.ascontiguousarray(xs), np.ascontiguousarray(sub),
                                          bias, (1, 1), (pad_h, pad_w))
            target[...] = z
    return y


def zero_insert_forward(backend, x, kernel, bias, strides, pad, out_hw, dilation=(1, 1)):
    """The transpose conv as a stride-1 conv of the zero-inserted ``x`` with the flipped
    kernel (module doc; arguments as :func:`phase_forward`), dilated through
    :mod:`fastcnn.layers._dilation`. An explicit padding larger than the kernel makes a pad
    ``L`` or ``R`` negative: that side of the zero-inserted input is cropped instead."""
    sh, sw = strides
    n, h, w, c = x.shape
    if (sh, sw) != (1, 1):
        xz = np.zeros((n, (h - 1) * sh + 1, (w - 1) * sw + 1, c), dtype=x.dtype)
        xz[:, ::sh, ::sw, :] = x
    else:
        xz = x
    keff = _dilation.effective_kernel(kernel.shape[:2], dilation)
    zpad = tuple((k - 1 - pb, o - 1 + pb - (m - 1) * s)
                 for k, (pb, _), o, m, s in zip(keff, pad, out_hw, (h, w), strides))
    if min(min(p) for p in zpad) < 0:
        (t, b), (l, r) = ((max(-v, 0) for v in p) for p in zpad)
        xz = np.ascontiguousarray(xz[:, t:xz.shape[1] - b, l:xz.shape[2] - r, :])
        zpad = tuple((max(a, 0), max(b, 0)) for a, b in zpad)
    flipped = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
    y, _ = _dilation.conv_forward(backend, xz, flipped, bias, (1, 1), zpad, dilation)
    return y


def transpose_backward(backend, dy, x, kernel, strides, pad, dilation=(1, 1), need_dx=True):
    """``(dx, dkernel)`` of the transpose conv (module doc; the bias gradient is ``dy``
    summed over N, H, W): ``dx`` is the forward conv of ``dy``, ``dkernel`` that conv's
    kernel gradient for the upstream gradient ``x``."""
    dx, conv_ctx = _dilation.conv_forward(backend, np.ascontiguousarray(dy), kernel, None,
                                          strides, pad, dilation)
    _, dkernel, _ = _dilation.conv_backward(backend, x, conv_ctx, need_dx=False)
    return (dx if need_dx else None), dkernel


class Conv2DTranspose(KernelLayer):
    """Transposed 2-D convolution ("deconvolution", ``keras.layers.Conv2DTranspose``).

    Input ``(batch, H, W, C)``, output ``(batch, H', W', filters)`` with Keras's sizes:
    'valid' ``(H - 1) * s + max(k, s)``, 'same' ``H * s`` (without ``output_padding``), or
    'valid' ``(H - 1) * s + k + output_padding``, 'same' ``(H - 1) * s + k % 2 +
    output_padding``. The kernel is ``(kh, kw, filters, C)``, as Keras stores it.

    Args:
        filters, kernel_size, strides, padding, activation, use_bias, kernel_initializer,
        bias_initializer, kernel_regularizer, bias_regularizer, kernel_constraint,
        bias_constraint: as Conv2D.
        output_padding: None, an int or ``(ph, pw)``, each below the stride: extra rows and
            columns at the bottom/right of the output.
        data_format: None or ``'channels_last'``.
        dilation_rate: an int or ``(dh, dw)``; not with strides > 1 (Keras refuses it too).
        activity_regularizer: only None.
    """

    runs_on_device = False  # zero insertion and kernel flip in NumPy (module doc)

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid",
                 output_padding=None, data_format=None, dilation_rate=(1, 1), activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, **kwargs):
        check_activity_regularizer(activity_regularizer)
        super().__init__(activation, use_bias, kernel_initializer, bias_initializer,
                         kernel_regularizer, bias_regularizer, kernel_constraint,
                         bias_constraint, **kwargs)
        self.filters = positive_int(filters, "filters")
        self.kernel_size = shapes.normalize_tuple(kernel_size, 2, "kernel_size")
        self.strides = shapes.normalize_tuple(strides, 2, "strides")
        self.padding = shapes.normalize_padding(padding)
        check_data_format(data_format)
        self.dilation_rate = shapes.normalize_tuple(dilation_rate, 2, "dilation_rate")
        if output_padding is None:
            self.output_padding = None
        else:
            self.output_padding = shapes.normalize_tuple(output_padding, 2, "output_padding",
                                                         minimum=0)
            for i, (op, s) in enumerate(zip(self.output_padding, self.strides)):
                if op >= s:
                    raise ValueError(
                        f"`output_padding` must be strictly less than `strides` for all "
                        f"dimensions. At dimension {i}, `output_padding` is {op} but "
                        f"`strides` is {s}. Received: output_padding={self.output_padding}, "
                        f"strides={self.strides}")
        check_strides_dilation(self.strides, self.dilation_rate)

    def _build(self, input_shape, dtype):
        h, w, c = _known_spatial(input_shape, "Conv2DTranspose")
        self._by_size = {}
        if h is not None and w is not None:
            out, self._pad = self._geometry(h, w)
        else:   # any input size: the output's and the padding per call (_geometry)
            out, self._pad = (None, None), None
        kh, kw = self.kernel_size
        self.kernel = self.add_weight((kh, kw, self.filters, c), self.kernel_initializer, dtype,
                                      name="kernel", constraint=self.kernel_constraint)
        if self.use_bias:
            self.bias = self.add_weight((self.filters,), self.bias_initializer, dtype,
                                        name="bias", constraint=self.bias_constraint)
        return (input_shape[0],) + out + (self.filters,)

    def _geometry(self, h, w):
        """``((Ho, Wo), pad)`` for an input of spatial size ``(h, w)``: the output size and
        the padding of the forward conv from the output space back to the input; checked
        as TensorFlow checks it."""
        got = self._by_size.get((h, w))
        if got is not None:
            return got
        ops = self.output_padding or (None, None)
        out = tuple(deconv_output_length(n, k, s, self.padding, op, d) for n, k, s, op, d in zip(
            (h, w), self.kernel_size, self.strides, ops, self.dilation_rate))
        if min(out) < 1:
            raise ValueError(
                f"Conv2DTranspose: the output would have spatial size {out} for an input of "
                f"{(h, w)} (kernel_size={self.kernel_size}, strides={self.strides}, padding="
                f"{self.padding!r}, output_padding={self.output_padding}); choose another "
                f"output_padding")
        # The forward conv from the output space back to the input: its padding, and its
        # output size, which must be the input's (TensorFlow refuses the call otherwise).
        back, pad = _dilation.output_shape_and_pad(
            out, self.kernel_size, self.strides, self.padding, self.dilation_rate)
        if back != (h, w):
            raise ValueError(
                f"Conv2DTranspose: an output of spatial size {out} (kernel_size="
                f"{self.kernel_size}, strides={self.strides}, padding={self.padding!r}, "
                f"output_padding={self.output_padding}) does not convolve back to the input's "
                f"size {(h, w)} (it gives {back}); TensorFlow refuses this too: choose another "
                f"output_padding")
        if len(self._by_size) > 64:
            self._by_size.clear()
        self._by_size[(h, w)] = (out, pad)
        return out, pad

    def _op_forward(self, backend, x):
        pad = self._geometry(x.shape[1], x.shape[2])[1]
        if self.dilation_rate == (1, 1):
            return self._phase_forward(backend, x), (x, self.kernel, pad)
        return self._zero_insert_forward(backend, x), (x, self.kernel, pad)

    def _phase_forward(self, backend, x):
        out, pad = self._geometry(x.shape[1], x.shape[2])
        return phase_forward(backend, x, self.kernel, self.bias, self.strides, pad, out)

    def _zero_insert_forward(self, backend, x):
        out, pad = self._geometry(x.shape[1], x.shape[2])
        return zero_insert_forward(backend, x, self.kernel, self.bias, self.strides, pad, out,
                                   self.dilation_rate)

    def _op_backward(self, backend, dy, ctx, need_dx):
        x, kernel, pad = ctx
        dx, dkernel = transpose_backward(backend, dy, x, kernel, self.strides, pad,
                                         self.dilation_rate, need_dx)
        db = dy.sum(axis=(0, 1, 2)) if self.use_bias else None
        return dx, dkernel, db

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "kernel_size": self.kernel_size, "strides": self.strides,
                "padding": self.padding, "output_padding": self.output_padding,
                "data_format": "channels_last", "dilation_rate": self.dilation_rate,
                "activity_regularizer": None}
