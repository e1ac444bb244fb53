#pragma once
// t-SNE (van der Maaten & Hinton 2008) written for convscope: places N feature vectors in 2-D so
// that points that are near in feature space stay near. Used by `convscope embed` (dataset maps).
//
// Pipeline and cost (N points, D dimensions, k = min(N-1, 3*perplexity) neighbours):
//   1. optional PCA to `pca_dims` dimensions                         O(N*D^2 + D^3)
//   2. k nearest neighbours: blocked SIMD brute force up to 150,000 points, else hnswlib
//      (for 70,000 x 128 the brute force is the faster one, and exact)  O(N^2*D / 2)
//   3. perplexity-calibrated Gaussian affinities, symmetrised, CSR    O(N*k)
//   4. gradient descent with momentum, gains and early exaggeration; the gradient is exact
//      O(N^2) below 1000 points, else FFT-accelerated interpolation (Linderman et al., Nature
//      Methods 2019) O(N*k + G^2 log G) per iteration, G ~ 3 x the embedding's extent.
// Deterministic: the same input, options, seed and thread count give the same bytes.
// Threads: options.threads workers (0 = all cores), split statically over points.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "convscope/runtime/run_context.hpp"

namespace convscope {

// Square sparse matrix in CSR form: row i holds col[row_ptr[i] .. row_ptr[i+1]) (ascending)
// with values val[...]. Used for the affinities P.
struct SparseMatrix {
    int64_t n = 0;                 // rows == columns
    std::vector<int64_t> row_ptr;  // [n+1]
    std::vector<int32_t> col;      // [nnz]
    std::vector<float> val;        // [nnz]
    int64_t nnz() const { return int64_t(col.size()); }
};

// k nearest neighbours of every point, self excluded, nearest first (ties by index).
struct KnnGraph {
    int64_t n = 0;
    int k = 0;
    std::vector<int32_t> index;    // [n,k] row-major
    std::vector<float> distance2;  // [n,k] squared Euclidean distances
};

// The kernel that turns the distances to a point's neighbours into its affinities (the width
// beta_i calibrated to the perplexity either way). Gaussian: exp(-beta_i |x_i - x_j|^2), the
// t-SNE paper's. Exponential: exp(-beta_i |x_i - x_j|), what FIt-SNE 1.2 computes (its
// perplexity search reads the Euclidean distances of its neighbour search as squared ones): for
// maps comparable to FIt-SNE's (bench/RESULTS.md).
enum class AffinityKernel { Gaussian, Exponential };

struct KnnOptions {
    enum class Method { Auto, Exact, Hnsw };
    // Auto: exact brute force when n <= exact_max_n, else hnswlib. Both costs grow with d alike;
    // the blocked SIMD brute force (n^2 d / 2 multiply-adds, each pair once) beats hnswlib
    // (M=16, ef_construction=200, ef=180) up to a few 100,000 points: for 70,000 x 128 it takes
    // about 14 s of CPU time against 49 s for hnswlib, whose recall there is 1.0 as well.
    Method method = Method::Auto;
    int64_t exact_max_n = 150000;
    // hnswlib graph parameters; hnsw_ef = 0 means max(2k, 100). The data is split into one
    // index per thread (at most 4), each built by one thread, so the result does not depend on
    // scheduling; every point is searched in every shard.
    int hnsw_m = 16;
    int hnsw_ef_construction = 200;
    int hnsw_ef = 0;
    uint64_t seed = 42;
    int threads = 0;  // 0 = all hardware threads
};

// Options of the FFT-accelerated repulsive forces: the embedding's bounding square is split into
// `intervals` per side (at least min_intervals, and none wider than max_interval_width), each
// with `nodes_per_interval` equispaced Lagrange interpolation nodes.
struct FftOptions {
    int nodes_per_interval = 3;
    int min_intervals = 50;
    double max_interval_width = 1.0;
};

struct TsneOptions {
    int dims = 2;              // only 2 is supported
    double perplexity = 30.0;  // needs 3*perplexity < N-1
    // Total, including the early exaggeration phase. 0 = auto: tsne_auto_iterations(N).
    int iterations = 0;
    int early_exaggeration_iters = 250;
    double early_exaggeration = 12.0;
    double exaggeration = 1.0;    // after the early phase (>1 gives tighter clusters)
    // 0 = auto: max(N / early_exaggeration, 50), the rate of Belkina et al. (2019) that FIt-SNE
    // and openTSNE use; it lets large N converge in the usual number of iterations.
    double learning_rate = 0.0;
    double momentum_early = 0.5;  // during early exaggeration
    double momentum = 0.8;        // afterwards
    double min_gain = 0.01;
    // The largest distance a point moves in one iteration (FIt-SNE's max_step_norm, 5 there);
    // 0 = no limit, the default (at 70,000 and 1,050,000 points 5 changed neither the KL nor
    // the neighbour preservation, bench/RESULTS.md).
    double max_step = 0.0;

