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

import occlusion_maps  # beside this script

out_dir, model_path, input_path = sys.argv[1], sys.argv[2], sys.argv[3]
patch, stride = int(sys.argv[4]), int(sys.argv[5])
images = int(sys.argv[6]) if len(sys.argv) > 6 else 2
coarse = np.load(out_dir + "/coarse.npy").astype(np.float64)
py, px = coarse.shape[1:]
model = torch.jit.load(model_path).eval()
inputs = torch.from_numpy(np.load(input_path)).float()
size_y, size_x = inputs.shape[2], inputs.shape[3]


def pixel_map(drops):
    return occlusion_maps.pixel_map(drops, patch, stride, size_y, size_x)


ssim = occlusion_maps.ssim


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
