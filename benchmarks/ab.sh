#!/usr/bin/env bash
# A/B of the model benchmarks between another checkout of fastcnn (built, e.g. with
# `git worktree add /tmp/base REV && (cd /tmp/base && python setup.py build_ext --inplace)`)
# and this one, taking turns so that both see the same machine state:
#
#   benchmarks/ab.sh /tmp/base [rounds]      # writes .benchmarks/ab/{base,head}-tN-rK.json
#   python benchmarks/ab_summary.py .benchmarks/ab
set -uo pipefail
BASE="$1"; ROUNDS="${2:-2}"
HEAD="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${FASTCNN_AB_OUT:-$HEAD/.benchmarks/ab}"; mkdir -p "$OUT"
for round in $(seq "$ROUNDS"); do
  for t in 1 2; do
    for side in base head; do
      dir="$BASE"; [ "$side" = head ] && dir="$HEAD"
      (cd "$dir" && FASTCNN_BENCH_THREADS=$t python -m pytest benchmarks/test_bench_models.py \
        --benchmark-only --benchmark-max-time=0.5 --benchmark-min-rounds=5 -q \
        -p no:cacheprovider -k "auto or torch" --benchmark-json="$OUT/$side-t$t-r$round.json" \
        > "$OUT/$side-t$t-r$round.log" 2>&1)
      echo "$side threads=$t round=$round rc=$?"
    done
  done
done
