#pragma once
// The explorer's state, shared by its two halves: src/app/explorer.cpp (construction, the image
// store, live views, channel pictures, the map's points) and src/app/explorer_jobs.cpp (job
// requests, one handler per kind, the cached scan and map). Private to the app layer.
#include "convscope/app/explorer.hpp"

#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <list>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <thread>
#include <unordered_map>

#include "convscope/methods/attribution.hpp"
#include "convscope/methods/dataset_map.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/methods/filters.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/methods/tsne.hpp"
#include "convscope/runtime/base64.hpp"
#include "convscope/runtime/strings.hpp"
#include "convscope/app/views.hpp"
#include "app/detail/image_store.hpp"
#include "app/detail/job_queue.hpp"

namespace convscope {

namespace fs = std::filesystem;
using nlohmann::json;

namespace explorer_detail {

inline constexpr int64_t kMaxMapItems = 70000;
inline constexpr int64_t kPatchK = 9;
inline constexpr int kPictureTarget = 224;   // pictures of inputs are enlarged to about this size
inline constexpr int kCropPx = 64;           // top-patch crops
inline constexpr int kEvaluateSteps = 20;     // deletion and insertion steps of an evaluate job
inline constexpr int64_t kAttentionValues = 400000;  // attention values an attention job returns at most

inline std::string png_url(const cv::Mat& img) { return detail::data_url("image/png", png_bytes(img)); }

inline json colour_json(const cv::Scalar& c) { return {int(c[0]), int(c[1]), int(c[2])}; }

// Typed access to request fields, with 400-style errors naming the field.
inline const json& field(const json& j, const char* name) {
    static const json null_value;
    auto it = j.find(name);
    return it == j.end() ? null_value : *it;
}
inline std::string get_string(const json& j, const char* name, const std::string& fallback = "",
                       bool required = false) {
    const json& v = field(j, name);
    if (v.is_null()) {
        if (required) throw Error(std::string("the request needs \"") + name + "\" (a string)");
        return fallback;
    }
    if (!v.is_string()) throw Error(std::string("\"") + name + "\" must be a string");
    return v.get<std::string>();
}
inline int64_t get_int(const json& j, const char* name, int64_t fallback, bool required = false) {
    const json& v = field(j, name);
    if (v.is_null()) {
        if (required) throw Error(std::string("the request needs \"") + name + "\" (an integer)");
        return fallback;
    }
    if (!v.is_number_integer()) throw Error(std::string("\"") + name + "\" must be an integer");
    return v.get<int64_t>();
}

// Encoded image formats OpenCV decodes, by their first bytes (and the file name they get).
inline std::string image_extension(const std::string& b) {
    auto starts = [&](const char* magic, size_t n) { return b.size() >= n && std::memcmp(b.data(), magic, n) == 0; };
    if (starts("\x89PNG\r\n\x1a\n", 8)) return ".png";
    if (starts("\xff\xd8\xff", 3)) return ".jpg";
    if (starts("BM", 2)) return ".bmp";
    if (b.size() >= 12 && starts("RIFF", 4) && std::memcmp(b.data() + 8, "WEBP", 4) == 0) return ".webp";
    if (starts("II*\0", 4) || starts("MM\0*", 4)) return ".tiff";
    if (b.size() >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6') return ".pgm";
    return "";
}

}  // namespace explorer_detail

using namespace explorer_detail;  // the explorer's two source files use these unqualified

struct Explorer::Impl {
    Model model;
    Dataset data;
    ExplorerOptions opts;
    Preprocess pre;
    std::vector<LayerInfo> layers;
    std::vector<std::string> class_names;
    std::string cache_dir;
    fs::path upload_dir;
    std::atomic<uint64_t> upload_counter{0};

    Impl(Model m, Dataset d, ExplorerOptions o)
        : model(std::move(m)), data(std::move(d)), opts(std::move(o)), images(opts.max_images) {}

    // --- uploaded images: id -> preprocessed input [1,C,H,W] ---
    mutable detail::ImageStore images;

    mutable std::mutex items_mutex;
    mutable std::unordered_map<int64_t, std::string> item_pngs;

    // --- jobs ---
    struct Request {
        std::string kind, key;
        std::string image;
        at::Tensor input;
        std::string layer, method, baseline;
        int64_t channel = 0, patch = 0, stride = 0;
        // Occlusion and attribution: what is explained ("pred" or a class; dense outputs: a
        // region "pred", "all" or "box:..."), or the region clicked at output pixel (at_y, at_x):
        // the class predicted there over the connected pixels predicted as it.
        std::string target = "pred", region = "pred";
        int64_t at_y = -1, at_x = -1;
    };
    // Reset first by ~Explorer: its workers run execute() on this Impl.
    std::unique_ptr<detail::JobQueue> jobs;

