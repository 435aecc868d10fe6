"""Random affine warps for a whole batch at once (the geometry of Keras's ImageDataGenerator).

The numbers are Keras's: ``apply_affine_transform`` as its ImageDataGenerator calls it. One
3x3 matrix per image maps an OUTPUT pixel's coordinates to the INPUT coordinates it samples
(the inverse map, as ``scipy.ndimage.affine_transform`` takes it). Keras composes
``rotation @ shift @ shear @ zoom`` between the offsets to ``(h / 2 - 0.5, w / 2 - 0.5)`` and
back, and then, because ImageDataGenerator's row axis comes before its column axis, swaps
the matrix's two axes before handing it to scipy (keras-preprocessing's PR 318). So in
(row, col) terms the matrix is the one composed in (col, row) order, and a user sees what
Keras users see (the known quirk of keras-team/keras#17398 and tf-keras#310):

* ``tx`` (``height_shift_range``, scaled by the HEIGHT) moves the content along columns by
  ``-tx``, and ``ty`` (``width_shift_range``, scaled by the width) along rows by ``-ty``;
* a positive ``theta`` turns the image counter-clockwise;
* on a non-square image the fixed point of rotation, shear and zoom is
  ``((w - 1) / 2, (h - 1) / 2)`` in (row, col), not the centre.

Sampling is bilinear, exactly what Keras's ``apply_affine_transform`` gets from
``scipy.ndimage.affine_transform(..., order=1, mode=fill_mode, cval=cval)`` (checked against
it to float rounding in tests/preprocessing/test_affine_keras.py), including scipy's edge
rules: 'nearest' repeats the edge pixel, 'reflect' mirrors about the pixel edge
(``d c b a | a b c d | d c b a``), 'constant' gives ``cval`` wherever the sampled point
lies outside ``[0, size - 1]`` (no blending with ``cval``), and 'wrap' is scipy's 'wrap',
periodic with period ``size - 1`` (first and last pixel overlap), not 'grid-wrap'.
"""
from __future__ import annotations

import numpy as np

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


def affine_matrix(h, w, theta=0.0, tx=0.0, ty=0.0, shear=0.0, zx=1.0, zy=1.0):
    """The (3, 3) inverse map of one warp; ``theta`` and ``shear`` in degrees, shifts in pixels."""
    m = _matrices(h, w, np.array([theta], float), np.array([tx], float),
                  np.array([ty], float), np.array([shear], float),
                  np.array([zx], float), np.array([zy], float))
    return m[0]


def _matrices(h, w, theta, tx, ty, shear, zx, zy):
    """(N, 3, 3) inverse maps from per-image parameter vectors (degrees, pixels, factors)."""
    n = len(theta)
    t, s = np.deg2rad(theta), np.deg2rad(shear)
    m = np.zeros((n, 3, 3))
    m[:, 2, 2] = 1.0
    rot = m.copy()
    rot[:, 0, 0], rot[:, 0, 1] = np.cos(t), -np.sin(t)
    rot[:, 1, 0], rot[:, 1, 1] = np.sin(t), np.cos(t)
    shift = np.broadcast_to(np.eye(3), (n, 3, 3)).copy()
    shift[:, 0, 2], shift[:, 1, 2] = tx, ty
    sh = m.copy()
    sh[:, 0, 0], sh[:, 0, 1], sh[:, 1, 1] = 1.0, -np.sin(s), np.cos(s)
    zoom = m.copy()
    zoom[:, 0, 0], zoom[:, 1, 1] = zx, zy
    cr, cc = h / 2.0 - 0.5, w / 2.0 - 0.5   # Keras's transform_matrix_offset_center
    to_centre = np.array([[1.0, 0, cr], [0, 1.0, cc], [0, 0, 1.0]])
    from_centre = np.array([[1.0, 0, -cr], [0, 1.0, -cc], [0, 0, 1.0]])
    keras = to_centre @ rot @ shift @ sh @ zoom @ from_centre
    # Keras's axis swap (row_axis < col_axis): rows and columns 0 and 1 exchanged.
    return keras[:, [1, 0, 2]][:, :, [1, 0, 2]]


