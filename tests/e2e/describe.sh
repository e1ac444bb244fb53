#!/usr/bin/env bash
# convscope describe / the CLI frame: layer tables of fixture models, JSON output, exit codes and
# one-line errors for bad input.
set -euo pipefail
bin=$1 fixtures=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# A torchvision ResNet-18 scripted in Python: every layer with shapes and receptive fields.
"$bin" describe --model "$fixtures/resnet18_scripted.pt" --input-shape 3,224,224 > "$tmp/r18.txt"
grep -q "layer4.1.conv2 *Conv2d *512x7x7" "$tmp/r18.txt"
grep -q "^layer4 .*435x435 /32 p217" "$tmp/r18.txt"
test "$(grep -c "Conv2d" "$tmp/r18.txt")" -eq 20
# Its plain forward passes run the inference copy (checked against the module's own forward).
grep -q "^forward passes: the inference copy$" "$tmp/r18.txt"

"$bin" describe --model "$fixtures/resnet_small_traced.pt" --input-shape 3,32,32 --json > "$tmp/d.json"
/usr/bin/python3 - "$tmp/d.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
names = [l["name"] for l in d["layers"]]
assert "layer1.0.conv2" in names and "layer2.0.downsample.0" in names, names
assert d["num_classes"] == 10 and d["input_shape"] == [3, 32, 32]
l = {x["name"]: x for x in d["layers"]}
assert l["fc"]["receptive_field"]["kind"] == "global"
assert l["conv1"]["receptive_field"]["size"] == [3, 3]
assert d["forward"] == "the inference copy", d["forward"]
PY

# --help works for the program and each command.
"$bin" --help > /dev/null
"$bin" describe --help >"$tmp/help.txt"; grep -q -- "--input-shape" "$tmp/help.txt"

expect_fail() {  # expect_fail CODE NEEDLE -- command...
    local code=$1 needle=$2; shift 3
    set +e
    "$@" > "$tmp/out" 2> "$tmp/err"
    local got=$?
    set -e
    if [ "$got" -ne "$code" ]; then echo "expected exit $code, got $got: $*"; cat "$tmp/err"; exit 1; fi
    if ! grep -q -- "$needle" "$tmp/err"; then echo "expected '$needle' in stderr of: $*"; cat "$tmp/err"; exit 1; fi
    if [ "$(wc -l < "$tmp/err")" -gt 2 ]; then echo "error is not one clear line: $*"; cat "$tmp/err"; exit 1; fi
}
expect_fail 1 "does not exist" -- "$bin" describe --model "$tmp/nope.pt" --input-shape 1,28,28
expect_fail 1 "not TorchScript" -- "$bin" describe --model "$fixtures/state_dict.pt" --input-shape 1,28,28
expect_fail 1 "is an image" -- "$bin" describe --model "$fixtures/not_a_model.pt"
expect_fail 1 "truncated or corrupt" -- "$bin" describe --model "$fixtures/truncated.pt"
expect_fail 1 "is empty" -- "$bin" describe --model "$fixtures/empty.pt"
expect_fail 2 "--input-shape" -- "$bin" describe --model "$fixtures/lenet_scripted.pt"
expect_fail 2 "three numbers" -- "$bin" describe --model "$fixtures/lenet_scripted.pt" --input-shape 28,28
expect_fail 1 "cannot run on inputs of shape 1,40,40" -- "$bin" describe --model "$fixtures/lenet_scripted.pt" --input-shape 1,40,40
expect_fail 2 "" -- "$bin" describe --no-such-option
expect_fail 2 "" -- "$bin"
echo "describe: ok"
