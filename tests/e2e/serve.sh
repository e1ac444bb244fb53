#!/usr/bin/env bash
# convscope serve end to end: a real server on a free loopback port with a fixture model. Bad input
# (malformed JSON, oversized bodies, non-images, unknown layers, indices, images and jobs) gets 4xx
# replies with a JSON error and never a crash; only the app's own assets are served; 32 concurrent
# clients see every request answered correctly; SIGTERM stops it cleanly.
# Usage: serve.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"

M=$FIX/lenet_scripted.pt
base=(--model "$M" --input-shape 1,28,28 --data fashion-mnist:test --threads 1 --cache-dir "$T/cache")
common=("${base[@]}" --map-items 300 --map-iterations 100 --scan-items 300 --feature-vis-steps 8)

"$BIN" serve --help >/dev/null
expect_fail 2 "port" serve "${common[@]}" --port 70000
expect_fail 2 "map takes" serve "${base[@]}" --port 0 --map-items 0
expect_fail 1 "no model file\|cannot\|does not exist" serve --model "$T/missing.pt" --port 0
# A non-loopback host warns before anything else (this address is not local, so binding fails).
expect_fail 1 "warning: listening on 192.0.2.1" serve "${common[@]}" --host 192.0.2.1 --port 0

# Start the server on a free port and read the port from its first line.
start_server "$T/serve.out" "$T/serve.err" "${common[@]}" --port 0
if grep -q warning "$T/serve.err"; then echo "unexpected warning on loopback"; cat "$T/serve.err"; exit 1; fi

# check METHOD PATH STATUS [curl args...]: the reply has STATUS; 4xx/5xx replies are JSON errors.
check() {
    local method=$1 path=$2 want=$3
    shift 3
    local got
    got=$(curl -s --path-as-is -o "$T/body" -D "$T/headers" -w '%{http_code}' -X "$method" "$@" "$URL$path")
    if [ "$got" != "$want" ]; then echo "$method $path: expected $want, got $got"; head -c 600 "$T/body"; echo; exit 1; fi
    if [ "$want" -ge 400 ]; then
        $PY -c 'import json,sys; j=json.load(open(sys.argv[1])); assert isinstance(j.get("error"), str) and j["error"], j' "$T/body" \
            || { echo "$method $path: not a JSON error"; cat "$T/body"; exit 1; }
    fi
}
json_has() {  # json_has NEEDLE: the last body contains NEEDLE
    grep -q -- "$1" "$T/body" || { echo "expected '$1' in the reply"; head -c 600 "$T/body"; echo; exit 1; }
}

# Assets: only the app's own.
check GET / 200
json_has "convscope explorer"
grep -qi "content-security-policy: default-src 'none'" "$T/headers" || { echo "no CSP"; cat "$T/headers"; exit 1; }
check GET /app.js 200
check GET /live.js 200
check GET /inputs.js 200
check GET /explain.js 200
check GET /mapview.js 200
check GET /app.css 200
check GET /report.js 404
check GET /nothing.js 404
check GET /../../etc/passwd 404
check GET /%2e%2e/%2e%2e/etc/passwd 404
check GET /api/items/..%2f..%2fetc%2fpasswd.png 404

# Model, data and items.
check GET /api/model 200
json_has '"conv1"'
check GET /api/dataset 200
json_has '"size":10000'
check GET "/api/items?start=9990&count=20" 200
check GET "/api/items?start=10000" 404
check GET "/api/items?start=abc" 400
check GET /api/items/0.png 200
[ "$(head -c 4 "$T/body" | od -An -c | tr -d " ")" = "211PNG" ] || { echo "item 0 is not a PNG"; exit 1; }
check GET /api/items/10000.png 404
check GET /api/items/-1.png 404
check GET /api/items/abc.png 404

# The live update under bad input.
check POST /api/activations 400 -H 'Content-Type: application/json' --data '{"index": '
json_has "malformed JSON"
check POST /api/activations 400 -H 'Content-Type: application/json' --data '[1,2]'
check POST /api/activations 400 -H 'Content-Type: application/json' --data '{"index": "7"}'
check POST /api/activations 404 -H 'Content-Type: application/json' --data '{"index": 10000}'
check POST /api/activations 404 -H 'Content-Type: application/json' --data '{"image": "u0123456789abcdef"}'
check POST /api/activations 400 -H 'Content-Type: application/json' --data '{"gray": "AAAA", "width": 28, "height": 28}'
check POST /api/activations 400 -H 'Content-Type: application/json' --data '{"gray": "***", "width": 1, "height": 1}'
check POST /api/activations 400 -H 'Content-Type: application/json' --data '{"nothing": 1}'
check POST /api/activations 400
check POST /api/activations 415 -H 'Content-Type: text/plain' --data 'hello, not an image'
check POST /api/activations 415 -H 'Content-Type: image/png' --data-binary @"$M"
printf '\x89PNG\r\n\x1a\nthis is not really a png' >"$T/fake.png"
check POST /api/activations 415 -H 'Content-Type: image/png' --data-binary @"$T/fake.png"
head -c $((5 * 1024 * 1024)) /dev/zero >"$T/big.bin"
check POST /api/activations 413 -H 'Content-Type: image/png' --data-binary @"$T/big.bin"
json_has "larger than the limit"
# A PNG that declares 30000x30000 pixels in under 100 bytes: refused from its header.
make_png_bomb "$T/bomb.png"
check POST /api/activations 413 -H 'Content-Type: image/png' --data-binary @"$T/bomb.png"
json_has "declares 30000x30000 pixels"
check POST "/api/activations?layers=conv1,nope" 404 -H 'Content-Type: application/json' --data '{"index": 1}'
json_has "unknown layer 'nope'"
check POST "/api/activations?max_channels=0" 400 -H 'Content-Type: application/json' --data '{"index": 1}'
check POST "/api/activations?max_side=x" 400 -H 'Content-Type: application/json' --data '{"index": 1}'

