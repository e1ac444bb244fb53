#pragma once
// The search over occluder positions behind occlusion(): the grid of window positions, the
// evaluator interface (the model on occluded copies: full recomputation or the incremental
// engine), the evaluation of positions in batches, and the approximate mode's drill-downs
// (quadtree, diagonal lattice) with the interpolation of the positions they skip.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <vector>

#include "convscope/methods/occlusion.hpp"

namespace convscope::occlusion_search {

// The coarse step of the diagonal lattice (every third position of a row, shifted by one from
// row to row).
constexpr int64_t kLatticeStep = 3;

// Window positions (top-left corners) in row-major order.
struct Grid {
    int64_t py = 0, px = 0;
    std::vector<int64_t> ys, xs;  // per position index i = iy * px + ix
};

// The window positions of an H x W input for o's patch and stride.
Grid make_grid(int64_t H, int64_t W, const OcclusionOptions& o);

// Runs the model on occluded copies of a group of images.
class Evaluator {
public:
    virtual ~Evaluator() = default;
    // Sets the images [G,C,H,W] and their baselines [G,C,H,W]; returns the clean outputs [G,K].
    // classes [G,m]: the classes whose outputs the approximate mode corrects (else undefined).
    virtual at::Tensor set_images(const at::Tensor& images, const at::Tensor& baselines,
                                  const at::Tensor& classes) = 0;
    // Outputs [B,K]: copy b is image img[b] with the window at (ys[b], xs[b]) of size ph x pw set
    // to the image's baseline.
    virtual at::Tensor outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                               const std::vector<int64_t>& xs) = 0;
    // Whether the evaluator sums dense outputs with weights on their map itself, reading only
    // what the window changes (set_output_weights, weighted_outputs).
    virtual bool weighted() const { return false; }
    // Weights [G,H,W] on the output map for each image set (after set_images).
    virtual void set_output_weights(const at::Tensor&) {}
    // [B,K]: the copies' output channels summed over the map with their image's weights.
    virtual at::Tensor weighted_outputs(const std::vector<int64_t>&, const std::vector<int64_t>&,
                                        const std::vector<int64_t>&) {
        return at::Tensor();
    }
};

// Per-position results of one image.
struct Drops {
    std::vector<float> drop, top_prob, target_prob;
    std::vector<int64_t> top_class;
    std::vector<char> evaluated;
    void resize(size_t n) {
        drop.assign(n, 0.f);
        top_prob.assign(n, 0.f);
        target_prob.assign(n, 0.f);
        top_class.assign(n, 0);
        evaluated.assign(n, 0);
    }
};

struct CleanInfo {
    int64_t target = 0;  // the class (-1: similarity)
    float score = 0;     // the target's score on the clean image
};

// One image of the group being processed.
struct ImageRun {
    const TargetScorer* scorer = nullptr;  // scores the image's copies (shared by the runs)
    int64_t image = 0;                     // the image's index in the scorer's batch
    CleanInfo clean;
    int64_t predicted = 0;
    Drops d;
};

struct Job {
    int64_t img = 0;  // index into the group
    int64_t pos = 0;  // index into the grid
};

// Called with the number of positions evaluated after each batch.
using DoneFn = std::function<void(int64_t)>;

// Evaluates the jobs in batches of o.batch_size (grouped by window offset modulo 4) and fills
// the images' drops; forwards counts the copies evaluated.
void evaluate(Evaluator& ev, const Grid& g, const std::vector<Job>& jobs, std::vector<ImageRun>& runs,
              const OcclusionOptions& o, int64_t& forwards, const DoneFn& done);

// Quadtree drill-down from a grid of step o.coarse_step (a power of 2), then interpolation.
void drill_down(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                int64_t& forwards, const DoneFn& done);

// Drill-down from the diagonal lattice (o.coarse_step == kLatticeStep), then interpolation.
void lattice_drill(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                   int64_t& forwards, const DoneFn& done);

}  // namespace convscope::occlusion_search
