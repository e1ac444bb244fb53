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

Box box_from_json(const nlohmann::json& j) { return Box{j.at(0), j.at(1), j.at(2), j.at(3)}; }

ReceptiveField receptive_field_from_json(const nlohmann::json& j) {
    ReceptiveField rf;
    const std::string kind = j.at("kind").get<std::string>();
    if (kind == "global") rf.kind = ReceptiveField::Kind::Global;
    else if (kind == "unknown") rf.kind = ReceptiveField::Kind::Unknown;
    else {
        rf.kind = ReceptiveField::Kind::Exact;
        rf.size_y = j.at("size").at(0);
        rf.size_x = j.at("size").at(1);
        rf.stride_y = j.at("stride").at(0);
        rf.stride_x = j.at("stride").at(1);
        rf.pad_y = j.at("padding").at(0);
        rf.pad_x = j.at("padding").at(1);
    }
    return rf;
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
