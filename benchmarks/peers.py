"""fastcnn against every peer, each in its own process, taking turns: the peer table.

    python benchmarks/peers.py                       # everything found, 1 and 2 threads
    python benchmarks/peers.py --threads 1 --cases fashion_infer_b1 --systems onnxruntime
    python benchmarks/peers.py --turns 3 --rounds 20 -o .benchmarks/peers.md

Cases: the four standard models' train steps (benchmarks/_cases.py TRAIN_CASES: one Adam
step with Keras's defaults) and the Fashion-MNIST CNN's inference at batch 1 and 128.
Peers: PyTorch eager (NCHW and channels_last), torch.compile (inductor, channels_last),
JAX jit (XLA), TensorFlow / Keras 3 with jit_compile off and on, ONNX Runtime (inference,
full graph optimisation).

How it is fair (issue 16):

* **Own process, own defaults.** Every measurement runs in a fresh process
  (benchmarks/peer_worker.py) that imports only its own library, after the thread variables
  are set: fastcnn's import sets OMP_WAIT_POLICY=PASSIVE for fastcnn's process only, and
  PyTorch keeps libgomp's default spinning (in one process with fastcnn it lost 3x at 2
  threads, batch 1).
* **Taking turns.** For each case, fastcnn's process and each peer's alternate ``--turns``
  times; the figure is the median over the turns of each process's median round. A noisy
  minute hurts both sides.
* **Same numbers first.** Every process starts from the same weights (fastcnn's
  initialisation, saved once) and the same batch; before any time is kept, the peer's first
  loss (train) or output (inference) must equal fastcnn's (rtol 1e-4 / atol 1e-5), else the
  row says WRONG and no ratio is given.
* **Pinned cores.** Below the machine's core count every process runs under ``taskset`` on
  exactly ``--threads`` cores, besides the thread variables (XLA's CPU client does not take
  them all).
* A peer that is not installed is skipped with the reason. TensorFlow usually lives in
  another environment: ``--tf-python /path/to/python`` (default: this Python if it imports
  tensorflow).

Ratio = peer ms / fastcnn ms (above 1: fastcnn faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir))
sys.path.insert(0, HERE)

SYSTEMS = ("torch", "torch_cl", "torch_compile", "jax", "tf", "tf_xla", "onnxruntime")
TITLES = {"torch": "PyTorch eager (NCHW)", "torch_cl": "PyTorch eager (channels_last)",
          "torch_compile": "torch.compile (inductor)", "jax": "JAX jit (XLA)",
          "tf": "TF / Keras 3", "tf_xla": "TF / Keras 3, jit_compile",
          "onnxruntime": "ONNX Runtime (ORT_ENABLE_ALL)"}
IMPORTS = {"torch": "torch", "torch_cl": "torch", "torch_compile": "torch", "jax": "jax",
           "tf": "tensorflow", "tf_xla": "tensorflow", "onnxruntime": "onnxruntime"}
# (case id, model, batch, mode)
CASES = [(f"{m}_train_b{b}", m, b, "train") for m, b in
         [("scratch", 1), ("scratch", 64), ("lenet5", 64), ("fashion", 64),
          ("fashion", 128), ("catsdogs", 32)]] + [
    ("fashion_infer_b1", "fashion", 1, "infer"), ("fashion_infer_b128", "fashion", 128, "infer")]


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--cases", nargs="+", default=[c[0] for c in CASES],
                   choices=[c[0] for c in CASES], metavar="CASE")
    p.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    p.add_argument("--turns", type=int, default=3, help="alternations per peer and case")
    p.add_argument("--rounds", type=int, default=0,
                   help="timed rounds per process (default: by case, about 1 s)")
    p.add_argument("--tf-python", default=None,
                   help="the Python that has tensorflow (default: this one if it does)")
    p.add_argument("-o", "--output", default=None, help="also write the table here")
    return p.parse_args(argv)


def python_for(system, args):
    if system in ("tf", "tf_xla") and args.tf_python:
        return args.tf_python
    return sys.executable


def missing(system, args):
    """None when the peer's library imports in its Python, else the reason."""
    py = python_for(system, args)
    r = subprocess.run([py, "-c", f"import {IMPORTS[system]}"], capture_output=True,
                       text=True)
    if r.returncode:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return f"{IMPORTS[system]} does not import in {py}: {last}"
    return None


def prepare(case, workdir):
    """The model's layers, weights and batch, as files every worker reads."""
    import fastcnn  # noqa: F401
    import numpy as np

    import _cases

    _, model_id, batch, mode = case
    spec = _cases.MODELS[model_id]
    model = _cases.build_fastcnn(spec)
    x, y = _cases.model_data(spec, batch)
    weights = os.path.join(workdir, f"{model_id}.npz")
    np.savez(weights, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
    data = os.path.join(workdir, f"{model_id}_b{batch}.npz")
    np.savez(data, x=x, y=y)
    return {"layers": [list(layer) for layer in spec.layers],
            "input_shape": list(spec.input_shape), "loss": spec.loss,
            "weights": weights, "batch": data, "mode": mode}


def default_rounds(case):
    _, model_id, batch, mode = case
    # Batch-1 steps take 0.05-0.6 ms: 100 of them timed 10 ms, less than one of this
    # VM's scheduling hiccups, and a process's median swung 1.5x (2026-12-07: the same
    # fastcnn step 0.11 ms in one process, 0.20 in the next); 1000-2000 time 0.1-1 s.
    if mode == "infer":
        return 2000 if batch == 1 else 20
    return {"scratch": 1000 if batch == 1 else 20, "catsdogs": 5}.get(model_id, 10)


def run_worker(system, job, threads, rounds, args, workdir):
    job = dict(job, system=system, threads=threads, rounds=rounds,
               warmup=max(3 if system != "torch_compile" else 5, rounds // 10))
    path = os.path.join(workdir, "job.json")
    with open(path, "w") as f:
        json.dump(job, f)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "MALLOC_ARENA_MAX", "MALLOC_TRIM_THRESHOLD_")}
    cmd = [python_for(system, args), os.path.join(HERE, "peer_worker.py"), path]
    if shutil.which("taskset") and threads < (os.cpu_count() or 1):
        # The thread variables are advice some runtimes do not take (XLA's CPU client ran
        # Fashion-MNIST at batch 128 at 185 GFLOP/s "on 1 thread", above one core's FMA
        # peak): every process, fastcnn's included, gets exactly `threads` cores.
        cmd = ["taskset", "-c", ",".join(str(c) for c in range(threads))] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    if r.returncode or not lines:
        tail = (r.stderr.strip().splitlines() or r.stdout.strip().splitlines() or ["?"])[-1]
        raise RuntimeError(f"{system} failed: {tail}")
    return json.loads(lines[-1])


def same(a, b):
    import numpy as np

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-4, atol=1e-5))


