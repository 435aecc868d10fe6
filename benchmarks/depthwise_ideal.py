"""The depthwise forward against the fewest instructions its FLOPs and bytes need.

The roofline of test_bench_depthwise.py takes the better of a NumPy copy of a pass's
bytes and its FLOPs at the GEMM's rate. A 3x3 depthwise conv sits at the ridge of that
roofline (9 multiply-adds for each 64-byte vector read and written), where both must
overlap perfectly to reach it. This script measures how much of that the machine gives:
depthwise_ideal.c's kernel does a depthwise forward's work and nothing else (per output
vector one x load, 9 multiply-adds, one store) in memory order, the order the hardware
prefetchers follow best. It is timed interleaved with the cython backend's forward and a
NumPy copy of the same bytes, on MobileNetV2's stride-1 depthwise shapes, at 1 image (x
and y in L2 where they fit, as MobileNetV2's compiled plan runs its chains) and at 8
(from L3, as test_bench_depthwise.py times them), each call repeated on the same arrays.

    OMP_NUM_THREADS=1 FASTCNN_NUM_THREADS=1 taskset -c 1 python benchmarks/depthwise_ideal.py

Needs a C compiler that takes -march=x86-64-v4 ($CC, else gcc) and an AVX-512 CPU.
Columns: medians in microseconds with each call's overhead (timed on a one-pixel call)
taken off, GFLOP/s on the counted FLOPs (9 taps an output, borders included) and their
share of the run's GEMM rate (_cases.fastcnn_gemm_gflops), the copy's time, and the
kernel's time over the ideal's.
"""
import ctypes
import os
import subprocess
import sys
import tempfile
import time

import fastcnn  # noqa: F401  (before NumPy: thread settings)
import numpy as np

from fastcnn import _extensions

import _cases
from depthwise_ab import _placed

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPES = [(112, 32), (56, 144), (28, 192), (14, 384), (7, 960)]   # (h = w, channels)
BATCHES = (1, 8)


def build(directory=None):
    """depthwise_ideal.c compiled (into ``directory``, else a new temporary one) and
    loaded; RuntimeError naming the command where the compiler fails."""
    out = os.path.join(directory or tempfile.mkdtemp(prefix="fastcnn-dwideal-"), "dwideal.so")
    cmd = [os.environ.get("CC", "gcc"), "-O3", "-march=x86-64-v4", "-shared", "-fPIC",
           "-o", out, os.path.join(HERE, "depthwise_ideal.c")]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise RuntimeError(f"could not compile depthwise_ideal.c with {' '.join(cmd)!r}: "
                           f"{getattr(err, 'stderr', None) or err}") from err
    lib = ctypes.CDLL(out)
    lib.ideal_sequential.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_ssize_t]
    lib.ideal_sequential.restype = None
    return lib


def _median_call(fn, calls):
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _apart(x, rng):
    """A float32 array of x's shape, random, half a page from x's offset within a page: no
    4 KiB aliasing between the ideal kernel's loads of x and its stores."""
    buf = np.empty(x.size + 1024, np.float32)
    start = (x.ctypes.data + 2048 - buf.ctypes.data) % 4096 // 4
    out = buf[start:start + x.size].reshape(x.shape)
    out[...] = rng.standard_normal(x.shape, dtype=np.float32)
    return out


def main():
    if "depthwise" not in _extensions.modules:
        sys.exit("depthwise_ideal.py: the cython depthwise extension is not built "
                 "(python setup.py build_ext --inplace)")
    mod = _extensions.modules["depthwise"]
    if _extensions.modules["simd"].isa() != "avx512":
        sys.exit("depthwise_ideal.py: the ideal kernel is AVX-512 code; this CPU's SIMD "
                 f"build is {_extensions.modules['simd'].isa()}")
    try:
        lib = build()
    except RuntimeError as err:
        sys.exit(f"depthwise_ideal.py: {err}")
    rng = np.random.default_rng(0)

    # Call overheads, on one pixel of one channel vector.
    x1 = rng.standard_normal((1, 1, 1, 16), dtype=np.float32)
    w1, b1, y1 = np.zeros((9, 16), np.float32), np.zeros(16, np.float32), np.empty_like(x1)
    wq = rng.standard_normal(160, dtype=np.float32)
    args1 = (x1.ctypes.data, y1.ctypes.data, wq.ctypes.data, 0)
    over_kernel = _median_call(lambda: mod.forward(x1, w1, b1, y1, 3, 3, 1, 1, 1, 1, 1), 3000)
    over_c = _median_call(lambda: lib.ideal_sequential(*args1), 3000)
    print(f"call overheads taken off: kernel {over_kernel * 1e6:.2f} us, C ideal "
          f"{over_c * 1e6:.2f} us")
    gemm = _cases.fastcnn_gemm_gflops() or float("nan")
    print(f"FLOP ceiling: fastcnn's GEMM {gemm:.0f} GFLOP/s this run")
    print(f"{'shape':>16} | {'kernel us':>9} {'GF/s':>5} {'GEMM':>5} | {'ideal us':>8} "
          f"{'GF/s':>5} {'GEMM':>5} | {'copy us':>7} | kernel / ideal")
    for n in BATCHES:
        for h, c in SHAPES:
            x = rng.standard_normal((n, h, h, c), dtype=np.float32)
            wt = rng.standard_normal((9, c), dtype=np.float32)
            b = rng.standard_normal(c, dtype=np.float32)
            y = _placed(mod, x, x.shape, 1, False, 1, 1)
            y_ideal, y_copy = _apart(x, rng), _apart(x, rng)
            ideal_args = (x.ctypes.data, y_ideal.ctypes.data, wq.ctypes.data, x.size // 16)
            ops = {
                "kernel": (lambda: mod.forward(x, wt, b, y, 3, 3, 1, 1, 1, 1, 1), over_kernel),
                "ideal": (lambda: lib.ideal_sequential(*ideal_args), over_c),
                "copy": (lambda: np.copyto(y_copy, x), 0.0),
            }
            times = {name: [] for name in ops}
            for r in range(max(40, int(3e8 / x.size))):
                for name in (list(ops) if r % 2 else list(ops)[::-1]):
                    fn, _ = ops[name]
                    fn()   # the first call of a turn brings the arrays back where repeats find them
                    times[name].append(_median_call(fn, 3))
            med = {name: float(np.median(t)) - ops[name][1] for name, t in times.items()}
            gf = {name: 18 * x.size / t / 1e9 for name, t in med.items()}
            print(f"{n:>2}x{h:>3}x{h:<3}x{c:<4} | {med['kernel'] * 1e6:9.1f} {gf['kernel']:5.0f} "
                  f"{gf['kernel'] / gemm:5.0%} | {med['ideal'] * 1e6:8.1f} {gf['ideal']:5.0f} "
                  f"{gf['ideal'] / gemm:5.0%} | {med['copy'] * 1e6:7.1f} | "
                  f"{med['kernel'] / med['ideal']:.2f}", flush=True)


if __name__ == "__main__":
    main()
