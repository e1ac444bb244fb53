#include "methods/detail/blur.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

namespace convscope::detail {

namespace {
// One pass along one axis: the kernel [2r+1] as a depthwise convolution over every channel.
at::Tensor blur_axis(const at::Tensor& x, const at::Tensor& kernel_1d, bool along_width) {
    namespace F = torch::nn::functional;
    const int64_t c = x.size(1);
    const int64_t r = (kernel_1d.size(0) - 1) / 2;
    at::Tensor weight = along_width ? kernel_1d.view({1, 1, 1, -1}) : kernel_1d.view({1, 1, -1, 1});
    weight = weight.expand({c, 1, weight.size(2), weight.size(3)}).contiguous();
    std::vector<int64_t> pad =
        along_width ? std::vector<int64_t>{r, r, 0, 0} : std::vector<int64_t>{0, 0, r, r};
    at::Tensor padded = F::pad(x, F::PadFuncOptions(pad).mode(torch::kReflect));
    return F::conv2d(padded, weight, F::Conv2dFuncOptions().groups(c));
}

at::Tensor kernel(double sigma, int64_t radius, const at::TensorOptions& opts) {
    at::Tensor t = torch::arange(-radius, radius + 1, opts);
    at::Tensor k = torch::exp(-(t * t) / (2.0 * sigma * sigma));
    return k / k.sum();
}
}  // namespace

at::Tensor gaussian_blur(const at::Tensor& x, double sigma) {
    if (sigma <= 0) return x.clone();
    const int64_t h = x.size(2), w = x.size(3);
    const auto wanted = static_cast<int64_t>(std::ceil(3.0 * sigma));
    // Reflection padding needs a pad smaller than the side.
    const int64_t rh = std::max<int64_t>(0, std::min(wanted, h - 1));
    const int64_t rw = std::max<int64_t>(0, std::min(wanted, w - 1));
    const auto opts = x.options();
    at::Tensor out = x;
    if (rh > 0) out = blur_axis(out, kernel(sigma, rh, opts), false);
    if (rw > 0) out = blur_axis(out, kernel(sigma, rw, opts), true);
    return out.is_same(x) ? x.clone() : out;
}

}  // namespace convscope::detail
