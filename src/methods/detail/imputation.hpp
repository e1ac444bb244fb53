#pragma once
// ROAD's linear imputation of one image: the solvers of its sparse system (conjugate gradients on
// the image grid, Eigen's sparse LDL^T) and the rule that picks one.
#include <cstdint>

#include "convscope/methods/faithfulness.hpp"

namespace convscope::detail {

// The linear imputation of one image img [C,H,W] (float32, contiguous) where removed [H,W] is
// true, written into out [C,H,W] (kept values copied): every removed value becomes the weighted
// mean of its 8 neighbours inside the image. At least one pixel must be kept.
void impute_image(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out,
                  ImputationSolver solver);

}  // namespace convscope::detail
