#!/usr/bin/env bash
# Builds tpserve and the tests that run concurrent code with ThreadSanitizer (build-tsan) and runs them with
# halt_on_error=1 (a race fails the test):
#   coordinator_tests  every test (scheduler, block manager, engine, tokenizer, validation, status details,
#                      OpenAI request code, the HTTP server's pool)
#   integration_tests  the tests that serve concurrently, through real coordinator and worker processes that are
#                      the TSan-built tpserve (TSAN_OPTIONS is inherited): concurrent streams, cancel, backpressure,
#                      stop strings, worker loss and replay (full server, no restart), health after a
#                      kill, drain (SIGTERM, SIGINT, drain timeout), worker auth with rejoin (token and mTLS),
#                      a coordinator restart under a standalone worker, TLS, the HTTP/OpenAI server,
#                      speculation, metrics, and serving at TP=2
# Debian's Abseil and gRPC are not built with TSan. tests/tsan/ makes their synchronization visible (first on
# every link line of this build, CMakeLists.txt; it aborts at start-up if a wrapped function resolves elsewhere):
# absl_sync_annotations.cc for absl::Mutex, CondVar and Notification, grpc_batch_annotations.cc for each gRPC
# batch's hand-off (start_batch -> completion, which orders a reactor's OnWriteDone/OnReadDone after its
# StartWrite/StartRead) and for libgrpc++'s hand-offs of OnDone and OnCancel to its executor.
# scripts/tsan-suppressions.txt names what is left inside gRPC, Abseil and Gloo, each with its reason.
# Left out, each for a stated reason (they run in the plain and ASan builds):
#   CliFlagsTest, ChatTemplateStartupTest, ServeStartupTest, SpeculativeFlagsTest, WorkerPlaneExposureTest,
#   GenerateCliTest       one process that starts, checks its flags or files and exits: no concurrency beyond
#                         what the serving tests run
#   WorkerLossTest.RestartedWorkerGroup..., SecurityTest.ControlPlane..., SpeculativeSamplingTest,
#   SpeculativeWorkerLossTest  cost (50-90 s each here) for paths FullServerReplays..., WorkerAuthTest/Mtls and
#                         SpeculativeServeTest already cross under TSan (the two kill tests passed under TSan
#                         with the shim fixes below, once each: 84 and 92 s)
#   LongStepTest          one deliberately slow 30-40 s scalar prefill step (minutes under TSan); its worker
#                         reader thread runs in every serving test
#   QuantizationServeTest, ServeReferenceTest at TP=1/4 and the torch-format variants, ConcurrencyTest/tp2
#                         the same serving paths as the TP=2 tests kept here, with more arithmetic
#   TpserveBench*         needs tpserve-bench (benches are not built here)
#   GrpcStatusTest.IndependentGrpcJsClient..., OpenAiSdkTest  node clients: the server paths they cross run in
#                         the C++-client tests kept here
#   kernels_tests, worker_tests  mostly single-threaded arithmetic and loaders, a long TSan build for little: the
#                         threads they start run inside the TSan-built workers above (Gloo's per rank in the
#                         TP=2 tests, the CPU thread pool with 2 threads in the TP=1 ones)
# The worker-kill tests (HealthTest.SigkillOf..., WorkerLossTest.FullServer... / .WithoutRestart...,
# Auth/WorkerAuthTest.*) and CoordinatorRestartTest were left out until 2026-12-05: the first failed on reports in
# gRPC's callback-call teardown after a kill (CallOnDone destroying the control stream's tags against its last
# callbacks). Not a bug in coordinator/worker_connection.*: the shim came after libgrpc++ on the link line, so its
# ScheduleOnDone release (paired with each reactor's TsanAcquire in OnDone) never ran, and the Unref that gRPC
# makes inside libgrpc++ after OnCancel (a cancelled call: the worker died) was not modelled; both are fixed in
# tests/tsan/ (docs/RELIABILITY.md). CoordinatorRestartTest's "never SERVING within 60 s" was its worker allocating
# the default 1 GiB KV cache (about 2 minutes under TSan here), twice; it now uses the serving tests' 64 MiB.
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
# TSAN_UNIT_ONLY=1: the coordinator unit tests only (scripts/test.sh sets it when CI is near its time limit).
if [ "${TSAN_UNIT_ONLY:-0}" = 1 ]; then
  ninja -C "${BUILD_DIR}" -j"${JOBS}" coordinator_tests
else
  ninja -C "${BUILD_DIR}" -j"${JOBS}" tpserve coordinator_tests integration_tests
fi
built=$(date +%s)

# Child processes (the servers integration tests start) inherit these. halt_on_error: a race fails the test.
# TSan servers run 5-15x slower: the tests' waits for readiness and recovery give up later (tests/util/test_env.h).
export TPSERVE_TEST_TIMEOUT_SCALE="${TPSERVE_TEST_TIMEOUT_SCALE:-4}"
export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:history_size=4:suppressions=${ROOT}/scripts/tsan-suppressions.txt"

INTEGRATION='^(Tp/ConcurrencyTest\..*/tp1|CancellationTest|BackpressureTest|StoppingTest|ValidationTest|MetricsTest|DrainTest|SecurityTest\.TlsApi|OpenAiHttpTest|GrpcStatusTest\.(InvalidArgument|DrainTimeout)|Stories260K/SpeculativeServeTest\..*/ngram_tp2_k4|Shared/ServeReferenceTest\..*/stories260K_tp2|HealthTest\.SigkillOf|WorkerLossTest\.(FullServer|WithoutRestart)|Auth/WorkerAuthTest\.|CoordinatorRestartTest)'

cd "${BUILD_DIR}"
# coordinator.chat_template_vectors_fresh carries the label but is python3 + jinja2, no project code.
ctest --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 1200 -L '^coordinator$' \
  -E '^coordinator\.chat_template_vectors_fresh$' "$@"
if [ "${TSAN_UNIT_ONLY:-0}" = 1 ]; then
  echo "tsan-tests: TSAN_UNIT_ONLY=1: the integration tests were NOT run under TSan"
else
  ctest --output-on-failure -j "${CTEST_JOBS:-2}" --timeout 1200 -R "${INTEGRATION}" "$@"
fi
echo "tsan-tests: all passed (build $((built - start)) s, tests $(( $(date +%s) - built )) s)"
