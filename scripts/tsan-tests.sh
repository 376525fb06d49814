#!/usr/bin/env bash
# Builds the coordinator's unit tests with ThreadSanitizer (build-tsan) and runs them: the scheduler, block
# manager, tokenizer, validation, status details and OpenAI request code, and the tests that start threads
# (TrainTokenizer's spm_train runs, the HTTP server's pool in openai_request_test). Debian's Abseil is not built
# with TSan: tests/tsan/absl_sync_annotations.cc makes absl::Mutex, CondVar and Notification visible to it, and
# scripts/tsan-suppressions.txt names what is left inside gRPC, Abseil and Gloo, each with its reason.
# Not yet under TSan, and why (issue 15 item 4, open):
#   integration_tests  the sanitized tpserve builds and starts (TPSERVE_TSAN=ON builds it; run
#                      `ninja -C build-tsan tpserve integration_tests` and the ctest line below with
#                      -L integration), but gRPC C++'s header code (CallOpSet, InterceptorBatchMethodsImpl,
#                      CallbackWithSuccessTag, std::function swaps inside them) hands each batch to gRPC core and
#                      back through the completion queue, which Debian's uninstrumented libgrpc hides from TSan:
#                      every streaming call reports races between two gRPC frames, and the reactor's
#                      `delete this` in OnDone is reported against the writes made before Finish() (gRPC
#                      guarantees OnDone follows Finish; TSan cannot see it). Those need either a TSan-built
#                      gRPC (not in Debian) or annotations at each reactor hand-off.
#   kernels_tests, worker_tests  single-threaded arithmetic and loaders, minutes under TSan for no concurrency
# Budget: CI on the 2-core machine must stay under 40 minutes; this stage is measured in docs/RELIABILITY.md.
# Usage: scripts/tsan-tests.sh [ctest args]   (BUILD_DIR overrides build-tsan)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-${ROOT}/build-tsan}"
JOBS="${JOBS:-2}"
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-${ROOT}}"
start=$(date +%s)

cmake -S "${ROOT}" -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTPSERVE_TSAN=ON \
  -DTPSERVE_BUILD_BENCH=OFF >/dev/null
ninja -C "${BUILD_DIR}" -j"${JOBS}" coordinator_tests
built=$(date +%s)

# Child processes (the servers integration tests start) inherit these. halt_on_error: a race fails the test.
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=${ROOT}/scripts/tsan-suppressions.txt"

cd "${BUILD_DIR}"
ctest --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 1200 -L '^coordinator$' "$@"
echo "tsan-tests: all passed (build $((built - start)) s, tests $(( $(date +%s) - built )) s)"
