#!/usr/bin/env bash
# convscope activations end to end: pictures, exact values (equal to PyTorch's forward hooks on
# the same fixture), statistics, manifest, and exit codes and messages for bad input.
# Usage: activations.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"


"$BIN" activations --help >"$T/help.txt"; grep -q -- "--sort" "$T/help.txt"

# The fixture's own inputs (float32 N,C,H,W, used as they are): all layers of a small ResNet.
R=$FIX/resnet_small_scripted
"$BIN" activations --model "$R.pt" --data "$R/input.npy" --indices 0:2 --sort mean --out "$T/a" \
    --threads 2 > "$T/a.txt"
grep -q "2 input(s), 28 layer(s)" "$T/a.txt"
# Two layers of LeNet on a PNG image, gray colormap, tile scale.
$PY -c "
import numpy as np, zlib, struct, sys
h = w = 28
img = (np.add.outer(np.arange(h), np.arange(w)) * 4 % 256).astype(np.uint8)
raw = b''.join(b'\x00' + img[y].tobytes() for y in range(h))
def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
open(sys.argv[1], 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
    + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
" "$T/img.png"
"$BIN" activations --model "$FIX/lenet_scripted.pt" --image "$T/img.png" --layers conv1,fc1 \
    --colormap gray --scale tile --out "$T/b" --threads 1 --json > "$T/b.json"

$PY - "$T" "$FIX" <<'EOF'
import json, os, sys, numpy as np
t, fix = sys.argv[1], sys.argv[2]

def png_size(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")

ref_dir = fix + "/resnet_small_scripted/act"
layers = json.load(open(fix + "/resnet_small_scripted/layers.json"))["layers"]
assert len(layers) == 28
for l in layers:
    name = l["name"]
    d = t + "/a/" + name
    v = np.load(d + "/activations.npy")
    ref = np.load(ref_dir + "/" + name + ".npy")
    assert v.dtype == np.float32 and v.shape == ref.shape, (name, v.shape, ref.shape)
    err = np.abs(v - ref).max() / max(np.abs(ref).max(), 1e-2)
    assert err < 1e-4, (name, err)
    s = json.load(open(d + "/stats.json"))
    assert s["indices"] == [0, 1] and s["shape"] == list(ref.shape[1:])
    flat = v.reshape(v.shape[0], v.shape[1], -1)
    for n in range(2):
        per = s["inputs"][n]
        assert np.allclose(per["mean"], flat[n].mean(1), atol=1e-5), name
        assert np.allclose(per["max"], flat[n].max(1), atol=1e-6), name
        assert np.allclose(per["active"], (flat[n] > 0).mean(1), atol=1e-6), name
        means = np.array(per["mean"])
        assert all(means[per["order"][k]] >= means[per["order"][k + 1]] for k in range(len(means) - 1)), name
    pooled = [c["mean"] for c in s["channels"]]
    assert np.allclose(pooled, flat.mean((0, 2)), atol=1e-5), name
    for n in range(2):
        w, h = png_size(d + "/%d.png" % n)
        assert w > 0 and h > 0
        assert os.path.exists(d + "/%d_overlay.png" % n) == (len(ref.shape) == 4 and ref.shape[2] * ref.shape[3] > 1), name
assert os.path.exists(t + "/a/inputs/1.png")
man = json.dumps(json.load(open(t + "/a/manifest.json")))
for f in ["conv1/0.png", "conv1/0_overlay.png", "layer1.0.bn2/activations.npy", "fc/stats.json"]:
    assert f in man, f

j = json.load(open(t + "/b.json"))
assert [l["layer"] for l in j["layers"]] == ["conv1", "fc1"] and j["indices"] == [0]
v = np.load(t + "/b/conv1/activations.npy")
assert v.shape == (1, 6, 28, 28)
assert np.load(t + "/b/fc1/activations.npy").shape == (1, 120)
assert os.path.exists(t + "/b/conv1/0_overlay.png") and not os.path.exists(t + "/b/fc1/0_overlay.png")
print("activations outputs ok")
EOF

M=$FIX/lenet_scripted.pt
D=$FIX/lenet_scripted/input.npy
expect_fail 1 "out of range" activations --model "$M" --data "$D" --index 5 --out "$T/e"
expect_fail 1 "unknown layer 'conv7'" activations --model "$M" --data "$D" --index 0 --layers conv1,conv7 --out "$T/e"
expect_fail 2 "choose the inputs" activations --model "$M" --data "$D" --out "$T/e"
expect_fail 2 "use layer" activations --model "$M" --data "$D" --index 0 --scale global --out "$T/e"
expect_fail 2 "use index or mean" activations --model "$M" --data "$D" --index 0 --sort max --out "$T/e"
# A PNG that declares 30000x30000 pixels in under 100 bytes: refused from its header.
make_png_bomb "$T/bomb.png"
expect_fail 1 "declares 30000x30000 pixels, more than the limit of 50000000" activations --model "$M" --image "$T/bomb.png" --out "$T/e"
expect_fail 1 "raise the limit with --max-image-pixels" activations --model "$M" --image "$T/bomb.png" --max-image-pixels 1000 --out "$T/e"
expect_fail 2 "at least 1 pixel" activations --model "$M" --image "$T/bomb.png" --max-image-pixels 0 --out "$T/e"
[ ! -e "$T/e" ] || { echo "a refused image left an output folder"; exit 1; }
# NaN in the data: refused with its place by default; --allow-nonfinite follows it through the
# model and the pictures paint it magenta (kNonFiniteColour).
$PY -c 'import numpy as np, sys; a = np.random.RandomState(0).rand(2, 1, 28, 28).astype(np.float32); a[1, 0, 3, 5] = np.nan; np.save(sys.argv[1], a)' "$T/nan.npy"
expect_fail 1 "item 1 holds NaN or Inf values (channel 0, row 3, column 5), the first of them NaN" activations --model "$M" --data "$T/nan.npy" --indices 0:2 --out "$T/e"
expect_fail 1 "allow-nonfinite" occlusion --model "$M" --data "$T/nan.npy" --indices 0:2 --out "$T/e"
[ ! -e "$T/e" ] || { echo "refused data left an output folder"; exit 1; }
"$BIN" activations --model "$M" --data "$T/nan.npy" --indices 0:2 --layers conv1 --allow-nonfinite --out "$T/nan" >/dev/null 2>&1
$PY - "$T/nan/conv1" <<'PYEOF'
import sys
from torchvision.io import read_image
def magenta(path):
    im = read_image(path)
    return int(((im[0] == 255) & (im[1] == 0) & (im[2] == 255)).sum())
clean, with_nan = magenta(sys.argv[1] + "/0.png"), magenta(sys.argv[1] + "/1.png")
assert clean == 0 and with_nan > 0, (clean, with_nan)
# The input picture marks its NaN pixel (row 3, column 5) and nothing else.
shown = read_image(sys.argv[1] + "/../inputs/1.png")
bad = (shown[0] == 255) & (shown[1] == 0) & (shown[2] == 255)
assert shown.shape[0] == 3 and bad.sum() > 0 and magenta(sys.argv[1] + "/../inputs/0.png") == 0, shown.shape
s = shown.shape[1] // 28
assert bad[3 * s, 5 * s] and int(bad.sum()) == s * s, (int(bad.sum()), s)
PYEOF
# Paths that are not UTF-8 are written into the manifest (invalid bytes as U+FFFD), not refused.
"$BIN" activations --model "$M" --data "$D" --index 0 --layers conv1 --out "$T/out"$'\xff' >/dev/null 2>&1
$PY -c 'import json, sys; m = json.load(open(sys.argv[1], encoding="utf-8")); assert "out\ufffd" in json.dumps(m, ensure_ascii=False), m' "$T/out"$'\xff'/manifest.json
expect_fail 2 "colormap" activations --model "$M" --data "$D" --index 0 --colormap rainbow --out "$T/e"
expect_fail 1 "does not exist" activations --model "$T/none.pt" --data "$D" --index 0 --out "$T/e"
test ! -e "$T/e/manifest.json"
echo "activations: ok"
