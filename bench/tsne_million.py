"""t-SNE of a million points: convscope's t-SNE (build/bench/bench_tsne) against FIt-SNE on the same
points, in one run: time, peak memory (GNU time's maximum resident set) and quality (10-NN label
accuracy and neighbour preservation, both embeddings scored by bench_tsne with the same
feature-space neighbours).

    /usr/bin/python3 bench/tsne_million.py --features F.npy --labels L.npy --fitsne DIR \
        [--bench build/bench/bench_tsne] [--copies 15] [--jitter 0.05] [--iterations 1000] [--threads 2]

F, L: the default model's features of Fashion-MNIST and their labels (`convscope embed --data
fashion-mnist:all --out e70k` writes features.npy; the labels are embedding.csv's column). The
points are `--copies` copies of them, each value moved by Gaussian noise of `--jitter` times its
column's standard deviation (70,000 x 15 = 1,050,000 points). DIR: a checkout of
KlugerLab/FIt-SNE with bin/fast_tsne built as its README says. Both run `--iterations` iterations
(250 of them with early exaggeration 12), perplexity 30, learning rate N/12, `--threads` threads.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

import numpy as np


def timed(cmd, **kw):
    """Runs cmd under GNU time; returns (seconds, peak resident memory in GiB, stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, **kw)
    seconds = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return seconds, kb / 2**20, p.stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", required=True)
    ap.add_argument("--labels", required=True)
    ap.add_argument("--fitsne", required=True)
    ap.add_argument("--bench", default="build/bench/bench_tsne")
    ap.add_argument("--copies", type=int, default=15)
    ap.add_argument("--jitter", type=float, default=0.05)
    ap.add_argument("--iterations", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    args = ap.parse_args()

    f = np.load(args.features, mmap_mode="r")
    y = np.load(args.labels)
    rng = np.random.default_rng(0)
    sd = f.std(0).astype(np.float32)
    n = len(f) * args.copies
    big = os.path.join(args.tmp, "tsne_million_x.npy")
    out = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(n, f.shape[1]))
    for c in range(args.copies):
        out[c * len(f):(c + 1) * len(f)] = f + rng.standard_normal(f.shape, dtype=np.float32) * (args.jitter * sd)
    out.flush()
    del out
    labels = os.path.join(args.tmp, "tsne_million_y.npy")
    np.save(labels, np.tile(y.astype(np.int64), args.copies))
    print(f"{n} points of {f.shape[1]} dimensions ({args.copies} jittered copies of {len(f)})", flush=True)

    # FIt-SNE first: its embedding is then scored by bench_tsne beside ours.
    sys.path.insert(0, args.fitsne)
    x = np.load(big, mmap_mode="r")
    fy = os.path.join(args.tmp, "tsne_million_fitsne.npy")
    script = (f"import sys, numpy as np; sys.path.insert(0, {args.fitsne!r}); from fast_tsne import fast_tsne; "
              f"x = np.load({big!r}).astype(np.float64); "
              f"y = fast_tsne(x, perplexity=30, max_iter={args.iterations}, nthreads={args.threads}, seed=42, "
              f"learning_rate={n / 12.0}); np.save({fy!r}, y.astype(np.float32))")
    ft, fm, _ = timed(["/usr/bin/python3", "-c", script], cwd=args.fitsne)
    print(f"FIt-SNE: {ft:.1f} s, peak memory {fm:.2f} GiB (the Python wrapper's float64 copy included)", flush=True)
    del x

    ct, cm, text = timed([args.bench, big, labels, "--threads", str(args.threads), "--iterations",
                          str(args.iterations), "--compare", fy])
    print(text, end="")
    total = float(re.search(r"run 1: total ([0-9.]+) s", text).group(1))
    print(f"convscope: t-SNE {total:.1f} s (the whole bench_tsne run {ct:.1f} s, with the scoring of both "
          f"embeddings), peak memory {cm:.2f} GiB", flush=True)
    print(f"FIt-SNE / convscope time: {ft / total:.2f}x", flush=True)


if __name__ == "__main__":
    main()
