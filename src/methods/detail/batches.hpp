#pragma once
// Forward passes in batches, shared by the methods that score many copies of their images.
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace convscope {

class Model;

namespace detail {

// The model's output for images [N,C,H,W], batch_size images per forward pass (no autograd).
at::Tensor forward_chunks(const Model& model, const at::Tensor& images, int64_t batch_size);

}  // namespace detail
}  // namespace convscope
