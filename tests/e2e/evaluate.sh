#!/usr/bin/env bash
# End-to-end test of `convscope evaluate`: methods and metrics on a fixture model, the files and
# their agreement (JSON, CSV, summary, maps, pictures), determinism for a seed, and the exit
# codes and messages for bad input.
# Usage: evaluate.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

lenet="$FIX/lenet_scripted.pt"
data="$FIX/lenet_scripted/input.npy"   # 2 images, float32 [2,1,28,28]
common=(--model "$lenet" --data "$data" --indices 0:2 --threads 1)
quick=(--steps 14 --masks 200 --samples 4 --ig-steps 8 --infidelity-samples 4 --sensitivity-samples 2
       --percentages 25,50,75)

out="$T/eval"
"$BIN" evaluate "${common[@]}" "${quick[@]}" --methods occlusion,saliency,grad-cam,rise --seed 3 \
    --metrics deletion,insertion,road,infidelity,max-sensitivity,randomisation,independent-randomisation,random-logit \
    --out "$out" > "$T/eval.log"
grep -q "lower is better" "$T/eval.log" || { echo "the table names no direction"; cat "$T/eval.log"; exit 1; }
for f in metrics.json metrics.csv summary.csv manifest.json maps/occlusion.npy maps/rise.npy \
         curves/deletion_morf.png curves/insertion_lerf.png curves/road_morf.png cascade_spearman_abs.png; do
    [ -s "$out/$f" ] || { echo "missing $out/$f"; exit 1; }
done
$PY - "$out" <<'PY'
import csv, json, os, sys
import numpy as np
out = sys.argv[1]
j = json.load(open(out + "/metrics.json"))
methods = ["occlusion", "saliency", "grad-cam", "rise"]
assert j["methods"] == methods and j["items"] == [0, 1]
names = [m["name"] for m in j["metrics"]]
for n in ["deletion_morf", "deletion_lerf", "insertion_morf", "insertion_lerf", "road_morf", "road_lerf",
          "infidelity", "max_sensitivity", "randomisation_spearman_abs", "randomisation_ssim",
          "independent_randomisation_hog", "random_logit_spearman"]:
    assert n in names, (n, names)
by = {m["name"]: m for m in j["metrics"]}
assert by["deletion_morf"]["higher_is_better"] is False and by["insertion_morf"]["higher_is_better"] is True
assert by["road_lerf"]["higher_is_better"] is True and by["infidelity"]["higher_is_better"] is False
# Means and rankings follow the values.
for m in j["metrics"]:
    means = {k: float(np.mean(v)) for k, v in m["values"].items()}
    for k in means:
        assert abs(means[k] - m["mean"][k]) < 1e-6 * max(1, abs(means[k])), (m["name"], k)
    order = sorted(methods, key=lambda k: -means[k] if m["higher_is_better"] else means[k])
    assert [means[k] for k in m["ranking"]] == [means[k] for k in order], (m["name"], m["ranking"])
# Curves: 15 points for 14 steps, scores in [0, 1] (softmax), the deletion curve of everything
# deleted the same for every method (the zero image).
for k in methods:
    c = j["curves"][k]
    assert len(c["deletion_morf"]) == 15 and len(c["road_morf"]) == 3
    assert all(0 <= v <= 1 for v in c["deletion_morf"])
    assert abs(c["deletion_morf"][-1] - j["curves"]["saliency"]["deletion_morf"][-1]) < 1e-6
    r = j["randomisation"][k]
    assert len(r["layers"]) == len(r["cascading"]["spearman_abs"]) == len(r["independent"]["ssim"])
# The CSV holds the same values.
rows = list(csv.DictReader(open(out + "/metrics.csv")))
assert len(rows) == len(names) * len(methods) * 2
for row in rows:
    v = by[row["metric"]]["values"][row["method"]][[0, 1].index(int(row["item"]))]
    assert abs(float(row["value"]) - v) <= 1e-6 * max(1, abs(v)), row
    assert row["better"] == ("higher" if by[row["metric"]]["higher_is_better"] else "lower")
summary = list(csv.DictReader(open(out + "/summary.csv")))
assert [r["metric"] for r in summary] == names
maps = np.load(out + "/maps/saliency.npy")
assert maps.shape == (2, 28, 28) and maps.dtype == np.float32
listed = [f["path"] for f in json.load(open(out + "/manifest.json"))["files"]]
assert "metrics.json" in listed and "curves/deletion_morf.png" in listed
assert all(os.path.exists(os.path.join(out, f)) for f in listed)
PY

