#!/usr/bin/env bash
# The GPU checklist, for a fresh offline GPU machine (python3 with torch and triton installed):
#   bench/gpu_session.sh all        # every step below in order, within 10 minutes
#   bench/gpu_session.sh STEP       # one step: build crash optests graphs memcheck bench cifar
#   DRY_RUN=1 bench/gpu_session.sh all   # print the commands instead (the Python checks run on
#                                        # CPU tensors), for checking the script without a GPU
# Steps (each with its own timeout and log in $OUT; $OUT/summary.json at the end):
#   build     the extension for the visible GPU's architecture, CUDA forced (fails without the
#             CUDA kernels), emulation and CPU-only parts skipped where possible
#   crash     every kernel once, both backends (bench/gpu_session_checks.py crash)
#   optests   the op test-suites on CUDA tensors, once per backend (ANM_FAST_BACKEND=cuda|triton)
#   graphs    CUDA-graph capture of anm_mask with int and device seeds under
#             torch.cuda.set_sync_debug_mode("error"), both backends
#   memcheck  compute-sanitizer memcheck on our kernels only (--kernel-regex), via
#             bench/sanitize_cuda.sh
#   bench     the fused CUDA / Triton benchmark pair and the copy at the same bytes (GB/s against
#             the card's copy): raw $OUT/results_gpu.json, its summary $OUT/bench_summary.json
#             (bench/summarize.py, run "gpu") and $OUT/RESULTS_gpu.md (bench/report.py)
#   cifar     only if time is left: 5 epochs of CIFAR-10 from .gpu_data/cifar10-jpeg.tar.gz (the
#             caller copies the archive there; .gpu_data/ is ignored by git), ce and
#             dividemix-anm, images/s
# After a session, add the GPU run to the committed summary and re-render, then commit:
#   python bench/summarize.py $OUT/results_gpu.json --run gpu-MODEL --title "GPU: MODEL" \
#       --into bench/results.json && bench/regenerate_results.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_session_out}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-570}"          # `all` stops starting steps after this many seconds
DRY_RUN="${DRY_RUN:-0}"
# the op test-suites (not the trainer's): files that exercise the ops, on whatever is present
OP_TESTS="${OP_TESTS:-$(ls -d tests/ops tests/test_triton_kernels.py tests/test_ops_registration.py \
  tests/test_anm_mask_fused.py tests/test_cuda_build_info.py 2>/dev/null | tr '\n' ' ')}"
mkdir -p "$OUT"
STEPS_TSV="$OUT/steps.tsv"
START=$(date +%s)

# run_step NAME TIMEOUT_S CMD...: runs CMD with a timeout, its output in $OUT/NAME.log, one line
# in the steps TSV (status ok / fail / timeout).
run_step() {
  local name=$1 limit=$2; shift 2
  local log="$OUT/$name.log" t0 rc status
  t0=$(date +%s)
  echo "== $name (timeout ${limit}s): $*"
  if [ "$DRY_RUN" = 1 ] && [ "$name" != crash ] && [ "$name" != graphs ]; then
    echo "(dry run)" >"$log"; rc=0
  else
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1; rc=$?
  fi
  case $rc in 0) status=ok ;; 124|137) status=timeout ;; *) status=fail ;; esac
  tail -n 3 "$log"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( $(date +%s) - t0 ))" "$log" >>"$STEPS_TSV"
  echo "-- $name: $status ($(( $(date +%s) - t0 )) s)"
  return $rc
}

skip_step() {
  printf '%s\tskipped\t0\t0\t%s\n' "$1" "$2" >>"$STEPS_TSV"
  echo "-- $1: skipped ($2)"
}

DRY_FLAG=""
[ "$DRY_RUN" = 1 ] && DRY_FLAG="--dry-run"

step_build() {
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null \
         || echo "9.0")
  # setup.py directly: no index to reach, no build isolation; the checkout is used in place
  run_step build 300 env ANM_FAST_FORCE_CUDA=1 ANM_FAST_SKIP_EMULATION=1 \
    TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-16}" "$PY" setup.py build_ext --inplace \
    || return 1
  run_step build-check 60 "$PY" -c "import anm_fast, torch, sys
ok = anm_fast.has_cuda_kernels()
archs = torch.ops.anm_fast._cuda_archs() if ok else ''
runs = ok and torch.ops.anm_fast._cuda_runs_on(0)
print('CUDA kernels', ok, '| archs', archs, '| code for this GPU', runs)
sys.exit(0 if ok and runs else 1)"
}

