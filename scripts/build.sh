#!/usr/bin/env bash
# Configures and builds tpserve into build/ (binaries in build/bin/). Extra arguments go to cmake configure.
# TARGETS="tpserve" limits what is built.
set -euo pipefail
cd "$(dirname "$0")/.."
# Lets ccache reuse objects across checkouts in different folders (CI clones anew each run).
export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$(pwd)}"
BUILD_DIR=${BUILD_DIR:-build}
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
  cmake -S . -B "$BUILD_DIR" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release "$@"
elif [ $# -gt 0 ]; then
  cmake -S . -B "$BUILD_DIR" "$@"
fi
JOBS=${JOBS:-$(nproc)}
if [ -n "${TARGETS:-}" ]; then
  # shellcheck disable=SC2086
  cmake --build "$BUILD_DIR" -j "$JOBS" --target $TARGETS
else
  cmake --build "$BUILD_DIR" -j "$JOBS"
fi
