// convscope feature-vis: synthesises an input that maximises each chosen channel of a layer (or
// a class score), writes a grid of all of them, a PNG per unit, the images as NPY, and per unit
// the activation reached next to the best activation on a dataset (--data).
#include <cmath>
#include "convscope/runtime/json.hpp"
#include <iomanip>
#include <iostream>

#include "common.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::cli {
namespace {

struct FeatureVisArgs {
    std::string layer;
    std::string channels;
    std::string classes;
    std::string score = "logit", region, similarity;
    std::string param = "fourier";
    FeatureVisOptions lib;  // defaults for the numeric options
};

// Channels or classes from a slice spec, with messages that speak of channels/classes.
std::vector<int64_t> select_units(const std::string& spec, int64_t count, const std::string& flag,
                                  const std::string& what) {
    try {
        return parse_indices(spec, count);
    } catch (const UsageError&) {
        throw UsageError(flag + " '" + spec +
                         "' is not a valid selection: use one number, a slice (0:8) or a "
                         "comma list (1,5,9)");
    } catch (const Error&) {
        throw UsageError(flag + " '" + spec + "' selects no valid " + what + ": there are " +
                         std::to_string(count) + " (0.." + std::to_string(count - 1) + ")");
    }
}

nlohmann::json number_or_null(double v) {
    return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json();
}

void add_options(CLI::App& app, FeatureVisArgs& args) {
    FeatureVisArgs* a = &args;
    app.add_option("--layer", a->layer,
                   "layer whose channels to visualise (see `convscope describe`)");
    auto* ch = app.add_option("--channels", a->channels,
                              "channels of --layer, Python slice syntax (default: the first 16)");
    auto* cl = app.add_option("--class", a->classes,
                              "visualise class scores instead: a class index or slice");
    ch->excludes(cl);
    auto* sim = app.add_option("--similarity", a->similarity,
                               "synthesise the input whose output is most like this reference's (cosine "
                               "similarity): an item of --data or an image file");
    sim->excludes(ch)->excludes(cl);
    app.add_option("--score", a->score, "with --class: logit, prob (softmax) or sigmoid (multi-label)")
        ->capture_default_str();
    app.add_option("--region", a->region,
                   "with --class on a dense output [N,K,H,W]: the pixels whose mean score is maximised: all "
                   "(the default), box:x0,y0,x1,y1 or mask:FILE.png");
    app.add_option("--param", a->param, "image parameterisation: pixel or fourier")
        ->capture_default_str();
    app.add_option("--steps", a->lib.steps, "optimisation steps")->capture_default_str();
    app.add_option("--lr", a->lib.learning_rate, "Adam learning rate")->capture_default_str();
    app.add_option("--l2", a->lib.l2_decay, "L2 decay weight")->capture_default_str();
    app.add_option("--jitter", a->lib.jitter, "random shift, fraction of the image size")
        ->capture_default_str();
    app.add_option("--scale", a->lib.scale, "random scale range: 1 +- this")->capture_default_str();
    app.add_option("--rotate", a->lib.rotate_degrees, "random rotation range in degrees")
        ->capture_default_str();
    app.add_option("--blur-every", a->lib.blur_every, "blur every N steps (0 = never)")
        ->capture_default_str();
    app.add_option("--blur-sigma", a->lib.blur_sigma, "blur sigma in pixels")
        ->capture_default_str();
    app.add_option("--batch-size", a->lib.batch_size, "images optimised together")
        ->capture_default_str();
}

// The library's options: the objective and its units from the model, the preprocessing, and
// the dataset to compare with when given.
// Usage errors, before the model is read.
void check_args(const FeatureVisArgs& a) {
    (void)parse_feature_vis_param(a.param);
    if (a.lib.steps < 1) throw UsageError("--steps must be at least 1, got " + std::to_string(a.lib.steps));
    if (a.lib.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    if (a.classes.empty() && a.layer.empty() && a.similarity.empty())
        throw UsageError("give --layer L (with --channels a:b), --class c or --similarity REF");
    if (a.classes.empty() && (a.score != "logit" || !a.region.empty()))
        throw UsageError("--score and --region are for class objectives: add --class c");
    if (a.region == "pred")
        throw UsageError("--region pred needs a clean image whose prediction fixes the pixels, which feature "
                         "visualisation has not: use --region all, box:x0,y0,x1,y1 or mask:FILE.png");
    (void)parse_score(a.score);
}

FeatureVisOptions resolve_options(const FeatureVisArgs& a, const CommonOptions& o, Model& model,
                                  std::optional<Dataset>& data, std::vector<int64_t>& indices) {
    FeatureVisOptions fo = a.lib;
    fo.param = parse_feature_vis_param(a.param);
    const bool by_class = !a.classes.empty();
    if (!o.data.empty()) {
        data.emplace(open_data(o));
        fit_model_to_data(model, *data);
    }
    if (by_class) {
        fo.objective = FeatureVisOptions::Objective::Class;
        fo.units = select_units(a.classes, model.num_classes(), "--class", "class");
        fo.target.score = parse_score(a.score);
        if (!a.region.empty()) fo.target.region = parse_region(a.region);
    } else if (!a.similarity.empty()) {
        fo.objective = FeatureVisOptions::Objective::Similarity;
        fo.units = {0};
    } else {
        fo.objective = FeatureVisOptions::Objective::Channel;
        fo.layer = a.layer;
        const auto& shape = model.layer(a.layer).output_shape;
        if (shape.empty()) throw Error("layer '" + a.layer + "' has no channels to visualise");
        fo.units = select_units(a.channels.empty() ? ":16" : a.channels, shape[0], "--channels",
                                "channel of layer '" + a.layer + "'");
    }
    if (data) {
        fo.preprocess = preprocess_for(model, *data);
        if (!o.indices.empty()) indices = parse_indices(o.indices, data->size());
    } else {
        fo.preprocess = model.meta().preprocess();
        fo.preprocess.input_shape = model.input_shape();
    }
    if (!a.similarity.empty()) {
        fo.target = parse_target("similarity:" + a.similarity);
        load_reference(fo.target, model, data ? &*data : nullptr, fo.preprocess);
    }
    return fo;
}

// A PNG per unit and the grid of all; returns the units' summaries.
// "channel", "class" or "similarity".
std::string objective_name(FeatureVisOptions::Objective objective) {
    switch (objective) {
    case FeatureVisOptions::Objective::Channel: return "channel";
    case FeatureVisOptions::Objective::Class: return "class";
    case FeatureVisOptions::Objective::Similarity: return "similarity";
    }
    return "";
}

nlohmann::json write_units(OutputDir& out, const FeatureVisResult& r, const std::string& kind) {
    const bool by_class = kind == "class", similar = kind == "similarity";
    const int h = static_cast<int>(r.pixels.size(2)), w = static_cast<int>(r.pixels.size(3));
    const int factor = readable_factor(h, w, 128);
    std::vector<cv::Mat> tiles;
    std::vector<std::string> captions;
    nlohmann::json units = nlohmann::json::array();
    for (size_t i = 0; i < r.units.size(); ++i) {
        const int64_t n = static_cast<int64_t>(i);
        const cv::Mat picture =
            r.display.defined() ? image_from_hwc_uint8(r.display[n])
                                : image_from_chw_float(r.pixels[n].mean(0), Range{0.f, 1.f});
        const cv::Mat big = upscale_nearest(picture, factor);
        const std::string unit = std::to_string(r.units[i]);
        const std::string name = similar ? "similarity" : kind + "_" + unit;
        write_png(out.file("units/" + name + ".png",
                           similar ? "image whose output is most like the reference's" : "image maximising " + kind + " " + unit),
                  big);
        tiles.push_back(big);
        captions.push_back(similar ? "similarity" : (by_class ? "class " : "ch ") + unit);
        nlohmann::json u = {{"unit", r.units[i]},
                            {"activation", r.activation[n].item<double>()},
                            {"initial_activation", r.initial_activation[n].item<double>()},
                            {"image", "units/" + name + ".png"}};
        if (r.dataset_best.defined()) {
            u["dataset_best"] = r.dataset_best[n].item<double>();
            u["dataset_best_index"] = r.dataset_best_index[n].item<int64_t>();
            u["ratio"] = number_or_null(r.ratio[n].item<double>());
        }
        units.push_back(u);
    }
    GridOptions grid;
    grid.tile_captions = captions;
    write_png(out.file("grid.png", "all optimised images, one per unit"),
              labelled_grid(tiles, grid));

return units;
}

void print_summary(const nlohmann::json& summary, const FeatureVisResult& r, const std::string& kind,
                   const std::string& dir) {
    const bool by_class = kind == "class";
    const nlohmann::json& units = summary["units"];
    std::cout << "feature visualisation of " << r.units.size() << " unit(s)"
              << (by_class ? std::string(" (classes)") : kind == "similarity" ? " (similarity)" : " of " + r.layer)
              << " -> " << dir << "\n";
    for (const auto& u : units) {
        std::cout << "  " << (kind == "similarity" ? "similarity" : (by_class ? "class " : "channel ") +
                                                                         std::to_string(u["unit"].get<int64_t>()))
                  << ": activation "
                  << std::setprecision(4) << u["activation"].get<double>();
        if (u.contains("dataset_best")) {
            std::cout << ", dataset best " << u["dataset_best"].get<double>();
            if (!u["ratio"].is_null()) std::cout << ", ratio " << u["ratio"].get<double>();
        }
        std::cout << "\n";
    }
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<FeatureVisArgs>();
    add_model_options(app, *o);
    add_options(app, *a);
    app.add_option("--data", o->data, "data on which to find each unit's best activation (optional)");
    app.add_option("--indices", o->indices, "items of --data to search (default: all)");
    add_out_option(app, *o, "feature-vis");
    add_json_option(app, *o);

    return [o, a]() {
        check_args(*a);
        Model model = open_model(*o);
        std::optional<Dataset> data;
        std::vector<int64_t> indices;  // of data to search; empty = all
        const FeatureVisOptions fo = resolve_options(*a, *o, model, data, indices);
        const std::string kind = objective_name(fo.objective);
        const RunContext ctx = run_context(*o, "feature-vis");
        const FeatureVisResult r = data ? feature_vis(model, *data, indices, fo, ctx) : feature_vis(model, fo, ctx);

        const nlohmann::json options = {{"layer", r.layer},
                                        {"units", r.units},
                                        {"objective", kind},
                                        {"score", kind == "class" ? a->score : ""},
                                        {"region", a->region},
                                        {"similarity", a->similarity},
                                        {"param", feature_vis_param_name(fo.param)},
                                        {"steps", fo.steps},
                                        {"lr", fo.learning_rate},
                                        {"l2", fo.l2_decay},
                                        {"jitter", fo.jitter},
                                        {"scale", fo.scale},
                                        {"rotate", fo.rotate_degrees},
                                        {"blur_every", fo.blur_every},
                                        {"blur_sigma", fo.blur_sigma},
                                        {"batch_size", fo.batch_size},
                                        {"seed", o->seed},
                                        {"data", data ? data->spec() : ""}};
        OutputDir out = open_out(*o, options, &model);
        write_npy(out.file("images.npy", "optimised model inputs [U,C,H,W] float32 (normalised)"),
                  r.images);
        write_npy(
            out.file("pixels.npy", "the same images in pixel space [U,C,H,W] float32 in [0,1]"),
            r.pixels);

        const nlohmann::json units = write_units(out, r, kind);
        nlohmann::json summary = {
            {"model", model.path()}, {"objective", kind},
            {"layer", r.layer},      {"param", feature_vis_param_name(fo.param)},
            {"steps", fo.steps},     {"seed", o->seed},
            {"units", units}};
        if (data) summary["data"] = data->spec();
        if (kind == "class") summary["score"] = a->score;
        if (!a->region.empty()) summary["region"] = a->region;
        if (kind == "similarity") summary["similarity"] = a->similarity;
        write_json(
            out.file("feature_vis.json",
                     "per unit: activation reached, starting activation, dataset best and ratio"),
            summary);
        out.write_manifest();

        if (o->json) std::cout << json_text(summary, 2) << "\n";
        else print_summary(summary, r, kind, out.dir());
        return 0;
    };
}

RegisterCommand reg(
    {"feature-vis", "synthesise inputs that maximise channels or classes (activation maximisation)",
     setup, 70});

}  // namespace
}  // namespace convscope::cli
