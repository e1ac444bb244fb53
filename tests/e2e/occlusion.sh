#!/bin/bash
# convscope occlusion end to end: outputs and their shapes, full == incremental, approximate
# with SSIM, label targets, and the exit codes and messages for bad input.
# Usage: occlusion.sh <convscope binary> <fixtures dir>
set -euo pipefail
BIN=$1
FIX=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PY=/usr/bin/python3
MODEL="$FIX/lenet_scripted.pt"
DATA="$FIX/lenet_scripted/input.npy"

fail() { echo "FAIL: $*" >&2; exit 1; }

# expect CODE NEEDLE args...: runs the command, checks the exit code and the message on stderr.
expect() {
    local code=$1 needle=$2
    shift 2
    set +e
    "$BIN" "$@" >"$T/out.txt" 2>"$T/err.txt"
    local rc=$?
    set -e
    [ "$rc" -eq "$code" ] || { cat "$T/err.txt" >&2; fail "exit $rc, expected $code: $*"; }
    grep -q -- "$needle" "$T/err.txt" || { cat "$T/err.txt" >&2; fail "no '$needle' in the message: $*"; }
}

# 1. Incremental (default): the files, their shapes and the summary.
"$BIN" occlusion --model "$MODEL" --data "$DATA" --indices 0:2 --patch 6 --stride 4x3 \
    --baseline mean --threads 2 --out "$T/inc" >/dev/null 2>"$T/err.txt" || { cat "$T/err.txt"; fail "incremental run"; }
for f in occlusion.npy coarse.npy target_prob.npy top_class.npy summary.json manifest.json \
         image_0/heatmap.png image_0/overlay.png image_0/target_prob.png image_0/summary.json \
         image_1/heatmap.png image_1/overlay.png image_1/target_prob.png image_1/summary.json; do
    [ -s "$T/inc/$f" ] || fail "missing $f"
done
$PY - "$T/inc" <<'PYEOF'
import json, sys
import numpy as np
d = sys.argv[1]
occ = np.load(f"{d}/occlusion.npy")
coarse = np.load(f"{d}/coarse.npy")
assert occ.shape == (2, 1, 28, 28) and occ.dtype == np.float32, occ.shape
# positions: (28 - 6) // 4 + 1 = 6 rows, (28 - 6) // 3 + 1 = 8 columns
assert coarse.shape == (2, 6, 8) and coarse.dtype == np.float32, coarse.shape
assert np.isfinite(occ).all() and np.abs(occ).max() > 0
# The last column (27) is covered by no window (windows end at 7*3 + 6 = 27): attribution 0.
assert (occ[:, :, :, 27] == 0).all()
# Pixel (0,0) is covered only by window (0,0).
assert np.allclose(occ[:, 0, 0, 0], coarse[:, 0, 0])
assert np.load(f"{d}/top_class.npy").dtype == np.int64
s = json.load(open(f"{d}/image_1/summary.json"))
for key in ["clean_score", "predicted", "target", "important_region", "max_window",
            "most_likely_class", "confounders", "max_drop"]:
    assert key in s, key
assert len(s["most_likely_class"]) == 6 and len(s["most_likely_class"][0]) == 8
assert abs(s["max_drop"] - float(coarse[1].max())) < 1e-5
m = json.load(open(f"{d}/manifest.json"))
files = json.dumps(m)
for f in ["occlusion.npy", "coarse.npy", "image_0/heatmap.png", "image_1/summary.json"]:
    assert f in files, f
PYEOF

# 2. Full recomputation gives the same maps.
"$BIN" occlusion --model "$MODEL" --data "$DATA" --indices 0:2 --patch 6 --stride 4x3 \
    --baseline mean --mode full --out "$T/full" >/dev/null 2>&1 || fail "full run"
$PY -c "
import numpy as np, sys
a = np.load('$T/inc/occlusion.npy'); b = np.load('$T/full/occlusion.npy')
assert np.abs(a - b).max() <= 1e-4 * max(np.abs(b).max(), 1e-2), np.abs(a - b).max()
"

# 3. Approximate with its SSIM against the exact map; prob score; label target from --labels.
"$BIN" occlusion --model "$MODEL" --data "$DATA" --index 0 --patch 4 --stride 1 --approximate \
    --report-ssim --score prob --json --out "$T/approx" >"$T/approx.json" 2>/dev/null || fail "approximate run"
$PY -c "
import json
s = json.load(open('$T/approx.json'))
v = s['images'][0]['ssim']
assert 0 < v <= 1.0 + 1e-9, v
assert s['mode'] == 'approximate' and s['forwards'] < 625
# the automatic settings that ran: a 28x28 LeNet keeps its changes local (no threshold), a
# window 4 strides wide starts the drill-down from the diagonal lattice (every third position),
# and the engine evaluates 512 copies per batch
assert s['tau'] == 1 and s['coarse_step'] == 3, (s['tau'], s['coarse_step'])
assert s['batch_size'] == 512, s['batch_size']
"
"$BIN" occlusion --model "$MODEL" --data "$DATA" --index 0 --patch 4 --stride 1 --approximate \
    --tau 0.3 --coarse-step 1 --no-bf16 --json --out "$T/approx2" >"$T/approx2.json" 2>/dev/null || fail "approximate, tau"
