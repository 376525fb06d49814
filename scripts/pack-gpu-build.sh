#!/usr/bin/env bash
# Packs a -DTPSERVE_CUDA=ON build into a small, self-sufficient folder for a GPU machine that has only the
# CUDA toolkit and driver (no gRPC/Protobuf/Abseil, no network): the test/bench binaries (stripped), every
# non-system, non-CUDA shared library they load (in lib/, found via $ORIGIN rpath or LD_LIBRARY_PATH),
# the small shared test data, and gpu-check.sh. CUDA libraries (cudart, cuBLAS, NCCL: ~800 MB) are not
# packed: they come from the GPU machine's toolkit, which must be CUDA 13 like this build.
#
#   scripts/pack-gpu-build.sh [BUILD_DIR=build-cuda] [OUT_DIR=BUILD_DIR/gpu-pack]
#   then on the GPU machine: bash OUT_DIR/gpu-check.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build-cuda}" && pwd)
OUT=${2:-$BUILD/gpu-pack}
SHARED_SRC=${TPSERVE_SHARED_DIR:-$ROOT/../shared}

# Binaries gpu-check.sh may run; missing ones are skipped (edit freely).
BINARIES=(kernels_tests worker_tests engine-bench decode-bench cuda-ops-bench allreduce-bench)
# Small shared data the GPU end-to-end tests read (never the 13B checkpoint).
SHARED_ITEMS=(models/stories260K models/stories260K-pt models/stories260K-pt-bf16 reference tokenizers/llama2)

# Libraries the GPU machine provides: glibc's, the driver's and the CUDA toolkit's.
is_provided() {
  case "$1" in
    linux-vdso.so* | ld-linux*.so* | libc.so* | libm.so* | libpthread.so* | libdl.so* | librt.so* | \
      libresolv.so* | libutil.so*) return 0 ;;
    libcuda.so* | libcudart.so* | libcublas.so* | libcublasLt.so* | libnccl.so* | libnvidia*.so* | \
      libnvrtc*.so* | libnvJitLink*.so*) return 0 ;;
  esac
  return 1
}

rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/shared"

packed_bins=()
for b in "${BINARIES[@]}"; do
  if [[ -x "$BUILD/bin/$b" ]]; then
    cp "$BUILD/bin/$b" "$OUT/bin/$b"
    strip --strip-unneeded "$OUT/bin/$b"
    packed_bins+=("$b")
  else
    echo "pack: $BUILD/bin/$b not built; skipping"
  fi
done
if [[ ${#packed_bins[@]} -eq 0 ]]; then
  echo "pack: no binaries found in $BUILD/bin (build kernels_tests/worker_tests first)" >&2
  exit 1
fi

# ldd lists transitive dependencies too, so one pass per binary finds every library.
missing=0
for b in "${packed_bins[@]}"; do
  while read -r line; do
    name=$(awk '{print $1}' <<<"$line")
    if [[ "$line" == *"not found"* ]]; then
      is_provided "$name" && continue
      echo "pack: $b needs $name, which is not found here" >&2
      missing=1
      continue
    fi
    path=$(awk '$2 == "=>" {print $3}' <<<"$line")
    [[ -z "$path" || ! -e "$path" ]] && continue
    is_provided "$name" && continue
    [[ -e "$OUT/lib/$name" ]] || cp -L "$path" "$OUT/lib/$name"
  done < <(ldd "$BUILD/bin/$b")
done
[[ $missing -eq 0 ]] || exit 1
strip --strip-unneeded "$OUT"/lib/*.so* 2>/dev/null || true

if command -v patchelf >/dev/null; then
  for b in "${packed_bins[@]}"; do patchelf --set-rpath '$ORIGIN/../lib' "$OUT/bin/$b"; done
  for l in "$OUT"/lib/*.so*; do patchelf --set-rpath '$ORIGIN' "$l" 2>/dev/null || true; done
fi

if [[ -d "$SHARED_SRC" ]]; then
  for item in "${SHARED_ITEMS[@]}"; do
    if [[ -e "$SHARED_SRC/$item" ]]; then
      mkdir -p "$OUT/shared/$(dirname "$item")"
      cp -rL "$SHARED_SRC/$item" "$OUT/shared/$item"
    fi
  done
else
  echo "pack: no shared data at $SHARED_SRC; end-to-end tests will skip"
fi
cp "$ROOT/scripts/gpu-check.sh" "$OUT/gpu-check.sh"
chmod +x "$OUT/gpu-check.sh"

# Self-check: with only lib/ and the CUDA toolkit on the search path, every library a binary loads must
# come from lib/, the CUDA toolkit or the system's glibc/libstdc++ set.
CUDA_LIBS=/usr/local/cuda/lib64
bad=0
for b in "${packed_bins[@]}"; do
  while read -r line; do
    name=$(awk '{print $1}' <<<"$line")
    path=$(awk '$2 == "=>" {print $3}' <<<"$line")
    if [[ "$line" == *"not found"* ]]; then
      echo "pack: self-check: $b cannot find $name" >&2
      bad=1
    elif [[ -n "$path" && "$path" != "$OUT/lib/"* && "$path" != "$CUDA_LIBS/"* ]] && ! is_provided "$name"; then
      echo "pack: self-check: $b loads $name from $path (outside the pack)" >&2
      bad=1
    fi
  done < <(LD_LIBRARY_PATH="$OUT/lib:$CUDA_LIBS" ldd "$OUT/bin/$b")
done
[[ $bad -eq 0 ]] || exit 1

size_mb=$(du -sm "$OUT" | awk '{print $1}')
echo "pack: $OUT (${size_mb} MiB): bin/{${packed_bins[*]}}, $(ls "$OUT/lib" | wc -l) libs"
glibc=$(for b in "$OUT"/bin/* "$OUT"/lib/*; do objdump -T "$b" 2>/dev/null; done | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
echo "pack: needs ${glibc:-GLIBC_?} or newer on the GPU machine, and the CUDA 13 runtime, cuBLAS and NCCL"
if [[ $size_mb -gt 60 ]]; then echo "pack: warning: over 60 MiB; a device run carries at most 64 MiB" >&2; fi