# The same seed gives the same numbers.
"$BIN" evaluate "${common[@]}" "${quick[@]}" --methods rise,saliency --metrics road,infidelity,random-logit \
    --seed 3 --out "$T/a" > /dev/null
"$BIN" evaluate "${common[@]}" "${quick[@]}" --methods rise,saliency --metrics road,infidelity,random-logit \
    --seed 3 --out "$T/b" > /dev/null
cmp "$T/a/metrics.csv" "$T/b/metrics.csv" || { echo "same seed, other numbers"; exit 1; }

# Checkpoints: each method saved as it finishes; a run with them saved computes nothing again
# and writes the same files; one saved by a run with other options, or damaged, is refused.
ck=("${common[@]}" "${quick[@]}" --methods rise,saliency --metrics road,infidelity,random-logit --seed 3)
"$BIN" evaluate "${ck[@]}" --checkpoint "$T/ck" --out "$T/c1" > /dev/null
test -s "$T/ck.rise" && test -s "$T/ck.saliency"
cmp "$T/a/metrics.csv" "$T/c1/metrics.csv" || { echo "a run with checkpoints gives other numbers"; exit 1; }
rm "$T/ck.saliency"
"$BIN" evaluate "${ck[@]}" --checkpoint "$T/ck" --out "$T/c2" > /dev/null 2>"$T/c2.err"
grep -q "resumed 1 of 2 methods from the checkpoint" "$T/c2.err" || { echo "rise was not read back"; cat "$T/c2.err"; exit 1; }
cmp "$T/a/metrics.csv" "$T/c2/metrics.csv" || { echo "a resumed run gives other numbers"; exit 1; }
cmp "$T/a/maps/rise.npy" "$T/c2/maps/rise.npy"
expect_fail 1 "checkpoint $T/ck.rise is from another run" evaluate "${ck[@]}" --infidelity-noise 0.2 --checkpoint "$T/ck" --out "$T/bad"
$PY -c 'import sys; b = open(sys.argv[1], "rb").read(); open(sys.argv[1], "wb").write(b[:b.index(b"\n") + 100])' "$T/ck.rise"
expect_fail 1 "checkpoint $T/ck.rise is damaged" evaluate "${ck[@]}" --checkpoint "$T/ck" --out "$T/bad"

# Bad input: exit code and message, no results written.
expect_fail 2 "unknown method 'sailency'" evaluate --methods saliency,sailency "${common[@]}" --out "$T/bad"
expect_fail 2 "unknown metric 'fidelity'" evaluate --metrics fidelity "${common[@]}" --out "$T/bad"
expect_fail 2 "unknown randomisation init 'xavier'" evaluate --randomisation-init xavier "${common[@]}" --out "$T/bad"
expect_fail 2 "--steps must be at least 1" evaluate --steps 0 "${common[@]}" --out "$T/bad"
expect_fail 1 "1 to 784 steps" evaluate --steps 785 --methods saliency --metrics deletion "${common[@]}" --out "$T/bad"
expect_fail 1 "strictly between 0 and 100" evaluate --percentages 10,100 --methods saliency --metrics road "${common[@]}" --out "$T/bad"
expect_fail 1 "target class 12 is out of range" evaluate --target 12 --methods saliency "${common[@]}" --out "$T/bad"
$PY - "$T/noparams.pt" <<'PY'
import sys, torch
class NoParams(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x.amax((1, 2, 3))], 1)
torch.jit.save(torch.jit.trace(NoParams(), torch.zeros(1, 1, 28, 28)), sys.argv[1])
PY
expect_fail 1 "no parameters to randomise" evaluate --model "$T/noparams.pt" --input-shape 1,28,28 --data "$data" \
    --indices 0:2 --methods saliency --metrics randomisation --out "$T/bad"
expect_fail 1 "needs a class target" evaluate --target similarity:1 --methods saliency --metrics random-logit \
    "${common[@]}" --out "$T/bad"
[ ! -e "$T/bad/metrics.json" ] || { echo "a failed run left results"; exit 1; }
echo "e2e evaluate: ok"
