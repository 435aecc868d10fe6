"""Peak memory of a train step, fastcnn vs PyTorch (issue 7), one fresh process per case.

    python benchmarks/memory.py                       # default backend + torch, all cases
    python benchmarks/memory.py --threads 2 --backends all --cases scratch_b64,fashion_b128
    python benchmarks/memory.py --json mem.json       # also write the raw numbers

What it measures, per (model, batch, framework) in its own new Python process, so that one
case's allocator state, caches and imports never leak into another's:

1. pin the threads, import only what this framework needs (no torch in a fastcnn process);
2. warm up on throw-away copies of the model, two train steps at batch 1 and one at the
   measured batch (a backend may run other kernels at that size: numba runs small convs
   serially, so batch 1 alone would leave the parallel kernels' machine code, about 4 MiB,
   to load inside the measured steps): JIT compile or cache load, lazy imports,
   first-call set-up, none of which is a step's memory;
3. free what the warm-up left behind that a step needs again: the backends' reusable
   per-shape workspaces (``release_scratch()`` where a backend module has one, and the
   buffer pool's idle blocks, so that the measured steps allocate and count them like any
   other workspace) and the heap's
   free pages (glibc ``malloc_trim(0)``, so that the measured steps cannot reuse the
   warm-up's pages without them showing up); build the measured model and its batch, read
   the resident set size (``VmRSS``) as the baseline and reset the kernel's peak-RSS mark
   (``echo 5 > /proc/self/clear_refs``);
4. run ``--steps`` train steps from scratch and read the peak RSS (``VmHWM``).

Each (model, batch, framework) runs in ``--repeat`` fresh processes (default 3, the
frameworks taking turns) and the table gives the median step peak with the range: the
same PyTorch case has measured anywhere from 5.0 to 16.0 MiB in single runs (LeNet-5,
batch 128), its caching allocator keeping or returning pages from run to run, while
fastcnn's stayed within 0.1 MiB.

``step peak`` = peak - baseline: everything training needs beyond the weights and the
data: activations kept for backward, gradients, workspaces (im2col buffers), and the
optimizer state, which both frameworks create lazily in their first step.

Limits, said plainly: RSS counts pages touched, not bytes requested; allocators keep freed
pages (so memory freed and reused inside a step is counted once; without glibc, where
``malloc_trim`` does not exist, the warm-up's freed pages may be reused without showing
up); where clear_refs cannot be written the peak falls back to ``ru_maxrss`` over the
whole process, which also counts imports and the warm-up (the table says which method
each row used).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
if importlib.util.find_spec("fastcnn") is None:  # a source checkout, not pip-installed
    sys.path.insert(1, os.path.dirname(HERE))

import _threads  # noqa: E402  (no numpy import: threads are pinned before it loads)


SKIP_EXIT = 3  # a child that cannot run its case (torch absent) exits with this


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _release_scratch(backends) -> None:
    """Drops the reusable workspaces of every available fastcnn backend that keeps some,
    and the idle blocks of the fast backends' buffer pool (fastcnn/backends/_buffers.py)."""
    for name in backends.available():
        release = getattr(backends.get(name).module, "release_scratch", None)
        if release is not None:
            release()
    from fastcnn.backends import _buffers

    _buffers.clear()


