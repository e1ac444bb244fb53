#pragma once
// Gaussian blur of image batches, shared by occlusion's blurred baseline, integrated gradients'
// blurred baseline and feature visualisation's blur regulariser.
#include <ATen/core/Tensor.h>

namespace convscope::detail {

// How pixels beyond the edge are made up: Reflect mirrors without repeating the edge pixel (the
// radius is then limited to the side minus one), Replicate repeats the edge pixel (any radius;
// OpenCV's BORDER_REPLICATE).
enum class BlurBorder { Reflect, Replicate };

// images_nchw [N,C,H,W] floating -> the same shape, each channel blurred with a Gaussian of
// standard deviation sigma pixels (separable, radius ceil(3 sigma)). sigma <= 0 returns a copy.
// OpenCV's GaussianBlur on each plane (computed in float32). Cost: O(N*C*H*W*radius).
at::Tensor gaussian_blur(const at::Tensor& images_nchw, double sigma, BlurBorder border = BlurBorder::Reflect);

}  // namespace convscope::detail
