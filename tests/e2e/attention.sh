#!/usr/bin/env bash
# End-to-end test of transformers on the command line: `describe` shows layouts and attention
# layers, `attention` writes the probabilities (equal to PyTorch's need_weights=True values) and
# pictures, `attribute` runs rollout and Grad-CAM on tokens, `activations` shows token layers as
# maps; and the exit codes and messages for bad requests.
# Usage: attention.sh CONVSCOPE_BINARY FIXTURES_DIR
source "$(dirname "$0")/lib/common.sh" "$@"

vit="$FIX/vit_tiny.pt"
swin="$FIX/swin_tiny.pt"
data="$FIX/vit_tiny/input.npy"   # 2 images, float32 [2,3,32,32]
common=(--data "$data" --indices 0:2 --threads 1)

"$BIN" describe --model "$vit" --input-shape 3,32,32 --json > "$T/vit.json"
"$BIN" describe --model "$swin" --input-shape 3,32,32 > "$T/swin.txt"
grep -q "nhwc 8x8" "$T/swin.txt" || { echo "no channels-last layout listed"; cat "$T/swin.txt"; exit 1; }
grep -q "2x2 windows shifted 1" "$T/swin.txt" || { echo "no shifted windows listed"; cat "$T/swin.txt"; exit 1; }

"$BIN" attention --model "$vit" "${common[@]}" --query 1,2 --out "$T/att" > "$T/att.log"
"$BIN" attention --model "$swin" "${common[@]}" --layers features.1.1 --out "$T/satt" > /dev/null
"$BIN" attribute --model "$vit" "${common[@]}" --method attention-rollout --out "$T/roll" > /dev/null
"$BIN" attribute --model "$vit" "${common[@]}" --method grad-cam --out "$T/cam" > /dev/null
"$BIN" activations --model "$vit" "${common[@]}" --layers encoder.layers.encoder_layer_1.ln_1 --out "$T/act" > /dev/null
L=encoder.layers.encoder_layer_1.self_attention.attention_probs
for f in "att/$L/attention.npy" "att/$L/query_1_2.npy" "att/$L/cls.npy" "att/$L/0_query_1_2.png" "att/$L/1_cls.png" \
         att/summary.json att/manifest.json satt/features.1.1.attn.attention_probs/attention.npy \
         roll/attributions.npy cam/attributions.npy act/encoder.layers.encoder_layer_1.ln_1/extra_tokens.npy; do
    [ -s "$T/$f" ] || { echo "missing $f"; exit 1; }
done
$PY - "$T" "$FIX" "$L" <<'PY'
import json, sys
import numpy as np
t, fix, layer = sys.argv[1:]
d = json.load(open(t + "/vit.json"))
layers = {l["name"]: l for l in d["layers"]}
ln = layers["encoder.layers.encoder_layer_1.ln_1"]["layout"]
assert ln["kind"] == "tokens" and ln["grid"] == [4, 4] and ln["extra_front"] == 1, ln
assert layers[layer]["layout"]["kind"] == "attention", layers[layer]
a = np.load(f"{t}/att/{layer}/attention.npy")
ref = np.load(fix + "/vit_tiny/attention_1.npy")
assert a.shape == ref.shape and np.abs(a - ref).max() < 1e-5, np.abs(a - ref).max()
q = np.load(f"{t}/att/{layer}/query_1_2.npy")
assert np.allclose(q, a[:, :, 1 + 4 + 2, 1:].reshape(2, 2, 4, 4), atol=1e-7)
roll = np.load(t + "/roll/attributions.npy")
assert np.abs(roll - np.load(fix + "/vit_tiny/rollout_mean.npy")).max() < 1e-5
cam = np.load(t + "/cam/attributions.npy")
assert np.abs(cam - np.load(fix + "/vit_tiny/gradcam_ln1.npy")).max() < 1e-4 * max(0.01, np.abs(cam).max())
act = np.load(t + "/act/encoder.layers.encoder_layer_1.ln_1/activations.npy")
tok = np.load(fix + "/vit_tiny/tokens_ln1.npy")
assert np.abs(act - tok[:, 1:].transpose(0, 2, 1).reshape(2, 32, 4, 4)).max() < 1e-5
s = np.load(f"{t}/satt/features.1.1.attn.attention_probs/attention.npy")
assert s.shape == (2, 16, 2, 4, 4) and np.allclose(s.sum(-1), 1, atol=1e-5), s.shape
PY

