// t-SNE gradients: attraction (AVX2 where available), exact repulsion, KL divergence (see tsne.hpp).
#include <ATen/ATen.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/cpu_features.hpp"
#include "methods/detail/tsne_common.hpp"
#include "methods/detail/tsne_fft.hpp"

namespace convscope {
namespace detail {
namespace {

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

}  // namespace

// grad_i = 4 (exaggeration * attr_i - rep_i / z) where attr_i = sum_j P_ij q_ij (y_i - y_j).
void combine_gradient(const SparseMatrix& p, const double* y, double exaggeration,
                      const double* rep, double z, double* grad, ThreadPool& pool) {
    const double inv_z = 1.0 / z;
    std::vector<float> yf(size_t(2 * p.n));
    for (int64_t i = 0; i < 2 * p.n; ++i) yf[size_t(i)] = float(y[i]);
    const bool avx2 = cpu_has_avx2_fma();
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

}  // namespace detail

using detail::ThreadPool;
using detail::check_affinities;

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

}  // namespace convscope
