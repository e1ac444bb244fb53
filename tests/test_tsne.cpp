// Tests for t-SNE: gradients against finite differences and each other, perplexity calibration,
// neighbours against brute force, separation of blobs, determinism, bad input, metrics.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/methods/tsne.hpp"

namespace convscope {
namespace {

std::vector<float> random_matrix(int64_t n, int64_t d, uint32_t seed, float scale = 1.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, scale);
    std::vector<float> x(size_t(n * d));
    for (auto& v : x) v = normal(rng);
    return x;
}

// `blobs` Gaussian clusters of `per_blob` points in d dimensions, centres far apart.
std::vector<float> make_blobs(int blobs, int per_blob, int d, std::vector<int64_t>& labels,
                              uint32_t seed = 7, float separation = 10.0f) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> centres(size_t(blobs * d));
    for (auto& c : centres) c = separation * normal(rng);
    std::vector<float> x;
    labels.clear();
    for (int i = 0; i < blobs * per_blob; ++i) {
        const int b = i % blobs;
        for (int k = 0; k < d; ++k) x.push_back(centres[size_t(b * d + k)] + normal(rng));
        labels.push_back(b);
    }
    return x;
}

double brute_d2(const float* x, int64_t d, int64_t i, int64_t j) {
    double s = 0.0;
    for (int64_t k = 0; k < d; ++k) {
        const double t = double(x[i * d + k]) - x[j * d + k];
        s += t * t;
    }
    return s;
}

double relative_error(const std::vector<double>& a, const std::vector<double>& b) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        num += (a[i] - b[i]) * (a[i] - b[i]);
        den += b[i] * b[i];
    }
    return std::sqrt(num / den);
}

SparseMatrix knn_affinities(const std::vector<float>& x, int64_t n, int64_t d, double perplexity) {
    KnnOptions ko;
    ko.method = KnnOptions::Method::Exact;
    const KnnGraph g = nearest_neighbours(x.data(), n, d, int(3 * perplexity), ko);
    return symmetrise_affinities(conditional_affinities(g, perplexity));
}

TEST(TsneGradient, ExactMatchesFiniteDifferencesOfKl) {
    const int64_t n = 20, d = 5;
    const auto x = random_matrix(n, d, 1);
    const SparseMatrix p =
        symmetrise_affinities(conditional_affinities_all_pairs(x.data(), n, d, 5.0));
    std::vector<double> y(size_t(2 * n));
    std::mt19937 rng(3);
    std::normal_distribution<double> normal(0.0, 2.0);
    for (auto& v : y) v = normal(rng);
    std::vector<double> grad(y.size());
    tsne_gradient_exact(p, y.data(), 1.0, grad.data(), 1);
    std::vector<double> numeric(y.size());
    const double h = 1e-5;
    for (size_t i = 0; i < y.size(); ++i) {
        std::vector<double> yp = y, ym = y;
        yp[i] += h;
        ym[i] -= h;
        numeric[i] = (tsne_kl_divergence_exact(p, yp.data(), 1) -
                      tsne_kl_divergence_exact(p, ym.data(), 1)) /
                     (2 * h);
    }
    EXPECT_LT(relative_error(grad, numeric), 1e-6);
}

