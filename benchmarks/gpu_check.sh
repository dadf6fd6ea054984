#!/usr/bin/env bash
# GPU check in one command, for a machine with an NVIDIA GPU and its own torch:
# builds the extension against that torch, runs the GPU tests (float64 reference
# comparisons for every GPU backend, dtype and layout, gradcheck, opcheck,
# torch.compile, determinism) and prints the timing table. Logs go to $OUT
# (default ./gpu_check_out). Meant to finish in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh            # build + tests + timing table
#   SKIP_BUILD=1 bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=0
stage() { echo; echo "=== $* ($(date +%T))"; }

stage "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
$PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  stage "build (FORCE_CUDA=1)"
  if [ -z "${CUDA_HOME:-}" ]; then
    nvcc_path=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    export CUDA_HOME=$(dirname "$(dirname "$nvcc_path")")
  fi
  arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
  start=$(date +%s)
  if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} $PY -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "built for sm_$arch in $(( $(date +%s) - start )) s"
  cp pan_ops/_C*.so "$OUT/" 2>/dev/null || true
fi
$PY -c "import pan_ops; print('backends on cuda:', pan_ops.available_backends('cuda'))" | tee -a "$OUT/device.txt"

stage "GPU tests"
timeout ${TEST_TIMEOUT:-300} $PY -m pytest -q -p no:cacheprovider -rfE \
  tests/test_weighted_pool.py tests/test_op_registration.py tests/test_triton_backend.py \
  -k "${TEST_FILTER:-cuda or triton or compile or opcheck or autocast or hypothesis or device}" \
  --junitxml="$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" | tail -60
[ "${PIPESTATUS[0]}" = 0 ] || status=1

stage "timing table"
timeout ${TIMING_TIMEOUT:-240} $PY benchmarks/op_timing.py ${TIMING_ARGS:-} 2>&1 | tee "$OUT/timing.md"
[ "${PIPESTATUS[0]}" = 0 ] || status=1

if [ -f benchmarks/bench_model.py ] && [ "${SKIP_MODEL:-0}" != 1 ]; then
  stage "model benchmark (quick)"
  timeout ${MODEL_TIMEOUT:-120} $PY benchmarks/bench_model.py --quick 2>&1 | tee "$OUT/model.md" | tail -30
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
stage "done, status $status"
exit $status
