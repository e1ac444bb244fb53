#include "common.hpp"
#include "convscope/runtime/cluster.hpp"

#include <filesystem>

#include "convscope/runtime/finite.hpp"

#include <ATen/Parallel.h>

#include <cmath>
#include <csignal>
#include <iostream>
#include <optional>
#include <thread>

#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {

std::vector<CommandSpec>& command_registry() {
    static std::vector<CommandSpec> registry;
    return registry;
}

RegisterCommand::RegisterCommand(CommandSpec spec) { command_registry().push_back(std::move(spec)); }

std::string& command_line() {
    static std::string line;
    return line;
}

void add_model_options(CLI::App& app, CommonOptions& o) {
    app.add_option("--model", o.model,
                   "TorchScript model file, or vit for the built-in vision transformer (default: the built-in "
                   "Fashion-MNIST CNN)");
    app.add_option("--input-shape", o.input_shape, "input shape C,H,W for models that do not record it");
    app.add_option("--grid", o.grid,
                   "patch grid HxW of token outputs [T,D] where the graph does not give it (the last h*w tokens; "
                   "the ones before are extra tokens such as a class token)");
    app.add_option("--output", o.output,
                   "the model output to explain when forward returns a tuple, list or dict: its key or position "
                   "(default: the dict entry 'out', else the first tensor; `convscope describe` lists them)");
    app.add_option("--threads", o.threads, "intra-op threads (default: all cores)")->check(CLI::NonNegativeNumber);
    app.add_option("--seed", o.seed, "random seed");
    app.add_option("--max-image-pixels", o.max_image_pixels,
                   "largest image read (width x height, checked from its header before decoding)")
        ->capture_default_str();
    app.add_flag("--allow-nonfinite", o.allow_nonfinite,
                 "accept inputs holding NaN or Inf (to debug NaNs): they propagate, pictures show them in magenta");
    add_preprocess_options(app, o);
}

void add_preprocess_options(CLI::App& app, CommonOptions& o) {
    const char* group = "Preprocessing (default: the model's metadata, else none)";
    app.add_option("--preprocess", o.preprocess,
                   "model (its metadata), imagenet (resize 256, crop 224, ImageNet mean/std) or none")
        ->group(group);
    app.add_option("--mean", o.mean, "per-channel mean R,G,B (or one value) subtracted after scaling")->group(group);
    app.add_option("--std", o.std, "per-channel std R,G,B (or one value) divided by")->group(group);
    app.add_option("--resize", o.resize, "resize the shorter side to N pixels before the centre crop (0: fit)")
        ->group(group);
    app.add_option("--crop", o.crop, "centre crop HxW (or N): the model's input size")->group(group);
    app.add_option("--pixel-range", o.pixel_range, "0-1 (default) or 0-255: the model's pixel values")->group(group);
    app.add_flag("--bgr", o.bgr, "the model takes channels in B,G,R order")->group(group);
    app.add_option("--classes", o.classes,
                   "class names: one per line, a JSON list, or ImageNet's index text/JSON")
        ->group(group);
}

namespace {
std::vector<double> parse_values(const std::string& spec, const std::string& what) {
    std::vector<double> out;
    if (spec.empty()) return out;
    for (const auto& part : detail::split(spec, ',')) {
        try {
            size_t used = 0;
            const double v = std::stod(part, &used);
            if (used != part.size() || !std::isfinite(v)) throw std::invalid_argument(part);
            out.push_back(v);
        } catch (const std::exception&) {
            throw UsageError(what + " takes numbers separated by commas (like 0.485,0.456,0.406), got '" +
                             spec + "'");
        }
    }
    return out;
}
}  // namespace

