"""A train step in both import orders: ``import numpy`` before ``import fastcnn``, and after.

Each measurement is a fresh process (the order only matters at load time); the orders
alternate so that a noisy neighbour hits both alike. Per order it prints the median and the
best of the per-process median step times, the median of their 25th percentiles (less
disturbed by other jobs on a shared machine), and how much CPU OpenBLAS's idle threads
burn while the process sleeps 50 ms after a GEMM (spinning threads: tens of ms; asleep: ~0).

    python benchmarks/import_order.py [--backend auto] [--threads 2] [--model fashion]
                                      [--batch 128] [--rounds 5] [--steps 30] [--before-after]

``--before-after`` also runs every round with ``FASTCNN_OPENBLAS_RESTART=0``: the behaviour
before fastcnn restarted OpenBLAS's pool (fastcnn/_runtime.py), the "before" rows of
benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

CHILD = r"""
import os, statistics, sys, time, warnings
order, backend, model_id, batch, steps = sys.argv[1:6]
if order == "numpy-first":
    import numpy
warnings.simplefilter("ignore")
import fastcnn
import numpy as np
sys.path.insert(0, {here!r})
import _cases
a = np.ones((512, 512), np.float32)
spin = []
for _ in range(3):
    a @ a
    c0 = time.process_time(); time.sleep(0.05); spin.append(time.process_time() - c0)
spec = _cases.MODELS[model_id]
model = _cases.build_fastcnn(spec)
x, y = _cases.model_data(spec, int(batch))
with fastcnn.use_backend(backend):
    for _ in range(5):
        model.train_on_batch(x, y)
    ts = []
    for _ in range(int(steps)):
        t = time.perf_counter(); model.train_on_batch(x, y); ts.append(time.perf_counter() - t)
print(1000 * statistics.median(ts), 1000 * statistics.median(spin),
      1000 * sorted(ts)[len(ts) // 4])
"""


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="fashion")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--before-after", action="store_true",
                   help="also run every round with FASTCNN_OPENBLAS_RESTART=0 (the 'before')")
    args = p.parse_args(argv)
    env = dict(os.environ)
    for var in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(args.threads)
    env.pop("OPENBLAS_THREAD_TIMEOUT", None)   # fastcnn's default, not the user's
    restarts = ["1", "0"] if args.before_after else [env.get("FASTCNN_OPENBLAS_RESTART", "1")]
    code = CHILD.format(here=HERE)
    results = {(r, o): [] for r in restarts for o in ("fastcnn-first", "numpy-first")}
    for _ in range(args.rounds):
        for restart, order in results:
            out = subprocess.run(
                [sys.executable, "-c", code, order, args.backend, args.model,
                 str(args.batch), str(args.steps)],
                env=dict(env, FASTCNN_OPENBLAS_RESTART=restart), capture_output=True,
                text=True, check=True).stdout.split()
            results[restart, order].append(tuple(float(v) for v in out[:3]))
    print(f"{args.model} b{args.batch}, backend {args.backend}, {args.threads} threads, "
          f"{args.rounds} processes per row x {args.steps} steps")
    for (restart, order), rows in results.items():
        steps = [r[0] for r in rows]
        spins = [r[1] for r in rows]
        quick = [r[2] for r in rows]
        print(f"  FASTCNN_OPENBLAS_RESTART={restart} {order:14s} step: median of the "
              f"processes' medians {statistics.median(steps):6.1f} ms (best {min(steps):6.1f}), "
              f"of their 25th percentiles {statistics.median(quick):6.1f} ms; idle "
              f"OpenBLAS CPU per 50 ms sleep {statistics.median(spins):5.1f} ms")


if __name__ == "__main__":
    main()
