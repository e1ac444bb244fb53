#!/usr/bin/python3
"""SSIM reference for tests/test_occlusion.cpp, written as scikit-image computes its default
structural_similarity (Wang et al. 2004): a uniform 7x7 window (the largest odd size <= 7 that
fits), sample (co)variances, K1 = 0.01, K2 = 0.03, data_range = the reference's value range,
and the mean over the windows that lie fully inside the map.

Usage: ssim_ref.py A.npy REF.npy   (prints the SSIM of A against REF)
"""
import sys

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def ssim(a, ref):
    a = a.astype(np.float64)
    ref = ref.astype(np.float64)
    win = min(7, *a.shape)
    if win % 2 == 0:
        win -= 1
    data_range = ref.max() - ref.min()
    if data_range <= 0:
        data_range = 1.0
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    wa = sliding_window_view(a, (win, win))
    wr = sliding_window_view(ref, (win, win))
    mu_a = wa.mean(axis=(2, 3))
    mu_r = wr.mean(axis=(2, 3))
    ddof = 1 if win * win > 1 else 0
    var_a = wa.reshape(*wa.shape[:2], -1).var(axis=2, ddof=ddof)
    var_r = wr.reshape(*wr.shape[:2], -1).var(axis=2, ddof=ddof)
    n = win * win
    cov = ((wa * wr).reshape(*wa.shape[:2], -1).sum(axis=2) - n * mu_a * mu_r) / max(n - ddof, 1)
    s = ((2 * mu_a * mu_r + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_r ** 2 + c1) * (var_a + var_r + c2))
    return float(s.mean())


if __name__ == "__main__":
    print(repr(ssim(np.load(sys.argv[1]), np.load(sys.argv[2]))))
