// A model's convscope.json metadata (preprocessing, input shape, class names).
#include <cstdint>
#include <string>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"

#include <nlohmann/json.hpp>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const convscope::ModelMeta meta = convscope::model_meta_from_json(std::string(reinterpret_cast<const char*>(data), size));
        (void)convscope::model_meta_to_json(meta);
        (void)meta.preprocess();
    } catch (const convscope::Error&) {
    }
    return 0;
}
