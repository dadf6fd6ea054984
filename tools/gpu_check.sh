#!/usr/bin/env bash
# GPU check in one command, for a machine with an NVIDIA GPU and its own torch:
# builds the extension against that torch, runs the GPU tests (float64 reference
# comparisons for every GPU backend, dtype and layout, gradcheck, opcheck,
# torch.compile, determinism), the op timing table, the quick model benchmark,
# compute-sanitizer's memcheck and racecheck on the CUDA kernels and an ncu summary of
# each kernel at the PAN shape.
# Logs go to $OUT (default ./gpu_check_out), at most eight files (the device tool brings
# back no more): both timings' tables in timing.md, their results in op_timing.json and
# bench_model.json.
#
# Stages run in that order (of value) and share one deadline (DEADLINE seconds, default 540,
# under the device tool's 10-minute limit per command): each gets its own timeout or
# what is left, whichever is less, and is skipped with under 30 s left.
#
#   bash tools/gpu_check.sh            # everything
#   SKIP_BUILD=1 SKIP_MODEL=1 bash tools/gpu_check.sh
#
# On the lent GPU machines (no index there): `make gpu-wheels` here first, and carry .whl
# with the working tree, in case their image lacks pytest or hypothesis.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
START=$(date +%s)
DEADLINE=${DEADLINE:-540}
status=0
stage() { echo; echo "=== $* ($(date +%T), $(( $(date +%s) - START )) s in)"; }

# Seconds a stage may take: its own limit or what is left before the deadline; 0 = skip.
allowance() {
  local left=$(( DEADLINE - ($(date +%s) - START) - 5 ))
  if [ "$left" -lt 30 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}

# run_stage LOG LIMIT COMMAND...: runs COMMAND under the allowance, output to $OUT/LOG
# (appended) and the last lines to the console; a failure or timeout sets status=1.
run_stage() {
  local log=$1 limit; limit=$(allowance "$2"); shift 2
  if [ "$limit" = 0 ]; then echo "skipped: the deadline is near"; status=1; return; fi
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$log" | tail -${TAIL:-40}
  local rc=${PIPESTATUS[0]}
  [ "$rc" = 124 ] && echo "TIMED OUT after $limit s"
  [ "$rc" = 0 ] || status=1
}

stage "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/device.txt"
$PY -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$OUT/device.txt"

if ! $PY -c "import pytest, hypothesis" 2>/dev/null; then
  stage "test tools from .whl/ (make gpu-wheels)"
  $PY -m pip install -q --no-index --find-links .whl pytest hypothesis 2>&1 | tail -3
fi

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  stage "build (FORCE_CUDA=1)"
  if [ -z "${CUDA_HOME:-}" ]; then
    nvcc_path=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    export CUDA_HOME=$(dirname "$(dirname "$nvcc_path")")
  fi
  arch=$($PY -c "import torch; c = torch.cuda.get_device_capability(); print(f'{c[0]}.{c[1]}')")
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch}
  if ! FORCE_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} timeout "$(allowance 300)" \
      $PY -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
    tail -40 "$OUT/build.log"; echo "BUILD FAILED"; exit 1
  fi
  echo "built for sm_$arch in $(( $(date +%s) - START )) s"
fi
$PY -c "import pan_ops; print('backends on cuda:', pan_ops.available_backends('cuda'))" | tee -a "$OUT/device.txt"

stage "GPU tests"
TAIL=60 run_stage gpu_tests.log "${TEST_TIMEOUT:-200}" $PY -m pytest -q -p no:cacheprovider -rfE \
  tests/test_weighted_pool.py tests/test_op_registration.py tests/test_triton_backend.py \
  -k "${TEST_FILTER:-cuda or triton or compile or opcheck or autocast or hypothesis or device}"

stage "op timing table"
run_stage timing.md "${TIMING_TIMEOUT:-150}" $PY -m benchmarks.op_timing --json "$OUT/op_timing.json" ${TIMING_ARGS:-}

if [ "${SKIP_MODEL:-0}" != 1 ]; then
  stage "model benchmark (quick)"
  TAIL=30 run_stage timing.md "${MODEL_TIMEOUT:-100}" $PY -m benchmarks.bench_model --quick --json "$OUT/bench_model.json"
fi
SANITIZER=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
if [ -x "$SANITIZER" ] && [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    stage "compute-sanitizer --tool $tool (CUDA kernels, small shapes)"
    echo "--- $tool" >>"$OUT/sanitizer.log"
    # Without the caching allocator every tensor is its own allocation, so memcheck sees
    # accesses past a tensor's end that would otherwise land in a neighbour of the same block.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 TAIL=12 run_stage sanitizer.log 60 "$SANITIZER" --tool "$tool" \
      --error-exitcode 9 --kernel-name kns=pool_ $PY -m tools.gpu_probe sanitize
  done
fi

NCU=$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")
if [ -x "$NCU" ] && [ "${SKIP_NCU:-0}" != 1 ]; then
  stage "ncu: throughput and occupancy of each kernel at the PAN shape"
  TAIL=80 run_stage ncu.txt 90 "$NCU" --clock-control none --profile-from-start off \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    $PY -m tools.gpu_probe profile
fi

stage "done, status $status"
exit $status
