#!/usr/bin/env bash
# The GPU checks in one prepared run, for a session lent a GPU machine (the workplace's device
# tool runs it in a copy of this tree; that machine has no network, so nothing is installed from
# a registry: its own python3 must hold torch with CUDA, triton, scikit-build-core, pybind11 and
# pytest, and nvcc must be on PATH). In order, each step under its own time limit so that a slow
# one cannot starve the rest:
#   1. build pyquant with its CUDA kernels (PYQUANT_CUDA=ON) against that torch, editable;
#   2. the GPU tests: tests/ops (CUDA kernels and Triton on the real device, the CPU cases too);
#   3. bench/qmatmul_gpu.py (cuda and triton vs torch's fp16 matmul) and bench/stream_topn_gpu.py;
#   4. the rest of the GPU-touching tests (tests/perf, tests/test_embed.py).
# Everything lands in $OUT (default device-out/): log.txt (environment, backends, test summaries,
# benchmark tables), build.log, tests.log, qmatmul_gpu.json, stream_topn_gpu.json; five files, within
# what the device tool brings back. Put its figures, the date and the device in bench/RESULTS.md.
#
#   bench/device_check.sh [--quick]      # --quick: one shape per benchmark, fewer repeats
#   PY=.venv/bin/python OUT=/tmp/dc bench/device_check.sh --quick   # dry run without a GPU
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}
PY=${PY:-python3}
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
mkdir -p "$OUT" || exit 1
LOG="$OUT/log.txt"
: > "$LOG"
say() { echo "== $(date -u +%FT%TZ) $*" | tee -a "$LOG"; }
# step SECONDS NAME CMD...: run CMD under a time limit, its output appended to the log; never fatal.
step() {
  local limit=$1 name=$2 rc
  shift 2
  say "$name"
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || say "$name: exit status $rc$([ "$rc" = 124 ] && echo " (over ${limit}s)")"
  return 0
}

export TRITON_INTERPRET=0 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
say "environment"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
  nvcc --version 2>&1 | tail -n 2
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)" 2>&1
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
  git log -1 --format='commit %H %s' 2>/dev/null
} | tee -a "$LOG"

say "build (PYQUANT_CUDA=ON, log in build.log)"
if ! timeout 600 "$PY" -m pip --disable-pip-version-check install --no-build-isolation --no-deps -e . \
    --config-settings=cmake.define.PYQUANT_CUDA=ON > "$OUT/build.log" 2>&1; then
  tail -n 40 "$OUT/build.log" | tee -a "$LOG"
  say "build FAILED: nothing else to run"
  exit 1
fi
step 60 "backends" "$PY" -c "import json, pyquant as pq; print(json.dumps(pq.ops.backend_info(), indent=1))"

say "tests/ops (log in tests.log)"
timeout 420 "$PY" -m pytest -q -rs -p no:cacheprovider tests/ops > "$OUT/tests.log" 2>&1
say "tests/ops: exit status $?"
grep -E "passed|failed|error|^FAILED|^ERROR" "$OUT/tests.log" | tail -n 30 | tee -a "$LOG"

if [ "$QUICK" = 1 ]; then
  step 300 "bench/qmatmul_gpu.py --quick" "$PY" bench/qmatmul_gpu.py --shapes 4096x4096 --ms 1,4,8,512 --repeats 10 \
    --output "$OUT/qmatmul_gpu.json"
  step 300 "bench/stream_topn_gpu.py --quick" "$PY" bench/stream_topn_gpu.py --quick --output "$OUT/stream_topn_gpu.json"
else
  step 420 "bench/qmatmul_gpu.py" "$PY" bench/qmatmul_gpu.py --output "$OUT/qmatmul_gpu.json"
  step 420 "bench/stream_topn_gpu.py" "$PY" bench/stream_topn_gpu.py --output "$OUT/stream_topn_gpu.json"
fi

say "tests/perf tests/test_embed.py (appended to tests.log)"
timeout 300 "$PY" -m pytest -q -rs -p no:cacheprovider tests/perf tests/test_embed.py >> "$OUT/tests.log" 2>&1
say "tests/perf tests/test_embed.py: exit status $?"
grep -E "passed|failed|error|^FAILED|^ERROR" "$OUT/tests.log" | tail -n 5 | tee -a "$LOG"
say "done"