def main(argv=None):
    args = parse(argv if argv is not None else sys.argv[1:])
    if args.tf_python is None:
        for candidate in (sys.executable, "/work/tfvenv/bin/python"):
            if os.path.exists(candidate) and not subprocess.run(
                    [candidate, "-c", "import tensorflow"], capture_output=True).returncode:
                args.tf_python = candidate
                break
    skipped = {s: why for s in args.systems if (why := missing(s, args))}
    systems = [s for s in args.systems if s not in skipped]
    rows, versions = [], {}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    with tempfile.TemporaryDirectory() as workdir:
        for case in CASES:
            if case[0] not in args.cases:
                continue
            job = prepare(case, workdir)
            rounds = args.rounds or default_rounds(case)
            for threads in args.threads:
                for system in systems:
                    if system == "onnxruntime" and case[3] != "infer":
                        continue
                    ours, theirs, status, mem = [], [], "", [0.0, 0.0, 0.0, 0.0]
                    try:
                        for _ in range(args.turns):
                            a = run_worker("fastcnn", job, threads, rounds, args, workdir)
                            b = run_worker(system, job, threads, rounds, args, workdir)
                            versions["fastcnn"], versions[system] = a["version"], b["version"]
                            if not same(a["check"], b["check"]):
                                status = "WRONG (differs from fastcnn before timing)"
                                break
                            ours.append(statistics.median(a["times_ms"]))
                            theirs.append(statistics.median(b["times_ms"]))
                            mem = [max(mem[0], a["peak_mb"]), max(mem[1], b["peak_mb"]),
                                   max(mem[2], a["step_mb"]), max(mem[3], b["step_mb"])]
                    except RuntimeError as exc:
                        status = str(exc).splitlines()[0][:120]
                    row = {"case": case[0], "threads": threads, "peer": system,
                           "fastcnn_ms": statistics.median(ours) if ours else None,
                           "peer_ms": statistics.median(theirs) if theirs else None,
                           "status": status, "mem": mem}
                    rows.append(row)
                    print(format_row(row), flush=True)
    table = render(rows, skipped, versions, started, args)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table)


def format_row(row):
    if row["status"]:
        return f"| {row['case']} | {row['threads']} | {TITLES[row['peer']]} | - | - | {row['status']} |"
    ratio = row["peer_ms"] / row["fastcnn_ms"]
    return (f"| {row['case']} | {row['threads']} | {TITLES[row['peer']]} | "
            f"{row['fastcnn_ms']:.3f} | {row['peer_ms']:.3f} | {ratio:.2f} |")


def render(rows, skipped, versions, started, args):
    out = [f"Peer table, {started}, turns {args.turns}, each peer in its own process "
           f"(benchmarks/peers.py). Ratio = peer ms / fastcnn ms (above 1: fastcnn faster).",
           "", "| case | threads | peer | fastcnn ms | peer ms | ratio |", "|---|---|---|---|---|---|"]
    out += [format_row(r) for r in rows]
    best, ours = {}, {}
    for r in rows:
        if not r["status"]:
            key = (r["case"], r["threads"])
            ours.setdefault(key, []).append(r["fastcnn_ms"])
            if key not in best or r["peer_ms"] < best[key]["peer_ms"]:
                best[key] = r
    measured = [r for r in rows if not r["status"]]
    if measured:
        out += ["", "Peak memory (MB: the process's peak RSS, and 'steps': the peak while "
                "the steps ran above the RSS of the loaded library, model and batch):", "",
                "| case | threads | peer | fastcnn peak | peer peak | fastcnn steps | "
                "peer steps |", "|---|---|---|---|---|---|---|"]
        for r in measured:
            a, b, sa, sb = r["mem"]
            out.append(f"| {r['case']} | {r['threads']} | {TITLES[r['peer']]} | {a:.0f} | "
                       f"{b:.0f} | {sa:.1f} | {sb:.1f} |")
    if best:
        out += ["", "Against the fastest peer per case (fastcnn ms: the median of all its "
                "processes for that case, every one of which took turns with a peer's):", "",
                "| case | threads | fastest peer | its ms | fastcnn ms | ratio |",
                "|---|---|---|---|---|---|"]
        for key, r in best.items():
            mine = statistics.median(ours[key])
            out.append(f"| {key[0]} | {key[1]} | {TITLES[r['peer']]} | {r['peer_ms']:.3f} | "
                       f"{mine:.3f} | {r['peer_ms'] / mine:.2f} |")
    out += ["", "Versions: " + ", ".join(sorted(versions.values()))]
    for s, why in skipped.items():
        out.append(f"Skipped {TITLES[s]}: {why}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
