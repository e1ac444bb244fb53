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
// ordinary TorchScript function on them. Exact up to float rounding.
//
// With tau < 1 (approximate), every windowed op recomputes at most ceil(tau * size) rows and
// columns of its output, centred on the change, and takes the rest as unchanged (projective
// field thresholding).
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

    // Sets the clean images images_gchw [G,C,H,W] float32 and computes their activations (memory:
    // G times every incremental layer's output). Returns the model output for them [G,K].
    at::Tensor set_images(const at::Tensor& images_gchw);

    // Model outputs [B,K] for B occluded copies: copy b is clean image img[b] (in [0, G)) with
    // rows [ys[b], ys[b] + h) and columns [xs[b], xs[b] + w) replaced by patches[b]
    // (patches [B,C,h,w] float32). Windows must lie inside the image.
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs);

    // Bytes of clean activations set_images keeps per image.
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
