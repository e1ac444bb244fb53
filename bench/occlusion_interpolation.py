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
from numpy.lib.stride_tricks import sliding_window_view
from scipy.interpolate import RegularGridInterpolator

out_dir, patch, stride = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
coarse = np.load(out_dir + "/coarse.npy").astype(np.float64)
n_img, py, px = coarse.shape
size_y, size_x = (py - 1) * stride + patch, (px - 1) * stride + patch


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