    // Exact: O(N^2) gradient with affinities over all pairs (at most 20,000 points); Fft:
    // interpolation-accelerated repulsion with affinities over the k nearest neighbours.
    // Auto: Exact when N < exact_max_n.
    enum class Gradient { Auto, Exact, Fft };
    Gradient gradient = Gradient::Auto;
    int64_t exact_max_n = 1000;
    FftOptions fft;

    // Initial layout: the first two principal components scaled so that the first has standard
    // deviation 1e-4 (openTSNE's convention), or N(0, 1e-4^2) from the seed.
    enum class Init { Pca, Random };
    Init init = Init::Pca;
    int pca_dims = 0;  // >0: reduce the features to this many PCs first

    AffinityKernel kernel = AffinityKernel::Gaussian;

    // Nearest neighbours for the affinities (not used by the exact gradient). The seed and
    // thread count of this struct are ignored: the run context's apply.
    KnnOptions knn;
};

struct TsneResult {
    at::Tensor embedding;        // [N,2] float32
    double kl_divergence = 0.0;  // KL(P||Q) at the end (with the approximate Z for Fft)
    double learning_rate = 0.0;  // the one used (after "auto")
    int iterations = 0;          // the number run (after "auto")
    bool exact = false;          // which gradient was used
    int neighbours = 0;          // k per point (N-1 for the exact gradient)
    // The feature-space neighbour lists used for the affinities (nearest first; in the PCA
    // space when pca_dims > 0). Empty for the exact gradient. Reusable for the metrics below.
    KnnGraph knn;
    // Wall-clock seconds per stage.
    double pca_seconds = 0.0;  // preprocessing and PCA initialisation
    double neighbours_seconds = 0.0;
    double affinities_seconds = 0.0;
    double optimisation_seconds = 0.0;
};

// Runs t-SNE on x [n,d] float32, row-major. Throws Error for n < 2, d < 1, a non-finite value
// (names the first one); UsageError (an Error) for a perplexity too large for n (names the
// largest allowed) and other bad options. The context's progress gets the fraction done
// (neighbours 0-0.1, affinities -0.12, then every 10 iterations) and may cancel (Cancelled); its
// seed draws the random initialisation and hnswlib's graphs; its threads (0: LibTorch's intra-op
// count) split the work. The same seed and thread count give the same bytes.
// Peak memory besides the features: about 4 KB per point with k = 90 (300 MB for 70,000).
TsneResult tsne(const float* x, int64_t n, int64_t d, const TsneOptions& options = {},
                const RunContext& context = {});
// features_nd [N,D], any floating dtype (converted to float32), CPU.
TsneResult tsne(const at::Tensor& features_nd, const TsneOptions& options = {}, const RunContext& context = {});

// The default number of iterations for n points: 1000 (FIt-SNE's default) up to 20,000 points;
// above that one more per 125 points, at most 2000 (70,000 points: 1400). Large maps keep
// unfolding after 1000 iterations: on the default model's 70,000 Fashion-MNIST features,
// neighbour preservation rises from 0.377 at 1000 to 0.386 at 1400 while 10,000 points gain
// less than 0.002 (bench/RESULTS.md).
int tsne_auto_iterations(int64_t n);

// --- building blocks (exposed for tests and other methods) ---------------------------------

// k nearest neighbours of each row of x [n,d] among the other rows (squared Euclidean). The
// exact method gives the same lists for any thread count; hnswlib's depend on it (shards).
KnnGraph nearest_neighbours(const float* x, int64_t n, int64_t d, int k,
                            const KnnOptions& options = {});

// Conditional affinities P_{j|i} = exp(-beta_i d_ij^2) / sum_j(...) (Exponential: d_ij for
// d_ij^2) over each point's neighbours, with beta_i found (Newton steps inside a bisection
// bracket) so that the row's entropy (natural log) is log(perplexity) within 1e-5. Rows sum to
// 1. `betas` (if given) receives beta_i [n]. O(n k) per step, about 5 steps.
SparseMatrix conditional_affinities(const KnnGraph& knn, double perplexity, int threads = 0,
                                    std::vector<double>* betas = nullptr,
                                    AffinityKernel kernel = AffinityKernel::Gaussian);
// The same over all pairs (for the exact gradient): O(n^2 d) time, O(n^2) memory.
SparseMatrix conditional_affinities_all_pairs(const float* x, int64_t n, int64_t d, double perplexity,
                                              int threads = 0, AffinityKernel kernel = AffinityKernel::Gaussian);
// P = (C + C^T) / (2n): symmetric, sums to 1.
SparseMatrix symmetrise_affinities(const SparseMatrix& conditional);

// Gradient of KL(P||Q) w.r.t. the embedding y [n,2] (float64) into grad [n,2]:
//   grad_i = 4 sum_j (exaggeration * P_ij - q_ij / Z) q_ij (y_i - y_j),  q_ij = 1/(1+|y_i-y_j|^2)
// Returns Z = sum_{i != j} q_ij. Exact version: O(n^2).
double tsne_gradient_exact(const SparseMatrix& p, const double* y, double exaggeration,
                           double* grad, int threads = 0);
// Same with the repulsive part and Z from FFT-accelerated interpolation: O(n*k + G^2 log G).
double tsne_gradient_fft(const SparseMatrix& p, const double* y, double exaggeration, double* grad,
                         const FftOptions& fft = {}, int threads = 0);
// KL(P||Q) = sum P_ij log(P_ij Z / q_ij) for a given normalisation Z (from a gradient call).
double tsne_kl_divergence(const SparseMatrix& p, const double* y, double z, int threads = 0);
// KL(P||Q) with Z computed exactly: O(n^2).
double tsne_kl_divergence_exact(const SparseMatrix& p, const double* y, int threads = 0);

// Principal components of x [n,d]: `projected` [n,c] float32 (centred data times components),
// `components` [c,d] float64 (unit rows, sign fixed so each row's largest entry is positive),
// `variance` [c] float64 (eigenvalues of the covariance, descending). O(n d^2 + d^3).
struct PcaResult {
    at::Tensor projected, components, variance;
};
PcaResult pca(const float* x, int64_t n, int64_t d, int components, int threads = 0);

// --- quality metrics for an embedding (metrics.json) ---------------------------------------

// Leave-one-out k-NN classification accuracy in the embedding: each point's label is predicted
// by a majority vote of its k nearest other points (ties: the smallest label, as scikit-learn).
// embedding [n,2] float32, labels [n]. Exact grid search, O(n k) for spread-out data.
double knn_label_accuracy(const float* embedding, const int64_t* labels, int64_t n, int k = 10,
                          int threads = 0);
// embedding_n2 [N,2] floating; labels_n [N] integer.
double knn_label_accuracy(const at::Tensor& embedding_n2, const at::Tensor& labels_n, int k = 10,
                          int threads = 0);

// Mean share of each point's k nearest neighbours in feature space that are also among its k
// nearest in the embedding. Feature neighbours from nearest_neighbours() with KnnOptions'
// Auto rule (seconds for 70,000 x 128): after tsne(), prefer the overload below.
double neighbour_preservation(const float* features, int64_t d, const float* embedding, int64_t n,
                              int k = 10, int threads = 0);
// The same with precomputed feature-space neighbours (e.g. TsneResult::knn; its first k
// columns are used): O(n k) plus the 2-D search, about 0.1 s for 70,000 points.
double neighbour_preservation(const KnnGraph& feature_knn, const float* embedding, int k = 10,
                              int threads = 0);
// features_nd [N,D], embedding_n2 [N,2], both floating.
double neighbour_preservation(const at::Tensor& features_nd, const at::Tensor& embedding_n2,
                              int k = 10, int threads = 0);

// The k nearest neighbours of each point of a 2-D embedding [n,2] (exact, grid search).
KnnGraph nearest_neighbours_2d(const float* embedding, int64_t n, int k, int threads = 0);

}  // namespace convscope
