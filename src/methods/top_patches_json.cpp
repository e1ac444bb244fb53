// top_patches.json and checkpoints: the result's one JSON shape and its reader.
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "convscope/methods/top_patches.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "methods/detail/top_patches_files.hpp"

namespace convscope {

using namespace top_patches_detail;

namespace {

// The double whose shortest decimal is the float's shortest decimal, so files show 0.1, not
// 0.10000000149011612, and reading back gives the same float.
double json_float(float f) {
    if (!std::isfinite(f)) return static_cast<double>(f);
    char buf[32];
    auto res = std::to_chars(buf, buf + sizeof buf, f);
    double d = std::strtod(std::string(buf, res.ptr).c_str(), nullptr);
    return static_cast<float>(d) == f ? d : static_cast<double>(f);
}

nlohmann::json entry_json(const PatchEntry& e) {
    return {{"image", e.image},
            {"label", e.label},
            {"value", json_float(e.value)},
            {"y", e.y},
            {"x", e.x},
            {"box", to_json(e.box)}};
}

PatchEntry entry_from_json(const nlohmann::json& j) {
    PatchEntry e;
    e.image = json_int(j.at("image"), 0);
    e.label = json_int(j.at("label"));
    e.value = static_cast<float>(j.at("value").get<double>());
    e.y = json_int(j.at("y"), 0);
    e.x = json_int(j.at("x"), 0);
    e.box = box_from_json(j.at("box"));
    return e;
}

}  // namespace

nlohmann::json top_patches_to_json(const TopPatchesResult& r) {
    nlohmann::json j;
    j["format"] = kFormat;
    j["model"] = {{"path", r.model_path}, {"sha256", r.model_hash}};
    j["data"] = {{"spec", r.data_spec},
                 {"hash", r.data_hash},
                 {"labels", r.data_labels},
                 {"selected", r.num_selected},
                 {"indices_sha256", r.indices_hash},
                 {"class_names", r.class_names}};
    j["preprocess"] = {{"input_shape", r.preprocess.input_shape},
                       {"mean", r.preprocess.mean},
                       {"std", r.preprocess.std},
                       {"resize", r.preprocess.resize},
                       {"pixel_range", r.preprocess.pixel_range},
                       {"bgr", r.preprocess.bgr},
                       {"as_is", r.preprocess.as_is}};
    j["options"] = {{"k", r.k}, {"lowest", r.lowest}, {"batch_size", r.batch_size},
                    {"histogram_bins", r.histogram_bins}, {"histogram_mantissa_bits", kHistogramMantissaBits}};
    j["shard"] = {{"index", r.shard_index}, {"count", r.shard_count}};
    j["images_scanned"] = r.images_scanned;
    auto& layers = j["layers"] = nlohmann::json::array();
    for (const auto& L : r.layers) {
        nlohmann::json lj;
        lj["name"] = L.name;
        lj["output_shape"] = L.output_shape;
        lj["receptive_field"] = to_json(L.rf);
        lj["crop_field"] = to_json(L.crop_rf);
        lj["box_source"] = L.gradient_boxes ? "gradient" : "receptive_field";
        auto& chans = lj["channels"] = nlohmann::json::array();
        for (size_t c = 0; c < L.channels.size(); ++c) {
            const auto& ch = L.channels[c];
            nlohmann::json cj;
            cj["channel"] = c;
            auto& top = cj["top"] = nlohmann::json::array();
            for (const auto& e : ch.top) top.push_back(entry_json(e));
            auto& bottom = cj["bottom"] = nlohmann::json::array();
            for (const auto& e : ch.bottom) bottom.push_back(entry_json(e));
            auto& dom = cj["dominant_labels"] = nlohmann::json::array();
            for (const auto& [label, count] : dominant_labels(ch))
                dom.push_back({{"label", label}, {"name", class_name(r.class_names, label)}, {"count", count}});
            cj["dead_count"] = ch.dead;
            cj["dead_fraction"] = r.images_scanned > 0 ? double(ch.dead) / double(r.images_scanned) : 0.0;
            const Histogram h = make_histogram(ch, r.histogram_bins);
            nlohmann::json edges = nlohmann::json::array();
            for (float e : h.edges) edges.push_back(json_float(e));
            cj["histogram"] = {{"min", json_float(ch.min)}, {"max", json_float(ch.max)},
                               {"edges", edges}, {"counts", h.counts}};
            // The mergeable state: counts per fine bucket (see kHistogramMantissaBits).
            std::vector<uint32_t> keys;
            std::vector<int64_t> counts;
            for (const auto& [key, count] : ch.fine) {
                keys.push_back(key);
                counts.push_back(count);
            }
            cj["fine_histogram"] = {{"keys", keys}, {"counts", counts}};
            chans.push_back(std::move(cj));
        }
        layers.push_back(std::move(lj));
    }
    return j;
}

TopPatchesResult top_patches_from_json(const nlohmann::json& j, const std::string& what) {
    // value() would throw for a "format" that is not a string.
    const std::string format =
        j.is_object() && j.contains("format") && j["format"].is_string() ? j["format"].get<std::string>() : "";
    if (format != kFormat && format != kCheckpointFormat)
        throw Error(what + " is not a top_patches.json written by convscope top-patches");
    TopPatchesResult r;
    try {
        r.model_path = j.at("model").at("path").get<std::string>();
        r.model_hash = j.at("model").at("sha256").get<std::string>();
        const auto& d = j.at("data");
        r.data_spec = d.at("spec").get<std::string>();
        r.data_hash = d.at("hash").get<std::string>();
        r.data_labels = d.at("labels").get<std::string>();
        r.num_selected = json_int(d.at("selected"), 0);
        r.indices_hash = d.at("indices_sha256").get<std::string>();
        r.class_names = d.at("class_names").get<std::vector<std::string>>();
        const auto& p = j.at("preprocess");
        r.preprocess.input_shape = json_ints(p.at("input_shape"), 1);
        r.preprocess.mean = p.at("mean").get<std::vector<double>>();
        r.preprocess.std = p.at("std").get<std::vector<double>>();
        r.preprocess.as_is = p.at("as_is").get<bool>();
        r.preprocess.resize = p.value("resize", int64_t(0));
        r.preprocess.pixel_range = p.value("pixel_range", 1.0);
        r.preprocess.bgr = p.value("bgr", false);
        const auto& o = j.at("options");
        r.k = json_int(o.at("k"));
        r.lowest = o.at("lowest").get<bool>();
        r.batch_size = json_int(o.at("batch_size"), 1);
        r.histogram_bins = static_cast<int>(json_int(o.at("histogram_bins"), 1, INT32_MAX));
        if (json_int(o.at("histogram_mantissa_bits")) != kHistogramMantissaBits)
            throw Error(what + " uses another histogram resolution: it was written by another convscope version");
        r.shard_index = json_int(j.at("shard").at("index"));
        r.shard_count = json_int(j.at("shard").at("count"));
        r.images_scanned = json_int(j.at("images_scanned"), 0);
        for (const auto& lj : j.at("layers")) {
            LayerPatches L;
            L.name = lj.at("name").get<std::string>();
            L.output_shape = json_ints(lj.at("output_shape"), 1);
            L.rf = receptive_field_from_json(lj.at("receptive_field"));
            L.crop_rf = lj.contains("crop_field") ? receptive_field_from_json(lj.at("crop_field")) : L.rf;
            L.gradient_boxes = lj.at("box_source").get<std::string>() == "gradient";
            for (const auto& cj : lj.at("channels")) {
                ChannelPatches c;
                for (const auto& e : cj.at("top")) c.top.push_back(entry_from_json(e));
                for (const auto& e : cj.at("bottom")) c.bottom.push_back(entry_from_json(e));
                c.dead = json_int(cj.at("dead_count"), 0);
                c.min = static_cast<float>(cj.at("histogram").at("min").get<double>());
                c.max = static_cast<float>(cj.at("histogram").at("max").get<double>());
                const auto keys = json_ints(cj.at("fine_histogram").at("keys"), 0, UINT32_MAX);
                const auto counts = json_ints(cj.at("fine_histogram").at("counts"), 0);
                if (keys.size() != counts.size() || (!keys.empty() && !(c.min <= c.max)))
                    throw Error(what + " has a damaged histogram");
                for (size_t i = 0; i < keys.size(); ++i) c.fine.emplace_back(keys[i], counts[i]);
                L.channels.push_back(std::move(c));
            }
            r.layers.push_back(std::move(L));
        }
    } catch (const nlohmann::json::exception& e) {
        throw Error(what + " is incomplete or damaged (" + std::string(e.what()) +
                    "): use the top_patches.json that convscope top-patches wrote");
    } catch (const JsonValueError& e) {
        throw Error(what + " is damaged (" + std::string(e.what()) +
                    "): use the top_patches.json that convscope top-patches wrote");
    }
    if (r.shard_count < 1 || r.shard_index < 0 || r.shard_index >= r.shard_count || r.k < 1)
        throw Error(what + " has an invalid shard or k: use the top_patches.json that convscope top-patches wrote");
    return r;
}

}  // namespace convscope
