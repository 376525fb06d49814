#!/usr/bin/env bash
# GPU check for a machine with only the CUDA toolkit and driver: runs the CUDA op tests, the GPU
# end-to-end tests and the 13B benchmarks from a folder made by scripts/pack-gpu-build.sh, and prints
# one summary table. Finishes in under 8 minutes (every step runs under a share of a 450 s budget).
#
#   bash gpu-check.sh            (from the packed folder, or scripts/gpu-check.sh [PACK_DIR])
# Extra engine-bench flags: ENGINE_BENCH_ARGS="..." bash gpu-check.sh
set -uo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
PACK=${1:-$HERE}
[[ -d "$PACK/bin" ]] || PACK="$HERE/../build-cuda/gpu-pack"
if [[ ! -d "$PACK/bin" ]]; then
  echo "gpu-check: no packed build (bin/) next to this script; run scripts/pack-gpu-build.sh first" >&2
  exit 2
fi
BIN="$PACK/bin"
BUDGET_S=${GPU_CHECK_BUDGET_S:-450}
START=$(date +%s)

# ---- what to run (edit freely) ----
OP_TESTS=("kernels_tests --gtest_filter=Cuda*:CudaFactory*")
# End-to-end and multi-GPU tests: "binary gtest-filter". Missing binaries are reported and skipped.
E2E_TESTS=(
  "worker_tests *Cuda*:*Gpu*:*GPU*"
  "worker_tests NcclCommunicator.*"
)
ENGINE_BENCH=(engine-bench --device cuda:0 --preset llama-2-13b --random-weights)
# Fallback when engine-bench is not built: LlamaModel with random 13B weights, one run per row
# (batch-1 decode + prefill 512, prefill 2048, decode tok/s at batch 8/32/64), in priority order.
DECODE_BENCH_RUNS=(
  "--batch=1 --prompt=512 --steps=32"
  "--batch=1 --prompt=2048 --steps=4"
  "--batch=8 --prompt=128 --steps=16"
  "--batch=32 --prompt=128 --steps=16"
  "--batch=64 --prompt=128 --steps=16"
)

CUDA_LIB_DIRS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib; do
  [[ -d "$d" ]] && CUDA_LIB_DIRS="$CUDA_LIB_DIRS:$d"
done
export LD_LIBRARY_PATH="$PACK/lib${CUDA_LIB_DIRS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -d "$PACK/shared" ]] && export TPSERVE_SHARED_DIR="$PACK/shared"

ROWS=()   # "step|result|seconds"
FAILED=0
remaining() { echo $((BUDGET_S - ($(date +%s) - START))); }

# run_step NAME CAP_SECONDS CMD...: runs under min(CAP, remaining budget), logs to $LOGS/NAME.log.
LOGS=$(mktemp -d /tmp/gpu-check.XXXXXX)
run_step() {
  local name=$1 cap=$2
  shift 2
  local left
  left=$(remaining)
  local limit=$((cap < left ? cap : left))
  if ((limit < 10)); then
    ROWS+=("$name|SKIPPED (time budget spent)|0")
    return
  fi
  echo "==== $name (limit ${limit}s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log" | tail -n 40
  rc=${PIPESTATUS[0]}
  local dt=$(($(date +%s) - t0))
  local result="PASS"
  if ((rc == 124 || rc == 137)); then
    result="TIMEOUT after ${limit}s"
    FAILED=1
  elif ((rc != 0)); then
    result="FAIL (exit $rc)"
    FAILED=1
  elif grep -q "0 tests from 0 test suites ran" "$LOGS/$name.log"; then
    result="NO TESTS matched the filter"
  elif grep -q "SKIPPED \]" "$LOGS/$name.log" && ! grep -q "^\[       OK \]" "$LOGS/$name.log"; then
    result="SKIPPED (see log)"
  fi
  local counts
  counts=$(grep -E "^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test" "$LOGS/$name.log" | sed 's/\[ *//; s/ *\]//; s/, listed below://' | tr '\n' ' ')
  ROWS+=("$name|$result ${counts}|$dt")
}

echo "==== GPU"
GPU_NAME="unknown"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader || true
  GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
  GPU_COUNT=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | wc -l)
else
  echo "nvidia-smi not found: is this a GPU machine? (the CUDA tests will skip)"
  GPU_COUNT=0
