#!/usr/bin/env python3
"""A ResNet-18 with trained weights for the 224x224 occlusion benchmark, made offline.

torchvision's ResNet-18 (random initialisation, 10 classes) trained briefly on Fashion-MNIST
images upscaled to 224x224 and repeated to 3 channels, normalised with ImageNet's mean and std.
Pretrained ImageNet weights need a download; this gives a network whose units respond to image
structure (objects, edges) rather than to noise, which is what occlusion maps are about.

Usage: /usr/bin/python3 bench/train_resnet18.py OUT_DIR [train_images=1536] [seed=0]
Writes OUT_DIR/resnet18_fashion.pt (TorchScript, eval mode) and OUT_DIR/resnet18_fashion_input.npy
(the first 4 test images, preprocessed, float32 [4,3,224,224]); prints the test accuracy.
About 10 minutes on 2 cores.
"""
import gzip
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

out_dir = sys.argv[1]
n_train = int(sys.argv[2]) if len(sys.argv) > 2 else 1536
seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
torch.manual_seed(seed)
torch.set_num_threads(os.cpu_count() or 2)

root = "/usr/share/datasets/fashion-mnist"


def load(prefix):
    images = np.frombuffer(gzip.open(f"{root}/{prefix}-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    labels = np.frombuffer(gzip.open(f"{root}/{prefix}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return images.reshape(-1, 1, 28, 28), labels.astype(np.int64)


mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def preprocess(u8):
    x = torch.from_numpy(u8.astype(np.float32) / 255.0)
    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - mean) / std


train_x, train_y = load("train")
test_x, test_y = load("t10k")
order = np.random.RandomState(seed).permutation(len(train_y))[:n_train]
model = torchvision.models.resnet18(num_classes=10)
optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
batch = 32
model.train()
start = time.time()
for step, i in enumerate(range(0, n_train, batch)):
    idx = order[i:i + batch]
    x, y = preprocess(train_x[idx]), torch.from_numpy(train_y[idx])
    loss = F.cross_entropy(model(x), y)
    optimiser.zero_grad()
    loss.backward()
    optimiser.step()
    if step % 8 == 0:
        print(f"step {step}: loss {loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
model.eval()
with torch.no_grad():
    correct = 0
    for i in range(0, 256, 64):
        correct += (model(preprocess(test_x[i:i + 64])).argmax(1).numpy() == test_y[i:i + 64]).sum()
print(f"test accuracy on 256 images: {correct / 256:.3f}")
os.makedirs(out_dir, exist_ok=True)
torch.jit.script(model).save(os.path.join(out_dir, "resnet18_fashion.pt"))
np.save(os.path.join(out_dir, "resnet18_fashion_input.npy"), preprocess(test_x[:4]).numpy().astype(np.float32))
print("wrote", os.path.join(out_dir, "resnet18_fashion.pt"))
