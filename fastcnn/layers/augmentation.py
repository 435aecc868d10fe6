"""Keras 3's image augmentation and resizing layers (NHWC), on the stateless contract.

``RandomFlip``, ``RandomRotation``, ``RandomZoom``, ``RandomTranslation``, ``RandomContrast``,
``RandomBrightness`` and ``RandomCrop`` change their input only when called with
``training=True`` (``fit`` does; ``predict``/``evaluate`` do not): otherwise they are the
identity (Keras 3's rule, RandomCrop included: see its doc).
``Resizing`` and ``CenterCrop`` always apply.

Each random layer is two steps, so that the transform itself can be compared with Keras's
given the same parameters (tests/fixtures/keras/make_augmentation.py):

* ``draw_parameters(shape)``: one set of parameters per image, drawn at once for the whole
  batch, in Keras's way (the same ranges and distributions; a single draw for the whole batch
  where Keras draws one, as RandomCrop's offset). ``seed`` given: from the layer's own
  generator (the same seed gives the same sequence of augmentations); unseeded: from
  fastcnn's generator (:func:`fastcnn.utils.get_rng`, so ``set_random_seed`` fixes them).
* ``apply(x, params)``: the deterministic transform, vectorised over the batch.

The warps (rotation, zoom, translation) follow Keras 3's ``ops.image.affine_transform`` on
its TensorFlow backend, i.e. ``ImageProjectiveTransformV3``: the 8 numbers
``[a0, a1, a2, b0, b1, b2, c0, c1]`` map an output pixel ``(x=col, y=row)`` to the input point
``((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k)``, ``k = c0 x + c1 y + 1``; that point is
brought back into the image by ``fill_mode`` ('reflect' about the pixel edge, TensorFlow's
'wrap', 'nearest' clamps, 'constant' keeps it) and sampled with 'bilinear' (neighbours outside
the image read ``fill_value``, so 'constant' blends it in at the border) or 'nearest'
(rounding half away from zero). fastcnn.preprocessing._affine (ImageDataGenerator's warp) is
not reused: it implements scipy's edge rules (constant without blending, scipy's 'wrap'; on
the rotation fixtures it agrees with Keras 3 for 'reflect' and 'nearest' but differs by up
to 0.68 for 'wrap' and 0.53 for 'constant'), has no 'nearest' sampling and no adjoint, which
is right for ImageDataGenerator and wrong for these layers. ``Resizing`` follows
``tf.image.resize`` for all six Keras methods, with ``antialias``.

Factors are checked as Keras does, except that for a pair BOTH values must lie in the
allowed range (Keras 3 checks only ``factor[0] <= high`` and ``factor[1] >= low``).

Gradients: every transform here is linear (affine) in the image for fixed parameters, and
backward gives its exact adjoint: flips and crops move dy back, the warps scatter dy with the
bilinear weights, resizes apply the transposed 1-D interpolation matrices, contrast and
brightness differentiate through Keras's clip (where a value was clipped, no gradient).
"""
from __future__ import annotations

import functools
import math
import numbers

import numpy as np

from .. import utils
from ..preprocessing.dataset import _tf_axis
from .base import Layer, positive_int
from .conv import check_data_format, check_rank4

FILL_MODES = ("reflect", "wrap", "constant", "nearest")
WARP_INTERPOLATIONS = ("nearest", "bilinear")
RESIZE_INTERPOLATIONS = ("bilinear", "nearest", "lanczos3", "lanczos5", "bicubic", "area")


# ------------------------------------------------------------------ argument checks
def _number(value, argument):
    if (not isinstance(value, numbers.Real) or isinstance(value, bool)
            or not math.isfinite(float(value))):
        raise ValueError(f"{argument} must be a finite number, got {value!r}")
    return float(value)


def _choice(value, argument, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{argument} must be one of {list(allowed)}, got {value!r}")
    return value


def _factor_range(factor, argument, low, high, low_open=False, single_low=None):
    """(lower, upper) from a number f (-> (-|f|, |f|), or (single_low, |f|)) or a pair;
    every value must lie in [low, high] ((low, high] with ``low_open``)."""
    interval = f"{'(' if low_open else '['}{low}, {high}]"
    expected = f"a number or a pair of numbers in {interval}"

    def check(v):
        v = _number(v, argument) if isinstance(v, numbers.Real) and not isinstance(v, bool) \
            else None
        if v is None or v > high or v < low or (low_open and v == low):
            raise ValueError(f"{argument} must be {expected}, got {factor!r}")
        return v

    if isinstance(factor, (tuple, list)):
        if len(factor) != 2:
            raise ValueError(f"{argument} must be {expected}, got {factor!r}")
        lower, upper = sorted(check(v) for v in factor)
        return lower, upper
    if isinstance(factor, numbers.Real) and not isinstance(factor, bool):
        f = abs(check(factor))
        return (-f if single_low is None else single_low), f
    raise ValueError(f"{argument} must be {expected}, got {factor!r}")


def _plain(factor):
    """A config value: lists for tuples (JSON), numbers as given."""
    return list(factor) if isinstance(factor, (tuple, list)) else factor


def _as_float(x, layer):
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(getattr(layer, "_dtype", None) or np.float32)
    return x


class _ImageLayer(Layer):
    """Shared parts: NHWC check, seed handling, the identity-in-inference forward."""

    def _init_seed(self, seed):
        self.seed = utils.check_seed(seed, allow_none=True)
        self._rng = None if self.seed is None else np.random.default_rng(self.seed)

    def _generator(self):
        return self._rng if self._rng is not None else utils.get_rng()

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, type(self).__name__)
        return input_shape

    # random layers: identity unless training
    def forward(self, x, training=False):
        if not training:
            return x, None  # backward is the identity
        x = _as_float(x, self)
        params = self.draw_parameters(x.shape)
        return self.apply(x, params), (params, x.shape)

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()  # a first layer: nothing consumes its dx
        if ctx is None:
            return dy, ()
        params, shape = ctx
        return self.apply_adjoint(dy, params, shape), ()


