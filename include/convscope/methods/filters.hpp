#pragma once
// Parameters: the weights of one layer as a picture of filters, with per-filter statistics.
// Noisy first-layer filters hint at a problem (too little training, a too high learning rate, a
// sensor's noise pattern in the data); smooth, oriented, colour-opponent filters are what a
// well-trained first layer usually shows.
//
// Which layers: any module with a 4-D `weight` [F, C, kh, kw] (Conv2d: F output channels, C
// input channels per group; ConvTranspose2d's [C, F, kh, kw] is swapped into this order), and
// Linear layers [F, I] when `reshape` gives C,H,W with C*H*W = I, showing each unit's weights as a
// C-channel image (a unit of a first Linear layer on 1x28x28 inputs with reshape 1,28,28).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <opencv2/core.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/render.hpp"

namespace convscope {

class Model;

// How the weights become colours. Both are symmetric around zero (zero is the centre colour:
// white on the Diverging map, 128 gray on the Gray map and in RGB tiles): values map linearly from
// [-m, m] to the colour table (render.hpp's colour_index), with m = max |w| (Summary mode: the
// largest norm shown) over
enum class FilterNormalize {
    Filter,  // each filter's own shown values (its tiles, all its selected input channels)
    Layer,   // all shown values of the layer, so that filters compare in strength
};

// How one filter [C, kh, kw] becomes a picture.
enum class FilterMode {
    // The default. RGB when 3 input channels are shown, Gray when 1; otherwise Channels, unless
    // filters x input channels exceeds kAutoMaxSlices, then Summary (deep layers have tens of
    // thousands of slices). FiltersResult::mode says which one was used.
    Auto,
    Rgb,       // one colour tile: the three input channels as R, G, B (needs 3 shown channels)
    Gray,      // one tile on the Gray map (needs 1 shown channel)
    Channels,  // a sub-grid of the filter's input-channel slices, each on the Diverging map
    Summary,   // one tile: per position the L2 norm over the shown input channels,
               // sqrt(sum_c w[c,y,x]^2), on the Diverging map (>= 0, so white to red): where the
               // filter's weight mass sits, whatever its sign
};

// Auto picks Summary above this many slices (filters x input channels).
inline constexpr int64_t kAutoMaxSlices = 4096;
// Channels mode: the gap between filters' sub-grids and its colour (a muted blue).
inline constexpr int kFilterGroupGap = 3;
inline const cv::Scalar kFilterGroupColour(110, 140, 190);

struct FiltersOptions {
    std::string layer;                 // module path, e.g. "conv1", "features.0", "fc1" (required)
    std::vector<int64_t> filters;      // filters (output channels / units) to show, in this order;
                                       // empty = all
    std::vector<int64_t> in_channels;  // input channels (after reshape) to show; empty = all
    FilterNormalize normalize = FilterNormalize::Filter;
    FilterMode mode = FilterMode::Auto;
    std::vector<int64_t> reshape;  // C,H,W for a Linear layer; must stay empty for conv layers
    // Nearest-neighbour upscaling of every kernel pixel; 0 = readable_factor(kh, kw, 64) for
    // single-tile modes (a 3x3 kernel becomes 66 px, 7x7 becomes 70 px) and
    // readable_factor(kh, kw, 24) for Channels sub-grid tiles.
    int upscale = 0;
    // Larger pictures are refused (Error naming the size and how to shrink it).
    int64_t max_pixels = 64'000'000;
};

// Per-filter statistics over the filter's shown values (its selected input channels, all kh*kw
// positions), in double precision.
struct FilterStats {
    int64_t filter = 0;    // filter index in the layer
    double l2_norm = 0.0;  // sqrt(sum w^2)
    double mean = 0.0;     // mean of w
    double std = 0.0;      // population standard deviation of w (divides by the count)
    // Share of the filter's energy at high spatial frequencies, in [0, 1]:
    //   for each shown input channel c, w_c [kh,kw] minus its least-squares plane
    //   a + b*y + c*x (this removes the mean and a linear ramp, which a periodic DFT would
    //   otherwise see as a sawtooth with a jump at the border) leaves a residual r_c;
    //   R_c(u,v) = DFT of r_c, with normalised radial frequency
    //   rho(u,v) = sqrt((f_u / 0.5)^2 + (f_v / 0.5)^2), f_u = signed frequency of bin u in
    //   cycles per sample (u/kh for u <= kh/2, else u/kh - 1), so rho = 1 at Nyquist on an axis;
    //   noise = sum_c sum_{rho > 0.5} |R_c(u,v)|^2 / (kh*kw)  /  sum_c ||w_c - mean(w_c)||^2.
    // The numerator counts only the residual's high frequencies and the denominator the whole
    // mean-free energy, so a constant or linear (ramp) kernel scores 0, a 7x7 Gaussian blob
    // 0.007, a checkerboard 1, and white noise about 0.75 (3x3) to 0.83 (7x7 and larger).
    // 0 when the mean-free energy is 0 (constant
    // slices, 1x1 kernels). Note: on 3x3 kernels every pattern beyond a plane lies above half
    // Nyquist, so there the score is the share of energy not explained by a plane; compare
    // scores between layers of the same kernel size.
    double noise = 0.0;
};

struct FiltersResult {
    std::string layer;                 // the layer shown
    std::string layer_type;            // its module class, e.g. "Conv2d", "Linear"
    std::vector<int64_t> weight_shape; // the full weight's shape as stored, e.g. {64,3,7,7}
    // The shown weights, raw (not normalised): [F, C, kh, kw] float32 with F = filters.size()
    // and C = in_channels.size() (for Linear layers reshaped to [F, C, H, W]).
    at::Tensor weights;
    std::vector<int64_t> filters;      // layer index of each row of `weights`
    std::vector<int64_t> in_channels;  // layer index of each input channel of `weights`
    FilterMode mode = FilterMode::Auto;  // the mode used (never Auto)
    int upscale = 1;                     // the nearest-neighbour factor used per kernel pixel
    float layer_max_abs = 0.f;           // max |w| over all shown weights (Summary: largest norm)
    // The picture (RGB, CV_8UC3): filters row-major in a near-square grid (ceil(sqrt(F))
    // columns) with 1-px separators (white between RGB tiles, separator_colour_for(Gray) between
    // Gray tiles, separator_colour_for(Diverging) between Summary tiles); in Channels mode each
    // grid cell is the filter's sub-grid of input-channel slices (near-square, 1-px
    // separator_colour_for(Diverging)) and filters are kFilterGroupGap px apart in
    // kFilterGroupColour.
    cv::Mat picture;
    std::vector<FilterStats> stats;  // one per shown filter, in `filters` order
};

// Shows the weights of options.layer. Needs no input shape and runs no forward pass.
// Throws Error for an unknown layer (closest names), a layer without spatial weights and no
// reshape (listing the layers that have them), a reshape that does not match the layer's inputs,
// a reshape on a conv layer, filter or channel indices out of range, a mode that does not fit
// the shown channels (Rgb needs 3, Gray 1) and pictures larger than max_pixels.
// Cost: O(weights) for the statistics (batched FFTs of kh x kw) plus O(picture pixels).
FiltersResult filters(const Model& model, const FiltersOptions& options);

// The shape [F, C, kh, kw] that `filters` shows for a layer before any selection (for Linear
// layers with reshape: [units, C, H, W]), with the same errors as `filters`. Cheap.
std::vector<int64_t> filter_shape(const Model& model, const std::string& layer,
                                  const std::vector<int64_t>& reshape = {});

// Layers with spatial weights (4-D `weight`), in module order: what `filters` can show without
// a reshape.
std::vector<std::string> spatial_weight_layers(const Model& model);

// Canonical lower-case names: "auto", "rgb", "gray", "channels", "summary"; "filter", "layer".
const char* filter_mode_name(FilterMode mode);
const char* filter_normalize_name(FilterNormalize n);
// Parse those names; UsageError listing the valid ones.
FilterMode parse_filter_mode(const std::string& name);
FilterNormalize parse_filter_normalize(const std::string& name);

// The noise score of FilterStats::noise for one filter's weights [C, kh, kw] (any real dtype).
// Exposed for tests and for callers with weights from elsewhere.
double filter_noise_score(const at::Tensor& filter_ckk);

}  // namespace convscope
