#!/usr/bin/env bash
# Browser tests: Playwright (tests/e2e/browser, npm package playwright-core) drives Debian's
# chromium headless against a real `convscope serve` on a free loopback port with a fixture model
# (page loads, a stroke changes the activations, a channel shows its patches, occlusion shows a
# map, the map zooms and opens an item; on a segmentation model a click on the predicted classes
# explains that region; on a vision transformer the attention view follows a clicked patch and
# shows the rollout), and opens a `convscope report` from a file URL with no
# network request (and a transformer's report, whose attention view follows a click); and a map of a
# million points (serve --map, report --map): frame time of pan and zoom at most 33 ms, hover exact
# against brute force, thumbnails loaded on hover. Screenshots and the frame times go to
# <build>/test-artifacts/browser/.
# Usage: browser.sh <convscope binary> <fixtures dir>
source "$(dirname "$0")/lib/common.sh" "$@"
BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
HERE=$(cd "$(dirname "$0")" && pwd)
ART=$(dirname "$BIN")/test-artifacts/browser
if [ ! -d "$HERE/browser/node_modules/playwright-core" ]; then
    echo "playwright-core is not installed in tests/e2e/browser: run scripts/setup.sh (npm ci)"; exit 1
fi
[ -x /usr/bin/chromium ] || { echo "/usr/bin/chromium is missing: run scripts/setup.sh"; exit 1; }
rm -rf "$ART"
mkdir -p "$ART"

M=$FIX/lenet_scripted.pt
model=(--model "$M" --input-shape 1,28,28 --data fashion-mnist:test --threads 2)

# The report the browser opens from disk (small subsets keep it quick).
"$BIN" report "${model[@]}" --out "$T/report" --eval-items 500 --examples 2 --scan-items 300 --trust-items 4 \
    --patch-channels 4 --vis-channels 4 --vis-steps 16 --map-items 300 --map-iterations 150 >/dev/null

"$BIN" report --model "$FIX/vit_tiny.pt" --input-shape 3,32,32 --data "$FIX/vit_tiny/input.npy" --out "$T/vitreport" \
    --examples 1 --scan-items 2 --map-items 0 --trust-items 0 --patch-channels 2 --vis-channels 2 --vis-steps 8 \
    --threads 2 >/dev/null

# A map of a million points (as convscope embed writes it), in the explorer and in a report.
$PY "$HERE/../fixtures/million_map.py" "$T/million" 1000000 10000
"$BIN" report "${model[@]}" --out "$T/millionreport" --map "$T/million" --eval-items 50 --examples 1 --scan-items 20 \
    --trust-items 0 --patch-channels 1 --vis-channels 0 --attributions '' >/dev/null

start_server "$T/serve.out" "$T/serve.err" "${model[@]}" --port 0 --cache-dir "$T/cache" --map-items 300 \
    --map-iterations 150 --scan-items 300 --feature-vis-steps 16

# A segmentation model (dict output) beside it: its predicted classes, a click explains a region.
$PY -c "import numpy as np; np.save('$T/seg.npy', np.load('$FIX/targets/lraspp_input.npy'))"
MAIN_URL=$URL MAIN_PID=$PID
start_server "$T/seg.out" "$T/seg.err" --model "$FIX/targets/lraspp.pt" --input-shape 3,64,64 --data "$T/seg.npy" \
    --port 0 --cache-dir "$T/cache" --threads 2
SEG_URL=$URL SEG_PID=$PID
# A vision transformer: the attention view (click a patch, the rollout).
start_server "$T/vit.out" "$T/vit.err" --model "$FIX/vit_tiny.pt" --input-shape 3,32,32 --data "$FIX/vit_tiny/input.npy" \
    --port 0 --cache-dir "$T/cache" --threads 2
VIT_URL=$URL VIT_PID=$PID
start_server "$T/million.out" "$T/million.err" "${model[@]}" --port 0 --cache-dir "$T/cache" --map "$T/million"
MILLION_URL=$URL MILLION_PID=$PID
PID=$MAIN_PID
trap 'kill "$SEG_PID" "$VIT_PID" "$MILLION_PID" 2>/dev/null || true; cleanup' EXIT

node "$HERE/browser/run.js" "$MAIN_URL" "$T/report/index.html" "$ART" "$SEG_URL" "$VIT_URL" "$T/vitreport/index.html" \
    "$MILLION_URL" "$T/millionreport/index.html"
kill -0 "$PID" || { echo "the server crashed"; cat "$T/serve.err"; exit 1; }
kill -0 "$MILLION_PID" || { echo "the million-point server crashed"; cat "$T/million.err"; exit 1; }
kill -0 "$SEG_PID" || { echo "the segmentation server crashed"; cat "$T/seg.err"; exit 1; }
kill -0 "$VIT_PID" || { echo "the transformer server crashed"; cat "$T/vit.err"; exit 1; }
echo "browser.sh: ok"
