#!/usr/bin/env bash
# Scaling of a top-patches scan on several ranks against one process on the same machine, in one
# run: 1 process of 2 threads against `mpirun -n 2` ranks of 1 thread each (the same cores), and
# the parts of the cost per rank (start-up, scanning, the merge on rank 0) for the cost model in
# bench/RESULTS.md. Interleaved rounds; medians.
# Usage: bash bench/mpi_scaling.sh [CONVSCOPE] [MODEL] [ITEMS] [ROUNDS] [DATA]
set -euo pipefail
BIN=${1:-build/convscope}
MODEL=${2:-$HOME/.cache/convscope/default-fashion-mnist.pt}
ITEMS=${3:-10000}
ROUNDS=${4:-3}
DATA=${5:-fashion-mnist:test}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
scan=(top-patches --model "$MODEL" --data "$DATA" --indices "0:$ITEMS" --batch-size 128)
now() { date +%s.%N; }
one=() two=() start=() merge=()
for r in $(seq 1 "$ROUNDS"); do
    for k in $( [ $((r % 2)) = 1 ] && echo "1 2" || echo "2 1"); do
        rm -rf "$T/o$k"
        t0=$(now)
        if [ "$k" = 1 ]; then
            "$BIN" "${scan[@]}" --threads 2 --out "$T/o1" 2>/dev/null
            one+=("$(echo "$(now) - $t0" | bc)")
        else
            mpirun -n 2 --bind-to none "$BIN" "${scan[@]}" --threads 1 --out "$T/o2" 2>/dev/null
            two+=("$(echo "$(now) - $t0" | bc)")
        fi
    done
    cmp -s "$T/o1/top_patches.json" "$T/o2/top_patches.json" || echo "note: 2 threads and 2 ranks differ in bytes (thread counts change sums)"
    # Start-up: the same command on 9 items (k = 9); the merge: --merge of two shards' files.
    t0=$(now)
    "$BIN" top-patches --model "$MODEL" --data "$DATA" --indices 0:9 --threads 1 --out "$T/s" 2>/dev/null
    start+=("$(echo "$(now) - $t0" | bc)")
    "$BIN" "${scan[@]}" --threads 1 --shard 0/2 --out "$T/h0" 2>/dev/null
    "$BIN" "${scan[@]}" --threads 1 --shard 1/2 --out "$T/h1" 2>/dev/null
    t0=$(now)
    "$BIN" top-patches --merge "$T/h0/top_patches.json" "$T/h1/top_patches.json" --out "$T/m" 2>/dev/null
    merge+=("$(echo "$(now) - $t0" | bc)")
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
m1=$(median "${one[@]}") m2=$(median "${two[@]}") ms=$(median "${start[@]}") mm=$(median "${merge[@]}")
echo "top-patches of $ITEMS items ($ROUNDS rounds, medians): 1 process x 2 threads ${m1} s; mpirun -n 2 x 1 thread ${m2} s"
echo "parallel efficiency (1 process of 2 threads / 2 ranks of 1 thread): $(echo "scale=3; $m1 / $m2" | bc)"
echo "start-up of one process (9 items) ${ms} s; merge of 2 shards with their pictures (--merge) ${mm} s"
