// convscope annotate: writes a model's preprocessing, input shape and class names into the model
// file (the convscope.json extra file), so that every later command, the report and the explorer
// pick them up. Parse -> metadata -> save; the library does the work (preprocess.hpp).
#include <iostream>
#include "convscope/runtime/json.hpp"

#include "common.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope::cli {
namespace {

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto save = std::make_shared<std::string>();
    auto dataset = std::make_shared<std::string>();
    add_model_options(app, *o);
    add_json_option(app, *o);
    app.add_option("--save", *save, "the annotated model file to write (may equal --model)")->required();
    app.add_option("--dataset", *dataset, "the data the model was trained on, for people (e.g. imagenet)");
    o->replace_bad_metadata = true;
    return [o, save, dataset]() {
        Model model = open_model(*o);
        ModelMeta meta = model.meta();
        if (model.has_input_shape()) meta.input_shape = model.input_shape();
        if (!dataset->empty()) meta.dataset = *dataset;
        model.set_meta(meta);
        if (model.has_input_shape()) {
            validate_model_meta(model);
        } else {
            std::cerr << "warning: the input shape is unknown, so the metadata is not checked against "
                         "the model: pass --input-shape C,H,W (or --crop) to record it\n";
        }
        save_model_with_meta(model.path(), meta, *save);
        const nlohmann::json j = {{"model", *save}, {"metadata", model_meta_to_json(meta)}};
        if (o->json) {
            std::cout << json_text(j, 2) << "\n";
        } else {
            std::cout << "wrote " << *save << " with metadata " << json_text(model_meta_to_json(meta)) << "\n";
        }
        return 0;
    };
}

RegisterCommand reg({"annotate",
                     "write the model's preprocessing, input shape and class names into the model file",
                     setup, 15});

}  // namespace
}  // namespace convscope::cli
