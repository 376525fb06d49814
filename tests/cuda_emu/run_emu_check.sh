#!/usr/bin/env bash
# Compiles kernels/cuda/*.cu as C++ against the CPU emulation in emu.h and runs emu_check.cc, which
# compares every kernel with the reference backend. For machines without a GPU; takes ~10-20 minutes on two
# busy cores (most of it attention). An argument runs only the check groups whose name contains it.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
WORK=$(mktemp -d /tmp/tpserve-emu.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
# Kernel<<<grid, block, smem, stream>>>(args) -> ::emu::Launch(Kernel, grid, block, smem, stream)(args)
to_cc() {
  perl -0pe 's/([A-Za-z_][A-Za-z_0-9]*(?:<[A-Za-z_0-9:, ]*>)?)\s*<<<(.*?)>>>\s*\(/::emu::Launch($1, $2)(/gs;
             s/extern __shared__ float (\w+)\[\];/float* $1 = ::emu::DynamicSmem();/g' "$1" >"$2"
}
srcs=()
for f in "$ROOT"/kernels/cuda/*.cu; do
  out="$WORK/$(basename "$f" .cu).cc"
  to_cc "$f" "$out"
  srcs+=("$out")
done
# Headers with launches (gemv_warp_rows.cuh) are rewritten too, into a folder searched before the source tree.
mkdir -p "$WORK/inc/kernels/cuda"
for f in "$ROOT"/kernels/cuda/*.cuh; do to_cc "$f" "$WORK/inc/kernels/cuda/$(basename "$f")"; done
CXXFLAGS=(-std=c++17 -O1 -g -pthread -I"$HERE/include" -I"$WORK/inc" -I"$ROOT" -include "$HERE/emu.h" -w)
g++ "${CXXFLAGS[@]}" "${srcs[@]}" "$HERE/emu_check.cc" "$ROOT/kernels/reference/reference_backend.cc" \
  "$ROOT/kernels/rope_table.cc" "$ROOT/common/dtype.cc" "$ROOT/common/log.cc" -o "$WORK/emu_check" \
  -labsl_status -labsl_statusor -labsl_strings -labsl_str_format_internal -labsl_cord -labsl_int128 \
  -labsl_raw_logging_internal -labsl_throw_delegate -labsl_strings_internal -labsl_synchronization
"$WORK/emu_check" "$@"
