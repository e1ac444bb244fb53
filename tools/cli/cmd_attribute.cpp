// convscope attribute: gradient attributions (saliency, guided backprop, deconvnet, SmoothGrad,
// integrated gradients, Grad-CAM, Grad-CAM++) and RISE for selected items: the array, heat maps,
// overlays and a summary with targets, scores and the integrated-gradients completeness gap.
#include <cmath>
#include <iomanip>
#include <iostream>

#include "common.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/app/views.hpp"

namespace convscope::cli {
namespace {

// The command's arguments: the library's options (defaults from AttributionOptions{}) and the
// specs that are parsed when the command runs.
struct AttributeArgs {
    AttributionOptions ao;
    std::string method;
    TargetArgs target;
    std::string baseline = baseline_name(AttributionOptions{}.baseline);
    std::string colormap = "inferno";
    std::string fusion = head_fusion_name(AttributionOptions{}.head_fusion);
    float alpha = 0.5f;
};

void add_options(CLI::App& app, AttributeArgs& a) {
    std::string methods;
    for (const auto& m : attribution_method_names()) methods += (methods.empty() ? "" : ", ") + m;
    app.add_option("--method", a.method, "attribution method: " + methods)->required();
    add_target_options(app, a.target);
    app.add_option("--layer", a.ao.layer,
                   "Grad-CAM layer: maps, channels-last maps or tokens (default: the last conv layer; for "
                   "transformers the norm before the last attention)");
    app.add_option("--head-fusion", a.fusion, "attention rollout: how a layer's heads are fused: mean, max or min")
        ->capture_default_str();
    app.add_option("--discard-ratio", a.ao.discard_ratio,
                   "attention rollout: share of each layer's smallest fused attention entries set to 0")
        ->capture_default_str();
    app.add_option("--samples", a.ao.samples, "SmoothGrad: noisy copies per image")->capture_default_str();
    app.add_option("--noise", a.ao.noise, "SmoothGrad: noise standard deviation as a fraction of the input range")
        ->capture_default_str();
    app.add_option("--steps", a.ao.steps, "integrated gradients: steps along the path")->capture_default_str();
    app.add_option("--masks", a.ao.masks, "RISE: random masks")->capture_default_str();
    app.add_option("--cells", a.ao.cells, "RISE: cells per side of a mask's grid")->capture_default_str();
    app.add_option("--keep", a.ao.keep, "RISE: probability that a cell is kept")->capture_default_str();
    app.add_option("--baseline", a.baseline,
                   "integrated gradients' start and RISE's masked-out value: zero, blur, blur:SIGMA, mean or a number")
        ->capture_default_str();
    app.add_option("--batch-size", a.ao.batch_size, "rows per forward/backward pass")->capture_default_str();
    app.add_option("--colormap", a.colormap, "colormap of the heat maps")->capture_default_str();
    app.add_option("--alpha", a.alpha, "opacity of the heat map in the overlays (0..1)")->capture_default_str();
}

// The options with the specs parsed and every value checked, before any slow work.
AttributionOptions parse_options(const AttributeArgs& a) {
    AttributionOptions ao = a.ao;
    ao.method = parse_attribution_method(a.method);
    ao.target = parse_target_args(a.target);
    if (ao.samples < 1) throw UsageError("--samples must be at least 1, got " + std::to_string(ao.samples));
    if (!(ao.noise >= 0)) throw UsageError("--noise must be >= 0 (a fraction of the input range)");
    if (ao.steps < 1) throw UsageError("--steps must be at least 1, got " + std::to_string(ao.steps));
    if (ao.masks < 1) throw UsageError("--masks must be at least 1, got " + std::to_string(ao.masks));
    if (ao.cells < 1) throw UsageError("--cells must be at least 1, got " + std::to_string(ao.cells));
    if (!(ao.keep > 0 && ao.keep < 1)) throw UsageError("--keep must lie strictly between 0 and 1");
    if (ao.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    if (!(a.alpha >= 0 && a.alpha <= 1)) throw UsageError("--alpha must be between 0 and 1");
    ao.baseline = parse_baseline(a.baseline);
    ao.head_fusion = parse_head_fusion(a.fusion);
    if (!(ao.discard_ratio >= 0 && ao.discard_ratio < 1))
        throw UsageError("--discard-ratio must be at least 0 and below 1");
    return ao;
}

// Per item the heat map and the overlay on the image, and one overview; returns the items'
// summaries (target, score and, for integrated gradients, the completeness gap).
nlohmann::json write_pictures(OutputDir& out, const AttributionResult& r, const Model& model, const Dataset& data,
                              const std::vector<int64_t>& indices, const Preprocess& pre, const at::Tensor& images,
                              Colormap cmap, float alpha) {
    const at::Tensor display = pre.to_display(images);  // [N,H,W,C] uint8
    const int factor = readable_factor(static_cast<int>(images.size(2)), static_cast<int>(images.size(3)), 160);
    std::vector<cv::Mat> tiles;
    std::vector<std::string> row_labels;
    const std::vector<std::string> names = detail::class_names_for(model, data);
    nlohmann::json items = nlohmann::json::array();
    for (size_t i = 0; i < indices.size(); ++i) {
        const int64_t n = static_cast<int64_t>(i);
        const at::Tensor heat = r.heat[n];
        const Range range = detail::attribution_range(r.method, heat);
        const cv::Mat base = upscale_nearest(image_from_hwc_uint8(display[n]), factor);
        const cv::Mat heat_img = upscale_nearest(apply_colormap(heat, cmap, range), factor);
        const cv::Mat over = overlay_map(base, heat, cmap, range, alpha);
        const std::string stem = std::to_string(indices[i]);
        write_png(out.file("heatmaps/" + stem + ".png", "heat map of item " + stem), heat_img);
        write_png(out.file("overlays/" + stem + ".png", "heat map over item " + stem), over);
        tiles.push_back(base);
        tiles.push_back(heat_img);
        tiles.push_back(over);
        const int64_t t = r.targets[i];
        row_labels.push_back("#" + stem + " " + class_name(names, t));

        nlohmann::json item = {{"index", indices[i]},
                               {"target", t},
                               {"target_name", class_name(names, t)},
                               {"score", r.scores[n].item<double>()}};
        if (data.has_labels()) item["label"] = data.label(indices[i]);
        if (r.completeness_gap.defined()) {
            const double delta = (r.scores[n] - r.baseline_scores[n]).item<double>();
            const double gap = r.completeness_gap[n].item<double>();
            item["baseline_score"] = r.baseline_scores[n].item<double>();
            item["attribution_sum"] = r.attribution_sums[n].item<double>();
            item["completeness_gap"] = gap;
            item["relative_gap"] = delta != 0 ? std::abs(gap) / std::abs(delta) : 0.0;
        }
        items.push_back(item);
    }
    GridOptions grid;
    grid.cols = 3;
    grid.col_labels = {"image", "heat", "overlay"};
    grid.row_labels = row_labels;
    grid.separator_colour = separator_colour_for(cmap);
    write_png(out.file("overview.png", "per item: the image, the heat map and the overlay"), labelled_grid(tiles, grid));
    return items;
}

nlohmann::json make_summary(const AttributionOptions& ao, const AttributionResult& r, const Model& model,
                            const Dataset& data, nlohmann::json items, uint64_t seed) {
    nlohmann::json summary = {{"method", attribution_method_name(ao.method)},
                              {"target", target_name(ao.target)},
                              {"model", model.path()},
                              {"data", data.spec()},
                              {"items", items}};
    if (is_cam_method(ao.method)) summary["layer"] = r.layer;
    if (is_attention_method(ao.method)) {
        summary["attention_layers"] = rollout_layers(model);
        if (ao.method == AttributionMethod::AttentionRollout) {
            summary["head_fusion"] = head_fusion_name(ao.head_fusion);
            summary["discard_ratio"] = ao.discard_ratio;
        }
    }
    if (ao.method == AttributionMethod::Rise) {
        summary["masks"] = ao.masks;
        summary["cells"] = ao.cells;
        summary["keep"] = ao.keep;
        summary["baseline"] = baseline_name(ao.baseline);
        summary["seed"] = seed;
    }
    if (ao.method == AttributionMethod::SmoothGrad) {
        summary["samples"] = ao.samples;
        summary["noise"] = ao.noise;
        summary["seed"] = seed;
    }
    if (r.completeness_gap.defined()) {
        summary["steps"] = ao.steps;
        summary["baseline"] = baseline_name(ao.baseline);
        double max_rel = 0, max_abs = 0;
        for (const auto& it : items) {
            max_rel = std::max(max_rel, it["relative_gap"].get<double>());
            max_abs = std::max(max_abs, std::abs(it["completeness_gap"].get<double>()));
        }
        summary["completeness"] = {{"max_abs_gap", max_abs}, {"max_relative_gap", max_rel}};
    }
    return summary;
}

void print_summary(const nlohmann::json& summary, const AttributionResult& r, const std::string& dir) {
    const nlohmann::json& items = summary["items"];
    std::cout << summary["method"].get<std::string>() << (is_cam_method(r.method) ? " at " + r.layer : "")
              << " for " << items.size() << " item(s) -> " << dir << "\n";
    for (const auto& it : items) {
        std::cout << "  #" << it["index"].get<int64_t>() << " target " << it["target_name"].get<std::string>()
                  << " score " << std::setprecision(4) << it["score"].get<double>();
        if (it.contains("completeness_gap"))
            std::cout << " completeness gap " << it["completeness_gap"].get<double>() << " (" << std::setprecision(2)
                      << 100.0 * it["relative_gap"].get<double>() << "%)";
        std::cout << "\n";
    }
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<AttributeArgs>();
    add_options(app, *a);
    add_model_options(app, *o);
    add_data_options(app, *o);
    add_out_option(app, *o, "attribution");
    add_json_option(app, *o);

    return [o, a]() {
        AttributionOptions ao = parse_options(*a);
        const Colormap cmap = parse_colormap(a->colormap);
        auto [model, data, indices, pre, images, labels] = open_selected_inputs(*o);
        ao.target.labels = labels;
        load_reference(ao.target, model, data, pre);

        const AttributionResult r = attribute(model, images, ao, run_context(*o, "attribute"));

        const nlohmann::json options = {{"method", attribution_method_name(ao.method)},
                                        {"target", target_name(ao.target)},
                                        {"score", score_name(ao.target.score)},
                                        {"region", region_name(ao.target.region)},
                                        {"output", model.output_name()},
                                        {"layer", r.layer},
                                        {"samples", ao.samples},
                                        {"noise", ao.noise},
                                        {"steps", ao.steps},
                                        {"masks", ao.masks},
                                        {"cells", ao.cells},
                                        {"keep", ao.keep},
                                        {"head_fusion", head_fusion_name(ao.head_fusion)},
                                        {"discard_ratio", ao.discard_ratio},
                                        {"baseline", baseline_name(ao.baseline)},
                                        {"batch_size", ao.batch_size},
                                        {"seed", o->seed},
                                        {"data", data.spec()},
                                        {"indices", indices},
                                        {"colormap", colormap_name(cmap)}};
        OutputDir out = open_out(*o, options, &model);
        const bool attention = is_attention_method(ao.method);
        const bool cam = is_cam_method(ao.method) || attention;
        const bool rise = ao.method == AttributionMethod::Rise;
        write_npy(out.file("attributions.npy",
                           attention ? std::string(ao.method == AttributionMethod::AttentionRollout
                                                       ? "attention rollout"
                                                       : "gradient-weighted attention rollout") +
                                           " [N,h,w] float32 over the patch grid: the class token's row (not normalised)"
                           : cam     ? "class activation maps [N,h,w] float32 at layer " + r.layer
                           : rise ? "RISE maps [N,H,W] float32, the mask-weighted mean score per pixel"
                                  : "attributions [N,C,H,W] float32, one per input value, sign kept"),
                  r.attributions);
        write_npy(out.file("heat.npy", cam    ? "the maps upsampled bilinearly to the input [N,H,W] float32"
                                       : rise ? "the RISE maps [N,H,W] float32"
                                              : "max |attribution| over channels [N,H,W] float32"),
                  r.heat);
        if (r.baselines.defined())
            write_npy(out.file("baselines.npy", "integrated-gradients baselines [N,C,H,W] float32"), r.baselines);

        nlohmann::json items = write_pictures(out, r, model, data, indices, pre, images, cmap, a->alpha);
        write_segmentation_pictures(out, model, ao.target, images, pre.to_display(images), indices);
        write_similarity_pictures(
            out, ao.target, pre, images, r.heat, indices,
            [&](const at::Tensor& item) {
                AttributionOptions swapped = ao;
                swapped.target.reference_input = item;
                return attribute(model, ao.target.reference_input, swapped).heat[0];
            },
            [&](const at::Tensor& display, const at::Tensor& heat) {
                const int factor = readable_factor(static_cast<int>(heat.size(0)), static_cast<int>(heat.size(1)), 160);
                const Range range = detail::attribution_range(ao.method, heat);
                return overlay_map(upscale_nearest(image_from_hwc_uint8(display), factor), heat, cmap, range, a->alpha);
            });
        const nlohmann::json summary = make_summary(ao, r, model, data, std::move(items), o->seed);
        write_json(out.file("summary.json", "targets, scores and (integrated gradients) the completeness gap per item"),
                   summary);
        out.write_manifest();
        if (o->json) std::cout << json_text(summary, 2) << "\n";
        else print_summary(summary, r, out.dir());
        return 0;
    };
}

RegisterCommand reg({"attribute",
                     "gradient attributions: saliency, guided backprop, deconvnet, SmoothGrad, "
                     "integrated gradients, Grad-CAM(++), RISE",
                     setup, 60});

}  // namespace
}  // namespace convscope::cli