    // --- the scan and the map (computed once, cached on disk) ---
    std::mutex scan_mutex;
    std::shared_ptr<const TopPatchesResult> scan;
    mutable std::mutex map_mutex;
    std::shared_ptr<const DatasetMap> map;  // null until computed (or read at construction)

    // --- helpers ---
    const LayerInfo& find_layer(const std::string& name) const {
        for (const auto& l : layers)
            if (l.name == name) return l;
        std::vector<std::string> names;
        for (const auto& l : layers) names.push_back(l.name);
        throw NotFoundError("unknown layer '" + name + "'" + detail::closest_names_hint(name, names));
    }
    int64_t channels_of(const LayerInfo& l) const {
        return l.output_shape.empty() ? 0 : l.output_shape[0];
    }
    void check_channel(const LayerInfo& l, int64_t c) const {
        // Token and channels-last layers count their channels as maps (C,h,w).
        const std::vector<int64_t> shape = l.layout.spatial() ? l.layout.map_shape() : l.output_shape;
        const int64_t n = shape.size() == 3 ? shape[0] : 1;
        const int64_t units = shape.size() == 1 ? shape[0] : n;
        if (c < 0 || c >= units)
            throw NotFoundError("layer '" + l.name + "' has " + std::to_string(units) +
                                " channels; channel " + std::to_string(c) + " does not exist");
    }
    void check_index(int64_t i) const {
        if (i < 0 || i >= data.size())
            throw NotFoundError("item " + std::to_string(i) + " does not exist: the data has " +
                                std::to_string(data.size()) + " items (0.." +
                                std::to_string(data.size() - 1) + ")");
    }
    std::string store(const std::string& id, at::Tensor input) {
        images.put(id, std::move(input));
        return id;
    }
    at::Tensor input_of(const std::string& id) const {
        if (id.size() > 1 && id[0] == 'd') {
            int64_t i = -1;
            if (!detail::parse_int64(id.substr(1), i)) i = -1;
            if (i < 0) throw NotFoundError("unknown image '" + id + "'");
            check_index(i);
            return data.batch({i}, pre);
        }
        std::optional<at::Tensor> input = images.get(id);
        if (!input)
            throw NotFoundError("unknown image '" + id +
                                "': it was never sent or has been forgotten; send the image again");
        return *input;
    }
    int64_t label_of(const std::string& id) const {
        if (id.size() > 1 && id[0] == 'd' && data.has_labels()) {
            int64_t i = -1;
            if (detail::parse_int64(id.substr(1), i) && i >= 0 && i < data.size()) return data.label(i);
        }
        return -1;
    }

    std::string cache_path(const std::string& what, const std::string& identity,
                           const std::string& ext) const {
        if (model.file_hash().empty()) return "";  // a model in memory: nothing stable to key on
        return (fs::path(cache_dir) / (what + "-" + sha256_hex(identity).substr(0, 32) + ext)).string();
    }

    Request parse(const json& j) const;
    // Reads "target", "region" and "at" of an occlusion or attribution request into r.
    void parse_target_fields(const json& j, Request& r) const;
    // The model's output for the request's image, computed once per job.
    at::Tensor clean_output(const Request& r) const;
    // The request's Target for its image (a clicked region resolved on its clean output).
    Target target_of(const Request& r, const at::Tensor& clean) const;
    // Dense outputs: the region explained ("region", "region_pixels") and "segmentation" with
    // it outlined, added to a job's answer.
    void add_region(json& j, const Request& r, const Target& t, const at::Tensor& clean) const;
    // The dense output's [1,K,H,W] predicted classes over the input picture [1,C,H,W] as a PNG
    // data URL, the region [H,W] outlined (undefined: none); "" for other outputs. What the
    // explorer shows a segmentation model's answer as.
    std::string segmentation_url(const at::Tensor& input, const at::Tensor& outputs,
                                 const at::Tensor& region_hw = {}) const;
    // Runs a parsed request: the handler of its kind (explorer_jobs.cpp).
    json execute(const Request& r, const ProgressFn& progress);
    json run_occlusion(const Request& r, const ProgressFn& progress);
    json run_attribution(const Request& r, const ProgressFn& progress);
    json run_evaluate(const Request& r, const ProgressFn& progress);
    json run_attention(const Request& r, const ProgressFn& progress);
    json run_feature_vis(const Request& r, const ProgressFn& progress);
    json run_patches(const Request& r, const ProgressFn& progress);
    json run_map(const Request& r, const ProgressFn& progress);
    // A job's method context: its progress and the explorer's seed.
    RunContext context(const ProgressFn& progress) const {
        RunContext ctx;
        ctx.progress = progress;
        ctx.seed = opts.seed;
        return ctx;
    }
    std::shared_ptr<const TopPatchesResult> ensure_scan(const ProgressFn& progress);
    void ensure_map(const ProgressFn& progress);
};

}  // namespace convscope
