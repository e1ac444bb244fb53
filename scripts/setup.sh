#!/usr/bin/env bash
# Installs every Debian package convscope needs (build, run, tests). Idempotent: when all
# packages are present it only checks and returns in about a second. Run as root on Debian 12.
set -euo pipefail
packages=(
  g++ cmake ninja-build ccache pkg-config git
  libtorch-dev libopencv-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  libhnswlib-dev libfftw3-dev zlib1g-dev libopenblas0-openmp
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  python3 python3-numpy python3-torch python3-torchvision
)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing packages and not root; run as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
