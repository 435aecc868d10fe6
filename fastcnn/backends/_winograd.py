"""Winograd F(2x2, 3x3) (Lavin & Gray, 2016): what the compiled kernels (csrc/wino.h) share
between the inference plan and the Cython backend.

* :func:`enabled`: one switch for both, ``FASTCNN_WINOGRAD=0`` (the plan's older
  ``FASTCNN_PLAN_WINOGRAD=0`` also still turns it off); :func:`tile`: the training
  backend runs F(4x4, 3x3) (``FASTCNN_WINOGRAD=2``: F(2x2, 3x3), as the plan).
* :func:`transform_kernel`: the kernel transform ``U = G g G^T`` per (channel, filter), in
  float64 then rounded once to float32, laid out ``(16, C, F padded to 16)`` (position
  ``p = 4k + l`` of the 4x4 transformed tile first: the kernels' 16 small GEMMs), or for
  F(4x4, 3x3) ``(36, C, F padded to 16)``.

Users: the plan's fused conv + pool (fastcnn/inference_plan.py), and the cython backend's
fused conv + pool forward and 3x3 stride-1 dx (fastcnn/backends/cython_cpu.py). Float32
only; rounding differs from the direct kernels in the last bits (F(4x4): errors about 8x
F(2x2)'s, ~1e-5 of the outputs' scale), and an infinite input can give NaN where the
direct conv gives an infinity (inf - inf in the transforms).
"""
from __future__ import annotations

import os

import numpy as np

#: Winograd F(2x2, 3x3)'s kernel transform G (4 x 3).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
#: F(4x4, 3x3)'s (6 x 3; interpolation points 0, 1, -1, 2, -2, infinity: csrc/wino4_kernels.h).
G4 = np.array([[1 / 4, 0.0, 0.0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
               [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0.0, 0.0, 1.0]])


def enabled() -> bool:
    """False when ``FASTCNN_WINOGRAD`` (or the older ``FASTCNN_PLAN_WINOGRAD``) is ``0``."""
    return (os.environ.get("FASTCNN_WINOGRAD", "1") != "0"
            and os.environ.get("FASTCNN_PLAN_WINOGRAD", "1") != "0")


def tile() -> int:
    """The training backend's output tile: 4 (F(4x4, 3x3)), or 2 (F(2x2, 3x3), the plan's)
    when ``FASTCNN_WINOGRAD=2``."""
    return 2 if os.environ.get("FASTCNN_WINOGRAD") == "2" else 4


def tile_for(ho, wo) -> int:
    """The tile of a plain conv (every output stored) with an ho x wo output: :func:`tile`,
    or 2 under 6 pixels a side (a 4x4 tile would mostly compute past the edge)."""
    return tile() if min(ho, wo) >= 6 else 2


def transform_kernel(w, m=2) -> np.ndarray:
    """``w`` (3, 3, C, F) -> float32 ``((m+2)**2, C, F16)`` for F(m x m, 3x3), m = 2 or 4,
    ``F16`` = F rounded up to 16 (zero columns past F): a new array."""
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[:2] != (3, 3):
        raise ValueError(f"w must be a (3, 3, C, F) kernel, got shape {w.shape}")
    if m not in (2, 4):
        raise ValueError(f"m (the output tile) must be 2 or 4, got {m!r}")
    g = G if m == 2 else G4
    a = m + 2
    c, f = w.shape[2], w.shape[3]
    # Two small matmuls (a training step transforms every step's weights: 64 -> 128
    # channels takes 0.18 ms this way, 1.1 ms as one einsum).
    t = (g @ np.asarray(w, np.float64).reshape(3, -1)).reshape(a, 3, c * f)   # G g
    u = np.matmul(g, t)                                                      # (G g) G^T
    f16 = -(-f // 16) * 16
    packed = np.zeros((a * a, c, f16), np.float32)
    packed[:, :, :f] = u.reshape(a * a, c, f)
    return packed
