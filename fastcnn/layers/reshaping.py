"""ZeroPadding2D, Cropping2D, UpSampling2D and Reshape (Keras's reshaping layers), NHWC.

Data movement (and UpSampling2D's bilinear weights), written in NumPy at the layer level:
no kernel op behind them, so they run unchanged on every CPU backend; ZeroPadding2D,
Cropping2D and UpSampling2D do not run on device arrays (``runs_on_device`` False).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import _device, shapes
from .base import Layer, format_shape
from .conv import check_data_format, check_rank4


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_padding2d(padding, argument="padding"):
    """``((top, bottom), (left, right))`` from an int, ``(sym_h, sym_w)``, the full form, or
    (as Keras) a mix such as ``((1, 2), 3)``."""
    expected = ("an int, a tuple (symmetric_height_pad, symmetric_width_pad) or "
                "((top_pad, bottom_pad), (left_pad, right_pad)) of ints >= 0")
    if argument != "padding":
        expected = expected.replace("_pad", "_crop")

    def pair(p):
        if _is_int(p):
            return (p, p)
        if isinstance(p, (tuple, list)) and len(p) == 2 and all(_is_int(v) for v in p):
            return tuple(p)
        return None

    if _is_int(padding):
        pads = ((padding, padding), (padding, padding))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(
            pair(p) is not None for p in padding):
        pads = (pair(padding[0]), pair(padding[1]))
    else:
        raise ValueError(f"{argument} must be {expected}, got {padding!r}")
    if any(v < 0 for pair_ in pads for v in pair_):
        raise ValueError(f"{argument} must not be negative: expected {expected}, got "
                         f"{padding!r}")
    return tuple(tuple(int(v) for v in pair_) for pair_ in pads)


class ZeroPadding2D(Layer):
    """Adds rows and columns of zeros around each image (N, H, W, C)."""

    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = normalize_padding2d(padding)
        check_data_format(data_format)

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "ZeroPadding2D")
        n, h, w, c = input_shape
        (top, bottom), (left, right) = self.padding
        return (n, None if h is None else h + top + bottom,
                None if w is None else w + left + right, c)

    def forward(self, x, training=False):
        n, h, w, c = x.shape
        (top, bottom), (left, right) = self.padding
        y = np.zeros((n, h + top + bottom, w + left + right, c), dtype=x.dtype)
        y[:, top:top + h, left:left + w, :] = x
        return y, (h, w)

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        h, w = ctx
        (top, _), (left, _) = self.padding
        # A copy: kernels want C-contiguous input, and dx must not alias dy.
        return np.ascontiguousarray(dy[:, top:top + h, left:left + w, :]), ()

    def get_config(self):
        return {**super().get_config(), "padding": [list(p) for p in self.padding],
                "data_format": "channels_last"}


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (batch dimension excluded; one -1 allowed)."""

    runs_on_device = True  # a reshape, which device arrays support

    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        if _is_int(target_shape):
            target_shape = (target_shape,)
        if (not isinstance(target_shape, (tuple, list)) or not target_shape
                or not all(_is_int(d) and (d > 0 or d == -1) for d in target_shape)
                or sum(d == -1 for d in target_shape) > 1):
            raise ValueError(
                f"target_shape must be a non-empty tuple of positive ints with at most one "
                f"-1 (batch dimension excluded), got {target_shape!r}")
        self.target_shape = tuple(int(d) for d in target_shape)
        self._resolved = None

    def _build(self, input_shape, dtype):
        if any(d is None for d in input_shape[1:]):
            raise ValueError(
                f"Reshape needs every non-batch input dimension known, got "
                f"{format_shape(input_shape)}")
        size = math.prod(input_shape[1:])
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(
                    f"target_shape {self.target_shape} cannot hold the {size} values of input "
                    f"shape {format_shape(input_shape)}: {size} is not a multiple of {known}")
            resolved = tuple(size // known if d == -1 else d for d in self.target_shape)
        else:
            if known != size:
                raise ValueError(
                    f"target_shape {self.target_shape} holds {known} values but the input "
                    f"shape {format_shape(input_shape)} has {size} per sample")
            resolved = self.target_shape
        self._resolved = resolved
        return (input_shape[0],) + resolved

    def forward(self, x, training=False):
        return x.reshape((x.shape[0],) + self._resolved), tuple(x.shape)

    def backward(self, dy, ctx, need_dx=True):
        if not _device.is_device_array(dy):  # device arrays from the kernels are contiguous
            dy = np.ascontiguousarray(dy)
        return dy.reshape(ctx), ()

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class Cropping2D(Layer):
    """Removes rows and columns at the borders of each image (Keras's ``Cropping2D``):
    ``cropping`` is an int, ``(symmetric_height_crop, symmetric_width_crop)`` or
    ``((top_crop, bottom_crop), (left_crop, right_crop))``. NumPy at the layer level."""

    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.cropping = normalize_padding2d(cropping, argument="cropping")
        check_data_format(data_format)

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "Cropping2D")
        n, h, w, c = input_shape
        (top, bottom), (left, right) = self.cropping
        if (h is not None and top + bottom >= h) or (w is not None and left + right >= w):
            raise ValueError(
                f"Values in `cropping` argument should be smaller than the corresponding "
                f"spatial dimension of the input. Received: input_shape="
                f"{format_shape(input_shape)}, cropping={self.cropping}")
        return (n, None if h is None else h - top - bottom,
                None if w is None else w - left - right, c)

    def forward(self, x, training=False):
        _, h, w, _ = x.shape
        (top, bottom), (left, right) = self.cropping
        # A copy: kernels want C-contiguous input.
        return np.ascontiguousarray(x[:, top:h - bottom, left:w - right, :]), x.shape

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()
        (top, bottom), (left, right) = self.cropping
        dx = np.zeros(ctx, dtype=dy.dtype)
        dx[:, top:ctx[1] - bottom, left:ctx[2] - right, :] = dy
        return dx, ()

    def get_config(self):
        return {**super().get_config(), "cropping": [list(p) for p in self.cropping],
                "data_format": "channels_last"}


