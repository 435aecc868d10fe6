"""Turns pytest-benchmark JSON files from this suite into markdown tables.

    python benchmarks/summarize.py RUN1.json [RUN2.json ...] [-o summary.md]

Each JSON is one run (one process, one thread count). Ratios to PyTorch are taken only
within a run (the PyTorch row of the same group in the same file): on a shared machine an
absolute time means little, a ratio measured side by side means a lot.

ratio = PyTorch median / fastcnn median: above 1 means fastcnn is faster.
"""
from __future__ import annotations

import argparse
import json
import sys

PEER = "torch"
KIND_ORDER = {"train": 0, "infer": 1, "op": 2}


def run_rows(doc: dict) -> list:
    """One dict per benchmark of this suite in one run, with its ratio to PyTorch."""
    meta = doc.get("fastcnn", {})
    rows = []
    for bench in doc.get("benchmarks", []):
        info = bench.get("extra_info", {})
        stats = bench.get("stats") or {}
        if "kind" not in info or not stats.get("median"):
            continue
        rows.append({
            "group": bench["group"], "kind": info["kind"], "op": info["op"],
            "pass": info.get("pass_", ""), "shape": info.get("shape", ""),
            "shape_desc": info.get("shape_desc", ""), "backend": info["backend"],
            "threads": info.get("threads", meta.get("threads")),
            "median_s": stats["median"], "batch": info.get("batch"),
            "gflops": info.get("gflops"), "frac_sgemm": info.get("frac_sgemm"),
            "samples_per_s": info.get("samples_per_s"),
            "cpu_per_wall": info.get("cpu_per_wall"),
        })
    peer = {r["group"]: r["median_s"] for r in rows if r["backend"] == PEER}
    for r in rows:
        p = peer.get(r["group"])
        r["torch_median_s"] = p
        r["ratio"] = p / r["median_s"] if p is not None and r["backend"] != PEER else None
    return rows


def _ms(seconds):
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    for limit, fmt in ((100, "{:.0f}"), (10, "{:.1f}"), (1, "{:.2f}")):
        if ms >= limit:
            return fmt.format(ms)
    return "{:.3f}".format(ms)


def _num(value, fmt):
    return "-" if value is None else fmt.format(value)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _sort_key(backend_order):
    def key(r):
        return (KIND_ORDER.get(r["kind"], 9), r["op"], r["pass"], r["batch"] or 0,
                r["shape"], r["threads"] or 0, backend_order.get(r["backend"], 99))
    return key


def render(docs: list, names: list | None = None) -> str:
    """Markdown: one line per run, a model table (issue 7's) and the full table."""
    lines = ["## Runs", ""]
    all_rows = []
    backend_order = {}
    default = None
    for i, doc in enumerate(docs):
        meta = doc.get("fastcnn", {})
        sg = meta.get("sgemm") or {}
        name = names[i] if names else f"run {i + 1}"
        sgemm = "not measured"
        if sg:
            sgemm = (f"{sg['n']}^3 best {sg.get('numpy_gflops', sg['gflops']):.1f} GFLOP/s "
                     f"(median {sg.get('median_gflops', float('nan')):.1f}, CPU/wall "
                     f"{sg.get('cpu_per_wall', float('nan')):.2f})")
            if sg.get("fastcnn_gflops"):
                sgemm += (f", fastcnn's GEMM {sg['fastcnn_gflops']:.1f}; ceiling "
                          f"{sg['gflops']:.1f} ({sg.get('ceiling', '?')})")
        load = (meta.get("loadavg_1m_start"), meta.get("loadavg_1m_end"))
        lines.append(
            f"- {name}: {doc.get('datetime', '?')[:19]} UTC, threads={meta.get('threads')}, "
            f"CPU {meta.get('cpu_model')} (nproc {meta.get('nproc')}), load average "
            f"{_num(load[0], '{:.1f}')} -> {_num(load[1], '{:.1f}')}, numpy "
            f"{meta.get('numpy_version')}, torch {meta.get('torch_version')}, SGEMM {sgemm}")
        for b in meta.get("backends", []):
            backend_order.setdefault(b, len(backend_order))
        default = meta.get("default_backend", default)
        all_rows += run_rows(doc)
    backend_order.setdefault("auto", len(backend_order))
    backend_order.setdefault(PEER, len(backend_order) + 1)
    all_rows.sort(key=_sort_key(backend_order))

    models = [r for r in all_rows if r["kind"] in ("train", "infer")]
    if models:
        lines += ["", "## Models: fastcnn vs PyTorch (ratio > 1: fastcnn faster)", "",
                  f"'default' is the backend fastcnn uses when none is set "
                  f"({default!r} in these runs); 'best' is the fastest backend in the run.",
                  ""]
        body = []
        seen = {}
        for r in models:
            seen.setdefault((r["kind"], r["op"], r["batch"], r["threads"]), []).append(r)
        for (kind, op, batch, threads), rs in seen.items():
            fast = [r for r in rs if r["backend"] != PEER]
            if not fast:
                continue
            best = min(fast, key=lambda r: r["median_s"])
            dflt = next((r for r in fast if r["backend"] == default), None)
            peer = rs[0]["torch_median_s"]
            body.append([
                "train step" if kind == "train" else "inference", rs[0]["shape_desc"],
                threads,
                f"{dflt['backend']} {_ms(dflt['median_s'])}" if dflt else "-",
                f"{best['backend']} {_ms(best['median_s'])}",
                _ms(peer), _num(dflt and dflt["ratio"], "{:.2f}"),
                _num(best["ratio"], "{:.2f}"),
                _num(best["samples_per_s"], "{:.0f}"),
            ])
        lines += _table(["what", "model, batch", "threads", "default ms", "best ms",
                         "PyTorch ms", "ratio (default)", "ratio (best)",
                         "best samples/s"], body)

    lines += ["", "## Every benchmark", "",
              "GFLOP/s counts conv and dense FLOPs only (2*N*Ho*Wo*F*kh*kw*C for a conv "
              "forward, 3x that with the backward); % SGEMM compares with the run's own best "
              "float32 np.dot rate. CPU/wall: CPU seconds per wall second while the row was "
              "timed; below 1 at 1 thread means other processes took the core (distrust the "
              "row).", ""]
    body = []
    for r in all_rows:
        what = r["op"] if r["kind"] == "op" else f"{r['op']} ({r['kind']})"
        body.append([f"{what} {r['pass']}" if r["kind"] == "op" else what,
                     r["shape_desc"], r["backend"], r["threads"], _ms(r["median_s"]),
                     _num(r["gflops"], "{:.1f}"),
                     _num(r["frac_sgemm"] and 100 * r["frac_sgemm"], "{:.0f}%"),
                     _num(r["samples_per_s"], "{:.0f}"),
                     _num(r["ratio"], "{:.2f}"), _num(r["cpu_per_wall"], "{:.2f}")])
    lines += _table(["model/op", "shape", "backend", "threads", "median ms", "GFLOP/s",
                     "% SGEMM", "samples/s", "ratio to PyTorch", "CPU/wall"], body)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="pytest-benchmark --benchmark-json files")
    parser.add_argument("-o", "--output", help="write the markdown here (default: stdout)")
    args = parser.parse_args(argv)
    docs = []
    for path in args.json:
        with open(path) as f:
            docs.append(json.load(f))
    text = render(docs, args.json)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
