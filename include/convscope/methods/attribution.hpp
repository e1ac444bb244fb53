#pragma once
// Gradient attributions: which input pixels (or which places of a conv layer's map) a class
// score depends on. Methods, with their published definitions:
//   saliency              d score / d input (Simonyan et al. 2014)
//   guided-backprop       every ReLU's backward passes only positive gradients at positive
//                         inputs (Springenberg et al. 2015)
//   deconvnet             every ReLU's backward applies the ReLU to the gradient only, ignoring
//                         the forward input (Zeiler & Fergus 2014)
//   smoothgrad            the saliency averaged over noisy copies of the input (Smilkov et al. 2017)
//   integrated-gradients  (x - baseline) * the gradient averaged along the straight path from the
//                         baseline to x (Sundararajan et al. 2017)
//   grad-cam              ReLU(sum_k w_k A_k), w_k the spatial mean of d score / d A_k, at a
//                         conv layer A (Selvaraju et al. 2017)
//   grad-cam++            as Grad-CAM with weights sum_ij alpha_kij ReLU(d score / d A_kij)
//                         (Chattopadhyay et al. 2018, closed form for an exponential score)
//   rise                  the mean score of randomly masked copies, weighted by each mask's value
//                         at the pixel, divided by the keep probability (Petsiuk et al. 2018); no
//                         gradients, so it works for any model
// The score is what the target says (default: the class's logit, before any softmax; RISE's
// paper uses the probability, --score prob). Guided backprop and
// deconvnet change the ReLU backward inside the model's graph, so they work for ReLUs written
// as modules, as functional calls and in place.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "convscope/methods/attention.hpp"
#include "convscope/methods/target.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

enum class AttributionMethod {
    Saliency,
    GuidedBackprop,
    Deconvnet,
    SmoothGrad,
    IntegratedGradients,
    GradCam,
    GradCamPlusPlus,
    Rise,
    AttentionRollout,   // transformers: attention rollout over every global attention layer
    AttentionGradient,  // transformers: gradient-weighted attention rollout (Chefer et al. 2021)
};

// "saliency", "guided-backprop", "deconvnet", "smoothgrad", "integrated-gradients", "grad-cam",
// "grad-cam++", "rise", "attention-rollout", "attention-gradient", in enum order.
const std::vector<std::string>& attribution_method_names();
const std::string& attribution_method_name(AttributionMethod method);
// Parses a method name; throws UsageError listing the valid names.
AttributionMethod parse_attribution_method(const std::string& name);
// Grad-CAM and Grad-CAM++ give maps at a layer ([N,h,w]); the others give pixels ([N,C,H,W]).
bool is_cam_method(AttributionMethod method);
// attention-rollout and attention-gradient: maps [N,h,w] over a transformer's patch grid.
bool is_attention_method(AttributionMethod method);
// The method names that apply to `model` (attribution_method_names() without the attention
// methods for models without attention over all tokens), for menus.
std::vector<std::string> attribution_methods_for(const Model& model);

struct AttributionOptions {
    AttributionMethod method = AttributionMethod::Saliency;
    Target target;  // whose score is explained
    // Grad-CAM / Grad-CAM++ layer: any layer with a spatial output [C,h,w]. "" = the last conv
    // layer (model.conv_layer_names().back()).
    std::string layer;
    // SmoothGrad: noisy copies per image (>= 1), and the noise's standard deviation as a
    // fraction of each image's value range (max - min) (>= 0; 0 gives the saliency).
    int samples = 50;
    double noise = 0.15;
    // Integrated gradients: intervals of the path (>= 1); the gradient is taken at steps + 1
    // points k / steps (trapezoidal rule), which also give score(baseline) and score(x).
    int steps = 50;
    Baseline baseline;  // integrated gradients' start and RISE's masked-out value; Blur's
                        // automatic sigma is max(H, W) / 10
    // RISE: masks (>= 1), the grid of cells per side (1 .. min(H, W)) and the probability that a
    // cell is kept (0 < keep < 1). The context's seed draws the masks (the same for every image).
    int masks = 4000;
    int cells = 7;
    double keep = 0.5;
    // Attention rollout: how the heads of a layer are fused and the share of the smallest fused
    // attention entries discarded (0 <= ratio < 1), see methods/attention.hpp.
    HeadFusion head_fusion = HeadFusion::Mean;
    double discard_ratio = 0.0;
    // Rows (images, noisy copies or path points) per forward/backward pass; bounds the memory.
    int batch_size = 16;
};

struct AttributionResult {
    AttributionMethod method = AttributionMethod::Saliency;
    // Pixel methods: [N,C,H,W] float32, the attribution of every input value, sign kept.
    // CAM methods: [N,h,w] float32, the class activation map at `layer` (>= 0, not normalised).
    // RISE: [N,H,W] float32, one value per pixel (the masks cover all channels), in the score's
    // units.
    at::Tensor attributions;
    // [N,H,W] float32, one value per input pixel for pictures: pixel methods take the maximum
    // absolute value over channels; CAM methods upsample the map bilinearly to the input size
    // (align_corners = false); RISE's is its map.
    at::Tensor heat;
    std::string layer;             // CAM methods: the layer used; "" otherwise
    std::vector<int64_t> targets;  // [N] the class explained for each image
    at::Tensor scores;             // [N] float32, the target's output at the (clean) image
    // Integrated gradients only (undefined otherwise), [N] float32 each:
    at::Tensor baseline_scores;   // the target's output at the baseline
    at::Tensor attribution_sums;  // sum of attributions over C,H,W
    // Completeness gap: attribution_sums - (scores - baseline_scores); zero for exact integration.
    at::Tensor completeness_gap;
    at::Tensor baselines;  // [N,C,H,W] float32, the baseline inputs used
};

// Attributions of the target class score for images_nchw [N,C,H,W] float32 (preprocessed model
// inputs). Throws Error for: a batch that does not fit the model, a target class out of range,
// "label" targets without labels (or with an image whose label is unknown), samples or steps
// below 1, a negative noise, RISE masks below 1, cells outside 1 .. min(H, W) or a keep
// probability outside (0, 1), a CAM layer without a spatial output [C,h,w] (the message lists the
// conv layers), or a model without conv layers for the CAM default.
// Cost (one pass = forward + backward of one image): saliency, guided backprop, deconvnet,
// Grad-CAM, Grad-CAM++: 1 pass; SmoothGrad: samples passes + 1 forward; integrated gradients:
// steps + 1 passes; RISE: masks forwards per image (no backward) + 1. All run `batch_size` rows
// at a time.
// The context's seed draws SmoothGrad's noise and RISE's masks: the same seed and thread count give the same bytes.
AttributionResult attribute(const Model& model, const at::Tensor& images_nchw, const AttributionOptions& options,
                            const RunContext& context = {});

}  // namespace convscope