def _release_free_heap() -> None:
    """glibc's ``malloc_trim(0)``: returns the heap's free pages to the system (no-op
    elsewhere), so that pages freed by the warm-up cannot hide a step's allocations."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _child(case_id: str, backend: str, threads: int, steps: int) -> dict:
    _threads.pin_environment(threads)
    import gc
    import resource

    import _cases
    from fastcnn import backends

    model_id, batch = case_id.rsplit("_b", 1)
    spec, batch = _cases.MODELS[model_id], int(batch)
    if backend == "torch":
        torch = _cases.torch_or_none()
        if torch is None:
            print(_cases.TORCH_MISSING, file=sys.stderr)
            raise SystemExit(SKIP_EXIT)
        _threads.pin_runtime(threads)

        def make(n):
            model, loss_fn = _cases.build_torch(spec)
            opt = _cases.torch_adam(model)
            xt, yt = _cases.torch_model_data(spec, n)
            params = sum(p.numel() for p in model.parameters())
            return (lambda: _cases.torch_train_step(model, loss_fn, opt, xt, yt)), params
    else:
        _threads.pin_runtime(threads)
        backends.set_backend(backend)

        def make(n):
            model = _cases.build_fastcnn(spec)
            x, y = _cases.model_data(spec, n)
            return (lambda: model.train_on_batch(x, y)), model.count_params()

    warm, _ = make(1)
    warm()
    warm()
    del warm
    warm, _ = make(batch)
    warm()
    del warm
    if backend != "torch":
        _release_scratch(backends)
    gc.collect()
    _release_free_heap()

    step, params = make(batch)
    gc.collect()
    baseline = _status_kib("VmRSS")
    exact = baseline is not None and _reset_peak()
    for _ in range(steps):
        step()
    if exact:
        peak, method = _status_kib("VmHWM"), "VmHWM after clear_refs"
    else:
        # ru_maxrss is KiB on Linux: the whole process's peak, an upper bound.
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "ru_maxrss (process)"
        baseline = baseline or 0
    return {"case": case_id, "model": spec.title, "batch": batch, "backend": backend,
            "threads": threads, "steps": steps, "params": params,
            "baseline_mib": baseline / 1024, "peak_mib": peak / 1024,
            "step_peak_mib": (peak - baseline) / 1024, "method": method}


def _run_case(case_id, backend, threads, steps) -> dict:
    env = dict(os.environ)
    env[_threads.ENV_VAR] = str(threads)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case_id, backend,
           "--threads", str(threads), "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        word = "skipped" if proc.returncode == SKIP_EXIT else "failed"
        return {"case": case_id, "backend": backend, "threads": threads,
                "error": f"{word}: {why}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median_run(runs) -> dict:
    """The run with the median step peak, with the range of all of them added."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    good.sort(key=lambda r: r["step_peak_mib"])
    mid = dict(good[(len(good) - 1) // 2])
    mid["step_peak_range_mib"] = [good[0]["step_peak_mib"], good[-1]["step_peak_mib"]]
    mid["runs"] = len(good)
    return mid


def _markdown(results) -> str:
    lines = ["step peak = peak RSS during the measured steps - RSS before them, median "
             "[range] over fresh processes; vs PyTorch = fastcnn step peak / PyTorch step "
             "peak, medians (below 1: fastcnn needs less).", "",
             "| model, batch | threads | backend | step peak MiB | vs PyTorch | baseline RSS MiB "
             "| peak RSS MiB | params | method |", "|---|---|---|---|---|---|---|---|---|"]
    peer = {(r["case"], r["threads"]): r.get("step_peak_mib")
            for r in results if r["backend"] == "torch" and "error" not in r}
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | {r['threads']} | {r['backend']} | {r['error']} "
                         f"| | | | | |")
            continue
        p = peer.get((r["case"], r["threads"]))
        ratio = (f"{r['step_peak_mib'] / p:.2f}x" if p and r["backend"] != "torch" else "-")
        lo, hi = r.get("step_peak_range_mib", (r["step_peak_mib"],) * 2)
        lines.append(
            f"| {r['model']}, {r['batch']} | {r['threads']} | {r['backend']} | "
            f"{r['step_peak_mib']:.1f} [{lo:.1f}-{hi:.1f}] | {ratio} | {r['baseline_mib']:.0f} | "
            f"{r['peak_mib']:.0f} | {r['params']} | {r['method']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=2, metavar=("CASE", "BACKEND"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int,
                        default=int(os.environ.get(_threads.ENV_VAR, "1")))
    parser.add_argument("--steps", type=int, default=3, help="measured steps (default 3)")
    parser.add_argument("--cases", default=None,
                        help="comma-separated, e.g. scratch_b1,fashion_b128 (default: all)")
    parser.add_argument("--backends", default="default",
                        help="'default' (fastcnn's default backend), 'all', or a "
                             "comma-separated list; torch is always added")
    parser.add_argument("--repeat", type=int, default=3,
                        help="fresh processes per case and framework (default 3; median)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.steps < 1 or args.repeat < 1:
        parser.error(f"--threads, --steps and --repeat must be >= 1, got {args.threads}, "
                     f"{args.steps}, {args.repeat}")

    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], args.threads, args.steps)))
        return 0

    # The parent only needs the case list and backend names: it never runs a model.
    _threads.pin_environment(args.threads)
    import _cases
    from fastcnn import backends

    all_cases = [f"{m}_b{b}" for m, b in _cases.TRAIN_CASES]
    cases = all_cases if args.cases is None else args.cases.split(",")
    unknown = sorted(set(cases) - set(all_cases))
    if unknown:
        parser.error(f"unknown --cases {unknown}; known: {all_cases}")
    if args.backends == "default":
        names = [backends.get_backend()]
    elif args.backends == "all":
        names = [n for n in _cases.model_backends() if n != "reference"]
    else:
        names = args.backends.split(",")
    names = [n for n in names if n != "torch"] + ["torch"]

    results = []
    for case in cases:
        runs = {name: [] for name in names}
        for _ in range(args.repeat):  # the frameworks take turns
            for name in names:
                r = _run_case(case, name, args.threads, args.steps)
                runs[name].append(r)
                print(json.dumps(r), file=sys.stderr, flush=True)
        results += [_median_run(runs[name]) for name in names]
    sys.stdout.write(_markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
