#pragma once
// Feature visualisation by optimisation (activation maximisation: Erhan et al. 2009; Yosinski
// et al. 2015; Olah et al., "Feature Visualization", Distill 2017): synthesise an input that
// maximises a channel's mean activation at a layer, or a class score, by gradient ascent (Adam)
// on a parameterisation of the image, with regularisers that keep it natural-looking: L2 decay,
// random jitter, scale and rotation at every step (transformation robustness), and a blur every
// few steps. Two parameterisations: plain pixels, or a spectrum scaled by 1/frequency and mapped
// back with an inverse real FFT (Olah et al.'s spatially decorrelated "fourier" space).
// Images live in pixel space [0,1] (a sigmoid keeps them there) and become model inputs by
// `preprocess` (Preprocess::normalise: channel order, range, mean/std).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convscope/methods/target.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

enum class FeatureVisParam { Pixel, Fourier };
// Parses "pixel" | "fourier"; throws UsageError otherwise.
FeatureVisParam parse_feature_vis_param(const std::string& name);
const std::string& feature_vis_param_name(FeatureVisParam param);

struct FeatureVisOptions {
    enum class Objective {
        Channel,     // the spatial mean of channel u of `layer` (for a 1-D layer: unit u)
        Class,       // the score of class u, read from the output as `target` says
        Similarity,  // the cosine similarity of the output with target.reference_input's (unit 0)
    };
    Objective objective = Objective::Channel;
    std::string layer;           // Objective::Channel: any layer (see Model::layers())
    std::vector<int64_t> units;  // channels of `layer`, or classes, or {0}; one image each (>= 1)
    // Objective::Class: target.score (logit, prob, sigmoid) and, for a dense output [N,K,H,W],
    // target.region (all, a box or a mask; pred, the default, counts as all: there is no clean
    // image whose prediction would fix it). Objective::Similarity: target.reference_input.
    // The same Target the other methods take (every_class_score); its kind is not used.
    Target target;

    FeatureVisParam param = FeatureVisParam::Fourier;
    int steps = 256;              // optimisation steps (>= 1)
    double learning_rate = 0.05;  // Adam's step size on the parameterisation (> 0)
    // L2 decay: adds l2_decay * mean((pixel - 0.5)^2) to the loss of each image (>= 0).
    double l2_decay = 1e-3;
    // Random translation of up to jitter * max(H,W) pixels in x and y at every step (>= 0).
    double jitter = 0.03;
    // Random scale factor drawn uniformly from [1 - scale, 1 + scale] at every step (0 <= scale <
    // 1).
    double scale = 0.05;
    // Random rotation drawn uniformly from [-rotate_degrees, rotate_degrees] at every step.
    double rotate_degrees = 5.0;
    // Every blur_every steps (0 = never) the image is blurred with a Gaussian of blur_sigma
    // pixels: the pixel parameters directly, the spectrum through the Gaussian's frequency
    // response (>= 0).
    int blur_every = 4;
    double blur_sigma = 0.5;

    // The model's input: its shape C,H,W (empty = model.input_shape()) and normalisation
    // (mean/std per channel, or one value for all; empty = none). Also used for the dataset.
    Preprocess preprocess;
    // Side of the optimised square image in pixels; 0 = the model's input size. Channel
    // objectives run only the graph up to their layer, so a convolutional part takes other
    // sizes (feature visualisation at 128 px, as Lucent does, is much cheaper at 224 px
    // models); class objectives need the model's input size.
    int64_t size = 0;
    // Images optimised together in one forward/backward pass.
    int batch_size = 16;

    // Images per forward pass over the dataset of the best activations (the overload with data).
    int dataset_batch_size = 64;
};

struct FeatureVisResult {
    std::string layer;           // "" for class objectives
    std::vector<int64_t> units;  // [U] the channels or classes, as given
    at::Tensor images;           // [U,C,H,W] float32, model inputs (normalised)
    at::Tensor pixels;           // [U,C,H,W] float32 in [0,1], before normalisation
    at::Tensor display;     // [U,H,W,C] uint8, round(pixels * 255); undefined unless C is 1 or 3
    at::Tensor activation;  // [U] float32, the objective reached by the final image
    at::Tensor initial_activation;  // [U] float32, the objective of the starting image
    // With data (undefined otherwise), [U] each:
    at::Tensor dataset_best;        // float32, the largest objective over the dataset's images
    at::Tensor dataset_best_index;  // int64, the dataset index of that image
    // float32, activation / dataset_best: above 1, the synthetic image excites the unit more
    // than any dataset image. NaN where dataset_best <= 0 (no meaningful ratio).
    at::Tensor ratio;
};

// Optimises one image per unit. Throws Error for: no units, a unit out of range (channels of
// the layer or classes of the model), an unknown layer, a layer without channels, steps below 1,
// a non-positive learning rate, negative regulariser settings, a preprocess whose shape does not
// fit the model. Cost: steps forward + backward passes of ceil(U / batch_size) batches, plus one
// forward pass of the data when given.
// The context's seed starts the images: the same seed and thread count give the same bytes, and
// each unit's image depends only on the seed and the unit (not on the units optimised with it).
FeatureVisResult feature_vis(const Model& model, const FeatureVisOptions& options, const RunContext& context = {});
// The same, and each unit's best activation over the items `indices` of data (empty = every
// item; the maximum over images of the objective), preprocessed with options.preprocess.
FeatureVisResult feature_vis(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                             const FeatureVisOptions& options, const RunContext& context = {});

// The objective (channel spatial mean, unit value, class score or similarity) of every unit for every
// image: images_nchw [N,C,H,W] model inputs -> [N,U] float32. One forward pass. Exposed for
// comparisons (e.g. the activation of noise images) and used for the dataset's best.
at::Tensor feature_vis_objective(const Model& model, const FeatureVisOptions& options,
                                 const at::Tensor& images_nchw);

}  // namespace convscope
