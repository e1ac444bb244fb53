#pragma once
// Datasets and the batch loader. Sources (DESIGN.md, "Interfaces"):
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
#include <optional>
#include <string>
#include <vector>

namespace convscope {

// How raw images in [0,1] become model inputs, and how to undo it for display.
struct Preprocess {
    std::vector<int64_t> input_shape;  // C,H,W of the model input
    std::vector<double> mean;          // per channel (size C, or empty = no normalisation)
    std::vector<double> std;           // per channel (size C, or empty)
    bool as_is = false;                // inputs are already model inputs (float32 .npy)

    // images_nchw [N,C,H,W] float32 model inputs -> [N,H,W,C] uint8 pictures (C = 1 or 3).
    // Undoes mean/std; for as_is inputs scales each image's range to [0,255].
    at::Tensor to_display(const at::Tensor& images_nchw) const;
};

struct DatasetOptions {
    std::string labels_path;  // optional .npy of int labels (N) for .npy data
};

class Dataset {
public:
    // Opens a data spec (see above). Throws Error for missing/corrupt/empty sources with a
    // message that names the problem and the fix. Never allocates more than a file holds.
    static Dataset open(const std::string& spec, const DatasetOptions& opts = {});

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

private:
    Dataset();
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Parses --indices (Python slice syntax "a:b", "a:b:s", ":10", "-5:", or a single "i") or a
// comma list "1,5,9" against a dataset of n items. Throws UsageError for bad syntax and Error
// for an index out of range (naming the valid range).
std::vector<int64_t> parse_indices(const std::string& spec, int64_t n);

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
