#!/usr/bin/python3
"""Writes the transformers the benchmarks time: torchvision's ViT-B/16 (scripted) and Swin-T
(traced), with random weights (timing does not depend on them; the head is drawn at random
because torchvision starts it at zero). Usage: /usr/bin/python3 bench/make_vit_models.py OUTDIR"""
import os
import sys

import torch
import torchvision

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
torch.manual_seed(0)
vit = torchvision.models.vit_b_16(weights=None).eval()
with torch.no_grad():
    vit.heads.head.weight.normal_(0, 0.02)
torch.jit.script(vit).save(os.path.join(out, "vit_b_16_scripted.pt"))
swin = torchvision.models.swin_t(weights=None).eval()
torch.jit.trace(swin, torch.randn(1, 3, 224, 224)).save(os.path.join(out, "swin_t_traced.pt"))
print("wrote", out)
