#!/usr/bin/env bash
# A map made by `convscope embed` shown by `serve --map` and `report --map`: the points, items and
# labels equal embed's files, the report's thumbnail sheets hold the map's items (and only them),
# and a folder that does not fit (other data, missing or truncated files, both --map and
# --map-items) fails with one message before any work and leaves no report.
# Usage: map_file.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

model=(--model "$FIX/lenet_scripted.pt" --input-shape 1,28,28 --threads 2)
"$BIN" embed "${model[@]}" --data fashion-mnist:test --indices 100:400 --iterations 60 --out "$T/emb" 2>/dev/null

# The explorer shows embed's map as it is.
start_server "$T/serve.out" "$T/serve.err" "${model[@]}" --data fashion-mnist:test --port 0 --cache-dir "$T/cache" \
    --map "$T/emb"
$PY - "$URL" "$T/emb" <<'PYEOF'
import csv, json, struct, sys, urllib.request
import numpy as np
url, emb = sys.argv[1], sys.argv[2]
get = lambda p: urllib.request.urlopen(url + p, timeout=60)
xy = np.load(emb + "/embedding.npy")
rows = list(csv.DictReader(open(emb + "/embedding.csv")))
m = json.load(get("/api/map"))
assert m["n"] == 300 and m["source"] == "file" and m["layer"] == "fc2", {k: m[k] for k in ("n", "source", "layer")}
assert m["items"] == [int(r["index"]) for r in rows] == list(range(100, 400))
assert m["labels"] == [int(r["label"]) for r in rows]
assert np.array_equal(np.array(m["x"], np.float32), xy[:, 0]) and np.array_equal(np.array(m["y"], np.float32), xy[:, 1])
raw = get("/api/map/points").read()
assert np.array_equal(np.frombuffer(raw[:2400], "<f4").reshape(2, 300).T, xy)
assert list(np.frombuffer(raw[3600:], "<i4")) == m["items"]
assert json.load(get("/api/dataset"))["map_items"] == 300
# The map job has nothing to compute.
req = urllib.request.Request(url + "/api/jobs", data=b'{"kind": "map"}', headers={"Content-Type": "application/json"})
st = json.load(urllib.request.urlopen(req))
import time
t0 = time.time()
while st["state"] in ("queued", "running"):
    assert time.time() - t0 < 10, st
    time.sleep(0.05)
    st = json.load(get("/api/jobs/" + st["id"]))
assert st["state"] == "done" and st["result"]["n"] == 300, st
PYEOF

# The report: the same points, thumbnails of exactly the map's items on sheet 0.
"$BIN" report "${model[@]}" --data fashion-mnist:test --out "$T/rep" --map "$T/emb" --eval-items 20 --examples 1 \
    --scan-items 10 --trust-items 0 --patch-channels 1 --vis-channels 0 --attributions '' >/dev/null
$PY - "$T/rep" "$T/emb" <<'PYEOF'
import base64, json, re, sys
import numpy as np
from PIL import Image
rep, emb = sys.argv[1], sys.argv[2]
html = open(rep + "/index.html").read()
R = json.loads(re.search(r"window\.REPORT = (\{.*?\});\n", html, re.S).group(1).replace("<\\/", "</"))
mp = R["map"]
assert mp["n"] == 300 and mp["source"] == "file" and mp["sprite"]["sheets"] == [0], mp["sprite"]
raw = base64.b64decode(mp["points"])
assert np.array_equal(np.frombuffer(raw[:2400], "<f4").reshape(2, 300).T, np.load(emb + "/embedding.npy"))
assert list(np.frombuffer(raw[3600:], "<i4")) == list(range(100, 400))
sheet = np.asarray(Image.open(rep + "/" + mp["sprite"]["folder"] + "/0.png").convert("L"))
t, cols = mp["sprite"]["thumb"], mp["sprite"]["cols"]
cell = lambda i: sheet[(i // cols) * t:(i // cols + 1) * t, (i % cols) * t:(i % cols + 1) * t]
assert all((cell(i) == 255).all() for i in (0, 50, 99, 400, 1023)), "items not on the map are blank"
assert all((cell(i) < 255).any() for i in (100, 250, 399)), "items on the map have their picture"
PYEOF

# Folders that do not fit: one message each, nothing written.
expect_fail 1 "was made from other data (fashion-mnist:test)" serve "${model[@]}" --data fashion-mnist:train --port 0 \
    --map "$T/emb"
expect_fail 1 "map folder '$T/nowhere' does not exist" serve "${model[@]}" --data fashion-mnist:test --port 0 --map "$T/nowhere"
mkdir -p "$T/bad"
cp "$T/emb/embedding.npy" "$T/emb/manifest.json" "$T/bad/"
expect_fail 1 "has no embedding.csv" serve "${model[@]}" --data fashion-mnist:test --port 0 --map "$T/bad"
head -n 100 "$T/emb/embedding.csv" >"$T/bad/embedding.csv"
expect_fail 1 "has 99 rows but embedding.npy has 300 points" report "${model[@]}" --data fashion-mnist:test \
    --out "$T/badrep" --map "$T/bad"
[ ! -e "$T/badrep/index.html" ] || { echo "a report was written for a map that does not fit"; exit 1; }
expect_fail 2 "exclude each other" report "${model[@]}" --data fashion-mnist:test --out "$T/badrep" --map "$T/emb" \
    --map-items 50
echo "map_file.sh: ok"