# Good live updates: a dataset item, an uploaded PNG, a drawing.
check POST "/api/activations?layers=conv1,pool2,fc3" 200 -H 'Content-Type: application/json' --data '{"index": 3}'
json_has '"image":"d3"'
"$BIN" --help >/dev/null
curl -s "$URL/api/items/5.png" -o "$T/item5.png"
check POST /api/activations 200 -H 'Content-Type: image/png' --data-binary @"$T/item5.png"
$PY - "$T/body" <<'EOF'
import base64, json, sys
j = json.load(open(sys.argv[1]))
assert j["image"].startswith("u"), j["image"]
names = [l["name"] for l in j["layers"]]
assert names[:3] == ["conv1", "relu1", "pool1"], names
for l in j["layers"]:
    n = len(base64.b64decode(l["data"]))
    assert n == l["channels"] * l["height"] * l["width"], (l["name"], n)
assert abs(sum(j["output"]["probs"]) - 1) < 1e-4
EOF
UPLOAD_ID=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["image"])' "$T/body")
GRAY=$($PY -c 'import base64; print(base64.b64encode(bytes((i * 7) % 256 for i in range(784))).decode())')
check POST /api/activations 200 -H 'Content-Type: application/json' --data "{\"gray\": \"$GRAY\", \"width\": 28, \"height\": 28}"
check GET "/api/images/$UPLOAD_ID.png" 200
check GET "/api/images/u00000000.png" 404

# A channel.
check GET "/api/filter.png?layer=conv2&channel=3" 200
check GET "/api/filter.png?layer=relu1&channel=0" 200
check GET "/api/filter.png?layer=nope&channel=0" 404
check GET "/api/filter.png?layer=conv1&channel=6" 404
check GET "/api/filter.png?layer=fc1&channel=0" 400
check GET "/api/filter.png?layer=conv1" 400
check GET "/api/overlay.png?image=d3&layer=conv1&channel=2" 200
check GET "/api/overlay.png?image=d3&layer=fc1&channel=2" 400
check GET "/api/overlay.png?image=d99999&layer=conv1&channel=2" 404

# Jobs under bad input.
check POST /api/jobs 400 -H 'Content-Type: application/json' --data '{"kind": '
check POST /api/jobs 400 -H 'Content-Type: application/json' --data '{"kind": "nope"}'
check POST /api/jobs 400 -H 'Content-Type: application/json' --data '{"kind": "occlusion"}'
check POST /api/jobs 404 -H 'Content-Type: application/json' --data '{"kind": "occlusion", "image": "u1234"}'
check POST /api/jobs 400 -H 'Content-Type: application/json' --data '{"kind": "occlusion", "image": "d1", "patch": 0}'
check POST /api/jobs 400 -H 'Content-Type: application/json' --data '{"kind": "attribution", "image": "d1", "method": "magic"}'
check POST /api/jobs 404 -H 'Content-Type: application/json' --data '{"kind": "patches", "layer": "conv1", "channel": 6}'
check POST /api/jobs 404 -H 'Content-Type: application/json' --data '{"kind": "feature-vis", "layer": "nope", "channel": 0}'
check GET /api/jobs/j999999 404
check DELETE /api/jobs/j999999 404
check GET /api/map 404

# Jobs that run: occlusion, attribution, patches, feature vis, the map (all polled to the end).
$PY - "$URL" <<'EOF'
import json, sys, time, urllib.request
url = sys.argv[1]
def call(method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)
def run(body):
    st = call("POST", "/api/jobs", body)
    again = call("POST", "/api/jobs", body)
    assert again["id"] == st["id"], (st, again)  # the same request joins the same job
    t0 = time.time()
    while st["state"] in ("queued", "running"):
        assert time.time() - t0 < 90, st
        time.sleep(0.05)
        st = call("GET", "/api/jobs/" + st["id"])
    assert st["state"] == "done", st
    return st["result"]
