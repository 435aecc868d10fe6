"""Random affine warps for a whole batch at once (the geometry of Keras's ImageDataGenerator).

Conventions follow Keras's ``apply_affine_transform``: coordinates are (row, col); one 3x3
matrix per image maps an OUTPUT pixel's coordinates to the INPUT coordinates it samples
(the inverse map, as ``scipy.ndimage.affine_transform`` takes it), composed as
``rotation @ shift @ shear @ zoom`` about the image centre ``((h - 1) / 2, (w - 1) / 2)``.
Consequences a user can check: a shift ``tx`` moves the content by ``-tx`` rows; a zoom
``z < 1`` magnifies. Sampling is nearest-neighbour (Keras interpolates bilinearly; nearest
keeps the warp one gather and exact for flips, shifts and quarter turns).
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
    cr, cc = (h - 1) / 2.0, (w - 1) / 2.0
    to_centre = np.array([[1.0, 0, cr], [0, 1.0, cc], [0, 0, 1.0]])
    from_centre = np.array([[1.0, 0, -cr], [0, 1.0, -cc], [0, 0, 1.0]])
    return to_centre @ rot @ shift @ sh @ zoom @ from_centre


def _fold(idx, size, fill_mode):
    """Integer source indices brought into [0, size) by the fill rule (constant: clipped)."""
    if fill_mode == "reflect":      # scipy's 'reflect': d c b a | a b c d | d c b a
        idx = np.mod(idx, 2 * size)
        return np.where(idx >= size, 2 * size - 1 - idx, idx)
    if fill_mode == "wrap":         # a b c d | a b c d | a b c d (scipy's 'grid-wrap')
        return np.mod(idx, size)
    return np.clip(idx, 0, size - 1)


def warp_batch(x, matrices, fill_mode="nearest", cval=0.0):
    """Applies ``matrices[i]`` to ``x[i]`` for the whole (N, H, W, C) batch in one gather.

    Returns a new array of x's dtype; x is not modified.
    """
    n, h, w = x.shape[:3]
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")
    # (N, H, W) source coordinates: one matrix-vector product per output pixel, all at once.
    src_r = (matrices[:, 0, 0, None, None] * rows + matrices[:, 0, 1, None, None] * cols
             + matrices[:, 0, 2, None, None])
    src_c = (matrices[:, 1, 0, None, None] * rows + matrices[:, 1, 1, None, None] * cols
             + matrices[:, 1, 2, None, None])
    # Nearest pixel; the small epsilon keeps exact quarter turns exact despite cos/sin rounding.
    ri = np.floor(src_r + 0.5 + 1e-9).astype(np.intp)
    ci = np.floor(src_c + 0.5 + 1e-9).astype(np.intp)
    outside = None
    if fill_mode == "constant":
        outside = (ri < 0) | (ri >= h) | (ci < 0) | (ci >= w)
    ri, ci = _fold(ri, h, fill_mode), _fold(ci, w, fill_mode)
    out = x[np.arange(n)[:, None, None], ri, ci]
    if outside is not None and outside.any():
        out[outside] = cval
    return out
