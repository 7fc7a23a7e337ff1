#!/usr/bin/env bash
# Rebuild bench/RESULTS.md from the committed pytest-benchmark JSON (no benchmark is run), and
# print README's headline table. Measure first with the commands in bench/RESULTS_NOTES.md.
set -euo pipefail
cd "$(dirname "$0")"
{
  python report.py results_wall_2threads.json results_train_step.json \
      --title "CPU, 2 threads, wall clock (the issue's condition) + training step"
  echo
  python report.py results_cpu1_process_time.json --title "CPU, 1 thread, CPU time" \
      --notes RESULTS_NOTES.md
} > RESULTS.md.tmp
mv RESULTS.md.tmp RESULTS.md
python report.py --headline results_cpu1_process_time.json results_wall_2threads.json
