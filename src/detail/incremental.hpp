#pragma once
// Incremental inference for occlusion (Nakandala, Kumar & Papakonstantinou, SIGMOD 2019):
// evaluates a model on many copies of a few images, each copy differing from its image only inside
// a small window.
//
// The model's inlined forward graph is copied and simplified (module attributes become
// constants, eval-mode branches and dropout disappear, in-place ops become functional where
// that is safe). Its nodes are then walked in order: the spatial ops that depend on the image
// (convolutions, max/avg pooling, batch norm, pointwise activations and arithmetic, adds of two
// feature maps, channel concatenation) run incrementally: for each occluder position only the
// part of the output the changed input region can reach is recomputed, from a window of the
// input gathered from the clean activations of the copy's image (computed once per image) with
// the position's changed values pasted in. All positions of a batch are computed together as one tensor of
// equally sized patches [B,C,h,w] (windows clipped at a border are shifted inside). The first
// node that needs more (flatten, linear, global pooling, an op not handled here) gets full
// tensors: clean activations with the patches pasted in, and the rest of the graph runs as an
// ordinary TorchScript function on them; a flatten whose only reader is a linear layer with
// constant weights is the exception: the engine computes that fully connected head itself (in
// bfloat16 mode from the change alone: the clean output plus the weight times the change), and
// the rest starts from its output. Exact up to float rounding. The positions of a batch
// are split between the threads, each running its share through every op on its own (the
// patches are small: waking threads per op would cost more than it saves).
//
// With set_bf16 (approximate), each convolution convolves its input's change (zero outside the
// changed box) in bfloat16 and adds it to the clean output, where the CPU has AVX512-BF16.
// With tau < 1 (approximate), every convolution recomputes at most ceil(tau * size) rows and
// columns of its output, centred on the change, and takes the rest as unchanged (projective
// field thresholding). What the threshold cuts off is not dropped: its first-order effect on the
// output of a few classes per image is added (plan_linear): for a cut convolution, the gradient
// of the class's logit at the clean image pulled back onto the convolution's input, dotted with
// the input's change, minus the gradient at its output dotted with the output's change inside the
// recomputed box. Exact for networks that are linear after the cut; for ReLU networks the cut-off
// change travels through the clean image's ReLU pattern instead of its own.
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>
#include <vector>

namespace convscope {
class Model;
}

namespace convscope::detail {

class IncrementalEngine {
public:
    // Builds the plan for inputs of shape chw (C,H,W). tau in (0, 1]; 1 = exact.
    IncrementalEngine(const Model& model, const std::vector<int64_t>& chw, double tau = 1.0);
    ~IncrementalEngine();
    IncrementalEngine(const IncrementalEngine&) = delete;
    IncrementalEngine& operator=(const IncrementalEngine&) = delete;

    // The largest share of a convolution's output map (rows and columns both) that a window of
    // patch_h x patch_w in the middle of the input can change: near 1 when the occluder's
    // projective field covers whole maps, where exact incremental inference saves nothing.
    double field_coverage(int64_t patch_h, int64_t patch_w) const;
    // Changes the projective-field threshold (then call plan_linear again).
    void set_tau(double tau);
    // Convolve the changes in bfloat16 (where the CPU has AVX512-BF16; else float32 regardless).
    // Returns whether bfloat16 is used.
    bool set_bf16(bool on);

    // With tau < 1: the outputs of classes_per_image classes per image (set_images' classes_gm)
    // get the first-order correction for what thresholding cuts, for windows of patch_h x patch_w
    // (which convolutions can be cut is worked out here). 0: none.
    void plan_linear(int64_t patch_h, int64_t patch_w, int64_t classes_per_image);

    // Sets the clean images images_gchw [G,C,H,W] float32 and computes their activations (memory:
    // G times every incremental layer's output). classes_gm [G,m] (int64): the classes whose
    // outputs are corrected, per image (with plan_linear; else undefined). Returns the model
    // output for the clean images [G,K].
    at::Tensor set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm = {});

    // Model outputs [B,K] for B occluded copies: copy b is clean image img[b] (in [0, G)) with
    // rows [ys[b], ys[b] + h) and columns [xs[b], xs[b] + w) replaced by patches[b]
    // (patches [B,C,h,w] float32). Windows must lie inside the image.
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs);

    // Bytes of clean activations (and gradients for the correction) set_images keeps per image.
    int64_t bytes_per_image() const;
    // Number of graph ops computed incrementally.
    int64_t incremental_ops() const;
    // One line for people: which ops run incrementally and where full recomputation starts.
    const std::string& note() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace convscope::detail
