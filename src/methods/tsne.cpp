// t-SNE: the optimisation (see tsne.hpp). Affinities, gradients, PCA and the metrics are in
// methods/detail/tsne_*.cpp and tsne_metrics.cpp.
#include "convscope/methods/tsne.hpp"

#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/tsne_common.hpp"
#include "methods/detail/tsne_fft.hpp"
#include "methods/detail/tsne_knn.hpp"

namespace convscope {

using namespace detail;
using clock_type = std::chrono::steady_clock;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The exact gradient keeps all N^2 affinities: refuse sizes that would not fit.
constexpr int64_t kExactGradientMaxN = 20000;

// Largest perplexity allowed for n points (exclusive bound): 3*perplexity < n - 1.
double perplexity_bound(int64_t n) { return double(n - 1) / 3.0; }
void check_perplexity(double perplexity, int64_t n) {
    if (!(perplexity >= 1.0) || !std::isfinite(perplexity))
        throw UsageError("perplexity must be at least 1, got " + detail::format_number(perplexity));
    if (!(3.0 * perplexity < double(n - 1))) {
        const double bound = perplexity_bound(n);
        std::string msg = "perplexity " + detail::format_number(perplexity) + " is too large for " +
                          std::to_string(n) + " points: t-SNE needs 3*perplexity < N-1, so the " +
                          "perplexity must be below " + detail::format_number(bound);
        const double suggest = std::ceil(bound) - 1.0;
        if (suggest >= 1.0)
            msg += " (the largest whole value allowed is " + detail::format_number(suggest) + ")";
        else
            msg += ", and even perplexity 1 needs at least 5 points";
        throw UsageError(msg);
    }
}

int neighbours_for(double perplexity, int64_t n) {
    return int(std::min<int64_t>(n - 1, int64_t(3.0 * perplexity)));
}

// Standard normal values from a seeded engine (Box-Muller: the same numbers on every platform).
void fill_normal(double* out, int64_t count, double stddev, uint64_t seed) {
    std::mt19937_64 engine(seed);
    const double two_pi = 6.283185307179586476925286766559;
    for (int64_t i = 0; i < count; i += 2) {
        const double u1 = (double(engine() >> 11) + 1.0) * 0x1.0p-53;  // (0, 1]
        const double u2 = double(engine() >> 11) * 0x1.0p-53;
        const double r = std::sqrt(-2.0 * std::log(u1));
        out[i] = stddev * r * std::cos(two_pi * u2);
        if (i + 1 < count) out[i + 1] = stddev * r * std::sin(two_pi * u2);
    }
}

void validate_options(const TsneOptions& o) {
    auto bad = [](const std::string& what) { throw UsageError("t-SNE option " + what); };
    if (o.dims != 2) bad("dims must be 2 (got " + std::to_string(o.dims) + ")");
    if (o.iterations < 0) bad("iterations must be >= 0 (0: automatic)");
    if (o.early_exaggeration_iters < 0) bad("early_exaggeration_iters must be >= 0");
    if (!(o.early_exaggeration > 0) || !(o.exaggeration > 0)) bad("exaggeration must be > 0");
    if (!(o.learning_rate >= 0) || !std::isfinite(o.learning_rate))
        bad("learning_rate must be > 0, or 0 for automatic");
    if (!(o.momentum_early >= 0 && o.momentum_early < 1) || !(o.momentum >= 0 && o.momentum < 1))
        bad("momentum must be in [0, 1)");
    if (!(o.min_gain > 0)) bad("min_gain must be > 0");
    if (!(o.max_step >= 0) || !std::isfinite(o.max_step)) bad("max_step must be >= 0 (0: no limit)");
    if (o.pca_dims < 0) bad("pca_dims must be >= 0");
    if (o.fft.nodes_per_interval < 1 || o.fft.nodes_per_interval > 8)
        bad("fft.nodes_per_interval must be in 1..8");
    if (o.fft.min_intervals < 1) bad("fft.min_intervals must be >= 1");
    if (!(o.fft.max_interval_width > 0)) bad("fft.max_interval_width must be > 0");
    if (o.knn.hnsw_m < 2 || o.knn.hnsw_ef_construction < 1 || o.knn.hnsw_ef < 0)
        bad("hnsw parameters must be positive");
}

// The initial layout y [n,2] (PCA's first two components scaled to a standard deviation of 1e-4,
// openTSNE's convention, or Gaussian noise of that size) and the data the affinities use: the
// pca_dims principal components of x, or x itself (dim is set to its width).
std::vector<double> initial_layout(const float* x, int64_t n, int64_t d, const TsneOptions& options, uint64_t seed,
                                   ThreadPool& pool, at::Tensor& reduced, const float*& data, int64_t& dim) {
    data = x;
    dim = d;
    std::vector<double> y(size_t(2 * n));
    bool have_init = false;
    if (options.pca_dims > 0 && options.pca_dims < d) {
        PcaResult r = pca_impl(x, n, d, options.pca_dims, pool);
        reduced = r.projected;
        data = reduced.data_ptr<float>();
        dim = options.pca_dims;
        if (options.init == TsneOptions::Init::Pca && dim >= 2) {
            // The reduced coordinates are already the principal components, in order.
            for (int64_t i = 0; i < n; ++i)
                for (int c = 0; c < 2; ++c) y[size_t(2 * i + c)] = data[i * dim + c];
            have_init = true;
        }
    }
    if (options.init != TsneOptions::Init::Pca) {
        fill_normal(y.data(), 2 * n, 1e-4, seed);
        return y;
    }
    if (!have_init) {
        const int c = int(std::min<int64_t>(2, dim));
        PcaResult r = pca_impl(data, n, dim, c, pool);
        const float* pr = r.projected.data_ptr<float>();
        fill_normal(y.data(), 2 * n, 1.0, seed);  // only used if dim == 1
        for (int64_t i = 0; i < n; ++i)
            for (int k = 0; k < c; ++k) y[size_t(2 * i + k)] = pr[i * c + k];
    }
    double mean = 0.0, var = 0.0;
    for (int64_t i = 0; i < n; ++i) mean += y[size_t(2 * i)];
    mean /= double(n);
    for (int64_t i = 0; i < n; ++i) var += (y[size_t(2 * i)] - mean) * (y[size_t(2 * i)] - mean);
    const double sd = std::sqrt(var / double(n));
    const double s = sd > 0 ? 1e-4 / sd : 1.0;
    for (auto& v : y) v *= s;
    if (!(sd > 0)) fill_normal(y.data(), 2 * n, 1e-4, seed);  // all points equal
    return y;
}

// The symmetric affinities P of data [n,dim]: over all pairs for the exact gradient, else over
// each point's 3 x perplexity nearest neighbours (kept in result.knn). Records the times and
// the neighbour count in result.
SparseMatrix affinities(const float* data, int64_t n, int64_t dim, bool exact, const TsneOptions& options,
                        const RunContext& context, ThreadPool& pool, TsneResult& result) {
    auto t0 = clock_type::now();
    if (exact) {
        result.neighbours = int(n - 1);
        result.neighbours_seconds = 0.0;
        SparseMatrix p = symmetrise(all_pairs_conditional(data, n, dim, options.perplexity, pool, options.kernel), pool);
        result.affinities_seconds = seconds_since(t0);
        return p;
    }
    const int k = neighbours_for(options.perplexity, n);
    result.neighbours = k;
    KnnOptions ko = options.knn;
    ko.seed = context.seed;
    ko.threads = pool.size();
    result.knn = use_exact_knn(ko, n) ? knn_exact(data, n, dim, k, pool) : knn_hnsw(data, n, dim, k, ko, pool);
    result.neighbours_seconds = seconds_since(t0);
    report_progress(context.progress, 0.1);
    t0 = clock_type::now();
    SparseMatrix p = symmetrise(conditional_from_knn(result.knn, options.perplexity, pool, nullptr, options.kernel), pool);
    result.affinities_seconds = seconds_since(t0);
    return p;
}

// Gradient descent with momentum and per-coordinate gains (delta-bar-delta) from the layout y;
// re-centres after each step. Returns the final Z (approximate for the FFT gradient).
double optimise(const SparseMatrix& p, std::vector<double>& y, bool exact, double lr, int iterations,
                const TsneOptions& options, const ProgressFn& progress, ThreadPool& pool) {
    const int64_t n = p.n;
    std::vector<double> grad(size_t(2 * n)), update(size_t(2 * n), 0.0), gains(size_t(2 * n), 1.0);
    std::vector<double> rep(size_t(2 * n));
    FftRepulsion fft(options.fft);
    auto repulsion = [&] {
        return exact ? exact_repulsion(y.data(), n, rep.data(), pool) : fft.repulsion(y.data(), n, rep.data(), pool);
    };
    constexpr int64_t kBlock = 4096;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> block_sum(size_t(2 * blocks));
    for (int it = 0; it < iterations; ++it) {
        const bool early = it < options.early_exaggeration_iters;
        const double exaggeration = early ? options.early_exaggeration : options.exaggeration;
        const double momentum = early ? options.momentum_early : options.momentum;
        const double z = repulsion();
        combine_gradient(p, y.data(), exaggeration, rep.data(), z, grad.data(), pool);
        // Step, and the coordinate sums per fixed block of points (added in block order).
        pool.for_range(blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t blk = b0; blk < b1; ++blk) {
                double sum[2] = {0.0, 0.0};
                for (int64_t pt = blk * kBlock; pt < std::min(n, (blk + 1) * kBlock); ++pt) {
                    double* u = update.data() + 2 * pt;
                    for (int c = 0; c < 2; ++c) {
                        // Grow the gain while the gradient keeps pointing the way we are moving.
                        const size_t i = size_t(2 * pt + c);
                        double& g = gains[i];
                        g = (grad[i] > 0) != (u[c] > 0) ? g + 0.2 : g * 0.8;
                        g = std::max(g, options.min_gain);
                        u[c] = momentum * u[c] - lr * g * grad[i];
                    }
                    // A point moves at most max_step per iteration (the update itself is cut,
                    // so the momentum carries the cut step).
                    if (options.max_step > 0) {
                        const double step = std::hypot(u[0], u[1]);
                        if (step > options.max_step) {
                            u[0] *= options.max_step / step;
                            u[1] *= options.max_step / step;
                        }
                    }
                    for (int c = 0; c < 2; ++c) {
                        y[size_t(2 * pt + c)] += u[c];
                        sum[c] += y[size_t(2 * pt + c)];
                    }
                }
                block_sum[size_t(2 * blk)] = sum[0];
                block_sum[size_t(2 * blk + 1)] = sum[1];
            }
        });
        // Re-centre (the objective is translation invariant; keeps the grid small).
        double mean[2] = {0.0, 0.0};
        for (int64_t blk = 0; blk < blocks; ++blk)
            for (int c = 0; c < 2; ++c) mean[c] += block_sum[size_t(2 * blk + c)];
        mean[0] /= double(n);
        mean[1] /= double(n);
        pool.for_range(n, [&](int64_t b, int64_t e) {
            for (int64_t i = b; i < e; ++i) {
                y[size_t(2 * i)] -= mean[0];
                y[size_t(2 * i + 1)] -= mean[1];
            }
        });
        if (it % 10 == 9) report_progress(progress, 0.12 + 0.88 * double(it + 1) / double(iterations));
    }
    return repulsion();
}

}  // namespace

