#pragma once
// Gaussian blur of image batches, shared by integrated gradients' blurred baseline and feature
// visualisation's blur regulariser.
#include <ATen/core/Tensor.h>

namespace convscope::detail {

// images_nchw [N,C,H,W] floating -> the same shape, each channel blurred with a Gaussian of
// standard deviation sigma pixels (separable, radius ceil(3 sigma) limited to the image size,
// reflected borders). sigma <= 0 returns a copy. Differentiable. Cost: O(N*C*H*W*radius).
at::Tensor gaussian_blur(const at::Tensor& images_nchw, double sigma);

}  // namespace convscope::detail
