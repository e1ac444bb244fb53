"""Helpers shared by the occlusion study scripts in bench/: the pixel map of a grid of drops and
the SSIM that convscope's `map_ssim` computes."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def pixel_map(drops, patch, stride, size_y, size_x):
    """Per pixel, the mean drop of the windows that cover it (0 where none does)."""
    total = np.zeros((size_y, size_x))
    count = np.zeros((size_y, size_x))
    for y in range(drops.shape[0]):
        for x in range(drops.shape[1]):
            total[y * stride:y * stride + patch, x * stride:x * stride + patch] += drops[y, x]
            count[y * stride:y * stride + patch, x * stride:x * stride + patch] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def ssim(a, ref, win=7):
    """Mean SSIM over 7x7 uniform windows, data range of the reference (as map_ssim)."""
    span = ref.max() - ref.min() or 1.0
    c1, c2 = (0.01 * span) ** 2, (0.03 * span) ** 2
    wa, wr = sliding_window_view(a, (win, win)), sliding_window_view(ref, (win, win))
    k = win * win / (win * win - 1)
    ma, mr = wa.mean((-1, -2)), wr.mean((-1, -2))
    va = k * ((wa * wa).mean((-1, -2)) - ma * ma)
    vr = k * ((wr * wr).mean((-1, -2)) - mr * mr)
    cv = k * ((wa * wr).mean((-1, -2)) - ma * mr)
    return float((((2 * ma * mr + c1) * (2 * cv + c2)) / ((ma * ma + mr * mr + c1) * (va + vr + c2))).mean())
