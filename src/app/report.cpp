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
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/methods/embedding.hpp"
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

namespace convscope {

using nlohmann::json;

namespace {

constexpr int kPictureTarget = 160;  // inputs and heat maps are enlarged to about this size
constexpr int kCropPx = 48;

std::string file_safe(const std::string& name) {
    std::string s = name;
    for (auto& c : s)
        if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-')) c = '_';
    return s;
}

// Up to n conv layers spread over the depth, first and last included.
std::vector<std::string> spread_conv_layers(const Model& model, int64_t n) {
    const auto convs = model.conv_layer_names();
    if (int64_t(convs.size()) <= n) return convs;
    std::vector<std::string> out;
    for (int64_t i = 0; i < n; ++i) {
        const size_t k = n == 1 ? convs.size() - 1
                                : size_t(std::llround(double(i) * double(convs.size() - 1) / double(n - 1)));
        if (out.empty() || out.back() != convs[k]) out.push_back(convs[k]);
    }
    return out;
}

std::string short_value(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.3g", v);
    return buf;
}

// Writes a picture into img/ and returns its path relative to index.html.
struct Pictures {
    OutputDir& out;
    std::string put(const std::string& rel, const std::string& meaning, const cv::Mat& img) {
        write_png(out.file("img/" + rel, meaning), img);
        return "img/" + rel;
    }
};

// The page: the embedded template with styles, scripts and data put in. "</" inside the data is
// escaped so that no string can end the script element.
std::string render_page(const std::string& title, const json& data) {
    std::string page = detail::web_asset_text("report.html");
    std::string data_text = data.dump();
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
    if (o.map_items != 0 && o.map_items != -1 && (o.map_items < 8 || o.map_items > 70000))
        throw UsageError("the map takes 8..70000 items (0 = no map), got " + std::to_string(o.map_items));
    for (const auto& m : o.attributions) (void)parse_attribution_method(m);
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

// A section's method context: its share of the report's progress and the report's seed.
RunContext stage_context(const ReportOptions& opts, ProgressFn progress) {
    RunContext ctx;
    ctx.progress = std::move(progress);
    ctx.seed = opts.seed;
    return ctx;
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
    p.map_items = o.map_items >= 0 ? o.map_items : std::max<int64_t>(8, items_for(0.08, 2000));
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
    (void)data;
    return p;
}

ReportResult write_report(const Model& model, const Dataset& data, OutputDir& out,
                          const ReportOptions& opts, const ProgressFn& progress) {
    check_options(opts);
    torch::NoGradGuard no_grad;
    ReportResult result;
    Pictures pics{out};
    const Preprocess pre = preprocess_for(model, data);
    const auto& layers = model.layers();
    const auto class_names = detail::class_names_for(model, data);
    const auto shape = model.input_shape();
    const int factor = readable_factor(int(shape[1]), int(shape[2]), kPictureTarget);
    for (const auto& l : opts.layers) (void)model.layer(l);  // Error naming the closest layers
    result.layers = opts.layers.empty() ? spread_conv_layers(model, opts.max_layers) : opts.layers;
    auto stage_start = std::chrono::steady_clock::now();
    const ReportPlan plan = plan_report(model, data, result.layers, opts);
    result.plan = plan;
    // Seconds per section, for people tuning the settings (and the benchmark).
    auto stage_done = [&](const std::string& name) {
        const auto now = std::chrono::steady_clock::now();
        result.stage_seconds.emplace_back(name, std::chrono::duration<double>(now - stage_start).count());
        stage_start = now;
    };
    stage_done("plan");

    json doc;
    doc["title"] = opts.title.empty() ? "convscope report: " + std::filesystem::path(model.path()).filename().string()
                                      : opts.title;
    doc["version"] = CONVSCOPE_VERSION;
    doc["model"] = {{"file", std::filesystem::path(model.path()).filename().string()},
                    {"sha256", model.file_hash()},
                    {"input_shape", shape},
                    {"num_classes", model.num_classes()},
                    {"class_names", class_names}};
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
    const bool labels_comparable = data.has_labels() && data.class_match().comparable;
    auto& layer_rows = doc["layers"] = json::array();
    int64_t total_params = 0;
    for (const auto& p : model.module().parameters()) total_params += p.numel();
    doc["model"]["parameters"] = total_params;
    for (const auto& l : layers)
        layer_rows.push_back(to_json(l));
    doc["chosen_layers"] = result.layers;
    auto skip = [&](const std::string& why) {
        result.skipped.push_back(why);
        doc["skipped"].push_back(why);
    };
    doc["skipped"] = json::array();

    // --- 1. accuracy and the examples (0 .. 0.12) ---
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
            report_progress(progress, 0.12 * double(++batch) / double(batches));
        }
        result.evaluated = n;
        if (labelled > 0) result.accuracy = double(right) / double(labelled);
        doc["accuracy"] = labelled > 0 ? json(result.accuracy) : json(nullptr);
        doc["evaluated"] = n;
    }

