// Input checks shared by the t-SNE files (see tsne_common.hpp).
#include "methods/detail/tsne_common.hpp"

#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "convscope/runtime/error.hpp"

namespace convscope::detail {

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

at::Tensor as_float_matrix(const at::Tensor& t, const char* name) {
    if (!t.defined() || t.dim() != 2)
        throw Error(std::string(name) + " must be a 2-D [N,D] array" +
                    (t.defined() ? ", got " + std::to_string(t.dim()) + " dimensions" : ""));
    if (!at::isFloatingType(t.scalar_type()))
        throw Error(std::string(name) + " must be floating point, got " +
                    std::string(c10::toString(t.scalar_type())));
    return t.to(at::kCPU).to(at::kFloat).contiguous();
}

bool use_exact_knn(const KnnOptions& o, int64_t n) {
    return o.method == KnnOptions::Method::Exact ||
           (o.method == KnnOptions::Method::Auto && n <= o.exact_max_n);
}

void check_affinities(const SparseMatrix& p) {
    if (p.n < 2 || int64_t(p.row_ptr.size()) != p.n + 1 || p.col.size() != p.val.size() ||
        p.row_ptr[size_t(p.n)] != p.nnz())
        throw Error("t-SNE affinities: malformed sparse matrix");
}

}  // namespace convscope::detail
