#!/usr/bin/env bash
# convscope embed end to end: given vectors (three Gaussian blobs) and a fixture model's features;
# every output file, its format and the metrics; exit codes and messages for bad input.
# Usage: embed.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"


"$BIN" embed --help >"$T/help.txt"; grep -q -- "--perplexity" "$T/help.txt"

# Inputs: 3 blobs of 50 points in 10-D, their labels, and bad variants.
$PY - "$T" <<'EOF'
import sys, numpy as np
t = sys.argv[1]
rng = np.random.default_rng(0)
x = rng.normal(size=(150, 10)).astype(np.float32)
y = np.repeat(np.arange(3), 50).astype(np.int64)
for b in range(3):
    x[y == b, b] += 15
np.save(t + "/x.npy", x)
np.save(t + "/y.npy", y)
np.save(t + "/y_short.npy", y[:149])
bad = x.copy(); bad[7, 3] = np.nan
np.save(t + "/x_nan.npy", bad)
np.save(t + "/x_one.npy", x[:1])
np.save(t + "/x_small.npy", x[:20])
# A small image set for the fixture model: 40 images 1x28x28 in [0,1] with labels.
np.save(t + "/img.npy", rng.random((40, 1, 28, 28)).astype(np.float32))
np.save(t + "/img_y.npy", (np.arange(40) % 4).astype(np.int64))
EOF

# Given vectors.
"$BIN" embed --features "$T/x.npy" --labels "$T/y.npy" --perplexity 15 --iterations 400 --seed 3 \
    --threads 2 --out "$T/a" 2> "$T/a.err"
for f in embedding.npy embedding.csv scatter.png metrics.json manifest.json projector/tensors.tsv \
    projector/metadata.tsv projector/projector_config.pbtxt; do test -s "$T/a/$f"; done
# The same seed and threads give the same bytes.
"$BIN" embed --features "$T/x.npy" --labels "$T/y.npy" --perplexity 15 --iterations 400 --seed 3 \
    --threads 2 --out "$T/a2" 2> /dev/null
cmp "$T/a/embedding.npy" "$T/a2/embedding.npy"
# FIt-SNE's affinities (exp of the plain distance): another map of the same blobs, recorded.
"$BIN" embed --features "$T/x.npy" --labels "$T/y.npy" --perplexity 15 --iterations 400 --seed 3 \
    --threads 2 --kernel exponential --out "$T/a3" 2> /dev/null
! cmp -s "$T/a/embedding.npy" "$T/a3/embedding.npy"
grep -q '"kernel": "exponential"' "$T/a3/manifest.json"
grep -q '"kernel": "gaussian"' "$T/a/manifest.json"
$PY -c "import json,sys; m=json.load(open(sys.argv[1])); assert m['knn_accuracy'] > 0.95, m" "$T/a3/metrics.json"

# Images through a fixture model: pictures with images, the grid, the sprite.
"$BIN" embed --model "$FIX/lenet_scripted.pt" --data "$T/img.npy" --labels "$T/img_y.npy" --indices 0:36 \
    --perplexity 5 --iterations 300 --threads 2 --grid-cells 5x8 --out "$T/b" 2> "$T/b.err"
for f in embedding.npy embedding.csv features.npy scatter.png thumbnails.png grid.png metrics.json \
    manifest.json projector/sprite.png projector/tensors.tsv; do test -s "$T/b/$f"; done

$PY - "$T" <<'EOF'
import csv, json, sys, numpy as np
t = sys.argv[1]

def png_size(path):
    b = open(path, "rb").read()
    assert b[:8] == b"\x89PNG\r\n\x1a\n", path
    return int.from_bytes(b[16:20], "big"), int.from_bytes(b[20:24], "big")

