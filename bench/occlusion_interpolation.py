#!/usr/bin/env python3
"""How well can an occlusion map be interpolated from a subset of its positions?

Usage: /usr/bin/python3 bench/occlusion_interpolation.py OUT_DIR PATCH STRIDE [MODEL INPUT.npy]

OUT_DIR is the output of an exact `convscope occlusion` run (coarse.npy [N,PY,PX], square grid,
baseline 0). For each image it keeps the exact drops on every s-th position (s = 2, 3, 4, plus the
last row and column), interpolates the others (linear and cubic) and reports the SSIM of the
resulting pixel map against the exact one, with the definition `map_ssim` uses (7x7 uniform
window, data range of the exact map). With MODEL and INPUT.npy (the images of the run) it also
tries a control variate: a first-order estimate of every drop (gradient of the target logit times
the input, summed over the window; one backward pass) whose residual is interpolated instead.
This bounds what any scheme that evaluates only those positions can reach, whatever the speed.
"""
import sys

import numpy as np
from scipy.interpolate import RegularGridInterpolator

import occlusion_maps  # beside this script

out_dir, patch, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
coarse = np.load(out_dir + "/coarse.npy").astype(np.float64)
n_img, py, px = coarse.shape
size_y, size_x = (py - 1) * stride + patch, (px - 1) * stride + patch


def pixel_map(drops):
    return occlusion_maps.pixel_map(drops, patch, stride, size_y, size_x)


ssim = occlusion_maps.ssim


def subsample(drops, step, method):
    ys = sorted(set(range(0, py, step)) | {py - 1})
    xs = sorted(set(range(0, px, step)) | {px - 1})
    f = RegularGridInterpolator((ys, xs), drops[np.ix_(ys, xs)], method=method)
    grid = np.stack(np.meshgrid(np.arange(py), np.arange(px), indexing="ij"), -1)
    return f(grid), len(ys) * len(xs)


taylor = None
if len(sys.argv) > 5:
    import torch
    model = torch.jit.load(sys.argv[4]).eval()
    images = torch.from_numpy(np.load(sys.argv[5])[:n_img]).float()
    taylor = []
    for i in range(n_img):
        x = images[i:i + 1].clone().requires_grad_(True)
        logits = model(x)
        logits[0, logits.argmax(1).item()].backward()
        g = (x.grad * x).detach()[0].sum(0).numpy()
        taylor.append(np.array([[g[y * stride:y * stride + patch, xx * stride:xx * stride + patch].sum()
                                 for xx in range(px)] for y in range(py)]))

print("image  step  evaluated/%d  SSIM linear  SSIM cubic%s" % (py * px, "  SSIM linear + control variate" if taylor else ""))
for i in range(n_img):
    exact = pixel_map(coarse[i])
    for step in (2, 3, 4):
        lin, k = subsample(coarse[i], step, "linear")
        cub, _ = subsample(coarse[i], step, "cubic")
        row = "%5d  %4d  %12d  %11.3f  %10.3f" % (i, step, k, ssim(pixel_map(lin), exact), ssim(pixel_map(cub), exact))
        if taylor:
            res, _ = subsample(coarse[i] - taylor[i], step, "linear")
            row += "  %30.3f" % ssim(pixel_map(res + taylor[i]), exact)
        print(row)
