"""Winograd F(2x2, 3x3) (Lavin & Gray, 2016): what the compiled kernels (csrc/wino.h) share
between the inference plan and the Cython backend.

* :func:`enabled`: one switch for both, ``FASTCNN_WINOGRAD=0`` (the plan's older
  ``FASTCNN_PLAN_WINOGRAD=0`` also still turns it off).
* :func:`transform_kernel`: the kernel transform ``U = G g G^T`` per (channel, filter), in
  float64 then rounded once to float32, laid out ``(16, C, F padded to 16)`` (position
  ``p = 4k + l`` of the 4x4 transformed tile first: the kernels' 16 small GEMMs).

Users: the plan's fused conv + pool (fastcnn/inference_plan.py), and the cython backend's
fused conv + pool forward and 3x3 stride-1 dx (fastcnn/backends/cython_cpu.py). Float32
only; rounding differs from the direct kernels in the last bits, and an infinite input
can give NaN where the direct conv gives an infinity (inf - inf in the transforms).
"""
from __future__ import annotations

import os

import numpy as np

#: Winograd F(2x2, 3x3)'s kernel transform G (4 x 3).
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def enabled() -> bool:
    """False when ``FASTCNN_WINOGRAD`` (or the older ``FASTCNN_PLAN_WINOGRAD``) is ``0``."""
    return (os.environ.get("FASTCNN_WINOGRAD", "1") != "0"
            and os.environ.get("FASTCNN_PLAN_WINOGRAD", "1") != "0")


def transform_kernel(w) -> np.ndarray:
    """``w`` (3, 3, C, F) -> float32 ``(16, C, F16)``, ``F16`` = F rounded up to 16 (zero
    columns past F): a new array."""
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[:2] != (3, 3):
        raise ValueError(f"w must be a (3, 3, C, F) kernel, got shape {w.shape}")
    c, f = w.shape[2], w.shape[3]
    # Two small matmuls (a training step transforms every step's weights: 64 -> 128
    # channels takes 0.18 ms this way, 1.1 ms as one einsum).
    t = (G @ np.asarray(w, np.float64).reshape(3, -1)).reshape(4, 3, c * f)   # G g
    u = np.matmul(G, t)                                                      # (G g) G^T
    f16 = -(-f // 16) * 16
    packed = np.zeros((16, c, f16), np.float32)
    packed[:, :, :f] = u.reshape(16, c, f)
    return packed
