// Embedding metrics: kNN label accuracy and neighbour preservation, and the public nearest
// neighbour searches (see tsne.hpp).
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

using detail::ThreadPool;
using detail::check_finite;
using detail::as_float_matrix;
using detail::use_exact_knn;

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
