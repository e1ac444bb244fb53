#!/usr/bin/env bash
# Runs on several ranks (Open MPI's mpirun on this machine, 3 ranks oversubscribed): top-patches,
# embed and evaluate give the bytes one process writes; a scan or an evaluation whose rank is killed
# resumes from the checkpoints to those bytes; ranks that disagree about the data, a rank that fails and
# a command that does not split its items stop with one clear message and no output.
# Usage: mpi.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"
if ! command -v mpirun >/dev/null 2>&1; then echo "mpirun is missing: run scripts/setup.sh"; exit 1; fi
# Tests run as root here; Open MPI refuses that unless told.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# Shared memory between the ranks without the ptrace rights containers lack.
export OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1
MPI=(mpirun -n 3 --bind-to none)

M=$FIX/lenet_scripted.pt
source "$(dirname "$0")/lib/ranks.sh"
# top-patches, embed and evaluate on 3 ranks: the bytes of one process.
same_bytes_on_ranks "${MPI[@]}"

# A rank killed during the scan: mpirun stops the others; run again with the same checkpoint,
# every rank resumes its share and the result is the bytes of one process.
rm -f "$T"/pid.*
"${MPI[@]}" bash -c 'echo $$ > "$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$T" "$BIN" "${scan[@]}" \
    --checkpoint "$T/ck.json" --checkpoint-every 2 --out "$T/killed" >/dev/null 2>"$T/killed.err" &
run=$!
for _ in $(seq 1 1000); do
    [ -s "$T/ck.json.rank1" ] && [ -s "$T/pid.1" ] && break
    kill -0 "$run" 2>/dev/null || break
    sleep 0.01
done
[ -s "$T/ck.json.rank1" ] || { echo "rank 1 wrote no checkpoint"; cat "$T/killed.err"; exit 1; }
kill -KILL "$(cat "$T/pid.1")"
rc=0
wait "$run" || rc=$?
[ "$rc" != 0 ] || { echo "mpirun succeeded although a rank was killed"; exit 1; }
[ ! -e "$T/killed/top_patches.json" ] || { echo "a result was written although a rank was killed"; exit 1; }
"${MPI[@]}" "$BIN" "${scan[@]}" --checkpoint "$T/ck.json" --out "$T/resumed" 2>/dev/null
cmp "$T/one/top_patches.json" "$T/resumed/top_patches.json"

# evaluate with checkpoints, a rank killed while the others wait with their methods saved: run
# again, the saved methods are read back, the killed rank's is computed, and the files are those
# of one process.
evk=(evaluate --model "$M" --data fashion-mnist:test --indices 0:4 --methods saliency,grad-cam,rise
     --metrics deletion,infidelity --steps 8 --masks 3000 --threads 1)
"$BIN" "${evk[@]}" --out "$T/k1" >/dev/null 2>&1
rm -f "$T"/pid.*
"${MPI[@]}" bash -c 'echo $$ > "$0/pid.$OMPI_COMM_WORLD_RANK"; exec "$@"' "$T" "$BIN" "${evk[@]}" \
    --checkpoint "$T/evck" --out "$T/kkilled" >/dev/null 2>"$T/kkilled.err" &
run=$!
for _ in $(seq 1 3000); do
    [ -s "$T/evck.saliency" ] && [ -s "$T/evck.grad-cam" ] && [ -s "$T/pid.2" ] && break
    kill -0 "$run" 2>/dev/null || break
    sleep 0.01
done
[ -s "$T/evck.grad-cam" ] || { echo "ranks 0 and 1 saved no checkpoint"; cat "$T/kkilled.err"; exit 1; }
[ ! -e "$T/evck.rise" ] || { echo "rank 2 finished before it could be killed: give it more work"; exit 1; }
kill -KILL "$(cat "$T/pid.2")"
rc=0
wait "$run" || rc=$?
[ "$rc" != 0 ] || { echo "mpirun succeeded although a rank was killed"; exit 1; }
[ ! -e "$T/kkilled/metrics.csv" ] || { echo "a result was written although a rank was killed"; exit 1; }
"${MPI[@]}" "$BIN" "${evk[@]}" --checkpoint "$T/evck" --out "$T/kresumed" >/dev/null 2>"$T/kresumed.err"
grep -q "resumed 1 of 1 methods from the checkpoint" "$T/kresumed.err" ||
    { echo "the saved methods were not read back"; cat "$T/kresumed.err"; exit 1; }
