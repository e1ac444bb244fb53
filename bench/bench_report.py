#!/usr/bin/python3
"""The report on a model convscope did not train: torchvision's ResNet-18 (1000 classes, random
weights, scripted) at 224x224 over a folder of 40 images, with ImageNet preprocessing.

Runs `convscope report` twice in the same run: with its automatic settings (chosen from the
model's measured cost) and with the settings that were fixed before they were automatic
(eval 10000, scan 2000, map 2000 items; 128 feature visualisation steps at full size; occlusion
stride of half the patch; 32 attribution steps), and prints the wall time of each and the ratio.

Usage: /usr/bin/python3 bench/bench_report.py BUILD_DIR [WORK_DIR]   (BUILD_DIR/convscope)
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torchvision
from PIL import Image

build = sys.argv[1]
work = sys.argv[2] if len(sys.argv) > 2 else tempfile.mkdtemp(prefix="convscope-bench-report-")
binary = os.path.join(build, "convscope")
os.makedirs(work, exist_ok=True)
torch.manual_seed(0)
model_path = os.path.join(work, "resnet18.pt")
if not os.path.exists(model_path):
    torch.jit.script(torchvision.models.resnet18(weights=None).eval()).save(model_path)
images = os.path.join(work, "images")
if not os.path.exists(images):
    rng = np.random.RandomState(0)
    for k in range(40):
        cls = ("cat", "dog")[k % 2]
        os.makedirs(os.path.join(images, cls), exist_ok=True)
        yy, xx = np.meshgrid(np.linspace(0, 1, 240), np.linspace(0, 1, 320), indexing="ij")
        chans = [0.5 + 0.4 * np.sin(rng.uniform(2, 9) * xx + rng.uniform(2, 9) * yy + rng.uniform(0, 6))
                 for _ in range(3)]
        arr = (np.clip(np.stack(chans, -1) + rng.normal(0, 0.05, (240, 320, 3)), 0, 1) * 255).astype(np.uint8)
        Image.fromarray(arr).save(os.path.join(images, cls, f"{k:02d}.jpg"), quality=90)


def run(name, extra):
    out = os.path.join(work, name)
    cmd = [binary, "report", "--model", model_path, "--preprocess", "imagenet", "--data", images,
           "--out", out, "--threads", "2", "--json"] + extra
    t0 = time.time()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.time() - t0
    if res.returncode != 0:
        sys.exit(f"{name}: exit {res.returncode}: {res.stderr[-2000:]}")
    summary = json.loads(res.stdout)
    print(f"{name}: {wall:.1f} s, plan {json.dumps(summary['plan'])}", flush=True)
    print("  sections: " + ", ".join(f"{k} {v:.1f} s" for k, v in summary["stage_seconds"]), flush=True)
    return wall


auto = run("auto", [])
fixed = run("fixed", ["--eval-items", "10000", "--scan-items", "2000", "--map-items", "2000",
                      "--vis-steps", "128", "--vis-size", "0", "--occlusion-stride", "16",
                      "--attribution-steps", "32"])
print(f"fixed / auto: {fixed / auto:.2f}x (auto {auto:.1f} s, target at most 90 s)")
