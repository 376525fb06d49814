#!/usr/bin/env bash
# GPU check for a machine with only the CUDA toolkit and driver, run from a folder made by
# scripts/pack-gpu-build.sh: finds NCCL / cuBLAS / cudart wherever the machine has them (ldconfig, the
# CUDA lib folders, pip nvidia-* wheels, conda) and says which it used; runs the CUDA op tests, the GPU
# end-to-end tests (stories260K exact; a 2-layer 13B-shaped model's logits against the CPU backend), a
# 1-rank NCCL group, a subset of the op tests under compute-sanitizer memcheck and racecheck, and the 13B
# benchmarks (weights rotated through copies larger than L2, one KV context per sequence, kernels timed
# with CUDA events); prints one summary table. Finishes in under 8 minutes (every step runs under a
# share of a 460 s budget). Exits non-zero, with the reason in the table, when anything failed or could
# not run.
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
BUDGET_S=${GPU_CHECK_BUDGET_S:-460}
START=$(date +%s)

# ---- what to run (edit freely) ----
OP_TESTS=("kernels_tests --gtest_filter=Cuda*:CudaFactory*")
# End-to-end and multi-GPU tests: "binary gtest-filter". Missing binaries are reported and skipped.
E2E_TESTS=(
  "worker_tests *Cuda*:*Gpu*:*GPU*"
  "worker_tests NcclCommunicator.*"
)
# Under compute-sanitizer (slow: small-grid tests only): "tool gtest-filter".
SANITIZER_RUNS=(
  "memcheck CudaOpsTest.RmsNormAndAddRmsNorm:CudaOpsTest.SiluMulGatherRows:CudaOpsTest.Rope:CudaOpsTest.EmbeddingVocabSplit:CudaOpsTest.GemvRowsAreBatchInvariant:CudaOpsTest.KvCacheSpecValidationAndBlockBytes:CudaOpsTest.TopKAndArgmax:CudaAttentionTest.SmallMixedBatchForSanitizers:CudaAttentionTest.RopeWriteKvMatchesRopeThenWriteKv"
  "racecheck CudaOpsTest.RmsNormAndAddRmsNorm:CudaOpsTest.Rope:CudaOpsTest.TopKAndArgmax:CudaAttentionTest.SmallMixedBatchForSanitizers"
)
ENGINE_BENCH=(engine-bench --device cuda:0 --preset llama-2-13b --random-weights --prefill-lens 512,2048
  --batch-sizes 1,8,32,64 --context-len 512 --decode-steps 12 --prefill-runs 2)
# Fallback when engine-bench is not built: LlamaModel with random 13B weights, one run per row
# (batch-1 decode + prefill 512, prefill 2048, decode tok/s at batch 8/32/64), in priority order.
DECODE_BENCH_RUNS=(
  "--batch=1 --prompt=512 --steps=32"
  "--batch=1 --prompt=2048 --steps=4"
  "--batch=8 --prompt=128 --steps=16"
  "--batch=32 --prompt=128 --steps=16"
  "--batch=64 --prompt=128 --steps=16"
)

export LD_LIBRARY_PATH="$PACK/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
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
  elif grep -q "SKIPPED \]" "$LOGS/$name.log"; then
    result="PASS, some SKIPPED"
  fi
  # On a GPU machine a test that reports no device is a failure, not a skip.
  if ((${GPU_COUNT:-0} > 0)) && grep -q "no CUDA device" "$LOGS/$name.log"; then
    result="FAIL: tests saw no CUDA device on a GPU machine"
    FAILED=1
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
if ((GPU_COUNT == 0)); then
  ROWS+=("gpu|FAIL: no GPU visible (nvidia-smi); the GPU tests below skip|0")
  FAILED=1
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

echo "==== CUDA libraries (NCCL, cuBLAS, cudart)"
# Folders that may hold them, in order of preference: the loader's cache (ldconfig -p) is consulted
# first, then the CUDA toolkit's lib folders, conda, and the lib folders of pip nvidia-* wheels
# (nvidia-nccl-cu13, nvidia-cublas-cu13, nvidia-cuda-runtime-cu13) in every Python's site-packages.
CANDIDATE_DIRS=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/*/lib /usr/local/cuda-*/lib64 /usr/local/cuda-*/targets/*/lib \
  /usr/lib/x86_64-linux-gnu /usr/lib64 /opt/nvidia/*/lib ${CONDA_PREFIX:+$CONDA_PREFIX/lib}; do
  [[ -d "$d" ]] && CANDIDATE_DIRS+=("$d")