// The FFT-accelerated repulsion and Z against the exact O(N^2) sums. The interpolation error
// grows with the interval width (up to 1 by default): at a small and a medium spread the default
// 3 nodes per interval are within 1%; on a very sparse layout (300 points over ~250 x 250, the
// intervals at their widest) 5 nodes per interval are needed for that.
TEST(TsneGradient, FftAgreesWithExact) {
    const int64_t n = 300, d = 10;
    const auto x = random_matrix(n, d, 2);
    const SparseMatrix p = knn_affinities(x, n, d, 10.0);
    SparseMatrix empty;  // P = 0: the gradient is the repulsive part alone
    empty.n = n;
    empty.row_ptr.assign(size_t(n + 1), 0);
    FftOptions fine;
    fine.nodes_per_interval = 5;
    for (double spread : {0.5, 5.0, 40.0}) {
        std::vector<double> y(size_t(2 * n));
        std::mt19937 rng(4);
        std::normal_distribution<double> normal(0.0, spread);
        for (auto& v : y) v = normal(rng);
        std::vector<double> ge(y.size()), gf(y.size()), re(y.size()), rf(y.size()), rf5(y.size());
        const double ze = tsne_gradient_exact(p, y.data(), 1.0, ge.data(), 2);
        const double zf = tsne_gradient_fft(p, y.data(), 1.0, gf.data(), {}, 2);
        // On the sparse layout Z is small (about N/2), so its relative error is larger.
        const double z_tolerance = spread < 10 ? 1e-4 : 2e-3;
        EXPECT_NEAR(zf / ze, 1.0, z_tolerance) << "spread " << spread;
        tsne_gradient_exact(empty, y.data(), 1.0, re.data(), 2);
        tsne_gradient_fft(empty, y.data(), 1.0, rf.data(), {}, 2);
        const double zf5 = tsne_gradient_fft(empty, y.data(), 1.0, rf5.data(), fine, 2);
        EXPECT_NEAR(zf5 / ze, 1.0, z_tolerance) << "spread " << spread;
        const double err3 = relative_error(rf, re), err5 = relative_error(rf5, re);
        if (spread < 10) {
            EXPECT_LT(relative_error(gf, ge), 1e-2) << "total gradient, spread " << spread;
            EXPECT_LT(err3, 1e-2) << "repulsive gradient, spread " << spread;
        }
        EXPECT_LT(err5, 5e-3) << "repulsive gradient, 5 nodes, spread " << spread;
        EXPECT_LT(err5, err3) << "more nodes must be more accurate, spread " << spread;
    }
}

TEST(TsneAffinities, RowEntropyIsLogPerplexity) {
    const int64_t n = 500, d = 10;
    const auto x = random_matrix(n, d, 5);
    for (double perplexity : {5.0, 30.0}) {
        KnnOptions ko;
        ko.method = KnnOptions::Method::Exact;
        const KnnGraph g = nearest_neighbours(x.data(), n, d, int(3 * perplexity), ko);
        const SparseMatrix c = conditional_affinities(g, perplexity, 2);
        const SparseMatrix all = conditional_affinities_all_pairs(x.data(), n, d, perplexity, 2);
        for (const SparseMatrix* m : {&c, &all}) {
            for (int64_t i = 0; i < n; ++i) {
                double h = 0.0, sum = 0.0;
                for (int64_t t = m->row_ptr[size_t(i)]; t < m->row_ptr[size_t(i + 1)]; ++t) {
                    const double v = m->val[size_t(t)];
                    sum += v;
                    if (v > 0) h -= v * std::log(v);
                }
                ASSERT_NEAR(sum, 1.0, 1e-5) << "row " << i;
                ASSERT_NEAR(h, std::log(perplexity), 1e-3) << "row " << i;
            }
        }
    }
}

