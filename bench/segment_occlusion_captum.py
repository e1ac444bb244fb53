"""Occlusion with a region target on the built-in segmentation model: convscope's command line
against Captum's Occlusion, runs interleaved, medians of the per-run ratios; also checks that the
two give the same pixel maps.

    /usr/bin/python3 bench/segment_occlusion_captum.py --captum DIR --convscope build/convscope \
        --model SEGMENT.pt --scenes SCENES.npy [--runs 3] [--patch 8] [--stride 2] [--threads 2]

DIR holds the `captum` package (a checkout of pytorch/captum; it needs Debian's python3-tqdm and
python3-matplotlib). SCENES.npy: model inputs [K,1,64,64], written by
`build/bench/bench_segment_occlusion --save-inputs SCENES.npy`. The model is the cached
`segment-fashion-mnist.pt` (`convscope train --arch segment`).

The target is what `--target pred --region pred` means: per scene, the class predicted at the most
pixels and the mean of its logit over those pixels, fixed from the clean scene. Captum has no
region target: its forward function is that mean (what its users write), and it is attributed one
scene at a time (a forward function with per-scene regions cannot take Captum's mixed batches of
several scenes). Captum runs at each of --batches perturbations per evaluation; the fastest counts.
Both use a zero baseline and average the drops of the windows covering a pixel.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def captum_maps(occlusion_cls, model, x, patch, stride, per_eval):
    maps = []
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        with torch.no_grad():
            pred = model(xi).argmax(1)[0]
        c = int(torch.bincount(pred.flatten()).argmax())
        region = (pred == c).float()
        region = region / region.sum()

        def forward(batch, c=c, region=region):
            return (model(batch)[:, c] * region).sum((1, 2))

        occ = occlusion_cls(forward)
        with torch.no_grad():
            a = occ.attribute(xi, sliding_window_shapes=(x.shape[1], patch, patch), strides=(x.shape[1], stride, stride),
                              baselines=0, perturbations_per_eval=per_eval)
        maps.append(a[0, 0].numpy())
    return np.stack(maps)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--captum", required=True)
    ap.add_argument("--convscope", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--scenes", required=True)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--stride", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batches", default="16,64,256")
    a = ap.parse_args()
    sys.path.insert(0, a.captum)
    from captum.attr import Occlusion

    torch.set_num_threads(a.threads)
    model = torch.jit.load(a.model).eval()
    x = torch.from_numpy(np.load(a.scenes))
    k = x.shape[0]
    out = tempfile.mkdtemp()
    cmd = [a.convscope, "occlusion", "--model", a.model, "--data", a.scenes, "--indices", f"0:{k}", "--target",
           "pred", "--region", "pred", "--patch", str(a.patch), "--stride", str(a.stride), "--threads",
           str(a.threads), "--out", out]

    def convscope_run():
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t

    batches = [int(b) for b in a.batches.split(",")]
    convscope_run()  # warm-up (file caches)
    ref = captum_maps(Occlusion, model, x, a.patch, a.stride, batches[0])
    ours = np.load(os.path.join(out, "occlusion.npy"))[:, 0]
    scale = max(np.abs(ref).max(), 1e-12)
    print(f"segment_occlusion_captum: {k} scenes of 64x64, patch {a.patch}, stride {a.stride}, {a.threads} threads; "
          f"load average at start: {open('/proc/loadavg').read().strip()}")
    print(f"  pixel maps: max |convscope - Captum| / max |Captum| = {np.abs(ours - ref).max() / scale:.2e}")
    ratios, ours_t, theirs_t = [], [], []
    for r in range(a.runs):
        t_ours = convscope_run()
        t_captum = {}
        for b in batches:
            t = time.perf_counter()
            captum_maps(Occlusion, model, x, a.patch, a.stride, b)
            t_captum[b] = time.perf_counter() - t
        best = min(t_captum.values())
        ours_t.append(t_ours)
        theirs_t.append(best)
        ratios.append(best / t_ours)
        print(f"  run {r + 1}: convscope {t_ours:.3f} s (whole command), Captum " +
              ", ".join(f"{t_captum[b]:.3f} s at {b}" for b in batches) + f" -> {best / t_ours:.2f}x")
        sys.stdout.flush()
    print(f"  median: convscope {np.median(ours_t):.3f} s, Captum {np.median(theirs_t):.3f} s (fastest batch); "
          f"ratio (median of per-run ratios) {np.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
