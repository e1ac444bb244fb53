#!/usr/bin/env bash
# A model convscope did not train, on image files: torchvision's ResNet-18 with a 3-class head,
# scripted in Python. With --preprocess imagenet (and with the same metadata written by
# `annotate`, or by Python as the README shows), activations and predictions equal PyTorch
# applying torchvision's Resize(256), CenterCrop(224), ToTensor, Normalize to the same files.
# Also: class names and folder labels matched by name, the warning for unnormalised inputs, the
# README's Python example, and one clear message for each kind of bad preprocessing input.
# Usage: own_model.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

O=$FIX/own
M=$O/resnet18_ft.pt
IMG=$O/images
"$BIN" annotate --help >"$T/help.txt"; grep -q -- "--save" "$T/help.txt"
"$BIN" activations --help >"$T/help.txt"; grep -q -- "--preprocess" "$T/help.txt"

# 1. The preset, the same settings given one by one, and the annotated model give the same values.
"$BIN" activations --model "$M" --preprocess imagenet --data "$IMG" --indices 0:8 --layers layer1,fc \
    --out "$T/a" --threads 2 2>"$T/a.err" >/dev/null
grep -q "preprocessing: resize the shorter side to 256, centre crop 224x224" "$T/a.err"
if grep -q "warning" "$T/a.err"; then echo "unexpected warning"; cat "$T/a.err"; exit 1; fi
"$BIN" activations --model "$M" --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --resize 256 --crop 224x224 \
    --data "$IMG" --indices 0:8 --layers layer1,fc --out "$T/b" --threads 2 2>/dev/null >/dev/null
"$BIN" annotate --model "$M" --preprocess imagenet --classes "$O/classes.txt" --save "$T/m2.pt" >"$T/ann.txt"
grep -q "wrote $T/m2.pt" "$T/ann.txt"
"$BIN" activations --model "$T/m2.pt" --data "$IMG" --indices 0:8 --layers layer1,fc --out "$T/c" --threads 2 \
    2>"$T/c.err" >/dev/null
grep -q "(metadata in the model file)" "$T/c.err"
"$BIN" activations --model "$O/resnet18_ft_meta.pt" --data "$IMG" --indices 0:8 --layers layer1,fc \
    --out "$T/d" --threads 2 2>/dev/null >/dev/null
"$BIN" activations --model "$T/m2.pt" --image "$O/jpeg/a1.jpg" --layers fc --out "$T/j" --threads 2 \
    2>/dev/null >/dev/null

$PY - "$T" "$O" "$T/m2.pt" <<'PY'
import json, sys, numpy as np, torch
t, o, m2 = sys.argv[1:4]
ref = json.load(open(o + "/reference.json"))
layer1, logits = np.load(o + "/layer1.npy"), np.load(o + "/logits.npy")
crop = ref["at_crop_size"]
worst = {}
for run in "abcd":
    a = np.load(f"{t}/{run}/layer1/activations.npy")
    l = np.load(f"{t}/{run}/fc/activations.npy")
    assert a.shape == layer1.shape and l.shape == logits.shape, (run, a.shape, l.shape)
    # Items already 224x224: only ToTensor and Normalize, equal within 1e-5.
    assert np.abs(a[crop] - layer1[crop]).max() <= 1e-5, run
    assert np.abs(l[crop] - logits[crop]).max() <= 1e-5, run
    # Resized items (shrunk, enlarged, gray, RGBA): the resize equals Pillow's, so the same
    # bound holds; measured difference 0.
    worst[run] = float(max(np.abs(a - layer1).max(), np.abs(l - logits).max()))
    assert worst[run] <= 1e-5, (run, worst[run])
    man = json.load(open(f"{t}/{run}/manifest.json"))
    p = man["preprocess"]
    assert p["resize"] == 256 and p["crop"] == [224, 224] and p["mean"] == [0.485, 0.456, 0.406], p
    assert p["std"] == [0.229, 0.224, 0.225] and p["pixel_range"] == 1 and not p["bgr"], p