# Given vectors.
e = np.load(t + "/a/embedding.npy")
assert e.dtype == np.float32 and e.shape == (150, 2) and np.isfinite(e).all(), e.shape
rows = list(csv.reader(open(t + "/a/embedding.csv")))
assert rows[0] == ["index", "label", "x", "y"], rows[0]
assert len(rows) == 151
assert [int(r[0]) for r in rows[1:]] == list(range(150))
assert [int(r[1]) for r in rows[1:]] == [i // 50 for i in range(150)]
assert np.allclose([[float(r[2]), float(r[3])] for r in rows[1:]], e)
m = json.load(open(t + "/a/metrics.json"))
assert m["knn_accuracy"] > 0.95, m
assert 0 < m["neighbour_preservation"] <= 1 and m["kl_divergence"] > 0, m
assert m["iterations"] == 400 and json.load(open(t + "/a/manifest.json"))["options"]["iterations"] == 400, m
for stage in ["features", "neighbours", "affinities", "optimisation"]:
    assert m["seconds"][stage] >= 0, stage
# Brute-force check of the accuracy figure: leave-one-out 10-NN majority vote in 2-D.
y = np.repeat(np.arange(3), 50)
d = ((e[:, None, :].astype(np.float64) - e[None, :, :]) ** 2).sum(-1)
np.fill_diagonal(d, np.inf)
nn = np.argsort(d, axis=1, kind="stable")[:, :10]
pred = np.array([np.bincount(y[r], minlength=3).argmax() for r in nn])
assert abs((pred == y).mean() - m["knn_accuracy"]) < 1e-9, ((pred == y).mean(), m["knn_accuracy"])
tsv = np.loadtxt(t + "/a/projector/tensors.tsv", delimiter="\t")
assert tsv.shape == (150, 10) and np.allclose(tsv, np.load(t + "/x.npy"), atol=1e-4)
meta = open(t + "/a/projector/metadata.tsv").read().splitlines()
assert meta[0] == "index\tlabel\tclass" and len(meta) == 151 and meta[51] == "50\t1\t1", meta[51]
cfg = open(t + "/a/projector/projector_config.pbtxt").read()
assert "tensor_path: \"tensors.tsv\"" in cfg and "metadata_path: \"metadata.tsv\"" in cfg
man = json.load(open(t + "/a/manifest.json"))
assert "embedding.csv" in json.dumps(man) and "metrics.json" in json.dumps(man)

# Fixture model.
e = np.load(t + "/b/embedding.npy")
f = np.load(t + "/b/features.npy")
assert e.shape == (36, 2) and f.shape[0] == 36 and f.dtype == np.float32
rows = list(csv.reader(open(t + "/b/embedding.csv")))
assert [int(r[1]) for r in rows[1:]] == [i % 4 for i in range(36)]
m = json.load(open(t + "/b/metrics.json"))
assert m["grid"] == [5, 8] and m["n"] == 36 and m["dims"] == f.shape[1], m
assert png_size(t + "/b/grid.png") == (8 * 28, 5 * 28), png_size(t + "/b/grid.png")
assert png_size(t + "/b/projector/sprite.png") == (6 * 28, 6 * 28), png_size(t + "/b/projector/sprite.png")
cfg = open(t + "/b/projector/projector_config.pbtxt").read()
assert "image_path: \"sprite.png\"" in cfg and cfg.count("single_image_dim: 28") == 2, cfg
w, h = png_size(t + "/b/scatter.png")
assert w > 1600 and h >= 1600
EOF

# Bad input: clear messages, exit 1 (2 for a bad option value).
expect_fail 1 "150 rows but there are 149 labels" embed --features "$T/x.npy" --labels "$T/y_short.npy" \
    --out "$T/bad1"
expect_fail 1 "row 7, column 3 is NaN" embed --features "$T/x_nan.npy" --out "$T/bad2"
expect_fail 1 "at least 2 points" embed --features "$T/x_one.npy" --out "$T/bad3"
expect_fail 2 "too large for 20 points" embed --features "$T/x_small.npy" --out "$T/bad4"
expect_fail 2 "do not apply" embed --features "$T/x.npy" --model "$FIX/lenet_scripted.pt" --out "$T/bad5"
expect_fail 2 "--kernel" embed --features "$T/x.npy" --kernel laplace --out "$T/bad9"
expect_fail 2 "--grid-cells takes ROWSxCOLS" embed --features "$T/x.npy" --grid-cells 5 --out "$T/bad6"
expect_fail 1 "must be a 2-D float array" embed --features "$T/y.npy" --out "$T/bad7"
# A features file cut short (its header promises more rows than it holds): refused before mapping.
head -c -100 "$T/x.npy" > "$T/x_cut.npy"
expect_fail 1 "the file is truncated" embed --features "$T/x_cut.npy" --out "$T/bad8"
test ! -e "$T/bad8/embedding.npy"
test ! -e "$T/bad1/embedding.npy"
test ! -e "$T/bad4/manifest.json"
echo "embed e2e ok"