// The exponential kernel (FIt-SNE's): each row is exp(-beta |x_i - x_j|) normalised, so
// log p_j + beta d_j is the same for every neighbour j, with beta from the betas out-parameter
// and d the plain distance; the entropy is still log(perplexity); all pairs agree with the
// neighbour lists where the row's mass lies.
TEST(TsneAffinities, ExponentialKernelIsExpOfThePlainDistance) {
    const int64_t n = 300, d = 8;
    const auto x = random_matrix(n, d, 7);
    const double perplexity = 10.0;
    KnnOptions ko;
    ko.method = KnnOptions::Method::Exact;
    const KnnGraph g = nearest_neighbours(x.data(), n, d, 30, ko);
    std::vector<double> betas;
    const SparseMatrix c = conditional_affinities(g, perplexity, 2, &betas, AffinityKernel::Exponential);
    const SparseMatrix gauss = conditional_affinities(g, perplexity, 2);
    double differs = 0;
    for (int64_t i = 0; i < n; ++i) {
        double h = 0.0, ref = 0.0;
        for (int64_t t = c.row_ptr[size_t(i)]; t < c.row_ptr[size_t(i + 1)]; ++t) {
            const int64_t j = t - c.row_ptr[size_t(i)];
            const double v = c.val[size_t(t)];
            const double dist = std::sqrt(double(g.distance2[size_t(i * g.k + j)]));
            const double offset = std::log(v) + betas[size_t(i)] * dist;
            if (j == 0) ref = offset;
            ASSERT_NEAR(offset, ref, 1e-3) << "row " << i << ", neighbour " << j;
            h -= v * std::log(v);
            differs = std::max(differs, std::abs(v - double(gauss.val[size_t(t)])));
        }
        ASSERT_NEAR(h, std::log(perplexity), 1e-3) << "row " << i;
    }
    EXPECT_GT(differs, 1e-3) << "the exponential kernel gives other affinities than the Gaussian";
    const SparseMatrix all = conditional_affinities_all_pairs(x.data(), n, d, perplexity, 2, AffinityKernel::Exponential);
    for (int64_t i = 0; i < n; i += 37) {
        double h = 0.0;
        for (int64_t t = all.row_ptr[size_t(i)]; t < all.row_ptr[size_t(i + 1)]; ++t) {
            const double v = all.val[size_t(t)];
            if (v > 0) h -= v * std::log(v);
        }
        EXPECT_NEAR(h, std::log(perplexity), 1e-3) << "all pairs, row " << i;
    }
}

TEST(TsneAffinities, SymmetrisedIsSymmetricAndSumsToOne) {
    const int64_t n = 200, d = 6;
    const auto x = random_matrix(n, d, 6);
    const SparseMatrix p = knn_affinities(x, n, d, 10.0);
    at::Tensor dense = at::zeros({n, n}, at::kDouble);
    double total = 0.0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t t = p.row_ptr[size_t(i)]; t < p.row_ptr[size_t(i + 1)]; ++t) {
            if (t > p.row_ptr[size_t(i)]) ASSERT_LT(p.col[size_t(t - 1)], p.col[size_t(t)]);
            ASSERT_NE(p.col[size_t(t)], i);
            dense[i][p.col[size_t(t)]] = double(p.val[size_t(t)]);
            total += p.val[size_t(t)];
        }
    EXPECT_NEAR(total, 1.0, 1e-5);
    EXPECT_LT((dense - dense.t()).abs().max().item<double>(), 1e-9);
}

TEST(TsneNeighbours, ExactMatchesBruteForceAndHnswHasHighRecall) {
    const int64_t n = 1500, d = 33;  // d not a multiple of the SIMD width
    const auto x = random_matrix(n, d, 8);
    const int k = 15;
    KnnOptions exact;
    exact.method = KnnOptions::Method::Exact;
    exact.threads = 2;
    const KnnGraph g = nearest_neighbours(x.data(), n, d, k, exact);
    ASSERT_EQ(g.n, n);
    ASSERT_EQ(g.k, k);
    for (int64_t i = 0; i < n; i += 7) {
        std::vector<std::pair<double, int64_t>> all;
        for (int64_t j = 0; j < n; ++j)
            if (j != i) all.emplace_back(brute_d2(x.data(), d, i, j), j);
        std::sort(all.begin(), all.end());
        for (int j = 0; j < k; ++j) {
            EXPECT_EQ(g.index[size_t(i * k + j)], all[size_t(j)].second) << i << "," << j;
            EXPECT_NEAR(g.distance2[size_t(i * k + j)], all[size_t(j)].first,
                        1e-4 * all[size_t(j)].first);
        }
    }
    // The exact lists do not depend on the thread count (pairs are offered in any order).
    KnnOptions exact1 = exact;
    exact1.threads = 1;
    EXPECT_EQ(nearest_neighbours(x.data(), n, d, k, exact1).index, g.index);
    KnnOptions hnsw = exact;
    hnsw.method = KnnOptions::Method::Hnsw;
    const KnnGraph h = nearest_neighbours(x.data(), n, d, k, hnsw);
    const KnnGraph h2 = nearest_neighbours(x.data(), n, d, k, hnsw);
    EXPECT_EQ(h.index, h2.index) << "hnsw search must be deterministic";
    int64_t found = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int a = 0; a < k; ++a)
            for (int b = 0; b < k; ++b)
                found += h.index[size_t(i * k + a)] == g.index[size_t(i * k + b)];
    EXPECT_GT(double(found) / double(n * k), 0.95);
}

