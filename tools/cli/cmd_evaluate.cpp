// convscope evaluate: which map to trust. Every chosen method's maps for the selected items,
// scored by faithfulness metrics and sanity checks; metrics.json/.csv, a ranked summary table
// with each metric's direction, curves and cascades as pictures, the maps as arrays.
#include <iomanip>
#include <iostream>
#include <sstream>

#include "common.hpp"
#include "convscope/runtime/cluster.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {
namespace {

struct EvaluateArgs {
    EvaluationOptions eo;
    std::string methods = detail::join(EvaluationOptions{}.methods, ",");
    std::string metrics;
    TargetArgs target;
    std::string deletion_baseline = baseline_name(EvaluationOptions{}.deletion_baseline);
    std::string insertion_baseline = baseline_name(EvaluationOptions{}.insertion_baseline);
    std::string percentages = "10,20,30,40,50,60,70,80,90";
    std::string occlusion_patch = "4", occlusion_stride = "2";
    std::string randomisation_init = random_init_name(EvaluationOptions{}.randomisation_init);
    std::string checkpoint;
};

void add_options(CLI::App& app, EvaluateArgs& a) {
    a.target.score = "prob";  // the metrics' papers read probabilities
    for (const auto m : EvaluationOptions{}.metrics) a.metrics += (a.metrics.empty() ? "" : ",") + std::string(metric_name(m));
    app.add_option("--methods", a.methods, "methods to evaluate: " + detail::join(explain_method_names(), ", "))
        ->capture_default_str();
    app.add_option("--metrics", a.metrics, "metrics: " + detail::join(metric_names(), ", "))->capture_default_str();
    add_target_options(app, a.target, "what every method explains and every metric scores");
    app.add_option("--steps", a.eo.steps, "deletion/insertion: steps of the curves")->capture_default_str();
    app.add_option("--deletion-baseline", a.deletion_baseline, "deletion: what removed pixels become")
        ->capture_default_str();
    app.add_option("--insertion-baseline", a.insertion_baseline, "insertion: the image pixels are inserted into")
        ->capture_default_str();
    app.add_option("--percentages", a.percentages, "ROAD: percentages of pixels removed")->capture_default_str();
    app.add_option("--road-noise", a.eo.road.noise, "ROAD: noise of the linear imputation (model-input units)")
        ->capture_default_str();
    app.add_option("--infidelity-samples", a.eo.infidelity.samples, "infidelity: perturbations per item")
        ->capture_default_str();
    app.add_option("--infidelity-noise", a.eo.infidelity.noise,
                   "infidelity: perturbation std as a fraction of the item's value range")
        ->capture_default_str();
    app.add_option("--sensitivity-samples", a.eo.sensitivity.samples, "max-sensitivity: perturbed copies per item")
        ->capture_default_str();
    app.add_option("--sensitivity-radius", a.eo.sensitivity.radius,
                   "max-sensitivity: noise radius as a fraction of the item's value range")
        ->capture_default_str();
    app.add_option("--randomisation-init", a.randomisation_init,
                   "randomisation: how parameters are redrawn: statistics (normal with each tensor's own mean and "
                   "std) or reset (PyTorch's reset_parameters, as Quantus' MPRT)")
        ->capture_default_str();
    AttributionOptions& ao = a.eo.explain.attribution;
    app.add_option("--layer", ao.layer, "Grad-CAM layer (default: the last conv layer)");
    app.add_option("--samples", ao.samples, "SmoothGrad: noisy copies per item")->capture_default_str();
    app.add_option("--ig-steps", ao.steps, "integrated gradients: steps along the path")->capture_default_str();
    app.add_option("--masks", ao.masks, "RISE: random masks")->capture_default_str();
    app.add_option("--occlusion-patch", a.occlusion_patch, "occlusion: patch size P or PxQ")->capture_default_str();
    app.add_option("--occlusion-stride", a.occlusion_stride, "occlusion: stride S or SxT")->capture_default_str();
    app.add_option("--batch-size", a.eo.batch_size, "perturbed copies per forward pass")->capture_default_str();
    app.add_option("--checkpoint", a.checkpoint,
                   "checkpoint prefix: each finished method is saved to PREFIX.METHOD, and a run stopped "
                   "part-way (a killed rank included) resumes with the methods not yet saved");
}

// "4" or "4x6" -> {4, 4} or {4, 6}.
std::pair<int64_t, int64_t> parse_pair(const std::string& s, const std::string& what) {
    const auto parts = detail::split(s, 'x');
    int64_t a = 0, b = 0;
    if (parts.empty() || parts.size() > 2 || !detail::parse_int64(parts[0], a) ||
        !detail::parse_int64(parts.back(), b) || a < 1 || b < 1)
        throw UsageError(what + " must be N or NxM with whole numbers >= 1, got '" + s + "'");
    return {a, b};
}

EvaluationOptions parse_options(const EvaluateArgs& a) {
    EvaluationOptions eo = a.eo;
    eo.methods.clear();
    for (const auto& m : detail::split(a.methods, ',')) {
        check_explain_method(detail::trim(m));
        eo.methods.push_back(detail::trim(m));
    }
    eo.metrics.clear();
    for (const auto& m : detail::split(a.metrics, ',')) eo.metrics.push_back(parse_metric(detail::trim(m)));
    TargetArgs target = a.target;
    // The probability is the default for class targets; a similarity is its own score.
    if (target.target.rfind("similarity:", 0) == 0 && target.score == "prob") target.score = "logit";
    eo.explain.target = parse_target_args(target);
    eo.deletion_baseline = parse_baseline(a.deletion_baseline);
    eo.insertion_baseline = parse_baseline(a.insertion_baseline);
    eo.randomisation_init = parse_random_init(a.randomisation_init);
    eo.road.percentages.clear();
    for (const auto& p : detail::split(a.percentages, ',')) {
        double v = 0;
        if (!detail::parse_double(detail::trim(p), v))
            throw UsageError("--percentages takes numbers separated by commas, got '" + p + "'");
        eo.road.percentages.push_back(v);
    }
    if (eo.steps < 1) throw UsageError("--steps must be at least 1, got " + std::to_string(eo.steps));
    if (eo.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    std::tie(eo.explain.occlusion.patch_h, eo.explain.occlusion.patch_w) = parse_pair(a.occlusion_patch, "--occlusion-patch");
    std::tie(eo.explain.occlusion.stride_y, eo.explain.occlusion.stride_x) =
        parse_pair(a.occlusion_stride, "--occlusion-stride");
    return eo;
}

std::string fixed(double v, int digits = 4) {
    std::ostringstream s;
    s << std::setprecision(digits) << v;
    return s.str();
}

// The ranked table: one row per metric with its direction and each method's mean, best first.
void print_table(const EvaluationResult& r, std::ostream& os) {
    size_t width = 12, first = 20;
    for (const auto& m : r.methods) width = std::max(width, m.size() + 2);
    for (const auto& c : r.columns) first = std::max(first, c.name.size() + 22);
    os << std::left << std::setw(int(first)) << "metric (direction)";
    for (const auto& m : r.methods) os << std::setw(int(width)) << m;
    os << "best\n";
    for (const auto& c : r.columns) {
        const auto means = r.means(c);
        os << std::setw(int(first)) << (c.name + (c.higher_is_better ? " (higher is better)" : " (lower is better)"));
        for (const auto& m : r.methods) os << std::setw(int(width)) << (means.count(m) ? fixed(means.at(m)) : "-");
        const auto rank = r.ranking(c);
        os << (rank.empty() ? "-" : rank.front()) << "\n";
    }
}

void write_pictures(OutputDir& out, const EvaluationResult& r) {
    // Mean curves per kind, methods as series.
    std::map<std::string, std::vector<at::Tensor>> series;
    for (const auto& m : r.methods)
        for (const auto& [name, c] : r.curves.at(m).curves) series[name].push_back(c.mean(0));
    for (const auto& [name, curves] : series) {
        if (curves.size() != r.methods.size()) continue;
        const cv::Mat plot = line_plot(torch::stack(curves), 560, 280, r.methods);
        write_png(out.file("curves/" + name + ".png", "mean " + name + " curve per method (x: share of pixels or ROAD percentage)"),
                  plot);
    }
    // Cascades: mean similarity per randomised layer, methods as series.
    for (const char* sim : {"spearman_abs", "ssim"}) {
        std::vector<at::Tensor> cs;
        for (const auto& m : r.methods) {
            const auto& cas = r.curves.at(m).cascade;
            if (cas.count(sim)) cs.push_back(cas.at(sim).mean(1));
        }
        if (cs.empty() || cs.size() != r.methods.size()) continue;
        const cv::Mat plot = line_plot(torch::stack(cs), 560, 280, r.methods, Range{-1.f, 1.f});
        write_png(out.file(std::string("cascade_") + sim + ".png",
                           std::string("mean ") + sim + " similarity to the original map as layers are randomised from the top"),
                  plot);
    }
}

// Evaluates `eo.methods` (this rank's share). With a checkpoint prefix, one method at a time:
// each finished method's part goes to PREFIX.METHOD beside the run's identity, and a part saved
// by an earlier run of the same command is read back instead of computed. Each method draws its
// randomness from the seed alone, so parts computed apart merge into the bits of one run.
EvaluationResult evaluate_share(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                                const at::Tensor& images, const EvaluationOptions& eo, const std::string& checkpoint,
                                const RunContext& ctx) {
    if (checkpoint.empty()) return evaluate(model, images, eo, ctx);
    // The identity: the model, the data, the items and the arguments (without the output folder,
    // the threads and the launcher, which do not change the numbers).
    std::string args;
    bool skip = false;
    for (const std::string& w : detail::split(command_line(), ' ')) {
        if (skip) { skip = false; continue; }
        if (w == "--out" || w == "--threads") { skip = true; continue; }
        if (w.rfind("--out=", 0) == 0 || w.rfind("--threads=", 0) == 0) continue;
        args += w + " ";
    }
    const std::string identity = nlohmann::json{{"model", model.file_hash()}, {"data", data.hash()},
                                                {"items", indices}, {"arguments", args}}
                                     .dump() + "\n";
    std::vector<EvaluationResult> parts;
    size_t resumed = 0;
    for (size_t k = 0; k < eo.methods.size(); ++k) {
        const std::string& method = eo.methods[k];
        const std::string path = checkpoint + "." + method;
        if (std::filesystem::exists(path)) {
            const std::string saved = read_file(path);
            if (saved.compare(0, identity.size(), identity) != 0)
                throw Error("checkpoint " + path + " is from another run (other model, data, items or options): "
                            "delete it, or give this run another --checkpoint");
            try {
                parts.push_back(evaluation_from_bytes(saved.substr(identity.size())));
            } catch (const std::exception&) {
                throw Error("checkpoint " + path + " is damaged (cut short or changed): delete it, and the method is "
                            "computed again");
            }
            ++resumed;
            continue;
        }
        EvaluationOptions one = eo;
        one.methods = {method};
        RunContext c = ctx;
        c.progress = sub_progress(ctx.progress, double(k) / double(eo.methods.size()),
                                  double(k + 1) / double(eo.methods.size()));
        parts.push_back(evaluate(model, images, one, c));
        write_file_atomic(path, identity + evaluation_bytes(parts.back()));
    }
    if (resumed > 0 && cluster::rank() == 0)
        std::cerr << "evaluate: resumed " << resumed << " of " << eo.methods.size()
                  << " methods from the checkpoint " << checkpoint << (cluster::distributed() ? " (rank 0's share)" : "")
                  << "\n";
    return merge_evaluations(parts, eo.methods);
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<EvaluateArgs>();
    add_options(app, *a);
    add_model_options(app, *o);
    add_data_options(app, *o);
    add_out_option(app, *o, "evaluation");
    add_json_option(app, *o);

    return [o, a]() {
        EvaluationOptions eo = parse_options(*a);
        auto [model, data, indices, pre, images, labels] = open_selected_inputs(*o);
        eo.explain.target.labels = labels;
        load_reference(eo.explain.target, model, data, pre);
        EvaluationResult r;
        if (cluster::distributed()) {
            // The ranks share the methods (method k to rank k mod R): every method runs with the
            // seed and images one process gives it, so the merged result has its bits.
            check_ranks_agree(model, data, indices);
            EvaluationOptions mine = eo;
            mine.methods.clear();
            for (size_t k = 0; k < eo.methods.size(); ++k)
                if (int(k % size_t(cluster::size())) == cluster::rank()) mine.methods.push_back(eo.methods[k]);
            std::string bytes;
            if (!mine.methods.empty())
                bytes = evaluation_bytes(
                    evaluate_share(model, data, indices, images, mine, a->checkpoint, run_context(*o, "evaluate")));
            const std::vector<std::string> parts = cluster::gather(bytes);
            if (cluster::rank() != 0) return 0;
            std::vector<EvaluationResult> results;
            for (const auto& p : parts)
                if (!p.empty()) results.push_back(evaluation_from_bytes(p));
            r = merge_evaluations(results, eo.methods);
        } else {
            r = evaluate_share(model, data, indices, images, eo, a->checkpoint, run_context(*o, "evaluate"));
        }

        std::vector<std::string> metrics;
        for (const auto m : eo.metrics) metrics.push_back(metric_name(m));
        const nlohmann::json options = {{"methods", eo.methods},
                                        {"metrics", metrics},
                                        {"target", target_name(eo.explain.target)},
                                        {"score", score_name(eo.explain.target.score)},
                                        {"region", region_name(eo.explain.target.region)},
                                        {"output", model.output_name()},
                                        {"steps", eo.steps},
                                        {"deletion_baseline", baseline_name(eo.deletion_baseline)},
                                        {"insertion_baseline", baseline_name(eo.insertion_baseline)},
                                        {"percentages", eo.road.percentages},
                                        {"road_noise", eo.road.noise},
                                        {"infidelity_samples", eo.infidelity.samples},
                                        {"infidelity_noise", eo.infidelity.noise},
                                        {"sensitivity_samples", eo.sensitivity.samples},
                                        {"sensitivity_radius", eo.sensitivity.radius},
                                        {"randomisation_init", random_init_name(eo.randomisation_init)},
                                        {"samples", eo.explain.attribution.samples},
                                        {"ig_steps", eo.explain.attribution.steps},
                                        {"masks", eo.explain.attribution.masks},
                                        {"occlusion_patch", a->occlusion_patch},
                                        {"occlusion_stride", a->occlusion_stride},
                                        {"batch_size", eo.batch_size},
                                        {"seed", o->seed},
                                        {"data", data.spec()},
                                        {"indices", indices}};
        OutputDir out = open_out(*o, options, &model);
        const nlohmann::json j = evaluation_json(r, indices);
        write_json(out.file("metrics.json", "every metric per method and item, directions, rankings, mean curves"), j);
        std::vector<std::vector<std::string>> rows;
        for (const auto& c : r.columns)
            for (const auto& m : r.methods) {
                if (!c.values.count(m)) continue;
                const at::Tensor v = c.values.at(m).to(torch::kDouble);
                for (size_t i = 0; i < indices.size(); ++i)
                    rows.push_back({m, std::to_string(indices[i]), c.name, fixed(v[int64_t(i)].item<double>(), 9),
                                    c.higher_is_better ? "higher" : "lower"});
            }
        write_csv(out.file("metrics.csv", "one row per method, item and metric (better: higher or lower)"),
                  {"method", "item", "metric", "value", "better"}, rows);
        std::vector<std::vector<std::string>> table;
        for (const auto& c : r.columns) {
            const auto means = r.means(c);
            std::vector<std::string> row{c.name, c.higher_is_better ? "higher is better" : "lower is better"};
            for (const auto& m : r.methods) row.push_back(means.count(m) ? fixed(means.at(m), 9) : "");
            row.push_back(detail::join(r.ranking(c), " > "));
            table.push_back(row);
        }
        std::vector<std::string> header{"metric", "direction"};
        for (const auto& m : r.methods) header.push_back(m);
        header.push_back("ranking");
        write_csv(out.file("summary.csv", "per metric: its direction, each method's mean over the items and the ranking"),
                  header, table);
        for (const auto& m : r.methods)
            write_npy(out.file("maps/" + detail::file_safe(m) + ".npy", m + " maps [N,H,W] float32 as evaluated"),
                      r.maps.at(m));
        write_pictures(out, r);
        out.write_manifest();
        if (o->json) {
            std::cout << json_text(j, 2) << "\n";
        } else {
            std::cout << "evaluated " << r.methods.size() << " method(s) on " << indices.size() << " item(s) -> "
                      << out.dir() << "\n";
            print_table(r, std::cout);
        }
        return 0;
    };
}

RegisterCommand reg({"evaluate", "which map to trust: faithfulness metrics and sanity checks of every method", setup, 65});

}  // namespace
}  // namespace convscope::cli
