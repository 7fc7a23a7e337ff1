#!/usr/bin/env bash
# What a session with a GPU should run, in steps that each fit one device-tool command (10 min):
#   bench/gpu_session.sh build     # build the extension for this GPU (CUDA kernels included)
#   bench/gpu_session.sh test      # the test-suite with CUDA tensors, once per backend
#   bench/gpu_session.sh sanitize  # compute-sanitizer memcheck + racecheck on every CUDA kernel
#   bench/gpu_session.sh bench     # GPU benchmarks, their RESULTS section, the measured backend
# Logs and results go to $OUT (the device tool's output folder; default ./gpu_session_out).
# After `bench`, copy $OUT/results_gpu.json to bench/, append $OUT/RESULTS_gpu.md to
# bench/RESULTS.md and commit $OUT/measured_backends.json as anm_fast/measured_backends.json.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_session_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
step="${1:-}"
gpu_name() { "$PY" -c "import torch; print(torch.cuda.get_device_name())"; }

case "$step" in
  build)
    # the visible GPU's architecture only: the build fits the time limit
    arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}" TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="${MAX_JOBS:-16}" \
      "$PY" -m pip install --no-build-isolation -e . >"$OUT/build.log" 2>&1
    rc=$?; tail -n 3 "$OUT/build.log"
    "$PY" -c "import anm_fast; print('extension', anm_fast.has_extension(), 'CUDA kernels', anm_fast.has_cuda_kernels())"
    exit $rc ;;
  test)
    status=0
    for b in cuda triton; do
      echo "== ANM_FAST_BACKEND=$b ($(gpu_name))"
      ANM_FAST_BACKEND=$b "$PY" -m pytest -q -p no:cacheprovider tests/ \
          --junitxml="$OUT/tests_$b.xml" >"$OUT/tests_$b.log" 2>&1 || status=1
      tail -n 3 "$OUT/tests_$b.log"
    done
    exit $status ;;
  sanitize)
    TOOLS="${TOOLS:-memcheck racecheck}" LOG_DIR="$OUT/sanitize" bash bench/sanitize_cuda.sh ;;
  bench)
    "$PY" -m pytest bench/ --benchmark-only -q -p no:cacheprovider -k cuda \
        --benchmark-json="$OUT/results_gpu.json" >"$OUT/bench.log" 2>&1
    rc=$?; tail -n 3 "$OUT/bench.log"
    [ $rc -eq 0 ] || exit $rc
    "$PY" bench/report.py "$OUT/results_gpu.json" --title "GPU: $(gpu_name)" >"$OUT/RESULTS_gpu.md"
    "$PY" bench/report.py --pick-backend "$OUT/results_gpu.json" && \
      cp anm_fast/measured_backends.json "$OUT/measured_backends.json"
    grep -A8 "^\*\*Goals" "$OUT/RESULTS_gpu.md" ;;
  *)
    echo "usage: bench/gpu_session.sh build|test|sanitize|bench" >&2; exit 2 ;;
esac