for f in metrics.csv summary.csv maps/saliency.npy maps/grad-cam.npy maps/rise.npy; do cmp "$T/k1/$f" "$T/kresumed/$f"; done

# Ranks that disagree about the data: every rank stops before any work, and says which.
$PY - "$T" <<'EOF'
import sys, numpy as np
r = np.random.default_rng(0)
for name in ("a", "b"):
    np.save(f"{sys.argv[1]}/{name}.npy", r.random((40, 1, 28, 28), dtype=np.float32))
EOF
rc=0
"${MPI[@]}" bash -c 'd=a; [ "$OMPI_COMM_WORLD_RANK" = 2 ] && d=b; exec "$@" --data "$0/$d.npy"' "$T" \
    "$BIN" top-patches --model "$M" --k 2 --threads 1 --out "$T/bad1" >/dev/null 2>"$T/bad1.err" || rc=$?
[ "$rc" != 0 ] || { echo "ranks with different data succeeded"; exit 1; }
grep -q "the ranks disagree about the data (its hash): rank(s) 2 differ" "$T/bad1.err" ||
    { echo "no clear message for ranks that disagree"; cat "$T/bad1.err"; exit 1; }
[ "$(grep -c "convscope: " "$T/bad1.err")" = 1 ] || { echo "the ranks that disagree said it more than once"; cat "$T/bad1.err"; exit 1; }
[ ! -e "$T/bad1" ] || { echo "output written by ranks that disagree"; exit 1; }

# A rank that fails (its model file is missing): the others stop, the message names the rank.
rc=0
"${MPI[@]}" bash -c 'm=$0; [ "$OMPI_COMM_WORLD_RANK" = 1 ] && m=$0.missing; exec "$@" --model "$m"' "$M" \
    "$BIN" top-patches --data "$T/a.npy" --k 2 --threads 1 --out "$T/bad2" >/dev/null 2>"$T/bad2.err" || rc=$?
[ "$rc" != 0 ] || { echo "a failed rank went unnoticed"; exit 1; }
grep -q "convscope: rank 1 of 3: .*missing" "$T/bad2.err" || { echo "no message from the failed rank"; cat "$T/bad2.err"; exit 1; }
[ ! -e "$T/bad2/top_patches.json" ] || { echo "output written although a rank failed"; exit 1; }

# A command that does not split its items, and --shard under mpirun: refused.
rc=0
"${MPI[@]}" "$BIN" attribute --model "$M" --data "$T/a.npy" --index 0 --method saliency --out "$T/bad3" >/dev/null 2>"$T/bad3.err" || rc=$?
[ "$rc" = 2 ] || { echo "expected exit 2 for attribute under mpirun, got $rc"; cat "$T/bad3.err"; exit 1; }
grep -q "attribute runs as one process" "$T/bad3.err" || { echo "no message for attribute under mpirun"; cat "$T/bad3.err"; exit 1; }
rc=0
"${MPI[@]}" "$BIN" top-patches --model "$M" --data "$T/a.npy" --shard 0/2 --out "$T/bad4" >/dev/null 2>"$T/bad4.err" || rc=$?
[ "$rc" != 0 ] || { echo "--shard under mpirun succeeded"; exit 1; }
grep -q "leave --shard out" "$T/bad4.err" || { echo "no message for --shard under mpirun"; cat "$T/bad4.err"; exit 1; }
rc=0
"${MPI[@]}" "$BIN" top-patches --merge "$T/one/top_patches.json" --out "$T/bad5" >/dev/null 2>"$T/bad5.err" || rc=$?
[ "$rc" != 0 ] || { echo "--merge under mpirun succeeded"; exit 1; }
grep -q "run it without mpirun" "$T/bad5.err" || { echo "no message for --merge under mpirun"; cat "$T/bad5.err"; exit 1; }
for b in bad2 bad3 bad4 bad5; do [ ! -e "$T/$b/top_patches.json" ] || { echo "$b written"; exit 1; }; done
echo "mpi.sh: ok"
