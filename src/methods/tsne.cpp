// t-SNE: affinities, gradients, optimisation, PCA and embedding metrics (see tsne.hpp).
#include "convscope/methods/tsne.hpp"

#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/tsne_fft.hpp"
#include "methods/detail/tsne_knn.hpp"
#include "methods/detail/tsne_parallel.hpp"

namespace convscope {

using detail::ThreadPool;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Throws Error naming the first NaN/Inf of x [n,d].
void check_finite(const float* x, int64_t n, int64_t d, const char* what) {
    for (int64_t i = 0; i < n * d; ++i) {
        if (!std::isfinite(x[i])) {
            throw Error(std::string(what) + " value at row " + std::to_string(i / d) + ", column " +
                        std::to_string(i % d) + " is " + (std::isnan(x[i]) ? "NaN" : "infinite") +
                        "; t-SNE needs finite values (remove or replace those rows)");
        }
    }
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

bool use_exact_knn(const KnnOptions& o, int64_t n) {
    return o.method == KnnOptions::Method::Exact ||
           (o.method == KnnOptions::Method::Auto && n <= o.exact_max_n);
}

int neighbours_for(double perplexity, int64_t n) {
    return int(std::min<int64_t>(n - 1, int64_t(3.0 * perplexity)));
}

// --- affinities --------------------------------------------------------------------------

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

SparseMatrix conditional_from_knn(const KnnGraph& knn, double perplexity, ThreadPool& pool,
                                  std::vector<double>* betas) {
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
        for (int64_t i = b; i < e; ++i) {
            const double beta = calibrate_row(&knn.distance2[size_t(i * k)], k, perplexity,
                                              &c.val[size_t(i * k)], w);
            if (betas) (*betas)[size_t(i)] = beta;
        }
    });
    return c;
}

SparseMatrix all_pairs_conditional(const float* x, int64_t n, int64_t d, double perplexity,
                                   ThreadPool& pool) {
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
                dist[size_t(t)] = detail::squared_distance(x + i * d, x + j * d, d);
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
    std::vector<int32_t> col(size_t(count[size_t(n)]));
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

// --- gradients ---------------------------------------------------------------------------

// Attractive forces attr_i = sum_j P_ij q_ij (y_i - y_j) for rows [b, e), from a single
// precision copy of the embedding yf [n,2]; each row is summed in a fixed order.
void attraction_generic(const SparseMatrix& p, const float* yf, int64_t b, int64_t e,
                        double* attr) {
    for (int64_t i = b; i < e; ++i) {
        const float yi0 = yf[2 * i], yi1 = yf[2 * i + 1];
        float a0 = 0.0f, a1 = 0.0f;
        for (int64_t t = p.row_ptr[size_t(i)]; t < p.row_ptr[size_t(i + 1)]; ++t) {
            const int64_t j = p.col[size_t(t)];
            const float d0 = yi0 - yf[2 * j], d1 = yi1 - yf[2 * j + 1];
            const float pq = p.val[size_t(t)] / (1.0f + d0 * d0 + d1 * d1);
            a0 += pq * d0;
            a1 += pq * d1;
        }
        attr[2 * i] = a0;
        attr[2 * i + 1] = a1;
    }
}

// The same with AVX2, eight entries at a time: each (x, y) pair is gathered as one 64-bit value.
// The lanes are added in a fixed order.
__attribute__((target("avx2,fma"))) void attraction_avx2(const SparseMatrix& p, const float* yf,
                                                         int64_t b, int64_t e, double* attr) {
    const int32_t* col = p.col.data();
    const float* val = p.val.data();
    const long long* pairs = reinterpret_cast<const long long*>(yf);
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int64_t i = b; i < e; ++i) {
        const __m256 yi0 = _mm256_set1_ps(yf[2 * i]), yi1 = _mm256_set1_ps(yf[2 * i + 1]);
        __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
        int64_t t = p.row_ptr[size_t(i)];
        const int64_t end = p.row_ptr[size_t(i + 1)];
        for (; t + 8 <= end; t += 8) {
            const __m128i ja = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col + t));
            const __m128i jb = _mm_loadu_si128(reinterpret_cast<const __m128i*>(col + t + 4));
            const __m256 v0 = _mm256_castsi256_ps(_mm256_i32gather_epi64(pairs, ja, 8));
            const __m256 v1 = _mm256_castsi256_ps(_mm256_i32gather_epi64(pairs, jb, 8));
            // Lanes hold entries 0 1 4 5 | 2 3 6 7; the values are permuted to match.
            const __m256 xs = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(2, 0, 2, 0));
            const __m256 ys = _mm256_shuffle_ps(v0, v1, _MM_SHUFFLE(3, 1, 3, 1));
            const __m256 v = _mm256_castpd_ps(_mm256_permute4x64_pd(
                _mm256_castps_pd(_mm256_loadu_ps(val + t)), _MM_SHUFFLE(3, 1, 2, 0)));
            const __m256 d0 = _mm256_sub_ps(yi0, xs), d1 = _mm256_sub_ps(yi1, ys);
            const __m256 den = _mm256_fmadd_ps(d0, d0, _mm256_fmadd_ps(d1, d1, one));
            const __m256 pq = _mm256_div_ps(v, den);
            acc0 = _mm256_fmadd_ps(pq, d0, acc0);
            acc1 = _mm256_fmadd_ps(pq, d1, acc1);
        }
        float l0[8], l1[8];
        _mm256_storeu_ps(l0, acc0);
        _mm256_storeu_ps(l1, acc1);
        float a0 = ((l0[0] + l0[4]) + (l0[1] + l0[5])) + ((l0[2] + l0[6]) + (l0[3] + l0[7]));
        float a1 = ((l1[0] + l1[4]) + (l1[1] + l1[5])) + ((l1[2] + l1[6]) + (l1[3] + l1[7]));
        for (; t < end; ++t) {
            const int64_t j = col[t];
            const float d0 = yf[2 * i] - yf[2 * j], d1 = yf[2 * i + 1] - yf[2 * j + 1];
            const float pq = val[t] / (1.0f + d0 * d0 + d1 * d1);
            a0 += pq * d0;
            a1 += pq * d1;
        }
        attr[2 * i] = a0;
        attr[2 * i + 1] = a1;
    }
}

