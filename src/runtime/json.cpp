#include "convscope/runtime/json.hpp"

#include <nlohmann/json.hpp>

#include "convscope/runtime/model.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace convscope {

nlohmann::json to_json(const Box& b) { return {b.y0, b.x0, b.y1, b.x1}; }

const char* receptive_field_kind_name(const ReceptiveField& rf) {
    switch (rf.kind) {
    case ReceptiveField::Kind::Exact: return "exact";
    case ReceptiveField::Kind::Global: return "global";
    case ReceptiveField::Kind::Unknown: return "unknown";
    }
    return "unknown";
}

nlohmann::json to_json(const ReceptiveField& rf) {
    nlohmann::json j = {{"kind", receptive_field_kind_name(rf)}};
    if (rf.kind == ReceptiveField::Kind::Exact) {
        j["size"] = {rf.size_y, rf.size_x};
        j["stride"] = {rf.stride_y, rf.stride_x};
        j["padding"] = {rf.pad_y, rf.pad_x};
    }
    return j;
}

nlohmann::json to_json(const LayerInfo& l) {
    return {{"name", l.name},          {"type", l.type},       {"output_shape", l.output_shape},
            {"parameters", l.num_params}, {"depth", l.depth},   {"is_conv", l.is_conv},
            {"is_linear", l.is_linear}, {"receptive_field", to_json(l.rf)}};
}

std::string class_name(const std::vector<std::string>& names, int64_t c) {
    if (c < 0) return "unknown";
    if (c < static_cast<int64_t>(names.size())) return names[static_cast<size_t>(c)];
    return std::to_string(c);
}

}  // namespace convscope
