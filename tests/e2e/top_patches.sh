#!/usr/bin/env bash
# convscope top-patches end to end: outputs and their contents, shards merged into the bytes of
# one scan, checkpoints, and exit codes and messages for bad input.
# Usage: top_patches.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

# 40 random 1x28x28 images with labels; images 32..39 repeat 0..7 (ties).
$PY - "$T" <<'EOF'
import sys, numpy as np
t = sys.argv[1]
r = np.random.default_rng(0)
x = r.random((40, 1, 28, 28), dtype=np.float32)
x[32:] = x[:8]
np.save(t + "/x.npy", x)
np.save(t + "/y.npy", r.integers(0, 10, 40).astype(np.int64))
EOF

M=$FIX/lenet_scripted.pt
base=(--model "$M" --data "$T/x.npy" --labels "$T/y.npy" --batch-size 8 --threads 1)
common=("${base[@]}" --k 4)


"$BIN" top-patches --help >/dev/null

# One scan.
"$BIN" top-patches "${common[@]}" --out "$T/one"
for f in top_patches.json manifest.json montage_conv1.png montage_conv2.png \
         channels/conv1/channel_0.png channels/conv1/channel_5.png channels/conv2/channel_15.png; do
    test -s "$T/one/$f" || { echo "missing $f"; exit 1; }
done
$PY - "$T/one" <<'EOF'
import json, os, struct, sys
d = sys.argv[1]
j = json.load(open(d + "/top_patches.json"))
assert [l["name"] for l in j["layers"]] == ["conv1", "conv2"], j["layers"]
assert j["images_scanned"] == 40 and j["shard"] == {"index": 0, "count": 1}
for layer in j["layers"]:
    c, h, w = layer["output_shape"]
    assert len(layer["channels"]) == c
    for ch in layer["channels"]:
        top, bottom = ch["top"], ch["bottom"]
        assert len(top) == 4 and len(bottom) == 4
        vals = [e["value"] for e in top]
        assert vals == sorted(vals, reverse=True), vals
        assert [e["value"] for e in bottom] == sorted(e["value"] for e in bottom)
        assert top[0]["value"] >= bottom[-1]["value"]
        for e in top + bottom:
            y0, x0, y1, x1 = e["box"]
            assert 0 <= y0 < y1 <= 28 and 0 <= x0 < x1 <= 28, e
            assert 0 <= e["y"] < h and 0 <= e["x"] < w and 0 <= e["image"] < 40
            assert 0 <= e["label"] < 10
        assert sum(x["count"] for x in ch["dominant_labels"]) == 4
        hist = ch["histogram"]
        assert sum(hist["counts"]) == 40 and len(hist["edges"]) == len(hist["counts"]) + 1
        assert hist["edges"][0] <= hist["min"] <= hist["max"] < hist["edges"][-1]
        assert 0 <= ch["dead_fraction"] <= 1
# conv1 of LeNet: 5x5 receptive field, padding 2.
rf = j["layers"][0]["receptive_field"]
assert rf == {"kind": "exact", "size": [5, 5], "stride": [1, 1], "padding": [2, 2]}, rf
m = json.load(open(d + "/manifest.json"))
files = m["files"]
names = [f["path"] if isinstance(f, dict) else f[0] for f in files] if isinstance(files, list) else list(files)
assert "top_patches.json" in names and "montage_conv2.png" in names, names
assert len([n for n in names if n.startswith("channels/")]) == 6 + 16, names
for n in names:
    assert os.path.exists(os.path.join(d, n)), n
# Montage: PNG with one row per channel (16 rows of 48 px crops for conv2).
with open(d + "/montage_conv2.png", "rb") as f:
    head = f.read(24)
assert head[:8] == b"\x89PNG\r\n\x1a\n"
width, height = struct.unpack(">II", head[16:24])
assert height >= 16 * 48 and width >= 4 * 48, (width, height)
EOF

# Three shards merged give the same top_patches.json bytes.
for i in 0 1 2; do
    "$BIN" top-patches "${common[@]}" --shard "$i/3" --out "$T/s$i"
done
"$BIN" top-patches --merge "$T/s2/top_patches.json" "$T/s0/top_patches.json" "$T/s1/top_patches.json" \
    --out "$T/merged"
cmp "$T/one/top_patches.json" "$T/merged/top_patches.json"
test -s "$T/merged/montage_conv1.png"
test -s "$T/merged/manifest.json"

# A checkpointed scan gives the same result, and running it again resumes the finished scan.
"$BIN" top-patches "${common[@]}" --checkpoint "$T/ck.json" --checkpoint-every 1 --out "$T/ck1"
test -s "$T/ck.json"
cmp "$T/one/top_patches.json" "$T/ck1/top_patches.json"
"$BIN" top-patches "${common[@]}" --checkpoint "$T/ck.json" --out "$T/ck2"
cmp "$T/one/top_patches.json" "$T/ck2/top_patches.json"

# Bad input.
expect_fail 2 "k must be at least 1" top-patches "${base[@]}" --k 0 --out "$T/bad"
expect_fail 1 "larger than the 40 selected images" top-patches "${base[@]}" --k 41 --out "$T/bad"
expect_fail 1 "larger than the 3 selected images" top-patches "${common[@]}" --indices 0:3 --out "$T/bad"
expect_fail 1 "unknown layer 'conv9'" top-patches "${common[@]}" --layers conv1,conv9 --out "$T/bad"
expect_fail 2 "--shard takes i/n" top-patches "${common[@]}" --shard 3/3 --out "$T/bad"
expect_fail 2 "--shard takes i/n" top-patches "${common[@]}" --shard half --out "$T/bad"
expect_fail 1 "another model" top-patches --model "$FIX/lenet_traced.pt" --data "$T/x.npy" \
    --labels "$T/y.npy" --k 4 --batch-size 8 --checkpoint "$T/ck.json" --out "$T/bad"
expect_fail 1 "another k" top-patches "${base[@]}" --k 3 --checkpoint "$T/ck.json" --out "$T/bad"
expect_fail 1 "shard 1/3 is missing" top-patches --merge "$T/s0/top_patches.json" "$T/s2/top_patches.json" \
    --out "$T/bad"
expect_fail 1 "given twice" top-patches --merge "$T/s0/top_patches.json" "$T/s1/top_patches.json" \
    "$T/s2/top_patches.json" "$T/s1/top_patches.json" --out "$T/bad"
expect_fail 1 "not a top_patches.json" top-patches --merge "$T/one/manifest.json" --out "$T/bad"
"$BIN" top-patches "${base[@]}" --k 3 --shard 1/2 --out "$T/k3"
expect_fail 1 "another k" top-patches --merge "$T/s0/top_patches.json" "$T/k3/top_patches.json" --out "$T/bad"
test ! -e "$T/bad/top_patches.json"
echo "top_patches e2e: ok"
