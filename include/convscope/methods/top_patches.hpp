#pragma once
// Maximally activating dataset patches: for every channel of the chosen layers, the k images in
// which the channel's activation is highest (and the k lowest), each with the value and position
// of the image's spatial maximum and the unit's receptive field as a box in input pixels; per
// channel a histogram of the per-image maxima and the number of images where the channel is
// never active (> 0 nowhere).
//
// One streaming pass over the data (one forward pass per batch for all layers). The state is
// layers x channels x (2k entries + a histogram of bounded size), never the dataset's
// activations. A scan can be checkpointed and resumed, and split into shards (every n-th batch)
// whose results merge into exactly what one scan gives.
#include <ATen/core/Tensor.h>

#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <opencv2/core.hpp>
#include <string>
#include <utility>
#include <vector>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/run_context.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace convscope {

class Model;

struct TopPatchesOptions {
    // Layers to scan (dotted names); empty = all conv layers of the model. A 1-D layer (e.g. a
    // Linear) is scanned as if its units were channels of size 1x1.
    std::vector<std::string> layers;
    int64_t k = 9;             // entries kept per channel and direction; 1 <= k <= images
    bool lowest = true;        // also keep the k images with the lowest per-image maximum
    int64_t batch_size = 128;  // images per forward pass; shards and checkpoints depend on it
    int histogram_bins = 20;   // bins of the output histogram of per-image maxima (>= 1)
    // Use the gradient-derived box for every layer, not only where the analytic receptive field
    // is unknown (slower: one backward pass per entry).
    bool gradient_boxes = false;
    // Checkpoint file ("" = none). If it exists, the scan resumes from it (it must come from the
    // same model, data, selection and options, else Error); the state is written atomically every
    // `checkpoint_every` batches, when the context's progress cancels, and at the end.
    std::string checkpoint_path;
    int64_t checkpoint_every = 10;
    // Shard i of n: scan batches b with b % n == i (of the selection cut into batch_size
    // batches). Results of shards 0..n-1 merge exactly (merge_top_patches).
    int64_t shard_index = 0;
    int64_t shard_count = 1;
};

// One image in a channel's top or bottom list.
struct PatchEntry {
    float value = 0.f;  // the channel's maximum over the image's spatial positions
    int64_t y = 0, x = 0;  // position of that maximum (the first one in row-major order)
    int64_t image = 0;     // dataset index
    int64_t label = -1;    // dataset label, -1 if unknown
    Box box;               // receptive field of unit (y, x) in input pixels, clipped
};

// Histogram of per-image maxima, exact and mergeable: per-image maxima are counted in fine
// buckets of the float line (sign, exponent and the top kHistogramMantissaBits mantissa bits,
// relative width 2^-7), whose counts add up exactly when shards merge. Output bins are derived
// from them deterministically (make_histogram).
constexpr int kHistogramMantissaBits = 7;

struct ChannelPatches {
    std::vector<PatchEntry> top;     // highest first (ties: lower image index first), <= k
    std::vector<PatchEntry> bottom;  // lowest first (ties: lower image index first), <= k
    int64_t dead = 0;                // images whose maximum is <= 0 (never active)
    float min = 0.f, max = 0.f;      // range of the per-image maxima (valid if images > 0)
    std::vector<std::pair<uint32_t, int64_t>> fine;  // (bucket key, count), keys ascending
};

struct LayerPatches {
    std::string name;
    std::vector<int64_t> output_shape;  // C,H,W (or F for 1-D layers); token and channels-last
                                        // layers as their maps (C,h,w)
    ReceptiveField rf;
    // Token layers past attention over all tokens see the whole image: their crops show the
    // token's own patch (crop_rf, the grid's cells) while rf stays the true field. Otherwise
    // crop_rf = rf.
    ReceptiveField crop_rf;
    bool gradient_boxes = false;  // boxes come from input gradients (rf unknown or forced)
    std::vector<ChannelPatches> channels;
};

