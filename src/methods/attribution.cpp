// Gradient attributions: saliency, guided backprop, deconvnet, SmoothGrad, integrated gradients,
// Grad-CAM and Grad-CAM++, all on top of the model runtime's gradients (with respect to the
// input and to taps) and its ReLU backward rules; and RISE, from forward passes alone.
#include "convscope/methods/attribution.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <memory>
#include <sstream>

#include "convscope/methods/attention.hpp"
#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/batches.hpp"
#include "methods/detail/rise.hpp"

namespace convscope {

namespace {

// Options that make no sense whatever the model: checked before any work.
void check_options(const Model& model, const at::Tensor& images, const AttributionOptions& o) {
    check_input(model, images);
    if (images.size(0) == 0)
        throw Error("no images to explain: select at least one item (--indices)");
    if (o.batch_size < 1)
        throw Error("the batch size must be at least 1, got " + std::to_string(o.batch_size));
    if (o.method == AttributionMethod::SmoothGrad) {
        if (o.samples < 1)
            throw Error("SmoothGrad needs at least 1 sample, got " + std::to_string(o.samples) +
                        ": pass --samples N with N >= 1 (50 is usual)");
        if (!(o.noise >= 0) || !std::isfinite(o.noise))
            throw Error("the SmoothGrad noise must be a fraction >= 0 of the input range, got " +
                        detail::format_number(o.noise) + ": pass --noise 0.15 for example");
    }
    if (o.method == AttributionMethod::IntegratedGradients && o.steps < 1)
        throw Error("integrated gradients need at least 1 step, got " + std::to_string(o.steps) +
                    ": pass --steps N with N >= 1 (50 is usual)");
    if (o.method == AttributionMethod::Rise) {
        const int64_t side = std::min(images.size(2), images.size(3));
        if (o.masks < 1)
            throw Error("RISE needs at least 1 mask, got " + std::to_string(o.masks) +
                        ": pass --masks N with N >= 1 (4000 is usual)");
        if (o.cells < 1 || o.cells > side)
            throw Error("RISE's mask grid must have 1 to " + std::to_string(side) +
                        " cells per side (the input's smaller side), got " + std::to_string(o.cells) +
                        ": pass --cells N (7 is usual)");
        if (!(o.keep > 0 && o.keep < 1))
            throw Error("RISE's keep probability must lie strictly between 0 and 1, got " +
                        detail::format_number(o.keep) + ": pass --keep 0.5 for example");
    }
    if (o.method == AttributionMethod::IntegratedGradients || o.method == AttributionMethod::Rise)
        check_baseline(o.baseline);
    check_target(o.target, images.size(0));
}

// Forward + backward over `rows` [R,C,H,W], batch_size rows at a time. `scorer_of(output, first)`
// gives the scorer of a chunk's rows from their output and `rows_of(first, end)` the image each
// row of the chunk is scored as. Returns d score / d row, the scores, the targets and, with a
// layer, its output and d score / d output.
struct Passes {
    at::Tensor input_grad;  // [R,C,H,W]
    at::Tensor scores;      // [R]
    std::vector<int64_t> targets;  // [R] the class (-1: similarity)
    std::vector<at::Tensor> taps, tap_grads;  // per layer: its output and d score / d output
};

using ScorerOf = std::function<std::shared_ptr<TargetScorer>(const at::Tensor& output, int64_t first)>;
using RowsOf = std::function<std::vector<int64_t>(int64_t first, int64_t end)>;

Passes run_passes(const Model& model, Model::ReluBackward rule, const at::Tensor& rows, const ScorerOf& scorer_of,
                  const RowsOf& rows_of, const std::vector<std::string>& grad_layers, int batch_size,
                  const std::function<void(int64_t)>& rows_done) {
    std::vector<at::Tensor> grads, scores;
    std::vector<std::vector<at::Tensor>> taps(grad_layers.size()), tap_grads(grad_layers.size());
    Passes p;
    const int64_t r = rows.size(0);
    for (int64_t first = 0; first < r; first += batch_size) {
        const int64_t end = std::min(r, first + batch_size);
        std::shared_ptr<TargetScorer> scorer;
        const std::vector<int64_t> which = rows_of(first, end);
        at::Tensor chunk_scores;
        auto result = model.gradients_with_relu_rule(
            rule, rows.slice(0, first, end),
            [&](const TapResult& fwd) {
                scorer = scorer_of(fwd.output, first);
                chunk_scores = scorer->scores(fwd.output, which);
                return chunk_scores.sum();
            },
            grad_layers);
        grads.push_back(result.input_grad);
        scores.push_back(chunk_scores.detach());
        for (int64_t w : which) p.targets.push_back(scorer->classes().at(static_cast<size_t>(w)));
        for (size_t l = 0; l < grad_layers.size(); ++l) {
            taps[l].push_back(result.forward.taps.at(grad_layers[l]));
            tap_grads[l].push_back(result.tap_grads.at(grad_layers[l]));
        }
        if (rows_done) rows_done(end);
    }
    p.input_grad = torch::cat(grads, 0);
    p.scores = torch::cat(scores, 0);
    for (size_t l = 0; l < grad_layers.size(); ++l) {
        p.taps.push_back(torch::cat(taps[l], 0));
        p.tap_grads.push_back(torch::cat(tap_grads[l], 0));
    }
    return p;
}

// The layer Grad-CAM looks at: the given one, or by default for transformers the norm before
// the last attention (the last block's first norm, whose patch tokens reach the class token
// through attention; later ones reach only their own token), else the last conv layer. It must
// be spatial in some layout (maps, channels-last maps, tokens on a grid).
std::string cam_layer(const Model& model, const std::string& wanted) {
    const auto convs = model.conv_layer_names();
    std::string name = wanted;
    if (name.empty()) {
        const auto& layers = model.layers();
        size_t last_attention = layers.size();
        for (size_t i = 0; i < layers.size(); ++i)
            if (layers[i].layout.kind == LayoutKind::Attention) last_attention = i;
        if (last_attention < layers.size()) {
            for (size_t i = last_attention; i-- > 0;)
                if (layers[i].layout.spatial() && layers[i].type.find("Norm") != std::string::npos) {
                    name = layers[i].name;
                    break;
                }
        }
        if (name.empty() && convs.empty())
            throw Error(
                "the model has no conv layer with a spatial output for Grad-CAM: pass "
                "--layer with a layer whose output is maps [C,h,w], [h,w,C] or tokens on a grid "
                "(see `convscope describe`; --grid HxW gives the grid of token outputs)");
        if (name.empty()) name = convs.back();
    }
    const LayerInfo& info = model.layer(name);  // throws for unknown names, with suggestions
    if (!info.layout.spatial()) {
        std::string shape;
        for (size_t i = 0; i < info.output_shape.size(); ++i)
            shape += (i ? "x" : "") + std::to_string(info.output_shape[i]);
        throw Error("layer '" + name + "' is not spatial (its output is " +
                    (shape.empty() ? std::string("not a tensor") : shape + ", " + layout_summary(info.layout)) +
                    ", Grad-CAM needs maps [C,h,w], [h,w,C] or tokens on a grid): pass --layer with a conv or "
                    "token layer" +
                    (convs.empty() ? std::string() : " such as " + detail::join(convs, ", ")) +
                    (info.output_shape.size() == 2 ? ", or --grid HxW if these are tokens" : ""));
    }
    return name;
}

at::Tensor upsample(const at::Tensor& maps_nhw, int64_t h, int64_t w) {
    namespace F = torch::nn::functional;
    return F::interpolate(maps_nhw.unsqueeze(1), F::InterpolateFuncOptions()
                                                     .size(std::vector<int64_t>{h, w})
                                                     .mode(torch::kBilinear)
                                                     .align_corners(false))
        .squeeze(1);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

namespace {
constexpr EnumTable<AttributionMethod, 14> kMethodNames = {{
    {AttributionMethod::Saliency, "saliency"},
    {AttributionMethod::GuidedBackprop, "guided-backprop"},
    {AttributionMethod::Deconvnet, "deconvnet"},
    {AttributionMethod::SmoothGrad, "smoothgrad"},
    {AttributionMethod::IntegratedGradients, "integrated-gradients"},
    {AttributionMethod::GradCam, "grad-cam"},
    {AttributionMethod::GradCamPlusPlus, "grad-cam++"},
    {AttributionMethod::Rise, "rise"},
    {AttributionMethod::AttentionRollout, "attention-rollout"},
    {AttributionMethod::AttentionGradient, "attention-gradient"},
    {AttributionMethod::GradCam, "gradcam"},
    {AttributionMethod::GradCamPlusPlus, "gradcam++"},
    {AttributionMethod::GradCamPlusPlus, "grad-cam-plus-plus"},
    {AttributionMethod::IntegratedGradients, "ig"},
}};
}  // namespace

const std::vector<std::string>& attribution_method_names() {
    static const std::vector<std::string> names = enum_names(kMethodNames);
    return names;
}

const std::string& attribution_method_name(AttributionMethod method) {
    return attribution_method_names().at(static_cast<size_t>(method));
}

AttributionMethod parse_attribution_method(const std::string& name) {
    return parse_enum(kMethodNames, name, "attribution method");
}

bool is_cam_method(AttributionMethod m) {
    return m == AttributionMethod::GradCam || m == AttributionMethod::GradCamPlusPlus;
}

bool is_attention_method(AttributionMethod m) {
    return m == AttributionMethod::AttentionRollout || m == AttributionMethod::AttentionGradient;
}

std::vector<std::string> attribution_methods_for(const Model& model) {
    const bool global_attention = rollout_applies(model);
    std::vector<std::string> out;
    for (const auto& m : attribution_method_names())
        if (global_attention || !is_attention_method(parse_attribution_method(m))) out.push_back(m);
    return out;
}

namespace {

// Methods with one backward pass per image: saliency, guided backprop, deconvnet, the CAMs.
void single_pass(const Model& model, const at::Tensor& images, const AttributionOptions& o,
                 const RunContext& context, AttributionResult& r) {
    const int64_t n = images.size(0);
    const int batch = o.batch_size;
    const bool cam = is_cam_method(o.method);
    const auto rule = o.method == AttributionMethod::GuidedBackprop
                          ? Model::ReluBackward::Guided
                      : o.method == AttributionMethod::Deconvnet ? Model::ReluBackward::Deconv
                                                                 : Model::ReluBackward::Plain;
    // Attention-gradient: d score / d attention probabilities of every global attention layer.
    const bool att = o.method == AttributionMethod::AttentionGradient;
    std::vector<std::string> grad_layers;
    if (cam) grad_layers = {r.layer};
    if (att) grad_layers = rollout_layers(model);
    // Each chunk's targets come from its own (clean) output.
    auto p = run_passes(
        model, rule, images,
        [&](const at::Tensor& out, int64_t first) { return std::make_shared<TargetScorer>(model, o.target, out, first); },
        [](int64_t first, int64_t end) {
            std::vector<int64_t> w;
            for (int64_t i = 0; i < end - first; ++i) w.push_back(i);
            return w;
        },
        grad_layers, batch,
        [&](int64_t done) { report_progress(context.progress, double(done) / double(n)); });
    r.targets = p.targets;
    r.scores = p.scores.to(torch::kFloat);
    if (att) {
        std::vector<at::Tensor> probs, grads;
        for (size_t l = 0; l < grad_layers.size(); ++l) {
            probs.push_back(p.taps[l].squeeze(1));
            grads.push_back(p.tap_grads[l].squeeze(1));
        }
        r.layer = grad_layers.back();
        r.attributions = attention_gradient_rollout(probs, grads, model.layer(grad_layers.back()).layout);
    } else if (!cam) {
        r.attributions = p.input_grad.to(torch::kFloat).contiguous();
    } else {
        // Tokens and channels-last maps through the same view as every method (extra tokens dropped).
        const Layout& layout = model.layer(r.layer).layout;
        const at::Tensor a = as_maps(p.taps.at(0), layout), g = as_maps(p.tap_grads.at(0), layout);
        at::Tensor weights;
        if (o.method == AttributionMethod::GradCam) {
            weights = g.mean({2, 3});
        } else {
            // Grad-CAM++ with the closed form for an exponential score:
            // alpha = g^2 / (2 g^2 + sum_ab A_ab g^3), w = sum_ij alpha_ij relu(g_ij).
            const at::Tensor g2 = g * g, g3 = g2 * g;
            const at::Tensor denom = 2.0 * g2 + a.sum({2, 3}, true) * g3;
            const at::Tensor alpha = torch::where(
                denom != 0, g2 / torch::where(denom != 0, denom, torch::ones_like(denom)),
                torch::zeros_like(denom));
            weights = (alpha * torch::relu(g)).sum({2, 3});
        }
        r.attributions = torch::relu((weights.unsqueeze(-1).unsqueeze(-1) * a).sum(1))
                             .to(torch::kFloat)
                             .contiguous();
    }
}

// Methods with several rows per image: SmoothGrad's noisy copies or integrated gradients' points
// on the path from the baseline (then also the baselines, their scores and the completeness gap).
void several_passes(const Model& model, const at::Tensor& images, const AttributionOptions& o,
                    const RunContext& context, AttributionResult& r) {
    const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
    const int batch = o.batch_size;
    const at::Tensor clean_out = detail::forward_chunks(model, images, batch);
    const auto scorer = std::make_shared<TargetScorer>(model, o.target, clean_out);
    r.targets = scorer->classes();
    r.scores = scorer->scores(clean_out).to(torch::kFloat);
    const bool sg = o.method == AttributionMethod::SmoothGrad;
    const int64_t per_image = sg ? o.samples : o.steps + 1;
    at::Tensor attributions = torch::empty({n, c, h, w}, torch::kFloat);
    at::Tensor baselines, baseline_scores, sums;
    if (!sg) {
        baselines = torch::empty({n, c, h, w}, torch::kFloat);
        baseline_scores = torch::empty({n}, torch::kDouble);
        sums = torch::empty({n}, torch::kDouble);
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    for (int64_t i = 0; i < n; ++i) {
        const at::Tensor x = images[i];
        at::Tensor rows, weights;
        at::Tensor base;
        if (sg) {
            const double range = (x.max() - x.min()).item<double>();
            // Drawn image by image in order, so the noise does not depend on batch_size.
            at::Tensor noise = torch::randn({per_image, c, h, w}, gen, torch::kFloat);
            rows = x.unsqueeze(0) + noise * (o.noise * range);
        } else {
            base = baseline_images(x.unsqueeze(0), o.baseline, 10.0).squeeze(0);
            at::Tensor alphas = torch::arange(per_image, torch::kDouble) / double(o.steps);
            rows = (base.unsqueeze(0).to(torch::kDouble) +
                    alphas.view({-1, 1, 1, 1}) * (x - base).unsqueeze(0).to(torch::kDouble))
                       .to(torch::kFloat);
            // Trapezoidal weights: 1/steps inside, 1/(2 steps) at both ends.
            weights = torch::full({per_image}, 1.0 / double(o.steps), torch::kDouble);
            weights[0] = 0.5 / double(o.steps);
            weights[per_image - 1] = 0.5 / double(o.steps);
        }
        auto p = run_passes(
            model, Model::ReluBackward::Plain, rows,
            [&](const at::Tensor&, int64_t) { return scorer; },
            [&](int64_t first, int64_t end) { return std::vector<int64_t>(static_cast<size_t>(end - first), i); },
            {}, batch,
            [&](int64_t done) {
                report_progress(context.progress,
                                (double(i) + double(done) / double(per_image)) / double(n));
            });
        if (sg) {
            attributions[i] = p.input_grad.to(torch::kDouble).mean(0).to(torch::kFloat);
        } else {
            const at::Tensor avg_grad =
                (p.input_grad.to(torch::kDouble) * weights.view({-1, 1, 1, 1})).sum(0);
            const at::Tensor a = (x - base).to(torch::kDouble) * avg_grad;
            attributions[i] = a.to(torch::kFloat);
            baselines[i] = base;
            sums[i] = a.sum();
            baseline_scores[i] = p.scores[0].to(torch::kDouble);
        }
    }
    r.attributions = attributions;
    if (!sg) {
        r.baselines = baselines;
        r.baseline_scores = baseline_scores.to(torch::kFloat);
        r.attribution_sums = sums.to(torch::kFloat);
        r.completeness_gap =
            (sums - (r.scores.to(torch::kDouble) - baseline_scores)).to(torch::kFloat);
    }
}

// RISE: every image's copies under the same masks, drawn kMaskChunk at a time; the sums of
// score x mask are accumulated in float64.
void rise_map(const Model& model, const at::Tensor& images, const AttributionOptions& o, const RunContext& context,
              AttributionResult& r) {
    const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
    const at::Tensor clean_out = detail::forward_chunks(model, images, o.batch_size);
    const TargetScorer scorer(model, o.target, clean_out);
    r.targets = scorer.classes();
    r.scores = scorer.scores(clean_out).to(torch::kFloat);
    const at::Tensor base = baseline_images(images, o.baseline, 10.0);
    const at::Tensor diff = images - base;
    at::Tensor sums = torch::zeros({n, h * w}, torch::kDouble);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    for (int64_t first = 0; first < o.masks; first += rise::kMaskChunk) {
        const int64_t k = std::min<int64_t>(rise::kMaskChunk, o.masks - first);
        const at::Tensor m = rise::masks(gen, k, h, w, o.cells, o.keep);
        const at::Tensor m_flat = m.view({k, h * w}).to(torch::kDouble);
        const at::Tensor m4 = m.unsqueeze(1);
        for (int64_t i = 0; i < n; ++i) {
            for (int64_t b = 0; b < k; b += o.batch_size) {
                const int64_t e = std::min<int64_t>(k, b + o.batch_size);
                const at::Tensor rows = base[i].unsqueeze(0) + m4.slice(0, b, e) * diff[i].unsqueeze(0);
                const at::Tensor s = scorer.scores(model.forward(rows.expand({e - b, c, h, w}).contiguous()),
                                                   std::vector<int64_t>(static_cast<size_t>(e - b), i));
                sums[i] += torch::matmul(s.to(torch::kDouble), m_flat.slice(0, b, e));
            }
            report_progress(context.progress, (double(first) + double(k) * double(i + 1) / double(n)) / double(o.masks));
        }
    }
    r.attributions = (sums / (double(o.masks) * o.keep)).view({n, h, w}).to(torch::kFloat).contiguous();
}

// Attention rollout: one forward pass with the attention layers tapped; the target only names
// the class shown beside the map (rollout does not depend on it).
void rollout_map(const Model& model, const at::Tensor& images, const AttributionOptions& o, const RunContext& context,
                 AttributionResult& r) {
    const auto layers = rollout_layers(model);
    AttentionOptions ao;
    ao.layers = layers;
    ao.batch_size = o.batch_size;
    const AttentionResult a = attention(model, images, ao, context);
    const TargetScorer scorer(model, o.target, a.output);
    r.targets = scorer.classes();
    r.scores = scorer.scores(a.output).to(torch::kFloat);
    std::vector<at::Tensor> probs;
    for (const auto& l : a.layers) probs.push_back(l.probs);
    RolloutOptions ro;
    ro.fusion = o.head_fusion;
    ro.discard_ratio = o.discard_ratio;
    r.layer = layers.back();
    r.attributions = attention_rollout(probs, a.layers.back().layout, ro);
}

}  // namespace

AttributionResult attribute(const Model& model, const at::Tensor& images_nchw, const AttributionOptions& o,
                            const RunContext& context) {
    const ThreadScope threads(context);
    check_options(model, images_nchw, o);
    torch::NoGradGuard no_grad;  // the runtime turns autograd on where it needs it
    const at::Tensor images = images_nchw.contiguous();
    AttributionResult r;
    r.method = o.method;
    report_progress(context.progress, 0.0);
    const bool cam = is_cam_method(o.method);
    const bool grid_map = cam || is_attention_method(o.method);
    if (cam) r.layer = cam_layer(model, o.layer);
    if (o.method == AttributionMethod::Saliency || o.method == AttributionMethod::GuidedBackprop ||
        o.method == AttributionMethod::Deconvnet || cam || o.method == AttributionMethod::AttentionGradient)
        single_pass(model, images, o, context, r);
    else if (o.method == AttributionMethod::Rise) rise_map(model, images, o, context, r);
    else if (o.method == AttributionMethod::AttentionRollout) rollout_map(model, images, o, context, r);
    else several_passes(model, images, o, context, r);
    r.heat = grid_map                           ? upsample(r.attributions, images.size(2), images.size(3)).contiguous()
             : o.method == AttributionMethod::Rise ? r.attributions
                                                   : r.attributions.abs().amax(1).contiguous();
    report_progress(context.progress, 1.0);
    return r;
}

}  // namespace convscope