PreprocessOptions preprocess_options(const CommonOptions& o) {
    PreprocessOptions p;
    if (!o.preprocess.empty()) p.preset = parse_preprocess_preset(o.preprocess);
    p.mean = parse_values(o.mean, "--mean");
    p.std = parse_values(o.std, "--std");
    if (o.resize < -1) throw UsageError("--resize must be a positive number of pixels (0: fit)");
    p.resize = o.resize;
    if (!o.crop.empty()) {
        const auto x = o.crop.find_first_of("xX");
        int64_t h = 0, w = 0;
        const bool ok = x == std::string::npos
                            ? detail::parse_int64(o.crop, h) && (w = h) > 0
                            : detail::parse_int64(o.crop.substr(0, x), h) &&
                                  detail::parse_int64(o.crop.substr(x + 1), w);
        if (!ok || h <= 0 || w <= 0)
            throw UsageError("--crop takes HxW (like 224x224) or one size N, got '" + o.crop + "'");
        p.crop = {h, w};
    }
    if (!o.pixel_range.empty()) {
        if (o.pixel_range == "0-1" || o.pixel_range == "1") p.pixel_range = 1.0;
        else if (o.pixel_range == "0-255" || o.pixel_range == "255") p.pixel_range = 255.0;
        else throw UsageError("--pixel-range takes 0-1 or 0-255, got '" + o.pixel_range + "'");
    }
    p.bgr = o.bgr;
    p.classes_file = o.classes;
    return p;
}

void add_data_options(CLI::App& app, CommonOptions& o) {
    app.add_option("--data", o.data,
                   "data: fashion-mnist[:train|:test|:all], an IDX file, an image folder, a .npy array or "
                   "one image (default: fashion-mnist:test)");
    app.add_option("--labels", o.labels, "labels .npy for .npy data");
    auto* idx = app.add_option("--indices", o.indices, "items to use, Python slice syntax (0:50, ::10, 3)");
    auto* one = app.add_option("--index", o.index, "one item to use");
    idx->excludes(one);
    app.add_option("--image", o.image, "one image file (instead of --data)");
}

void add_out_option(CLI::App& app, CommonOptions& o, const std::string& default_dir) {
    o.out = default_dir;
    app.add_option("--out", o.out, "output folder")->capture_default_str();
}

void add_json_option(CLI::App& app, CommonOptions& o) {
    app.add_flag("--json", o.json, "print the summary as JSON on stdout");
}

void apply_threads(const CommonOptions& o) {
    const int n = o.threads > 0 ? o.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(n);
}

namespace {
volatile std::sig_atomic_t g_signal = 0;
extern "C" void on_interrupt(int sig) {
    if (g_signal == 0) g_signal = sig;
}
}  // namespace

void install_interrupt_handlers() {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;  // the second signal takes the default action: the process ends
    sigaction(SIGINT, &sa, nullptr);
    sigaction(SIGTERM, &sa, nullptr);
}

int interrupt_signal() { return g_signal; }

ProgressFn cli_progress(const std::string& label, double quiet_seconds) {
    // With several ranks only rank 0 draws its bar (its share stands for the others').
    if (cluster::rank() != 0) return [](double) { return interrupt_signal() == 0; };
    ProgressFn bar = stderr_progress(label, quiet_seconds);
    return [bar](double f) { return interrupt_signal() == 0 && bar(f); };
}

RunContext run_context(const CommonOptions& o, const std::string& label) {
    RunContext ctx;
    ctx.progress = cli_progress(label);
    ctx.threads = o.threads;
    ctx.seed = o.seed;
    return ctx;
}

std::vector<int64_t> parse_shape(const std::string& spec, const std::string& what) {
    std::vector<int64_t> out;
    for (const auto& part : detail::split(spec, ',')) {
        int64_t v = 0;
        if (!detail::parse_int64(part, v) || v <= 0)
            throw UsageError(what + " must be positive integers separated by commas (like 1,28,28), got '" +
                             spec + "'");
        out.push_back(v);
    }
    return out;
}

namespace {
Model load_model_file(const CommonOptions& o) {
    if (!o.replace_bad_metadata) return Model::load(o.model);
    try {
        return Model::load(o.model);
    } catch (const Error& e) {
        Model m = Model::load(o.model, /*read_metadata=*/false);  // other errors stand
        std::cerr << "warning: " << e.what() << "; it is replaced\n";
        return m;
    }
}
}  // namespace

Model open_model(const CommonOptions& o) {
    apply_threads(o);
    set_max_image_pixels(o.max_image_pixels);
    set_allow_nonfinite(o.allow_nonfinite);
    // "vit" names the built-in vision transformer (unless a file of that name exists).
    const bool builtin_vit = o.model == "vit" && !std::filesystem::exists(o.model);
    Model model = o.model.empty() ? load_default_model(cli_progress("training the built-in model"))
                  : builtin_vit   ? load_vit_model(cli_progress("training the built-in ViT"))
                                  : load_model_file(o);
    if (!o.output.empty()) model.select_output(o.output);
    if (!o.input_shape.empty()) {
        auto shape = parse_shape(o.input_shape, "--input-shape");
        if (shape.size() != 3) throw UsageError("--input-shape takes three numbers C,H,W, got '" + o.input_shape + "'");
        model.set_input_shape(shape);
    }
    if (!o.grid.empty()) {
        const auto grid = parse_grid(o.grid);
        model.set_grid(grid.first, grid.second);
    }
    const PreprocessOptions pre = preprocess_options(o);
    if (pre.any()) {
        std::vector<std::string> warnings;
        model.set_meta(apply_preprocess_options(model.meta(), pre, &warnings));
        for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
    }
    return model;
}

