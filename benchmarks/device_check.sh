#!/usr/bin/env bash
# Device check for a GPU machine without a package registry (numpy, scipy, pytest, hypothesis
# and CuPy installed; torch optional; scikit-build-core, pybind11, cmake and ninja installed or
# given as wheels in ./.whl, which `pip download -d .whl ...` fills on a machine with a registry;
# the Liger-Kernel baseline of bench_gpu.py comes from .whl too:
# `pip download liger-kernel==0.8.5 --no-deps -d .whl`):
#   1. build and install identirep with CUDA (pip, no build isolation, no dependencies);
#   2. nvidia-smi summary;
#   3. the GPU tests, which must not all skip (IDENTIREP_REQUIRE_GPU_TESTS=1), in three
#      processes: those of identirep's own GEMM kernels (marker fused_gemm) and of its wgmma
#      kernel (marker wgmma) apart, so that a kernel that faults or hangs (a fault leaves the
#      process's CUDA context unusable) costs only its own tests;
#   4. compute-sanitizer memcheck and racecheck on a tiny run of every kernel and of the
#      compiled pass driver;
#   5. benchmarks/bench_gpu.py (the passes, with the tile-width sweep) and
#      benchmarks/bench_gpu_compare.py (the engine).
# Each step has a timeout and the whole check stays under 8 minutes. Logs and the summary table
# go to $OUT (default ./device_check_out): $OUT/device_check.md. Exits non-zero if a step failed.
# STEPS (comma-separated step names, default all) reruns some steps only, e.g. after a fix:
# the build steps always run; the others not named are listed as not run. The GPU test steps
# are gpu-tests, gpu-tests-gemm (identirep's own GEMM kernels) and gpu-tests-wgmma.
#
#   bash benchmarks/device_check.sh
#   STEPS=gpu-tests-gemm,gpu-tests-wgmma,memcheck,racecheck bash benchmarks/device_check.sh
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_check_out}
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
rm -f "$OUT"/*.log "$OUT"/bench_gpu*.md "$OUT"/device_check.md  # no stale results in the summary
SANITIZER=${SANITIZER:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}
export IDENTIREP_CUDA=ON
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
DEADLINE=$(( $(date +%s) + ${CHECK_SECONDS:-470} ))  # the whole check: under 8 minutes
ALL_STEPS=",build-tools,build,liger,nvidia-smi,build-info,gpu-tests,gpu-tests-gemm,gpu-tests-wgmma,\
memcheck,racecheck,bench,bench-compare,"
STEPS=${STEPS:-}
for name in ${STEPS//,/ }; do
  if [[ "$ALL_STEPS" != *",$name,"* ]]; then
    echo "STEPS: no step '$name'; the steps are ${ALL_STEPS//,/ }" >&2
    exit 2
  fi
done
SUMMARY="$OUT/device_check.md"
failed=0
rows=()

# the benchmarks run last: the steps before them (GPU tests, sanitizers) leave them this many
# seconds of the deadline, but get 30 at least
BENCH_RESERVE=${BENCH_RESERVE:-180}

runs() {  # runs NAME: whether STEPS selects this step
  [[ -z "${STEPS:-}" || ",$STEPS," == *",$1,"* ]]
}

step_limit() {  # step_limit NAME LIMIT: the seconds the step may take now
  local name=$1 limit=$2 left spare
  left=$(( DEADLINE - $(date +%s) ))
  case "$name" in
    gpu-tests*|memcheck|racecheck)
      if runs bench || runs bench-compare; then
        spare=$(( left - BENCH_RESERVE ))
        if (( spare < 30 )); then spare=$(( left < 30 ? left : 30 )); fi
        left=$spare
      fi ;;
  esac
  echo $(( left < limit ? left : limit ))
}

# step NAME LIMIT_SECONDS COMMAND...: runs COMMAND with its log in $OUT/NAME.log (its tail on
# stdout), within LIMIT_SECONDS and the global deadline (step_limit); records status and time.
step() {
  local name=$1 limit=$2 rc=0 t0
  shift 2
  case "$name" in build-tools|build|liger|nvidia-smi|build-info) ;;
    *) if ! runs "$name"; then
         rows+=("| $name | not run (STEPS=$STEPS) | 0 |")
         return
       fi ;;
  esac
  limit=$(step_limit "$name" "$limit")
  if (( limit < 5 )); then
    rows+=("| $name | skipped (out of time) | 0 |")
    failed=1
    return
  fi
  t0=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=5 "$limit" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  tail -n 15 "$OUT/$name.log"
  local status=ok
  if (( rc == 124 || rc == 137 )); then status="TIMEOUT after ${limit}s"; failed=1
  elif (( rc != 0 )); then status="FAILED (exit $rc)"; failed=1; fi
  rows+=("| $name | $status | $(( $(date +%s) - t0 )) |")
}

finish() {
  {
    echo "# identirep device check, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    echo "Commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    echo
    echo '```'
    cat "$OUT/nvidia-smi.log" 2>/dev/null || true
    cat "$OUT/build-info.log" 2>/dev/null || true
    echo '```'
    echo
    echo "| step | status | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${rows[@]}"
    echo
    for t in gpu-tests gpu-tests-gemm gpu-tests-wgmma; do
      if [[ -f "$OUT/$t.log" ]]; then
        echo "$t: $(grep -v '^[[:space:]]*$' "$OUT/$t.log" | tail -n 1)"
        echo
      fi
    done
    for tool in memcheck racecheck; do
      if [[ -f "$OUT/$tool.log" ]]; then
        line=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/$tool.log" | tail -n 1 || true)
        echo "$tool: ${line:-no summary}"
        echo
      fi
    done
    for b in bench_gpu bench_gpu_compare; do
      echo
      if [[ -s "$OUT/$b.md" ]]; then cat "$OUT/$b.md"; else echo "$b: no table"; fi
    done
  } > "$SUMMARY"
  cat "$SUMMARY"
  exit "$failed"
}

# Build tools from ./.whl when they are missing (no registry here).
step build-tools 60 env PYTHON="$PYTHON" bash -c '
  if "$PYTHON" -c "import scikit_build_core, pybind11" && command -v cmake; then exit 0; fi
  [[ -d .whl ]] || { echo "scikit-build-core, pybind11 or cmake missing and no .whl/"; exit 1; }
  "$PYTHON" -m pip install --no-index --find-links .whl scikit-build-core pybind11 cmake ninja'
step build 120 "$PYTHON" -m pip install --no-build-isolation --no-deps .
# Optional baseline: a missing wheel only leaves the Liger column empty, with the reason.
step liger 30 env PYTHON="$PYTHON" bash -c '
  if "$PYTHON" -c "import liger_kernel" 2>/dev/null; then exit 0; fi
  ls .whl/liger_kernel-*.whl 2>/dev/null || { echo "no .whl/liger_kernel-*.whl: no Liger column"; exit 0; }
  "$PYTHON" -m pip install --no-index --no-deps --find-links .whl liger-kernel'

if (( failed )); then finish; fi
step nvidia-smi 15 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit,compute_mode \
  --format=csv
# identirep info (the build, the backends and why not, the GPUs, the cuBLAS file); fails when
# the build lacks the compiled pass driver or the wgmma kernel (the default architectures
# include 90)
step build-info 20 env PYTHON="$PYTHON" bash -c '"$PYTHON" -m identirep.cli info && \
  "$PYTHON" -c "import identirep; i = identirep.build_info(); \
assert i[\"cuda_pass_driver\"], \"built without the CUDA pass driver\"; \
assert i[\"fused_gemm_wgmma\"], \"built without the wgmma kernel\""'
# with pytest-timeout, a test that hangs is named (its stacks dumped) before the step's own
# limit (what is left of it before the deadline) ends the process
HAVE_PYTEST_TIMEOUT=$("$PYTHON" -c "import pytest_timeout" 2>/dev/null && echo 1 || true)
GPU_TESTS="tests/test_gpu.py tests/test_lse_kl_cuda.py tests/test_cuda_driver.py"
gpu_tests() {  # gpu_tests NAME LIMIT MARKER_EXPRESSION
  local limit opts=""
  limit=$(step_limit "$1" "$2")
  if [[ -n "$HAVE_PYTEST_TIMEOUT" ]] && (( limit > 20 )); then
    opts="--timeout=$(( limit - 15 < 120 ? limit - 15 : 120 )) --timeout-method=thread"
  fi
  step "$1" "$2" env IDENTIREP_REQUIRE_GPU_TESTS=1 "$PYTHON" -m pytest -q -p no:cacheprovider \
    $opts -m "$3" $GPU_TESTS
}
gpu_tests gpu-tests 150 "not fused_gemm"
gpu_tests gpu-tests-gemm 60 "fused_gemm and not wgmma"
gpu_tests gpu-tests-wgmma 60 "wgmma"
step memcheck 45 "$SANITIZER" --tool memcheck --error-exitcode 1 \
  "$PYTHON" benchmarks/sanitize_case.py
step racecheck 45 "$SANITIZER" --tool racecheck --error-exitcode 1 \
  "$PYTHON" benchmarks/sanitize_case.py
step bench 150 "$PYTHON" benchmarks/bench_gpu.py --sweep --out "$OUT/bench_gpu.md"
step bench-compare 150 "$PYTHON" benchmarks/bench_gpu_compare.py --repeats 1 --out "$OUT/bench_gpu_compare.md"
finish
