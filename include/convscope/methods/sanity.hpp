#pragma once
// Sanity checks of explanations (Adebayo et al. 2018, "Sanity checks for saliency maps"): a map
// that barely changes when the model's parameters are replaced by random ones does not explain
// the model. And the random-logit check (Sixt, Granz & Landgraf 2020): a map that barely
// changes when another class is explained does not explain the class.
// Similarity of two maps, each one number (1: the same map):
//   spearman_abs  Spearman rank correlation of the drawn maps' magnitudes (|Explanation::map|)
//   spearman      Spearman rank correlation of the signed maps (Explanation::signed_map)
//   ssim          structural similarity (map_ssim) of the drawn maps, each scaled to [0, 1]
//   hog           Pearson correlation of the HOG features (hog_features) of the drawn maps
// Lower similarity to the original map means a more trustworthy method here.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convscope/methods/explain.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

// Spearman's rank correlation of two arrays of the same number of finite values, ranked as
// float32 numbers (ties get their mean rank); 0 when either is constant.
double spearman(const at::Tensor& a, const at::Tensor& b);
// Pearson's correlation of two arrays of the same number of values; 0 when either is constant.
double pearson(const at::Tensor& a, const at::Tensor& b);
// Histograms of oriented gradients (Dalal & Triggs 2005) of map_hw [H,W]: gradients by central
// differences [-1, 0, 1] (0 on the border rows and columns), unsigned orientations in 9 bins over
// [0, 180) degrees weighted by the gradient magnitude, cells of `cell` x `cell` pixels (0:
// max(2, min(H, W) / 7)), blocks of 2 x 2 cells at every cell position normalised by L2-Hys
// (L2, clipped at 0.2, L2 again). Returns [blocks * 36] float64.
at::Tensor hog_features(const at::Tensor& map_hw, int64_t cell = 0);

struct MapSimilarity {
    double spearman_abs = 0, spearman = 0, ssim = 0, hog = 0;
};
// The four similarities of image n's maps in a and b (the same images, the same size); NaN
// where either map holds a NaN or infinite value.
MapSimilarity compare_maps(const Explanation& a, const Explanation& b, int64_t n);

// The layers that hold parameters of their own, in the reverse order of the computation (the
// output's side first): the order of the cascading randomisation.
std::vector<std::string> parameter_layers(const Model& model);

// How a layer's parameters are redrawn.
enum class RandomInit {
    // Every value from a normal distribution with the tensor's own mean and standard deviation
    // (a constant tensor, such as a fresh BatchNorm scale, gets standard deviation
    // max(|mean|, 0.1)): the weights keep their scale (Adebayo et al.'s "from a truncated
    // normal" with the trained statistics).
    Statistics,
    // PyTorch's reset_parameters, the convention of Quantus' MPRT: a tensor of 2 or more
    // dimensions (and a bias beside one) uniform in +-1/sqrt(fan_in), fan_in = the weight's
    // size(1) x its kernel; a 1-d weight (BatchNorm, LayerNorm) 1, a 1-d bias 0, and the layer's
    // running statistics back to mean 0, variance 1.
    Reset,
};
const char* random_init_name(RandomInit init);  // "statistics" | "reset"
RandomInit parse_random_init(const std::string& name);  // UsageError listing the names

// A copy of the model whose named layers' own parameters are redrawn as `init` says, from a
// generator seeded with seed + the layer's place in parameter_layers, so that a layer gets the
// same values in every copy. Other layers keep theirs; the given model is not changed. Throws
// Error for an unknown layer or one without parameters.
Model randomised_copy(const Model& model, const std::vector<std::string>& layers, uint64_t seed,
                      RandomInit init = RandomInit::Statistics);

// Errors before any work: a model without parameters to randomise, a similarity target for the
// random-logit check (it explains another class).
void check_randomisable(const Model& model);
void check_random_logit_target(const Target& target);

enum class RandomisationMode {
    Cascading,    // step k randomises the first k layers of parameter_layers (top first) together
    Independent,  // step k randomises layer k alone
};
const char* randomisation_mode_name(RandomisationMode mode);  // "cascading" | "independent"

struct RandomisationOptions {
    RandomisationMode mode = RandomisationMode::Cascading;
    // The layers, top first; empty: parameter_layers(model).
    std::vector<std::string> layers;
    RandomInit init = RandomInit::Statistics;
};

struct RandomisationResult {
    std::vector<std::string> layers;  // [L] the layer randomised at each step (with those before
                                      // it when cascading)
    // [L,N] float32 each: the similarity of image n's map after step l to its original map.
    at::Tensor spearman_abs, spearman, ssim, hog;
};

// Model-parameter randomisation of a method (`explainer`) for images_nchw [N,C,H,W], against
// `original`, its explanation by the unchanged model; the randomised models explain the classes
// the original explained (fixed_target of `target`). The context's seed draws the parameters
// (and the method's own randomness, as for the original). One copy of the model is changed in
// place step by step; it is kept (one, process-wide) for the next check of a model from the same
// file, with its values set from that model first, so that its specialised graphs are reused
// (memory: one more copy of the last model checked). Subnormal numbers are flushed to zero while the call runs (the gradients
// of random layers shrink into them, and each costs the CPU many times a normal number). Throws
// Error for a model without parameters and the method's errors. Cost: L times the method's.
RandomisationResult randomisation(const Model& model, const at::Tensor& images_nchw, const Explanation& original,
                                  const Explainer& explainer, const Target& target,
                                  const RandomisationOptions& options, const RunContext& context = {});

struct RandomLogitResult {
    std::vector<int64_t> classes;  // [N] the other class explained, drawn uniformly among the
                                   // classes other than the original target
    at::Tensor spearman_abs, spearman, ssim, hog;  // [N] float32, against the original maps
};

// The random-logit check of a method (`explainer`): each image's map for another class, drawn
// with the context's seed, compared with `original`. Needs a class target (`target`) on an output
// with at least two classes (Error otherwise). Cost: the method's.
RandomLogitResult random_logit(const Model& model, const at::Tensor& images_nchw, const Explanation& original,
                               const Explainer& explainer, const Target& target, const RunContext& context = {});

}  // namespace convscope
