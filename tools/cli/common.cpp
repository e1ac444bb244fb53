#include "common.hpp"

#include <ATen/Parallel.h>

#include <thread>

#include "convscope/default_model.hpp"
#include "convscope/error.hpp"
#include "detail/strings.hpp"

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
    app.add_option("--model", o.model, "TorchScript model file (default: the built-in Fashion-MNIST model)");
    app.add_option("--input-shape", o.input_shape, "input shape C,H,W for models that do not record it");
    app.add_option("--threads", o.threads, "intra-op threads (default: all cores)")->check(CLI::NonNegativeNumber);
    app.add_option("--seed", o.seed, "random seed");
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

Model open_model(const CommonOptions& o) {
    apply_threads(o);
    Model model = o.model.empty() ? load_default_model(stderr_progress("training the built-in model"))
                                  : Model::load(o.model);
    if (!o.input_shape.empty()) {
        auto shape = parse_shape(o.input_shape, "--input-shape");
        if (shape.size() != 3) throw UsageError("--input-shape takes three numbers C,H,W, got '" + o.input_shape + "'");
        model.set_input_shape(shape);
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

void fit_model_to_data(Model& model, const Dataset& data) {
    if (model.has_input_shape()) return;
    model.set_input_shape(data.item_shape());
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

Preprocess preprocess_for(const Model& model, const Dataset& data) {
    return data.preprocess_for(model.input_shape(), model.meta().mean, model.meta().std);
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

OutputDir open_out(const CommonOptions& o, const nlohmann::json& options, const Model* model) {
    OutputDir dir(o.out);
    dir.set_command(command_line(), options, model ? model->path() : "", model ? model->file_hash() : "");
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