# JPEG: both sides decode with libjpeg; allow one level of difference in a few pixels.
j = np.load(f"{t}/j/fc/activations.npy")
jr = np.load(o + "/jpeg_logits.npy")
assert np.abs(j - jr).max() <= 1e-3 * np.abs(jr).max(), np.abs(j - jr).max()
# The annotated file is ordinary TorchScript with the metadata PyTorch can read back.
extra = {"convscope.json": ""}
m = torch.jit.load(m2, _extra_files=extra)
meta = json.loads(extra["convscope.json"])
assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225], meta
assert meta["resize"] == 256 and meta["input_shape"] == [3, 224, 224], meta
assert meta["class_names"] == ref["classes"], meta
with torch.no_grad():
    y = m(torch.from_numpy(np.load(o + "/input.npy")))
assert np.abs(y.numpy() - logits).max() <= 1e-5
print("own model: equal to torchvision's transforms, worst difference", max(worst.values()))
PY

# 2. Class names and labels: subfolders matched by name to the model's classes (the model's
# order is dog, cat, bird; the folders sort bird, cat, dog), names in summaries.
"$BIN" describe --model "$T/m2.pt" --data "$IMG" --json >"$T/desc.json" 2>"$T/desc.err"
grep -q "class folders matched to the model's class names" "$T/desc.err"
"$BIN" describe --model "$M" --classes "$O/classes.txt" --preprocess imagenet --data "$IMG" --json \
    >"$T/desc2.json" 2>/dev/null
"$BIN" occlusion --model "$T/m2.pt" --data "$IMG" --indices 0:3 --patch 56 --stride 56 --out "$T/occ" \
    --threads 2 >/dev/null 2>&1
$PY - "$T" "$O" <<'PY'
import json, sys
t, o = sys.argv[1:3]
ref = json.load(open(o + "/reference.json"))
for f in ("desc.json", "desc2.json"):
    d = json.load(open(f"{t}/{f}"))
    assert abs(d["accuracy"] - ref["accuracy"]) < 1e-9, (f, d["accuracy"], ref["accuracy"])
    assert d["class_names"] == ref["classes"], d["class_names"]
d = json.load(open(f"{t}/desc.json"))
assert d["metadata_source"] == "metadata in the model file" and d["metadata"]["resize"] == 256, d
d2 = json.load(open(f"{t}/desc2.json"))
assert d2["classes_source"].startswith("--classes "), d2["classes_source"]
s = json.load(open(f"{t}/occ/summary.json"))
items = s["items"] if isinstance(s, dict) and "items" in s else s
text = json.dumps(s)
for n in range(3):
    name = ref["classes"][ref["predicted"][n]]
    assert f'"predicted_name": "{name}"' in text, (name, text[:400])
print("own model: class names and labels ok")
PY

# A folder whose classes cannot be matched: no accuracy, and the reason (describe and report).
mkdir -p "$T/pets/cat" "$T/pets/dog"
cp "$IMG/cat/b0.png" "$T/pets/cat/"; cp "$IMG/dog/c0.png" "$T/pets/dog/"
"$BIN" describe --model "$M" --preprocess imagenet --data "$T/pets" --json >"$T/pets.json" 2>"$T/pets.err"
grep -q "no accuracy: the folder has 2 class subfolders but the model has 3 outputs" "$T/pets.err"
$PY -c "
import json, sys; d = json.load(open(sys.argv[1]))
assert d['accuracy'] is None and 'class subfolders' in d['no_accuracy'], d" "$T/pets.json"
mkdir -p "$T/pets28/cat" "$T/pets28/dog"
$PY - "$T/pets28" <<'PY'
import sys, numpy as np, zlib, struct
def png(path, img):
    h, w = img.shape
    raw = b''.join(b'\x00' + img[y].tobytes() for y in range(h))
    def chunk(t, d): return struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d))
    open(path, 'wb').write(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0))
        + chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b''))
rng = np.random.RandomState(0)
for c in ("cat", "dog"):
    for i in range(5):
        png(f"{sys.argv[1]}/{c}/{i}.png", rng.randint(0, 256, (28, 28)).astype(np.uint8))
PY
"$BIN" report --model "$FIX/lenet_scripted.pt" --data "$T/pets28" --out "$T/rep" --eval-items 10 --examples 1 \
    --scan-items 10 --vis-channels 0 --map-items 0 --attributions '' --max-layers 1 --filter-layers 1 \
    --json >"$T/rep.json" 2>/dev/null