int tsne_auto_iterations(int64_t n) {
    if (n <= 20000) return 1000;
    return int(std::min<int64_t>(2000, 1000 + (n - 20000) / 125));
}

TsneResult tsne(const float* x, int64_t n, int64_t d, const TsneOptions& options, const RunContext& context) {
    validate_options(options);
    if (context.threads < 0) throw UsageError("threads must be >= 0");
    if (n < 2) throw Error("t-SNE needs at least 2 points, got " + std::to_string(n));
    if (d < 1) throw Error("t-SNE needs features with at least 1 dimension, got " + std::to_string(d));
    check_finite(x, n, d, "feature");
    check_perplexity(options.perplexity, n);
    const bool exact = options.gradient == TsneOptions::Gradient::Exact ||
                       (options.gradient == TsneOptions::Gradient::Auto && n < options.exact_max_n);
    if (exact && n > kExactGradientMaxN)
        throw UsageError("the exact t-SNE gradient needs O(N^2) time and memory: use it for at most " +
                         std::to_string(kExactGradientMaxN) + " points (got " + std::to_string(n) +
                         "), or the FFT-accelerated gradient");
    report_progress(context.progress, 0.0);
    ThreadPool pool(thread_count(context));
    TsneResult result;
    result.exact = exact;

    // 1. PCA: optional reduction, and the initial layout.
    auto t0 = clock_type::now();
    at::Tensor reduced;
    const float* data = nullptr;
    int64_t dim = 0;
    std::vector<double> y = initial_layout(x, n, d, options, context.seed, pool, reduced, data, dim);
    result.pca_seconds = seconds_since(t0);

    // 2-3. Neighbours and affinities.
    const SparseMatrix p = affinities(data, n, dim, exact, options, context, pool, result);
    reduced = at::Tensor();
    report_progress(context.progress, 0.12);

    // 4. Gradient descent, then the KL divergence of the final layout.
    t0 = clock_type::now();
    result.learning_rate =
        options.learning_rate > 0 ? options.learning_rate : std::max(double(n) / options.early_exaggeration, 50.0);
    result.iterations = options.iterations > 0 ? options.iterations : tsne_auto_iterations(n);
    const double z = optimise(p, y, exact, result.learning_rate, result.iterations, options, context.progress, pool);
    result.kl_divergence = kl_divergence(p, y.data(), z, pool);
    result.optimisation_seconds = seconds_since(t0);

    result.embedding = at::empty({n, 2}, at::kFloat);
    float* out = result.embedding.data_ptr<float>();
    for (int64_t i = 0; i < 2 * n; ++i) out[i] = float(y[size_t(i)]);
    report_progress(context.progress, 1.0);
    return result;
}

TsneResult tsne(const at::Tensor& features_nd, const TsneOptions& options, const RunContext& context) {
    at::Tensor f = as_float_matrix(features_nd, "t-SNE features");
    return tsne(f.data_ptr<float>(), f.size(0), f.size(1), options, context);
}

}  // namespace convscope
