#pragma once
// The web explorer's back end (`convscope serve`): everything the server answers, as plain
// functions that return JSON and bytes, with no HTTP in sight. The server maps routes to these
// calls; the benchmark times them directly.
//
// Images are named by ids: "d<index>" for a dataset item, "u<hex>" for an uploaded or drawn
// image (kept in a bounded least-recently-used store). Long work (occlusion, attributions,
// feature visualisation, the top-9 patch scan, the dataset map) runs as background jobs with
// progress and cancellation. The top-patch scan and the dataset map are computed once per model
// and data and cached on disk under names derived from the model file's and the data's hashes.
//
// Thread-safety: every public function may be called from many threads at once.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"

namespace convscope {

class Model;
class Dataset;

// A request names something that does not exist (a layer, a dataset index, an image id, a job).
// The server answers 404.
class NotFoundError : public Error {
public:
    using Error::Error;
};
// Uploaded bytes are not an image the explorer can decode. The server answers 415.
class UnsupportedMediaError : public Error {
public:
    using Error::Error;
};

// An upload declares more pixels than the limit (max_image_pixels()). The server answers 413.
class TooLargeError : public Error {
public:
    using Error::Error;
};
// The explorer cannot take more work now (its job queue is full). The server answers 429 with
// a Retry-After of retry_after_seconds.
class BusyError : public Error {
public:
    BusyError(const std::string& message, int retry_after_seconds)
        : Error(message), retry_after_seconds(retry_after_seconds) {}
    int retry_after_seconds;
};

struct ExplorerOptions {
    // Folder for the on-disk caches (top-patch scans, dataset maps). "" = the folder of the
    // cached default model ($CONVSCOPE_CACHE_DIR, $XDG_CACHE_HOME/convscope or ~/.cache/convscope).
    std::string cache_dir;
    int64_t map_items = 10000;   // items on the dataset map: the first N of the data (<= 70000)
    int map_iterations = 750;    // t-SNE iterations for the map
    // An `embed` output folder whose map is shown instead of computing one (any number of
    // points; their items index this data). Read at construction: Error if it does not fit.
    std::string map_path;
    int64_t scan_items = 10000;  // items scanned for each channel's top-9 patches: the first N
    int feature_vis_steps = 128; // optimisation steps of a channel's feature visualisation
    int64_t max_images = 256;    // uploaded/drawn images kept for later requests (LRU)
    int workers = 2;             // background jobs that run at once (>= 1)
    int64_t max_queued_jobs = 64;  // jobs waiting for a worker (>= 1); more get BusyError
    double max_job_seconds = 600;  // a job running longer is stopped with an error (0 = no limit)
    uint64_t seed = 0;           // t-SNE, feature visualisation, SmoothGrad
};

// Which activations a live update returns, and how coarse.
struct LiveOptions {
    std::vector<std::string> layers;  // empty = every layer of the model
    int64_t max_channels = 64;        // the first this many channels of each layer (1..1024)
    int64_t max_side = 56;            // larger maps are area-averaged by an integer factor to fit
};

class Explorer {
public:
    // Takes the model (its input shape must be known) and the data. Validates the options
    // (Error for non-positive sizes, more than 70,000 map items).
    Explorer(Model model, Dataset data, ExplorerOptions options = {});
    ~Explorer();  // cancels the jobs and waits for the workers
    Explorer(const Explorer&) = delete;
    Explorer& operator=(const Explorer&) = delete;

    const Model& model() const;
    const Dataset& data() const;
    const ExplorerOptions& options() const;

    // {name, sha256, input_shape [C,H,W], num_classes, class_names, drawable (1 channel),
    //  layers: [{name, type, shape, depth, params, is_conv, is_linear, rf: {kind, size, stride,
    //  padding}, filter: name of the layer whose weights show this layer's filters or null}],
    //  default_layers: the layers a live view shows first, attribution_methods, colormap: the viridis table
    //  [[r,g,b] x 256] that quantised activations index, class_colours: [[r,g,b]] per class}.
    nlohmann::json model_info() const;
    // {spec, size, has_labels, class_names, map_items, scan_items}.
    nlohmann::json dataset_info() const;
    // Items start.. (at most count, <= 500): [{index, label}]. NotFoundError if start is out of range.
    nlohmann::json items(int64_t start, int64_t count) const;
    // PNG of dataset item i as the model sees it (preprocessing undone). NotFoundError if out of
    // range. Cached in memory.
    std::string item_png(int64_t index) const;

