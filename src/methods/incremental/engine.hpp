#pragma once
// Incremental inference for occlusion (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019):
// evaluates a model on many copies of a few images, each copy differing from its image only
// inside a small window.
//
// The plan (plan.hpp) lists the spatial ops that depend on the image and can run incrementally
// (convolutions, max/avg pooling, batch norm, pointwise activations and arithmetic, adds of two
// feature maps, channel concatenation): for each occluder position only the part of the output
// the changed input region can reach is recomputed, from a window of the input gathered from
// the clean activations of the copy's image (computed once per image) with the position's
// changed values pasted in (kernels.hpp). All positions of a batch are computed together as one
// tensor of equally sized patches [B,C,h,w] (windows clipped at a border are shifted inside).
// The first node that needs more (flatten, linear, global pooling, an op not handled) gets full
// tensors: clean activations with the patches pasted in, and the rest of the graph runs as an
// ordinary TorchScript function on them; a flatten read only by a linear layer with constant
// weights is the exception: the engine computes that head itself. Exact up to float rounding.
// The positions of a batch are split between the threads, each running its share through every
// op on its own (the patches are small: waking threads per op would cost more than it saves).
//
// Approximate settings (EngineSettings): bf16 convolves each convolution's input change (zero
// outside the changed box) in bfloat16 and adds it to the clean output, where the CPU has
// AVX512-BF16; tau < 1 thresholds projective fields, with the first-order correction
// (correction.hpp) for what the threshold cuts.
#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "methods/incremental/plan.hpp"

namespace convscope {
class Model;
}

namespace convscope::incremental {

class Engine {
public:
    // Runs a copy of plan (made by make_plan for this model) configured with settings.
    Engine(const Model& model, const Plan& plan, const EngineSettings& settings);
    ~Engine();
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;

    // Whether changes are convolved in bfloat16 (asked for, and the CPU has it).
    bool bf16() const;

    // Sets the clean images images_gchw [G,C,H,W] float32 and computes their activations (memory:
    // bytes_per_image() each). classes_gm [G,m] (int64): the classes whose outputs are corrected,
    // per image (with corrected classes in the settings; else undefined). Returns the model output
    // for the clean images [G,K].
    at::Tensor set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm = {});

    // Model outputs [B,K] for B occluded copies: copy b is clean image img[b] (in [0, G)) with
    // rows [ys[b], ys[b] + h) and columns [xs[b], xs[b] + w) replaced by patches[b]
    // (patches [B,C,h,w] float32). Windows must lie inside the image.
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs);

    // Whether run_weighted can be used: the plan computes the model's output, a map [N,K,H,W],
    // itself (Plan::output_slot), and the engine is exact (no thresholding, no bfloat16).
    bool weighted_output() const;
    // Sets weights [G,H,W] on the output map of each image set (after set_images).
    void set_output_weights(const at::Tensor& weights_ghw);
    // For the copies run() takes: [B,K] float32, the sums over the output map of each channel
    // times the copy's image's weights. Computed from the clean sums and the changes of the maps
    // the output is a linear function of (Plan::leaves; the tail's resizes and sums are pulled
    // back onto them once, by set_output_weights), so only the changed parts are read. Exact
    // (in float64 sums) without thresholding or bfloat16.
    at::Tensor run_weighted(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                            const std::vector<int64_t>& xs);

    // Bytes of clean activations (and gradients for the correction) set_images keeps per image.
    int64_t bytes_per_image() const;
    // The configured plan (a cut the plan did not foresee adds its step to the corrected ones).
    const Plan& plan() const;
    // The clean activation of slot s for the images set, [G,C,H,W].
    const at::Tensor& clean(int slot) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace convscope::incremental