// Duplicated rows tie at distance 0: the smaller index comes first, whatever the thread count.
TEST(TsneNeighbours, ExactBreaksTiesByIndex) {
    const int64_t distinct = 40, copies = 8, n = distinct * copies, d = 20;
    const auto base = random_matrix(distinct, d, 16);
    std::vector<float> x(size_t(n * d));
    for (int64_t i = 0; i < n; ++i)
        std::copy_n(&base[size_t((i % distinct) * d)], d, &x[size_t(i * d)]);
    const int k = 12;
    KnnOptions o;
    o.method = KnnOptions::Method::Exact;
    for (int threads : {1, 2}) {
        o.threads = threads;
        const KnnGraph g = nearest_neighbours(x.data(), n, d, k, o);
        for (int64_t i = 0; i < n; ++i) {
            std::vector<std::pair<double, int64_t>> all;
            for (int64_t j = 0; j < n; ++j)
                if (j != i) all.emplace_back(brute_d2(x.data(), d, i, j), j);
            std::sort(all.begin(), all.end());
            for (int j = 0; j < k; ++j)
                ASSERT_EQ(g.index[size_t(i * k + j)], all[size_t(j)].second) << i << "," << j;
        }
    }
}

TEST(TsneNeighbours, Grid2dMatchesBruteForce) {
    const int64_t n = 2000;
    auto y = random_matrix(n, 2, 9);
    for (int64_t i = 0; i < n / 2; ++i) y[size_t(2 * i)] *= 0.01f;  // a dense strip and outliers
    y[0] = 1e3f;
    const int k = 10;
    const KnnGraph g = nearest_neighbours_2d(y.data(), n, k, 2);
    for (int64_t i = 0; i < n; ++i) {
        std::vector<std::pair<float, int32_t>> all;
        for (int64_t j = 0; j < n; ++j)
            if (j != i) {
                const double dx = double(y[size_t(2 * i)]) - y[size_t(2 * j)];
                const double dy = double(y[size_t(2 * i + 1)]) - y[size_t(2 * j + 1)];
                all.emplace_back(float(dx * dx + dy * dy), int32_t(j));
            }
        std::sort(all.begin(), all.end());
        for (int j = 0; j < k; ++j) ASSERT_EQ(g.index[size_t(i * k + j)], all[size_t(j)].second);
    }
}

