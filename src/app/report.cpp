// The HTML report: runs the methods, writes pictures beside index.html and the page itself with
// its data inline (no fetch of file URLs, which browsers block), from the embedded template.
#include "convscope/app/report.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "convscope/methods/activations.hpp"
#include "convscope/methods/dataset_map.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/methods/filters.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/methods/tsne.hpp"
#include "convscope/app/views.hpp"
#include "convscope/app/web_assets.hpp"
#include "app/detail/report_sections.hpp"

namespace convscope {

using nlohmann::json;

namespace {

constexpr int kPictureTarget = 160;  // inputs and heat maps are enlarged to about this size

// Up to n conv layers spread over the depth, first and last included; for transformers their
// blocks' outputs (token or channels-last maps).
std::vector<std::string> spread_conv_layers(const Model& model, int64_t n) {
    auto convs = model.conv_layer_names();
    if (!model.attention_layers().empty()) {
        std::vector<std::string> blocks;
        for (const auto& l : model.layers())
            if (l.layout.spatial() && l.type.size() >= 5 && l.type.compare(l.type.size() - 5, 5, "Block") == 0)
                blocks.push_back(l.name);
        if (!blocks.empty()) convs = blocks;
    }
    if (int64_t(convs.size()) <= n) return convs;
    std::vector<std::string> out;
    for (int64_t i = 0; i < n; ++i) {
        const size_t k = n == 1 ? convs.size() - 1
                                : size_t(std::llround(double(i) * double(convs.size() - 1) / double(n - 1)));
        if (out.empty() || out.back() != convs[k]) out.push_back(convs[k]);
    }
    return out;
}

// The page: the embedded template with styles, scripts and data put in. "</" inside the data is
// escaped so that no string can end the script element.
std::string render_page(const std::string& title, const json& data) {
    std::string page = detail::web_asset_text("report.html");
    std::string data_text = json_text(data);
    std::string safe;
    safe.reserve(data_text.size());
    for (size_t i = 0; i < data_text.size(); ++i) {
        if (data_text[i] == '<' && i + 1 < data_text.size() && data_text[i + 1] == '/') {
            safe += "<\\/";
            ++i;
        } else {
            safe += data_text[i];
        }
    }
    std::string escaped_title;
    for (char c : title) {
        if (c == '<') escaped_title += "&lt;";
        else if (c == '>') escaped_title += "&gt;";
        else if (c == '&') escaped_title += "&amp;";
        else escaped_title += c;
    }
    auto replace = [&page](const std::string& key, const std::string& value) {
        const size_t at = page.find(key);
        if (at != std::string::npos) page.replace(at, key.size(), value);
    };
    replace("{{TITLE}}", escaped_title);
    replace("/*{{STYLE}}*/", detail::web_asset_text("report.css"));
    replace("/*{{DATA}}*/", "window.REPORT = " + safe + ";");
    replace("/*{{MAPVIEW}}*/", detail::web_asset_text("mapview.js"));
    replace("/*{{ATTENTIONVIEW}}*/", detail::web_asset_text("attentionview.js"));
    replace("/*{{SCRIPT}}*/", detail::web_asset_text("report.js"));
    return page;
}

void check_options(const ReportOptions& o) {
    auto positive = [](int64_t v, const char* what) {
        if (v < 1) throw UsageError(std::string(what) + " must be at least 1, got " + std::to_string(v));
    };
    auto positive_or_auto = [&](int64_t v, const char* what) {
        if (v != -1) positive(v, what);
    };
    positive_or_auto(o.eval_items, "the number of evaluated items");
    positive(o.examples, "the number of examples");
    positive(o.max_layers, "the number of layers");
    positive(o.max_filters, "the number of filters per layer");
    positive_or_auto(o.scan_items, "the number of scanned items");
    positive(o.patch_channels, "the number of channels with patches");
    positive_or_auto(o.feature_vis_steps, "the number of feature visualisation steps");
    positive(o.map_iterations, "the number of t-SNE iterations");
    positive_or_auto(o.occlusion_stride, "the occlusion stride");
    positive_or_auto(o.attribution_steps, "the number of attribution steps");
    if (o.feature_vis_size < -1) throw UsageError("the feature visualisation size must be >= 0 (0 = the input size)");
    if (!(o.budget_seconds > 0)) throw UsageError("the time budget must be > 0 seconds");
    if (o.vis_channels < 0) throw UsageError("the number of feature visualisations must be >= 0");
    if (o.max_filter_layers < 0) throw UsageError("the number of filter layers must be >= 0");
    if (!o.map_path.empty() && o.map_items != -1)
        throw UsageError("a map from a folder (--map) and a computed one (--map-items) exclude each other: give one");
    if (o.map_items != 0 && o.map_items != -1 && (o.map_items < 8 || o.map_items > 70000))
        throw UsageError("the map takes 8..70000 items (0 = no map), got " + std::to_string(o.map_items));
    for (const auto& m : o.attributions) (void)parse_attribution_method(m);
    if (o.trust_items < -1) throw UsageError("the number of evaluated items must be >= 0 (0 = none)");
    for (const auto& m : o.trust_metrics) (void)parse_metric(m);
}

// Seconds of the fastest of `runs` runs of f (after one warm-up run).
template <class F>
double best_seconds(F&& f, int runs = 2) {
    f();
    double best = 1e30;
    for (int i = 0; i < runs; ++i) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    return best;
}

}  // namespace

ReportPlan plan_report(const Model& model, const Dataset& data, const std::vector<std::string>& layers,
                       const ReportOptions& o) {
    torch::NoGradGuard no_grad;
    ReportPlan p;
    const auto shape = model.input_shape();
    const int64_t batch = 8;
    const at::Tensor zeros = torch::zeros({batch, shape[0], shape[1], shape[2]});
    const double t = best_seconds([&] { (void)model.forward(zeros); }) / double(batch);
    p.forward_ms = 1000.0 * t;
    const double budget = o.budget_seconds;
    // Items a share of the budget pays for at one forward pass each.
    auto items_for = [&](double share, int64_t cap) {
        const double n = share * budget / std::max(t, 1e-9);
        return std::max<int64_t>(1, std::min<int64_t>(cap, int64_t(n)));
    };
    p.eval_items = o.eval_items > 0 ? o.eval_items : items_for(0.08, 10000);
    p.scan_items = o.scan_items > 0 ? o.scan_items : items_for(0.12, 2000);
    p.map_items = !o.map_path.empty() ? 0 : o.map_items >= 0 ? o.map_items : std::max<int64_t>(8, items_for(0.08, 2000));
    const int64_t shown = 2 * o.examples;

    // Occlusion: a seventh of the input per patch, half a patch per step or more (the exact
    // incremental engine costs about half a forward pass per position).
    p.occlusion_patch = std::max<int64_t>(1, std::llround(double(std::min(shape[1], shape[2])) / 7.0));
    if (o.occlusion_stride > 0) {
        p.occlusion_stride = o.occlusion_stride;
    } else {
        p.occlusion_stride = std::max<int64_t>(1, p.occlusion_patch / 2);
        auto positions = [&](int64_t stride) {
            const int64_t ny = (shape[1] - p.occlusion_patch) / stride + 1, nx = (shape[2] - p.occlusion_patch) / stride + 1;
            return double(ny * nx);
        };
        while (p.occlusion_stride < p.occlusion_patch &&
               double(shown) * positions(p.occlusion_stride) * t * 0.5 > 0.15 * budget)
            ++p.occlusion_stride;
    }

    // Attributions: a forward and a backward pass (about 3 forward passes) per step or sample.
    if (o.attribution_steps > 0) {
        p.attribution_steps = o.attribution_steps;
    } else {
        p.attribution_steps = 32;
        const double methods = std::max<double>(1.0, double(o.attributions.size()));
        while (p.attribution_steps > 8 &&
               double(shown) * (3.0 * methods + 3.0 * (p.attribution_steps + 1)) * t > 0.2 * budget)
            p.attribution_steps /= 2;
    }

    // Feature visualisation: at most 128 px where the layer's part of the model takes it, and
    // as many steps (32..128) as its measured forward passes allow.
    double vis_seconds = 0;
    for (const auto& name : layers) {
        int64_t size = o.feature_vis_size >= 0 ? o.feature_vis_size : 0;
        if (o.feature_vis_size < 0 && std::max(shape[1], shape[2]) > 128) {
            try {
                (void)model.forward_until(torch::zeros({1, shape[0], 128, 128}), {name});
                size = 128;
            } catch (const Error&) {
                size = 0;  // this part of the model needs its input size
            }
        }
        p.feature_vis_size.push_back(size);
        if (o.vis_channels > 0 && o.feature_vis_steps < 0) {
            const int64_t h = size > 0 ? size : shape[1], w = size > 0 ? size : shape[2];
            const int64_t units = std::min<int64_t>(o.vis_channels, 16);
            const at::Tensor x = torch::zeros({units, shape[0], h, w});
            // The first runs of a new graph include its specialisation: the best of three after one.
            vis_seconds += 3.0 * best_seconds([&] { (void)model.forward_until(x, {name}); }, 3);
        }
    }
    if (o.feature_vis_steps > 0) {
        p.feature_vis_steps = o.feature_vis_steps;
    } else {
        p.feature_vis_steps = 128;
        while (p.feature_vis_steps > 32 && double(p.feature_vis_steps) * vis_seconds > 0.45 * budget)
            p.feature_vis_steps -= 16;
    }
    // Which map to trust: per item and method about 4 (steps + 1) forward passes for deletion
    // and insertion and one map (about 3 (steps + 1) passes for the path methods) per
    // randomised layer and for the random logit; a sixth of the budget.
    p.trust_metrics = o.trust_metrics;
    if (o.trust_items != 0) {
        const double methods = double(o.attributions.size() + 1);
        const double map_cost = 3.0 * (p.attribution_steps + 1) + 1.0;
        const double layers = double(parameter_layers(model).size());
        auto cost_per_item = [&](const std::vector<std::string>& metrics) {
            double c = map_cost;
            for (const auto& m : metrics) {
                const Metric k = parse_metric(m);
                if (k == Metric::Deletion || k == Metric::Insertion) c += 2.0 * (p.trust_steps + 1);
                if (k == Metric::Randomisation || k == Metric::IndependentRandomisation) c += layers * map_cost;
                if (k == Metric::RandomLogit) c += map_cost;
            }
            return methods * c * t;
        };
        const double share = budget / 6.0;
        if (o.trust_items < 0 && cost_per_item(p.trust_metrics) > share) {
            std::vector<std::string> kept;
            for (const auto& m : p.trust_metrics)
                if (m.find("randomi") == std::string::npos) kept.push_back(m);
            if (kept.size() < p.trust_metrics.size())
                p.trust_note = "the randomisation checks were left out: they cost more than the time budget gives this "
                               "section (--budget, or convscope evaluate)";
            p.trust_metrics = kept;
        }
        if (o.trust_items > 0) {
            p.trust_items = o.trust_items;
        } else if (cost_per_item(p.trust_metrics) <= share) {
            p.trust_items = std::min<int64_t>(8, int64_t(share / cost_per_item(p.trust_metrics)));
        } else {
            p.trust_note = "left out: evaluating even one item costs more than the time budget gives it (--budget, "
                           "--trust-items, or convscope evaluate)";
        }
        p.trust_items = std::min(p.trust_items, data.size());
    }
    return p;
}

ReportResult write_report(const Model& model, const Dataset& data, OutputDir& out, const ReportOptions& opts,
                          const ProgressFn& progress) {
    check_options(opts);
    torch::NoGradGuard no_grad;
    ReportResult result;
    for (const auto& l : opts.layers) (void)model.layer(l);  // Error naming the closest layers
    result.layers = opts.layers.empty() ? spread_conv_layers(model, opts.max_layers) : opts.layers;
    // A map from a folder is read first: one that does not fit fails before any work.
    std::shared_ptr<const DatasetMap> given_map;
    if (!opts.map_path.empty()) given_map = std::make_shared<const DatasetMap>(read_dataset_map(opts.map_path, data));
    StagedProgress stages(progress, detail::report_stages());
    const ReportPlan plan = plan_report(model, data, result.layers, opts);
    result.plan = plan;
    stages.finish("plan");

    json doc;
    const auto shape = model.input_shape();
    detail::ReportContext c{model,
                            data,
                            out,
                            opts,
                            plan,
                            preprocess_for(model, data),
                            detail::class_names_for(model, data),
                            readable_factor(int(shape[1]), int(shape[2]), kPictureTarget),
                            data.has_labels() && data.class_match().comparable,
                            stages,
                            result,
                            doc,
                            given_map};
    c.write_header();
    // Each section, then its seconds (for people tuning the settings, and the benchmark).
    using Section = void (detail::ReportContext::*)();
    const std::vector<std::pair<std::string, Section>> sections = {
        {"accuracy", &detail::ReportContext::write_accuracy}, {"filters", &detail::ReportContext::write_filters},
        {"examples", &detail::ReportContext::write_examples}, {"trust", &detail::ReportContext::write_trust},
        {"patches", &detail::ReportContext::write_patches},
        {"feature_vis", &detail::ReportContext::write_feature_vis}, {"map", &detail::ReportContext::write_map}};
    for (const auto& [stage, section] : sections) {
        (c.*section)();
        stages.finish(stage);
    }
    result.stage_seconds = stages.seconds();
    result.index_html = out.file("index.html", "the report: open it in a browser (no server needed)");
    write_file_atomic(result.index_html, render_page(doc["title"].get<std::string>(), doc));
    report_progress(progress, 1.0);
    return result;
}

}  // namespace convscope