step_crash() { run_step crash 120 "$PY" bench/gpu_session_checks.py crash $DRY_FLAG; }

step_optests() {
  local status=0 b
  for b in cuda triton; do
    run_step "optests-$b" 200 env ANM_FAST_BACKEND=$b "$PY" -m pytest -q -x -p no:cacheprovider \
      -m "not cuda_emulated" $OP_TESTS --junitxml="$OUT/optests_$b.xml" || status=1
  done
  return $status
}

step_graphs() { run_step graphs 120 "$PY" bench/gpu_session_checks.py graphs $DRY_FLAG; }

step_memcheck() {
  run_step memcheck 240 env TOOLS=memcheck LOG_DIR="$OUT/sanitize" PYTHON="$PY" \
    KERNEL_REGEX="${KERNEL_REGEX:-anm_fast|_kernel}" bash bench/sanitize_cuda.sh
}

step_bench() {
  run_step bench 240 "$PY" -m pytest bench/bench_anm_mask.py --benchmark-only -q \
    -p no:cacheprovider -k "cuda and (fused-cuda or fused-triton or copy)" \
    --benchmark-json="$OUT/results_gpu.json" || return 1
  local gpu
  gpu=$("$PY" -c "import torch; print(torch.cuda.get_device_name())" 2>/dev/null || echo "?")
  run_step bench-summary 30 "$PY" bench/summarize.py "$OUT/results_gpu.json" --run gpu \
    --title "GPU: $gpu" --into "$OUT/bench_summary.json" || return 1
  run_step bench-report 30 "$PY" bench/report.py "$OUT/bench_summary.json" --no-notes \
    --results "$OUT/RESULTS_gpu.md"
}

step_cifar() {
  local left=$1 archive=.gpu_data/cifar10-jpeg.tar.gz m
  [ -f "$archive" ] || { skip_step cifar "no $archive"; return 0; }
  [ "$left" -ge 120 ] || { skip_step cifar "only ${left}s left"; return 0; }
  run_step cifar-unpack 60 bash -c "mkdir -p .gpu_data/cifar10 && tar -xzf $archive -C .gpu_data/cifar10" \
    || return 1
  local dir
  dir=$(dirname "$(find .gpu_data/cifar10 -maxdepth 3 -type d -name train | head -n 1)")
  for m in ce dividemix-anm; do
    left=$(( BUDGET_S - ($(date +%s) - START) ))
    [ "$left" -ge 60 ] || { skip_step "cifar-$m" "only ${left}s left"; continue; }
    run_step "cifar-$m" "$left" "$PY" -m anm_fast.train --dataset imagefolder --data-dir "$dir" \
      --epochs 5 --warmup 1 --method "$m" --no-plots --no-progress --out "$OUT/cifar/$m"
  done
  run_step cifar-images 30 "$PY" bench/gpu_session_checks.py images --folder "$OUT/cifar"
}

finish() {
  "$PY" bench/gpu_session_checks.py summary --tsv "$STEPS_TSV" --out "$OUT/summary.json" >/dev/null
  echo "summary: $OUT/summary.json"
  cat "$OUT/summary.json"
}

step="${1:-}"
case "$step" in
  all)
    : >"$STEPS_TSV"
    # build first: without it every later step would fail for the same reason
    if ! step_build; then finish; exit 1; fi
    for s in crash optests graphs memcheck bench; do
      left=$(( BUDGET_S - ($(date +%s) - START) ))
      if [ "$left" -lt 30 ]; then skip_step "$s" "only ${left}s left of ${BUDGET_S}s"; continue; fi
      "step_$s" || true
    done
    step_cifar $(( BUDGET_S - ($(date +%s) - START) )) || true
    finish
    "$PY" -c "import json,sys; sys.exit(0 if json.load(open('$OUT/summary.json'))['ok'] else 1)" ;;
  build|crash|optests|graphs|memcheck|bench)
    : >"$STEPS_TSV"; "step_$step"; rc=$?; finish >/dev/null; exit $rc ;;
  cifar)
    : >"$STEPS_TSV"; step_cifar "$BUDGET_S"; rc=$?; finish >/dev/null; exit $rc ;;
  *)
    echo "usage: bench/gpu_session.sh all|build|crash|optests|graphs|memcheck|bench|cifar" >&2
    exit 2 ;;
esac
