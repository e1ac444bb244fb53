#pragma once
// Activations: the feature maps of any layers for some inputs, as values, statistics and pictures.
// All chosen layers and all inputs come from ONE forward pass with taps (Model::forward_taps).
//
// Per layer and input the pictures are:
// - a grid with one tile per channel (layers with C,H,W outputs and H*W > 1), or a bar strip with
//   one bar per unit (1-D outputs F, and C,1,1 outputs such as global pooling), with the input
//   shown to its left (preprocessing undone with Preprocess::to_display);
// - for grids, an overlay: the sum of the top_channels channels with the largest mean activation
//   for that input, upsampled (bilinear) to the input and drawn over it.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/layout.hpp"
#include "convscope/runtime/run_context.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope {

class Model;

enum class ActivationScale {
    Layer,  // one value range for all tiles of a layer (over all inputs): channels compare
    Tile,   // each tile its own range: every channel's structure is visible
};

enum class ChannelOrder {
    Index,  // tiles in channel order
    Mean,   // by that input's mean activation, largest first (ties: lower index first)
};

struct ActivationsOptions {
    // Layer names (Model::layers()). Empty = all layers with a C,H,W or F output, in
    // Model::layers() order (others, e.g. 3-D sequence outputs, are listed in
    // ActivationsResult::skipped). A named layer with another output rank is an Error.
    std::vector<std::string> layers;
    Colormap colormap = Colormap::Viridis;  // viridis, gray and inferno suit activations
    ActivationScale scale = ActivationScale::Layer;
    ChannelOrder order = ChannelOrder::Index;
    // How the inputs were made from [0,1] pixels, to show them (default: they are [0,1] pixels).
    Preprocess preprocess;
    bool pictures = true;  // false: values and statistics only (no pictures at all)
    bool overlays = true;  // overlay pictures (when pictures is true)
    int tile_px = 24;      // tiles are upscaled (nearest) by readable_factor(H, W, tile_px)
    int bar_height = 96;   // height of bar strips in px
    int top_channels = 3;  // channels summed in the overlay (>= 1)
    float overlay_alpha = 0.5f;
    int overlay_px = 224;  // the overlay's input is upscaled (nearest) to at least this size
    int input_px = 224;    // the input beside a grid: longer side min(grid height, input_px)
};

// One layer's activations for all N inputs.
struct LayerActivations {
    std::string name;
    // The layer's output exactly as the model computed it: [N,C,H,W] or [N,F] float32. Channels-last
    // maps and tokens are shown as maps [N,C,h,w] (as_maps in runtime/layout.hpp); their extra
    // tokens (a class token) are in extra_tokens [N,k,D] (k = 0 for other layouts).
    at::Tensor values;
    Layout layout;  // the layer's output layout
    at::Tensor extra_tokens;
    bool spatial = false;  // shown as a tile grid (C,H,W with H*W > 1); else as a bar strip
    // Per input and channel (unit), over its H*W positions ([N,C] float32): mean, maximum, and
    // fraction of positions > 0. For 1-D layers mean = max = the value, active = 0 or 1.
    at::Tensor channel_mean, channel_max, channel_active;
    // The same over all inputs and positions ([C] float32).
    at::Tensor mean, max, active;
    // Per input: channels in the order the grid shows them (ChannelOrder), and the top_channels
    // channels with the largest mean (the overlay's channels).
    std::vector<std::vector<int64_t>> order;
    std::vector<std::vector<int64_t>> strongest;
    Range range;  // the layer's value range over all inputs (the tiles' range for scale Layer)
    // Pictures (empty unless options.pictures): per input the grid or bar strip alone, the same
    // with the input to its left (4 px apart, top-aligned; the input's longer side scaled to
    // min(grid height, input_px)), and the overlay (grids only; empty for bar strips and unless
    // options.overlays).
    std::vector<cv::Mat> grids;
    std::vector<cv::Mat> pictures;
    std::vector<cv::Mat> overlays;
};

struct ActivationsResult {
    at::Tensor output;                    // the model's output [N,K]
    std::vector<LayerActivations> layers;  // in the order asked for (or Model::layers() order)
    // Per input: the picture of the input as given (to_display), empty when it has neither 1 nor 3
    // channels or pictures are off.
    std::vector<cv::Mat> inputs;
    std::vector<std::string> skipped;  // "name: reason" for layers left out of "all layers"
};

// Runs images_nchw [N,C,H,W] float32 (preprocessed model inputs) once through the model with
// taps at the chosen layers and makes values, statistics and pictures. Throws Error for bad
// input (Model::forward_taps' checks), unknown layers (closest names) and layers whose output is
// neither C,H,W nor F. Pictures of different layers and inputs are made in parallel
// (at::parallel_for). Cost: one forward pass plus O(activation values + picture pixels).
ActivationsResult activations(const Model& model, const at::Tensor& images_nchw,
                              const ActivationsOptions& options, const RunContext& context = {});

// Names: "layer"/"tile" and "index"/"mean"; the parsers throw UsageError listing the valid ones.
const char* activation_scale_name(ActivationScale s);
const char* channel_order_name(ChannelOrder o);
ActivationScale parse_activation_scale(const std::string& name);
ChannelOrder parse_channel_order(const std::string& name);

}  // namespace convscope
