#pragma once
// RISE (Petsiuk, Das & Saenko 2018): the saliency of a pixel is the mean score of randomly
// masked copies of the image weighted by how much of the pixel each mask keeps,
//   S(x, y) = 1 / (N keep) sum_i score(baseline + M_i * (image - baseline)) M_i(x, y).
// A mask M_i is a cells x cells grid of cells kept with probability `keep`, upsampled bilinearly
// (align_corners = false) to (cells + 1) times the cell size ceil(H / cells) x ceil(W / cells)
// and cropped to H x W at a random shift of less than one cell on each axis.
#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>

namespace convscope::rise {

// The masks are drawn this many at a time from the seeded generator, whatever the batch size,
// so that a seed gives the same masks for every batch size.
constexpr int64_t kMaskChunk = 256;

// The next `count` masks [count,H,W] float32 in [0,1] of the generator's sequence.
at::Tensor masks(at::Generator& gen, int64_t count, int64_t h, int64_t w, int64_t cells, double keep);

}  // namespace convscope::rise