def _fold(idx, size, fill_mode):
    """Integer neighbour indices brought into [0, size) by the fill rule (else clipped)."""
    if fill_mode == "reflect":      # scipy's 'reflect': d c b a | a b c d | d c b a
        idx = np.mod(idx, 2 * size)
        return np.where(idx >= size, 2 * size - 1 - idx, idx)
    return np.clip(idx, 0, size - 1)


def _wrap_coordinates(s, size):
    """scipy's 'wrap' for order <= 1: the COORDINATE is brought into [0, size - 1] with
    period size - 1 (negative ones land in (0, size - 1], ones beyond size - 1 in
    [0, size - 1)), as ni_interpolation.c's map_coordinate does."""
    period = size - 1
    if period <= 0:
        return np.zeros_like(s)
    out = s.copy()
    neg, big = s < 0, s > period
    out[neg] = s[neg] + period * (np.trunc(-s[neg] / period) + 1)
    out[big] = s[big] - period * np.trunc(s[big] / period)
    return out


def warp_batch(x, matrices, fill_mode="nearest", cval=0.0):
    """Applies ``matrices[i]`` to ``x[i]`` for the whole (N, H, W, C) batch at once, with
    bilinear sampling (scipy's ``order=1``; see the module docstring for the edges).

    Returns a new array of x's dtype (blended in x's float type); x is not modified.
    """
    n, h, w = x.shape[:3]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    # (N, H, W) source coordinates: one matrix-vector product per output pixel, all at once.
    src_r = (matrices[:, 0, 0, None, None] * rows + matrices[:, 0, 1, None, None] * cols
             + matrices[:, 0, 2, None, None])
    src_c = (matrices[:, 1, 0, None, None] * rows + matrices[:, 1, 1, None, None] * cols
             + matrices[:, 1, 2, None, None])
    outside = None
    if fill_mode == "constant":
        outside = (src_r < 0) | (src_r > h - 1) | (src_c < 0) | (src_c > w - 1)
    elif fill_mode == "wrap":
        src_r, src_c = _wrap_coordinates(src_r, h), _wrap_coordinates(src_c, w)
    r0, c0 = np.floor(src_r), np.floor(src_c)
    # Weights in the image's float type (float32 for the iterators: half the memory traffic
    # of float64; Keras's scipy blends in float64, a difference of float32 rounding).
    ftype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    fr, fc = (src_r - r0).astype(ftype), (src_c - c0).astype(ftype)
    r0, c0 = r0.astype(np.intp), c0.astype(np.intp)
    base = (np.arange(n, dtype=np.intp) * (h * w))[:, None, None]
    r1, c1 = _fold(r0 + 1, h, fill_mode) * w + base, _fold(c0 + 1, w, fill_mode)
    r0, c0 = _fold(r0, h, fill_mode) * w + base, _fold(c0, w, fill_mode)
    corners = (r0 + c0, r0 + c1, r1 + c0, r1 + c1)   # flat indices into one channel plane
    channels = x.shape[3]
    # Channel planes (C, N * H * W): each corner is then a 1-D take (measured 1.5x faster
    # than gathering (N * H * W, C) rows for C = 3).
    planes = np.ascontiguousarray(np.moveaxis(x.reshape(n * h * w, channels), 1, 0),
                                  dtype=ftype)
    out = np.empty(x.shape, dtype=ftype)
    for ch in range(channels):
        plane = planes[ch]
        top = plane.take(corners[0])
        top += (plane.take(corners[1]) - top) * fc      # (1 - fc) a + fc b
        bottom = plane.take(corners[2])
        bottom += (plane.take(corners[3]) - bottom) * fc
        bottom -= top
        bottom *= fr
        bottom += top                                   # (1 - fr) top + fr bottom
        out[..., ch] = bottom
    if outside is not None and outside.any():
        out[outside] = cval
    if np.issubdtype(x.dtype, np.integer):
        out = np.rint(out)
    return out.astype(x.dtype, copy=False)
