#include "convscope/runtime/json.hpp"

#include "convscope/runtime/error.hpp"

#include <nlohmann/json.hpp>

#include "convscope/runtime/model.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace convscope {

nlohmann::json to_json(const Box& b) { return {b.y0, b.x0, b.y1, b.x1}; }

std::string json_text(const nlohmann::json& j, int indent) {
    return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

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

int64_t json_int(const nlohmann::json& v, int64_t lo, int64_t hi) {
    const bool whole = v.is_number_integer() && !(v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX));
    if (!whole || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
        throw JsonValueError("expected a whole number in " + std::to_string(lo) + ".." + std::to_string(hi) + ", got " +
                    json_text(v).substr(0, 40));
    return v.get<int64_t>();
}

std::vector<int64_t> json_ints(const nlohmann::json& v, int64_t lo, int64_t hi) {
    if (!v.is_array()) throw JsonValueError("expected an array of whole numbers, got " + json_text(v).substr(0, 40));
    std::vector<int64_t> out;
    out.reserve(v.size());
    for (const auto& x : v) out.push_back(json_int(x, lo, hi));
    return out;
}

Box box_from_json(const nlohmann::json& j) {
    return Box{json_int(j.at(0)), json_int(j.at(1)), json_int(j.at(2)), json_int(j.at(3))};
}

ReceptiveField receptive_field_from_json(const nlohmann::json& j) {
    ReceptiveField rf;
    const std::string kind = j.at("kind").get<std::string>();
    if (kind == "global") rf.kind = ReceptiveField::Kind::Global;
    else if (kind == "unknown") rf.kind = ReceptiveField::Kind::Unknown;
    else {
        rf.kind = ReceptiveField::Kind::Exact;
        rf.size_y = json_int(j.at("size").at(0));
        rf.size_x = json_int(j.at("size").at(1));
        rf.stride_y = json_int(j.at("stride").at(0));
        rf.stride_x = json_int(j.at("stride").at(1));
        rf.pad_y = json_int(j.at("padding").at(0));
        rf.pad_x = json_int(j.at("padding").at(1));
    }
    return rf;
}

nlohmann::json to_json(const Layout& l) {
    nlohmann::json j = {{"kind", layout_kind_name(l.kind)}};
    if (l.grid_h > 0) j["grid"] = {l.grid_h, l.grid_w};
    if (l.kind == LayoutKind::Tokens) {
        j["extra_front"] = l.extra_front;
        j["extra_back"] = l.extra_back;
        j["grid_source"] = l.grid_source;
    }
    if (l.kind == LayoutKind::Attention) {
        j["heads"] = l.heads;
        j["windows"] = l.windows;
        j["window"] = l.window;
        j["shift"] = l.shift;
        j["extra_front"] = l.extra_front;
        j["extra_back"] = l.extra_back;
    }
    if (l.channels > 0) j["channels"] = l.channels;
    return j;
}

nlohmann::json to_json(const LayerInfo& l) {
    return {{"name", l.name},          {"type", l.type},       {"output_shape", l.output_shape},
            {"layout", to_json(l.layout)},
            {"parameters", l.num_params}, {"depth", l.depth},   {"is_conv", l.is_conv},
            {"is_linear", l.is_linear}, {"receptive_field", to_json(l.rf)}};
}

std::string class_name(const std::vector<std::string>& names, int64_t c) {
    if (c < 0) return "unknown";
    if (c < static_cast<int64_t>(names.size())) return names[static_cast<size_t>(c)];
    return std::to_string(c);
}

}  // namespace convscope
