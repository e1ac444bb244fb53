#!/usr/bin/env bash
# End-to-end test of `convscope feature-vis`: channels and classes on a fixture model, pixel and
# fourier parameterisations, the dataset comparison, determinism, and bad input.
# Usage: feature_vis.sh CONVSCOPE_BINARY FIXTURES_DIR
set -euo pipefail
bin="$1"
fix="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
py=/usr/bin/python3

lenet="$fix/lenet_scripted.pt"
$py -c "import numpy as np; np.save('$tmp/data.npy', np.random.RandomState(0).rand(12, 1, 28, 28).astype(np.float32))"

for param in pixel fourier; do
    out="$tmp/$param"
    "$bin" feature-vis --model "$lenet" --input-shape 1,28,28 --layer relu2 --channels 3:7 --param "$param" \
        --steps 32 --data "$tmp/data.npy" --threads 1 --seed 3 --out "$out" > "$tmp/$param.log"
    for f in grid.png feature_vis.json images.npy pixels.npy manifest.json units/channel_3.png units/channel_6.png; do
        [ -s "$out/$f" ] || { echo "missing $out/$f"; exit 1; }
    done
    $py - "$out" "$tmp/data.npy" <<'PY'
import json, sys
import numpy as np
out, data = sys.argv[1], sys.argv[2]
s = json.load(open(out + "/feature_vis.json"))
assert s["layer"] == "relu2" and [u["unit"] for u in s["units"]] == [3, 4, 5, 6], s
img = np.load(out + "/images.npy")
pix = np.load(out + "/pixels.npy")
assert img.shape == (4, 1, 28, 28) and img.dtype == np.float32
assert pix.min() >= 0 and pix.max() <= 1
assert np.allclose(img, pix)          # float .npy data: no normalisation
for u in s["units"]:
    assert u["activation"] > u["initial_activation"], u
    assert 0 <= u["dataset_best_index"] < 12
    if u["dataset_best"] > 0:
        assert abs(u["ratio"] - u["activation"] / u["dataset_best"]) < 1e-4 * max(1, u["ratio"]), u
    else:
        assert u["ratio"] is None
PY
done

# Classes, no dataset; the same seed gives the same bytes.
for run in a b; do
    "$bin" feature-vis --model "$lenet" --input-shape 1,28,28 --class 2:4 --steps 8 --seed 5 --threads 1 \
        --out "$tmp/class-$run" --json > "$tmp/class-$run.json"
done
cmp "$tmp/class-a/images.npy" "$tmp/class-b/images.npy"
[ -s "$tmp/class-a/units/class_2.png" ] && [ -s "$tmp/class-a/units/class_3.png" ]
$py -c "
import json; s = json.load(open('$tmp/class-a.json'))
assert s['objective'] == 'class' and [u['unit'] for u in s['units']] == [2, 3] and 'dataset_best' not in s['units'][0]"

expect_fail() {  # expect_fail CODE NEEDLE ARGS...
    local code="$1" needle="$2"
    shift 2
    set +e
    "$bin" feature-vis "$@" > "$tmp/out.txt" 2> "$tmp/err.txt"
    local rc=$?
    set -e
    [ "$rc" -eq "$code" ] || { echo "expected exit $code, got $rc for: $*"; cat "$tmp/err.txt"; exit 1; }
    grep -qF -- "$needle" "$tmp/err.txt" || { echo "expected '$needle' in:"; cat "$tmp/err.txt"; exit 1; }
}
common=(--model "$lenet" --input-shape 1,28,28 --out "$tmp/bad")
expect_fail 2 "--steps must be at least 1" --layer conv2 --steps 0 "${common[@]}"
expect_fail 2 "--class '10' selects no valid class: there are 10 (0..9)" --class 10 "${common[@]}"
expect_fail 2 "selects no valid channel of layer 'conv2': there are 16" --layer conv2 --channels 16:20 "${common[@]}"
expect_fail 1 "unknown layer 'conv7'" --layer conv7 "${common[@]}"
expect_fail 2 "unknown parameterisation 'wavelet'" --layer conv2 --param wavelet "${common[@]}"
expect_fail 2 "give --layer L" "${common[@]}"
[ ! -e "$tmp/bad/feature_vis.json" ] || { echo "a failed run left results"; exit 1; }
"$bin" feature-vis --help | grep -q -- "--param"
echo "feature-vis e2e: ok"
