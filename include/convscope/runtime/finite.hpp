#pragma once
// Inputs holding NaN or Inf. By default every command, the report and the explorer refuse them
// with one message naming the item, channel and position of the first such value. For people
// who debug NaNs, set_allow_nonfinite(true) (the CLI's --allow-nonfinite) lets them through: they
// propagate through the model, and the pictures paint non-finite values in kNonFiniteColour
// (render.hpp).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace convscope {

// Process-wide; false by default.
bool allow_nonfinite();
void set_allow_nonfinite(bool allow);

// Unless allow_nonfinite(): throws Error when images_nchw [N,C,H,W] holds a NaN or an infinity,
// naming the first one: "item I holds NaN or Inf values (channel c, row y, column x)", with I
// indices[n] (the dataset index of row n) when given, else "n of the batch".
void check_finite_input(const at::Tensor& images_nchw, const std::vector<int64_t>* indices = nullptr);

}  // namespace convscope
