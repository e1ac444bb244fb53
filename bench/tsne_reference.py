#!/usr/bin/env python3
"""Quality reference for bench_tsne: scikit-learn's Barnes-Hut t-SNE on the same features.

Usage: /usr/bin/python3 bench/tsne_reference.py features.npy labels.npy [iterations=1000] [jobs=2]

Prints the time of the t-SNE step and, with the definitions convscope's metrics.json uses, the
leave-one-out 10-NN label accuracy in 2-D (majority of the 10 nearest, ties to the smaller label)
and the mean share of each point's 10 nearest neighbours in feature space that stay among its 10
nearest in 2-D. scikit-learn comes from Debian (python3-sklearn, installed by scripts/setup.sh).
"""
import sys
import time

import numpy as np
from sklearn.manifold import TSNE
from sklearn.neighbors import NearestNeighbors

features = np.load(sys.argv[1]).astype(np.float32)
labels = np.load(sys.argv[2])
iterations = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
jobs = int(sys.argv[4]) if len(sys.argv) > 4 else 2

start = time.time()
# The iteration count is n_iter before scikit-learn 1.5 and max_iter after.
steps = {"max_iter" if "max_iter" in TSNE().get_params() else "n_iter": iterations}
embedding = TSNE(perplexity=30, init="pca", learning_rate="auto", random_state=0, n_jobs=jobs,
                 method="barnes_hut", **steps).fit_transform(features)
seconds = time.time() - start

near_f = NearestNeighbors(n_neighbors=11, n_jobs=jobs).fit(features).kneighbors(features, return_distance=False)[:, 1:]
near_y = NearestNeighbors(n_neighbors=11, n_jobs=jobs).fit(embedding).kneighbors(embedding, return_distance=False)[:, 1:]
accuracy = np.mean([np.bincount(labels[near_y[i]], minlength=10).argmax() == labels[i] for i in range(len(labels))])
preservation = np.mean([len(set(near_f[i]) & set(near_y[i])) / 10 for i in range(len(labels))])
print("scikit-learn Barnes-Hut t-SNE: n=%d, %.1f s, 10-NN accuracy %.4f, neighbour preservation %.4f"
      % (len(labels), seconds, accuracy, preservation))
