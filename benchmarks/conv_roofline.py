"""The conv kernels' share of their roofline on MobileNetV2's layers beside its depthwise ones.

What `test_bench_depthwise.py` reports for the depthwise kernels, for the conv kernels of the
same network (MobileNetV2 at 224x224, batch 8: its 1x1 convs at each stage and the 3x3 stem;
shapes B and D of the conv table for reference, whose Winograd does fewer FLOPs than the
direct count), so that "as fast as the conv kernels relative to their FLOPs and bytes" is
measured, not assumed. Roofline as there: the better of a NumPy copy moving the pass's bytes
(forward: x and y; backward: x, dy and dx, each timed at its own size) and the run's FLOP
ceiling (the better of a 2048^3 float32 np.dot and fastcnn's own GEMM,
``_cases.fastcnn_gemm_gflops``); share = roofline time / median time.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 FASTCNN_NUM_THREADS=1 \\
        python benchmarks/conv_roofline.py [--backend auto]
"""
import argparse
import time

import fastcnn  # noqa: F401  (before NumPy: thread settings)
import numpy as np

from fastcnn import backends, shapes

import _cases

# (name, batch, height = width, input channels, filters, kernel, stride)
CASES = [
    ("1x1 112x112x32 -> 16", 8, 112, 32, 16, 1, 1),
    ("1x1 56x56x24 -> 144", 8, 56, 24, 144, 1, 1),
    ("1x1 56x56x144 -> 24", 8, 56, 144, 24, 1, 1),
    ("1x1 28x28x192 -> 32", 8, 28, 192, 32, 1, 1),
    ("1x1 14x14x384 -> 64", 8, 14, 384, 64, 1, 1),
    ("1x1 7x7x960 -> 160", 8, 7, 960, 160, 1, 1),
    ("3x3 s2 224x224x3 -> 32 (stem)", 8, 224, 3, 32, 3, 2),
    ("ops B 64x13x13x64 -> 64", 64, 13, 64, 64, 3, 1),
    ("ops D 32x56x56x64 -> 64", 32, 56, 64, 64, 3, 1),
]


def sgemm_gflops(n=2048):
    """(NumPy's n^3 SGEMM rate, fastcnn's own GEMM rate, the FLOP ceiling): the better of
    the two, as in the benchmarks' conftest (_cases.flop_ceiling)."""
    a = np.ones((n, n), np.float32)
    np.dot(a, a)
    best = min(_timed(lambda: np.dot(a, a)) for _ in range(5))
    numpy_gflops = 2 * n ** 3 / best / 1e9
    ceiling, own, _ = _cases.flop_ceiling(numpy_gflops)
    return numpy_gflops, own, ceiling


def copy_seconds(nbytes):
    """Best time of a NumPy copy reading nbytes/2 and writing nbytes/2."""
    src = np.ones(max(1, nbytes // 8), np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    return min(_timed(lambda: np.copyto(dst, src))
               for _ in range(max(10, min(300, int(3e9 // max(nbytes, 1))))))


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median_seconds(fn, rounds):
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)
    be = backends.get(args.backend)
    rng = np.random.default_rng(0)
    numpy_gflops, own, gflops = sgemm_gflops()
    print(f"backend {args.backend}, SGEMM: NumPy {numpy_gflops:.1f} GFLOP/s, fastcnn "
          f"{own or float('nan'):.1f}, ceiling {gflops:.1f}; ms, GFLOP/s and share of the "
          f"roofline")
    for name, n, h, c, f, k, s in CASES:
        x = rng.standard_normal((n, h, h, c), dtype=np.float32)
        w = rng.standard_normal((k, k, c, f), dtype=np.float32)
        b = rng.standard_normal(f, dtype=np.float32)
        (ho, wo), pad = shapes.window_output_shape((h, h), (k, k), (s, s), "same")
        dy = rng.standard_normal((n, ho, wo, f), dtype=np.float32)
        flops = 2 * n * ho * wo * f * k * k * c

        def forward():
            return be.conv2d_forward(x, w, b, (s, s), pad)

        def forward_backward():
            _, ctx = forward()
            return be.conv2d_backward(dy, ctx)

        rounds = max(5, min(200, int(0.3 / (flops / gflops / 1e9))))
        t_fwd = median_seconds(forward, rounds)
        t_fb = median_seconds(forward_backward, max(5, rounds // 3))
        fwd_bytes, bwd_bytes = x.nbytes + dy.nbytes, 2 * x.nbytes + dy.nbytes
        roof_fwd = max(copy_seconds(fwd_bytes), flops / gflops / 1e9)
        roof_fb = max(copy_seconds(fwd_bytes) + copy_seconds(bwd_bytes), 3 * flops / gflops / 1e9)
        print(f"{name:<32} fwd {t_fwd * 1e3:8.3f} ms {flops / t_fwd / 1e9:6.1f} "
              f"{100 * roof_fwd / t_fwd:4.0f}%   fwd+bwd {t_fb * 1e3:8.3f} ms "
              f"{3 * flops / t_fb / 1e9:6.1f} {100 * roof_fb / t_fb:4.0f}%")


if __name__ == "__main__":
    main()
