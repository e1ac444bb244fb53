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
    double test_accuracy = 0;  // on the test split (or its first test_limit images); segment:
                               // the share of held-out scene pixels labelled right
    double mean_iou = 0;       // segment: mean over the classes of the intersection over union
                               // of predicted and true pixels, on the held-out scenes
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

// Where the cached built-in models live: $CONVSCOPE_CACHE_DIR, else $XDG_CACHE_HOME/convscope,
// else ~/.cache/convscope; `file` in that folder.
std::string builtin_model_path(const std::string& file);
// The classifier's file there: default-fashion-mnist.pt.
std::string default_model_path();

// Loads the cached default model, training it first (about 2-3 minutes on 2 cores) if there is
// none yet.
Model load_default_model(const ProgressFn& progress = {});

// The built-in model's architecture and metadata with fresh random weights from `seed`, in eval
// mode (for tests and fuzzing that need a model without data or training).
Model untrained_default_model(uint64_t seed = 0);

// The built-in segmentation model: scenes of 64x64 pixels with two or three Fashion-MNIST items
// (each in its own quarter of the canvas, shifted at random by up to 4 pixels), labelled per
// pixel with the item's class + 1 where the item's ink exceeds 0.1, else 0 (background). The
// network: conv1-bn1-relu1-pool1, conv2 and conv3 blocks (32x32, 32 channels), pool2, conv4 and
// conv5 blocks (16x16, 64), pool3, conv6 and conv7 (dilation 2) blocks (8x8, 64); head (1x1, 11
// classes) upsampled bilinearly x4 plus skip (1x1 on relu3), upsampled x2: output
// [N,11,64,64]. The wide context sits at 8x8, where it is cheap, so an occluder changes little
// of the costly layers.
// Options: epochs (default here: 3), batch_size, learning_rate, seed; train_limit = training
// scenes (0 = 12,000, drawn from the training split), test_limit = held-out scenes (0 = 1,000,
// from the test split). Writes the model atomically with its metadata (input shape,
// normalisation, class names "background" and Fashion-MNIST's, mean_iou).
TrainResult train_segment_model(const std::string& out_path, TrainOptions opts, const ProgressFn& progress = {});
// The segmentation model's cache file: segment-fashion-mnist.pt.
std::string segment_model_path();
// Loads the cached segmentation model, training it first (a few minutes on 2 cores) if needed.
Model load_segment_model(const ProgressFn& progress = {});
// Held-out scenes as the training makes them: images [N,1,64,64] in [0,1] and labels [N,64,64]
// int64, from Fashion-MNIST's test split with `seed`.
std::pair<at::Tensor, at::Tensor> segment_scenes(int64_t n, uint64_t seed, bool train_split = false);

// The built-in vision transformer (`train --arch vit`, `--model vit`): Fashion-MNIST in 4x4
// patches (a 7x7 grid) plus a class token, 4 pre-norm blocks of 4-head self-attention (written
// as matmul + softmax) and an MLP (64 wide, 128 hidden), the class token's final norm read by a
// linear head. Trained with AdamW (weight decay 0.05), a warm-up and a cosine decay; metadata as
// the classifier's. Cached as vit-fashion-mnist.pt beside it.
constexpr int kVitEpochs = 4;
constexpr double kVitLearningRate = 3e-3;
std::string vit_model_path();
TrainResult train_vit_model(const std::string& out_path, const TrainOptions& opts, const ProgressFn& progress = {});
// Loads the cached ViT, training it first (kVitEpochs epochs, a few minutes on 2 cores) if needed.
Model load_vit_model(const ProgressFn& progress = {});
// Its architecture with fresh random weights (tests).
Model untrained_vit_model(uint64_t seed = 0);

// Top-1 accuracy of a classifier on labelled data (items in `indices`, all when empty).
double evaluate_accuracy(const Model& model, const Dataset& data,
                         const std::vector<int64_t>& indices = {}, const ProgressFn& progress = {});

}  // namespace convscope
