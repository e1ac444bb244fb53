#!/usr/bin/env python3
"""Occlusion drops with the network's tail linearised: an idea for a faster approximate mode.

Usage: /usr/bin/python3 bench/occlusion_linear_tail.py OUT_DIR MODEL INPUT.npy PATCH STRIDE [IMAGES]

MODEL is a scripted torchvision ResNet (it needs the submodules conv1 .. layer4, avgpool, fc);
OUT_DIR an exact `convscope occlusion` run on its images (coarse.npy; baseline 0, target the
predicted class). For a cut after layer2 or layer3, every occluded image is computed exactly up
to the cut, and the rest of the network is replaced by its first-order expansion around the
clean image: drop ~ g . (a_clean - a_occluded), g = d logit / d a at the cut (one backward pass).
Prints the correlation with the exact drops and the SSIM of the pixel map (`map_ssim`'s
definition). Only the layers up to the cut would need recomputing, incrementally.
"""
import sys

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view

out_dir, model_path, input_path = sys.argv[1], sys.argv[2], sys.argv[3]
patch, stride = int(sys.argv[4]), int(sys.argv[5])
images = int(sys.argv[6]) if len(sys.argv) > 6 else 2
coarse = np.load(out_dir + "/coarse.npy").astype(np.float64)
py, px = coarse.shape[1:]
model = torch.jit.load(model_path).eval()
inputs = torch.from_numpy(np.load(input_path)).float()
size_y, size_x = inputs.shape[2], inputs.shape[3]


def pixel_map(drops):
    total = np.zeros((size_y, size_x))
    count = np.zeros((size_y, size_x))
    for y in range(py):
        for x in range(px):
            total[y * stride:y * stride + patch, x * stride:x * stride + patch] += drops[y, x]
            count[y * stride:y * stride + patch, x * stride:x * stride + patch] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def ssim(a, ref, win=7):
    span = ref.max() - ref.min() or 1.0
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    wa, wr = sliding_window_view(a, (win, win)), sliding_window_view(ref, (win, win))
    k = win * win / (win * win - 1)
    ma, mr = wa.mean((-1, -2)), wr.mean((-1, -2))
    va = k * ((wa * wa).mean((-1, -2)) - ma * ma)
    vr = k * ((wr * wr).mean((-1, -2)) - mr * mr)
    cv = k * ((wa * wr).mean((-1, -2)) - ma * mr)
    return float((((2 * ma * mr + c1) * (2 * cv + c2)) / ((ma * ma + mr * mr + c1) * (va + vr + c2))).mean())


def head(x, cut):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    for k in range(1, cut + 1):
        x = getattr(model, "layer%d" % k)(x)
    return x


def tail(a, cut):
    for k in range(cut + 1, 5):
        a = getattr(model, "layer%d" % k)(a)
    return model.fc(torch.flatten(model.avgpool(a), 1))


for i in range(images):
    x = inputs[i:i + 1]
    target = model(x).argmax(1).item()
    occluded = []
    for y in range(py):
        for xx in range(px):
            o = x.clone()
            o[:, :, y * stride:y * stride + patch, xx * stride:xx * stride + patch] = 0
            occluded.append(o)
    occluded = torch.cat(occluded)
    exact = pixel_map(coarse[i])
    for cut in (2, 3):
        clean = head(x, cut).detach().requires_grad_(True)
        tail(clean, cut)[0, target].backward()
        with torch.no_grad():
            drops = torch.cat([((clean - head(occluded[b:b + 128], cut)) * clean.grad).sum((1, 2, 3))
                               for b in range(0, len(occluded), 128)]).numpy().reshape(py, px)
        print("image %d, exact up to layer%d, linear after: correlation %.3f, SSIM %.3f"
              % (i, cut, np.corrcoef(drops.ravel(), coarse[i].ravel())[0, 1], ssim(pixel_map(drops), exact)))
