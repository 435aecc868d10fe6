"""benchmarks/depthwise_ideal.c, the depthwise forward's work with nothing else: it must
really do that work (9 multiply-adds per output vector, one load, one store, every vector
including a tail shorter than its unrolled block), or the times depthwise_ideal.py compares
the kernels with would flatter it. Compiles the probe (well under a second) and checks
its outputs against NumPy."""
import os
import shutil
import sys

import fastcnn  # noqa: F401  (before NumPy)
import numpy as np
import pytest

from fastcnn import _extensions

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


def _skip_reason():
    if "simd" not in _extensions.modules:
        return "the cython extensions are not built here (the probe's ISA check needs them)"
    isa = _extensions.modules["simd"].isa()
    if isa != "avx512":
        return f"depthwise_ideal.c is AVX-512 code; this CPU runs fastcnn's {isa} kernels"
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        return f"no C compiler {os.environ.get('CC', 'gcc')!r} on PATH to build the probe"
    return None


@pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))
@pytest.mark.parametrize("nvec", [1, 9, 10, 37])
def test_the_ideal_kernel_does_nine_multiply_adds_per_vector(tmp_path, nvec):
    sys.path.insert(0, BENCH)
    try:
        import depthwise_ideal
    finally:
        sys.path.remove(BENCH)
    lib = depthwise_ideal.build(str(tmp_path))
    rng = np.random.default_rng(3)
    x = rng.standard_normal((nvec, 16), dtype=np.float32)
    w = rng.standard_normal((10, 16), dtype=np.float32)   # 9 taps, then the bias
    y = np.full_like(x, np.nan)
    lib.ideal_sequential(x.ctypes.data, y.ctypes.data, w.ctypes.data, nvec)
    expected = w[9].astype(np.float64) + x.astype(np.float64) * w[:9].astype(np.float64).sum(0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
