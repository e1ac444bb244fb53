#pragma once
// The one JSON shape of each runtime struct, used by the CLI, the explorer and the report alike.
// The methods' results have theirs in convscope/methods/json.hpp.
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"

namespace convscope {

struct Box;
struct LayerInfo;
struct Layout;
struct ReceptiveField;

// [y0, x0, y1, x1] in input pixels (end exclusive).
nlohmann::json to_json(const Box& box);
// {"kind": "exact"|"global"|"unknown"} and, for exact ones, "size", "stride" and "padding" as
// [y, x] pairs.
nlohmann::json to_json(const ReceptiveField& rf);
// {"name", "type", "output_shape" (without the batch), "parameters", "depth", "is_conv",
// "is_linear", "receptive_field"}.
nlohmann::json to_json(const Layout& layout);
nlohmann::json to_json(const LayerInfo& layer);
// The inverses of the two above; throw nlohmann::json::exception on a missing field and Error on
// a number that is not a whole one (callers name the file).
Box box_from_json(const nlohmann::json& j);
ReceptiveField receptive_field_from_json(const nlohmann::json& j);
// JSON text (indent < 0: one line) that never throws for strings that are not UTF-8 (file names,
// layer names and request paths come from outside): invalid bytes become U+FFFD. Every file,
// reply and summary the project writes goes through this.
std::string json_text(const nlohmann::json& j, int indent = -1);

// "exact", "global", "unknown" (ReceptiveField::Kind).
const char* receptive_field_kind_name(const ReceptiveField& rf);

// A JSON value as a whole number: JsonValueError unless it is a JSON integer within [lo, hi]
// (nlohmann's own conversion turns 2.5 into 2, and 2e130 into undefined behaviour). json_ints: an
// array of them.
class JsonValueError : public Error {
public:
    using Error::Error;
};
int64_t json_int(const nlohmann::json& v, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX);
std::vector<int64_t> json_ints(const nlohmann::json& v, int64_t lo = INT64_MIN, int64_t hi = INT64_MAX);

// The name of class c: names[c] where known, else the number; "unknown" for c < 0 (no class).
std::string class_name(const std::vector<std::string>& names, int64_t c);

}  // namespace convscope