# ------------------------------------------------------------------ the projective warp
def _round_half_away(v):
    return np.where(v >= 0, np.floor(v + 0.5), np.ceil(v - 0.5))


def _map_coordinates(c, size, fill_mode):
    """ImageProjectiveTransformV3's MapCoordinate (tensorflow/core/kernels/image/image_ops.h)."""
    if fill_mode == "constant":
        return c
    if fill_mode == "nearest":
        return np.clip(c, 0.0, size - 1.0)
    if size <= 1:
        return np.zeros_like(c)
    out = c.copy()
    neg, big = c < 0, c > size - 1
    v, u = c[neg], c[big]
    if fill_mode == "reflect":
        sz2 = 2.0 * size
        v = sz2 * np.trunc(-v / sz2) + v
        out[neg] = np.where(v < -size, v + sz2, -v - 1.0)
        u = u - sz2 * np.trunc(u / sz2)
        out[big] = np.where(u >= size, sz2 - u - 1.0, u)
    else:  # TensorFlow's 'wrap': period `size`, counted in steps of size - 1
        sz = size - 1.0
        out[neg] = v + size * (np.trunc(-v / sz) + 1.0)
        out[big] = u - size * np.trunc(u / sz)
    return np.clip(out, 0.0, size - 1.0)


def _warp_plan(shape, transforms, fill_mode, interpolation, dtype=np.float64):
    """Per output pixel, the flat indices (into one (N*H*W,) channel plane) and weights of
    the input pixels it reads, plus the weight that falls on ``fill_value``.

    Returns ``(idx, wts, fill_w)``: K (N, H, W) intp arrays, K weight arrays of ``dtype``
    (K = 4 for bilinear, 1 for nearest), and the (N, H, W) fill weights (None when no point
    reads ``fill_value``). Coordinates are computed in ``dtype`` (float32 for float32 images,
    as TensorFlow computes them).
    """
    n, h, w = shape[:3]
    ft = np.dtype(dtype)
    t = np.asarray(transforms, dtype=np.float64).reshape(n, 8).astype(ft)[:, :, None, None]
    ys = np.arange(h, dtype=ft)[:, None]
    xs = np.arange(w, dtype=ft)[None, :]
    projective = bool(np.any(t[:, 6:8] != 0))
    in_x = t[:, 0] * xs + t[:, 1] * ys + t[:, 2]
    in_y = t[:, 3] * xs + t[:, 4] * ys + t[:, 5]
    bad = None
    if projective:
        proj = t[:, 6] * xs + t[:, 7] * ys + 1
        with np.errstate(divide="ignore", invalid="ignore"):
            in_x, in_y = in_x / proj, in_y / proj
        bad = (proj == 0) | ~np.isfinite(in_x) | ~np.isfinite(in_y)
        if not bad.any():
            bad = None
        else:
            in_x, in_y = np.where(bad, 0, in_x), np.where(bad, 0, in_y)
    # Far-outside points read only fill_value (constant) or map back (the other modes);
    # bounding them keeps integer casts from overflowing.
    lim = ft.type(4.0 * max(h, w) + 4.0)
    in_x = np.clip(in_x, -lim, lim)
    in_y = np.clip(in_y, -lim, lim)
    cx = _map_coordinates(in_x, w, fill_mode)
    cy = _map_coordinates(in_y, h, fill_mode)
    base = (np.arange(n, dtype=np.intp) * (h * w))[:, None, None]
    if interpolation == "nearest":
        corners = [(_round_half_away(cy), _round_half_away(cx), None)]
    else:
        y0, x0 = np.floor(cy), np.floor(cx)
        fy, fx = cy - y0, cx - x0
        gy, gx = (y0 + 1) - cy, (x0 + 1) - cx
        corners = [(y0, x0, gx * gy), (y0, x0 + 1, fx * gy),
                   (y0 + 1, x0, gx * fy), (y0 + 1, x0 + 1, fx * fy)]
    idx, wts = [], []
    fill_w = None
    for ry, rx, wk in corners:
        if wk is None:
            wk = np.ones(in_x.shape, dtype=ft)
        ri, ci = ry.astype(np.intp), rx.astype(np.intp)
        if fill_mode == "constant":
            inside = (ri >= 0) & (ri < h) & (ci >= 0) & (ci < w)
            if bad is not None:
                inside &= ~bad
            if not inside.all():
                out = ~inside
                fill_w = (0 if fill_w is None else fill_w) + np.where(out, wk, 0)
                wk = np.where(inside, wk, 0)
                ri, ci = np.where(inside, ri, 0), np.where(inside, ci, 0)
        else:
            # Mapped coordinates lie in [0, size - 1]: only a "+1" neighbour can fall
            # outside, on the last row/column, and its weight is then exactly 0.
            ri, ci = np.minimum(ri, h - 1), np.minimum(ci, w - 1)
            if bad is not None:
                wk = np.where(bad, 0, wk)
        idx.append(base + ri * w + ci)
        wts.append(wk)
    if bad is not None:
        fill_w = np.where(bad, 1, 0 if fill_w is None else fill_w).astype(ft)
    return idx, wts, fill_w


