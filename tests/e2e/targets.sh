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
"$BIN" occlusion --model "$D/embed.pt" --data "$T/embed.npy" --indices 0:2 --target similarity:2 --patch 4 \
    --stride 4 --out "$T/occ_sim" > /dev/null
[ -s "$T/occ_sim/similarity/0.png" ] && [ -s "$T/occ_sim/similarity/1.png" ] || { echo "no similarity pictures"; exit 1; }
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
# The item and the reference side by side (16 px shown 10x, 8 px apart), each with its map.
from PIL import Image
for i in range(3):
    w, h = Image.open(t + "/sim/similarity/%d.png" % i).size
    assert (w, h) == (2 * 160 + 8, 160), (w, h)
PY

# Feature visualisation with a similarity target (the image most like item 2) and with a
# class's probability over a box of the segmentation output; the reported objective is
# recomputed from the saved image with PyTorch.
"$BIN" feature-vis --model "$D/embed.pt" --input-shape 3,16,16 --data "$T/embed.npy" --similarity 2 \
    --steps 24 --out "$T/fv_sim" > /dev/null
"$BIN" feature-vis --model "$D/lraspp.pt" --input-shape 3,64,64 --class 1 --score prob --region box:8,16,40,48 \
    --steps 3 --out "$T/fv_box" > /dev/null
$PY - "$T" "$D" <<'PY'
import json, sys
import numpy as np, torch
t, d = sys.argv[1], sys.argv[2]
s = json.load(open(t + "/fv_sim/feature_vis.json"))
assert s["objective"] == "similarity" and s["similarity"] == "2", s
m = torch.jit.load(d + "/embed.pt")
x = torch.from_numpy(np.load(t + "/fv_sim/images.npy"))
ref = torch.from_numpy(np.load(d + "/embed_input.npy")[2:3])
with torch.no_grad():
    cos = float(torch.nn.functional.cosine_similarity(m(x), m(ref))[0])
u = s["units"][0]
assert abs(u["activation"] - cos) < 1e-4 and u["activation"] > u["initial_activation"], (u, cos)
assert abs(u["dataset_best"] - 1) < 1e-4 and u["dataset_best_index"] == 2, u
s = json.load(open(t + "/fv_box/feature_vis.json"))
assert s["score"] == "prob" and s["region"] == "box:8,16,40,48", s
m = torch.jit.load(d + "/lraspp.pt")
x = torch.from_numpy(np.load(t + "/fv_box/images.npy"))
with torch.no_grad():
    p = float(torch.softmax(m(x)["out"], 1)[0, 1, 16:48, 8:40].mean())
assert abs(s["units"][0]["activation"] - p) < 1e-4, (s["units"][0], p)
PY
expect_fail 2 "which feature visualisation has not" feature-vis --model "$D/lraspp.pt" --input-shape 3,64,64 --class 1 --region pred
expect_fail 2 "give --data, or an image file" feature-vis --model "$D/embed.pt" --input-shape 3,16,16 --similarity 2
expect_fail 2 "are for class objectives" feature-vis --model "$D/embed.pt" --input-shape 3,16,16 --layer conv1 --score prob

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