done
for py in python3 python; do
  command -v "$py" >/dev/null || continue
  while read -r sp; do
    for d in "$sp"/nvidia/*/lib; do [[ -d "$d" ]] && CANDIDATE_DIRS+=("$d"); done
  done < <("$py" -c 'import site, sys; print("\n".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null)
done
for d in /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3/dist-packages/nvidia/*/lib \
  "$HOME"/.local/lib/python3*/site-packages/nvidia/*/lib; do
  [[ -d "$d" ]] && CANDIDATE_DIRS+=("$d")
done
# The sonames the packed binaries were linked against (libnccl.so.2, libcublas.so.13, ...).
NEEDED_LIBS=$(for b in "$BIN"/*; do ldd "$b" 2>/dev/null; done | awk '{print $1}' |
  grep -E '^lib(nccl|cublas|cublasLt|cudart)\.so' | sort -u)
ADDED_DIRS=""
LIBS_MISSING=0
for lib in $NEEDED_LIBS; do
  from=$(ldconfig -p 2>/dev/null | awk -v l="$lib" '$1 == l {print $NF; exit}')
  how="ldconfig"
  if [[ -z "$from" ]]; then
    for d in "${CANDIDATE_DIRS[@]}"; do
      if [[ -e "$d/$lib" ]]; then
        from="$d/$lib"
        how="found in $d"
        case ":$ADDED_DIRS:" in *":$d:"*) ;; *) ADDED_DIRS="$ADDED_DIRS:$d" ;; esac
        break
      fi
    done
  fi
  if [[ -z "$from" ]]; then
    echo "MISSING $lib: not in ldconfig, the CUDA lib folders, conda or pip nvidia-* wheels."
    echo "  install it (CUDA 13: apt cuda-toolkit-13 / libnccl2, or pip nvidia-nccl-cu13 nvidia-cublas-cu13)"
    ROWS+=("libraries|FAIL: $lib not found|0")
    LIBS_MISSING=1
  else
    echo "$lib: $how ($from)"
  fi
done
[[ -n "$ADDED_DIRS" ]] && export LD_LIBRARY_PATH="$PACK/lib${ADDED_DIRS}${LD_LIBRARY_PATH#"$PACK/lib"}"
# What the loader now resolves, per library (the ones the tests will really use).
if [[ -x "$BIN/worker_tests" ]]; then
  echo "resolved for worker_tests:"
  ldd "$BIN/worker_tests" | grep -E 'lib(nccl|cublas|cublasLt|cudart)\.so' | sed 's/^/  /'
fi
for b in "$BIN"/*; do
  nf=$(ldd "$b" 2>/dev/null | grep "not found" || true)
  if [[ -n "$nf" ]]; then
    echo "$(basename "$b") is missing libraries:"
    echo "$nf"
    ROWS+=("libraries|FAIL: $(basename "$b") misses $(awk '{print $1}' <<<"$nf" | tr '\n' ' ')|0")
    LIBS_MISSING=1
  fi
done
if [[ $LIBS_MISSING -ne 0 ]]; then
  echo "gpu-check: stopping: the binaries cannot load their CUDA libraries (see above)" >&2
  printf "%s\n" "${ROWS[@]}"
  exit 1
fi

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

SANITIZER=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer \
  /usr/local/cuda-*/bin/compute-sanitizer; do
  [[ -z "$SANITIZER" && -x "$c" ]] && SANITIZER=$c
done

if [[ -x "$BIN/cuda-ops-bench" ]]; then
  run_step "cuda-ops-bench" 100 "$BIN/cuda-ops-bench" --device 0
else
  ROWS+=("cuda-ops-bench|MISSING|0")
fi

if [[ -x "$BIN/${ENGINE_BENCH[0]}" ]]; then
  # shellcheck disable=SC2086
  run_step "engine-bench" 210 "$BIN/${ENGINE_BENCH[0]}" "${ENGINE_BENCH[@]:1}" ${ENGINE_BENCH_ARGS:-}
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

# compute-sanitizer last: it is slow, and the benchmarks matter more when time runs short.
if [[ -z "$SANITIZER" ]]; then
  ROWS+=("compute-sanitizer|FAIL: not found (install the CUDA toolkit's cuda-sanitizer)|0")
  FAILED=1
elif [[ -x "$BIN/kernels_tests" ]]; then
  for r in "${SANITIZER_RUNS[@]}"; do
    read -r tool filter <<<"$r"
    run_step "sanitizer-$tool" 75 "$SANITIZER" --tool "$tool" --error-exitcode 1 "$BIN/kernels_tests" \
      "--gtest_filter=$filter"
  done
fi

echo
echo "==== benchmark tables"
for f in "$LOGS/cuda-ops-bench.log" "$LOGS/engine-bench.log" "$LOGS/allreduce-bench.log" "$LOGS"/decode-bench-*.log; do
  [[ -f "$f" ]] && { echo "--- $(basename "$f" .log)"; grep -v "^\[" "$f" | tail -n 40; }
done

# One performance table from engine-bench's rows ("phase batch tokens context p50 p90 min tok/s comm%")
# and cuda-ops-bench's per-kernel rows (measured us beside the expected us).
PERF=()
if [[ -f "$LOGS/engine-bench.log" ]]; then
  while read -r phase batch tokens context p50 _ _ tps _; do
    case "$phase/$batch/$tokens" in
      decode/1/1)
        ratio=$([[ "$FLOOR_MS" != "?" ]] && awk -v a="$p50" -v f="$FLOOR_MS" 'BEGIN { printf "%.2fx floor", a / f }')
        PERF+=("batch-1 decode (ctx $context)|$p50 ms/token|$ratio") ;;
      prefill/1/512 | prefill/1/2048) PERF+=("prefill $tokens|$p50 ms|") ;;
      decode/8/1 | decode/32/1 | decode/64/1) PERF+=("decode batch $batch (ctx $context)|$tps tok/s|$p50 ms/step") ;;
    esac
  done < <(grep -E '^(prefill|decode) ' "$LOGS/engine-bench.log")
fi
[[ ${#PERF[@]} -eq 0 ]] && PERF+=("engine-bench|NO RESULTS (see its log)|")

echo
echo "==== performance: $GPU_NAME"
printf "%-32s | %-18s | %s\n" "measure" "value" "vs floor / step"
for r in "${PERF[@]}"; do
  IFS='|' read -r a b c <<<"$r"
  printf "%-32s | %-18s | %s\n" "$a" "$b" "$c"
done
if [[ -f "$LOGS/cuda-ops-bench.log" ]]; then
  echo "per kernel (CUDA events; expected = docs/GPU.md model):"
  sed -n '/^kernel /,/^batch-1 decode, sum/p' "$LOGS/cuda-ops-bench.log"
fi

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
