#!/usr/bin/env bash
# convscope filters end to end: the picture, raw weights and statistics of fixture layers, and
# exit codes and messages for bad input.
# Usage: filters.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"


"$BIN" filters --help >"$T/help.txt"; grep -q -- "--reshape" "$T/help.txt"

# A 3-channel first layer: RGB tiles; files, manifest and the raw weights.
"$BIN" filters --model "$FIX/resnet_small_scripted.pt" --layer conv1 --out "$T/a" --threads 1 > "$T/a.txt"
grep -q "rgb tiles" "$T/a.txt"
for f in filters.png filters.npy filters.json manifest.json; do test -s "$T/a/$f"; done
# A selection on a deeper layer, normalised over the layer; a Linear layer reshaped.
"$BIN" filters --model "$FIX/resnet_small_scripted.pt" --layer layer2.0.conv1 --filters 2:6 \
    --in-channels 0:3 --normalize layer --mode channels --out "$T/b" --threads 1 > /dev/null
"$BIN" filters --model "$FIX/lenet_scripted.pt" --layer fc1 --reshape 16,5,5 --filters :8 --out "$T/c" \
    --threads 1 --json > "$T/c.json"
"$BIN" filters --model "$FIX/lenet_scripted.pt" --layer conv1 --mode summary --upscale 4 --out "$T/d" --threads 1 > /dev/null

$PY - "$T" "$FIX" <<'EOF'
import json, sys, zipfile, io, numpy as np
t, fix = sys.argv[1], sys.argv[2]

def png_size(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")

# The reference weights: torch.jit.load in Python, the way users export them.
import torch
def weight(model, layer):
    m = torch.jit.load(fix + "/" + model)
    return dict(m.named_parameters())[layer + ".weight"].detach().numpy()

w = np.load(t + "/a/filters.npy")
ref = weight("resnet_small_scripted.pt", "conv1")
assert w.dtype == np.float32 and w.shape == ref.shape == (16, 3, 3, 3), w.shape
assert np.array_equal(w, ref)
j = json.load(open(t + "/a/filters.json"))
assert j["mode"] == "rgb" and j["layer"] == "conv1" and j["filters"] == list(range(16))
assert len(j["stats"]) == 16
for s, f in zip(j["stats"], ref):
    assert abs(s["l2_norm"] - np.sqrt((f.astype(np.float64) ** 2).sum())) < 1e-5
    assert abs(s["mean"] - f.mean()) < 1e-6 and abs(s["std"] - f.std()) < 1e-5
    assert 0 <= s["noise"] <= 1
# 16 tiles of 3x3 upscaled 22x: 4x4 grid with 1-px separators.
assert png_size(t + "/a/filters.png") == (4 * 66 + 3, 4 * 66 + 3), png_size(t + "/a/filters.png")
man = json.load(open(t + "/a/manifest.json"))
files = json.dumps(man)
for f in ["filters.png", "filters.npy", "filters.json"]:
    assert f in files, f

w = np.load(t + "/b/filters.npy")
ref = weight("resnet_small_scripted.pt", "layer2.0.conv1")
assert np.array_equal(w, ref[2:6, 0:3]), w.shape
j = json.load(open(t + "/b/filters.json"))
assert j["filters"] == [2, 3, 4, 5] and j["in_channels"] == [0, 1, 2] and j["normalize"] == "layer"
assert j["mode"] == "channels"

j = json.load(open(t + "/c.json"))
assert j["mode"] == "channels" and j["shape"] == [8, 16, 5, 5] and j["weight_shape"] == [120, 400]
w = np.load(t + "/c/filters.npy")
assert np.array_equal(w, weight("lenet_scripted.pt", "fc1")[:8].reshape(8, 16, 5, 5))

j = json.load(open(t + "/d/filters.json"))
assert j["mode"] == "summary" and j["upscale"] == 4
print("filters outputs ok")
EOF

M=$FIX/lenet_scripted.pt
expect_fail 1 "unknown layer 'conv9'" filters --model "$M" --layer conv9 --out "$T/e"
expect_fail 1 "has no spatial weights (layers with spatial weights: conv1, conv2)" \
    filters --model "$M" --layer fc1 --out "$T/e"
expect_fail 1 "C\*H\*W = 400" filters --model "$M" --layer fc1 --reshape 16,5,4 --out "$T/e"
expect_fail 1 "has no weights" filters --model "$M" --layer relu1 --out "$T/e"
expect_fail 2 "three numbers" filters --model "$M" --layer fc1 --reshape 16,25 --out "$T/e"
expect_fail 2 "out of range" filters --model "$M" --layer conv1 --filters 9 --out "$T/e"
expect_fail 2 "use filter or layer" filters --model "$M" --layer conv1 --normalize global --out "$T/e"
expect_fail 2 "use auto, rgb" filters --model "$M" --layer conv1 --mode colour --out "$T/e"
expect_fail 1 "rgb tiles need 3 input channels" filters --model "$M" --layer conv1 --mode rgb --out "$T/e"
expect_fail 2 "layer" filters --model "$M" --out "$T/e"
test ! -e "$T/e/filters.png"
echo "filters: ok"
