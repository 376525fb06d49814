#!/usr/bin/env bash
# Builds the libFuzzer targets in fuzz/ (clang, ASan + UBSan, build-fuzz) and runs each for SECONDS seconds
# from generated seeds plus a corpus kept in the build dir between runs. Fails on any crash, leak, UB report,
# timeout or out-of-memory; the reproducer lands in BUILD_DIR/artifacts/ (rerun: bin/<target> <file>).
# Usage: scripts/fuzz.sh [SECONDS=60] [TARGET...]   (BUILD_DIR overrides build-fuzz)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-${ROOT}/build-fuzz}"
SECONDS_PER_TARGET="${1:-60}"
shift || true
TARGETS=("$@")
# The default set keeps CI near 3 minutes at 60 s each (two at a time, below); tokenizer_model (hostile
# tokenizer.model through Tokenizer::Load, ~300 exec/s) runs when named: scripts/fuzz.sh 300 tokenizer_model.
[ ${#TARGETS[@]} -eq 0 ] && TARGETS=(safetensors zip pickle shard_index model_config tokenizer_config)
SHARED="${ROOT}/../shared"

# clang's libFuzzer runtime ships in libclang-rt-14-dev on Debian 12 (scripts/install-deps.sh).
probe="$(mktemp -d)"
trap 'rm -rf "${probe}"' EXIT
echo 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }' >"${probe}/p.cc"
if ! clang++ -fsanitize=fuzzer,address,undefined "${probe}/p.cc" -o "${probe}/p" 2>"${probe}/err"; then
  cat "${probe}/err" >&2
  echo "fuzz.sh: clang++ -fsanitize=fuzzer does not link; apt-get install clang libclang-rt-14-dev" >&2
  exit 1
fi

CC=clang CXX=clang++ cmake -S "${ROOT}" -B "${BUILD_DIR}" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DTPSERVE_FUZZ=ON -DTPSERVE_BUILD_TESTS=OFF -DTPSERVE_BUILD_BENCH=OFF >/dev/null
ninja -C "${BUILD_DIR}" -j"${JOBS:-2}" fuzz_targets

# Seeds: small hand-built inputs (fuzz/make_seeds.py), then real files where present (the shared
# stories260K checkpoints, written by torch and safetensors themselves, and a make-model run).
SEEDS="${BUILD_DIR}/seeds"
rm -rf "${SEEDS}"
python3 "${ROOT}/fuzz/make_seeds.py" "${SEEDS}"
extract_pkl() {  # ZIP OUT: the archive's data.pkl, a real pickler's output
  python3 - "$1" "$2" <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith("data.pkl"))
open(sys.argv[2], "wb").write(z.read(name))
PY
}
# Whole checkpoints mutate slowly (each run copies the input): safetensors files go in shrunk to their
# header's layout, torch zips only when small (their real data.pkl always goes to the pickle target).
MAX_CHECKPOINT_SEED=262144
add_model_dir() {  # DIR TAG: JSON configs and pickles always; checkpoints small or shrunk
  local dir="$1" tag="$2" f
  for f in "${dir}"/*.index.json; do
    [ -f "$f" ] && cp "$f" "${SEEDS}/shard_index/${tag}_$(basename "$f")"
  done
  [ -f "${dir}/config.json" ] && cp "${dir}/config.json" "${SEEDS}/model_config/${tag}_config.json"
  mkdir -p "${SEEDS}/tokenizer_model"
  [ -f "${dir}/tokenizer.model" ] && [ "$(stat -c %s "${dir}/tokenizer.model")" -le 65536 ] &&
    cp "${dir}/tokenizer.model" "${SEEDS}/tokenizer_model/${tag}_tokenizer.model"
  for f in tokenizer_config.json special_tokens_map.json; do
    [ -f "${dir}/${f}" ] && cp "${dir}/${f}" "${SEEDS}/tokenizer_config/${tag}_${f}"
  done
  for f in "${dir}"/*.safetensors; do
    [ -f "$f" ] && python3 "${ROOT}/fuzz/make_seeds.py" shrink-safetensors "$f" \
      "${SEEDS}/safetensors/${tag}_$(basename "$f")"
  done
  for f in "${dir}"/*.bin; do
    [ -f "$f" ] || continue
    extract_pkl "$f" "${SEEDS}/pickle/${tag}_$(basename "$f" .bin).pkl"
    [ "$(stat -c %s "$f")" -le "${MAX_CHECKPOINT_SEED}" ] && cp "$f" "${SEEDS}/zip/${tag}_$(basename "$f")"
  done
  return 0
}
for d in stories260K stories260K-pt stories260K-pt-bf16; do
  [ -d "${SHARED}/models/${d}" ] && add_model_dir "${SHARED}/models/${d}" "${d}"
done
[ -d "${SHARED}/tokenizers/llama2" ] && add_model_dir "${SHARED}/tokenizers/llama2" llama2
TPSERVE_BIN="${ROOT}/build/bin/tpserve"
if [ -x "${TPSERVE_BIN}" ]; then
  mm="${BUILD_DIR}/make-model"
  if "${TPSERVE_BIN}" make-model --preset tiny --format both --out "${mm}" >/dev/null 2>&1; then
    add_model_dir "${mm}" make-model
  else
    echo "fuzz.sh: make-model failed; continuing with the other seeds" >&2
  fi
fi
for t in "${TARGETS[@]}"; do
  mkdir -p "${SEEDS}/${t}"
  if [ -n "$(ls -A "${SEEDS}/${t}")" ]; then "${BUILD_DIR}/bin/fuzz_seed_check" "${t}" "${SEEDS}/${t}"/*; fi
done

# Past findings (fuzz/regressions/<target>/) must still run clean before any new fuzzing.
for t in "${TARGETS[@]}"; do
  reg="${ROOT}/fuzz/regressions/${t}"
  if [ -d "${reg}" ] && [ -n "$(ls -A "${reg}")" ]; then
    "${BUILD_DIR}/bin/${t}_fuzz" -rss_limit_mb=2048 -timeout=10 "${reg}"/* >"${BUILD_DIR}/regressions-${t}.log" 2>&1 ||
      { tail -n 40 "${BUILD_DIR}/regressions-${t}.log" >&2; echo "fuzz.sh: regression in ${t}" >&2; exit 1; }
  fi
done

declare -A DICT=([safetensors]=json [model_config]=json [tokenizer_config]=json [pickle]=pickle [zip]=pickle
  [shard_index]=json [tokenizer_model]=json)
# Largest input per target: small, so the corpora do not fill with megabyte inputs that mutate slowly.
declare -A MAX_LEN=([safetensors]=262144 [zip]=262144 [pickle]=65536 [shard_index]=16384 [model_config]=8192 [tokenizer_config]=8192
  [tokenizer_model]=65536)
mkdir -p "${BUILD_DIR}/artifacts" "${BUILD_DIR}/tmp"
rm -rf "${BUILD_DIR}/tmp/"*
export TMPDIR="${BUILD_DIR}/tmp"  # tokenizer_model_fuzz's scratch dirs, cleared on each run
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
# libFuzzer runs one process on one core: FUZZ_JOBS targets (default 2, the CI machine's cores) fuzz side by side,
# each still for SECONDS_PER_TARGET seconds, so the stage takes ceil(targets / FUZZ_JOBS) x SECONDS.
FUZZ_JOBS="${FUZZ_JOBS:-2}"
fuzz_one() {  # TARGET: fuzzes it; prints its last stats line, or its log's tail and fails
  local t="$1" corpus="${BUILD_DIR}/corpus/$1" log="${BUILD_DIR}/artifacts/$1.log" regs=()
  mkdir -p "${corpus}"
  [ -d "${ROOT}/fuzz/regressions/${t}" ] && regs=("${ROOT}/fuzz/regressions/${t}")
  if "${BUILD_DIR}/bin/${t}_fuzz" "${corpus}" "${SEEDS}/${t}" "${regs[@]}" -dict="${ROOT}/fuzz/${DICT[$t]}.dict" \
      -max_total_time="${SECONDS_PER_TARGET}" -rss_limit_mb=2048 -malloc_limit_mb=2048 -timeout=10 \
      -max_len="${MAX_LEN[$t]}" -print_final_stats=1 -artifact_prefix="${BUILD_DIR}/artifacts/${t}-" >"${log}" 2>&1; then
    echo "${t}: $(grep -E "^stat::number_of_executed_units|^Done" "${log}" | tail -1)"
  else
    tail -n 60 "${log}" >&2
    return 1
  fi
}
failed=()
for ((i = 0; i < ${#TARGETS[@]}; i += FUZZ_JOBS)); do
  batch=("${TARGETS[@]:i:FUZZ_JOBS}")
  pids=()
  for t in "${batch[@]}"; do
    echo "== fuzz ${t} for ${SECONDS_PER_TARGET} s (corpus ${BUILD_DIR}/corpus/${t}, log ${BUILD_DIR}/artifacts/${t}.log)"
    fuzz_one "${t}" &
    pids+=($!)
  done
  for j in "${!pids[@]}"; do
    wait "${pids[j]}" || failed+=("${batch[j]}")
  done
done
if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]} (reproducers in ${BUILD_DIR}/artifacts/)" >&2
  exit 1
fi
echo "fuzz.sh: all ${#TARGETS[@]} targets ran ${SECONDS_PER_TARGET} s without a finding"
