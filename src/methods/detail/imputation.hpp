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
// the batch nor on the threads, without a generator and a tensor per image. The common case
// (a draw inside its layer's rectangle under the curve) is inline; the wedges and the tail not.
class NormalStream {
public:
    // Layer i (1..127) spans [0, w[i] 2^24); a magnitude u < k[i] lies under the curve.
    struct Tables {
        uint32_t k[128];
        float w[128], f[128];
    };

    explicit NormalStream(uint64_t seed) : state_(seed), t_(tables()) {}

    float next() {
        const uint64_t b = bits();
        const int i = int(b & 127);
        const uint32_t u = uint32_t(b >> 40);
        const float x = float(u) * t_.w[i] * (1.f - 2.f * float((b >> 7) & 1));  // the sign without a branch
        if (u < t_.k[i]) return x;
        return edge(b);
    }

private:
    static const Tables& tables();
    uint64_t bits() {
        uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }
    float edge(uint64_t b);  // a draw outside the rectangles: the wedge or tail test, else again
    uint64_t state_;
    const Tables& t_;
};

}  // namespace convscope::detail
