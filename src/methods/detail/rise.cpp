#include "methods/detail/rise.hpp"

#include <torch/torch.h>

namespace convscope::rise {

at::Tensor masks(at::Generator& gen, int64_t count, int64_t h, int64_t w, int64_t cells, double keep) {
    namespace F = torch::nn::functional;
    const int64_t ch = (h + cells - 1) / cells, cw = (w + cells - 1) / cells;
    const at::Tensor grid = (torch::rand({count, 1, cells, cells}, gen, torch::kFloat) < keep).to(torch::kFloat);
    const at::Tensor dy = torch::randint(0, ch, {count}, gen, torch::kLong);
    const at::Tensor dx = torch::randint(0, cw, {count}, gen, torch::kLong);
    const at::Tensor up = F::interpolate(grid, F::InterpolateFuncOptions()
                                                   .size(std::vector<int64_t>{(cells + 1) * ch, (cells + 1) * cw})
                                                   .mode(torch::kBilinear)
                                                   .align_corners(false));
    at::Tensor out = torch::empty({count, h, w}, torch::kFloat);
    const auto y0 = dy.accessor<int64_t, 1>(), x0 = dx.accessor<int64_t, 1>();
    for (int64_t i = 0; i < count; ++i) out[i] = up[i][0].slice(0, y0[i], y0[i] + h).slice(1, x0[i], x0[i] + w);
    return out;
}

}  // namespace convscope::rise
