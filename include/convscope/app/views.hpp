#pragma once
// Pictures and small data pulls that both front ends of "see it all" show: the web explorer
// (src/app/explorer.cpp) and the HTML report (src/app/report.cpp). Everything is drawn with render.hpp;
// the methods themselves are called, never re-implemented.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "convscope/methods/attention.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/progress.hpp"
#include "convscope/runtime/receptive_field.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::detail {

// The class names to show: the model's if it has them, else the data's.
std::vector<std::string> class_names_for(const Model& model, const Dataset& data);

// One preprocessed model input input_chw [C,H,W] as the picture a person sees (preprocessing
// undone).
cv::Mat input_picture(const Preprocess& pre, const at::Tensor& input_chw);
// Enlarges img by an integer factor (nearest neighbour) so its longer side reaches target_px.
cv::Mat readable(const cv::Mat& img, int target_px);

// The layer whose weights make the channels of `layer`: the layer itself if it is a conv,
// else the conv right before it when only per-channel layers (batch norm, activations, dropout)
// with the same output shape lie between; "" when there is none.
std::string filter_layer_for(const Model& model, const std::string& layer);
// Heat map pictures of one image.
struct HeatPictures {
    cv::Mat heat;     // the map on its own, enlarged, with a colorbar
    cv::Mat overlay;  // the map over the input
    int factor = 1;   // input pixels -> picture pixels
};
// Occlusion: the per-pixel drop map (mean over input channels) of image n on a diverging map.
HeatPictures occlusion_pictures(const cv::Mat& base_rgb, const OcclusionResult& r, int64_t n,
                                int factor);
// The colour range of one attribution heat map heat_hw [H,W]: [0, 99.5th percentile] for pixel
// methods (a few extreme pixels would wash out the picture), [0, max] for the smooth CAM maps,
// [min, max] for RISE (mean scores, which need not start at 0).
Range attribution_range(AttributionMethod method, const at::Tensor& heat_hw);
// Attributions of image n: inferno over attribution_range, as `convscope attribute` draws them.
HeatPictures attribution_pictures(const cv::Mat& base_rgb, const AttributionResult& r, int64_t n,
                                  int factor);

// The attention view's data for item n (report and explorer draw it with attentionview.js):
// {"grid": [h, w], "extra_front": k, "tokens": T, "layers": [{"name", "heads": [[T x h*w row by
// row] per head], "mean": [T x h*w]}], "rollout": [h*w]}: for every query token (extra tokens
// first, then the grid row by row) its attention over the grid's keys. Only attention over all
// tokens; values rounded to 4 significant digits. Per-head rows are left out (then "heads" is
// empty) where they would exceed max_values, and then the first layers too. rollout_hw: [N,h,w]
// or undefined.
nlohmann::json attention_view(const AttentionResult& attention, int64_t n, const at::Tensor& rollout_hw,
                              int64_t max_values);

// Every layer with an output (what scans and live views offer).
std::vector<std::string> layers_with_output(const Model& model);


}  // namespace convscope::detail