# The built-in ViT: trained briefly into a private cache, then `--model vit` selects it.
export CONVSCOPE_CACHE_DIR="$T/cache"
"$BIN" train --arch vit --train-limit 512 --test-limit 200 --epochs 1 --threads 2 --json > "$T/train.json"
$PY - "$T/train.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
assert j["arch"] == "vit" and 0 <= j["test_accuracy"] <= 1 and j["path"].endswith("vit-fashion-mnist.pt"), j
PY
"$BIN" describe --model vit > "$T/vit.txt"
grep -q "tokens 7x7+1" "$T/vit.txt" || { echo "no token layout in the built-in ViT"; cat "$T/vit.txt"; exit 1; }
grep -q "attention 4 heads" "$T/vit.txt" || { echo "no attention layers in the built-in ViT"; exit 1; }
"$BIN" attribute --model vit --index 0 --method attention-gradient --threads 1 --out "$T/vitgrad" > /dev/null
[ -s "$T/vitgrad/attributions.npy" ] || { echo "no attention-gradient maps for the built-in ViT"; exit 1; }
"$BIN" embed --model vit --indices 0:40 --perplexity 5 --iterations 50 --threads 1 --out "$T/vitmap" > /dev/null
grep -q '"pool": "auto"' "$T/vitmap/manifest.json" || { echo "embed did not record its pooling"; exit 1; }
# The built-in ViT against PyTorch: its attention, rollout and gradient-weighted rollout equal an
# eager computation from the saved model's own submodules (float32 .npy inputs are used as is).
$PY - "$T/vitx.npy" <<'PY'
import sys
import numpy as np
np.save(sys.argv[1], np.random.default_rng(3).standard_normal((2, 1, 28, 28)).astype(np.float32))
PY
vcommon=(--model vit --data "$T/vitx.npy" --indices 0:2 --threads 1)
"$BIN" attention "${vcommon[@]}" --out "$T/vatt" > /dev/null
"$BIN" attribute "${vcommon[@]}" --method attention-rollout --out "$T/vroll" > /dev/null
"$BIN" attribute "${vcommon[@]}" --method attention-gradient --out "$T/vgrad" > /dev/null
$PY - "$T" "$(dirname "$0")/../fixtures" <<'PY'
import json, sys
import numpy as np
import torch
t, fixtures = sys.argv[1:]
sys.path.insert(0, fixtures)
from transformer_fixtures import rollout
m = torch.jit.load(json.load(open(t + "/train.json"))["path"]).eval()
x = torch.from_numpy(np.load(t + "/vitx.npy"))
heads = 4
store = []
h = m.patch_embed(x).flatten(2).transpose(1, 2)
h = torch.cat([m.class_token.expand(2, -1, -1), h], 1) + m.pos_embedding
for blk in m.blocks.children():
    u = blk.norm1(h)
    n, tk, d = u.shape
    q, k, v = blk.attn.qkv(u).reshape(n, tk, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) / (d // heads) ** 0.5, -1)
    a.retain_grad()
    store.append(a)
    h = h + blk.attn.proj((a @ v).transpose(1, 2).reshape(n, tk, d))
    h = h + blk.mlp(blk.norm2(h))
y = m.head(m.norm(h)[:, 0])
assert torch.allclose(y, m(x), atol=1e-5)
y.gather(1, y.argmax(1)[:, None]).sum().backward()
for i, a in enumerate(store):
    got = np.load(f"{t}/vatt/blocks.{i}.attn.attention_probs/attention.npy")
    assert got.shape == (2, 4, 50, 50) and np.abs(got - a.detach().numpy()).max() < 1e-5, i
ref = rollout([a.detach() for a in store], "mean", 0.0, 7).numpy()
got = np.load(t + "/vroll/attributions.npy")
assert got.shape == (2, 7, 7) and np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), np.abs(got - ref).max()
r = torch.eye(50, dtype=torch.float64).repeat(2, 1, 1)
for a in store:
    r = r + (a.grad.double() * a.detach().double()).clamp(min=0).mean(1) @ r
ref = r[:, 0, 1:].reshape(2, 7, 7).numpy()
got = np.load(t + "/vgrad/attributions.npy")
assert np.abs(got - ref).max() < 1e-4 * max(0.01, np.abs(ref).max()), np.abs(got - ref).max()
PY
unset CONVSCOPE_CACHE_DIR

# Bad requests: one clear message each.
lenet="$FIX/lenet_scripted.pt"
expect_fail 1 "no attention layers" attention --model "$lenet" --data "$FIX/lenet_scripted/input.npy" --index 0 --out "$T/bad1"
expect_fail 1 "holds no attention layer" attention --model "$vit" "${common[@]}" --layers conv_proj --out "$T/bad2"
expect_fail 1 "lies outside" attention --model "$vit" "${common[@]}" --query 4,0 --out "$T/bad3"
expect_fail 2 "--query takes ROW,COL" attention --model "$vit" "${common[@]}" --query 1 --out "$T/bad4"
expect_fail 2 "does not fit" describe --model "$vit" --input-shape 3,32,32 --grid 9x9
expect_fail 2 "--grid must be HxW" describe --model "$vit" --input-shape 3,32,32 --grid 9
expect_fail 1 "is not spatial" attribute --model "$vit" "${common[@]}" --method grad-cam --layer heads.head --out "$T/bad5"
expect_fail 1 "windowed" attribute --model "$swin" "${common[@]}" --method attention-rollout --out "$T/bad6"
expect_fail 2 "unknown token pooling" embed --model "$vit" "${common[@]}" --pool first --out "$T/bad7"
expect_fail 2 "unknown --arch" train --arch transformer --save "$T/bad8.pt"
for b in bad1 bad2 bad3 bad4 bad5 bad6 bad7 bad8.pt; do [ ! -e "$T/$b" ] || { echo "$b written after an error"; exit 1; }; done
echo "attention e2e ok"
