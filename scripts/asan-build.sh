#!/usr/bin/env bash
# Configures (once) and builds TARGETs in build-asan: clang with AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer's coverage (-DCONVSCOPE_FUZZ=ON), one set of library
# objects for scripts/sanitize.sh (the unit tests) and scripts/fuzz.sh (the fuzz targets).
# Usage: scripts/asan-build.sh TARGET...
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f build-asan/build.ninja ]; then
    CC=clang CXX=clang++ cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCONVSCOPE_FUZZ=ON \
        -DCONVSCOPE_TEST_BINARY="$PWD/build/convscope" \
        -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache >/dev/null
fi
if ! ninja -C build-asan "$@" >build-asan/build.log 2>&1; then
    echo "the sanitizer build failed (see build-asan/build.log)" >&2
    grep -m 10 -E 'error|FAILED' build-asan/build.log >&2 || tail -20 build-asan/build.log >&2
    exit 1
fi
