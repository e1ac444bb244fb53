#!/usr/bin/env bash
# Fuzzes convscope's parsers of outside input with libFuzzer (clang, AddressSanitizer and
# UndefinedBehaviorSanitizer), in the sanitizer build folder (build-asan, scripts/asan-build.sh).
# Usage: scripts/fuzz.sh [TARGET|all] [SECONDS|ci]   (default: all, 20 s each)
# "ci" runs each target for a fixed number of inputs instead (about 10 s each here), so that the
# test command does the same work on every machine and every run: the seeds, then libFuzzer's
# mutations from seed FUZZ_SEED.
# Targets: npy, idx, image, model_meta, top_patches, server (fuzz/fuzz_<target>.cpp). Each starts from the committed
# seeds in fuzz/corpus/<target> and a working corpus in build-asan/corpus/<target> (kept between
# runs); a crash, a sanitizer report, a leak, a hang (10 s) or an uncaught exception other than
# convscope::Error fails the run, with the input saved in build-asan/findings/<target>/.
# FUZZ_SEED (default 1) seeds libFuzzer's mutations; give another one for exploratory runs.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:-all}
seconds=${2:-20}
targets=(npy idx image model_meta top_patches server)
declare -A ci_runs=([npy]=40000 [idx]=20000 [image]=40000 [model_meta]=200000 [top_patches]=80000 [server]=5000)
if [ "$target" != all ]; then
    printf '%s\n' "${targets[@]}" | grep -qx "$target" || { echo "fuzz.sh: unknown target '$target' (${targets[*]})" >&2; exit 2; }
    targets=("$target")
fi
bash scripts/asan-build.sh $(printf 'fuzz_%s ' "${targets[@]}")
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:${LSAN_OPTIONS:-}"
export OMP_NUM_THREADS=1
for t in "${targets[@]}"; do
    mkdir -p "build-asan/corpus/$t" "build-asan/findings/$t"
    log="build-asan/fuzz_$t.log"
    rc=0
    if [ "$seconds" = ci ]; then budget=(-runs="${ci_runs[$t]}"); what="${ci_runs[$t]} inputs"
    else budget=(-max_total_time="$seconds"); what="$seconds s"; fi
    build-asan/fuzz_"$t" "${budget[@]}" -timeout=10 -rss_limit_mb=4096 -max_len=65536 \
        -artifact_prefix="build-asan/findings/$t/" -print_final_stats=1 -seed="${FUZZ_SEED:-1}" \
        "build-asan/corpus/$t" "fuzz/corpus/$t" >"$log" 2>&1 || rc=$?
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo "?")
    if [ "$rc" != 0 ]; then
        echo "fuzz $t: FAILED after $runs runs (see $log; the input is in build-asan/findings/$t/)" >&2
        grep -m 5 -E 'ERROR|SUMMARY|terminate|what\(\)' "$log" >&2 || tail -20 "$log" >&2
        exit 1
    fi
    echo "fuzz $t: $what, $runs runs, coverage $cov edges, no findings"
done