TEST(TsnePca, MatchesCovarianceEigenvectors) {
    // Points along a known direction plus small noise.
    const int64_t n = 400, d = 6;
    std::mt19937 rng(10);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    const float dir[d] = {0.5f, -0.5f, 0.5f, 0.5f, 0.0f, 0.0f};
    std::vector<float> x(size_t(n * d));
    for (int64_t i = 0; i < n; ++i) {
        const float t = 5.0f * normal(rng);
        for (int64_t k = 0; k < d; ++k)
            x[size_t(i * d + k)] = 3.0f + t * dir[k] + 0.1f * normal(rng);
    }
    const PcaResult r = pca(x.data(), n, d, 2, 2);
    ASSERT_EQ(r.projected.sizes(), (std::vector<int64_t>{n, 2}));
    const double* c = r.components.data_ptr<double>();
    double dot = 0.0;
    for (int64_t k = 0; k < d; ++k) dot += c[k] * dir[k];
    EXPECT_NEAR(std::fabs(dot), 1.0, 1e-3);
    // The variance of the projection equals the eigenvalue.
    at::Tensor col0 = r.projected.select(1, 0).to(at::kDouble);
    EXPECT_NEAR(col0.var().item<double>(), r.variance[0].item<double>(),
                1e-4 * r.variance[0].item<double>());
    EXPECT_GT(r.variance[0].item<double>(), 100 * r.variance[1].item<double>());
}

TEST(Tsne, BlobsStaySeparatedExact) {
    std::vector<int64_t> labels;
    const auto x = make_blobs(5, 60, 20, labels);
    TsneOptions o;
    RunContext ctx;
    ctx.threads = 2;
    const TsneResult r = tsne(x.data(), 300, 20, o, ctx);
    EXPECT_TRUE(r.exact);
    ASSERT_EQ(r.embedding.sizes(), (std::vector<int64_t>{300, 2}));
    EXPECT_TRUE(r.embedding.isfinite().all().item<bool>());
    EXPECT_EQ(knn_label_accuracy(r.embedding.data_ptr<float>(), labels.data(), 300, 10, 2), 1.0);
    EXPECT_GT(r.kl_divergence, 0.0);
    EXPECT_LT(r.kl_divergence, 2.0);
    EXPECT_NEAR(r.learning_rate, 50.0, 1e-12);  // max(300 / 12 / 4, 50)
}

TEST(Tsne, BlobsStaySeparatedFft) {
    std::vector<int64_t> labels;
    const auto x = make_blobs(5, 200, 20, labels, 11);
    TsneOptions o;
    RunContext ctx;
    ctx.threads = 2;
    o.gradient = TsneOptions::Gradient::Fft;
    o.iterations = 400;
    o.early_exaggeration_iters = 150;
    o.perplexity = 20;
    const TsneResult r = tsne(at::from_blob(const_cast<float*>(x.data()), {1000, 20}), o, ctx);
    EXPECT_FALSE(r.exact);
    EXPECT_EQ(r.neighbours, 60);
    EXPECT_EQ(r.knn.n, 1000);
    const at::Tensor lab = at::from_blob(labels.data(), {1000}, at::kLong);
    EXPECT_EQ(knn_label_accuracy(r.embedding, lab, 10, 2), 1.0);
    // The FFT KL divergence agrees with the exact one.
    std::vector<double> y(2000);
    for (int i = 0; i < 2000; ++i) y[size_t(i)] = r.embedding.data_ptr<float>()[i];
    KnnOptions ko;
    ko.method = KnnOptions::Method::Exact;
    const SparseMatrix p = symmetrise_affinities(
        conditional_affinities(nearest_neighbours(x.data(), 1000, 20, 60, ko), 20));
    EXPECT_NEAR(r.kl_divergence, tsne_kl_divergence_exact(p, y.data(), 2), 1e-2);
    // Each point keeps most of its feature-space neighbours.
    EXPECT_GT(neighbour_preservation(r.knn, r.embedding.data_ptr<float>(), 10, 2), 0.3);
}