r = run({"kind": "occlusion", "image": "d3"})
assert r["overlay"].startswith("data:image/png;base64,") and r["positions"] == [13, 13], r["positions"]
r = run({"kind": "attribution", "image": "d3", "method": "grad-cam"})
assert r["layer"] == "conv2", r["layer"]
r = run({"kind": "patches", "layer": "conv2", "channel": 4})
assert len(r["entries"]) == 9 and r["images_scanned"] == 300
vals = [e["value"] for e in r["entries"]]
assert vals == sorted(vals, reverse=True), vals
r = run({"kind": "feature-vis", "layer": "conv1", "channel": 1})
assert r["image"].startswith("data:image/png")
r = run({"kind": "map"})
assert r["n"] == 300 and r["layer"] == "fc2", r
m = call("GET", "/api/map")
assert len(m["x"]) == 300 and len(m["labels"]) == 300 and m["items"] == list(range(300)) and m["source"] == "computed"
# The same points as one binary download (what the web app reads), and the description alone.
import struct
with urllib.request.urlopen(url + m["points"], timeout=60) as r:
    raw = r.read()
    assert r.headers["Content-Type"] == "application/octet-stream"
assert len(raw) == 16 * 300, len(raw)
x, y = struct.unpack("<300f", raw[:1200]), struct.unpack("<300f", raw[1200:2400])
labels, items = struct.unpack("<300i", raw[2400:3600]), struct.unpack("<300i", raw[3600:])
assert all(abs(a - b) <= 1e-6 * max(1, abs(b)) for a, b in zip(x + y, m["x"] + m["y"]))
assert list(labels) == m["labels"] and list(items) == m["items"]
d = call("GET", "/api/map?points=0")
assert "x" not in d and d["n"] == 300 and d["points"] == "/api/map/points", d
EOF
ls "$T"/cache/top-patches-*.json "$T"/cache/map-*.npy >/dev/null

# 32 concurrent clients, each with its own mix of requests; every reply must be right.
$PY - "$URL" <<'EOF'
import base64, json, sys, threading, urllib.error, urllib.request
url = sys.argv[1]
def request(method, path, body=None, ctype="application/json"):
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, method=method, data=data, headers={"Content-Type": ctype})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
# Reference predictions, one request at a time.
ref = {}
for i in range(32):
    s, b = request("POST", "/api/activations?layers=fc3", {"index": i})
    assert s == 200
    ref[i] = json.loads(b)["output"]["predicted"]
errors = []
def client(i):
    try:
        for rep in range(4):
            s, b = request("POST", "/api/activations", {"index": i})
            j = json.loads(b)
            assert s == 200 and j["image"] == "d%d" % i and j["output"]["predicted"] == ref[i], (i, s)
            s, b = request("GET", "/api/items/%d.png" % i)
            assert s == 200 and b[:4] == b"\x89PNG", (i, s)
            gray = base64.b64encode(bytes([(i * 13 + k) % 256 for k in range(784)])).decode()
            s, b = request("POST", "/api/activations?layers=conv1", {"gray": gray, "width": 28, "height": 28})
            assert s == 200 and json.loads(b)["image"].startswith("u"), (i, s)
            s, b = request("POST", "/api/activations", b'{"index": ')
            assert s == 400 and "error" in json.loads(b), (i, s)
            s, b = request("GET", "/api/filter.png?layer=conv1&channel=%d" % (i % 6))
            assert s == 200 and b[:4] == b"\x89PNG", (i, s)
            s, b = request("GET", "/api/model")
            assert s == 200 and json.loads(b)["num_classes"] == 10
    except Exception as e:
        errors.append(repr(e))
threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors[:5]
print("32 clients x 24 requests answered correctly")
EOF

# Still alive after all of that; SIGTERM stops it with exit 0.
check GET /api/model 200
kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
PID=
[ "$rc" = 0 ] || { echo "server exited with $rc"; cat "$T/serve.err"; exit 1; }
grep -q "server stopped" "$T/serve.err"

# A full job queue answers 429 with Retry-After: one worker busy with a long job, one job
# waiting, the third refused; the running one is then cancelled.
expect_fail 2 "job queue" serve "${common[@]}" --port 0 --max-jobs 0
start_server "$T/busy.out" "$T/busy.err" "${base[@]}" --map-items 300 --scan-items 300 \
    --feature-vis-steps 1000000 --workers 1 --max-jobs 1 --port 0
job() { echo '{"kind": "feature-vis", "layer": "conv1", "channel": '"$1"'}'; }
check POST /api/jobs 202 -H 'Content-Type: application/json' --data "$(job 0)"
first=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$T/body")
for _ in $(seq 1 100); do  # until the worker has taken it
    check GET "/api/jobs/$first" 200
    grep -q '"running"' "$T/body" && break
    sleep 0.05
done
check POST /api/jobs 202 -H 'Content-Type: application/json' --data "$(job 1)"
second=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$T/body")
check POST /api/jobs 429 -H 'Content-Type: application/json' --data "$(job 2)"
json_has "too many queued jobs"
grep -qi "^retry-after: 2" "$T/headers" || { echo "no Retry-After"; cat "$T/headers"; exit 1; }
check DELETE "/api/jobs/$second" 200
check DELETE "/api/jobs/$first" 200
kill -TERM "$PID"
rc=0
wait "$PID" || rc=$?
PID=
[ "$rc" = 0 ] || { echo "server exited with $rc"; cat "$T/busy.err"; exit 1; }
echo "serve.sh: ok"