Dataset open_data(const CommonOptions& o) {
    if (!o.image.empty() && !o.data.empty())
        throw UsageError("give either --data or --image, not both");
    DatasetOptions opts;
    opts.labels_path = o.labels;
    const std::string spec = !o.image.empty() ? o.image : (o.data.empty() ? "fashion-mnist:test" : o.data);
    return Dataset::open(spec, opts);
}

namespace {
std::optional<Preprocess>& announced() {
    static std::optional<Preprocess> p;
    return p;
}
}  // namespace

const Preprocess* announced_preprocess() { return announced() ? &*announced() : nullptr; }

void fit_model_to_data(Model& model, Dataset& data) {
    if (!model.has_input_shape()) model.set_input_shape(data.item_shape());
    validate_model_meta(model);
    const Dataset::ClassMatch match = data.match_classes(model.meta().class_names, model.num_classes());
    if (!match.comparable && data.has_labels())
        std::cerr << "note: no accuracy: " << match.why << "\n";
    else if (!match.note.empty() && data.has_labels())
        std::cerr << "note: " << match.note << "\n";
    const Preprocess pre = preprocess_for(model, data);
    if (!announced() && cluster::rank() == 0) std::cerr << "preprocessing: " << pre.describe() << "\n";
    announced() = pre;
    // A few items through the first layers: are they what the model was trained on?
    std::vector<int64_t> sample;
    for (int64_t i = 0; i < std::min<int64_t>(8, data.size()); ++i) sample.push_back(i);
    for (const auto& w : input_warnings(model, data.batch(sample, pre), pre))
        std::cerr << "warning: " << w << "\n";
}

std::vector<int64_t> selected_indices(const CommonOptions& o, const Dataset& data,
                                      const std::string& default_spec) {
    if (!o.index.empty()) {
        if (o.index.find_first_of(":,") != std::string::npos)
            throw UsageError("--index takes one item number, got '" + o.index + "': use --indices for ranges");
        return parse_indices(o.index, data.size());
    }
    if (!o.indices.empty()) return parse_indices(o.indices, data.size());
    return parse_indices(default_spec, data.size());
}

SelectedInputs open_selected_inputs(const CommonOptions& o) {
    Model model = open_model(o);
    Dataset data = open_data(o);
    fit_model_to_data(model, data);
    std::vector<int64_t> indices = selected_indices(o, data, ":1");
    const Preprocess pre = preprocess_for(model, data);
    at::Tensor images = data.batch(indices, pre);
    std::vector<int64_t> labels;
    if (data.has_labels())
        for (int64_t i : indices) labels.push_back(data.label(i));
    return {std::move(model), std::move(data), std::move(indices), pre, std::move(images), std::move(labels)};
}

void add_target_options(CLI::App& app, TargetArgs& a, const std::string& what) {
    app.add_option("--target", a.target,
                   what + ": pred, label, a class number, or similarity:INDEX|IMAGE (cosine similarity of the "
                   "output with that item's or image's)")
        ->capture_default_str();
    app.add_option("--score", a.score, "a class's score: logit, prob (softmax) or sigmoid (multi-label)")
        ->capture_default_str();
    app.add_option("--region", a.region,
                   "dense outputs [N,K,H,W]: the pixels scored: pred (predicted as the class, the default), all, "
                   "box:x0,y0,x1,y1 or mask:FILE.png");
}

Target parse_target_args(const TargetArgs& a) {
    Target t = parse_target(a.target);
    t.score = parse_score(a.score);
    if (!a.region.empty()) t.region = parse_region(a.region);
    if (t.kind == Target::Kind::Similarity && a.score != "logit")
        throw UsageError("--score is for class targets: a similarity target is the cosine similarity itself");
    return t;
}

