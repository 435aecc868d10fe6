"""Data-parallel training on one machine: processes x threads, and what Allreduce costs.

    python benchmarks/distributed.py                     # fashion CNN, global batch 128
    python benchmarks/distributed.py --batch 64 --steps 30 --rounds 7 --json out.json
    python benchmarks/distributed.py --configs 1x1,1x2,2x1 --backend im2col

For each configuration PxT (P processes of T threads; the threads of every runtime pinned
to T through OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, NUMBA_NUM_THREADS before it loads) a
fresh ``mpiexec -n P`` (P = 1: a plain process, no MPI at all) trains the Fashion-MNIST
tutorial CNN (:func:`fastcnn.models.fashion`, Adam) on ``--steps`` global batches per
round, after a warm-up fit (JIT compile or cache load, gradient buffers), and reports:

* samples/s: global samples of a round / the round's wall time (the slowest process's),
  median over ``--rounds`` rounds;
* Allreduce share: time spent inside MPI_Allreduce (the bucketed gradients plus the small
  loss/metric sums) / round time, per process, median over rounds; this includes waiting
  for the slower process, which is what a step loses to communication;
* pure Allreduce: the median time of one in-place Allreduce of a buffer as large as the
  model's parameters (float32) between idle processes, i.e. the transfer alone.

Fashion-MNIST is read from FASTCNN_DATA when present; otherwise random images of its size
(the work per step is the same). pytest-benchmark is not used: it times one process.

The machine may be shared: ``--repeat R`` launches every configuration R times, in turn
(1x2, 2x1, 1x2, 2x1, ...), so that a slow spell hits all of them; the table gives the
median over all rounds of all launches, and the spread (min..max of the launches' medians).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
               "MKL_NUM_THREADS")


# ------------------------------------------------------------------- worker
def worker(args):
    """Runs in each launched process (threads already pinned by the environment)."""
    import fastcnn  # first: it sets OpenBLAS's idle-thread timeout before NumPy loads
    import numpy as np

    from fastcnn import distributed, models

    procs = args.procs
    if procs > 1:
        distributed.init()
        if distributed.size() != procs:
            raise SystemExit(f"expected {procs} processes, MPI reports {distributed.size()}")
    strategy = distributed.current()
    fastcnn.set_backend(args.backend)
    fastcnn.set_random_seed(0)
    n = args.batch * args.steps
    if os.environ.get("FASTCNN_DATA"):   # never a download in the middle of a benchmark
        from fastcnn.datasets import fashion_mnist
        (x, y), _ = fashion_mnist.load_data()
        x = (x[:n, :, :, None] / np.float32(255)).astype(np.float32)
        y = y[:n]
        data = "Fashion-MNIST"
    else:   # same shapes, same work
        rng = np.random.default_rng(0)
        x = rng.random((n, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, 10, n)
        data = "random 28x28 images"
    model = models.fashion((28, 28, 1), 10)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    params = model.count_params()

    in_allreduce = [0.0]
    if procs > 1:
        real = strategy._sum_in_place

        def timed(buffer):
            t0 = time.perf_counter()
            real(buffer)
            in_allreduce[0] += time.perf_counter() - t0
        strategy._sum_in_place = timed

    warm = min(len(x), 2 * args.batch)
    model.fit(x[:warm], y[:warm], batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
    rounds, shares = [], []
    for _ in range(args.rounds):
        strategy.barrier()
        in_allreduce[0] = 0.0
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=args.batch, epochs=1, shuffle=False, verbose=0)
        elapsed = time.perf_counter() - t0
        if procs > 1:
            elapsed = strategy.comm.allreduce(elapsed, op=strategy._MPI.MAX)
            shares.append(in_allreduce[0] / elapsed)
        rounds.append(elapsed)

    pure = None
    if procs > 1:
        buffer = np.ones(params, dtype=np.float32)
        times = []
        for _ in range(max(20, args.rounds)):
            strategy.barrier()
            t0 = time.perf_counter()
            real(buffer)
            times.append(time.perf_counter() - t0)
        pure = statistics.median(times)
        shares = strategy.comm.gather(statistics.median(shares), root=0)
    if strategy.is_primary:
        median = statistics.median(rounds)
        print(json.dumps({
            "config": f"{procs}x{args.threads}", "procs": procs, "threads": args.threads,
            "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
            "backend": args.backend, "data": data, "params": params,
            "round_s": rounds, "median_round_s": median,
            "samples_per_s": n / median, "step_ms": 1e3 * median / args.steps,
            "allreduce_share": shares, "pure_allreduce_ms": None if pure is None
            else 1e3 * pure}))


# ------------------------------------------------------------------- driver
def find_mpiexec():
    beside = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.access(beside, os.X_OK):
        return beside
    return shutil.which("mpiexec") or shutil.which("mpirun")


def launch(procs, threads, args):
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + ([env["PYTHONPATH"]]
                                                  if env.get("PYTHONPATH") else []))
    argv = [sys.executable, os.path.abspath(__file__), "--worker", "--procs", str(procs),
            "--threads", str(threads), "--batch", str(args.batch), "--steps",
            str(args.steps), "--rounds", str(args.rounds), "--backend", args.backend]
    if procs > 1:
        mpiexec = find_mpiexec()
        if mpiexec is None:
            raise SystemExit('no mpiexec found: pip install "fastcnn[distributed]"')
        version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
        extra = ["--oversubscribe"] if "Open MPI" in version or "OpenRTE" in version else []
        argv = [mpiexec, "-n", str(procs)] + extra + argv
    result = subprocess.run(argv, capture_output=True, text=True, env=env,
                            timeout=args.timeout)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def combine(runs, args):
    """One configuration's launches as one result: medians over every round."""
    result = dict(runs[0])
    rounds = [t for r in runs for t in r["round_s"]]
    median = statistics.median(rounds)
    n = args.batch * args.steps
    result.update(
        round_s=rounds, median_round_s=median, samples_per_s=n / median,
        step_ms=1e3 * median / args.steps,
        spread=(min(n / r["median_round_s"] for r in runs),
                max(n / r["median_round_s"] for r in runs)),
        launches=len(runs))
    if runs[0]["allreduce_share"]:
        ranks = len(runs[0]["allreduce_share"])
        result["allreduce_share"] = [statistics.median(r["allreduce_share"][k] for r in runs)
                                     for k in range(ranks)]
        result["pure_allreduce_ms"] = statistics.median(r["pure_allreduce_ms"] for r in runs)
    return result


