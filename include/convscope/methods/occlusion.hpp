#pragma once
// Occlusion sensitivity (Zeiler & Fergus 2014): slide a patch set to a baseline over the input
// and map how the score of a target class drops; the class that becomes most likely at each
// occluder position reveals confounders (regions outside the object that change the decision).
//
// Definition (the one in common use, so results compare with other tools): window positions
// start at 0 and step by the stride while the window fits (positions_y = (H - patch_h) /
// stride_y + 1, likewise x); a window covers all channels; for each position
//     drop = score_t(x) - score_t(x with the window set to the baseline)
// and a pixel's attribution is the mean of the drops of all windows that cover it (0 where no
// window does).
//
// Three ways to compute it:
// - Full: every occluded copy goes through the whole model, batch_size copies per forward.
// - Incremental (default, exact): incremental inference after Nakandala, Kumar &
//   Papakonstantinou (SIGMOD 2019). The clean image's activations are computed once; for each
//   batch of occluder positions only the part of each spatial layer (conv, pooling, batch norm,
//   activations, residual adds, channel concatenation) that the window can change is
//   recomputed, on per-position patches; full tensors are formed again at the first op that
//   needs the whole input (flatten, linear, global pooling), except that a flatten followed by
//   a linear layer is computed by the engine too. Equals Full within float rounding (1e-4
//   relative). Ops it does not know are recomputed in full from that point on (still exact).
// - Approximate: projective-field thresholding (each convolution recomputes at most a fraction
//   tau of its output, centred on the change) with a first-order correction for what it cuts off
//   (the cut-off change's effect on the target's and the runner-up's logits through the rest of
//   the network, from gradients at the clean image: exact for layers that act linearly; opts.correct
//   = false drops it instead), changes convolved in bfloat16 where the CPU supports it
//   (opts.bf16); and a drill-down over the positions. By default (coarse_step 3) it starts from
//   the diagonal lattice, every third position of each row shifted by one from row to row (a
//   third of the positions), and evaluates the positions next to evaluated ones whose most likely
//   classes differ or that hold the largest drop, until none is left. With a coarse_step that is
//   a power of 2 it is a quadtree instead: a grid of that step and the centres of its cells
//   first; a cell is refined (its edge midpoints and the centres of its quarters evaluated, and
//   so on down to single steps) where its centre's drop is far from the mean of its corners' (the
//   map is not locally linear), where the drops are near the largest, or where the most likely
//   class changes. The other positions are interpolated by a locally weighted linear fit to the
//   evaluated ones. Images share the drill-down rounds (up to 32 at a time), so batches stay
//   full. The automatic settings threshold only where the occluder's projective field covers
//   whole feature maps (where the exact engine saves nothing) and drill down only where
//   neighbouring windows overlap by 3/4.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convscope/methods/target.hpp"
#include "convscope/runtime/run_context.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace convscope {

class Model;

enum class OcclusionMode { Full, Incremental, Approximate };
// "full" | "incremental" | "approximate"; the parser throws UsageError naming the valid ones.
const char* occlusion_mode_name(OcclusionMode mode);
OcclusionMode parse_occlusion_mode(const std::string& name);

struct OcclusionOptions {
    int64_t patch_h = 4, patch_w = 4;    // occluder size in input pixels (>= 1, <= the input)
    int64_t stride_y = 2, stride_x = 2;  // step between positions (>= 1)
    Baseline baseline;  // what the window holds; Blur's automatic sigma is max(H, W) / 8
    Target target;      // whose score drops (its score: logit, prob or sigmoid; classes, regions
                        // of dense outputs, similarity); Approximate needs a class of [N,K] outputs
    OcclusionMode mode = OcclusionMode::Incremental;
    int64_t batch_size = 0;  // occluded copies per forward pass (>= 1); 0 = automatic: 512 in the
                             // incremental engine's modes for models with at most 4 MiB of
                             // activations per image (their copies hold only small patches),
                             // else 128; in every mode halved (to 32 at least) while a batch's
                             // outputs exceed 16 MiB (dense outputs, formed in full per copy)

    // Approximate mode.
    double tau = 0;             // projective-field threshold in (0, 1]; 1 = no thresholding;
                                // 0 = automatic: 0.25 where a window's projective field covers
                                // whole feature maps (deep networks on large inputs), else 1
    bool correct = true;        // with tau < 1: add the first-order correction for what the
                                // threshold cuts; false: drop it (Krypton's approximation: faster,
                                // less accurate)
    int64_t coarse_step = 0;    // first drill-down level: 3 = the diagonal lattice; a power of 2 =
                                // every coarse_step-th position and the centres of those cells
                                // (1 = every position); 0 = automatic: 3 where patch >= 4 x stride
                                // on both axes, else 1
    double refine_drop = 1.0;   // evaluate around positions (lattice) or refine a cell (quadtree)
                                // whose |drop| is >= this x the largest so far (1: at the peak;
                                // 0: everything)
    double refine_error = 0.25; // quadtree: ... or whose centre's drop differs from the mean of its
                                // corners' by >= this x the drop range (0: every cell). Where the
                                // most likely class changes, both always refine
    bool bf16 = true;           // convolve the changes in bfloat16 where the CPU has AVX512-BF16
                                // (about twice as fast; the rounding scales with the change, not
                                // with the activations); false, or such a CPU missing: float32
    bool compare_exact = false;  // also compute the exact map and report the SSIM against it
    // Transformers: occlude patch tokens instead of pixels. The window replaces the tokens whose
    // patch centre it covers with the baseline image's tokens, at the patch embedding's output
    // (the map before the first attention on the attention's grid); position embeddings are
    // added after it as usual. Exact batched recomputation; Error for models without one.
    bool tokens = false;
};

