#pragma once
// The pieces of t-SNE shared by its files (affinities, gradients, PCA, metrics, the
// optimisation): input checks and the blocks that run on a caller's thread pool. The public
// functions in tsne.hpp check their arguments and call these.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "convscope/methods/tsne.hpp"
#include "methods/detail/tsne_parallel.hpp"

namespace convscope::detail {

// Throws Error naming the first NaN/Inf of x [n,d] (what: "feature", "embedding").
void check_finite(const float* x, int64_t n, int64_t d, const char* what);
// t [N,D] floating as a contiguous float32 CPU tensor; Error naming `name` otherwise.
at::Tensor as_float_matrix(const at::Tensor& t, const char* name);
// Whether the neighbours are searched exactly (else by HNSW) for n points.
bool use_exact_knn(const KnnOptions& o, int64_t n);
// Error unless p is a well-formed CSR matrix of at least 2 rows.
void check_affinities(const SparseMatrix& p);

// P_{j|i} over each point's neighbours, calibrated to the perplexity (betas: per row, optional).
SparseMatrix conditional_from_knn(const KnnGraph& knn, double perplexity, ThreadPool& pool,
                                  std::vector<double>* betas, AffinityKernel kernel);
// P_{j|i} over all other points of x [n,d].
SparseMatrix all_pairs_conditional(const float* x, int64_t n, int64_t d, double perplexity, ThreadPool& pool,
                                   AffinityKernel kernel);
// P = (C + C^T) / 2n.
SparseMatrix symmetrise(const SparseMatrix& c, ThreadPool& pool);

// grad_i = 4 (exaggeration * attr_i - rep_i / z) where attr_i = sum_j P_ij q_ij (y_i - y_j).
void combine_gradient(const SparseMatrix& p, const double* y, double exaggeration, const double* rep, double z,
                      double* grad, ThreadPool& pool);
// Exact repulsion rep_i = sum_j q_ij^2 (y_i - y_j); returns Z. O(n^2).
double exact_repulsion(const double* y, int64_t n, double* rep, ThreadPool& pool);
// KL(P || Q) of the layout y [n,2] for the normalisation z.
double kl_divergence(const SparseMatrix& p, const double* y, double z, ThreadPool& pool);

// The first `components` principal components of x [n,d].
PcaResult pca_impl(const float* x, int64_t n, int64_t d, int components, ThreadPool& pool);

}  // namespace convscope::detail
