#pragma once
// Datasets and the batch loader. Sources (docs/ARCHITECTURE.md, "Data formats"):
//   fashion-mnist[:train|:test|:all]  Debian's dataset-fashion-mnist (default split: test;
//                                 all = train then test, 70,000 items)
//   PATH-idx3-ubyte[.gz]          an IDX image file; labels from the matching idx1 file beside it
//   DIR/                          images (PNG/JPEG/...): class subfolders (ImageFolder) or flat
//   FILE.npy                      N,C,H,W float32 used as is, or N,H,W / N,H,W,C uint8 -> [0,1]
//   FILE.png|.jpg|...             one image
// Items are decoded lazily where the source allows; batches are preprocessed to the model's
// input (channels, size, normalisation) and the preprocessing is recorded so pictures can undo it.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "convscope/runtime/data_source.hpp"

namespace convscope {

// How raw images in [0,1] become model inputs, and how to undo it for display. The steps, in
// torchvision's order (Resize -> CenterCrop -> ToTensor -> Normalize): channel conversion
// (1 <-> 3), resize, centre crop to input_shape's H,W, channel order, value range, mean/std.
struct Preprocess {
    std::vector<int64_t> input_shape;  // C,H,W of the model input (H,W: the centre crop)
    std::vector<double> mean;          // per channel (size C, or 1), in pixel_range units; empty = none
    std::vector<double> std;           // per channel (size C, or 1); empty = none
    // Shorter side after resizing (torchvision's Resize(N): antialiased bilinear as Pillow,
    // longer side int(N * long / short)), then a centre crop to H,W that must fit. 0 = scale
    // each item to cover H,W (area average when shrinking) and crop the centre.
    int64_t resize = 0;
    double pixel_range = 1.0;  // the model's pixels span [0, pixel_range] (1, or 255)
    bool bgr = false;          // the model takes channels as B,G,R
    bool as_is = false;        // inputs are already model inputs (float32 .npy)
    std::string source;        // where these settings came from, for people ("model metadata", ...)

    // pixels_nchw [N,C,H,W] float32 in [0,1], RGB -> model inputs: channel order, range,
    // mean/std. Differentiable (plain tensor ops); as_is inputs are returned unchanged.
    at::Tensor normalise(const at::Tensor& pixels_nchw) const;
    // images_nchw [N,C,H,W] float32 model inputs -> [N,H,W,C] uint8 pictures (C = 1 or 3).
    // Undoes normalise; for as_is inputs scales each image's range to [0,255]. Pixels with a NaN
    // or infinite value (--allow-nonfinite) are magenta (kNonFiniteColour); a batch that has
    // such pixels comes back with C = 3 even for gray inputs.
    at::Tensor to_display(const at::Tensor& images_nchw) const;
    // One line for people: "resize 256, centre crop 224x224, mean 0.485,0.456,0.406, ...".
    std::string describe() const;
    // Throws Error naming the option to fix for a mean/std of the wrong size for `channels`, a
    // zero or non-finite std, a bad pixel range or a negative resize.
    void validate(int64_t channels) const;
};

// {input_shape, resize, crop [H,W], pixel_range, bgr, mean, std, as_is, source, text}: what was
// done to the inputs, as manifests and summaries record it.
nlohmann::json to_json(const Preprocess& pre);

struct DatasetOptions {
    std::string labels_path;  // optional .npy of int labels (N) for .npy data
};

class Dataset {
public:
    // Opens a data spec (see above). Throws Error for missing/corrupt/empty sources with a
    // message that names the problem and the fix. Never allocates more than a file holds.
    static Dataset open(const std::string& spec, const DatasetOptions& opts = {});
    // A dataset over a source of one's own (a format convscope does not read): `spec` names it
    // in manifests. Throws Error for an empty source.
    static Dataset from_source(std::unique_ptr<DataSource> source, const std::string& spec);

    Dataset(Dataset&&) noexcept;
    Dataset& operator=(Dataset&&) noexcept;
    ~Dataset();

