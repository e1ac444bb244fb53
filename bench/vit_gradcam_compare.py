#!/usr/bin/python3
"""Grad-CAM on ViT-B/16 (224x224, one image, 2 threads): pytorch-grad-cam (the tool users pick for
transformer CAMs) against convscope, in one run. The same weights on both sides: the eager
torchvision model is built exactly as bench/make_vit_models.py builds the scripted file. Both take
the last block's first norm with the class token dropped and the 14x14 grid restored; the maps are
compared after pytorch-grad-cam's min-max scaling. convscope's time comes from bench_attention in
the same run.

Usage: /usr/bin/python3 bench/vit_gradcam_compare.py PYTORCH_GRAD_CAM_CHECKOUT VIT_DIR BUILD_DIR
(VIT_DIR: bench/make_vit_models.py's output; the checkout: `fetch` of jacobgil/pytorch-grad-cam,
`git archive HEAD pytorch_grad_cam`). Modules only its other methods import (ttach, sklearn) are
given empty stand-ins when missing."""
import os
import subprocess
import sys
import time
import types

import numpy as np
import torch
import torchvision

checkout, vit_dir, build = sys.argv[1:4]
sys.path.insert(0, checkout)
for name in ("ttach", "sklearn", "sklearn.decomposition"):
    try:
        __import__(name)
    except ImportError:
        mod = types.ModuleType(name)
        for attr in ("KernelPCA", "Compose", "HorizontalFlip", "Multiply", "VerticalFlip", "Rotate90"):
            setattr(mod, attr, lambda *a, **k: None)
        sys.modules[name] = mod
from pytorch_grad_cam import GradCAM  # noqa: E402

torch.set_num_threads(2)
torch.manual_seed(0)
vit = torchvision.models.vit_b_16(weights=None).eval()
with torch.no_grad():
    vit.heads.head.weight.normal_(0, 0.02)
torch.manual_seed(0)
x = torch.randn(1, 3, 224, 224)


def reshape(t):  # [N,197,768] -> [N,768,14,14], class token dropped
    return t[:, 1:].reshape(t.size(0), 14, 14, t.size(2)).permute(0, 3, 1, 2)


cam = GradCAM(model=vit, target_layers=[vit.encoder.layers[-1].ln_1], reshape_transform=reshape)
theirs = cam(input_tensor=x, targets=None)[0]
times = []
for _ in range(5):
    t0 = time.perf_counter()
    cam(input_tensor=x, targets=None)
    times.append(time.perf_counter() - t0)
t_theirs = float(np.median(times))

# convscope on the same model and input (the scripted file; the input drawn with the same seed).
np.save("/tmp/vit_gradcam_x.npy", x.numpy())
out = "/tmp/vit_gradcam_out"
subprocess.run([os.path.join(build, "convscope"), "attribute", "--model", os.path.join(vit_dir, "vit_b_16_scripted.pt"),
                "--input-shape", "3,224,224", "--data", "/tmp/vit_gradcam_x.npy", "--index", "0", "--method", "grad-cam",
                "--threads", "2", "--out", out], check=True, capture_output=True)
ours = np.load(os.path.join(out, "heat.npy"))[0]
ours = (ours - ours.min()) / max(ours.max() - ours.min(), 1e-12)
print(f"max |pytorch-grad-cam - convscope| after min-max scaling: {np.abs(theirs - ours).max():.2e}")
bench = subprocess.run([os.path.join(build, "bench", "bench_attention"), os.path.join(vit_dir, "vit_b_16_scripted.pt"),
                        "--runs", "5"], check=True, capture_output=True, text=True).stdout
t_ours = float([l for l in bench.splitlines() if "grad-cam" in l][0].split()[4])
print(bench.strip())
print(f"pytorch-grad-cam GradCAM: {t_theirs:.3f} s, convscope grad-cam: {t_ours:.3f} s, ratio {t_theirs / t_ours:.2f}x")