struct TopPatchesResult {
    // Identity of what was scanned (checked by resume and merge).
    std::string model_path, model_hash;  // hash: file SHA-256, or of the parameters in memory
    std::string data_spec, data_hash;
    std::string data_labels;              // labels file the data was opened with ("" = none), set by the caller
    std::string indices_hash;             // SHA-256 of the selected indices
    int64_t num_selected = 0;             // images in the selection (all shards)
    std::vector<std::string> class_names;
    Preprocess preprocess;                // to show the crops
    int64_t k = 0;
    bool lowest = true;
    int64_t batch_size = 0;
    int histogram_bins = 0;
    int64_t shard_index = 0, shard_count = 1;  // 0/1 for a complete result (a scan or a merge)
    int64_t images_scanned = 0;                // images that went into this result
    std::vector<LayerPatches> layers;
};

// Scans `indices` of `data` (preprocessed with `pre`) through `model`. Throws Error for k < 1,
// k larger than the selection, unknown layers, a shard index outside 0..n-1 or more shards than
// batches, and a checkpoint that belongs to another model, data or options. Cancelled if the
// context's progress (the fraction of this shard's batches done) asks to stop, after writing the
// checkpoint. Cost: one forward pass per batch (plus, where boxes come from
// gradients, one forward+backward per kept entry at the end).
TopPatchesResult top_patches(const Model& model, const Dataset& data,
                             const std::vector<int64_t>& indices, const Preprocess& pre,
                             const TopPatchesOptions& opts, const RunContext& context = {});

// Merges the results of shards 0..n-1 of one scan into the result one scan gives. Throws Error
// if they come from different models, data or options, or a shard is missing or given twice.
TopPatchesResult merge_top_patches(const std::vector<TopPatchesResult>& shards);

// top_patches.json: identity, options, and per layer and channel the top/bottom entries,
// dominant labels of the top entries, histogram, dead fraction and the mergeable state.
// Deterministic: equal results give equal bytes.
nlohmann::json top_patches_to_json(const TopPatchesResult& r);
// Reads top_patches_to_json's output back (for --merge). Throws Error for anything else.
TopPatchesResult top_patches_from_json(const nlohmann::json& j, const std::string& what);

struct Histogram {
    std::vector<float> edges;     // ascending, bins + 1 (bins may be fewer than asked)
    std::vector<int64_t> counts;  // bin i holds maxima v with edges[i] <= v < edges[i+1]
};
// The output histogram of a channel: `bins` nearly equal-width bins from its min to its max,
// with edges moved down to fine-bucket boundaries (by < 2^-7 relative) so counts are exact.
// Empty for a channel that saw no images.
Histogram make_histogram(const ChannelPatches& c, int bins);

// Labels among the top entries, most frequent first (ties: lower label first): (label, count).
std::vector<std::pair<int64_t, int64_t>> dominant_labels(const ChannelPatches& c);

// Crops of the entries' boxes from their images (preprocessing undone with pre.to_display),
// each resized to fit size_px x size_px (resize_to_fit; nearest for integer enlargement).
// crops[i][j] is the picture of entries[i][j]. Images are loaded in chunks, each once.
std::vector<std::vector<cv::Mat>> patch_crops(const Dataset& data, const Preprocess& pre,
                                              const std::vector<std::vector<PatchEntry>>& entries,
                                              int size_px);

// The region of the input where the gradient of unit (channel, y, x) of `layer` is non-zero
// (|gradient| summed over input channels), for each image of images_nchw [N,C,H,W] (preprocessed)
// with its own unit: units[n] = {channel, y, x}. A unit whose gradient is zero everywhere gets the
// whole image. Cost: one forward+backward pass of the batch.
std::vector<Box> gradient_boxes(const Model& model, const std::string& layer,
                                const at::Tensor& images_nchw,
                                const std::vector<std::array<int64_t, 3>>& units);

}  // namespace convscope