def _planes(x):
    """(C, N*H*W) contiguous channel planes of an (N, H, W, C) array."""
    n, h, w, c = x.shape
    return np.ascontiguousarray(np.moveaxis(x.reshape(n * h * w, c), 1, 0))


def affine_transform(x, transforms, interpolation="bilinear", fill_mode="constant",
                     fill_value=0.0):
    """Keras 3's ``ops.image.affine_transform`` (TensorFlow backend) of an (N, H, W, C) batch
    with one 8-number transform per image (see the module doc); returns x's float dtype."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n, h, w, c = x.shape
    dt = x.dtype
    idx, wts, fill_w = _warp_plan(x.shape, transforms, fill_mode, interpolation, dt)
    planes = _planes(x)
    out = np.empty((n, h, w, c), dtype=dt)
    for ch in range(c):   # one gather per channel and corner, over the whole batch
        plane = planes[ch]
        acc = plane.take(idx[0])
        acc *= wts[0]
        for k in range(1, len(idx)):
            acc += plane.take(idx[k]) * wts[k]
        if fill_w is not None and fill_value != 0.0:
            acc += fill_w * dt.type(fill_value)
        out[..., ch] = acc
    return out


def affine_transform_adjoint(dy, transforms, interpolation="bilinear", fill_mode="constant"):
    """The exact adjoint (gradient w.r.t. the image) of :func:`affine_transform`."""
    dy = np.asarray(dy)
    n, h, w, c = dy.shape
    idx, wts, _ = _warp_plan(dy.shape, transforms, fill_mode, interpolation, dy.dtype)
    flat_idx = np.concatenate([i.reshape(-1) for i in idx])
    planes = _planes(dy)
    dx = np.empty((n * h * w, c), dtype=dy.dtype)
    for ch in range(c):   # one bincount per channel (not per image)
        contrib = np.concatenate([(planes[ch].reshape(n, h, w) * wk).reshape(-1)
                                  for wk in wts])
        dx[:, ch] = np.bincount(flat_idx, weights=contrib, minlength=n * h * w)
    return dx.reshape(n, h, w, c)


class _WarpLayer(_ImageLayer):
    """A random affine warp: ``transform_matrix(params, h, w)`` gives the (N, 8) transforms."""

    def _init_warp(self, fill_mode, interpolation, seed, fill_value):
        self.fill_mode = _choice(fill_mode, "fill_mode", FILL_MODES)
        self.interpolation = _choice(interpolation, "interpolation", WARP_INTERPOLATIONS)
        self.fill_value = _number(fill_value, "fill_value")
        self._init_seed(seed)

    def apply(self, x, params):
        x = _as_float(x, self)
        t = self.transform_matrix(params, x.shape[1], x.shape[2])
        return affine_transform(x, t, self.interpolation, self.fill_mode, self.fill_value)

    def apply_adjoint(self, dy, params, shape):
        t = self.transform_matrix(params, shape[1], shape[2])
        return affine_transform_adjoint(dy, t, self.interpolation, self.fill_mode)

    def _warp_config(self):
        return {"fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "seed": self.seed, "fill_value": self.fill_value}


def rotation_matrix(angle, h, w):
    """Keras's ``_compute_affine_matrix`` for a rotation by ``angle`` degrees (counter-clockwise
    for a positive angle) about ``((w - 1) / 2, (h - 1) / 2)``: (N, 8)."""
    a = np.deg2rad(np.asarray(angle, dtype=np.float64).reshape(-1))
    cx, cy = 0.5 * (w - 1), 0.5 * (h - 1)
    cos, sin = np.cos(a), np.sin(a)
    zero = np.zeros_like(a)
    return np.stack([cos, -sin, cx - cx * cos + cy * sin,
                     sin, cos, cy - cx * sin - cy * cos, zero, zero], axis=1)


class RandomRotation(_WarpLayer):
    """Rotates each image by a random angle in ``[lower, upper] * 360`` degrees (Keras's
    ``factor``: a fraction of a full turn, a number f meaning ``(-f, f)``; positive turns
    counter-clockwise)."""

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.lower, self.upper = _factor_range(factor, "factor", -1.0, 1.0)
        self.factor = _plain(factor)
        self._init_warp(fill_mode, interpolation, seed, fill_value)

    def draw_parameters(self, shape):
        return {"angle": self._generator().uniform(self.lower * 360.0, self.upper * 360.0,
                                                   size=shape[0])}

    def transform_matrix(self, params, h, w):
        return rotation_matrix(params["angle"], h, w)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, **self._warp_config()}


class RandomZoom(_WarpLayer):
    """Zooms each image by a random factor: ``height_factor`` (a number f: ``(-f, f)``, each
    value in (-1, 1]) gives the zoom ``1 + U(lower, upper)`` of the height, ``width_factor``
    that of the width (None: the height's zoom, preserving the aspect ratio). A positive
    value zooms OUT (the image shrinks), as in Keras."""

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.height_lower, self.height_upper = _factor_range(
            height_factor, "height_factor", -1.0, 1.0, low_open=True)
        self.height_factor = _plain(height_factor)
        self.width_factor = _plain(width_factor)
        if width_factor is not None:
            self.width_lower, self.width_upper = _factor_range(
                width_factor, "width_factor", -1.0, 1.0, low_open=True)
        self._init_warp(fill_mode, interpolation, seed, fill_value)

    def draw_parameters(self, shape):
        rng = self._generator()
        hz = rng.uniform(1.0 + self.height_lower, 1.0 + self.height_upper, size=shape[0])
        wz = hz if self.width_factor is None else rng.uniform(
            1.0 + self.width_lower, 1.0 + self.width_upper, size=shape[0])
        return {"height_zoom": hz, "width_zoom": wz}

    def transform_matrix(self, params, h, w):
        zx = np.asarray(params["width_zoom"], dtype=np.float64).reshape(-1)
        zy = np.asarray(params["height_zoom"], dtype=np.float64).reshape(-1)
        zero = np.zeros_like(zx)
        return np.stack([zx, zero, (w - 1.0) / 2.0 * (1.0 - zx),
                         zero, zy, (h - 1.0) / 2.0 * (1.0 - zy), zero, zero], axis=1)

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor,
                "width_factor": self.width_factor, **self._warp_config()}


class RandomTranslation(_WarpLayer):
    """Shifts each image by ``U(lower, upper) * height`` rows and ``U(...) * width`` columns
    (each factor a number f: ``(-f, f)``, or a pair, values in [-1, 1]; positive moves the
    content down / right)."""

    def __init__(self, height_factor, width_factor, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.height_lower, self.height_upper = _factor_range(
            height_factor, "height_factor", -1.0, 1.0)
        self.width_lower, self.width_upper = _factor_range(
            width_factor, "width_factor", -1.0, 1.0)
        self.height_factor = _plain(height_factor)
        self.width_factor = _plain(width_factor)
        self._init_warp(fill_mode, interpolation, seed, fill_value)

    def draw_parameters(self, shape):
        rng = self._generator()
        n, h, w = shape[:3]
        ht = rng.uniform(self.height_lower, self.height_upper, size=n) * h
        wt = rng.uniform(self.width_lower, self.width_upper, size=n) * w
        return {"translations": np.stack([wt, ht], axis=1)}   # Keras's (width, height) px

    def transform_matrix(self, params, h, w):
        t = np.asarray(params["translations"], dtype=np.float64).reshape(-1, 2)
        one, zero = np.ones(len(t)), np.zeros(len(t))
        return np.stack([one, zero, -t[:, 0], zero, one, -t[:, 1], zero, zero], axis=1)

    def get_config(self):
        return {**super().get_config(), "height_factor": self.height_factor,
                "width_factor": self.width_factor, **self._warp_config()}


# ------------------------------------------------------------------ flips and colour
class RandomFlip(_ImageLayer):
    """Flips each image with probability 1/2. ``mode``: 'horizontal' (left-right),
    'vertical' (up-down) or 'horizontal_and_vertical'; in the last, as in Keras 3, ONE draw
    per image decides both axes (the image is unchanged or turned by 180 degrees)."""

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.mode = _choice(mode, "mode", self.MODES)
        self._init_seed(seed)

    def draw_parameters(self, shape):
        return {"flips": self._generator().uniform(size=shape[0]) <= 0.5}

    def apply(self, x, params):
        x = _as_float(x, self)
        flips = np.asarray(params["flips"]).reshape(-1).astype(bool)
        y = x.copy()
        sel = np.flatnonzero(flips)
        if sel.size:
            part = x[sel]
            if self.mode != "vertical":
                part = part[:, :, ::-1]
            if self.mode != "horizontal":
                part = part[:, ::-1]
            y[sel] = part
        return y

    def apply_adjoint(self, dy, params, shape):
        return self.apply(dy, params)   # a flip is its own transpose

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "seed": self.seed}


class RandomContrast(_ImageLayer):
    """Keras 3.15's RandomContrast: per image a factor ``c ~ U(1 - lower, 1 + upper)``, then
    ``clip((x - mean) * c + mean, *value_range)`` with the mean over height and width per
    channel. ``factor`` in [0, 1]; a number f means ``(0, f)`` (Keras 3.15's code: the factor
    is drawn in ``[1, 1 + f]``), a pair ``(lower, upper)``."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.lower, self.upper = _factor_range(factor, "factor", 0.0, 1.0, single_low=0.0)
        self.factor = _plain(factor)
        self.value_range = _value_range(value_range, sort=False)
        self._init_seed(seed)

    def draw_parameters(self, shape):
        return {"contrast_factor": self._generator().uniform(
            1.0 - self.lower, 1.0 + self.upper, size=shape[0])}

    def _pre_clip(self, x, params):
        cf = np.asarray(params["contrast_factor"]).reshape(-1, 1, 1, 1).astype(x.dtype)
        mean = x.mean(axis=(1, 2), keepdims=True)
        return (x - mean) * cf + mean, cf

    def apply(self, x, params):
        x = _as_float(x, self)
        z, _ = self._pre_clip(x, params)
        return np.clip(z, self.value_range[0], self.value_range[1]).astype(x.dtype, copy=False)

    def forward(self, x, training=False):
        if not training:
            return x, None
        x = _as_float(x, self)
        params = self.draw_parameters(x.shape)
        return self.apply(x, params), (params, x)

    def apply_adjoint(self, dy, params, x):
        z, cf = self._pre_clip(x, params)
        g = dy * ((z >= self.value_range[0]) & (z <= self.value_range[1]))
        h, w = x.shape[1:3]
        return (g * cf + g.sum(axis=(1, 2), keepdims=True) * ((1 - cf) / (h * w))).astype(
            dy.dtype, copy=False)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor,
                "value_range": list(self.value_range), "seed": self.seed}


