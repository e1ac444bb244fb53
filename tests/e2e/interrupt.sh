#!/usr/bin/env bash
# Crash safety end to end: SIGINT and SIGTERM mid-run stop a command with 128 + the signal and
# leave only complete files (no temporary ones); an interrupted top-patches scan resumes from its
# checkpoint to the bytes of an uninterrupted one; a disk that fills up (a file size limit)
# gives one clear error and no half-written file.
# Usage: interrupt.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

M=$FIX/lenet_scripted.pt
scan=(top-patches --model "$M" --data fashion-mnist:test --indices 0:6000 --batch-size 16 --k 4 --threads 1)

no_temp_files() {  # no temporary file of an atomic write is left anywhere below $T
    local left
    left=$(find "$T" -name '.*.tmp.*' | head -5)
    [ -z "$left" ] || { echo "temporary files left: $left"; exit 1; }
}

# The reference: one uninterrupted scan.
"$BIN" "${scan[@]}" --out "$T/whole" 2>/dev/null

# SIGINT once the first checkpoint is written: exit 130, the checkpoint holds a partial scan.
"$BIN" "${scan[@]}" --checkpoint "$T/ck.json" --checkpoint-every 5 --out "$T/part" 2>"$T/int.err" &
pid=$!
for _ in $(seq 1 600); do
    [ -s "$T/ck.json" ] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.01
done
kill -INT "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" = 130 ] || { echo "expected exit 130 after SIGINT, got $rc"; cat "$T/int.err"; exit 1; }
grep -q "interrupted by SIGINT" "$T/int.err" || { echo "no interrupt message"; cat "$T/int.err"; exit 1; }
[ ! -e "$T/part/top_patches.json" ] || { echo "an interrupted scan wrote its result"; exit 1; }
$PY - "$T/ck.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["format"] == "convscope-top-patches-checkpoint-1", j["format"]
assert 0 < j["checkpoint_position"] < 375, j["checkpoint_position"]  # 6000 / 16 batches
EOF
no_temp_files
# Resumed, it gives the bytes of the uninterrupted scan.
"$BIN" "${scan[@]}" --checkpoint "$T/ck.json" --out "$T/resumed" 2>/dev/null
cmp "$T/whole/top_patches.json" "$T/resumed/top_patches.json"

# SIGTERM during occlusion: exit 143, nothing half-written.
"$BIN" occlusion --model "$M" --data fashion-mnist:test --indices 0:5000 --mode full --threads 1 --out "$T/occ" \
    2>"$T/term.err" &
pid=$!
# Once its progress shows, it runs the scan (a fixed sleep can end before a loaded machine has
# even loaded the model, whose start-up leaves SIGTERM's default action in place).
for _ in $(seq 1 3000); do
    grep -q "occlusion \[" "$T/term.err" 2>/dev/null && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.02
done
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[ "$rc" = 143 ] || { echo "expected exit 143 after SIGTERM, got $rc"; cat "$T/term.err"; exit 1; }
grep -q "interrupted by SIGTERM" "$T/term.err" || { echo "no interrupt message"; cat "$T/term.err"; exit 1; }
no_temp_files

# A full disk, emulated by a file size limit of 16 KiB (writes beyond it fail with EFBIG): one
# message naming the file, exit 1, and every file that exists is complete.
rc=0
(ulimit -f 16; trap '' XFSZ; exec "$BIN" activations --model "$M" --data fashion-mnist:test --indices 0:4 \
    --out "$T/full") >/dev/null 2>"$T/full.err" || rc=$?
[ "$rc" = 1 ] || { echo "expected exit 1 on a full disk, got $rc"; cat "$T/full.err"; exit 1; }
grep -q "cannot write .*check free disk space" "$T/full.err" || { echo "unclear message"; cat "$T/full.err"; exit 1; }
no_temp_files
$PY - "$T/full" <<'EOF'
import os, sys
import numpy as np
for root, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(root, f)
        data = open(p, "rb").read()
        if f.endswith(".png"):
            assert data.startswith(b"\x89PNG") and data[-8:-4] == b"IEND", p
        elif f.endswith(".npy"):
            np.load(p)
        elif f.endswith(".json"):
            __import__("json").loads(data)
EOF
echo "interrupt.sh: ok"
