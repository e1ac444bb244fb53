// Every explanation method behind one name and one result shape, for the evaluation metrics.
#include "convscope/methods/explain.hpp"

#include <torch/torch.h>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/batches.hpp"

namespace convscope {

const std::vector<std::string>& explain_method_names() {
    static const std::vector<std::string> names = [] {
        std::vector<std::string> v{"occlusion"};
        for (const auto& m : attribution_method_names()) v.push_back(m);
        return v;
    }();
    return names;
}

void check_explain_method(const std::string& method) {
    if (method == "occlusion") return;
    try {
        parse_attribution_method(method);
    } catch (const UsageError&) {
        throw UsageError("unknown method '" + method + "': use one of " + detail::join(explain_method_names(), ", "));
    }
}

Explanation explain(const Model& model, const at::Tensor& images, const std::string& method,
                    const ExplainOptions& options, const RunContext& context) {
    check_explain_method(method);
    Explanation e;
    e.method = method;
    if (method == "occlusion") {
        OcclusionOptions oo = options.occlusion;
        oo.target = options.target;
        const OcclusionResult r = occlusion(model, images, oo, context);
        e.signed_map = r.occlusion.mean(1).contiguous();
        e.map = e.signed_map;
        e.targets = r.targets;
        return e;
    }
    AttributionOptions ao = options.attribution;
    ao.method = parse_attribution_method(method);
    ao.target = options.target;
    const AttributionResult r = attribute(model, images, ao, context);
    e.targets = r.targets;
    e.map = r.heat;
    if (r.attributions.dim() == 4) {
        e.per_value = r.attributions;
        e.signed_map = r.attributions.sum(1).contiguous();
    } else {
        // CAM maps [N,h,w] are drawn upsampled (heat); RISE's map is already per pixel.
        e.signed_map = r.heat;
    }
    return e;
}

Explainer method_explainer(const std::string& method, const ExplainOptions& options) {
    check_explain_method(method);
    return [method, options](const Model& model, const at::Tensor& images, const Target& target,
                             const RunContext& context) {
        ExplainOptions o = options;
        o.target = target;
        return explain(model, images, method, o, context);
    };
}

Target fixed_target(const Target& target, const std::vector<int64_t>& classes) {
    if (target.kind == Target::Kind::Similarity) return target;
    Target t = target;
    t.kind = Target::Kind::PerImage;
    t.labels = classes;
    return t;
}

Target fixed_target(const Model& model, const at::Tensor& images, const Target& target,
                    const std::vector<int64_t>& classes) {
    Target t = fixed_target(target, classes);
    if (t.kind == Target::Kind::Similarity || target.region.kind != Region::Kind::Pred) return t;
    if (model.output_shape().size() != 3) return t;  // not dense [K,H,W]: no region to find
    torch::NoGradGuard no_grad;
    const at::Tensor out = detail::forward_chunks(model, images, 16);
    if (out.dim() != 4) return t;
    const at::Tensor predicted = out.argmax(1);  // [N,H,W]
    at::Tensor masks = torch::zeros(predicted.sizes(), torch::kBool);
    for (int64_t i = 0; i < predicted.size(0); ++i) masks[i] = predicted[i] == classes[size_t(i)];
    t.region.kind = Region::Kind::Mask;
    t.region.mask = masks;
    t.region.mask_path = "<the pixels the clean images predict as their class>";
    return t;
}

}  // namespace convscope