    const std::string& spec() const;
    int64_t size() const;
    bool has_labels() const;
    // Label of item i, or -1 when the source has none.
    int64_t label(int64_t i) const;
    // Class names: folder names for ImageFolder, Fashion-MNIST's names, else "0".."K-1" or empty.
    const std::vector<std::string>& class_names() const;
    // Shape C,H,W of item 0 as stored (before preprocessing).
    std::vector<int64_t> item_shape() const;
    // A content hash of the source (file sizes, names and sampled bytes), for caches/checkpoints.
    const std::string& hash() const;

    // Raw item i as float32 [C,H,W] in [0,1] (or as stored for float .npy). Throws Error for
    // an unreadable image, naming the file.
    at::Tensor raw(int64_t i) const;
    // Preprocessed batch [N,C,H,W] float32 for `pre` (channel conversion, resize + centre crop,
    // normalisation). Throws Error if an item cannot be made to fit, or holds NaN/Inf.
    at::Tensor batch(const std::vector<int64_t>& indices, const Preprocess& pre) const;

    // The preprocessing to use for this data and a model with the given input shape and
    // normalisation (from the model's metadata, may be empty). For float32 .npy data: as_is.
    Preprocess preprocess_for(const std::vector<int64_t>& model_input_chw,
                              const std::vector<double>& mean,
                              const std::vector<double>& std) const;
    // The same with every setting of `wanted` (resize, range, channel order, source); its
    // input_shape is replaced by model_input_chw (or the items' shape when that is empty).
    Preprocess preprocess_for(const std::vector<int64_t>& model_input_chw, const Preprocess& wanted) const;

    // Whether the labels are the model's class numbers, so that an accuracy means something.
    // Image folders: subfolder names are matched to `model_classes` by name (case, spaces,
    // '_' and '-' ignored) and the labels renumbered to the model's classes; without names the
    // folder order (as torchvision's ImageFolder) is taken when the counts agree. Other
    // sources: labels are class numbers and must be below num_classes. When they do not
    // match, labels stay as they are and `why` says why no accuracy can be given.
    struct ClassMatch {
        bool comparable = false;
        std::string why;   // empty when comparable
        std::string note;  // how the labels were matched, for people (may be empty)
    };
    ClassMatch match_classes(const std::vector<std::string>& model_classes, int64_t num_classes);
    // The result of the last match_classes (comparable when it was never called).
    const ClassMatch& class_match() const;

private:
    Dataset();
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Parses --indices (Python slice syntax "a:b", "a:b:s", ":10", "-5:", or a single "i") or a
// comma list "1,5,9" against a dataset of n items. Throws UsageError for bad syntax and Error
// for an index out of range (naming the valid range).
std::vector<int64_t> parse_indices(const std::string& spec, int64_t n);

// Decodes one image file (PNG, JPEG, BMP, WebP, TIFF, PGM/PPM) to float32 [C,H,W] in [0,1],
// C = 1 (gray) or 3 (RGB), alpha dropped. The size is checked from the header first
// (set_max_image_pixels). Throws Error for a missing, empty, corrupt or oversized file.
at::Tensor read_image(const std::string& path);

// One batch from the loader.
struct Batch {
    at::Tensor images;             // [B,C,H,W] float32, preprocessed
    std::vector<int64_t> indices;  // dataset indices of the rows
    std::vector<int64_t> labels;   // labels (-1 where unknown)
};

// Decodes and preprocesses batches on a worker thread while the caller computes. Batches come
// in order. Errors from the worker are rethrown by next().
class BatchLoader {
public:
    BatchLoader(const Dataset& data, std::vector<int64_t> indices, int64_t batch_size,
                Preprocess pre, int prefetch = 2);
    ~BatchLoader();
    BatchLoader(const BatchLoader&) = delete;
    BatchLoader& operator=(const BatchLoader&) = delete;
    // Fills `out` with the next batch; false when done.
    bool next(Batch& out);
    int64_t num_batches() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Fashion-MNIST's class names, in label order.
const std::vector<std::string>& fashion_mnist_classes();

}  // namespace convscope