    // --- images ------------------------------------------------------------------------------
    // A dataset item: returns "d<index>" (NotFoundError if out of range).
    std::string add_dataset_image(int64_t index);
    // Encoded image bytes (PNG, JPEG, BMP, WebP, ...), preprocessed like a dataset item (channel
    // conversion, resize and centre crop, normalisation). UnsupportedMediaError if the bytes are
    // not a decodable image or it has more than 40 megapixels. Returns "u<hex>".
    std::string add_encoded_image(const std::string& bytes);
    // A grayscale drawing: height*width bytes, row-major, 0 = black. Error for a size mismatch
    // or a side outside 1..4096. Returns "u<hex>".
    std::string add_gray_image(const std::string& pixels, int64_t height, int64_t width);
    // PNG of an image id as the model sees it (preprocessing undone). NotFoundError if unknown.
    std::string image_png(const std::string& image_id) const;
    // The preprocessed model input [1,C,H,W] float32 of an image id (NotFoundError if unknown
    // or evicted).
    at::Tensor image_input(const std::string& image_id) const;

    // --- the live update ---------------------------------------------------------------------
    // One forward pass with taps. Returns {image, label, output: {logits, probs, predicted},
    // layers: [{name, shape, bars, channels, height, width, factor, lo, hi, data}]}: `data` is base64
    // of channels*height*width bytes (row-major, channel first), byte = round((v - lo) /
    // (hi - lo) * 255) clamped (128 where hi <= lo) with [lo, hi] the layer's value range over all
    // its channels (render's colour index), after area-averaging by `factor`. 1-D layers and
    // C x 1 x 1 maps are `bars`: one value per unit (at most 4096), height = width = 1. NotFoundError for unknown layers or images.
    nlohmann::json activations(const std::string& image_id, const LiveOptions& options) const;

    // --- a channel ---------------------------------------------------------------------------
    // Picture of the weights that make channel c of `layer` (the layer's own weights, or those of
    // the convolution right before a batch norm / activation). NotFoundError for an unknown layer
    // or channel, Error for a layer without spatial weights.
    std::string filter_png(const std::string& layer, int64_t channel) const;
    // The channel's activation for an image, upsampled and overlaid on the input (viridis).
    std::string overlay_png(const std::string& image_id, const std::string& layer,
                            int64_t channel) const;

    // --- background jobs ---------------------------------------------------------------------
    // Starts a job; returns its status (as job()). Requests:
    //   {kind: "occlusion", image, patch?, stride?, baseline?: "zero"|"mean"|"blur"}
    //   {kind: "attribution", image, method: "saliency"|"guided-backprop"|...|"grad-cam"}
    //   {kind: "feature-vis", layer, channel}
    //   {kind: "patches", layer, channel}   (top-9 dataset patches; scans the data once)
    //   {kind: "map"}                         (t-SNE of the penultimate layer's features)
    // An identical request that is queued, running or done returns the same job. Error for a
    // malformed request (400), NotFoundError for unknown images/layers/channels.
    nlohmann::json start_job(const nlohmann::json& request);
    // {id, kind, state: "queued"|"running"|"done"|"error"|"cancelled", progress, result?, error?,
    //  error_kind?: "input"|"timeout"|"libtorch"|"out-of-memory"|"internal"}.
    // NotFoundError for an unknown id.
    nlohmann::json job(const std::string& id) const;
    // Asks a queued or running job to stop. NotFoundError for an unknown id.
    nlohmann::json cancel_job(const std::string& id);
    // Runs a job request on the calling thread and returns its result (for the report, tests and
    // benchmarks).
    nlohmann::json run_job(const nlohmann::json& request);

    // The dataset map once its job is done (or as read from ExplorerOptions::map_path):
    // {n, layer, source: "computed"|"file", points: the URL of map_bytes, class_names,
    // class_colours, unknown_colour} and, with_points, x, y, labels and items (the dataset item
    // each point shows) as arrays. NotFoundError if it was not computed yet.
    nlohmann::json map_points(bool with_points = true) const;
    // The same points as dataset_map_bytes (float32 x[N], y[N], int32 labels[N], items[N]).
    std::string map_bytes() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace convscope
