#!/usr/bin/env bash
# The test command (README, .ci/run): installs dependencies, builds, and runs every test under CTest.
# Then runs the suite again under AddressSanitizer + UndefinedBehaviorSanitizer, the concurrent tests under
# ThreadSanitizer, fuzzes the file parsers, and compiles and links the CUDA build (no GPU needed; its GPU tests
# skip). SKIP_ASAN=1 / SKIP_TSAN=1 / SKIP_FUZZ=1 / SKIP_CUDA=1 skip those stages.
# Each stage's seconds are printed at the end (also when a stage fails): CI must stay under 40 minutes on the
# 2-core machine, and docs/RELIABILITY.md ("CI stages and their cost") records a run.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
STAGE_TIMES=()
stage() {  # NAME COMMAND...: runs COMMAND and records how long it took
  local name="$1" t0
  shift
  t0=$(date +%s)
  "$@"
  STAGE_TIMES+=("$(printf '%-34s %5d s' "${name}" $(( $(date +%s) - t0 )))")
}
print_stage_times() {
  echo "== stage times"
  local line
  for line in "${STAGE_TIMES[@]}"; do echo "  ${line}"; done
  printf '  %-34s %5d s\n' "total" $(( $(date +%s) - start ))
}
trap print_stage_times EXIT
# ccache keys on paths relative to the checkout for every stage (CPU, ASan, fuzz, CUDA builds), so a fresh
# clone in another folder reuses what earlier builds compiled.
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
stage "install deps" bash scripts/install-deps.sh

echo "== CPU build"
stage "CPU build" bash scripts/build.sh
echo "== tests"
stage "CPU tests (ctest)" bash -c 'cd build && ctest --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 900'

if [ "${SKIP_ASAN:-0}" != 1 ]; then
  echo "== the test suite under ASan/UBSan"
  stage "ASan/UBSan build + tests" bash scripts/asan-tests.sh
fi
if [ "${SKIP_FUZZ:-0}" != 1 ]; then stage "fuzz build + runs" bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"; fi
NVCC=$(command -v nvcc || true)
[ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc
if [ "${SKIP_CUDA:-0}" = 1 ]; then
  echo "== CUDA build skipped (SKIP_CUDA=1)"
elif [ -z "$NVCC" ]; then
  echo "== CUDA build skipped: nvcc not found (install the CUDA toolkit to check it)"
else
  echo "== CUDA build (compile and link; GPU tests skip without a GPU)"
  # The CUDA build compiles every C++ file outside kernels/cuda/ with the CPU build's command line (CUDA headers
  # only where used, kernels/CMakeLists.txt), so ccache serves them. integration_tests is not built again at all:
  # the CPU build's test binary starts the CUDA build's tpserve instead.
  BUILD_DIR=build-cuda TARGETS="tpserve kernels_tests worker_tests" stage "CUDA build" \
    bash scripts/build.sh -DTPSERVE_CUDA=ON -DCMAKE_CUDA_COMPILER="$NVCC" -DTPSERVE_BUILD_BENCH=OFF
  stage "CUDA tests (CPU side)" bash -c 'cd build-cuda &&
    ctest --output-on-failure -R "Cuda|Nccl" --timeout 300 -j 2'
  # The CUDA-enabled binary must still serve on CPU where there is no GPU.
  stage "CUDA tpserve serves on CPU" env TPSERVE_BIN_DIR="$(pwd)/build-cuda/bin" \
    build/bin/integration_tests --gtest_filter="*GreedyIdsEqualReference/stories260K_tp1"
fi
if [ "${SKIP_TSAN:-0}" != 1 ]; then
  echo "== the concurrent tests under ThreadSanitizer"
  # Last stage: CI's hard limit is 90 minutes, and a cold TSan build of the serving binary takes 20-40 of them
  # on 2 cores. Past TSAN_FULL_BEFORE_S (default 40 minutes) into the run, only the coordinator unit tests run
  # under TSan, and the stage table says so.
  if [ $(( $(date +%s) - start )) -gt "${TSAN_FULL_BEFORE_S:-2400}" ] && [ -z "${TSAN_UNIT_ONLY:-}" ]; then
    echo "== CI is past ${TSAN_FULL_BEFORE_S:-2400} s: the TSan stage runs the coordinator unit tests only"
    export TSAN_UNIT_ONLY=1
  fi
  stage "TSan build + tests$([ "${TSAN_UNIT_ONLY:-0}" = 1 ] && echo ' (unit only)')" bash scripts/tsan-tests.sh
fi
echo "== all stages passed in $(( $(date +%s) - start )) s"
