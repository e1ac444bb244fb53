#pragma once
// Faithfulness of an explanation: does the model's score follow what the map says matters?
//   deletion / insertion   the target's score as pixels change from the image to a baseline
//                          (deletion) or from the baseline to the image (insertion) in the order
//                          of the map, most relevant first (MoRF) or least relevant first (LeRF),
//                          and the area under that curve (Petsiuk, Das & Saenko 2018, "RISE";
//                          pixel flipping, Bach et al. 2015)
//   ROAD                   the score and whether the class stays predicted when a share of the
//                          pixels is removed and filled by noisy linear imputation, which keeps
//                          the perturbed images closer to the data (Rong et al. 2022)
//   infidelity             the expected squared error of the map's linear prediction of the
//                          score's change under random perturbations (Yeh et al. 2019)
// Every metric reads the score the Target says (evaluate's default: the probability), fixed from
// the clean images: the class explained stays the class scored.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convscope/methods/explain.hpp"
#include "convscope/methods/target.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

// The order in which pixels are perturbed: by the map, largest first ("morf") or smallest first
// ("lerf"); equal values in pixel order (row-major), so the order is deterministic.
enum class RelevanceOrder { MostFirst, LeastFirst };
const char* relevance_order_name(RelevanceOrder order);  // "morf" | "lerf"
// maps [N,H,W] -> [N,H*W] int64: each pixel's place in that order (0 = perturbed first); the
// masks of deletion, insertion and ROAD keep or remove the pixels of place < the cut.
at::Tensor relevance_ranks(const at::Tensor& maps, RelevanceOrder order);

struct CurveOptions {
    Target target;            // whose score is read
    bool insertion = false;   // false: deletion (image -> baseline); true: insertion (baseline -> image)
    RelevanceOrder order = RelevanceOrder::MostFirst;
    int steps = 100;          // the pixels change in `steps` shares: after step k the first
                              // floor(k P / steps) of the P pixels in order (1 <= steps <= P)
    Baseline baseline;        // the removed pixels' values (deletion) or the start (insertion);
                              // Blur's automatic sigma is max(H, W) / 10
    int batch_size = 64;      // perturbed copies per forward pass
};

struct CurveResult {
    at::Tensor curves;  // [N, steps + 1] float32: the score after step k (k = 0: nothing changed)
    at::Tensor areas;   // [N] float32: the trapezoidal area under the curve over the changed
                        // fraction k / steps in [0, 1]
    std::vector<int64_t> targets;  // [N] the class scored (-1: similarity)
};

// The deletion or insertion curve of images_nchw [N,C,H,W] float32 under maps_nhw [N,H,W] (any
// real values, larger = more relevant). Every channel of a pixel changes together. Throws Error
// for steps outside 1 .. H W, maps of another size or with non-finite values, and the target's
// errors. Cost: N (steps + 1) forward passes, batch_size at a time.
CurveResult perturbation_curve(const Model& model, const at::Tensor& images_nchw, const at::Tensor& maps_nhw,
                               const CurveOptions& options, const RunContext& context = {});

struct RoadOptions {
    Target target;
    RelevanceOrder order = RelevanceOrder::MostFirst;
    // Shares of the pixels removed, in percent, each in (0, 100): floor(p P / 100) pixels.
    std::vector<double> percentages{10, 20, 30, 40, 50, 60, 70, 80, 90};
    // Standard deviation of the Gaussian noise added to every imputed value, in model-input
    // units (Rong et al.: 0.01). The context's seed draws it.
    double noise = 0.01;
    int batch_size = 64;
};

struct RoadResult {
    at::Tensor scores;  // [N, P] float32: the target's score with percentages[p] of the pixels removed
    at::Tensor kept;    // [N, P] float32: 1 where the class predicted for the imputed image is the
                        // target class, else 0 (ROAD's accuracy; undefined for similarity)
    at::Tensor areas;   // [N] float32: the mean score over the percentages
    std::vector<int64_t> targets;
};

