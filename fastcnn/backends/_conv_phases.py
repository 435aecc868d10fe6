"""The input gradient of a strided conv as stride-1 correlations: the geometry, once.

``dx[n, ih, iw, c] = sum over (a, b, f) of dy[n, (ih + top - a)/sh, (iw + left - b)/sw, f]
* w[a, b, c, f]``, where only the taps with ``(ih + top - a) % sh == 0`` (and likewise for
columns) exist. Split dx by stride *phase*: the dx rows with ``(ih + top) % sh == rh``
receive gradient only from kernel rows ``a = rh, rh + sh, ...``, through consecutive dy
rows. Each phase is therefore a plain stride-1 correlation of dy with the sub-kernel
``w[rh::sh, rw::sw]``, flipped so that its taps run forward through dy, writing every
``sh``-th row and ``sw``-th column of dx. No dx value is scattered or shared between two
phases (or two threads), so the gather kernels that compute a conv forward compute dx too.

Used by the numba and cython backends (their gather kernels take the same geometry).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple

import numpy as np


class Phase(NamedTuple):
    """One stride phase: the gather that computes dx's pixels of that phase.

    Grid point ``(n, u, v)`` writes ``dx[n, oy0 + u*osy, ox0 + v*osx, :]`` from the dy taps
    ``dy[n, by0 + u*bsy + a', bx0 + v*bsx + b', :]`` (a' < n_a, b' < n_b; zero outside dy)
    times ``w_sub[(a'*n_b + b')*F + f, c]``.
    """

    w_sub: np.ndarray      # (n_a*n_b*F, C), C-contiguous
    taps: tuple            # (n_a, n_b)
    grid: tuple            # (grid_u, grid_v)
    base: tuple            # (by0, bsy, bx0, bsx)
    dest: tuple            # (oy0, osy, ox0, osx)


def dx_is_covered(w_shape, stride) -> bool:
    """True when every dx pixel belongs to some phase (so dx need not be zeroed first):
    a kernel at least as large as its stride along both axes."""
    kh, kw = w_shape[:2]
    return kh >= stride[0] and kw >= stride[1]


def dx_phases(x_shape, w, stride, pad) -> Iterator[Phase]:
    """The phases of dx that receive gradient (see the module docstring)."""
    _, h, wd, c = x_shape
    kh, kw = w.shape[:2]
    (sh, sw), ((pt, _), (pl, _)) = stride, pad
    for rh in range(sh):
        n_a = len(range(rh, kh, sh))
        first_h = (rh - pt) % sh  # first dx row of this phase
        grid_u = len(range(first_h, h, sh))
        for rw in range(sw):
            n_b = len(range(rw, kw, sw))
            first_w = (rw - pl) % sw
            grid_v = len(range(first_w, wd, sw))
            if n_a == 0 or n_b == 0 or grid_u == 0 or grid_v == 0:
                continue  # no kernel tap reaches these dx pixels: they stay 0
            # dx pixel first_h + sh*u gets gradient from kernel rows rh + sh*a' through dy
            # rows (first_h + top - rh)/sh + u - a', a' < n_a: a window of n_a dy rows that
            # starts n_a - 1 rows above. Flipping the sub-kernel makes its taps run forward
            # through that window. Rows of w_sub are (a', b', f) in tap order, columns c.
            w_sub = np.ascontiguousarray(
                w[rh::sh, rw::sw][::-1, ::-1].transpose(0, 1, 3, 2).reshape(-1, c))
            yield Phase(w_sub, (n_a, n_b), (grid_u, grid_v),
                        ((first_h + pt - rh) // sh - (n_a - 1), 1,
                         (first_w + pl - rw) // sw - (n_b - 1), 1),
                        (first_h, sh, first_w, sw))