bool has_avx2_fma() {
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
}

// grad_i = 4 (exaggeration * attr_i - rep_i / z) where attr_i = sum_j P_ij q_ij (y_i - y_j).
void combine_gradient(const SparseMatrix& p, const double* y, double exaggeration,
                      const double* rep, double z, double* grad, ThreadPool& pool) {
    const double inv_z = 1.0 / z;
    std::vector<float> yf(size_t(2 * p.n));
    for (int64_t i = 0; i < 2 * p.n; ++i) yf[size_t(i)] = float(y[i]);
    const bool avx2 = has_avx2_fma();
    pool.for_range(p.n, [&](int64_t b, int64_t e) {
        // attr is written into grad, then combined in place.
        if (avx2)
            attraction_avx2(p, yf.data(), b, e, grad);
        else
            attraction_generic(p, yf.data(), b, e, grad);
        for (int64_t k = 2 * b; k < 2 * e; ++k)
            grad[k] = 4.0 * (exaggeration * grad[k] - rep[k] * inv_z);
    });
}

// Exact repulsion rep_i = sum_j q_ij^2 (y_i - y_j); returns Z. O(n^2).
double exact_repulsion(const double* y, int64_t n, double* rep, ThreadPool& pool) {
    std::vector<double> zrow(static_cast<size_t>(n));
    pool.for_range(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const double yi0 = y[2 * i], yi1 = y[2 * i + 1];
            double r0 = 0.0, r1 = 0.0, z = 0.0;
            for (int64_t j = 0; j < n; ++j) {
                if (j == i) continue;
                const double d0 = yi0 - y[2 * j], d1 = yi1 - y[2 * j + 1];
                const double q = 1.0 / (1.0 + d0 * d0 + d1 * d1);
                z += q;
                r0 += q * q * d0;
                r1 += q * q * d1;
            }
            rep[2 * i] = r0;
            rep[2 * i + 1] = r1;
            zrow[size_t(i)] = z;
        }
    });
    return pool.sum_blocks(n, [&](int64_t b, int64_t e) {
        double s = 0.0;
        for (int64_t i = b; i < e; ++i) s += zrow[size_t(i)];
        return s;
    });
}

