#pragma once
// Receptive fields in input pixels (Araujo, Norris & Sim, Distill 2019).
// Unit (y, x) of a layer sees input rows [y*stride_y - pad_y, y*stride_y - pad_y + size_y - 1]
// (and the same for columns), before clipping to the image.
#include <cstdint>

namespace convscope {

struct ReceptiveField {
    // kind: Exact = analytic box; Global = the unit sees the whole input (after flatten, linear,
    // global pooling); Unknown = the graph makes the analytic box ambiguous (for example paths
    // with different strides merged, or an op we cannot analyse): use a gradient-derived region.
    enum class Kind { Exact, Global, Unknown };
    Kind kind = Kind::Exact;
    int64_t size_y = 1, size_x = 1;      // receptive field size
    int64_t stride_y = 1, stride_x = 1;  // effective stride (input pixels per output step)
    int64_t pad_y = 0, pad_x = 0;        // effective padding (offset of unit 0's box)
};

// A box in input pixels, inclusive start, exclusive end, clipped to the image.
struct Box {
    int64_t y0 = 0, x0 = 0, y1 = 0, x1 = 0;
};

// The box of unit (y, x) clipped to an image of height h and width w. Global and Unknown give
// the whole image.
Box unit_box(const ReceptiveField& rf, int64_t y, int64_t x, int64_t h, int64_t w);

}  // namespace convscope
