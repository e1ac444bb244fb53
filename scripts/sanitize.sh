#!/usr/bin/env bash
# Builds the library and the unit tests with AddressSanitizer and UndefinedBehaviorSanitizer
# (clang, build-asan, shared with the fuzz targets: scripts/asan-build.sh) and runs the unit tests (the GoogleTest ones; the
# end-to-end scripts and the few unit tests that start the command line use build/convscope). Any sanitizer report fails
# the run: UBSan halts on its first error, ASan on any memory error, LeakSanitizer on a leak
# outside LibTorch's and OpenMP's once-per-process allocations (tests/lsan.supp).
# Usage: scripts/sanitize.sh [GTEST_FILTER]   (default: every unit test)
# Needs build/convscope and build/fixtures (scripts/test.sh makes them first).
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-}
[ -x build/convscope ] || bash scripts/build.sh
bash scripts/asan-build.sh convscope_tests
[ -d build/fixtures ] || /usr/bin/python3 tests/fixtures/make_fixtures.py build/fixtures
[ -e build-asan/fixtures ] || ln -s ../build/fixtures build-asan/fixtures
export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:${LSAN_OPTIONS:-}"
log=build-asan/sanitize.log
args=(--output-on-failure -j 2 -E '^e2e\.')
[ -z "$filter" ] || args+=(-R "$filter")
start=$(date +%s)
if ! (cd build-asan && ctest "${args[@]}") >"$log" 2>&1; then
    echo "sanitize: FAILED (see $log)" >&2
    grep -m 10 -E 'ERROR: |runtime error|SUMMARY|Failed|\*\*\*' "$log" >&2 || tail -30 "$log" >&2
    exit 1
fi
echo "sanitize: $(grep -o '[0-9]*% tests passed.*' "$log" | head -1 || echo '?') under ASan+UBSan in $(( $(date +%s) - start )) s, no reports"