$PY -c "
import json
s = json.load(open('$T/approx2.json'))
assert s['tau'] == 0.3 and s['coarse_step'] == 1 and s['forwards'] == 625, s
assert s['bf16'] is False, s  # --no-bf16: float32 changes
assert s['corrected'] is True, s  # tau < 1: the cut-off changes are corrected
assert json.load(open('$T/approx2/manifest.json'))['options']['bf16'] is False
"
"$BIN" occlusion --model "$MODEL" --data "$DATA" --index 0 --patch 4 --stride 1 --approximate \
    --tau 0.3 --coarse-step 1 --no-bf16 --no-correction --json --out "$T/approx3" >"$T/approx3.json" 2>/dev/null \
    || fail "approximate, tau, no correction"
$PY -c "
import json
import numpy as np
s = json.load(open('$T/approx3.json'))
assert s['corrected'] is False, s
assert json.load(open('$T/approx3/manifest.json'))['options']['correct'] is False
# the same cut without its correction gives other drops
a, b = np.load('$T/approx2/coarse.npy'), np.load('$T/approx3/coarse.npy')
assert np.abs(a - b).max() > 0, 'correction made no difference'
"
$PY -c "import numpy as np; np.save('$T/labels.npy', np.array([3, 7], dtype=np.int64))"
"$BIN" occlusion --model "$MODEL" --data "$DATA" --labels "$T/labels.npy" --indices 0:2 --patch 7 \
    --stride 7 --target label --out "$T/label" >/dev/null 2>&1 || fail "label target"
$PY -c "
import json
assert json.load(open('$T/label/image_1/summary.json'))['target'] == 7
"

# 4. Bad input: clear messages, exit 1 for bad values found at run time, 2 for bad options,
#    and no manifest for a failed run.
expect 1 "is larger than the input 28x28" occlusion --model "$MODEL" --data "$DATA" --patch 40 --out "$T/bad1"
[ ! -e "$T/bad1/manifest.json" ] || fail "manifest written for a failed run"
expect 2 "stride must be at least 1" occlusion --model "$MODEL" --data "$DATA" --stride 0 --out "$T/bad2"
expect 2 "stride must be at least 1" occlusion --model "$MODEL" --data "$DATA" --stride 2x-3 --out "$T/bad3"
expect 1 "target class 12 is out of range" occlusion --model "$MODEL" --data "$DATA" --target 12 --out "$T/bad4"
expect 1 "has no labels" occlusion --model "$MODEL" --data "$DATA" --target label --out "$T/bad5"
expect 2 "baseline takes 0, mean, blur or a number" occlusion --model "$MODEL" --data "$DATA" --baseline foo --out "$T/bad6"
expect 2 "add --baseline blur" occlusion --model "$MODEL" --data "$DATA" --blur-sigma 2 --out "$T/bad6b"
expect 2 "bad target '-1'" occlusion --model "$MODEL" --data "$DATA" --target -1 --out "$T/bad6c"
expect 2 "drop --mode" occlusion --model "$MODEL" --data "$DATA" --approximate --mode full --out "$T/bad7"
expect 2 "takes N or NxM" occlusion --model "$MODEL" --data "$DATA" --patch 4y4 --out "$T/bad8"
expect 1 "tau (projective-field threshold) must be in (0, 1]" occlusion --model "$MODEL" --data "$DATA" \
    --approximate --tau 2 --out "$T/bad9"
expect 1 "or a power of 2" occlusion --model "$MODEL" --data "$DATA" --approximate \
    --coarse-step 6 --out "$T/bad10"
[ ! -e "$T/bad10/manifest.json" ] || fail "manifest written for a failed run"
expect 2 "--no-bf16 is an option of the approximate mode" occlusion --model "$MODEL" --data "$DATA" \
    --no-bf16 --out "$T/bad11"
expect 2 "--no-correction is an option of the approximate mode" occlusion --model "$MODEL" --data "$DATA" \
    --no-correction --out "$T/bad13"
expect 1 "batch size must be at least 1" occlusion --model "$MODEL" --data "$DATA" --batch-size -5 \
    --out "$T/bad12"
[ ! -e "$T/bad12/manifest.json" ] || fail "manifest written for a failed run"
"$BIN" occlusion --help >"$T/help.txt"; grep -q -- "--baseline" "$T/help.txt" || fail "--help"
echo "occlusion e2e: ok"
