#!/usr/bin/env bash
# collect-libs: copies the shared libraries that BINARY... need into DEST (same absolute paths), leaving out
# what every runtime base image already has (glibc, libstdc++) and what the GPU runtime provides (the
# driver's libcuda, and CUDA libraries from /usr/local/cuda, which the nvidia/cuda runtime image ships).
#   collect-libs.sh DEST BINARY...
set -euo pipefail
dest=$1; shift
skip='^/(lib|lib64|usr/lib)(/x86_64-linux-gnu)?/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libstdc\+\+|libgcc_s)\.so|libcuda\.so|^/usr/local/cuda|libnccl\.so'
for bin in "$@"; do
  ldd "$bin" | awk '/=> \//{print $3} /^\t\//{print $1}'
done | sort -u | while read -r lib; do
  if [[ "$lib" =~ $skip ]]; then continue; fi
  mkdir -p "$dest$(dirname "$lib")"
  cp -L "$lib" "$dest$lib"
done
