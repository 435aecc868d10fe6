"""The benchmarks' FLOP ceiling: the better of NumPy's SGEMM and fastcnn's own GEMM.

NumPy's BLAS can run narrower vectors than the machine has (OpenBLAS picked its Haswell
kernels on a Zen 5), so the benchmarks' rooflines also time fastcnn's 1x1 conv as a GEMM
(``benchmarks/_cases.fastcnn_gemm_gflops``) and the summary names which one the ceiling is.
Nothing here times anything long: one round of the GEMM case.
"""
import os
import sys

import fastcnn  # noqa: F401  (before NumPy)
import pytest

from fastcnn import backends

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks")


@pytest.fixture(scope="module")
def bench_modules():
    sys.path.insert(0, BENCH)
    try:
        import _cases
        import summarize
        yield _cases, summarize
    finally:
        sys.path.remove(BENCH)


def test_fastcnn_gemm_rate_is_measured_where_the_cython_backend_is(bench_modules):
    _cases, _ = bench_modules
    rate = _cases.fastcnn_gemm_gflops(rounds=1)
    if "cython" in backends.available():
        assert isinstance(rate, float) and rate > 0
    else:
        assert rate is None


def test_the_summary_names_both_rates_and_the_ceiling(bench_modules):
    _, summarize = bench_modules
    sgemm = {"n": 2048, "gflops": 217.6, "numpy_gflops": 102.2, "fastcnn_gflops": 217.6,
             "ceiling": "fastcnn", "median_gflops": 100.0, "cpu_per_wall": 1.0}
    text = summarize.render([{"datetime": "2026-12-07T16:00:00", "benchmarks": [],
                              "fastcnn": {"sgemm": sgemm, "threads": 1}}])
    assert "2048^3 best 102.2 GFLOP/s" in text
    assert "fastcnn's GEMM 217.6; ceiling 217.6 (fastcnn)" in text
    # A run recorded before the ceiling existed still reads: NumPy's rate alone.
    old = {"n": 2048, "gflops": 110.0, "median_gflops": 100.0, "cpu_per_wall": 1.0}
    text = summarize.render([{"datetime": "2026-12-06T16:00:00", "benchmarks": [],
                              "fastcnn": {"sgemm": old, "threads": 1}}])
    assert "2048^3 best 110.0 GFLOP/s" in text and "ceiling" not in text


def test_the_ceiling_is_the_better_rate_and_says_which(bench_modules):
    _cases, _ = bench_modules
    own = _cases.fastcnn_gemm_gflops(rounds=1)
    ceiling, measured, which = _cases.flop_ceiling(1e-6)   # any GEMM beats this rate
    if own is None:
        assert (ceiling, measured, which) == (1e-6, None, "numpy")
    else:
        assert ceiling == measured > 1e-6 and which == "fastcnn"
    ceiling, _, which = _cases.flop_ceiling(1e9)           # no GEMM reaches this one
    assert (ceiling, which) == (1e9, "numpy")
