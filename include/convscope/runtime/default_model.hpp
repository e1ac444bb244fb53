#pragma once
// The built-in model: a small VGG-style CNN for Fashion-MNIST (two conv blocks of
// conv-BN-ReLU x2 + max-pool, then fc1 (128, the embedding layer) and fc2 (10 classes)),
// built as an ordinary TorchScript module so PyTorch in Python loads it with torch.jit.load.
#include <cstdint>
#include <string>

#include "convscope/runtime/model.hpp"
#include "convscope/runtime/progress.hpp"

namespace convscope {

class Dataset;

struct TrainOptions {
    int epochs = 4;            // passes over the training split
    int64_t batch_size = 128;  // images per step
    double learning_rate = 3e-3;  // Adam, decayed to 0 on a cosine over all steps
    uint64_t seed = 0;         // weights, shuffling
    int64_t train_limit = 0;   // use only the first N training images (0 = all 60,000)
    int64_t test_limit = 0;    // evaluate on the first N test images (0 = all 10,000)
};

struct TrainResult {
    std::string path;          // where the TorchScript file was written
    double test_accuracy = 0;  // on the test split (or its first test_limit images)
    double seconds = 0;        // training time
    int epochs = 0;
};

// Fashion-MNIST's per-channel normalisation used by the default model.
constexpr double kFashionMean = 0.2860;
constexpr double kFashionStd = 0.3530;

// Trains the default model and writes it (atomically) to `out_path`, with metadata (input shape,
// normalisation, class names, test accuracy) in the archive's extra file convscope.json.
TrainResult train_default_model(const std::string& out_path, const TrainOptions& opts,
                                const ProgressFn& progress = {});

// Where the cached default model lives: $CONVSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/convscope,
// else ~/.cache/convscope; file default-fashion-mnist.pt.
std::string default_model_path();

// Loads the cached default model, training it first (about 2-3 minutes on 2 cores) if there is
// none yet.
Model load_default_model(const ProgressFn& progress = {});

// The built-in model's architecture and metadata with fresh random weights from `seed`, in eval
// mode (for tests and fuzzing that need a model without data or training).
Model untrained_default_model(uint64_t seed = 0);

// Top-1 accuracy of a classifier on labelled data (items in `indices`, all when empty).
double evaluate_accuracy(const Model& model, const Dataset& data,
                         const std::vector<int64_t>& indices = {}, const ProgressFn& progress = {});

}  // namespace convscope
