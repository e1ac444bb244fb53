// The report's sections (src/app/detail/report_sections.hpp): each runs its methods and adds
// its data and pictures to the page.
#include "app/detail/report_sections.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <filesystem>

#include "convscope/app/views.hpp"
#include "convscope/methods/activations.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/methods/filters.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/methods/tsne.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::detail {

using nlohmann::json;

namespace {

constexpr int kCropPx = 48;

// The model's chosen output is dense: a class per pixel [K,H,W] (segmentation).
bool dense_output(const Model& model) {
    for (const auto& o : model.outputs())
        if (o.chosen) return o.shape.size() == 3;
    return false;
}

// The class each segmentation example explains: the one predicted at the most pixels, other
// than a class named "background" when another class is predicted at all.
std::vector<int64_t> example_classes(const at::Tensor& logits, const std::vector<std::string>& names) {
    std::vector<int64_t> out;
    const int64_t k = logits.size(1);
    for (int64_t n = 0; n < logits.size(0); ++n) {
        at::Tensor counts = torch::bincount(logits[n].argmax(0).reshape({-1}), {}, k);
        if (!names.empty() && names[0] == "background" && counts.slice(0, 1).sum().item<int64_t>() > 0)
            counts[0] = 0;
        out.push_back(counts.argmax().item<int64_t>());
    }
    return out;
}

}  // namespace

const std::vector<std::pair<std::string, double>>& report_stages() {
    static const std::vector<std::pair<std::string, double>> stages = {
        {"plan", 0.0},     {"accuracy", 0.12},    {"filters", 0.03}, {"examples", 0.25},
        {"trust", 0.10},   {"patches", 0.15}, {"feature_vis", 0.18}, {"map", 0.20}};
    return stages;
}

std::string ReportContext::put(const std::string& rel, const std::string& meaning, const cv::Mat& img) {
    write_png(out.file("img/" + rel, meaning), img);
    return "img/" + rel;
}

void ReportContext::skip(const std::string& why) {
    result.skipped.push_back(why);
    doc["skipped"].push_back(why);
}

RunContext ReportContext::context(const std::string& stage, double lo, double hi) const {
    RunContext ctx;
    ctx.progress = stages.part(stage, lo, hi);
    ctx.seed = opts.seed;
    return ctx;
}

// The page's title, model, data, preprocessing, plan and layer table.
void ReportContext::write_header() {
    const std::string file = std::filesystem::path(model.path()).filename().string();
    doc["title"] = opts.title.empty() ? "convscope report: " + file : opts.title;
    doc["version"] = CONVSCOPE_VERSION;
    int64_t total_params = 0;
    for (const auto& p : model.module().parameters()) total_params += p.numel();
    doc["model"] = {{"file", file},
                    {"sha256", model.file_hash()},
                    {"input_shape", model.input_shape()},
                    {"num_classes", model.num_classes()},
                    {"class_names", class_names},
                    {"parameters", total_params}};
    doc["data"] = {{"spec", data.spec()}, {"size", data.size()}, {"has_labels", data.has_labels()}};
    doc["preprocess"] = to_json(pre);
    doc["plan"] = {{"forward_ms", plan.forward_ms},
                   {"budget_seconds", opts.budget_seconds},
                   {"eval_items", plan.eval_items},
                   {"scan_items", plan.scan_items},
                   {"map_items", plan.map_items},
                   {"occlusion_patch", plan.occlusion_patch},
                   {"occlusion_stride", plan.occlusion_stride},
                   {"attribution_steps", plan.attribution_steps},
                   {"feature_vis_steps", plan.feature_vis_steps},
                   {"feature_vis_size", plan.feature_vis_size}};
    auto& layer_rows = doc["layers"] = json::array();
    for (const auto& l : model.layers()) layer_rows.push_back(to_json(l));
    doc["chosen_layers"] = result.layers;
    doc["skipped"] = json::array();
}