fi
command -v nvcc >/dev/null && nvcc --version | tail -2
# Weight-streaming floor for batch-1 decode of 13B bf16 (26 GB read per token).
case "$GPU_NAME" in
  *H200*) HBM_TBPS=4.8 ;;
  *H100*SXM* | *H100\ 80GB\ HBM3*) HBM_TBPS=3.35 ;;
  *H100*NVL*) HBM_TBPS=3.9 ;;
  *H100*PCIe*) HBM_TBPS=2.0 ;;
  *H100*) HBM_TBPS=3.35 ;;
  *A100*80GB*) HBM_TBPS=2.0 ;;
  *A100*) HBM_TBPS=1.55 ;;
  *) HBM_TBPS="" ;;
esac
if [[ -n "$HBM_TBPS" ]]; then
  FLOOR_MS=$(awk -v bw="$HBM_TBPS" 'BEGIN { printf "%.1f", 26.0 / bw }')
  TARGET_MS=$(awk -v f="$FLOOR_MS" 'BEGIN { printf "%.1f", f * 1.2 }')
else
  FLOOR_MS="?"
  TARGET_MS="?"
fi

echo "==== shared libraries"
for b in "$BIN"/*; do
  nf=$(ldd "$b" 2>/dev/null | grep "not found" || true)
  if [[ -n "$nf" ]]; then
    echo "$(basename "$b") is missing libraries (is the CUDA 13 toolkit installed?):"
    echo "$nf"
    FAILED=1
  fi
done

for t in "${OP_TESTS[@]}"; do
  read -r exe args <<<"$t"
  if [[ -x "$BIN/$exe" ]]; then
    run_step "cuda-ops" 150 "$BIN/$exe" $args
  else
    ROWS+=("cuda-ops|MISSING $exe|0")
    FAILED=1
  fi
done

i=0
for t in "${E2E_TESTS[@]}"; do
  read -r exe filter <<<"$t"
  i=$((i + 1))
  if [[ -x "$BIN/$exe" ]]; then
    run_step "e2e-$i" 120 "$BIN/$exe" "--gtest_filter=$filter"
  else
    ROWS+=("e2e-$i ($exe)|MISSING|0")
  fi
done

if [[ -x "$BIN/cuda-ops-bench" ]]; then
  run_step "cuda-ops-bench" 90 "$BIN/cuda-ops-bench" --device 0
else
  ROWS+=("cuda-ops-bench|MISSING|0")
fi

if [[ -x "$BIN/${ENGINE_BENCH[0]}" ]]; then
  # shellcheck disable=SC2086
  run_step "engine-bench" 300 "$BIN/${ENGINE_BENCH[0]}" "${ENGINE_BENCH[@]:1}" ${ENGINE_BENCH_ARGS:-}
elif [[ -x "$BIN/decode-bench" ]]; then
  ROWS+=("engine-bench|MISSING: using decode-bench|0")
  j=0
  for args in "${DECODE_BENCH_RUNS[@]}"; do
    j=$((j + 1))
    # shellcheck disable=SC2086
    run_step "decode-bench-$j" 120 "$BIN/decode-bench" --backend=cuda --preset=13b $args
  done
else
  ROWS+=("engine-bench|MISSING ${ENGINE_BENCH[0]} and decode-bench|0")
fi

# NCCL all-reduce latency (issue 3): needs one GPU per rank, so only on multi-GPU machines.
if [[ "${GPU_COUNT:-0}" -ge 2 && -x "$BIN/allreduce-bench" ]]; then
  worlds=2
  [[ "${GPU_COUNT}" -ge 4 ]] && worlds=2,4
  run_step "allreduce-bench" 60 "$BIN/allreduce-bench" --comm nccl --worlds "$worlds"
fi

echo
echo "==== benchmark tables"
for f in "$LOGS/cuda-ops-bench.log" "$LOGS/engine-bench.log" "$LOGS/allreduce-bench.log" "$LOGS"/decode-bench-*.log; do
  [[ -f "$f" ]] && { echo "--- $(basename "$f" .log)"; grep -v "^\[" "$f" | tail -n 40; }
done

echo
echo "==== summary: $GPU_NAME (x${GPU_COUNT}), total $(($(date +%s) - START)) s"
printf "%-28s | %-60s | %5s\n" "step" "result" "sec"
printf "%-28s-+-%-60s-+-%5s\n" "----------------------------" "------------------------------------------------------------" "-----"
for r in "${ROWS[@]}"; do
  IFS='|' read -r a b c <<<"$r"
  printf "%-28s | %-60s | %5s\n" "$a" "$b" "$c"
done
echo "13B bf16 batch-1 decode floor (26 GB / ${HBM_TBPS:-?} TB/s): ${FLOOR_MS} ms/token; target <= 1.2x = ${TARGET_MS} ms"
echo "(reference floors: H100 SXM 7.8 ms, H200 5.4 ms)   logs: $LOGS"
exit $FAILED