def table(results) -> str:
    base = results[0]["samples_per_s"]
    rows = ["| config (processes x threads) | samples/s (median) | launches' spread | "
            "step ms | vs "
            f"{results[0]['config']} | time in Allreduce / step | one Allreduce of the "
            "parameters |", "|---|---|---|---|---|---|---|"]
    for r in results:
        share = ("-" if not r["allreduce_share"] else
                 " / ".join(f"{100 * s:.1f}%" for s in r["allreduce_share"]))
        pure = "-" if r["pure_allreduce_ms"] is None else f"{r['pure_allreduce_ms']:.2f} ms"
        lo, hi = r["spread"]
        rows.append(f"| {r['procs']} x {r['threads']} | {r['samples_per_s']:.0f} | "
                    f"{lo:.0f}..{hi:.0f} | "
                    f"{r['step_ms']:.1f} | {r['samples_per_s'] / base:.2f}x | {share} | "
                    f"{pure} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="1x2,2x1",
                        help="comma-separated PxT: P processes of T threads (default 1x2,2x1)")
    parser.add_argument("--batch", type=int, default=128, help="GLOBAL batch (default 128)")
    parser.add_argument("--steps", type=int, default=20, help="global batches per round")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per launch")
    parser.add_argument("--repeat", type=int, default=1,
                        help="launches of each configuration, taken in turn (default 1)")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("--json", help="also write the raw results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--procs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if importlib.util.find_spec("mpi4py") is None:
        raise SystemExit('mpi4py is not installed: pip install "fastcnn[distributed]"')
    if not os.environ.get("FASTCNN_DATA"):
        shared = os.path.join(os.path.dirname(ROOT), "shared", "data")
        if os.path.isdir(os.path.join(shared, "fashion-mnist")):
            os.environ["FASTCNN_DATA"] = shared
    configs = [tuple(int(v) for v in c.lower().split("x")) for c in args.configs.split(",")]
    launches = {c: [] for c in configs}
    for turn in range(args.repeat):
        for procs, threads in configs:
            print(f"[{turn + 1}/{args.repeat}] {procs} process(es) x {threads} thread(s) ...",
                  file=sys.stderr)
            launches[(procs, threads)].append(launch(procs, threads, args))
    results = [combine(runs, args) for runs in launches.values()]
    first = results[0]
    print(f"Fashion-MNIST CNN ({first['params']:,} parameters, "
          f"{4 * first['params'] / 2**20:.2f} MiB of float32 gradients per step), global "
          f"batch {args.batch}, {args.steps} steps per round, {args.rounds} rounds x "
          f"{args.repeat} launches per configuration, backend {args.backend}, data: "
          f"{first['data']}, {os.cpu_count()} cores\n")
    print("Allreduce share: per process (rank 0 / rank 1 ...), time inside MPI_Allreduce "
          "(waiting for the other process included) / round time.\n")
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