// Accuracy on the first items, and which of them are shown as correct and wrong examples.
void ReportContext::write_accuracy() {
    if (dense_output(model)) {
        skip("accuracy: the model labels every pixel and the data has no per-pixel labels; the examples are the "
             "first items");
        const int64_t n = std::min<int64_t>(2 * opts.examples, data.size());
        for (int64_t i = 0; i < n; ++i) result.wrong.push_back(i);
        doc["accuracy"] = nullptr;
        doc["evaluated"] = 0;
        doc["dense"] = true;
        stages.report("accuracy", 1.0);
        return;
    }
    {
        const int64_t n = std::min(plan.eval_items, data.size());
        std::vector<int64_t> indices(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
        BatchLoader loader(data, indices, 256, pre);
        if (data.has_labels() && !labels_comparable) skip("accuracy: " + data.class_match().why);
        Batch b;
        int64_t right = 0, labelled = 0, batch = 0;
        const int64_t batches = std::max<int64_t>(1, loader.num_batches());
        while (loader.next(b)) {
            const at::Tensor pred = model.forward(b.images).argmax(1);
            for (size_t r = 0; r < b.indices.size(); ++r) {
                const int64_t p = pred[int64_t(r)].item<int64_t>();
                const int64_t label = labels_comparable ? b.labels[r] : -1;
                if (label < 0) {
                    if (int64_t(result.wrong.size()) < 2 * opts.examples) result.wrong.push_back(b.indices[r]);
                    continue;
                }
                ++labelled;
                if (p == label) {
                    ++right;
                    if (int64_t(result.correct.size()) < opts.examples) result.correct.push_back(b.indices[r]);
                } else if (int64_t(result.wrong.size()) < opts.examples) {
                    result.wrong.push_back(b.indices[r]);
                }
            }
            stages.report("accuracy", double(++batch) / double(batches));
        }
        result.evaluated = n;
        if (labelled > 0) result.accuracy = double(right) / double(labelled);
        doc["accuracy"] = labelled > 0 ? json(result.accuracy) : json(nullptr);
        doc["evaluated"] = n;
    }
}

// Filter grids of the first layers with spatial weights.
void ReportContext::write_filters() {
    doc["filters"] = json::array();
    {
        const auto spatial = spatial_weight_layers(model);
        const int64_t count = std::min<int64_t>(opts.max_filter_layers, int64_t(spatial.size()));
        for (int64_t i = 0; i < count; ++i) {
            const std::string& name = spatial[size_t(i)];
            const auto fshape = filter_shape(model, name);
            FiltersOptions fo;
            fo.layer = name;
            for (int64_t f = 0; f < std::min(fshape[0], opts.max_filters); ++f) fo.filters.push_back(f);
            fo.mode = FilterMode::Auto;
            const FiltersResult fr = filters(model, fo);
            double noise = 0;
            json noisiest = json::array();
            std::vector<FilterStats> sorted = fr.stats;
            for (const auto& s : fr.stats) noise += s.noise;
            std::sort(sorted.begin(), sorted.end(), [](const FilterStats& a, const FilterStats& b) { return a.noise > b.noise; });
            for (size_t k = 0; k < std::min<size_t>(3, sorted.size()); ++k)
                noisiest.push_back({{"filter", sorted[k].filter}, {"noise", sorted[k].noise}});
            doc["filters"].push_back(
                {{"layer", name},
                 {"picture", put("filters_" + detail::file_safe(name) + ".png",
                                      "filters of layer " + name + " (" + filter_mode_name(fr.mode) + " tiles)",
                                      fr.picture)},
                 {"mode", filter_mode_name(fr.mode)},
                 {"weight_shape", fr.weight_shape},
                 {"shown", fr.filters.size()},
                 {"mean_noise", fr.stats.empty() ? 0.0 : noise / double(fr.stats.size())},
                 {"noisiest", noisiest}});
            stages.report("filters", double(i + 1) / double(std::max<int64_t>(count, 1)));
        }
        if (spatial.empty()) skip("filters: the model has no layer with spatial weights");
    }
}

namespace {
// Each segmentation example's predicted classes over its input, the explained region outlined.
void put_segmentations(ReportContext& c, const std::vector<int64_t>& ex, const std::vector<cv::Mat>& bases,
                       const at::Tensor& logits, const Target& target) {
    const TargetScorer scorer(c.model, target, logits);
    for (size_t n = 0; n < ex.size(); ++n) {
        const int64_t r = int64_t(n);
        c.doc["examples"][n]["segmentation"] =
            c.put("examples/" + std::to_string(ex[n]) + "/segmentation.png",
                  "predicted classes of item " + std::to_string(ex[n]) + ", the explained region outlined",
                  segmentation_overlay(bases[n], logits[r].argmax(0), scorer.region_weights()[r] > 0));
    }
}
}  // namespace

// The correct and wrong examples: inputs, activation maps, occlusion with confounder flags and
// gradient attributions.
// Attention values per example in the page (a small ViT: every head of every layer; ViT-B/16:
// the head means of the last layers).
constexpr int64_t kAttentionViewValues = 100000;

void ReportContext::write_examples() {
    std::vector<int64_t> ex = result.correct;
    ex.insert(ex.end(), result.wrong.begin(), result.wrong.end());
    doc["examples"] = json::array();
    if (!ex.empty()) {
        const at::Tensor images = data.batch(ex, pre);
        const at::Tensor logits = model.forward(images);
        const at::Tensor probs = torch::softmax(logits, 1);
        // Segmentation: each example explains its main class over the pixels predicted as it.
        const bool dense = logits.dim() == 4;
        Target target;
        if (dense) {
            target.kind = Target::Kind::PerImage;
            target.labels = example_classes(logits, class_names);
        }
        std::vector<cv::Mat> bases;
        for (size_t n = 0; n < ex.size(); ++n) {
            const int64_t i = ex[n];
            const int64_t label = data.label(i);
            const int64_t predicted =
                dense ? target.labels[n] : logits[int64_t(n)].argmax().item<int64_t>();
            const double prob = dense ? (logits[int64_t(n)].argmax(0) == predicted).to(torch::kFloat).mean().item<double>()
                                      : probs[int64_t(n)][predicted].item<double>();
            const cv::Mat base = upscale_nearest(detail::input_picture(pre, images[int64_t(n)]), factor);
            bases.push_back(base);
            doc["examples"].push_back(
                {{"index", i},
                 {"label", label},
                 {"label_name", class_name(labels_comparable ? class_names : data.class_names(), label)},
                 {"predicted", predicted},
                 {"predicted_name", class_name(class_names, predicted)},
                 {"prob", prob},
                 {"correct", labels_comparable && label >= 0 && label == predicted},
                 {"input", put("examples/" + std::to_string(i) + "/input.png", "example item " + std::to_string(i), base)},
                 {"activations", json::array()},
                 {"attributions", json::array()}});
        }
        if (dense) put_segmentations(*this, ex, bases, logits, target);
        // Activation maps of the chosen layers, one forward pass for all examples.
        if (!result.layers.empty()) {
            ActivationsOptions ao;
            ao.layers = result.layers;
            ao.preprocess = pre;
            ao.overlays = true;
            ao.tile_px = 48;
            const ActivationsResult ar = activations(model, images, ao);
            for (const auto& la : ar.layers) {
                for (size_t n = 0; n < ex.size(); ++n) {
                    const std::string stem = "examples/" + std::to_string(ex[n]) + "/act_" + detail::file_safe(la.name);
                    json a = {{"layer", la.name},
                              {"spatial", la.spatial},
                              {"picture", put(stem + ".png", "activations of " + la.name + " for item " + std::to_string(ex[n]),
                                                   la.grids[n])}};
                    if (n < la.overlays.size() && !la.overlays[n].empty())
                        a["overlay"] = put(stem + "_overlay.png",
                                                "strongest channels of " + la.name + " over item " + std::to_string(ex[n]),
                                                la.overlays[n]);
                    doc["examples"][n]["activations"].push_back(a);
                }
            }
        } else {
            skip("activation maps: the model has no conv layers and no layers were chosen");
        }
        stages.report("examples", 0.1);

        // Occlusion with confounder flags.
        OcclusionOptions oo;
        oo.patch_h = oo.patch_w = plan.occlusion_patch;
        oo.stride_y = oo.stride_x = plan.occlusion_stride;
        oo.target = target;
        oo.target.score = Score::Prob;
        const OcclusionResult orr = occlusion(model, images, oo, context("examples", 0.1, 0.5));
        for (size_t n = 0; n < ex.size(); ++n) {
            const OcclusionSummary s = summarize_occlusion(orr, int64_t(n), oo);
            const detail::HeatPictures p = detail::occlusion_pictures(bases[n], orr, int64_t(n), factor);
            const std::string stem = "examples/" + std::to_string(ex[n]) + "/occlusion";
            json j = to_json(s, class_names);
            j["overlay"] = put(stem + "_overlay.png", "occlusion map over item " + std::to_string(ex[n]), p.overlay);
            j["heat"] = put(stem + ".png", "occlusion map of item " + std::to_string(ex[n]) +
                                                   " (red: occluding lowers the predicted class's probability)", p.heat);
            j["patch"] = oo.patch_h;
            j["stride"] = oo.stride_y;
            doc["examples"][n]["occlusion"] = j;
        }

        // Gradient attributions; transformers with attention over all tokens also get the rollout.
        std::vector<std::string> names = opts.attributions;
        const bool global_attention = rollout_applies(model);
        if (global_attention && std::find(names.begin(), names.end(), "attention-rollout") == names.end())
            names.push_back("attention-rollout");
        at::Tensor rollout;
        const size_t methods = names.size();
        for (size_t m = 0; m < methods; ++m) {
            AttributionOptions ao2;
            ao2.method = parse_attribution_method(names[m]);
            ao2.samples = plan.attribution_steps;
            ao2.steps = plan.attribution_steps;
            ao2.masks = std::max(250, 25 * plan.attribution_steps);  // RISE: as many masks as the budget pays for
            ao2.target = target;
            if (is_cam_method(ao2.method) && model.conv_layer_names().empty() && !global_attention) {
                skip(names[m] + ": the model has no conv layer");
                continue;
            }
            if (is_attention_method(ao2.method) && !global_attention) {
                skip(names[m] + ": the model has no attention over all tokens");
                continue;
            }
            const AttributionResult r = attribute(
                model, images, ao2,
                context("examples", 0.5 + 0.5 * double(m) / double(methods), 0.5 + 0.5 * double(m + 1) / double(methods)));
            if (ao2.method == AttributionMethod::AttentionRollout) rollout = r.attributions;
            for (size_t n = 0; n < ex.size(); ++n) {
                const detail::HeatPictures p = detail::attribution_pictures(bases[n], r, int64_t(n), factor);
                const std::string stem = "examples/" + std::to_string(ex[n]) + "/" + names[m];
                doc["examples"][n]["attributions"].push_back(
                    {{"method", names[m]},
                     {"layer", r.layer},
                     {"target_name", class_name(class_names, r.targets[n])},
                     {"overlay", put(stem + "_overlay.png", names[m] + " over item " + std::to_string(ex[n]), p.overlay)},
                     {"heat", put(stem + ".png", names[m] + " map of item " + std::to_string(ex[n]), p.heat)}});
            }
        }
        // The attention view: every query's attention per layer (and head), and the rollout.
        if (global_attention) {
            AttentionOptions at_o;
            at_o.layers = rollout_layers(model);
            const AttentionResult att = attention(model, images, at_o);
            for (size_t n = 0; n < ex.size(); ++n) {
                json v = detail::attention_view(att, int64_t(n), rollout, kAttentionViewValues);
                if (!v.is_null()) doc["examples"][n]["attention"] = v;
            }
        }
    }
}

// Which map to trust: occlusion and the attribution methods evaluated on the first items.
void ReportContext::write_trust() {
    doc["trust"] = nullptr;
    if (plan.trust_items <= 0 || plan.trust_metrics.empty()) {
        if (!plan.trust_note.empty()) skip("which map to trust: " + plan.trust_note);
        return;
    }
    if (!plan.trust_note.empty()) skip("which map to trust: " + plan.trust_note);
    std::vector<int64_t> items;
    for (int64_t i = 0; i < plan.trust_items; ++i) items.push_back(i);
    const at::Tensor images = data.batch(items, pre);
    EvaluationOptions eo;
    eo.methods = {"occlusion"};
    for (const auto& m : opts.attributions) eo.methods.push_back(m);
    eo.metrics.clear();
    for (const auto& m : plan.trust_metrics) eo.metrics.push_back(parse_metric(m));
    eo.steps = plan.trust_steps;
    eo.explain.target.score = Score::Prob;
    const at::Tensor clean = model.forward(images);
    if (clean.dim() == 4) {
        eo.explain.target.kind = Target::Kind::PerImage;
        eo.explain.target.labels = example_classes(clean, class_names);
    }
    eo.explain.occlusion.patch_h = eo.explain.occlusion.patch_w = plan.occlusion_patch;
    eo.explain.occlusion.stride_y = eo.explain.occlusion.stride_x = plan.occlusion_stride;
    eo.explain.attribution.samples = plan.attribution_steps;
    eo.explain.attribution.steps = plan.attribution_steps;
    eo.explain.attribution.masks = std::max(250, 25 * plan.attribution_steps);  // as in the examples
    EvaluationResult r;
    try {
        r = evaluate(model, images, eo, context("trust", 0.0, 0.95));
    } catch (const Cancelled&) {
        throw;
    } catch (const Error& e) {
        skip(std::string("which map to trust: ") + e.what());
        return;
    }
    json t = {{"items", plan.trust_items}, {"methods", r.methods}, {"rows", json::array()}, {"curves", json::array()}};
    for (const auto& c : r.columns) {
        json row = {{"metric", c.name}, {"higher_is_better", c.higher_is_better}, {"meaning", c.meaning},
                    {"ranking", r.ranking(c)}};
        for (const auto& [m, v] : r.means(c)) row["mean"][m] = std::isfinite(v) ? json(v) : json(nullptr);
        t["rows"].push_back(row);
    }
    for (const char* name : {"deletion_morf", "insertion_morf"}) {
        std::vector<at::Tensor> curves;
        for (const auto& m : r.methods)
            if (r.curves[m].curves.count(name)) curves.push_back(r.curves[m].curves.at(name).mean(0));
        if (curves.size() != r.methods.size()) continue;
        t["curves"].push_back({{"name", name},
                               {"picture", put(std::string("trust/") + name + ".png",
                                               std::string("mean ") + name + " curve per method",
                                               line_plot(torch::stack(curves), 560, 280, r.methods))}});
    }
    std::vector<at::Tensor> cascade;
    for (const auto& m : r.methods)
        if (r.curves[m].cascade.count("spearman_abs")) cascade.push_back(r.curves[m].cascade.at("spearman_abs").mean(1));
    if (!cascade.empty() && cascade.size() == r.methods.size())
        t["cascade"] = {{"layers", r.curves[r.methods[0]].cascade_layers},
                        {"picture", put("trust/cascade.png", "rank correlation with the original map as layers are randomised",
                                        line_plot(torch::stack(cascade), 560, 280, r.methods, Range{-1.f, 1.f}))}};
    doc["trust"] = t;
}

// The top-9 dataset patches of the chosen layers' first channels.
void ReportContext::write_patches() {
    doc["patches"] = json::array();
    if (!result.layers.empty()) {
        const int64_t n = std::min(plan.scan_items, data.size());
        std::vector<int64_t> indices(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
        TopPatchesOptions to;
        to.layers = result.layers;
        to.k = std::min<int64_t>(9, n);
        to.lowest = false;
        const TopPatchesResult tp =
            top_patches(model, data, indices, pre, to, context("patches", 0.0, 0.9));
        for (const auto& L : tp.layers) {
            const int64_t shown = std::min<int64_t>(opts.patch_channels, int64_t(L.channels.size()));
            std::vector<std::vector<PatchEntry>> lists;
            for (int64_t c = 0; c < shown; ++c) lists.push_back(L.channels[size_t(c)].top);
            const auto crops = patch_crops(data, tp.preprocess, lists, kCropPx);
            std::vector<cv::Mat> tiles;
            GridOptions grid;
            grid.cols = int(to.k);
            json channels = json::array();
            for (int64_t c = 0; c < shown; ++c) {
                const auto& ch = L.channels[size_t(c)];
                for (int64_t j = 0; j < to.k; ++j)
                    tiles.push_back(j < int64_t(crops[size_t(c)].size())
                                        ? crops[size_t(c)][size_t(j)]
                                        : cv::Mat(kCropPx, kCropPx, CV_8UC3, cv::Scalar(255, 255, 255)));
                std::string row = "c" + std::to_string(c);
                json dom = nullptr;
                const auto d = dominant_labels(ch);
                if (!d.empty()) {
                    row += " " + class_name(class_names, d[0].first) + " " + std::to_string(d[0].second) +
                           "/" + std::to_string(ch.top.size());
                    dom = {{"label", d[0].first}, {"name", class_name(class_names, d[0].first)}, {"count", d[0].second}};
                }
                grid.row_labels.push_back(row);
                json entries = json::array();
                for (const auto& e : ch.top)
                    entries.push_back({{"index", e.image}, {"label", e.label}, {"value", e.value}, {"box", to_json(e.box)}});
                channels.push_back({{"channel", c}, {"dominant", dom}, {"dead", ch.dead}, {"entries", entries}});
            }
            doc["patches"].push_back(
                {{"layer", L.name},
                 {"picture", put("patches_" + detail::file_safe(L.name) + ".png",
                                      "top-" + std::to_string(to.k) + " patches of the first " + std::to_string(shown) +
                                          " channels of " + L.name + " (a row per channel)",
                                      labelled_grid(tiles, grid))},
                 {"channels", channels},
                 {"total_channels", L.channels.size()},
                 {"images_scanned", tp.images_scanned}});
        }
    } else {
        skip("top patches: no layers chosen");
    }
}

// Feature visualisations of the chosen layers' first channels.
void ReportContext::write_feature_vis() {
    doc["feature_vis"] = json::array();
    if (opts.vis_channels > 0 && !result.layers.empty()) {
        const size_t count = result.layers.size();
        for (size_t li = 0; li < count; ++li) {
            const LayerInfo& l = model.layer(result.layers[li]);
            const int64_t channels = l.output_shape.empty() ? 0 : l.output_shape[0];
            FeatureVisOptions fo;
            fo.layer = l.name;
            for (int64_t c = 0; c < std::min(channels, opts.vis_channels); ++c) fo.units.push_back(c);
            if (fo.units.empty()) continue;
            fo.steps = plan.feature_vis_steps;
            fo.size = plan.feature_vis_size[li];
            fo.preprocess = pre;
            fo.preprocess.as_is = false;
            const FeatureVisResult fr = feature_vis(
                model, fo,
                context("feature_vis", double(li) / double(count), double(li + 1) / double(count)));
            if (!fr.display.defined()) {
                skip("feature visualisation: the input has neither 1 nor 3 channels");
                break;
            }
            std::vector<cv::Mat> tiles;
            GridOptions grid;
            json units = json::array();
            for (size_t u = 0; u < fo.units.size(); ++u) {
                tiles.push_back(detail::readable(image_from_hwc_uint8(fr.display[int64_t(u)]), 96));
                grid.tile_captions.push_back("c" + std::to_string(fo.units[u]) + " " +
                                             detail::format_number(fr.activation[int64_t(u)].item<double>(), 3));
                units.push_back({{"channel", fo.units[u]},
                                 {"activation", fr.activation[int64_t(u)].item<double>()},
                                 {"initial_activation", fr.initial_activation[int64_t(u)].item<double>()}});
            }
            doc["feature_vis"].push_back(
                {{"layer", l.name},
                 {"steps", fo.steps},
                 {"picture", put("featurevis_" + detail::file_safe(l.name) + ".png",
                                      "feature visualisations of the first channels of " + l.name +
                                          " (caption: channel and its mean activation)",
                                      labelled_grid(tiles, grid))},
                 {"channels", units}});
        }
    }
}

}  // namespace convscope::detail