    stage_done("accuracy");
    // --- 2. filter grids (0.12 .. 0.15) ---
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
                 {"picture", pics.put("filters_" + file_safe(name) + ".png",
                                      "filters of layer " + name + " (" + filter_mode_name(fr.mode) + " tiles)",
                                      fr.picture)},
                 {"mode", filter_mode_name(fr.mode)},
                 {"weight_shape", fr.weight_shape},
                 {"shown", fr.filters.size()},
                 {"mean_noise", fr.stats.empty() ? 0.0 : noise / double(fr.stats.size())},
                 {"noisiest", noisiest}});
            report_progress(progress, 0.12 + 0.03 * double(i + 1) / double(std::max<int64_t>(count, 1)));
        }
        if (spatial.empty()) skip("filters: the model has no layer with spatial weights");
    }

    stage_done("filters");
    // --- 3. examples: inputs, activations, occlusion, attributions (0.15 .. 0.45) ---
    std::vector<int64_t> ex = result.correct;
    ex.insert(ex.end(), result.wrong.begin(), result.wrong.end());
    doc["examples"] = json::array();
    if (!ex.empty()) {
        const at::Tensor images = data.batch(ex, pre);
        const at::Tensor logits = model.forward(images);
        const at::Tensor probs = torch::softmax(logits, 1);
        std::vector<cv::Mat> bases;
        for (size_t n = 0; n < ex.size(); ++n) {
            const int64_t i = ex[n];
            const int64_t label = data.label(i);
            const int64_t predicted = logits[int64_t(n)].argmax().item<int64_t>();
            const cv::Mat base = upscale_nearest(detail::input_picture(pre, images[int64_t(n)]), factor);
            bases.push_back(base);
            doc["examples"].push_back(
                {{"index", i},
                 {"label", label},
                 {"label_name", class_name(labels_comparable ? class_names : data.class_names(), label)},
                 {"predicted", predicted},
                 {"predicted_name", class_name(class_names, predicted)},
                 {"prob", probs[int64_t(n)][predicted].item<double>()},
                 {"correct", labels_comparable && label >= 0 && label == predicted},
                 {"input", pics.put("examples/" + std::to_string(i) + "/input.png", "example item " + std::to_string(i), base)},
                 {"activations", json::array()},
                 {"attributions", json::array()}});
        }
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
                    const std::string stem = "examples/" + std::to_string(ex[n]) + "/act_" + file_safe(la.name);
                    json a = {{"layer", la.name},
                              {"spatial", la.spatial},
                              {"picture", pics.put(stem + ".png", "activations of " + la.name + " for item " + std::to_string(ex[n]),
                                                   la.grids[n])}};
                    if (n < la.overlays.size() && !la.overlays[n].empty())
                        a["overlay"] = pics.put(stem + "_overlay.png",
                                                "strongest channels of " + la.name + " over item " + std::to_string(ex[n]),
                                                la.overlays[n]);
                    doc["examples"][n]["activations"].push_back(a);
                }
            }
        } else {
            skip("activation maps: the model has no conv layers and no layers were chosen");
        }
        report_progress(progress, 0.18);

        // Occlusion with confounder flags.
        OcclusionOptions oo;
        oo.patch_h = oo.patch_w = plan.occlusion_patch;
        oo.stride_y = oo.stride_x = plan.occlusion_stride;
        oo.score = OcclusionScore::Prob;
        const OcclusionResult orr = occlusion(model, images, oo, stage_context(opts, detail::sub_progress(progress, 0.18, 0.30)));
        for (size_t n = 0; n < ex.size(); ++n) {
            const OcclusionSummary s = summarize_occlusion(orr, int64_t(n), oo);
            const detail::HeatPictures p = detail::occlusion_pictures(bases[n], orr, int64_t(n), factor);
            const std::string stem = "examples/" + std::to_string(ex[n]) + "/occlusion";
            json j = to_json(s, class_names);
            j["overlay"] = pics.put(stem + "_overlay.png", "occlusion map over item " + std::to_string(ex[n]), p.overlay);
            j["heat"] = pics.put(stem + ".png", "occlusion map of item " + std::to_string(ex[n]) +
                                                   " (red: occluding lowers the predicted class's probability)", p.heat);
            j["patch"] = oo.patch_h;
            j["stride"] = oo.stride_y;
            doc["examples"][n]["occlusion"] = j;
        }

        // Gradient attributions.
        const size_t methods = opts.attributions.size();
        for (size_t m = 0; m < methods; ++m) {
            AttributionOptions ao2;
            ao2.method = parse_attribution_method(opts.attributions[m]);
            ao2.samples = plan.attribution_steps;
            ao2.steps = plan.attribution_steps;
            if (is_cam_method(ao2.method) && model.conv_layer_names().empty()) {
                skip(opts.attributions[m] + ": the model has no conv layer");
                continue;
            }
            const AttributionResult r = attribute(
                model, images, ao2,
                stage_context(opts, detail::sub_progress(progress, 0.30 + 0.15 * double(m) / double(methods),
                                                         0.30 + 0.15 * double(m + 1) / double(methods))));
            for (size_t n = 0; n < ex.size(); ++n) {
                const detail::HeatPictures p = detail::attribution_pictures(bases[n], r, int64_t(n), factor);
                const std::string stem = "examples/" + std::to_string(ex[n]) + "/" + opts.attributions[m];
                doc["examples"][n]["attributions"].push_back(
                    {{"method", opts.attributions[m]},
                     {"layer", r.layer},
                     {"target_name", class_name(class_names, r.targets[n])},
                     {"overlay", pics.put(stem + "_overlay.png", opts.attributions[m] + " over item " + std::to_string(ex[n]), p.overlay)},
                     {"heat", pics.put(stem + ".png", opts.attributions[m] + " map of item " + std::to_string(ex[n]), p.heat)}});
            }
        }
    }
    report_progress(progress, 0.45);

    stage_done("examples");
    // --- 4. top-9 patches of the chosen layers (0.45 .. 0.62) ---
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
            top_patches(model, data, indices, pre, to, stage_context(opts, detail::sub_progress(progress, 0.45, 0.60)));
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
                 {"picture", pics.put("patches_" + file_safe(L.name) + ".png",
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
    report_progress(progress, 0.62);

    stage_done("patches");
    // --- 5. feature visualisation (0.62 .. 0.80) ---
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
                stage_context(opts, detail::sub_progress(progress, 0.62 + 0.18 * double(li) / double(count),
                                                         0.62 + 0.18 * double(li + 1) / double(count))));
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
                                             short_value(fr.activation[int64_t(u)].item<double>()));
                units.push_back({{"channel", fo.units[u]},
                                 {"activation", fr.activation[int64_t(u)].item<double>()},
                                 {"initial_activation", fr.initial_activation[int64_t(u)].item<double>()}});
            }
            doc["feature_vis"].push_back(
                {{"layer", l.name},
                 {"steps", fo.steps},
                 {"picture", pics.put("featurevis_" + file_safe(l.name) + ".png",
                                      "feature visualisations of the first channels of " + l.name +
                                          " (caption: channel and its mean activation)",
                                      labelled_grid(tiles, grid))},
                 {"channels", units}});
        }
    }
    report_progress(progress, 0.80);

    stage_done("feature_vis");
    // --- 6. the dataset map (0.80 .. 1) ---
    doc["map"] = nullptr;
    if (plan.map_items > 0) {
        const int64_t n = std::min(plan.map_items, data.size());
        const std::string layer = model.penultimate_layer();
        if (n < 8 || layer.empty()) {
            skip(n < 8 ? "dataset map: fewer than 8 items" : "dataset map: no layer to take features from");
        } else {
            std::vector<int64_t> indices(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
            // Features and the items' pictures in one pass.
            const int thumb_px = n > 10000 ? 16 : (shape[1] <= 28 && shape[2] <= 28 ? 28 : 32);
            LayerFeaturesOptions lo;
            lo.layer = layer;
            lo.keep_display = true;
            const EmbeddingFeatures ef =
                layer_features(model, data, indices, lo, stage_context(opts, detail::sub_progress(progress, 0.80, 0.84)));
            std::vector<cv::Mat> thumbs;
            for (int64_t i = 0; i < n; ++i)
                thumbs.push_back(resize_to_fit(image_from_hwc_uint8(ef.display[i]), thumb_px));
            const std::vector<int64_t>& labels = ef.labels;
            TsneOptions to;
            to.iterations = opts.map_iterations;
            to.early_exaggeration_iters = std::min(to.early_exaggeration_iters, std::max(1, to.iterations / 3));
            to.perplexity = std::min(30.0, (double(n) - 2.0) / 3.0 - 0.01);
            if (ef.features.size(1) > 50) to.pca_dims = 50;
            const EmbeddingResult er = embed_features(ef.features, labels, to, stage_context(opts, detail::sub_progress(progress, 0.84, 0.97)));
            const TsneResult& tr = er.tsne;
            const at::Tensor xy = tr.embedding.to(torch::kFloat).contiguous();
            write_npy(out.file("map_embedding.npy", "t-SNE of " + layer + " for the first " + std::to_string(n) +
                                                        " items [N,2] float32"),
                      xy);
            bool any_label = false;
            for (int64_t l : labels) any_label = any_label || l >= 0;
            const std::vector<int64_t> plot_labels = any_label ? labels : std::vector<int64_t>{};
            const std::string scatter = pics.put("map_scatter.png", "t-SNE map coloured by label",
                                                 scatter_plot(xy, plot_labels, class_names, 720, 2));
            const std::string thumbmap = pics.put("map_thumbnails.png", "t-SNE map with item thumbnails",
                                                  thumbnail_map(xy, thumbs, 1200, 28, plot_labels, true));
            const int cols = int(std::ceil(std::sqrt(double(n))));
            const std::string sprite = pics.put("map_sprite.png",
                                                "thumbnails of the map's items, row-major, " + std::to_string(cols) +
                                                    " per row, " + std::to_string(thumb_px) + " px each",
                                                tile_grid(thumbs, cols, 0));
            const float* p = xy.data_ptr<float>();
            std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
            for (int64_t i = 0; i < n; ++i) {
                x[size_t(i)] = std::round(p[2 * i] * 1000.f) / 1000.f;
                y[size_t(i)] = std::round(p[2 * i + 1] * 1000.f) / 1000.f;
            }
            json colours = json::array();
            for (size_t c = 0; c < std::max<size_t>(class_names.size(), 1); ++c) {
                const cv::Scalar s = category_colour(int64_t(c));
                colours.push_back({int(s[0]), int(s[1]), int(s[2])});
            }
            const cv::Scalar unknown = category_colour(-1);
            json& map = doc["map"] = to_json(er);
            map.update(json{{"n", n},
                            {"layer", layer},
                            {"scatter", scatter},
                            {"thumbnails", thumbmap},
                            {"sprite", {{"src", sprite}, {"cols", cols}, {"thumb", thumb_px}}},
                            {"x", x},
                            {"y", y},
                            {"labels", labels},
                            {"class_names", class_names},
                            {"class_colours", colours},
                            {"unknown_colour", {int(unknown[0]), int(unknown[1]), int(unknown[2])}}});
            result.map_points = n;
        }
    }

    stage_done("map");
    result.index_html = out.file("index.html", "the report: open it in a browser (no server needed)");
    write_file_atomic(result.index_html, render_page(doc["title"].get<std::string>(), doc));
    report_progress(progress, 1.0);
    return result;
}

}  // namespace convscope