$PY -c "
import json, sys; d = json.load(open(sys.argv[1]))
assert d['accuracy'] is None, d
assert any(s.startswith('accuracy: the folder has 2 class subfolders') for s in d['skipped']), d['skipped']" "$T/rep.json"

# 3. Inputs that look wrong for the model: a warning that names --preprocess.
"$BIN" describe --model "$M" --data "$IMG" >/dev/null 2>"$T/w1.err"
grep -q "warning: the inputs do not look like the ones 'conv1' was trained on" "$T/w1.err"
grep -q -- "--preprocess imagenet" "$T/w1.err"
"$BIN" describe --model "$T/m2.pt" --data "$IMG" >/dev/null 2>"$T/w2.err"
if grep -q "warning" "$T/w2.err"; then echo "unexpected warning"; cat "$T/w2.err"; exit 1; fi
"$BIN" describe --model "$T/m2.pt" --preprocess none --data "$IMG" >/dev/null 2>"$T/w3.err"
grep -q "warning: the model's metadata asks for normalisation" "$T/w3.err"

# 4. The README's Python example: the built-in model (a short training run here) loaded in
# Python with its metadata's normalisation gives the test accuracy convscope measured.
"$BIN" train --epochs 1 --train-limit 3000 --save "$T/fm.pt" --threads 2 --out "$T/train" >/dev/null 2>&1
$PY - "$T/fm.pt" "$T/train/train.json" "$(dirname "$0")/../../README.md" <<'PY'
import json, re, subprocess, sys
model, train_json, readme = sys.argv[1:4]
text = open(readme).read()
block = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S).group(1)
assert len(block.strip().splitlines()) == 5, block
out = subprocess.run([sys.executable, "-c", "MODEL = %r\n" % model + block], capture_output=True,
                     text=True, check=True).stdout
acc = float(re.search(r"accuracy ([0-9.]+)", out).group(1))
want = json.load(open(train_json))["test_accuracy"]
assert abs(acc - want) < 2e-3, (acc, want)
print("README example: accuracy", acc, "(convscope:", want, ")")
PY

# 5. Bad input: one clear message each.
expect_fail 1 "--mean has 2 values but the model's input has 3 channels" \
    describe --model "$M" --mean 0.5,0.5 --data "$IMG"
expect_fail 1 "--std holds 0" describe --model "$M" --std 0.2,0,0.2 --data "$IMG"
expect_fail 1 "the centre crop 300x300 is larger than item" \
    describe --model "$M" --preprocess imagenet --crop 300x300 --data "$IMG"
printf 'dog\ncat\n' >"$T/two.txt"
expect_fail 1 "there are 2 class names (--classes $T/two.txt) but the model has 3 outputs" \
    describe --model "$M" --preprocess imagenet --classes "$T/two.txt" --data "$IMG"
expect_fail 1 "class file $T/missing.txt does not exist" \
    describe --model "$M" --classes "$T/missing.txt" --data "$IMG"
printf '["dog", "cat",' >"$T/bad.json"
expect_fail 1 "is not valid JSON" describe --model "$M" --classes "$T/bad.json" --data "$IMG"
expect_fail 1 "its convscope.json metadata is not valid JSON" describe --model "$O/badmeta.pt"
expect_fail 2 "unknown --preprocess 'imagenette'" describe --model "$M" --preprocess imagenette
expect_fail 2 "--pixel-range takes 0-1 or 0-255" describe --model "$M" --pixel-range 0-7
expect_fail 2 "--mean takes numbers" describe --model "$M" --mean 0.5,x,0.5
expect_fail 2 "--crop takes HxW" describe --model "$M" --crop 224x
expect_fail 2 "--save" annotate --model "$M"
# A broken metadata file is what annotate repairs.
"$BIN" annotate --model "$O/badmeta.pt" --input-shape 3,16,16 --save "$T/fixed.pt" >/dev/null 2>"$T/fix.err"
grep -q "it is replaced" "$T/fix.err"
"$BIN" describe --model "$T/fixed.pt" >/dev/null
echo "own_model.sh: ok"
