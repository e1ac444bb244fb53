// Reading TorchScript files: checks that name what a wrong file is, the metadata, the hash.
#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/script.h>

#include <filesystem>
#include <fstream>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/model_impl.hpp"

namespace convscope {

namespace {

// Checks the file before handing it to torch::jit::load, so that common mistakes get a message
// that says what the file is and what to do, instead of a deserializer trace.
void precheck_model_file(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw Error("model file '" + path + "' does not exist: check the path given to --model");
    if (fs::is_directory(path, ec))
        throw Error("model path '" + path + "' is a folder: give the TorchScript .pt file itself");
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error("cannot read model file '" + path + "': " + ec.message());
    if (size == 0)
        throw Error("model file '" + path +
                    "' is empty (0 bytes): export the model again with torch.jit.save");
    std::ifstream in(path, std::ios::binary);
    char magic[8] = {0};
    in.read(magic, sizeof magic);
    const std::string head(magic, static_cast<size_t>(in.gcount()));
    if (head.rfind("\x89PNG", 0) == 0 || head.rfind("\xff\xd8\xff", 0) == 0)
        throw Error("model file '" + path +
                    "' is an image, not a TorchScript model: pass the image with --data and the "
                    "model (exported with torch.jit.script or torch.jit.trace) with --model");
    if (head.rfind("PK\x03\x04", 0) != 0) {
        if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80)
            throw Error("model file '" + path +
                        "' is a legacy pickled PyTorch file, not TorchScript: export the model "
                        "with torch.jit.script(model).save('model.pt')");
        throw Error("model file '" + path +
                    "' is not a TorchScript archive (it is not a zip file): export the model with "
                    "torch.jit.script(model).save('model.pt') or torch.jit.trace");
    }
    std::vector<std::string> records;
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        records = reader.getAllRecords();
    } catch (const std::exception&) {
        throw Error("model file '" + path +
                    "' is truncated or corrupt (its zip archive cannot be read): copy or export "
                    "it again");
    }
    bool has_code = false, has_data = false;
    for (const auto& r : records) {
        if (r.rfind("code/", 0) == 0) has_code = true;
        if (r == "data.pkl") has_data = true;
    }
    if (!has_code && has_data)
        throw Error("model file '" + path +
                    "' is a PyTorch checkpoint (torch.save of a state_dict or module), not "
                    "TorchScript: load it in Python and export with "
                    "torch.jit.script(model).save('model.pt')");
    if (!has_code)
        throw Error("model file '" + path +
                    "' is a zip archive without TorchScript code: export the model with "
                    "torch.jit.script(model).save('model.pt')");
}

ModelMeta parse_meta(const std::string& text, const std::string& path) {
    if (text.empty()) return ModelMeta{};
    try {
        ModelMeta meta = model_meta_from_json(text);
        meta.source = "metadata in the model file";
        if (!meta.class_names.empty()) meta.classes_source = "metadata in the model file";
        return meta;
    } catch (const Error& e) {
        throw Error("model file '" + path + "': its convscope.json metadata " + e.what() +
                    "; write it again with `convscope annotate --model " + path + " ... --save M.pt`");
    }
}

}  // namespace

Model Model::load(const std::string& path, bool read_metadata) {
    precheck_model_file(path);
    Model m;
    jit::ExtraFilesMap extra{{"convscope.json", ""}};
    try {
        m.impl_->module = jit::load(path, c10::kCPU, extra);
    } catch (const c10::Error& e) {
        std::string what = e.what_without_backtrace();
        what = what.substr(0, what.find('\n'));
        throw Error("model file '" + path + "' cannot be loaded as TorchScript (" + what +
                    "): the file is corrupt or was written by an incompatible PyTorch; export it "
                    "again with torch.jit.save");
    } catch (const std::exception& e) {
        throw Error("model file '" + path + "' cannot be loaded (" + std::string(e.what()) +
                    "): export it again with torch.jit.save");
    }
    m.impl_->path = path;
    if (read_metadata) m.impl_->meta = parse_meta(extra["convscope.json"], path);
    m.impl_->hash = sha256_file(path);
    m.impl_->analyse();
    return m;
}

Model Model::from_module(const jit::Module& module, ModelMeta meta, std::string path) {
    Model m;
    m.impl_->module = module.clone();
    m.impl_->meta = std::move(meta);
    m.impl_->path = std::move(path);
    m.impl_->analyse();
    return m;
}

Model Model::copy() const {
    Model m;
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        m.impl_->module = impl_->module.clone();  // not in place: attributes are deep copies
        m.impl_->meta = impl_->meta;
        m.impl_->path = impl_->path;
        m.impl_->hash = impl_->hash;
        m.impl_->input_shape = impl_->input_shape;
        m.impl_->grid = impl_->grid;
        m.impl_->output_spec = impl_->output_spec;
        m.impl_->output_shape = impl_->output_shape;
        m.impl_->output_for_shape = impl_->output_for_shape;
    }
    {
        std::lock_guard<std::mutex> lock(impl_->inference.mutex);
        m.impl_->inference.enabled = impl_->inference.enabled;
    }
    {
        std::lock_guard<std::mutex> lock(impl_->channels_last.mutex);
        m.impl_->channels_last.enabled = impl_->channels_last.enabled;
    }
    m.impl_->analyse();
    return m;
}

}  // namespace convscope
