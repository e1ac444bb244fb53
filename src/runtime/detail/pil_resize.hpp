#pragma once
// Antialiased bilinear resizing as Pillow's Image.resize(size, BILINEAR) computes it, which is
// what torchvision's Resize does to PIL images: a separable triangle filter whose support grows
// with the downscale factor, horizontal pass first. For 8-bit pictures the coefficients and the
// rounding after each pass are Pillow's fixed-point ones, so the result equals Pillow's byte for
// byte; other inputs are filtered in float.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace convscope::detail {

// chw [C,H,W] float32 in [0,1] -> [C,out_h,out_w] float32. `eight_bit`: values are k/255 and
// the result is rounded to k/255 after each pass, as Pillow does for 8-bit images.
at::Tensor pil_resize_bilinear(const at::Tensor& chw, int64_t out_h, int64_t out_w, bool eight_bit);

// Whether every value of x is k/255 for an integer k (a picture decoded from 8-bit data).
bool is_eight_bit(const at::Tensor& x);

}  // namespace convscope::detail
