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

// Standard normal draws, a pure function of one 64-bit seed: splitmix64's stream through the
// ziggurat of Marsaglia and Tsang (2000; 128 layers, 24-bit magnitudes, a separate sign bit).
// Each image's imputation noise comes from its own stream, so that its values depend neither on
// the batch nor on the threads, without a generator and a tensor per image.
class NormalStream {
public:
    explicit NormalStream(uint64_t seed) : state_(seed) {}
    float next();

private:
    uint64_t bits();
    uint64_t state_;
};

}  // namespace convscope::detail
