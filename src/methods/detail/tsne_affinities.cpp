// t-SNE affinities: calibrated conditional probabilities and their symmetrisation (see tsne.hpp).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/tsne_common.hpp"
#include "methods/detail/tsne_knn.hpp"

namespace convscope {
namespace detail {
namespace {

// Finds beta for one row of squared distances so that the entropy of P_{j|i} is
// log(perplexity), and writes P_{j|i} into out. Newton steps on beta (dH/dbeta = -beta Var(d)),
// kept inside a bisection bracket: a handful of steps instead of the usual ~30 bisections.
double calibrate_row(const float* dist2, int64_t k, double perplexity, float* out,
                     std::vector<double>& w) {
    const double target = std::log(perplexity);
    double dmin = std::numeric_limits<double>::infinity(), mean = 0.0;
    for (int64_t j = 0; j < k; ++j) dmin = std::min(dmin, double(dist2[j]));
    for (int64_t j = 0; j < k; ++j) mean += double(dist2[j]) - dmin;
    mean /= double(k);
    w.resize(size_t(k));
    // Distances are shifted by their minimum: the row normalisation cancels it and exp()
    // no longer underflows for far-away data.
    double beta = mean > 0 ? 1.0 / mean : 1.0, lo = 0.0,
           hi = std::numeric_limits<double>::infinity();
    double sum = 0.0;
    for (int step = 0; step < 200; ++step) {
        sum = 0.0;
        double m1 = 0.0, m2 = 0.0;
        for (int64_t j = 0; j < k; ++j) {
            const double delta = double(dist2[j]) - dmin;
            const double v = std::exp(-beta * delta);
            w[size_t(j)] = v;
            sum += v;
            m1 += delta * v;
            m2 += delta * delta * v;
        }
        const double mean_d = m1 / sum;
        const double entropy = std::log(sum) + beta * mean_d;
        const double error = entropy - target;
        if (std::fabs(error) < 1e-5) break;
        if (error > 0)  // too flat: sharpen
            lo = beta;
        else
            hi = beta;
        const double slope = -beta * (m2 / sum - mean_d * mean_d);
        double next = slope < 0 ? beta - error / slope : 0.0;
        if (!(next > lo && next < hi)) next = std::isinf(hi) ? 2.0 * beta : 0.5 * (lo + hi);
        beta = next;
    }
    for (int64_t j = 0; j < k; ++j) out[j] = float(w[size_t(j)] / sum);
    return beta;
}

}  // namespace

SparseMatrix conditional_from_knn(const KnnGraph& knn, double perplexity, ThreadPool& pool,
                                  std::vector<double>* betas, AffinityKernel kernel) {
    SparseMatrix c;
    c.n = knn.n;
    const int64_t k = knn.k;
    c.row_ptr.resize(size_t(c.n + 1));
    for (int64_t i = 0; i <= c.n; ++i) c.row_ptr[size_t(i)] = i * k;
    c.col = knn.index;
    c.val.assign(size_t(c.n * k), 0.0f);
    if (betas) betas->assign(size_t(c.n), 0.0);
    pool.for_range(c.n, [&](int64_t b, int64_t e) {
        std::vector<double> w;
        std::vector<float> plain;
        for (int64_t i = b; i < e; ++i) {
            const float* row = &knn.distance2[size_t(i * k)];
            if (kernel == AffinityKernel::Exponential) {
                plain.assign(row, row + k);
                for (float& v : plain) v = std::sqrt(v);
                row = plain.data();
            }
            const double beta = calibrate_row(row, k, perplexity, &c.val[size_t(i * k)], w);
            if (betas) (*betas)[size_t(i)] = beta;
        }
    });
    return c;
}

SparseMatrix all_pairs_conditional(const float* x, int64_t n, int64_t d, double perplexity,
                                   ThreadPool& pool, AffinityKernel kernel) {
    SparseMatrix c;
    c.n = n;
    c.row_ptr.resize(size_t(n + 1));
    for (int64_t i = 0; i <= n; ++i) c.row_ptr[size_t(i)] = i * (n - 1);
    c.col.resize(size_t(n * (n - 1)));
    c.val.resize(size_t(n * (n - 1)));
    pool.for_range(n, [&](int64_t b, int64_t e) {
        std::vector<float> dist(size_t(n - 1));
        std::vector<double> w;
        for (int64_t i = b; i < e; ++i) {
            int64_t t = 0;
            for (int64_t j = 0; j < n; ++j) {
                if (j == i) continue;
                const float d2 = detail::squared_distance(x + i * d, x + j * d, d);
                dist[size_t(t)] = kernel == AffinityKernel::Exponential ? std::sqrt(d2) : d2;
                c.col[size_t(i * (n - 1) + t)] = int32_t(j);
                ++t;
            }
            calibrate_row(dist.data(), n - 1, perplexity, &c.val[size_t(i * (n - 1))], w);
        }
    });
    return c;
}

SparseMatrix symmetrise(const SparseMatrix& c, ThreadPool& pool) {
    const int64_t n = c.n;
    SparseMatrix p;
    p.n = n;
    // Row i receives its own entries and the transposed entries of the rows that list i.
    std::vector<int64_t> count(size_t(n + 1), 0);
    for (int64_t i = 0; i < n; ++i) {
        count[size_t(i + 1)] += c.row_ptr[size_t(i + 1)] - c.row_ptr[size_t(i)];
        for (int64_t e = c.row_ptr[size_t(i)]; e < c.row_ptr[size_t(i + 1)]; ++e)
            ++count[size_t(c.col[size_t(e)]) + 1];
    }
    for (int64_t i = 0; i < n; ++i) count[size_t(i + 1)] += count[size_t(i)];
    std::vector<int32_t> col(static_cast<size_t>(count[size_t(n)]));
    std::vector<float> val(col.size());
    {
        std::vector<int64_t> fill(count.begin(), count.end() - 1);
        for (int64_t i = 0; i < n; ++i)
            for (int64_t e = c.row_ptr[size_t(i)]; e < c.row_ptr[size_t(i + 1)]; ++e) {
                const int64_t j = c.col[size_t(e)];
                col[size_t(fill[size_t(i)])] = int32_t(j);
                val[size_t(fill[size_t(i)]++)] = c.val[size_t(e)];
                col[size_t(fill[size_t(j)])] = int32_t(i);
                val[size_t(fill[size_t(j)]++)] = c.val[size_t(e)];
            }
    }
    // Sort each row by column and merge the (at most two) entries per pair.
    std::vector<int64_t> kept(size_t(n), 0);
    const double scale = 1.0 / (2.0 * double(n));
    pool.for_range(n, [&](int64_t b, int64_t e) {
        std::vector<std::pair<int32_t, float>> row;
        for (int64_t i = b; i < e; ++i) {
            const int64_t r0 = count[size_t(i)], r1 = count[size_t(i + 1)];
            row.clear();
            for (int64_t t = r0; t < r1; ++t) row.emplace_back(col[size_t(t)], val[size_t(t)]);
            std::sort(row.begin(), row.end(),
                      [](const auto& a, const auto& b2) { return a.first < b2.first; });
            int64_t out = r0;
            for (size_t t = 0; t < row.size();) {
                double sum = row[t].second;
                size_t u = t + 1;
                // a + b == b + a exactly, so the merge does not depend on the order.
                while (u < row.size() && row[u].first == row[t].first) sum += row[u++].second;
                col[size_t(out)] = row[t].first;
                val[size_t(out++)] = float(sum * scale);
                t = u;
            }
            kept[size_t(i)] = out - r0;
        }
    });
    p.row_ptr.assign(size_t(n + 1), 0);
    for (int64_t i = 0; i < n; ++i)
        p.row_ptr[size_t(i + 1)] = p.row_ptr[size_t(i)] + kept[size_t(i)];
    p.col.resize(size_t(p.row_ptr[size_t(n)]));
    p.val.resize(p.col.size());
    pool.for_range(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            std::copy_n(col.begin() + count[size_t(i)], kept[size_t(i)],
                        p.col.begin() + p.row_ptr[size_t(i)]);
            std::copy_n(val.begin() + count[size_t(i)], kept[size_t(i)],
                        p.val.begin() + p.row_ptr[size_t(i)]);
        }
    });
    return p;
}

}  // namespace detail

