#include "convscope/runtime/finite.hpp"

#include <torch/torch.h>

#include <atomic>
#include <cmath>

#include "convscope/runtime/error.hpp"

namespace convscope {

namespace {
std::atomic<bool> g_allow{false};
}  // namespace

bool allow_nonfinite() { return g_allow.load(); }
void set_allow_nonfinite(bool allow) { g_allow.store(allow); }

void check_finite_input(const at::Tensor& x, const std::vector<int64_t>* indices) {
    if (allow_nonfinite() || !x.defined() || x.numel() == 0) return;
    const at::Tensor finite = torch::isfinite(x);
    if (finite.all().item<bool>()) return;
    const at::Tensor where = (~finite).nonzero()[0];
    std::vector<int64_t> pos(static_cast<size_t>(where.numel()));
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = where[static_cast<int64_t>(i)].item<int64_t>();
    const int64_t n = pos[0];
    const float value = [&] {
        at::Tensor t = x;
        for (int64_t k : pos) t = t[k];
        return t.item<float>();
    }();
    std::string item = indices && n < static_cast<int64_t>(indices->size()) ? std::to_string((*indices)[size_t(n)])
                                                                            : std::to_string(n) + " of the batch";
    std::string place;
    if (pos.size() == 4)
        place = " (channel " + std::to_string(pos[1]) + ", row " + std::to_string(pos[2]) + ", column " +
                std::to_string(pos[3]) + ")";
    throw Error("item " + item + " holds NaN or Inf values" + place + ", the first of them " +
                (std::isnan(value) ? "NaN" : value > 0 ? "+Inf" : "-Inf") +
                "; clean the data (numpy.nan_to_num) first, or pass --allow-nonfinite to follow them through "
                "the model");
}

}  // namespace convscope
