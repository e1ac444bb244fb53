// PCA by the covariance matrix's eigenvectors, for t-SNE's reduction and initial layout (see tsne.hpp).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/tsne_common.hpp"

namespace convscope {
namespace detail {

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

}  // namespace detail

using detail::ThreadPool;
using detail::check_finite;

PcaResult pca(const float* x, int64_t n, int64_t d, int components, int threads) {
    if (n < 2) throw Error("PCA needs at least 2 rows, got " + std::to_string(n));
    if (components < 1 || components > d)
        throw Error("PCA components must be in 1.." + std::to_string(d) + ", got " +
                    std::to_string(components));
    check_finite(x, n, d, "feature");
    ThreadPool pool(threads);
    return pca_impl(x, n, d, components, pool);
}

}  // namespace convscope