def _phase_weights(factor):
    """TensorFlow's half-pixel bilinear sampling (``tf.image.resize``, antialias off) for an
    integer upscaling ``factor``, per output phase ``r``: output ``o = q*factor + r`` reads
    ``src = (o + 0.5) / factor - 0.5 = q + c_r``, ``c_r = (r + 0.5) / factor - 0.5``, so it
    lies between rows ``q + off_r`` and ``q + off_r + 1`` (``off_r = floor(c_r)``, 0 or -1)
    with weight ``frac_r = c_r - off_r`` on the upper one: the same for every ``q``.
    TensorFlow clamps the two rows into the image; with the image's first and last rows
    repeated once at each end (edge padding) the same slices do that."""
    out = []
    for r in range(factor):
        c = (r + 0.5) / factor - 0.5
        off = math.floor(c)
        out.append((off, c - off))
    return out


def _index(axis, sl):
    return (slice(None),) * axis + (sl,)


def _upsample_axis(x, axis, factor):
    """Bilinear upscaling of ``x`` by ``factor`` along ``axis`` (slices, no gather)."""
    n = x.shape[axis]
    xe = np.concatenate([x[_index(axis, slice(0, 1))], x, x[_index(axis, slice(n - 1, n))]],
                        axis=axis)                         # edge padded: n + 2 rows
    out = np.empty(x.shape[:axis] + (n, factor) + x.shape[axis + 1:], dtype=x.dtype)
    for r, (off, frac) in enumerate(_phase_weights(factor)):
        lo = xe[_index(axis, slice(1 + off, 1 + off + n))]
        hi = xe[_index(axis, slice(2 + off, 2 + off + n))]
        o = out[_index(axis + 1, r)]
        np.subtract(hi, lo, out=o)                         # lo + (hi - lo) * frac, TF's form
        o *= x.dtype.type(frac)
        o += lo
    return out.reshape(x.shape[:axis] + (n * factor,) + x.shape[axis + 1:])


def _upsample_axis_backward(dy, axis, factor):
    n = dy.shape[axis] // factor
    g = dy.reshape(dy.shape[:axis] + (n, factor) + dy.shape[axis + 1:])
    dxe = np.zeros(dy.shape[:axis] + (n + 2,) + dy.shape[axis + 1:], dtype=dy.dtype)
    for r, (off, frac) in enumerate(_phase_weights(factor)):
        gr = g[_index(axis + 1, r)]
        f = dy.dtype.type(frac)
        dxe[_index(axis, slice(1 + off, 1 + off + n))] += gr * (1 - f)
        dxe[_index(axis, slice(2 + off, 2 + off + n))] += gr * f
    dx = np.ascontiguousarray(dxe[_index(axis, slice(1, n + 1))])
    dx[_index(axis, slice(0, 1))] += dxe[_index(axis, slice(0, 1))]      # the edge pads
    dx[_index(axis, slice(n - 1, n))] += dxe[_index(axis, slice(n + 1, n + 2))]
    return dx


class UpSampling2D(Layer):
    """Repeats rows and columns (Keras's ``UpSampling2D(size=(2, 2), data_format=None,
    interpolation='nearest')``); ``interpolation='bilinear'`` resizes as Keras 3 does
    (``ops.image.resize``: half-pixel centers, no antialiasing). NumPy at the layer level."""

    INTERPOLATIONS = ("nearest", "bilinear")

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        self.size = shapes.normalize_tuple(size, 2, "size")
        check_data_format(data_format)
        if not isinstance(interpolation, str) or \
                interpolation.lower() not in self.INTERPOLATIONS:
            raise ValueError(
                f"interpolation must be one of {list(self.INTERPOLATIONS)} (fastcnn has no "
                f"other resize methods yet), got {interpolation!r}")
        self.interpolation = interpolation.lower()

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, "UpSampling2D")
        n, h, w, c = input_shape
        return (n, None if h is None else h * self.size[0],
                None if w is None else w * self.size[1], c)

    def forward(self, x, training=False):
        sh, sw = self.size
        n, h, w, c = x.shape
        if self.interpolation == "nearest":
            y = np.broadcast_to(x[:, :, None, :, None, :], (n, h, sh, w, sw, c))
            return np.ascontiguousarray(y).reshape(n, h * sh, w * sw, c), x.shape
        # Along the width first, then the height: TensorFlow's order of the two lerps.
        return _upsample_axis(_upsample_axis(x, 2, sw), 1, sh), x.shape

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()
        sh, sw = self.size
        if self.interpolation == "nearest":
            n, h, w, c = ctx
            return np.ascontiguousarray(dy.reshape(n, h, sh, w, sw, c).sum(axis=(2, 4))), ()
        return _upsample_axis_backward(_upsample_axis_backward(dy, 1, sh), 2, sw), ()

    def get_config(self):
        return {**super().get_config(), "size": self.size, "data_format": "channels_last",
                "interpolation": self.interpolation}