double kl_divergence(const SparseMatrix& p, const double* y, double z, ThreadPool& pool) {
    const double log_z = std::log(z);
    return pool.sum_blocks(
        p.n,
        [&](int64_t b, int64_t e) {
            double s = 0.0;
            for (int64_t i = b; i < e; ++i) {
                for (int64_t t = p.row_ptr[size_t(i)]; t < p.row_ptr[size_t(i + 1)]; ++t) {
                    const double pij = p.val[size_t(t)];
                    if (!(pij > 0)) continue;
                    const int64_t j = p.col[size_t(t)];
                    const double d0 = y[2 * i] - y[2 * j], d1 = y[2 * i + 1] - y[2 * j + 1];
                    // log(P / (q / Z)) with q = 1 / (1 + d^2)
                    s += pij * (std::log(pij) + log_z + std::log1p(d0 * d0 + d1 * d1));
                }
            }
            return s;
        },
        256);
}

void check_affinities(const SparseMatrix& p) {
    if (p.n < 2 || int64_t(p.row_ptr.size()) != p.n + 1 || p.col.size() != p.val.size() ||
        p.row_ptr[size_t(p.n)] != p.nnz())
        throw Error("t-SNE affinities: malformed sparse matrix");
}

// --- PCA ---------------------------------------------------------------------------------

PcaResult pca_impl(const float* x, int64_t n, int64_t d, int components, ThreadPool& pool) {
    const int c = components;
    // Column means, summed per fixed block of rows in a fixed order.
    std::vector<double> mean(size_t(d), 0.0);
    {
        const int64_t block = 1024, blocks = (n + block - 1) / block;
        std::vector<double> partial(size_t(blocks * d), 0.0);
        pool.for_range(blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
                for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i)
                    for (int64_t k = 0; k < d; ++k) partial[size_t(b * d + k)] += x[i * d + k];
        });
        for (int64_t b = 0; b < blocks; ++b)
            for (int64_t k = 0; k < d; ++k) mean[size_t(k)] += partial[size_t(b * d + k)];
        for (auto& m : mean) m /= double(n);
    }
    // Covariance (upper triangle), one partial matrix per thread, summed in thread order.
    const int threads = pool.size();
    std::vector<std::vector<double>> partial(static_cast<size_t>(threads));
    pool.run([&](int t) {
        const int64_t b = n * t / threads, e = n * (t + 1) / threads;
        std::vector<double>& cov = partial[size_t(t)];
        cov.assign(size_t(d * d), 0.0);
        std::vector<double> r(size_t(4 * d));
        for (int64_t i = b; i < e; i += 4) {
            const int64_t rows = std::min<int64_t>(4, e - i);
            std::fill(r.begin(), r.end(), 0.0);  // missing rows stay zero
            for (int64_t s = 0; s < rows; ++s)
                for (int64_t k = 0; k < d; ++k)
                    r[size_t(s * d + k)] = double(x[(i + s) * d + k]) - mean[size_t(k)];
            const double *r0 = &r[0], *r1 = &r[size_t(d)], *r2 = &r[size_t(2 * d)],
                         *r3 = &r[size_t(3 * d)];
            for (int64_t a = 0; a < d; ++a) {
                const double v0 = r0[a], v1 = r1[a], v2 = r2[a], v3 = r3[a];
                double* row = &cov[size_t(a * d)];
                for (int64_t k = a; k < d; ++k)
                    row[k] += v0 * r0[k] + v1 * r1[k] + v2 * r2[k] + v3 * r3[k];
            }
        }
    });
    at::Tensor cov = at::zeros({d, d}, at::kDouble);
    double* cv = cov.data_ptr<double>();
    const double denom = n > 1 ? double(n - 1) : 1.0;
    for (int64_t a = 0; a < d; ++a)
        for (int64_t k = a; k < d; ++k) {
            double s = 0.0;
            for (int t = 0; t < threads; ++t) s += partial[size_t(t)][size_t(a * d + k)];
            cv[a * d + k] = cv[k * d + a] = s / denom;
        }
    auto [evals, evecs] = at::linalg_eigh(cov);  // ascending
    PcaResult out;
    out.components = at::zeros({c, d}, at::kDouble);
    out.variance = at::zeros({c}, at::kDouble);
    const double* ev = evals.data_ptr<double>();
    at::Tensor vecs = evecs.contiguous();
    const double* vv = vecs.data_ptr<double>();
    double* comp = out.components.data_ptr<double>();
    for (int k = 0; k < c; ++k) {
        const int64_t col = d - 1 - k;
        out.variance.data_ptr<double>()[k] = std::max(0.0, ev[col]);
        // Sign convention: the entry of largest magnitude is positive.
        int64_t arg = 0;
        for (int64_t a = 0; a < d; ++a)
            if (std::fabs(vv[a * d + col]) > std::fabs(vv[arg * d + col])) arg = a;
        const double sign = vv[arg * d + col] < 0 ? -1.0 : 1.0;
        for (int64_t a = 0; a < d; ++a) comp[k * d + a] = sign * vv[a * d + col];
    }
    out.projected = at::empty({n, c}, at::kFloat);
    float* proj = out.projected.data_ptr<float>();
    pool.for_range(n, [&](int64_t b, int64_t e) {
        std::vector<double> r(static_cast<size_t>(d));
        for (int64_t i = b; i < e; ++i) {
            for (int64_t a = 0; a < d; ++a) r[size_t(a)] = double(x[i * d + a]) - mean[size_t(a)];
            for (int k = 0; k < c; ++k) {
                double s = 0.0;
                for (int64_t a = 0; a < d; ++a) s += r[size_t(a)] * comp[k * d + a];
                proj[i * c + k] = float(s);
            }
        }
    });
    return out;
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

}  // namespace