// How the imputation's sparse system is solved, per image. Iterative: conjugate gradients on the
// image grid in float32 with float64 reliable updates, to a residual of 1e-8 of the right-hand
// side (falling back to the factorisation if they have not got there after 8 (4 (H + W) + 100)
// iterations). Factorisation: Eigen's sparse LDL^T in float64, exact up to rounding. Auto: the
// one expected to be faster for the image's holes (iterations for narrow holes and small images,
// the factorisation for wide holes).
enum class ImputationSolver { Auto, Iterative, Factorisation };

// ROAD's noisy linear imputation of images_nchw [N,C,H,W] where removed_nhw [N,H,W] (bool) is
// true: each removed value becomes the weighted mean of its 8 neighbours inside the image (1/6
// for the 4 direct ones, 1/12 for the diagonal ones), removed neighbours included, found by
// solving that sparse linear system, plus Gaussian noise of standard deviation `noise` drawn
// from gen, image by image. Kept values are unchanged. Throws Error when every pixel of an image
// is removed.
at::Tensor noisy_linear_imputation(const at::Tensor& images_nchw, const at::Tensor& removed_nhw, double noise,
                                   at::Generator& gen, ImputationSolver solver = ImputationSolver::Auto);

// ROAD for images_nchw [N,C,H,W] and maps_nhw [N,H,W]. Throws Error for a percentage outside
// (0, 100), an empty list, a negative noise, maps that do not fit. Cost: N P forward passes plus
// the imputations.
RoadResult road(const Model& model, const at::Tensor& images_nchw, const at::Tensor& maps_nhw,
                const RoadOptions& options, const RunContext& context = {});

struct InfidelityOptions {
    Target target;
    int samples = 10;     // perturbations per image (Yeh et al.'s expectation, Monte Carlo)
    double noise = 0.1;   // the perturbation I ~ N(0, (noise * the image's value range)^2)
    // Scale the map by the beta that minimises the error (Yeh et al.'s scale-invariant form;
    // Captum's normalize=True), so that maps of any scale compare; false: the map as it is.
    bool normalize = true;
    int batch_size = 64;
};

// Infidelity per image [N] float32: mean over samples of (beta <I, phi> - (f(x) - f(x - I)))^2,
// phi the explanation's per-value attribution where it has one (I drawn per value) and its
// signed per-pixel map otherwise (I drawn per pixel, the same on every channel). Lower is
// better. Throws Error for samples < 1 or a negative noise. Cost: N (samples + 1) forwards.
at::Tensor infidelity(const Model& model, const at::Tensor& images_nchw, const Explanation& explanation,
                      const InfidelityOptions& options, const RunContext& context = {});

struct SensitivityOptions {
    int samples = 10;      // perturbed copies per image
    double radius = 0.02;  // each value moves uniformly within +-radius x the image's value range
};

// Max-sensitivity per image [N] float32 (Yeh et al. 2019): the largest relative change
// ||map(y) - map(x)|| / ||map(x)|| (Frobenius norms of Explanation::map) over `samples` points y
// drawn uniformly from the box around x, explained by `explainer` for the classes `explanation`
// chose for x (fixed_target of `target`). Lower is better. Throws Error for samples < 1 or a
// radius <= 0. Cost: `samples` times the method's own cost.
at::Tensor max_sensitivity(const Model& model, const at::Tensor& images_nchw, const Explanation& explanation,
                           const Explainer& explainer, const Target& target, const SensitivityOptions& options,
                           const RunContext& context = {});

// The checks each metric runs on its options before any work (Error naming the fix), for
// callers that check several metrics up front (evaluate).
void check_curve_steps(int steps, int64_t pixels);
void check_road_options(const RoadOptions& options);
void check_infidelity_options(const InfidelityOptions& options);
void check_sensitivity_options(const SensitivityOptions& options);

}  // namespace convscope
