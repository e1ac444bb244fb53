#!/usr/bin/env bash
# End-to-end test of `convscope attribute`: every method on a fixture model, the output files,
# the completeness gap of integrated gradients, and the exit codes and messages for bad input.
# Usage: attribute.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

lenet="$FIX/lenet_scripted.pt"
data="$FIX/lenet_scripted/input.npy"   # 2 images, float32 [2,1,28,28]
$PY -c "import numpy as np; np.save('$T/labels.npy', np.array([4, 7], dtype=np.int64))"

# Every method runs and writes its files.
for method in saliency guided-backprop deconvnet smoothgrad integrated-gradients grad-cam grad-cam++ rise; do
    out="$T/$method"
    "$BIN" attribute --method "$method" --model "$lenet" --data "$data" --indices 0:2 --target 3 \
        --samples 4 --steps 32 --masks 300 --threads 1 --out "$out" > "$T/$method.log"
    for f in attributions.npy heat.npy summary.json manifest.json overview.png heatmaps/0.png heatmaps/1.png \
             overlays/0.png overlays/1.png; do
        [ -s "$out/$f" ] || { echo "missing $out/$f"; exit 1; }
    done
    $PY - "$out" "$method" <<'PY'
import json, sys
import numpy as np
out, method = sys.argv[1], sys.argv[2]
a = np.load(out + "/attributions.npy")
heat = np.load(out + "/heat.npy")
cam = method.startswith("grad-cam")
if cam:
    assert a.shape == (2, 10, 10), a.shape      # conv2, the last conv layer of LeNet
    assert (a >= 0).all()
elif method == "rise":
    assert a.shape == (2, 28, 28) and np.array_equal(a, heat), a.shape
else:
    assert a.shape == (2, 1, 28, 28), a.shape
    assert np.allclose(heat, np.abs(a).max(axis=1))
assert heat.shape == (2, 28, 28) and a.dtype == np.float32
assert np.isfinite(a).all() and np.abs(a).max() > 0
s = json.load(open(out + "/summary.json"))
assert s["method"] == method and len(s["items"]) == 2
assert all(it["target"] == 3 for it in s["items"])
if cam:
    assert s["layer"] == "conv2"
if method == "integrated-gradients":
    for it in s["items"]:
        delta = it["score"] - it["baseline_score"]
        assert abs(it["attribution_sum"] - a[[x["index"] for x in s["items"]].index(it["index"])].sum()) < 1e-4 * max(1, abs(delta))
        assert abs(it["completeness_gap"] - (it["attribution_sum"] - delta)) < 1e-5 * max(1, abs(delta))
    assert s["completeness"]["max_relative_gap"] < 0.05, s["completeness"]
import os
listed = [f["path"] for f in json.load(open(out + "/manifest.json"))["files"]]
for f in ["attributions.npy", "heat.npy", "summary.json", "overview.png", "heatmaps/0.png", "overlays/1.png"]:
    assert f in listed, (f, listed)
assert all(os.path.exists(os.path.join(out, f)) for f in listed)
PY
done

# Labels as targets; the same seed gives the same SmoothGrad bytes.
"$BIN" attribute --method saliency --model "$lenet" --data "$data" --labels "$T/labels.npy" --indices 0:2 \
    --target label --out "$T/label" --json > "$T/label.json"
$PY -c "import json; s = json.load(open('$T/label.json')); assert [i['target'] for i in s['items']] == [4, 7], s"
for run in a b; do
    "$BIN" attribute --method smoothgrad --model "$lenet" --data "$data" --index 1 --samples 5 --seed 9 \
        --threads 1 --out "$T/sg-$run" > /dev/null
done
cmp "$T/sg-a/attributions.npy" "$T/sg-b/attributions.npy"

# A Grad-CAM layer picked by name on a ResNet with in-place ReLUs.
"$BIN" attribute --method grad-cam --model "$FIX/resnet_small_scripted.pt" \
    --data "$FIX/resnet_small_scripted/input.npy" --indices 0:2 --layer layer1 --out "$T/resnet" > /dev/null
$PY -c "import numpy as np; a = np.load('$T/resnet/attributions.npy'); assert a.ndim == 3 and a.shape[0] == 2, a.shape"

# Bad input: exit code and message.
common=(--model "$lenet" --data "$data" --out "$T/bad")
expect_fail 1 "layer 'fc1' is not spatial" attribute --method grad-cam --layer fc1 "${common[@]}"
expect_fail 1 "target class 10 is out of range: the model has 10 classes" attribute --method saliency --target 10 "${common[@]}"
expect_fail 1 "needs labelled data" attribute --method saliency --target label "${common[@]}"
expect_fail 2 "--steps must be at least 1" attribute --method integrated-gradients --steps 0 "${common[@]}"
expect_fail 2 "--samples must be at least 1" attribute --method smoothgrad --samples 0 "${common[@]}"
expect_fail 2 "unknown attribution method 'sailency'" attribute --method sailency "${common[@]}"
expect_fail 2 "bad baseline 'black'" attribute --method integrated-gradients --baseline black "${common[@]}"
expect_fail 2 "bad target" attribute --method saliency --target best "${common[@]}"
[ ! -e "$T/bad/summary.json" ] || { echo "a failed run left a summary"; exit 1; }
"$BIN" attribute --help >"$T/help.txt"; grep -q -- "--baseline" "$T/help.txt"
echo "attribute e2e: ok"
