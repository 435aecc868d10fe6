"""Softmax and the fused cross-entropies at huge logits, against exact answers.

Rows such as ``[1e4, 1e4, -1e4]`` or ``[1e30, 1e30, -1e30]`` have a softmax of exactly
``[0.5, 0.5, 0]`` and a cross-entropy of exactly ``log 2``. A kernel that forms
``logsumexp = max + log(sum)`` before subtracting rounds ``log(sum)`` away at the scale of the
max (float32 keeps about 7 digits): the numba backend gave a softmax of 0.49989 at 1e4 and
a gradient off by 0.125 at 1e30, the cython backend a loss of 0 at 1e30. Every backend that
loads is checked (cuda too, on tiny rows, under the CUDA simulator).
"""
from __future__ import annotations

import os

from fastcnn import backends  # noqa: I001  (fastcnn before NumPy)
import numpy as np
import pytest

# As tests/conftest.py decides it (set there before numba loads).
CUDA_SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

DTYPES = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
TOL = {np.dtype(np.float32): dict(rtol=1e-6, atol=1e-7),
       np.dtype(np.float64): dict(rtol=1e-12, atol=1e-15)}
LOG2 = np.log(2.0)
SCALES = [1e4, 1e30]


def _op(b, name):
    if not b.implements(name):
        pytest.skip(f"backend {b.name!r} does not implement {name!r}")
    return getattr(b, name)


def _close(actual, expected, dtype, what):
    __tracebackhide__ = True
    actual = np.asarray(actual)
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {np.dtype(dtype)}"
    np.testing.assert_allclose(actual, expected, **TOL[np.dtype(dtype)], err_msg=what)


def check_extreme_logits(b, dtype):
    for s in SCALES:
        z = np.array([[s, s, -s], [s, -s, s], [-s, s, s]], dtype)
        halves = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
        y, _ = _op(b, "softmax_forward")(z)
        _close(y, halves, dtype, f"{b.name} softmax_forward at {s:g}")

        # One-hot on a winning class: loss log 2, gradient (softmax - t) / N.
        labels = np.array([0, 2, 1])
        t = np.eye(3, dtype=dtype)[labels]
        grad = (halves - t) / 3
        loss, dz = _op(b, "softmax_cross_entropy")(z, t)
        _close(loss, LOG2, dtype, f"{b.name} softmax_cross_entropy loss at {s:g}")
        _close(dz, grad, dtype, f"{b.name} softmax_cross_entropy gradient at {s:g}")
        loss, dz = _op(b, "sparse_softmax_cross_entropy")(z, labels)
        _close(loss, LOG2, dtype, f"{b.name} sparse_softmax_cross_entropy loss at {s:g}")
        _close(dz, grad, dtype, f"{b.name} sparse_softmax_cross_entropy gradient at {s:g}")

        # Unnormalised targets (sum 2): the gradient is softmax * sum(t) - t.
        t2 = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]], dtype)
        loss, dz = _op(b, "softmax_cross_entropy")(z, t2)
        _close(loss, 2 * LOG2, dtype, f"{b.name} softmax_cross_entropy (sum 2) loss at {s:g}")
        _close(dz, (2 * halves - t2) / 3, dtype,
               f"{b.name} softmax_cross_entropy (sum 2) gradient at {s:g}")

        # Sigmoid: confident and right gives 0; t = 0.5 gives s/2 per element of +s.
        x = np.array([[s, -s], [s, -s]], dtype)
        t = np.array([[1, 0], [0.5, 0.5]], dtype)
        loss, dz = _op(b, "sigmoid_cross_entropy")(x, t)
        _close(loss, (s / 2 + s / 2) / 4, dtype, f"{b.name} sigmoid_cross_entropy loss at {s:g}")
        _close(dz, np.array([[0, 0], [0.5, -0.5]]) / 4, dtype,
               f"{b.name} sigmoid_cross_entropy gradient at {s:g}")


@DTYPES
def test_extreme_logits_exact(backend, dtype):
    check_extreme_logits(backend, dtype)


@pytest.mark.skipif(not CUDA_SIMULATED, reason="on a real GPU the cuda backend runs in "
                    "test_extreme_logits_exact with the others")
@pytest.mark.skipif("cuda" not in backends.available(),
                    reason="the cuda backend does not load here (numba-cuda missing)")
@DTYPES
def test_extreme_logits_exact_cuda_simulated(dtype):
    # Three rows of three logits: a few simulated threads, well under a second.
    check_extreme_logits(backends.get("cuda"), dtype)
