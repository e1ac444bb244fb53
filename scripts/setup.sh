#!/usr/bin/env bash
# Installs every Debian package convscope needs (build, run, tests). Idempotent: when all
# packages are present it only checks and returns in about a second. Run as root on Debian 12.
set -euo pipefail
packages=(
  g++ cmake ninja-build ccache pkg-config git
  libtorch-dev libopencv-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev
  libhnswlib-dev libfftw3-dev zlib1g-dev libssl-dev libopenblas0-openmp libeigen3-dev
  libgoogle-perftools-dev
  libopenmpi-dev openmpi-bin
  libpng-dev libjpeg-dev libtiff-dev libwebp-dev
  clang libclang-rt-14-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  dataset-fashion-mnist
  python3 python3-numpy python3-torch python3-torchvision python3-sklearn
  chromium curl
)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# Node.js and npm for the browser tests (Playwright); any installed node/npm will do.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  missing+=(nodejs npm)
fi
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

# Playwright (npm package playwright-core, pinned by its package-lock.json) for the browser tests;
# reinstalled only when the lock file changes.
browser_dir="$(cd "$(dirname "$0")/.." && pwd)/tests/e2e/browser"
lock_sum=$(sha256sum "$browser_dir/package-lock.json" | cut -d' ' -f1)
stamp="$browser_dir/node_modules/.convscope-lock-sha256"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$lock_sum" ]; then
  echo "setup: installing playwright-core in tests/e2e/browser (npm ci)" >&2
  (cd "$browser_dir" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$lock_sum" >"$stamp"
fi
