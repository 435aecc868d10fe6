#!/usr/bin/env bash
# Runs the benchmark suite at 1 and at 2 threads, each in its own process (thread counts
# are fixed when BLAS/OpenMP load), then writes the markdown summary.
#
#   benchmarks/run.sh                          # everything, short rounds
#   benchmarks/run.sh -k "shape_A or scratch"  # extra args go to pytest (and win)
#   FASTCNN_BENCH_THREADS_LIST="1" FASTCNN_BENCH_MEMORY=0 benchmarks/run.sh
#
# Output: $FASTCNN_BENCH_OUT (default .benchmarks/run-<UTC time>/): threadsN.json and .log
# per thread count, memoryN.md/.json (peak memory), summary.md (all tables, ratios).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${FASTCNN_BENCH_OUT:-.benchmarks/run-$(date -u +%Y%m%dT%H%M%SZ)}"
THREADS_LIST="${FASTCNN_BENCH_THREADS_LIST:-1 2}"
mkdir -p "$OUT"
status=0
jsons=()
for t in $THREADS_LIST; do
    echo "=== fastcnn benchmarks, $t thread(s) -> $OUT/threads$t.json"
    # Short rounds keep a full run usable on 2 shared cores; later "$@" options override.
    FASTCNN_BENCH_THREADS="$t" python -m pytest benchmarks --benchmark-only \
        --benchmark-max-time=0.1 --benchmark-min-rounds=3 \
        --benchmark-columns=min,median,iqr,rounds \
        --benchmark-json="$OUT/threads$t.json" "$@" 2>&1 | tee "$OUT/threads$t.log"
    rc=${PIPESTATUS[0]}
    [ "$rc" -ne 0 ] && status=$rc
    [ -s "$OUT/threads$t.json" ] && jsons+=("$OUT/threads$t.json")
done
if [ "${#jsons[@]}" -gt 0 ]; then
    python benchmarks/summarize.py "${jsons[@]}" -o "$OUT/summary.md" || status=1
fi
if [ "${FASTCNN_BENCH_MEMORY:-1}" = 1 ]; then
    for t in $THREADS_LIST; do
        echo "=== peak memory of a train step, $t thread(s)"
        if python benchmarks/memory.py --threads "$t" --json "$OUT/memory$t.json" \
                > "$OUT/memory$t.md"; then
            { echo; echo "## Peak memory of a train step, $t thread(s)"; echo;
              cat "$OUT/memory$t.md"; } >> "$OUT/summary.md"
        else
            status=1
        fi
    done
fi
echo "=== summary: $OUT/summary.md"
exit "$status"
