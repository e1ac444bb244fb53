#include "methods/detail/blur.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <opencv2/imgproc.hpp>

#include "convscope/runtime/error.hpp"

namespace convscope::detail {

at::Tensor gaussian_blur(const at::Tensor& x, double sigma, BlurBorder border) {
    CONVSCOPE_CHECK(x.dim() == 4 && x.is_floating_point(), "gaussian_blur takes a floating [N,C,H,W] batch");
    if (sigma <= 0) return x.clone();
    const int64_t h = x.size(2), w = x.size(3);
    const auto wanted = static_cast<int64_t>(std::ceil(3.0 * sigma));
    // OpenCV's reflection (BORDER_REFLECT_101) is kept within the image: a pad below the side.
    const bool reflect = border == BlurBorder::Reflect;
    const int64_t rh = reflect ? std::max<int64_t>(0, std::min(wanted, h - 1)) : wanted;
    const int64_t rw = reflect ? std::max<int64_t>(0, std::min(wanted, w - 1)) : wanted;
    const int cv_border = reflect ? cv::BORDER_REFLECT_101 : cv::BORDER_REPLICATE;
    at::Tensor src = x.to(torch::kFloat).contiguous().view({-1, h, w});
    at::Tensor out = torch::empty_like(src);
    at::parallel_for(0, src.size(0), 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const cv::Mat in(static_cast<int>(h), static_cast<int>(w), CV_32F, src[i].data_ptr<float>());
            cv::Mat dst(static_cast<int>(h), static_cast<int>(w), CV_32F, out[i].data_ptr<float>());
            cv::GaussianBlur(in, dst, cv::Size(static_cast<int>(2 * rw + 1), static_cast<int>(2 * rh + 1)), sigma,
                             sigma, cv_border);
        }
    });
    return out.view(x.sizes()).to(x.scalar_type());
}

}  // namespace convscope::detail