int tsne_auto_iterations(int64_t n) {
    if (n <= 20000) return 1000;
    return int(std::min<int64_t>(2000, 1000 + (n - 20000) / 125));
}

namespace {

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
    if (o.pca_dims < 0) bad("pca_dims must be >= 0");
    if (o.fft.nodes_per_interval < 1 || o.fft.nodes_per_interval > 8)
        bad("fft.nodes_per_interval must be in 1..8");
    if (o.fft.min_intervals < 1) bad("fft.min_intervals must be >= 1");
    if (!(o.fft.max_interval_width > 0)) bad("fft.max_interval_width must be > 0");
    if (o.knn.hnsw_m < 2 || o.knn.hnsw_ef_construction < 1 || o.knn.hnsw_ef < 0)
        bad("hnsw parameters must be positive");
}

at::Tensor as_float_matrix(const at::Tensor& t, const char* name) {
    if (!t.defined() || t.dim() != 2)
        throw Error(std::string(name) + " must be a 2-D [N,D] array" +
                    (t.defined() ? ", got " + std::to_string(t.dim()) + " dimensions" : ""));
    if (!at::isFloatingType(t.scalar_type()))
        throw Error(std::string(name) + " must be floating point, got " +
                    std::string(c10::toString(t.scalar_type())));
    return t.to(at::kCPU).to(at::kFloat).contiguous();
}

}  // namespace

// --- building blocks (public) ------------------------------------------------------------

KnnGraph nearest_neighbours(const float* x, int64_t n, int64_t d, int k,
                            const KnnOptions& options) {
    if (n < 2) throw Error("nearest neighbours need at least 2 points, got " + std::to_string(n));
    if (d < 1) throw Error("nearest neighbours need at least 1 feature dimension");
    if (k < 1 || k > n - 1)
        throw Error("k = " + std::to_string(k) + " neighbours is not in 1.." +
                    std::to_string(n - 1));
    check_finite(x, n, d, "feature");
    ThreadPool pool(options.threads);
    return use_exact_knn(options, n) ? detail::knn_exact(x, n, d, k, pool)
                                     : detail::knn_hnsw(x, n, d, k, options, pool);
}

