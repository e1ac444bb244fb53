#pragma once
// What the top-patches files share: the file formats and the boxes of the entries.
#include <cstdint>

#include "convscope/methods/top_patches.hpp"

namespace convscope::top_patches_detail {

constexpr const char* kFormat = "convscope-top-patches-1";
constexpr const char* kCheckpointFormat = "convscope-top-patches-checkpoint-1";

// Fills every entry's box: the analytic receptive field, or the gradient-derived region
// (chunk images per gradient pass).
void fill_boxes(const Model& model, const Dataset& data, const Preprocess& pre, TopPatchesResult& r,
                int64_t chunk);

}  // namespace convscope::top_patches_detail
