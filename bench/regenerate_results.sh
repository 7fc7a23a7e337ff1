#!/usr/bin/env bash
# Remake the benchmark figures.
#   bench/regenerate_results.sh            render bench/RESULTS.md, the README's performance table
#                                          and the figures table of docs/PERFORMANCE_GOALS.md from
#                                          the committed summary bench/results.json (no benchmark
#                                          runs)
#   bench/regenerate_results.sh --measure  first measure the two CPU runs again on this machine
#                                          (every shape and implementation, twice: long; use an
#                                          otherwise idle machine), replace them in
#                                          bench/results.json, then render
# The raw pytest-benchmark JSON goes to a temporary folder and is not kept: bench/summarize.py
# keeps the medians and bytes the report needs. A GPU run is added the same way, see
# bench/gpu_session.sh (step bench).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
if [ "${1:-}" = --measure ]; then
  raw=$(mktemp -d)
  # wall clock with 2 threads (the CPU goals' condition), then the training step
  "$PY" -m pytest bench/bench_anm_mask.py bench/bench_erase.py --benchmark-only -q \
    -p no:cacheprovider --benchmark-max-time=0.5 --benchmark-json="$raw/wall_2threads.json"
  "$PY" -m pytest bench/bench_train_step.py --benchmark-only -q -p no:cacheprovider \
    --benchmark-json="$raw/train_step.json"
  "$PY" bench/summarize.py "$raw/wall_2threads.json" "$raw/train_step.json" --run cpu-2threads \
    --title "CPU, 2 threads, wall clock, and the training step" --into bench/results.json
  # one thread in CPU time: what load from other processes barely moves
  ANM_BENCH_THREADS=1 "$PY" -m pytest bench/bench_anm_mask.py bench/bench_erase.py \
    --benchmark-only -q -p no:cacheprovider --benchmark-max-time=0.5 \
    --benchmark-timer=time.process_time --benchmark-json="$raw/cpu1_process_time.json"
  "$PY" bench/summarize.py "$raw/cpu1_process_time.json" --run cpu-1thread \
    --title "CPU, 1 thread, CPU time" --into bench/results.json
  rm -rf "$raw"
fi
"$PY" bench/report.py bench/results.json --results bench/RESULTS.md --readme README.md \
  --goals docs/PERFORMANCE_GOALS.md
echo "rendered bench/RESULTS.md, README.md's performance table, docs/PERFORMANCE_GOALS.md's figures"