struct OcclusionResult {
    int64_t positions_y = 0, positions_x = 0;  // window positions per axis (PY, PX)
    at::Tensor occlusion;    // [N,C,H,W] float32: per pixel the mean drop of the windows covering it
    at::Tensor coarse;       // [N,PY,PX] float32: drop for the window at (py*stride_y, px*stride_x)
    // Dense outputs: the class probabilities are the softmax of the region's mean logits;
    // similarity targets have no classes (classes -1, probabilities: the similarity).
    at::Tensor top_class;    // [N,PY,PX] int64: the most likely class with that window occluded
    at::Tensor top_prob;     // [N,PY,PX] float32: its probability
    at::Tensor target_prob;  // [N,PY,PX] float32: the target's probability with the window occluded
    at::Tensor evaluated;    // [N,PY,PX] bool: the model ran for this position (false: interpolated,
                             // only in Approximate mode)
    at::Tensor clean_score;  // [N] float32: the target's score on the clean image
    at::Tensor clean_prob;   // [N] float32: the target's probability on the clean image
    std::vector<int64_t> targets;    // [N] target class per image (-1: similarity)
    std::vector<int64_t> predicted;  // [N] class predicted for the clean image
    std::vector<double> ssim;         // Approximate with compare_exact: per image, SSIM of the
                                      // occlusion map against the exact one (else empty)
    std::vector<double> ssim_coarse;  // ... and of the coarse drops against the exact ones
    int64_t forwards = 0;             // occluded copies evaluated (all images)
    int64_t batch_size = 0;           // copies per forward it ran with (automatic resolved)
    double tau = 1;                   // Approximate: the threshold and coarse step it ran with
    int64_t coarse_step = 1;          // (the automatic settings resolved)
    bool corrected = false;           // Approximate: the cut-off changes got the correction
    bool bf16 = false;                // Approximate: the changes were convolved in bfloat16
    std::string engine_note;          // Incremental/Approximate: what ran incrementally
};

// Occlusion maps for a batch. images_nchw [N,C,H,W] float32, preprocessed model inputs.
// Throws Error for a patch larger than the input, a stride or patch < 1, a target class out of
// range, a Label target without labels, a bad batch size or tau, and inputs that do not fit
// the model. Cost: N * PY * PX occluded forward passes in Full mode; Incremental recomputes
// only what each window changes; Approximate evaluates a fraction of the positions. Progress
// (cancellable) is reported per batch.
OcclusionResult occlusion(const Model& model, const at::Tensor& images_nchw, const OcclusionOptions& opts,
                          const RunContext& context = {});

// Number of window positions along an axis: (size - patch) / stride + 1 (0 if patch > size).
int64_t occlusion_positions(int64_t size, int64_t patch, int64_t stride);

// The baseline images [N,C,H,W] float32 the windows are filled from (opts.baseline; blur's
// automatic sigma max(H, W) / 8).
at::Tensor occlusion_baseline(const at::Tensor& images_nchw, const OcclusionOptions& opts);

// A candidate confounder: a position outside the most important region whose occlusion
// changes the predicted class.
struct OcclusionFlag {
    int64_t py = 0, px = 0;  // position indices
    Box window;              // the occluded window in input pixels
    int64_t new_class = 0;   // most likely class with the window occluded
    float new_prob = 0;      // its probability
    float drop = 0;          // the target's score drop there
};

// What a reader wants to know about one image's occlusion result.
struct OcclusionSummary {
    int64_t target = 0, predicted = 0;
    float clean_score = 0, clean_prob = 0;
    float max_drop = 0;               // the largest drop, at position (max_py, max_px)
    int64_t max_py = 0, max_px = 0;
    Box max_window;                   // the window with the largest drop
    Box important;                    // most important region: the union of the windows
                                      // 4-connected (on the position grid) to the max window
                                      // whose drop is >= region_fraction * max_drop
    std::vector<OcclusionFlag> confounders;  // positions whose window does not overlap
                                             // `important` and whose occlusion changes the
                                             // prediction, largest new_prob first
};
OcclusionSummary summarize_occlusion(const OcclusionResult& result, int64_t n,
                                     const OcclusionOptions& opts, double region_fraction = 0.5);

// Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of map a_hw [H,W] against the
// reference ref_hw [H,W] (any real dtype): mean over all 7x7 windows (smaller if a side is < 7)
// fully inside the map of ((2 mu_a mu_r + C1)(2 cov + C2)) / ((mu_a^2 + mu_r^2 + C1)(var_a +
// var_r + C2)) with uniform weights, sample (co)variances, C1 = (0.01 L)^2, C2 = (0.03 L)^2 and
// L the reference's value range (1 if constant). The same as scikit-image's default
// structural_similarity with data_range = L. 1 for identical maps.
double map_ssim(const at::Tensor& a_hw, const at::Tensor& ref_hw);

}  // namespace convscope
