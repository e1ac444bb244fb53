#pragma once
// Any of convscope's explanation methods by name, with one result shape: what the evaluation
// metrics (faithfulness.hpp, sanity.hpp) compare, rank and perturb. "occlusion" (Zeiler &
// Fergus) or an attribution method (attribution.hpp: saliency ... grad-cam++, rise).
#include <ATen/core/Tensor.h>

#include <functional>
#include <string>
#include <vector>

#include "convscope/methods/attribution.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/methods/target.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

struct ExplainOptions {
    Target target;                   // what is explained; copied into both option structs below
    AttributionOptions attribution;  // knobs of the attribution methods (its method and target
                                     // are set by explain)
    OcclusionOptions occlusion;      // knobs of occlusion (its target is set by explain)
};

struct Explanation {
    std::string method;
    // [N,H,W] float32, one signed value per input pixel: occlusion's mean drop over the input
    // channels, a pixel method's attribution summed over the channels (integrated gradients keep
    // their completeness), a CAM upsampled to the input, RISE's map.
    at::Tensor signed_map;
    // [N,H,W] float32, what the pictures draw and the ordering metrics rank, larger = more
    // relevant: pixel methods' max |attribution| over channels, the signed map otherwise
    // (occlusion's drop, CAM, RISE).
    at::Tensor map;
    // [N,C,H,W] float32 where the method gives one value per input value (pixel methods:
    // saliency, guided backprop, deconvnet, SmoothGrad, integrated gradients); undefined otherwise.
    at::Tensor per_value;
    std::vector<int64_t> targets;  // [N] the class explained (-1 for similarity)
};

// "occlusion" and the attribution method names, in that order.
const std::vector<std::string>& explain_method_names();
// Throws UsageError listing the names for one that is not a method.
void check_explain_method(const std::string& method);

// The explanation of `method` for images_nchw [N,C,H,W] float32 (preprocessed). Errors as
// occlusion() and attribute() throw them; the context's seed draws the random parts (SmoothGrad,
// RISE). Cost: that method's.
Explanation explain(const Model& model, const at::Tensor& images_nchw, const std::string& method,
                    const ExplainOptions& options, const RunContext& context = {});

// A method as the metrics call it: the explanation of images_nchw by a model (the given one or a
// randomised copy) for a target, with a context (seed, progress). Any function will do: a test
// passes an edge detector that ignores the model.
using Explainer = std::function<Explanation(const Model& model, const at::Tensor& images_nchw, const Target& target,
                                            const RunContext& context)>;
// The explainer of a named method with these knobs (the target each call passes replaces
// options.target). Throws UsageError for an unknown method.
Explainer method_explainer(const std::string& method, const ExplainOptions& options);

// A target that fixes, image by image, what `resolved` explained: the classes it chose
// (Target::Kind::PerImage) for class targets, the target itself for similarity. For
// explaining perturbed copies of the images as the clean ones were.
Target fixed_target(const Target& target, const std::vector<int64_t>& classes);
// The same, and on a dense output [N,K,H,W] with the region pred also the pixels: each image's
// region becomes the pixels its clean output (the model on images_nchw) predicts as its class
// (a Region::Kind::Mask [N,H,W]), so that a perturbed image, a randomised model or another
// class is scored on the clean image's region. One forward pass for dense outputs.
Target fixed_target(const Model& model, const at::Tensor& images_nchw, const Target& target,
                    const std::vector<int64_t>& classes);

}  // namespace convscope