using detail::ThreadPool;
using detail::check_affinities;

SparseMatrix conditional_affinities(const KnnGraph& knn, double perplexity, int threads,
                                    std::vector<double>* betas, AffinityKernel kernel) {
    if (knn.n < 2 || knn.k < 1)
        throw Error("affinities need a neighbour graph of at least 2 points");
    if (!(perplexity >= 1.0) || !(perplexity < double(knn.k) + 1e-9))
        throw UsageError("perplexity " + detail::format_number(perplexity) +
                         " must be in [1, k = " + std::to_string(knn.k) + "]");
    ThreadPool pool(threads);
    return conditional_from_knn(knn, perplexity, pool, betas, kernel);
}

SparseMatrix conditional_affinities_all_pairs(const float* x, int64_t n, int64_t d, double perplexity,
                                              int threads, AffinityKernel kernel) {
    if (n < 2) throw Error("t-SNE needs at least 2 points, got " + std::to_string(n));
    if (!(perplexity >= 1.0) || !(perplexity < double(n - 1) + 1e-9))
        throw UsageError("perplexity " + detail::format_number(perplexity) + " must be in [1, N-1]");
    ThreadPool pool(threads);
    return all_pairs_conditional(x, n, d, perplexity, pool, kernel);
}

SparseMatrix symmetrise_affinities(const SparseMatrix& conditional) {
    check_affinities(conditional);
    ThreadPool pool(1);
    return symmetrise(conditional, pool);
}

}  // namespace convscope
