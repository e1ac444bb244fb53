#pragma once
// Nearest-neighbour search for t-SNE: exact brute force (blocked, SIMD), hnswlib shards for large
// N, and an exact grid search for 2-D embeddings (metrics). hnswlib's header defines non-inline
// functions, so it is included by tsne_knn.cpp only.
#include <cstdint>

#include "convscope/methods/tsne.hpp"
#include "methods/detail/tsne_parallel.hpp"

namespace convscope::detail {

// Exact k nearest neighbours of every row of x [n,d] (self excluded), nearest first, ties by
// index. Distances are recomputed directly for the final lists. O(n^2 d).
KnnGraph knn_exact(const float* x, int64_t n, int64_t d, int k, ThreadPool& pool);

// Approximate k nearest neighbours with hnswlib. The rows are split into min(threads, 4)
// contiguous shards, each indexed by one thread (deterministic), and every point is searched in
// every shard; the lists are merged.
KnnGraph knn_hnsw(const float* x, int64_t n, int64_t d, int k, const KnnOptions& options,
                  ThreadPool& pool);

// Exact k nearest neighbours in 2-D (y [n,2]) by a uniform grid and ring search.
KnnGraph knn_grid_2d(const float* y, int64_t n, int k, ThreadPool& pool);

// Squared Euclidean distance (SIMD where the CPU has it).
float squared_distance(const float* a, const float* b, int64_t d);

}  // namespace convscope::detail