KnnGraph nearest_neighbours_2d(const float* embedding, int64_t n, int k, int threads) {
    if (n < 2) throw Error("nearest neighbours need at least 2 points, got " + std::to_string(n));
    if (k < 1 || k > n - 1)
        throw Error("k = " + std::to_string(k) + " neighbours is not in 1.." +
                    std::to_string(n - 1));
    check_finite(embedding, n, 2, "embedding");
    ThreadPool pool(threads);
    return detail::knn_grid_2d(embedding, n, k, pool);
}

SparseMatrix conditional_affinities(const KnnGraph& knn, double perplexity, int threads,
                                    std::vector<double>* betas) {
    if (knn.n < 2 || knn.k < 1)
        throw Error("affinities need a neighbour graph of at least 2 points");
    if (!(perplexity >= 1.0) || !(perplexity < double(knn.k) + 1e-9))
        throw UsageError("perplexity " + detail::format_number(perplexity) +
                         " must be in [1, k = " + std::to_string(knn.k) + "]");
    ThreadPool pool(threads);
    return conditional_from_knn(knn, perplexity, pool, betas);
}

SparseMatrix conditional_affinities_all_pairs(const float* x, int64_t n, int64_t d,
                                              double perplexity, int threads) {
    if (n < 2) throw Error("t-SNE needs at least 2 points, got " + std::to_string(n));
    if (!(perplexity >= 1.0) || !(perplexity < double(n - 1) + 1e-9))
        throw UsageError("perplexity " + detail::format_number(perplexity) + " must be in [1, N-1]");
    ThreadPool pool(threads);
    return all_pairs_conditional(x, n, d, perplexity, pool);
}

SparseMatrix symmetrise_affinities(const SparseMatrix& conditional) {
    check_affinities(conditional);
    ThreadPool pool(1);
    return symmetrise(conditional, pool);
}

double tsne_gradient_exact(const SparseMatrix& p, const double* y, double exaggeration,
                           double* grad, int threads) {
    check_affinities(p);
    ThreadPool pool(threads);
    std::vector<double> rep(size_t(2 * p.n));
    const double z = exact_repulsion(y, p.n, rep.data(), pool);
    combine_gradient(p, y, exaggeration, rep.data(), z, grad, pool);
    return z;
}

double tsne_gradient_fft(const SparseMatrix& p, const double* y, double exaggeration, double* grad,
                         const FftOptions& fft, int threads) {
    check_affinities(p);
    if (fft.nodes_per_interval < 1 || fft.nodes_per_interval > 8 || fft.min_intervals < 1 ||
        !(fft.max_interval_width > 0))
        throw UsageError("bad FFT interpolation options");
    ThreadPool pool(threads);
    detail::FftRepulsion fr(fft);
    std::vector<double> rep(size_t(2 * p.n));
    const double z = fr.repulsion(y, p.n, rep.data(), pool);
    combine_gradient(p, y, exaggeration, rep.data(), z, grad, pool);
    return z;
}

double tsne_kl_divergence(const SparseMatrix& p, const double* y, double z, int threads) {
    check_affinities(p);
    ThreadPool pool(threads);
    return kl_divergence(p, y, z, pool);
}

double tsne_kl_divergence_exact(const SparseMatrix& p, const double* y, int threads) {
    check_affinities(p);
    ThreadPool pool(threads);
    std::vector<double> rep(size_t(2 * p.n));
    const double z = exact_repulsion(y, p.n, rep.data(), pool);
    return kl_divergence(p, y, z, pool);
}

PcaResult pca(const float* x, int64_t n, int64_t d, int components, int threads) {
    if (n < 2) throw Error("PCA needs at least 2 rows, got " + std::to_string(n));
    if (components < 1 || components > d)
        throw Error("PCA components must be in 1.." + std::to_string(d) + ", got " +
                    std::to_string(components));
    check_finite(x, n, d, "feature");
    ThreadPool pool(threads);
    return pca_impl(x, n, d, components, pool);
}