def _value_range(value_range, sort=True):
    if (not isinstance(value_range, (tuple, list)) or len(value_range) != 2):
        raise ValueError(f"value_range must be a list of two numbers, got {value_range!r}")
    lo, hi = (_number(v, "value_range") for v in value_range)
    return tuple(sorted((lo, hi))) if sort else (lo, hi)


class RandomBrightness(_ImageLayer):
    """Adds ``U(lower, upper) * (value_range[1] - value_range[0])`` to each image (one delta
    per image, all channels), then clips to ``value_range`` (Keras 3). ``factor`` in [-1, 1];
    a number f means ``(-f, f)``."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self.lower, self.upper = _factor_range(factor, "factor", -1.0, 1.0)
        self.factor = _plain(factor)
        self.value_range = _value_range(value_range)
        self._init_seed(seed)

    def draw_parameters(self, shape):
        delta = self._generator().uniform(self.lower, self.upper, size=shape[0])
        return {"rgb_delta": delta * (self.value_range[1] - self.value_range[0])}

    def apply(self, x, params):
        x = _as_float(x, self)
        d = np.asarray(params["rgb_delta"]).reshape(-1, 1, 1, 1).astype(x.dtype)
        return np.clip(x + d, self.value_range[0], self.value_range[1]).astype(x.dtype,
                                                                              copy=False)

    def forward(self, x, training=False):
        if not training:
            return x, None
        x = _as_float(x, self)
        params = self.draw_parameters(x.shape)
        return self.apply(x, params), (params, x)

    def apply_adjoint(self, dy, params, x):
        d = np.asarray(params["rgb_delta"]).reshape(-1, 1, 1, 1).astype(x.dtype)
        z = x + d
        return dy * ((z >= self.value_range[0]) & (z <= self.value_range[1]))

    def get_config(self):
        return {**super().get_config(), "factor": self.factor,
                "value_range": list(self.value_range), "seed": self.seed}


# ------------------------------------------------------------------ resizing
@functools.lru_cache(maxsize=64)
def _interp_matrix(out, size, interpolation, antialias=False):
    """(out, size) float64 matrix of ``tf.image.resize`` along one axis (what Keras 3's
    Resizing calls on its TensorFlow backend; TensorFlow's float32 coordinates):

    * 'bilinear', 'nearest', 'bicubic': the legacy kernels with half-pixel centres
      (bilinear taps clamped at the edges; nearest ``floor((i + 0.5) * scale)``; bicubic Keys
      a = -0.5 from TensorFlow's 1024-entry table, taps outside the image dropped and the
      rest renormalised);
    * 'area': ``resize_area`` (each output averages the input it covers);
    * 'lanczos3', 'lanczos5', and 'bilinear'/'bicubic' with ``antialias``: ``scale_and_translate``
      (kernel 'triangle'/'keyscubic'/'lanczosN', widened by the downscaling factor when
      ``antialias``, weights renormalised); 'nearest' and 'area' ignore ``antialias``.
    """
    m = _interp_matrix_uncached(out, size, interpolation, antialias)
    m.flags.writeable = False   # cached: shared by every call
    return m


def _interp_matrix_uncached(out, size, interpolation, antialias):
    f32 = np.float32
    m = np.zeros((out, size), dtype=np.float64)
    rows = np.arange(out)
    scale = f32(size) / f32(out)
    if interpolation == "nearest":
        src = np.minimum(np.floor(_tf_axis(out, size)), size - 1).astype(np.intp)
        m[rows, src] = 1.0
        return m
    if interpolation == "area":
        start = rows.astype(f32) * scale
        stop = (rows + 1).astype(f32) * scale
        cols = np.arange(size)
        overlap = (np.minimum(cols[None, :] + 1.0, stop[:, None].astype(np.float64))
                   - np.maximum(cols[None, :], start[:, None].astype(np.float64)))
        return np.maximum(overlap, 0.0) / float(scale)
    if antialias or interpolation in ("lanczos3", "lanczos5"):
        return _scale_translate_matrix(out, size, interpolation, antialias)
    if interpolation == "bicubic":
        a = f32(-0.5)
        x = (np.arange(1025) * 1.0 / 1024).astype(f32)
        c0 = ((a + 2) * x - (a + 3)) * x * x + 1
        x1 = x + f32(1)
        c1 = ((a * x1 - 5 * a) * x1 + 8 * a) * x1 - 4 * a
        loc = (np.arange(out, dtype=f32) + f32(0.5)) * scale - f32(0.5)
        base = np.floor(loc)
        offset = np.rint((loc - base) * f32(1024)).astype(np.intp)
        base = base.astype(np.intp)
        taps = [(base - 1, c1[offset]), (base, c0[offset]), (base + 1, c0[1024 - offset]),
                (base + 2, c1[1024 - offset])]
        weights = np.stack([np.where((i >= 0) & (i < size), wt, 0) for i, wt in taps])
        total = weights.sum(axis=0, dtype=np.float64)
        weights = weights / np.where(np.abs(total) >= 1e-35, total, 1.0)
        for (i, _), wt in zip(taps, weights):
            np.add.at(m, (rows, np.clip(i, 0, size - 1)), wt)
        return m
    src = (_tf_axis(out, size) - f32(0.5)).astype(np.float64)
    floor = np.floor(src)
    lo = np.maximum(floor, 0).astype(np.intp)
    hi = np.minimum(np.ceil(src), size - 1).astype(np.intp)
    lerp = src - floor
    np.add.at(m, (rows, lo), 1.0 - lerp)
    np.add.at(m, (rows, hi), lerp)
    return m


def _kernel(name):
    if name in ("bilinear", "triangle"):
        return 1.0, lambda x: np.maximum(1.0 - x, 0.0)
    if name in ("bicubic", "keyscubic"):
        return 2.0, lambda x: np.where(
            x >= 2.0, 0.0, np.where(x >= 1.0, ((-0.5 * x + 2.5) * x - 4.0) * x + 2.0,
                                    ((1.5 * x - 2.5) * x) * x + 1.0))
    radius = 3.0 if name == "lanczos3" else 5.0

    def lanczos(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            v = radius * np.sin(np.pi * x) * np.sin(np.pi * x / radius) / (np.pi ** 2 * x * x)
        return np.where(x > radius, 0.0, np.where(x <= 1e-3, 1.0, v))
    return radius, lanczos


def _scale_translate_matrix(out, size, interpolation, antialias):
    """TensorFlow's ``ScaleAndTranslate`` weights (ComputeSpansCore), translation 0."""
    radius, kernel = _kernel(interpolation)
    f32 = np.float32
    inv_scale = float(f32(1.0) / (f32(out) / f32(size)))
    kernel_scale = max(inv_scale, 1.0) if antialias else 1.0
    m = np.zeros((out, size), dtype=np.float64)
    for i in range(out):   # a loop over output rows/columns, not over images
        sample = (i + 0.5) * inv_scale
        start = min(max(int(math.ceil(sample - radius * kernel_scale - 0.5)), 0), size - 1)
        stop = min(max(int(math.floor(sample + radius * kernel_scale - 0.5)), 0), size - 1) + 1
        src = np.arange(start, stop)
        wt = kernel(np.abs((src + 0.5 - sample) / kernel_scale))
        total = wt.sum()
        if abs(total) >= 1e-35:
            m[i, start:stop] = wt / total
    return m


def _resize_matrices(h, w, height, width, interpolation, antialias, dtype):
    mh = _interp_matrix(height, h, interpolation, antialias)
    mw = _interp_matrix(width, w, interpolation, antialias)
    identity = (mh.shape == (h, h) and mw.shape == (w, w) and np.array_equal(mh, np.eye(h))
                and np.array_equal(mw, np.eye(w)))
    return None if identity else (mh.astype(dtype), mw.astype(dtype))


def resize(x, height, width, interpolation="bilinear", antialias=False):
    """``tf.image.resize`` of an (N, H, W, C) batch (see :func:`_interp_matrix`), as two
    1-D interpolation matrices applied along the rows and the columns."""
    n, h, w, c = x.shape
    mats = _resize_matrices(h, w, height, width, interpolation, antialias, x.dtype)
    if mats is None:
        return x.copy()
    y = np.einsum("ph,nhwc->npwc", mats[0], x, optimize=True)
    return np.ascontiguousarray(np.einsum("qw,npwc->npqc", mats[1], y, optimize=True))


def resize_adjoint(dy, h, w, interpolation="bilinear", antialias=False):
    """The exact adjoint of :func:`resize` from an (N, h, w, C) input to dy's size."""
    n, height, width, c = dy.shape
    mats = _resize_matrices(h, w, height, width, interpolation, antialias, dy.dtype)
    if mats is None:
        return dy.copy()
    g = np.einsum("qw,npqc->npwc", mats[1], dy, optimize=True)
    return np.ascontiguousarray(np.einsum("ph,npwc->nhwc", mats[0], g, optimize=True))


def _aspect_crop_box(h, w, th, tw, float32):
    """Keras's largest centred crop of the target's aspect ratio: (top, left, ch, cw)."""
    f = np.float32 if float32 else float
    ch = max(min(h, int(f(w * th) / f(tw))), 1)
    cw = max(min(w, int(f(h * tw) / f(th))), 1)
    return int(f(h - ch) / f(2)), int(f(w - cw) / f(2)), ch, cw


class _Crop:
    """A crop/pad window then a resize, with the exact adjoint: ``rows``/``cols`` are the
    (start, stop) of the window in the input (may extend beyond it: padded with ``fill``)."""

    def __init__(self, rows, cols, height, width, interpolation, fill=0.0, antialias=False):
        self.rows, self.cols = rows, cols
        self.height, self.width = height, width
        self.interpolation, self.fill, self.antialias = interpolation, fill, antialias

    def apply(self, x):
        n, h, w, c = x.shape
        (r0, r1), (c0, c1) = self.rows, self.cols
        if r0 >= 0 and c0 >= 0 and r1 <= h and c1 <= w:
            win = x[:, r0:r1, c0:c1]
        else:
            win = np.full((n, r1 - r0, c1 - c0, c), self.fill, dtype=x.dtype)
            sr, sc = slice(max(r0, 0), min(r1, h)), slice(max(c0, 0), min(c1, w))
            win[:, sr.start - r0:sr.stop - r0, sc.start - c0:sc.stop - c0] = x[:, sr, sc]
        return resize(np.ascontiguousarray(win), self.height, self.width, self.interpolation,
                      self.antialias)

    def adjoint(self, dy, shape):
        n, h, w, c = shape
        (r0, r1), (c0, c1) = self.rows, self.cols
        g = resize_adjoint(dy, r1 - r0, c1 - c0, self.interpolation, self.antialias)
        dx = np.zeros(shape, dtype=dy.dtype)
        sr, sc = slice(max(r0, 0), min(r1, h)), slice(max(c0, 0), min(c1, w))
        dx[:, sr, sc] = g[:, sr.start - r0:sr.stop - r0, sc.start - c0:sc.stop - c0]
        return dx


class _SizedLayer(_ImageLayer):
    def _init_size(self, height, width):
        self.height = positive_int(height, "height")
        self.width = positive_int(width, "width")

    def _build(self, input_shape, dtype):
        check_rank4(input_shape, type(self).__name__)
        return (input_shape[0], self.height, self.width, input_shape[3])

    def _crop_plan(self, shape):
        raise NotImplementedError

    def forward(self, x, training=False):
        x = _as_float(x, self)
        plan = self._crop_plan(x.shape, training)
        return plan.apply(x), (plan, x.shape)

    def backward(self, dy, ctx, need_dx=True):
        if not need_dx:
            return None, ()
        plan, shape = ctx
        return plan.adjoint(dy, shape), ()


class Resizing(_SizedLayer):
    """Resizes each image to ``(height, width)`` as Keras 3 does (``tf.image.resize``):
    plain, ``crop_to_aspect_ratio`` (the largest centred crop of the target's aspect ratio
    first) or ``pad_to_aspect_ratio`` (``fill_value`` rows/columns added equally on both
    sides first). Every Keras ``interpolation`` ('bilinear', 'nearest', 'bicubic', 'area',
    'lanczos3', 'lanczos5') and ``antialias``; see :func:`_interp_matrix`. Applies in
    training and inference; backward is the exact adjoint (the transposed matrices)."""

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0,
                 antialias=False, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self._init_size(height, width)
        self.interpolation = _choice(interpolation, "interpolation", RESIZE_INTERPOLATIONS)
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.pad_to_aspect_ratio = bool(pad_to_aspect_ratio)
        if self.crop_to_aspect_ratio and self.pad_to_aspect_ratio:
            raise ValueError("only one of crop_to_aspect_ratio and pad_to_aspect_ratio can be "
                             "True, got both")
        self.fill_mode = _choice(fill_mode, "fill_mode", ("constant",))
        self.fill_value = _number(fill_value, "fill_value")
        self.antialias = bool(antialias)

    def _crop_plan(self, shape, training=False):
        h, w = shape[1:3]
        th, tw = self.height, self.width
        if self.crop_to_aspect_ratio:
            top, left, ch, cw = _aspect_crop_box(h, w, th, tw, float32=True)
            rows, cols = (top, top + ch), (left, left + cw)
        elif self.pad_to_aspect_ratio:
            f = np.float32
            ph = max(h, int(f(w * th) / f(tw)))
            pw = max(w, int(f(h * tw) / f(th)))
            top, left = int(f(ph - h) / f(2)), int(f(pw - w) / f(2))
            rows, cols = (-top, h + top), (-left, w + left)
        else:
            rows, cols = (0, h), (0, w)
        return _Crop(rows, cols, th, tw, self.interpolation, self.fill_value, self.antialias)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio,
                "pad_to_aspect_ratio": self.pad_to_aspect_ratio, "fill_mode": self.fill_mode,
                "fill_value": self.fill_value, "antialias": self.antialias}


