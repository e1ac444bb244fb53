#!/usr/bin/env bash
# End-to-end test of outputs and targets on the command line: a segmentation model that returns
# a dict (describe lists its outputs, --output chooses one), region and similarity targets in
# `occlusion` and `attribute` against PyTorch's brute-force references, and the message for
# each bad combination.
# Usage: targets.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

D="$FIX/targets"
fcn="$D/fcn.pt"
shape=(--input-shape 3,32,32)

# describe lists the outputs (the message blaming the input shape is gone).
"$BIN" describe --model "$fcn" "${shape[@]}" > "$T/describe.txt"
grep -q "outputs: out 3x32x32 (explained) aux 3x32x32" "$T/describe.txt" || { cat "$T/describe.txt"; exit 1; }
"$BIN" describe --model "$fcn" "${shape[@]}" --output aux --json > "$T/describe.json"
$PY - "$T/describe.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert [(o["name"], o["shape"], o["chosen"]) for o in j["outputs"]] == [("out", [3, 32, 32], False), ("aux", [3, 32, 32], True)], j["outputs"]
assert j["num_classes"] == 3
PY
expect_fail 1 "has no output 'logits': its outputs are out, aux" describe --model "$fcn" "${shape[@]}" --output logits

# Region and similarity targets from the command line equal the references.
$PY -c "import numpy as np; np.save('$T/lraspp.npy', np.load('$D/lraspp_input.npy')); np.save('$T/embed.npy', np.load('$D/embed_input.npy'))"
"$BIN" occlusion --model "$D/lraspp.pt" --data "$T/lraspp.npy" --indices 0:2 --target 1 --score prob \
    --region box:8,16,40,48 --patch 16 --stride 8 --out "$T/occ" > /dev/null
[ -s "$T/occ/segmentation/0.png" ] || { echo "no segmentation picture"; exit 1; }
"$BIN" attribute --method saliency --model "$D/embed.pt" --data "$T/embed.npy" --indices 0:3 \
    --target similarity:2 --out "$T/sim" > /dev/null
$PY - "$T" "$D" <<'PY'
import json, sys
import numpy as np
t, d = sys.argv[1], sys.argv[2]
c = np.load(t + "/occ/coarse.npy")
ref = np.load(d + "/lraspp_box_prob_coarse.npy")
assert np.abs(c - ref).max() <= 1e-4 * np.abs(ref).max(), np.abs(c - ref).max()
m = json.load(open(t + "/occ/manifest.json"))
assert m["options"]["region"] == "box:8,16,40,48" and m["options"]["score"] == "prob", m["options"]
a = np.load(t + "/sim/attributions.npy")
ref = np.load(d + "/embed_similarity_saliency.npy")
assert np.abs(a - ref).max() <= 1e-3 * np.abs(ref).max(), np.abs(a - ref).max()
s = json.load(open(t + "/sim/summary.json"))
assert s["target"] == "similarity:2" and abs(s["items"][2]["score"] - 1) < 1e-5, s
PY

# Bad combinations: one message each.
seg=(--model "$D/lraspp.pt" --data "$T/lraspp.npy" --index 0 --patch 16 --stride 16 --out "$T/bad")
expect_fail 1 "is outside the output, which is 64 wide and 64 high" occlusion "${seg[@]}" --region box:0,0,80,10
expect_fail 2 "bad region 'box:1,2'" occlusion "${seg[@]}" --region box:1,2
$PY -c "import numpy as np, PIL.Image as I; I.fromarray(np.full((10, 20), 255, np.uint8)).save('$T/mask.png')"
expect_fail 1 "is 20x10 but the output is 64x64" attribute --method saliency "${seg[@]:0:6}" --region "mask:$T/mask.png"
expect_fail 1 "use --mode incremental" occlusion "${seg[@]}" --approximate
expect_fail 1 "is not an item of" attribute --method saliency --model "$D/embed.pt" --data "$T/embed.npy" --index 0 --target similarity:9
expect_fail 1 "needs a dense output" attribute --method saliency --model "$D/embed.pt" --data "$T/embed.npy" --index 0 --region all
expect_fail 2 "--score is for class targets" attribute --method saliency --model "$D/embed.pt" --data "$T/embed.npy" --index 0 --target similarity:1 --score prob
echo "targets: ok"