TEST(Tsne, AutomaticIterationsGrowWithLargeN) {
    EXPECT_EQ(tsne_auto_iterations(2), 1000);
    EXPECT_EQ(tsne_auto_iterations(10000), 1000);
    EXPECT_EQ(tsne_auto_iterations(20000), 1000);
    EXPECT_EQ(tsne_auto_iterations(20125), 1001);
    EXPECT_EQ(tsne_auto_iterations(70000), 1400);
    EXPECT_EQ(tsne_auto_iterations(1000000), 2000);
    // 0 asks for the automatic count; the result says how many ran.
    std::vector<int64_t> labels;
    const auto x = make_blobs(2, 50, 4, labels, 3);
    TsneOptions o;
    RunContext ctx;
    ctx.threads = 1;
    o.gradient = TsneOptions::Gradient::Exact;
    o.perplexity = 10;
    EXPECT_EQ(tsne(x.data(), 100, 4, o, ctx).iterations, 1000);
    o.iterations = 30;
    EXPECT_EQ(tsne(x.data(), 100, 4, o, ctx).iterations, 30);
}

TEST(Tsne, SameSeedAndThreadsGiveSameBytes) {
    std::vector<int64_t> labels;
    const auto x = make_blobs(4, 500, 16, labels, 12);
    auto same_bytes = [](const TsneResult& a, const TsneResult& b) {
        return a.embedding.numel() == b.embedding.numel() &&
               std::memcmp(a.embedding.data_ptr<float>(), b.embedding.data_ptr<float>(),
                           size_t(a.embedding.numel()) * sizeof(float)) == 0 &&
               a.kl_divergence == b.kl_divergence;
    };
    struct Case {
        TsneOptions::Gradient gradient;
        KnnOptions::Method knn;
        int64_t n;
        int iterations;
    };
    for (const Case& c : {Case{TsneOptions::Gradient::Exact, KnnOptions::Method::Auto, 400, 20},
                          Case{TsneOptions::Gradient::Fft, KnnOptions::Method::Hnsw, 2000, 80},
                          Case{TsneOptions::Gradient::Fft, KnnOptions::Method::Exact, 2000, 60}}) {
        TsneOptions o;
        RunContext ctx;
        ctx.threads = 2;
        o.gradient = c.gradient;
        o.knn.method = c.knn;
        o.iterations = c.iterations;
        o.early_exaggeration_iters = c.iterations / 2;
        const TsneResult a = tsne(x.data(), c.n, 16, o, ctx);
        const TsneResult b = tsne(x.data(), c.n, 16, o, ctx);
        EXPECT_TRUE(same_bytes(a, b)) << "n " << c.n;
        EXPECT_EQ(a.knn.index, b.knn.index);
        if (c.knn == KnnOptions::Method::Exact) continue;
        // Another seed gives another layout (random initialisation).
        o.init = TsneOptions::Init::Random;
        const TsneResult r1 = tsne(x.data(), c.n, 16, o, ctx);
        ctx.seed = 43;
        const TsneResult r2 = tsne(x.data(), c.n, 16, o, ctx);
        EXPECT_FALSE(r1.embedding.equal(r2.embedding));
    }
}

