#!/usr/bin/env bash
# End-to-end test of `convscope feature-vis`: channels and classes on a fixture model, pixel and
# fourier parameterisations, the dataset comparison, determinism, and bad input.
# Usage: feature_vis.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

lenet="$FIX/lenet_scripted.pt"
$PY -c "import numpy as np; np.save('$T/data.npy', np.random.RandomState(0).rand(12, 1, 28, 28).astype(np.float32))"

for param in pixel fourier; do
    out="$T/$param"
    "$BIN" feature-vis --model "$lenet" --input-shape 1,28,28 --layer relu2 --channels 3:7 --param "$param" \
        --steps 32 --data "$T/data.npy" --threads 1 --seed 3 --out "$out" > "$T/$param.log"
    for f in grid.png feature_vis.json images.npy pixels.npy manifest.json units/channel_3.png units/channel_6.png; do
        [ -s "$out/$f" ] || { echo "missing $out/$f"; exit 1; }
    done
    $PY - "$out" "$T/data.npy" <<'PY'
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
    "$BIN" feature-vis --model "$lenet" --input-shape 1,28,28 --class 2:4 --steps 8 --seed 5 --threads 1 \
        --out "$T/class-$run" --json > "$T/class-$run.json"
done
cmp "$T/class-a/images.npy" "$T/class-b/images.npy"
[ -s "$T/class-a/units/class_2.png" ] && [ -s "$T/class-a/units/class_3.png" ]
$PY -c "
import json; s = json.load(open('$T/class-a.json'))
assert s['objective'] == 'class' and [u['unit'] for u in s['units']] == [2, 3] and 'dataset_best' not in s['units'][0]"

common=(--model "$lenet" --input-shape 1,28,28 --out "$T/bad")
expect_fail 2 "--steps must be at least 1" feature-vis --layer conv2 --steps 0 "${common[@]}"
expect_fail 2 "--class '10' selects no valid class: there are 10 (0\.\.9)" feature-vis --class 10 "${common[@]}"
expect_fail 2 "selects no valid channel of layer 'conv2': there are 16" feature-vis --layer conv2 --channels 16:20 "${common[@]}"
expect_fail 1 "unknown layer 'conv7'" feature-vis --layer conv7 "${common[@]}"
expect_fail 2 "unknown parameterisation 'wavelet'" feature-vis --layer conv2 --param wavelet "${common[@]}"
expect_fail 2 "give --layer L" feature-vis "${common[@]}"
[ ! -e "$T/bad/feature_vis.json" ] || { echo "a failed run left results"; exit 1; }
"$BIN" feature-vis --help >"$T/help.txt"; grep -q -- "--param" "$T/help.txt"
echo "feature-vis e2e: ok"
