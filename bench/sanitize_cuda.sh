#!/usr/bin/env bash
# compute-sanitizer over every compiled CUDA kernel of anm_fast (needs a GPU and an anm_fast
# built with its CUDA sources: `CUDA_HOME=/usr/local/cuda pip install --no-build-isolation -e .`).
#   bench/sanitize_cuda.sh                 # memcheck, racecheck, synccheck, initcheck
#   TOOLS="memcheck racecheck" bench/sanitize_cuda.sh
#   KERNEL_REGEX='anm_fast|_kernel' bench/sanitize_cuda.sh   # instrument only kernels whose
#                                   # name matches (ours), not every torch kernel the driver runs
# Exit status: non-zero when any tool reports an error. Logs go to $LOG_DIR (default
# ./sanitize_logs).
set -u
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
TOOLS="${TOOLS:-memcheck racecheck synccheck initcheck}"
LOG_DIR="${LOG_DIR:-sanitize_logs}"
SANITIZER="${COMPUTE_SANITIZER:-}"
if [ -z "$SANITIZER" ]; then
  if command -v compute-sanitizer >/dev/null 2>&1; then SANITIZER=compute-sanitizer
  elif [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]; then
    SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
  else
    echo "sanitize_cuda.sh: compute-sanitizer not found (set COMPUTE_SANITIZER)" >&2; exit 2
  fi
fi
mkdir -p "$LOG_DIR"
# Without the caching allocator every tensor is its own allocation, so memcheck sees
# out-of-bounds accesses that would otherwise land inside a larger cached block.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
for tool in $TOOLS; do
  extra=()
  case "$tool" in
    racecheck) extra=(--racecheck-report all) ;;
    memcheck) extra=(--leak-check no) ;;
  esac
  log="$LOG_DIR/$tool.log"
  echo "== compute-sanitizer --tool $tool"
  if [ -n "${KERNEL_REGEX:-}" ]; then extra+=(--kernel-regex "kns=$KERNEL_REGEX"); fi
  "$SANITIZER" --tool "$tool" "${extra[@]}" --error-exitcode 99 \
      "$PYTHON" bench/sanitize_driver.py >"$log" 2>&1
  rc=$?
  tail -n 3 "$log"
  if [ $rc -ne 0 ]; then
    echo "!! $tool: exit $rc (see $log)"; status=1
  fi
done
exit $status