class CenterCrop(_SizedLayer):
    """Crops the centre ``(height, width)`` of each image (offsets ``(H - height) // 2``,
    ``(W - width) // 2``); an image smaller than that is ``smart_resize``d as in Keras (the
    largest centred crop of the target's aspect ratio, resized bilinearly). Always applies."""

    def __init__(self, height, width, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self._init_size(height, width)

    def _crop_plan(self, shape, training=False):
        h, w = shape[1:3]
        th, tw = self.height, self.width
        if h >= th and w >= tw:
            top, left = (h - th) // 2, (w - tw) // 2
            return _Crop((top, top + th), (left, left + tw), th, tw, "bilinear")
        top, left, ch, cw = _aspect_crop_box(h, w, th, tw, float32=False)
        return _Crop((top, top + ch), (left, left + cw), th, tw, "bilinear")

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


class RandomCrop(_SizedLayer):
    """Keras 3's RandomCrop. In training, on images larger than ``(height, width)`` in both
    dimensions: ONE random window for the whole batch (Keras draws one offset per call),
    ``top = int(U(0, H - height + 1))``, ``left = int(U(0, W - width + 1))``; on an image not
    larger, Keras's fallback: the window of the target size at the offset of the largest
    centred crop of the target's aspect ratio, resized bilinearly to ``(height, width)`` if
    it came out smaller.

    In inference it is the identity, as in Keras 3 (whose ``transform_images`` returns the
    images unchanged when not training): the output then keeps the INPUT's size although the
    layer's output shape says ``(height, width)``, so what follows must accept any size
    (convolutions, global pooling), exactly as in Keras 3.
    """

    def forward(self, x, training=False):
        if not training:
            return x, None
        return super().forward(x, training)

    def backward(self, dy, ctx, need_dx=True):
        if need_dx and ctx is None:
            return dy, ()
        return super().backward(dy, ctx, need_dx)

    def __init__(self, height, width, seed=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        check_data_format(data_format)
        self._init_size(height, width)
        self._init_seed(seed)

    def draw_parameters(self, shape):
        h, w = shape[1:3]
        rng = self._generator()
        top = int(rng.uniform(0.0, float(h - self.height + 1)))
        left = int(rng.uniform(0.0, float(w - self.width + 1)))
        return {"start": (min(top, h - self.height), min(left, w - self.width))}

    def _crop_plan(self, shape, training=False):
        h, w = shape[1:3]
        th, tw = self.height, self.width
        if training and h > th and w > tw:
            top, left = self.draw_parameters(shape)["start"]
        else:
            top, left, _, _ = _aspect_crop_box(h, w, th, tw, float32=False)
        rows = (top, min(top + th, h))
        cols = (left, min(left + tw, w))
        return _Crop(rows, cols, th, tw, "bilinear")

    def apply(self, x, params):
        """The training crop at ``params['start'] = (top, left)``."""
        return self._window(params).apply(_as_float(x, self))

    def apply_adjoint(self, dy, params, shape):
        return self._window(params).adjoint(dy, shape)

    def _window(self, params):
        top, left = params["start"]
        return _Crop((top, top + self.height), (left, left + self.width), self.height,
                     self.width, "bilinear")

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "seed": self.seed}
