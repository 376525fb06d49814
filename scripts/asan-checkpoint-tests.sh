#!/usr/bin/env bash
# Builds worker_tests and common_tests with AddressSanitizer + UndefinedBehaviorSanitizer (build-asan)
# and runs the checkpoint, synthetic-model, dtype and config tests: the code that parses untrusted
# files must stay clean under the sanitizers, hostile inputs included.
# Usage: scripts/asan-checkpoint-tests.sh [extra ninja args]   (BUILD_DIR overrides build-asan)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-${ROOT}/build-asan}"
JOBS="${JOBS:-2}"

cmake -S "${ROOT}" -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPSERVE_SANITIZE=ON \
  -DTPSERVE_BUILD_BENCH=OFF >/dev/null
ninja -C "${BUILD_DIR}" -j"${JOBS}" worker_tests common_tests "$@"

# Leaks count as failures; any UB report aborts the test binary.
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"

"${BUILD_DIR}/bin/worker_tests" --gtest_filter='Checkpoint*:SyntheticModel*:Crc32*'
"${BUILD_DIR}/bin/common_tests" --gtest_filter='DTypeTest*:ModelConfigTest*'
echo "asan-checkpoint-tests: all passed"
