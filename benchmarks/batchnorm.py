"""BatchNormalization forward + backward (training mode) per backend, on the Fashion-MNIST
ResNet's shapes (examples/fashion_mnist_resnet.py): batch 128 at 28x28x16, 14x14x32 and
7x7x64, float32. Interleaved rounds, medians, CPU time of this process.

    python benchmarks/batchnorm.py --threads 1 --rounds 30

'reference' is the NumPy the layer ran before the kernels (fastcnn/backends/reference.py).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--rounds", type=int, default=30)
p.add_argument("--batch", type=int, default=128)
ARGS = p.parse_args()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import fastcnn  # noqa: E402, I001
import numpy as np  # noqa: E402
from fastcnn import backends  # noqa: E402

SHAPES = [(ARGS.batch, 28, 28, 16), (ARGS.batch, 14, 14, 32), (ARGS.batch, 7, 7, 64)]
NAMES = [n for n in ("reference", "numba", "cython") if n in backends.available()
         and (n == "reference" or not backends.get(n).reused_from("batchnorm_forward"))]


def step(be, x, gamma, beta, dy):
    mean, var = be.batchnorm_statistics(x)
    y, ctx = be.batchnorm_forward(x, gamma, beta, mean, var, 1e-3, True)
    return be.batchnorm_backward(dy, ctx)


def main():
    rng = np.random.default_rng(0)
    cases = []
    for shape in SHAPES:
        c = shape[-1]
        cases.append(tuple(a.astype(np.float32) for a in (
            rng.standard_normal(shape), rng.uniform(0.5, 2, c), rng.standard_normal(c),
            rng.standard_normal(shape))))
    times = {(n, i): [] for n in NAMES for i in range(len(SHAPES))}
    for n in NAMES:   # warm-up (JIT compiles)
        for case in cases:
            step(backends.get(n), *case)
    for _ in range(ARGS.rounds):
        for i, case in enumerate(cases):
            for n in NAMES:
                be = backends.get(n)
                t0 = time.process_time()
                step(be, *case)
                times[n, i].append(time.process_time() - t0)
    print(f"BN fwd+bwd (training), float32, {ARGS.threads} thread(s), median of "
          f"{ARGS.rounds}, ms:")
    print("| shape | " + " | ".join(NAMES) + " |")
    print("|---|" + "---|" * len(NAMES))
    total = {n: 0.0 for n in NAMES}
    for i, shape in enumerate(SHAPES):
        row = []
        for n in NAMES:
            ms = 1e3 * statistics.median(times[n, i])
            total[n] += ms
            row.append(f"{ms:.2f}")
        print(f"| {'x'.join(map(str, shape))} | " + " | ".join(row) + " |")
    print("| sum | " + " | ".join(f"{total[n]:.2f}" for n in NAMES) + " |")


if __name__ == "__main__":
    main()