// --- t-SNE -------------------------------------------------------------------------------

TsneResult tsne(const float* x, int64_t n, int64_t d, const TsneOptions& options, const RunContext& context) {
    using clock = std::chrono::steady_clock;
    validate_options(options);
    if (context.threads < 0) throw UsageError("threads must be >= 0");
    const ProgressFn& progress = context.progress;
    const uint64_t seed = context.seed;
    if (n < 2) throw Error("t-SNE needs at least 2 points, got " + std::to_string(n));
    if (d < 1)
        throw Error("t-SNE needs features with at least 1 dimension, got " + std::to_string(d));
    check_finite(x, n, d, "feature");
    check_perplexity(options.perplexity, n);
    report_progress(progress, 0.0);

    ThreadPool pool(thread_count(context));
    TsneResult result;

    // 1. PCA: optional reduction, and the initial layout.
    auto t0 = clock::now();
    const float* data = x;
    int64_t dim = d;
    at::Tensor reduced;
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
    if (options.init == TsneOptions::Init::Pca && !have_init) {
        const int c = int(std::min<int64_t>(2, dim));
        PcaResult r = pca_impl(data, n, dim, c, pool);
        const float* pr = r.projected.data_ptr<float>();
        fill_normal(y.data(), 2 * n, 1.0, seed);  // only used if dim == 1
        for (int64_t i = 0; i < n; ++i)
            for (int k = 0; k < c; ++k) y[size_t(2 * i + k)] = pr[i * c + k];
        have_init = true;
    }
    if (options.init == TsneOptions::Init::Pca) {
        // Scale so the first coordinate has standard deviation 1e-4 (openTSNE's convention).
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; ++i) mean += y[size_t(2 * i)];
        mean /= double(n);
        for (int64_t i = 0; i < n; ++i)
            var += (y[size_t(2 * i)] - mean) * (y[size_t(2 * i)] - mean);
        const double sd = std::sqrt(var / double(n));
        const double s = sd > 0 ? 1e-4 / sd : 1.0;
        for (auto& v : y) v *= s;
        if (!(sd > 0)) fill_normal(y.data(), 2 * n, 1e-4, seed);  // all points equal
    } else {
        fill_normal(y.data(), 2 * n, 1e-4, seed);
    }
    result.pca_seconds = seconds_since(t0);

    // 2-3. Neighbours and affinities.
    const bool exact = options.gradient == TsneOptions::Gradient::Exact ||
                       (options.gradient == TsneOptions::Gradient::Auto && n < options.exact_max_n);
    if (exact && n > kExactGradientMaxN)
        throw UsageError(
            "the exact t-SNE gradient needs O(N^2) time and memory: use it for at most " +
            std::to_string(kExactGradientMaxN) + " points (got " + std::to_string(n) +
            "), or the FFT-accelerated gradient");
    result.exact = exact;
    SparseMatrix p;
    t0 = clock::now();
    if (exact) {
        result.neighbours = int(n - 1);
        result.neighbours_seconds = 0.0;
        p = symmetrise(all_pairs_conditional(data, n, dim, options.perplexity, pool), pool);
        result.affinities_seconds = seconds_since(t0);
    } else {
        const int k = neighbours_for(options.perplexity, n);
        result.neighbours = k;
        KnnOptions ko = options.knn;
        ko.seed = seed;
        ko.threads = pool.size();
        result.knn = use_exact_knn(ko, n) ? detail::knn_exact(data, n, dim, k, pool)
                                          : detail::knn_hnsw(data, n, dim, k, ko, pool);
        result.neighbours_seconds = seconds_since(t0);
        report_progress(progress, 0.1);
        t0 = clock::now();
        p = symmetrise(conditional_from_knn(result.knn, options.perplexity, pool, nullptr), pool);
        result.affinities_seconds = seconds_since(t0);
    }
    reduced = at::Tensor();
    report_progress(progress, 0.12);

    // 4. Gradient descent with momentum and per-coordinate gains (delta-bar-delta).
    t0 = clock::now();
    const double lr = options.learning_rate > 0
                          ? options.learning_rate
                          : std::max(double(n) / options.early_exaggeration, 50.0);
    result.learning_rate = lr;
    std::vector<double> grad(size_t(2 * n)), update(size_t(2 * n), 0.0), gains(size_t(2 * n), 1.0);
    std::vector<double> rep(size_t(2 * n));
    detail::FftRepulsion fft(options.fft);
    auto gradient = [&](double exaggeration) {
        const double z = exact ? exact_repulsion(y.data(), n, rep.data(), pool)
                               : fft.repulsion(y.data(), n, rep.data(), pool);
        combine_gradient(p, y.data(), exaggeration, rep.data(), z, grad.data(), pool);
        return z;
    };
    constexpr int64_t kBlock = 4096;
    const int64_t blocks = (n + kBlock - 1) / kBlock;
    std::vector<double> block_sum(size_t(2 * blocks));
    const int iterations = options.iterations > 0 ? options.iterations : tsne_auto_iterations(n);
    result.iterations = iterations;
    for (int it = 0; it < iterations; ++it) {
        const bool early = it < options.early_exaggeration_iters;
        const double exaggeration = early ? options.early_exaggeration : options.exaggeration;
        const double momentum = early ? options.momentum_early : options.momentum;
        gradient(exaggeration);
        // Step, and the coordinate sums per fixed block of points (added in block order).
        pool.for_range(blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t blk = b0; blk < b1; ++blk) {
                double sum[2] = {0.0, 0.0};
                for (int64_t i = 2 * blk * kBlock; i < 2 * std::min(n, (blk + 1) * kBlock); ++i) {
                    // Grow the gain while the gradient keeps pointing the way we are moving.
                    double& g = gains[size_t(i)];
                    g = (grad[size_t(i)] > 0) != (update[size_t(i)] > 0) ? g + 0.2 : g * 0.8;
                    g = std::max(g, options.min_gain);
                    update[size_t(i)] = momentum * update[size_t(i)] - lr * g * grad[size_t(i)];
                    y[size_t(i)] += update[size_t(i)];
                    sum[i & 1] += y[size_t(i)];
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
        if (it % 10 == 9)
            report_progress(progress, 0.12 + 0.88 * double(it + 1) / double(iterations));
    }
    // KL divergence of the final layout (the approximate Z for the FFT method).
    const double z = exact ? exact_repulsion(y.data(), n, rep.data(), pool)
                           : fft.repulsion(y.data(), n, rep.data(), pool);
    result.kl_divergence = kl_divergence(p, y.data(), z, pool);
    result.optimisation_seconds = seconds_since(t0);

    result.embedding = at::empty({n, 2}, at::kFloat);
    float* out = result.embedding.data_ptr<float>();
    for (int64_t i = 0; i < 2 * n; ++i) out[i] = float(y[size_t(i)]);
    report_progress(progress, 1.0);
    return result;
}

TsneResult tsne(const at::Tensor& features_nd, const TsneOptions& options, const RunContext& context) {
    at::Tensor f = as_float_matrix(features_nd, "t-SNE features");
    return tsne(f.data_ptr<float>(), f.size(0), f.size(1), options, context);
}

// --- metrics -----------------------------------------------------------------------------

double knn_label_accuracy(const float* embedding, const int64_t* labels, int64_t n, int k,
                          int threads) {
    if (n < 2) throw Error("kNN accuracy needs at least 2 points, got " + std::to_string(n));
    if (k < 1) throw Error("kNN accuracy needs k >= 1");
    check_finite(embedding, n, 2, "embedding");
    k = int(std::min<int64_t>(k, n - 1));
    ThreadPool pool(threads);
    const KnnGraph g = detail::knn_grid_2d(embedding, n, k, pool);
    std::vector<uint8_t> correct(size_t(n), 0);
    pool.for_range(n, [&](int64_t b, int64_t e) {
        std::vector<std::pair<int64_t, int>> votes;
        for (int64_t i = b; i < e; ++i) {
            votes.clear();
            for (int j = 0; j < k; ++j) {
                const int64_t label = labels[g.index[size_t(i * k + j)]];
                auto it = std::find_if(votes.begin(), votes.end(),
                                       [&](const auto& v) { return v.first == label; });
                if (it == votes.end())
                    votes.emplace_back(label, 1);
                else
                    ++it->second;
            }
            int64_t best = 0;
            int best_count = 0;
            for (const auto& v : votes)
                if (v.second > best_count || (v.second == best_count && v.first < best)) {
                    best = v.first;
                    best_count = v.second;
                }
            correct[size_t(i)] = best == labels[i];
        }
    });
    int64_t hits = 0;
    for (uint8_t c : correct) hits += c;
    return double(hits) / double(n);
}

double knn_label_accuracy(const at::Tensor& embedding_n2, const at::Tensor& labels_n, int k,
                          int threads) {
    at::Tensor e = as_float_matrix(embedding_n2, "embedding");
    if (e.size(1) != 2)
        throw Error("embedding must be [N,2], got [N," + std::to_string(e.size(1)) + "]");
    if (!labels_n.defined() || labels_n.dim() != 1 || labels_n.size(0) != e.size(0))
        throw Error("labels must be [N] with N = " + std::to_string(e.size(0)) +
                    " (one per point)");
    if (at::isFloatingType(labels_n.scalar_type()) || labels_n.is_complex())
        throw Error("labels must be integers");
    at::Tensor l = labels_n.to(at::kCPU).to(at::kLong).contiguous();
    return knn_label_accuracy(e.data_ptr<float>(), l.data_ptr<int64_t>(), e.size(0), k, threads);
}

double neighbour_preservation(const KnnGraph& feature_knn, const float* embedding, int k,
                              int threads) {
    const int64_t n = feature_knn.n;
    if (n < 2) throw Error("neighbour preservation needs at least 2 points");
    if (k < 1 || k > feature_knn.k)
        throw Error("neighbour preservation: k = " + std::to_string(k) + " is not in 1.." +
                    std::to_string(feature_knn.k) + " (the neighbours given)");
    check_finite(embedding, n, 2, "embedding");
    ThreadPool pool(threads);
    const KnnGraph g = detail::knn_grid_2d(embedding, n, k, pool);
    const double total = pool.sum_blocks(n, [&](int64_t b, int64_t e) {
        double s = 0.0;
        for (int64_t i = b; i < e; ++i) {
            int shared = 0;
            for (int a = 0; a < k; ++a)
                for (int c = 0; c < k; ++c)
                    shared += feature_knn.index[size_t(i * feature_knn.k + a)] ==
                              g.index[size_t(i * k + c)];
            s += double(shared) / double(k);
        }
        return s;
    });
    return total / double(n);
}

double neighbour_preservation(const float* features, int64_t d, const float* embedding, int64_t n,
                              int k, int threads) {
    if (n < 2) throw Error("neighbour preservation needs at least 2 points");
    check_finite(features, n, d, "feature");
    k = int(std::min<int64_t>(k, n - 1));
    KnnOptions ko;
    ko.threads = threads;
    const KnnGraph f = nearest_neighbours(features, n, d, k, ko);
    return neighbour_preservation(f, embedding, k, threads);
}

double neighbour_preservation(const at::Tensor& features_nd, const at::Tensor& embedding_n2, int k,
                              int threads) {
    at::Tensor f = as_float_matrix(features_nd, "features");
    at::Tensor e = as_float_matrix(embedding_n2, "embedding");
    if (e.size(1) != 2)
        throw Error("embedding must be [N,2], got [N," + std::to_string(e.size(1)) + "]");
    if (e.size(0) != f.size(0))
        throw Error("features have " + std::to_string(f.size(0)) + " rows but the embedding has " +
                    std::to_string(e.size(0)));
    return neighbour_preservation(f.data_ptr<float>(), f.size(1), e.data_ptr<float>(), f.size(0), k,
                                  threads);
}

}  // namespace convscope
