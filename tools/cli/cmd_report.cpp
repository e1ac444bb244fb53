// convscope report: one self-contained HTML page (DIR/index.html, pictures beside it) with the
// model, filters, activations, occlusion and attributions of correct and wrong predictions, top
// patches, feature visualisations and the dataset map. Opens from disk, no server, no network.
#include <iostream>
#include "convscope/runtime/json.hpp"

#include "common.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/app/report.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {
namespace {

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto r = std::make_shared<ReportOptions>();
    auto layers = std::make_shared<std::string>();
    auto attributions = std::make_shared<std::string>("saliency,guided-backprop,integrated-gradients,grad-cam");
    add_model_options(app, *o);
    app.add_option("--data", o->data, "data (default: fashion-mnist:test)");
    app.add_option("--labels", o->labels, "labels .npy for .npy data");
    add_out_option(app, *o, "report");
    add_json_option(app, *o);
    app.add_option("--title", r->title, "page title");
    app.add_option("--layers", *layers,
                   "layers for activations, top patches and feature visualisation, comma-separated "
                   "(default: up to --max-layers conv layers spread over the depth)");
    app.add_option("--max-layers", r->max_layers, "conv layers chosen when --layers is not given")->capture_default_str();
    app.add_option("--eval-items", r->eval_items, "first N items for the accuracy and the examples (default: from the model's cost, at most 10000)");
    app.add_option("--examples", r->examples, "correctly and wrongly classified inputs shown (each)")->capture_default_str();
    app.add_option("--max-filters", r->max_filters, "filters per layer in the filter grids")->capture_default_str();
    app.add_option("--filter-layers", r->max_filter_layers, "layers with a filter grid")->capture_default_str();
    app.add_option("--scan-items", r->scan_items, "first N items scanned for top patches (default: from the model's cost, at most 2000)");
    app.add_option("--patch-channels", r->patch_channels, "channels per layer with their top-9 patches")->capture_default_str();
    app.add_option("--vis-channels", r->vis_channels, "channels per layer with a feature visualisation (0 = none)")
        ->capture_default_str();
    app.add_option("--vis-steps", r->feature_vis_steps, "feature visualisation steps (default: from the model's cost, 32..128)");
    app.add_option("--vis-size", r->feature_vis_size,
                   "side of the feature visualisations in pixels, 0 = the input size (default: at most 128 where the layer allows)");
    app.add_option("--map-items", r->map_items, "points on the dataset map, 0 = no map (default: from the model's cost, at most 2000)");
    app.add_option("--occlusion-stride", r->occlusion_stride, "occluder step in pixels (default: half the patch, more for slow models)");
    app.add_option("--attribution-steps", r->attribution_steps,
                   "integrated gradients' steps and SmoothGrad's samples (default: from the model's cost, 8..32)");
    app.add_option("--budget", r->budget_seconds, "seconds the automatic settings aim at")->capture_default_str();
    app.add_option("--map-iterations", r->map_iterations, "t-SNE iterations of the map")->capture_default_str();
    app.add_option("--map", r->map_path,
                   "show this convscope embed output folder as the dataset map (any number of points, a million "
                   "and more; made from the same --data) instead of computing one");
    app.add_option("--attributions", *attributions, "attribution methods, comma-separated ('' = none)")
        ->capture_default_str();
    auto trust = std::make_shared<std::string>(detail::join(ReportOptions{}.trust_metrics, ","));
    app.add_option("--trust-items", r->trust_items,
                   "items of the 'Which map to trust' section, 0 = none (default: from the model's cost, at most 8)");
    app.add_option("--trust-metrics", *trust, "its metrics (convscope evaluate --help)")->capture_default_str();

    return [o, r, layers, attributions, trust]() {
        ReportOptions opts = *r;
        opts.trust_metrics = trust->empty() ? std::vector<std::string>{} : detail::split(*trust, ',');
        opts.seed = o->seed;
        opts.layers = layers->empty() ? std::vector<std::string>{} : detail::split(*layers, ',');
        opts.attributions = attributions->empty() ? std::vector<std::string>{} : detail::split(*attributions, ',');
        Model model = open_model(*o);
        Dataset data = open_data(*o);
        fit_model_to_data(model, data);
        const nlohmann::json options = {{"data", data.spec()},          {"layers", opts.layers},
                                        {"max_layers", opts.max_layers}, {"eval_items", opts.eval_items},
                                        {"examples", opts.examples},     {"max_filters", opts.max_filters},
                                        {"filter_layers", opts.max_filter_layers},
                                        {"scan_items", opts.scan_items}, {"patch_channels", opts.patch_channels},
                                        {"vis_channels", opts.vis_channels},
                                        {"vis_steps", opts.feature_vis_steps},
                                        {"map_items", opts.map_items},   {"map_iterations", opts.map_iterations},
                                        {"map", opts.map_path},
                                        {"attributions", opts.attributions}, {"seed", opts.seed},
                                        {"vis_size", opts.feature_vis_size},
                                        {"occlusion_stride", opts.occlusion_stride},
                                        {"attribution_steps", opts.attribution_steps},
                                        {"trust_items", opts.trust_items},
                                        {"trust_metrics", opts.trust_metrics},
                                        {"budget_seconds", opts.budget_seconds}};
        OutputDir out = open_out(*o, options, &model);
        const ReportResult res = write_report(model, data, out, opts, cli_progress("report", 0.5));
        out.write_manifest();
        if (o->json) {
            nlohmann::json j = {{"index", res.index_html},
                                {"accuracy", res.accuracy >= 0 ? nlohmann::json(res.accuracy) : nlohmann::json(nullptr)},
                                {"evaluated", res.evaluated},
                                {"correct", res.correct},
                                {"wrong", res.wrong},
                                {"layers", res.layers},
                                {"map_points", res.map_points},
                                {"skipped", res.skipped},
                                {"stage_seconds", res.stage_seconds},
                                {"plan", {{"forward_ms", res.plan.forward_ms},
                                          {"eval_items", res.plan.eval_items},
                                          {"scan_items", res.plan.scan_items},
                                          {"map_items", res.plan.map_items},
                                          {"occlusion_stride", res.plan.occlusion_stride},
                                          {"attribution_steps", res.plan.attribution_steps},
                                          {"feature_vis_steps", res.plan.feature_vis_steps},
                                          {"feature_vis_size", res.plan.feature_vis_size},
                                          {"trust_items", res.plan.trust_items},
                                          {"trust_metrics", res.plan.trust_metrics}}}};
            std::cout << json_text(j, 2) << "\n";
        } else {
            std::cout << "report: " << res.index_html << "\n";
            if (res.accuracy >= 0)
                std::cout << "accuracy on the first " << res.evaluated << " items: " << 100.0 * res.accuracy << "%\n";
            for (const auto& s : res.skipped) std::cout << "left out: " << s << "\n";
        }
        return 0;
    };
}

RegisterCommand reg({"report", "a self-contained HTML report of everything: model, filters, activations, "
                               "occlusion, attributions, top patches, feature visualisation, dataset map",
                     setup, 80});

}  // namespace
}  // namespace convscope::cli