TEST(Tsne, BadInputGivesClearErrors) {
    const auto x = random_matrix(50, 4, 13);
    auto message = [&](auto fn) {
        try {
            fn();
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string("no error");
    };
    EXPECT_NE(message([&] { tsne(x.data(), 1, 4); }).find("at least 2 points"), std::string::npos);
    EXPECT_NE(message([&] { tsne(x.data(), 50, 0); }).find("at least 1 dimension"),
              std::string::npos);
    const std::string perplexity = message([&] { tsne(x.data(), 50, 4); });
    EXPECT_NE(perplexity.find("too large"), std::string::npos) << perplexity;
    EXPECT_NE(perplexity.find("16.3333"), std::string::npos) << perplexity;  // (50-1)/3
    EXPECT_NE(perplexity.find("16)"), std::string::npos) << perplexity;
    auto bad = x;
    bad[4 * 7 + 2] = std::nanf("");
    const std::string nan = message([&] { tsne(bad.data(), 50, 4); });
    EXPECT_NE(nan.find("row 7, column 2 is NaN"), std::string::npos) << nan;
    bad[4 * 7 + 2] = INFINITY;
    EXPECT_NE(message([&] { tsne(bad.data(), 50, 4); }).find("infinite"), std::string::npos);
    TsneOptions o;
    o.perplexity = 5;
    o.dims = 3;
    EXPECT_THROW(tsne(x.data(), 50, 4, o), UsageError);
    o.dims = 2;
    o.perplexity = 0.5;
    EXPECT_THROW(tsne(x.data(), 50, 4, o), UsageError);
    EXPECT_THROW(tsne(at::zeros({10}), o), Error);
    EXPECT_THROW(knn_label_accuracy(at::zeros({5, 2}), at::zeros({4}, at::kLong)), Error);
    // Cancelling through the progress callback.
    o.perplexity = 5;
    EXPECT_THROW(tsne(x.data(), 50, 4, o, RunContext{[](double f) { return f < 0.5; }}), Cancelled);
    o.max_step = -1;
    EXPECT_NE(message([&] { tsne(x.data(), 50, 4, o); }).find("max_step"), std::string::npos);
}

// One iteration at a huge learning rate from the PCA start (spread 1e-4): with max_step every
// point moves at most that far (plus the re-centring, at most as far again); without it they fly.
TEST(Tsne, MaxStepLimitsHowFarAPointMoves) {
    std::vector<int64_t> labels;
    const auto x = make_blobs(3, 40, 8, labels, 5);
    TsneOptions o;
    o.iterations = 1;
    o.early_exaggeration_iters = 1;
    o.learning_rate = 1e7;
    o.perplexity = 10;
    o.max_step = 0.25;
    const float limited = tsne(x.data(), 120, 8, o).embedding.abs().max().item<float>();
    EXPECT_LE(limited, 2 * 0.25 + 1e-3);
    EXPECT_GT(limited, 0.05);  // the clipped steps are taken
    o.max_step = 0;
    EXPECT_GT(tsne(x.data(), 120, 8, o).embedding.abs().max().item<float>(), 1.0);
}

TEST(TsneMetrics, AccuracyAndPreservationAgainstDefinitions) {
    // 2-D features used as their own embedding: every neighbour is preserved.
    const int64_t n = 600;
    const auto y = random_matrix(n, 2, 14);
    EXPECT_DOUBLE_EQ(neighbour_preservation(y.data(), 2, y.data(), n, 10, 2), 1.0);
    // A shuffled embedding keeps about k/n of them.
    auto shuffled = y;
    std::mt19937 rng(15);
    for (int64_t i = n - 1; i > 0; --i) {
        const int64_t j = int64_t(rng() % uint32_t(i + 1));
        std::swap(shuffled[size_t(2 * i)], shuffled[size_t(2 * j)]);
        std::swap(shuffled[size_t(2 * i + 1)], shuffled[size_t(2 * j + 1)]);
    }
    EXPECT_LT(neighbour_preservation(y.data(), 2, shuffled.data(), n, 10, 2), 0.1);
    // Accuracy against a direct leave-one-out vote.
    std::vector<int64_t> labels(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) labels[size_t(i)] = (y[size_t(2 * i)] > 0) + 2 * (i % 5 == 0);
    const int k = 5;
    int64_t hits = 0;
    for (int64_t i = 0; i < n; ++i) {
        std::vector<std::pair<double, int64_t>> all;
        for (int64_t j = 0; j < n; ++j)
            if (j != i) all.emplace_back(brute_d2(y.data(), 2, i, j), j);
        std::sort(all.begin(), all.end());
        int votes[4] = {0, 0, 0, 0};
        for (int j = 0; j < k; ++j) ++votes[labels[size_t(all[size_t(j)].second)]];
        const int64_t best = std::max_element(votes, votes + 4) - votes;  // first max: smallest
        hits += best == labels[size_t(i)];
    }
    EXPECT_DOUBLE_EQ(knn_label_accuracy(y.data(), labels.data(), n, k, 2), double(hits) / n);
}

}  // namespace
}  // namespace convscope
