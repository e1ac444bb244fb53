#!/usr/bin/env bash
# convscope report end to end: index.html with its data inline and every picture beside it, the
# manifest lists every file, nothing refers to the network; exit codes and messages for bad input.
# Usage: report.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

M=$FIX/lenet_scripted.pt
base=(--model "$M" --input-shape 1,28,28 --data fashion-mnist:test --threads 2 --eval-items 400
      --scan-items 200 --patch-channels 3 --vis-steps 8 --map-iterations 100)
small=("${base[@]}" --examples 2 --vis-channels 2 --map-items 200)


"$BIN" report --help >/dev/null
"$BIN" report "${small[@]}" --out "$T/r" --json >"$T/summary.json"

$PY - "$T/r" "$T/summary.json" <<'EOF'
import json, os, re, sys
d, summary = sys.argv[1], json.load(open(sys.argv[2]))
html = open(os.path.join(d, "index.html"), encoding="utf-8").read()
# The data is inline; pull it out and check it.
m = re.search(r"window\.REPORT = (\{.*?\});\n", html, re.S)
assert m, "no inline data"
R = json.loads(m.group(1).replace("<\\/", "</"))
assert R["accuracy"] == summary["accuracy"] and R["evaluated"] == 400
assert [l["name"] for l in R["layers"]][:3] == ["conv1", "relu1", "pool1"]
assert R["chosen_layers"] == ["conv1", "conv2"], R["chosen_layers"]
assert len(R["examples"]) == len(summary["correct"]) + len(summary["wrong"]) >= 2
for e in R["examples"]:
    assert e["correct"] == (e["label"] == e["predicted"])
    assert [a["method"] for a in e["attributions"]] == ["saliency", "guided-backprop", "integrated-gradients", "grad-cam"]
    assert "confounders" in e["occlusion"]
assert [p["layer"] for p in R["patches"]] == ["conv1", "conv2"] and len(R["patches"][0]["channels"]) == 3
assert [f["layer"] for f in R["feature_vis"]] == ["conv1", "conv2"]
assert R["map"]["n"] == 200 and len(R["map"]["x"]) == 200 and R["map"]["layer"] == "fc2"
assert R["map"]["sprite"]["sheets"] == [0] and os.path.getsize(os.path.join(d, R["map"]["sprite"]["folder"], "0.png")) > 0
# Every picture the page names exists beside it; no URL points anywhere else.
srcs = set(re.findall(r'"(img/[^"]+\.png)"', m.group(1)))
assert len(srcs) > 20, len(srcs)
for s in srcs:
    p = os.path.join(d, s)
    assert os.path.getsize(p) > 0 and open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n", s
assert not re.search(r"(src|href)=\"(https?:)?//", html), "a network URL in the page"
assert "fetch(" not in html, "the page must not fetch"
# The manifest lists every file written.
man = json.load(open(os.path.join(d, "manifest.json")))
listed = {f["path"] if isinstance(f, dict) else f for f in (man["files"] if isinstance(man["files"], list) else man["files"].keys())}
for root, _, files in os.walk(d):
    for f in files:
        rel = os.path.relpath(os.path.join(root, f), d)
        if rel != "manifest.json":
            assert rel in listed, rel
print("report ok:", len(srcs), "pictures")
EOF

# No map, no attributions, one layer.
"$BIN" report "${base[@]}" --examples 1 --out "$T/r2" --map-items 0 --attributions '' --layers conv2 --vis-channels 0 >/dev/null
grep -q '"map":null' "$T/r2/index.html"
test ! -e "$T/r2/img/map_scatter.png"

expect_fail 1 "unknown layer 'conv9'" report "${small[@]}" --out "$T/bad" --layers conv9
expect_fail 2 "grad-magic" report "${small[@]}" --out "$T/bad" --attributions saliency,grad-magic
expect_fail 2 "8..70000" report "${base[@]}" --out "$T/bad" --map-items 3
expect_fail 2 "at least 1" report "${base[@]}" --out "$T/bad" --examples 0
expect_fail 1 "no data" report --model "$M" --input-shape 1,28,28 --data "$T/missing.npy" --out "$T/bad"
test ! -e "$T/bad/index.html"
echo "report.sh: ok"