void load_reference(Target& t, const Model& model, const Dataset& data, const Preprocess& pre) {
    load_reference(t, model, &data, pre);
}

void load_reference(Target& t, const Model& model, const Dataset* data_or_null, const Preprocess& pre) {
    if (t.kind != Target::Kind::Similarity) return;
    int64_t index = 0;
    if (detail::parse_int64(t.reference, index)) {
        if (!data_or_null)
            throw UsageError("the similarity reference " + t.reference + " is an item of --data: give --data, or an "
                             "image file as the reference");
        const Dataset& data = *data_or_null;
        if (index < 0 || index >= data.size())
            throw Error("the similarity reference " + t.reference + " is not an item of " + data.spec() + ", which has " +
                        std::to_string(data.size()) + " items (0.." + std::to_string(data.size() - 1) +
                        "): give an index in range or an image file");
        t.reference_input = data.batch({index}, pre);
        return;
    }
    Dataset ref = Dataset::open(t.reference);
    t.reference_input = ref.batch({0}, preprocess_for(model, ref));
}

void write_segmentation_pictures(OutputDir& out, const Model& model, const Target& target, const at::Tensor& images,
                                 const at::Tensor& display, const std::vector<int64_t>& indices) {
    if (target.kind == Target::Kind::Similarity) return;
    const at::Tensor outputs = model.forward(images);
    if (outputs.dim() != 4) return;
    const TargetScorer scorer(model, target, outputs);
    const int factor = readable_factor(static_cast<int>(images.size(2)), static_cast<int>(images.size(3)), 160);
    for (size_t i = 0; i < indices.size(); ++i) {
        const int64_t n = static_cast<int64_t>(i);
        const cv::Mat base = upscale_nearest(image_from_hwc_uint8(display[n]), factor);
        const cv::Mat seg = segmentation_overlay(base, outputs[n].argmax(0), scorer.region_weights()[n] > 0);
        const std::string stem = std::to_string(indices[i]);
        write_png(out.file("segmentation/" + stem + ".png",
                           "item " + stem + " and its predicted classes, the explained region (class " +
                               std::to_string(scorer.classes()[i]) + ") outlined in white"),
                  side_by_side({base, seg}));
    }
}

void write_similarity_pictures(OutputDir& out, const Target& target, const Preprocess& pre, const at::Tensor& images,
                               const at::Tensor& maps, const std::vector<int64_t>& indices,
                               const std::function<at::Tensor(const at::Tensor&)>& reference_map,
                               const MapPainter& paint) {
    if (target.kind != Target::Kind::Similarity) return;
    const at::Tensor display = pre.to_display(images), ref_display = pre.to_display(target.reference_input);
    for (size_t i = 0; i < indices.size(); ++i) {
        const int64_t n = static_cast<int64_t>(i);
        const at::Tensor ref_map = reference_map(images.slice(0, n, n + 1));
        const std::string stem = std::to_string(indices[i]);
        write_png(out.file("similarity/" + stem + ".png",
                           "item " + stem + " and the reference " + target.reference +
                               ", each with its map of what makes it similar to the other"),
                  side_by_side({paint(display[n], maps[n]), paint(ref_display[0], ref_map)}, 8));
    }
}

void check_ranks_agree(const Model& model, const Dataset& data, const std::vector<int64_t>& indices) {
    cluster::check_same("the model (its file's hash)", model.file_hash());
    cluster::check_same("the data (its hash)", data.hash());
    cluster::check_same("the items (--indices)", nlohmann::json(indices).dump());
    cluster::check_same("the options", command_line());
}

OutputDir open_out(const CommonOptions& o, const nlohmann::json& options, const Model* model) {
    OutputDir dir(o.out);
    dir.set_command(command_line(), options, model ? model->path() : "", model ? model->file_hash() : "");
    if (const Preprocess* pre = announced_preprocess()) {
        dir.set_preprocess(to_json(*pre));
    } else if (model && model->has_input_shape()) {
        dir.set_preprocess(to_json(model->meta().preprocess()));
    }
    return dir;
}

std::vector<int64_t> parse_range(const std::string& spec, int64_t n, const std::string& what) {
    try {
        return parse_indices(spec, n);
    } catch (const UsageError&) {
        throw;
    } catch (const Error& e) {
        throw UsageError(what + ": " + e.what());
    }
}

}  // namespace convscope::cli
