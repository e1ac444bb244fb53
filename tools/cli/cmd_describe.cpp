// convscope describe: the model's layers with types, output shapes, parameter counts and
// receptive fields; with --data, the accuracy on labelled data.
#include <iomanip>
#include <iostream>
#include <sstream>

#include "common.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"

namespace convscope::cli {
namespace {

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
    return out.empty() ? "-" : out;
}

std::string rf_str(const ReceptiveField& rf) {
    switch (rf.kind) {
    case ReceptiveField::Kind::Global: return "global";
    case ReceptiveField::Kind::Unknown: return "unknown";
    default: break;
    }
    std::ostringstream s;
    s << rf.size_y << "x" << rf.size_x << " /" << rf.stride_y;
    if (rf.stride_x != rf.stride_y) s << "x" << rf.stride_x;
    s << " p" << rf.pad_y;
    if (rf.pad_x != rf.pad_y) s << "x" << rf.pad_x;
    return s.str();
}


RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    add_model_options(app, *o);
    add_json_option(app, *o);
    app.add_option("--data", o->data, "labelled data to measure the accuracy on (e.g. fashion-mnist:test)");
    app.add_option("--labels", o->labels, "labels .npy for .npy data");
    return [o]() {
        Model model = open_model(*o);
        std::optional<Dataset> data;
        if (!o->data.empty()) {
            data.emplace(open_data(*o));
            fit_model_to_data(model, *data);
        } else if (!model.has_input_shape()) {
            // Say what is needed rather than guess a size.
            (void)model.input_shape();
        }
        validate_model_meta(model);
        const auto& layers = model.layers();
        std::optional<double> accuracy;
        if (data && data->has_labels() && data->class_match().comparable)
            accuracy = evaluate_accuracy(model, *data, {}, cli_progress("evaluating"));
        const ModelMeta& meta = model.meta();
        const Preprocess pre = data ? preprocess_for(model, *data) : meta.preprocess();
        const std::vector<OutputInfo> outputs = model.outputs();
        int64_t total_params = 0;
        for (const auto& p : model.module().parameters()) total_params += p.numel();
        // Which forward the plain forward passes run (one pass of a zero image builds and checks
        // the inference copy).
        {
            std::vector<int64_t> one{1};
            for (const int64_t d : model.input_shape()) one.push_back(d);
            (void)model.forward(at::zeros(one));
        }
        const std::string forward_note = model.inference_note();

        if (o->json) {
            nlohmann::json j;
            j["model"] = model.path();
            j["sha256"] = model.file_hash();
            j["input_shape"] = model.input_shape();
            j["num_classes"] = model.num_classes();
            auto& outs = j["outputs"] = nlohmann::json::array();
            for (const auto& out : outputs)
                outs.push_back({{"name", out.name}, {"shape", out.shape}, {"chosen", out.chosen}});
            j["parameters"] = total_params;
            j["forward"] = forward_note;
            if (!meta.class_names.empty()) j["class_names"] = meta.class_names;
            j["metadata"] = model_meta_to_json(meta);
            j["metadata_source"] = meta.source.empty() ? nlohmann::json(nullptr) : nlohmann::json(meta.source);
            j["classes_source"] = meta.classes_source.empty() ? nlohmann::json(nullptr) : nlohmann::json(meta.classes_source);
            j["preprocess"] = to_json(pre);
            if (accuracy) {
                j["accuracy"] = *accuracy;
                j["data"] = data->spec();
            } else if (data && data->has_labels()) {
                j["accuracy"] = nullptr;
                j["no_accuracy"] = data->class_match().why;
            }
            auto& arr = j["layers"] = nlohmann::json::array();
            for (const auto& l : layers)
                arr.push_back(to_json(l));
            std::cout << json_text(j, 2) << "\n";
            return 0;
        }
        std::cout << "model " << model.path() << "\n"
                  << "input " << shape_str(model.input_shape()) << ", " << model.num_classes()
                  << " classes, " << total_params << " parameters\n"
                  << "preprocessing: " << pre.describe() << "\n"
                  << "metadata: " << (meta.source.empty() ? "none (the file has no convscope.json)" : meta.source) << "\n"
                  << "class names: "
                  << (meta.class_names.empty() ? "none (give --classes FILE)"
                                               : std::to_string(meta.class_names.size()) + " (" + meta.classes_source + ")")
                  << "\n"
                  << "forward passes: " << forward_note << "\n";
        if (outputs.size() > 1 || (outputs.size() == 1 && outputs[0].name != "output")) {
            std::cout << "outputs:";
            for (const auto& out : outputs)
                std::cout << " " << out.name << " " << shape_str(out.shape) << (out.chosen ? " (explained)" : "");
            std::cout << " (--output NAME chooses)\n";
        }
        std::cout << "\n";
        size_t width = 5, type_width = 14;
        for (const auto& l : layers) width = std::max(width, l.name.size() + 2 * l.depth);
        for (const auto& l : layers) type_width = std::max(type_width, l.type.size());
        size_t layout_width = 20;
        for (const auto& l : layers) layout_width = std::max(layout_width, layout_summary(l.layout).size());
        std::cout << std::left << std::setw(static_cast<int>(width + 2)) << "layer" << std::setw(static_cast<int>(type_width + 2))
                  << "type" << std::setw(16) << "output" << std::setw(static_cast<int>(layout_width + 2)) << "layout" << std::setw(11) << "params"
                  << "receptive field (size /stride pad)\n";
        for (const auto& l : layers) {
            std::cout << std::left << std::setw(static_cast<int>(width + 2))
                      << (std::string(2 * l.depth, ' ') + l.name) << std::setw(static_cast<int>(type_width + 2)) << l.type
                      << std::setw(16) << shape_str(l.output_shape) << std::setw(static_cast<int>(layout_width + 2)) << layout_summary(l.layout)
                      << std::setw(11) << l.num_params
                      << rf_str(l.rf) << "\n";
        }
        const auto attention = model.attention_layers();
        if (!attention.empty())
            std::cout << "\nattention: " << attention.size()
                      << " layers of attention probabilities (`convscope attention` shows them)\n";
        for (const auto& note : model.attention_notes()) std::cout << "no attention probabilities for " << note << "\n";
        if (accuracy)
            std::cout << "\naccuracy on " << data->spec() << ": " << std::fixed << std::setprecision(2)
                      << 100.0 * *accuracy << "% (" << data->size() << " items)\n";
        else if (data && data->has_labels())
            std::cout << "\nno accuracy: " << data->class_match().why << "\n";
        return 0;
    };
}

RegisterCommand reg({"describe", "list the model's layers: types, output shapes, parameters, receptive fields", setup, 10});

}  // namespace
}  // namespace convscope::cli
