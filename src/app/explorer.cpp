// The web explorer's back end: image store, live activations, channel pictures, background jobs
// and the on-disk caches of the top-patch scan and the dataset map.
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
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/methods/embedding.hpp"
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
#include "app/detail/job_queue.hpp"

namespace convscope {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr int64_t kMaxMapItems = 70000;
constexpr int64_t kPatchK = 9;
constexpr int kPictureTarget = 224;   // pictures of inputs are enlarged to about this size
constexpr int kCropPx = 64;           // top-patch crops
constexpr int64_t kMaxPixels = 40'000'000;  // uploads larger than this are refused

std::string png_url(const cv::Mat& img) { return detail::data_url("image/png", png_bytes(img)); }

json colour_json(const cv::Scalar& c) { return {int(c[0]), int(c[1]), int(c[2])}; }

// Typed access to request fields, with 400-style errors naming the field.
const json& field(const json& j, const char* name) {
    static const json null_value;
    auto it = j.find(name);
    return it == j.end() ? null_value : *it;
}
std::string get_string(const json& j, const char* name, const std::string& fallback = "",
                       bool required = false) {
    const json& v = field(j, name);
    if (v.is_null()) {
        if (required) throw Error(std::string("the request needs \"") + name + "\" (a string)");
        return fallback;
    }
    if (!v.is_string()) throw Error(std::string("\"") + name + "\" must be a string");
    return v.get<std::string>();
}
int64_t get_int(const json& j, const char* name, int64_t fallback, bool required = false) {
    const json& v = field(j, name);
    if (v.is_null()) {
        if (required) throw Error(std::string("the request needs \"") + name + "\" (an integer)");
        return fallback;
    }
    if (!v.is_number_integer()) throw Error(std::string("\"") + name + "\" must be an integer");
    return v.get<int64_t>();
}

// Encoded image formats OpenCV decodes, by their first bytes (and the file name they get).
std::string image_extension(const std::string& b) {
    auto starts = [&](const char* magic, size_t n) { return b.size() >= n && std::memcmp(b.data(), magic, n) == 0; };
    if (starts("\x89PNG\r\n\x1a\n", 8)) return ".png";
    if (starts("\xff\xd8\xff", 3)) return ".jpg";
    if (starts("BM", 2)) return ".bmp";
    if (b.size() >= 12 && starts("RIFF", 4) && std::memcmp(b.data() + 8, "WEBP", 4) == 0) return ".webp";
    if (starts("II*\0", 4) || starts("MM\0*", 4)) return ".tiff";
    if (b.size() >= 2 && b[0] == 'P' && b[1] >= '1' && b[1] <= '6') return ".pgm";
    return "";
}

}  // namespace

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

    Impl(Model m, Dataset d, ExplorerOptions o) : model(std::move(m)), data(std::move(d)), opts(std::move(o)) {}

    // --- images: id -> preprocessed input [1,C,H,W], least recently used evicted ---
    struct Stored {
        at::Tensor input;
        std::list<std::string>::iterator pos;
    };
    mutable std::mutex images_mutex;
    mutable std::list<std::string> lru;
    mutable std::unordered_map<std::string, Stored> images;

    mutable std::mutex items_mutex;
    mutable std::unordered_map<int64_t, std::string> item_pngs;

    // --- jobs ---
    struct Request {
        std::string kind, key;
        std::string image;
        at::Tensor input;
        std::string layer, method, baseline;
        int64_t channel = 0, patch = 0, stride = 0;
    };
    // Reset first by ~Explorer: its workers run execute() on this Impl.
    std::unique_ptr<detail::JobQueue> jobs;

    // --- the scan and the map (computed once, cached on disk) ---
    std::mutex scan_mutex;
    std::shared_ptr<const TopPatchesResult> scan;
    mutable std::mutex map_mutex;
    at::Tensor map_xy;  // [N,2]
    std::string map_layer;

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
        const int64_t n = l.output_shape.size() == 3 ? l.output_shape[0] : 1;
        const int64_t units = l.output_shape.size() == 1 ? l.output_shape[0] : n;
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
        std::lock_guard<std::mutex> lock(images_mutex);
        auto it = images.find(id);
        if (it != images.end()) {
            lru.splice(lru.begin(), lru, it->second.pos);
            return id;
        }
        lru.push_front(id);
        images[id] = Stored{std::move(input), lru.begin()};
        while (int64_t(images.size()) > opts.max_images) {
            images.erase(lru.back());
            lru.pop_back();
        }
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
        std::lock_guard<std::mutex> lock(images_mutex);
        auto it = images.find(id);
        if (it == images.end())
            throw NotFoundError("unknown image '" + id +
                                "': it was never sent or has been forgotten; send the image again");
        lru.splice(lru.begin(), lru, it->second.pos);
        return it->second.input;
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
    json execute(const Request& r, const ProgressFn& progress);
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

// --- construction ---------------------------------------------------------------------------

Explorer::Explorer(Model model, Dataset data, ExplorerOptions options)
    : impl_(std::make_unique<Impl>(std::move(model), std::move(data), std::move(options))) {
    Impl& d = *impl_;
    if (d.opts.map_items < 1 || d.opts.map_items > kMaxMapItems)
        throw UsageError("the map takes 1.." + std::to_string(kMaxMapItems) + " items, got " +
                         std::to_string(d.opts.map_items));
    if (d.opts.scan_items < 1) throw UsageError("the patch scan needs at least 1 item");
    if (d.opts.map_iterations < 1) throw UsageError("the map needs at least 1 t-SNE iteration");
    if (d.opts.feature_vis_steps < 1) throw UsageError("feature visualisation needs at least 1 step");
    if (d.opts.max_images < 1) throw UsageError("the image store must hold at least 1 image");
    if (d.opts.workers < 1) throw UsageError("at least 1 job worker is needed");
    d.pre = preprocess_for(d.model, d.data);
    d.layers = d.model.layers();  // computed once here; read-only afterwards
    d.class_names = detail::class_names_for(d.model, d.data);
    d.cache_dir = d.opts.cache_dir.empty() ? fs::path(default_model_path()).parent_path().string()
                                           : d.opts.cache_dir;
    d.upload_dir = fs::temp_directory_path() /
                   ("convscope-uploads-" + std::to_string(::getpid()) + "-" +
                    std::to_string(reinterpret_cast<uintptr_t>(this) & 0xffffff));
    // 64 queued jobs at most; the last 256 finished ones (and their results) kept for late pollers.
    d.jobs = std::make_unique<detail::JobQueue>(d.opts.workers, 64, 256);
}

Explorer::~Explorer() {
    Impl& d = *impl_;
    d.jobs.reset();  // cancels and joins the workers before anything they use goes
    std::error_code ec;
    fs::remove_all(d.upload_dir, ec);
}

const Model& Explorer::model() const { return impl_->model; }
const Dataset& Explorer::data() const { return impl_->data; }
const ExplorerOptions& Explorer::options() const { return impl_->opts; }

// --- information ----------------------------------------------------------------------------

json Explorer::model_info() const {
    const Impl& d = *impl_;
    json j;
    j["name"] = fs::path(d.model.path()).filename().string();
    j["sha256"] = d.model.file_hash();
    const auto shape = d.model.input_shape();
    j["input_shape"] = shape;
    j["num_classes"] = d.model.num_classes();
    j["class_names"] = d.class_names;
    j["preprocess"] = to_json(d.pre);
    j["drawable"] = shape[0] == 1 && shape[1] <= 64 && shape[2] <= 64;
    auto& arr = j["layers"] = json::array();
    std::vector<std::string> shown;
    for (const auto& l : d.layers) {
        if (l.output_shape.empty()) continue;
        json info = to_json(l);
        const std::string filter = detail::filter_layer_for(d.model, l.name);
        info["filter"] = filter.empty() ? json(nullptr) : json(filter);
        arr.push_back(std::move(info));
    }
    // A small model shows every layer; a deep one its top-level modules first.
    const bool all = arr.size() <= 30;
    for (const auto& l : d.layers)
        if (!l.output_shape.empty() && (all || l.depth == 0)) shown.push_back(l.name);
    j["default_layers"] = shown;
    j["attribution_methods"] = attribution_method_names();
    auto& cmap = j["colormap"] = json::array();
    for (const auto& c : colormap_table(Colormap::Viridis)) cmap.push_back({c[0], c[1], c[2]});
    auto& colours = j["class_colours"] = json::array();
    const int64_t k = std::max<int64_t>(int64_t(d.class_names.size()), j["num_classes"].get<int64_t>());
    for (int64_t c = 0; c < k; ++c) colours.push_back(colour_json(category_colour(c)));
    return j;
}

json Explorer::dataset_info() const {
    const Impl& d = *impl_;
    return {{"spec", d.data.spec()},
            {"size", d.data.size()},
            {"has_labels", d.data.has_labels()},
            {"class_names", d.class_names},
            {"map_items", std::min<int64_t>(d.opts.map_items, d.data.size())},
            {"scan_items", std::min<int64_t>(d.opts.scan_items, d.data.size())}};
}

json Explorer::items(int64_t start, int64_t count) const {
    const Impl& d = *impl_;
    d.check_index(start);
    if (count < 1 || count > 500) throw Error("count must be 1..500, got " + std::to_string(count));
    json out = json::array();
    for (int64_t i = start; i < std::min(d.data.size(), start + count); ++i) {
        const int64_t label = d.data.label(i);
        out.push_back({{"index", i}, {"label", label}, {"label_name", class_name(d.class_names, label)}});
    }
    return out;
}

std::string Explorer::item_png(int64_t index) const {
    const Impl& d = *impl_;
    d.check_index(index);
    {
        std::lock_guard<std::mutex> lock(d.items_mutex);
        auto it = d.item_pngs.find(index);
        if (it != d.item_pngs.end()) return it->second;
    }
    torch::NoGradGuard no_grad;
    const at::Tensor x = d.data.batch({index}, d.pre);
    std::string png = png_bytes(detail::input_picture(d.pre, x[0]));
    std::lock_guard<std::mutex> lock(d.items_mutex);
    if (d.item_pngs.size() < 200000) d.item_pngs[index] = png;
    return png;
}

// --- images ---------------------------------------------------------------------------------

std::string Explorer::add_dataset_image(int64_t index) {
    impl_->check_index(index);
    return "d" + std::to_string(index);
}

std::string Explorer::add_encoded_image(const std::string& bytes) {
    Impl& d = *impl_;
    const std::string ext = image_extension(bytes);
    if (ext.empty())
        throw UnsupportedMediaError("the upload is not an image: send PNG, JPEG, BMP, WebP, TIFF or "
                                    "PGM/PPM bytes");
    // Check the size from the header before decoding the pixels.
    {
        std::vector<uint8_t> buf(bytes.begin(), bytes.end());
        cv::Mat probe;
        try {
            probe = cv::imdecode(buf, cv::IMREAD_UNCHANGED);
        } catch (const cv::Exception&) {
            probe = cv::Mat();
        }
        if (probe.empty())
            throw UnsupportedMediaError("the upload cannot be decoded as an image (corrupt or "
                                        "truncated " + ext.substr(1) + "); send a valid image");
        if (int64_t(probe.rows) * probe.cols > kMaxPixels)
            throw UnsupportedMediaError("the image has " + std::to_string(probe.cols) + "x" +
                                        std::to_string(probe.rows) +
                                        " pixels, more than 40 megapixels; send a smaller image");
    }
    // Decode and preprocess exactly as a dataset item: through a one-image dataset.
    std::error_code ec;
    fs::create_directories(d.upload_dir, ec);
    const fs::path path = d.upload_dir / ("upload-" + std::to_string(d.upload_counter++) + ext);
    at::Tensor input;
    try {
        {
            std::ofstream f(path, std::ios::binary);
            f.write(bytes.data(), std::streamsize(bytes.size()));
            if (!f) throw Error("cannot store the upload in " + d.upload_dir.string());
        }
        Dataset one = Dataset::open(path.string());
        const Preprocess pre = preprocess_for(d.model, one);
        torch::NoGradGuard no_grad;
        input = one.batch({0}, pre);
    } catch (...) {
        fs::remove(path, ec);
        throw;
    }
    fs::remove(path, ec);
    const std::string hash = sha256_hex(std::string(static_cast<const char*>(input.data_ptr()),
                                                    size_t(input.numel()) * sizeof(float)));
    return d.store("u" + hash.substr(0, 16), input);
}

std::string Explorer::add_gray_image(const std::string& pixels, int64_t height, int64_t width) {
    if (height < 1 || width < 1 || height > 4096 || width > 4096)
        throw Error("a drawing must be 1..4096 pixels on each side, got " + std::to_string(width) +
                    "x" + std::to_string(height));
    if (int64_t(pixels.size()) != height * width)
        throw Error("a " + std::to_string(width) + "x" + std::to_string(height) + " drawing has " +
                    std::to_string(height * width) + " bytes, got " + std::to_string(pixels.size()));
    cv::Mat gray(int(height), int(width), CV_8UC1, const_cast<char*>(pixels.data()));
    return add_encoded_image(png_bytes(gray));
}

at::Tensor Explorer::image_input(const std::string& image_id) const { return impl_->input_of(image_id); }

std::string Explorer::image_png(const std::string& image_id) const {
    const at::Tensor input = impl_->input_of(image_id);
    return png_bytes(detail::input_picture(impl_->pre, input[0]));
}

// --- the live update ------------------------------------------------------------------------

json Explorer::activations(const std::string& image_id, const LiveOptions& options) const {
    const Impl& d = *impl_;
    if (options.max_channels < 1 || options.max_channels > 1024)
        throw Error("max_channels must be 1..1024, got " + std::to_string(options.max_channels));
    if (options.max_side < 1 || options.max_side > 1024)
        throw Error("max_side must be 1..1024, got " + std::to_string(options.max_side));
    std::vector<std::string> names = options.layers;
    if (names.empty()) names = detail::layers_with_output(d.model);
    for (const auto& n : names) {
        const LayerInfo& l = d.find_layer(n);
        if (l.output_shape.empty()) throw NotFoundError("layer '" + n + "' has no output to show");
    }
    const at::Tensor input = d.input_of(image_id);
    torch::NoGradGuard no_grad;
    const TapResult r = d.model.forward_taps(input, names);

    json out;
    out["image"] = image_id;
    const int64_t label = d.label_of(image_id);
    out["label"] = label;
    const at::Tensor logits = r.output.reshape({-1}).to(torch::kFloat);
    const at::Tensor probs = torch::softmax(logits, 0);
    out["output"] = {{"logits", std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel())},
                     {"probs", std::vector<float>(probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel())},
                     {"predicted", logits.argmax().item<int64_t>()}};
    auto& arr = out["layers"] = json::array();
    for (const auto& name : names) {
        at::Tensor t = r.taps.at(name)[0].to(torch::kFloat);
        const std::vector<int64_t> shape = t.sizes().vec();
        int64_t factor = 1;
        // Maps of 1x1 (global pooling) show as bars, like 1-D layers.
        const bool bars = !(t.dim() == 3 && t.size(1) * t.size(2) > 1);
        if (!bars) {
            t = t.slice(0, 0, std::min<int64_t>(t.size(0), options.max_channels));
            const int64_t side = std::max(t.size(1), t.size(2));
            factor = (side + options.max_side - 1) / options.max_side;
            if (factor > 1)  // area average of factor x factor blocks (partial blocks at the edges)
                t = at::avg_pool2d(t.unsqueeze(0), {factor, factor}, {factor, factor}, {0, 0},
                                   /*ceil_mode=*/true, /*count_include_pad=*/false)[0];
        } else {
            t = t.flatten().slice(0, 0, std::min<int64_t>(t.numel(), 4096)).reshape({-1, 1, 1});
        }
        t = t.contiguous();
        const Range range = value_range(t);
        at::Tensor q;
        if (range.hi > range.lo) {
            at::Tensor s = (t - range.lo) * (255.0 / (double(range.hi) - double(range.lo)));
            s.nan_to_num_(127.5, 255.0, 0.0);
            q = s.round_().clamp_(0, 255).to(torch::kUInt8);
        } else {
            q = torch::full(t.sizes(), 128, torch::kUInt8);
        }
        const std::string bytes(reinterpret_cast<const char*>(q.data_ptr<uint8_t>()), size_t(q.numel()));
        arr.push_back({{"name", name},
                       {"shape", shape},
                       {"bars", bars},
                       {"channels", t.size(0)},
                       {"height", t.size(1)},
                       {"width", t.size(2)},
                       {"factor", factor},
                       {"lo", range.lo},
                       {"hi", range.hi},
                       {"data", detail::base64_encode(bytes)}});
    }
    return out;
}

// --- a channel ------------------------------------------------------------------------------

std::string Explorer::filter_png(const std::string& layer, int64_t channel) const {
    const Impl& d = *impl_;
    const LayerInfo& l = d.find_layer(layer);
    d.check_channel(l, channel);
    const std::string conv = detail::filter_layer_for(d.model, layer);
    if (conv.empty())
        throw Error("layer '" + layer + "' (" + l.type +
                    ") has no filters to show: filters belong to conv layers and the per-channel "
                    "layers (batch norm, activations) right after them");
    FiltersOptions fo;
    fo.layer = conv;
    fo.filters = {channel};
    return png_bytes(detail::readable(filters(d.model, fo).picture, 160));
}

std::string Explorer::overlay_png(const std::string& image_id, const std::string& layer,
                                  int64_t channel) const {
    const Impl& d = *impl_;
    const LayerInfo& l = d.find_layer(layer);
    d.check_channel(l, channel);
    if (l.output_shape.size() != 3)
        throw Error("layer '" + layer + "' is 1-D: it has no spatial map to overlay on the input");
    const at::Tensor input = d.input_of(image_id);
    torch::NoGradGuard no_grad;
    const TapResult r = d.model.forward_taps(input, {layer});
    const at::Tensor map = r.taps.at(layer)[0][channel];
    const cv::Mat base = detail::readable(detail::input_picture(d.pre, input[0]), kPictureTarget);
    return png_bytes(overlay_map(base, map, Colormap::Viridis, value_range(map), 0.6f));
}

// --- jobs -----------------------------------------------------------------------------------

Explorer::Impl::Request Explorer::Impl::parse(const json& j) const {
    if (!j.is_object()) throw Error("a job request must be a JSON object with a \"kind\"");
    Request r;
    r.kind = get_string(j, "kind", "", true);
    if (r.kind == "occlusion" || r.kind == "attribution") {
        r.image = get_string(j, "image", "", true);
        r.input = input_of(r.image);
        if (r.kind == "occlusion") {
            const int64_t h = r.input.size(2), w = r.input.size(3);
            const int64_t def_patch = std::max<int64_t>(1, std::llround(double(std::min(h, w)) / 7.0));
            r.patch = get_int(j, "patch", def_patch);
            r.stride = get_int(j, "stride", std::max<int64_t>(1, r.patch / 2));
            if (r.patch < 1 || r.patch > std::min(h, w))
                throw Error("patch must be 1.." + std::to_string(std::min(h, w)) + " pixels, got " +
                            std::to_string(r.patch));
            if (r.stride < 1 || r.stride > std::min(h, w))
                throw Error("stride must be 1.." + std::to_string(std::min(h, w)) + ", got " +
                            std::to_string(r.stride));
            r.baseline = get_string(j, "baseline", "zero");
            if (r.baseline != "zero" && r.baseline != "mean" && r.baseline != "blur")
                throw Error("baseline must be zero, mean or blur, got '" + r.baseline + "'");
            r.key = "occlusion|" + r.image + "|" + std::to_string(r.patch) + "|" +
                    std::to_string(r.stride) + "|" + r.baseline;
        } else {
            r.method = get_string(j, "method", "saliency");
            (void)parse_attribution_method(r.method);  // UsageError listing the names
            r.layer = get_string(j, "layer", "");
            if (!r.layer.empty()) (void)find_layer(r.layer);
            r.key = "attribution|" + r.image + "|" + r.method + "|" + r.layer;
        }
    } else if (r.kind == "feature-vis" || r.kind == "patches") {
        r.layer = get_string(j, "layer", "", true);
        r.channel = get_int(j, "channel", 0, true);
        const LayerInfo& l = find_layer(r.layer);
        check_channel(l, r.channel);
        r.key = r.kind + "|" + r.layer + "|" + std::to_string(r.channel);
    } else if (r.kind == "map") {
        r.key = "map";
    } else {
        throw Error("unknown job kind '" + r.kind +
                    "': use occlusion, attribution, feature-vis, patches or map");
    }
    // Uploaded images are keyed by content, dataset items by index: equal keys, equal work.
    return r;
}

std::shared_ptr<const TopPatchesResult> Explorer::Impl::ensure_scan(const ProgressFn& progress) {
    std::lock_guard<std::mutex> lock(scan_mutex);  // one scan at a time; others wait for it
    if (scan) return scan;
    const int64_t n = std::min(opts.scan_items, data.size());
    TopPatchesOptions to;
    to.layers = detail::layers_with_output(model);
    to.k = std::min<int64_t>(kPatchK, n);
    to.lowest = false;
    std::string identity = "top-patches-v1|" + model.file_hash() + "|" + data.hash() + "|" +
                           std::to_string(n) + "|" + std::to_string(to.k) + "|" +
                           std::to_string(to.batch_size);
    for (const auto& l : to.layers) identity += "|" + l;
    const std::string path = cache_path("top-patches", identity, ".json");
    if (!path.empty() && fs::exists(path)) {
        try {
            auto r = std::make_shared<TopPatchesResult>(
                top_patches_from_json(json::parse(read_file(path)), path));
            scan = r;
            return scan;
        } catch (const std::exception& e) {
            std::cerr << "convscope: ignoring the unreadable cache " << path << ": " << current_error().message << "\n";
        }
    }
    std::vector<int64_t> indices(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
    RunContext ctx;
    ctx.progress = progress;
    auto r = std::make_shared<TopPatchesResult>(top_patches(model, data, indices, pre, to, ctx));
    if (!path.empty()) {
        try {
            fs::create_directories(cache_dir);
            write_json(path, top_patches_to_json(*r));
        } catch (const std::exception& e) {
            std::cerr << "convscope: cannot cache the patch scan in " << cache_dir << ": " << current_error().message << "\n";
        }
    }
    scan = r;
    return scan;
}

void Explorer::Impl::ensure_map(const ProgressFn& progress) {
    {
        std::lock_guard<std::mutex> lock(map_mutex);
        if (map_xy.defined()) return;
    }
    static std::mutex compute_mutex;  // one map computation at a time
    std::lock_guard<std::mutex> compute(compute_mutex);
    {
        std::lock_guard<std::mutex> lock(map_mutex);
        if (map_xy.defined()) return;
    }
    const int64_t n = std::min(opts.map_items, data.size());
    if (n < 8) throw Error("the dataset map needs at least 8 items, the data has " + std::to_string(n));
    const std::string layer = model.penultimate_layer();
    if (layer.empty()) throw Error("the model has no layer to take map features from");
    TsneOptions to;
    to.iterations = opts.map_iterations;
    to.early_exaggeration_iters = std::min(to.early_exaggeration_iters, std::max(1, to.iterations / 3));
    to.perplexity = std::min(30.0, (double(n) - 2.0) / 3.0 - 0.01);
    const std::string identity = "map-v1|" + model.file_hash() + "|" + data.hash() + "|" + layer +
                                 "|" + std::to_string(n) + "|" + std::to_string(to.iterations) + "|" +
                                 std::to_string(to.perplexity) + "|" + std::to_string(opts.seed);
    const std::string path = cache_path("map", identity, ".npy");
    at::Tensor xy;
    if (!path.empty() && fs::exists(path)) {
        try {
            xy = read_npy(path);
            if (xy.dim() != 2 || xy.size(0) != n || xy.size(1) != 2) xy = at::Tensor();
        } catch (const std::exception& e) {
            std::cerr << "convscope: ignoring the unreadable cache " << path << ": " << current_error().message << "\n";
            xy = at::Tensor();
        }
    }
    if (!xy.defined()) {
        std::vector<int64_t> indices(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
        LayerFeaturesOptions fo;
        fo.layer = layer;
        const EmbeddingFeatures ef = layer_features(model, data, indices, fo, context(sub_progress(progress, 0.0, 0.2)));
        if (ef.features.size(1) > 50) to.pca_dims = 50;
        xy = tsne(ef.features, to, context(sub_progress(progress, 0.2, 1.0))).embedding;
        if (!path.empty()) {
            try {
                fs::create_directories(cache_dir);
                write_npy(path, xy);
            } catch (const std::exception& e) {
                std::cerr << "convscope: cannot cache the map in " << cache_dir << ": " << current_error().message << "\n";
            }
        }
    }
    std::lock_guard<std::mutex> lock(map_mutex);
    map_xy = xy.to(torch::kFloat).contiguous();
    map_layer = layer;
}

json Explorer::Impl::execute(const Request& r, const ProgressFn& progress) {
    const int factor = readable_factor(int(r.input.defined() ? r.input.size(2) : 1),
                                       int(r.input.defined() ? r.input.size(3) : 1), kPictureTarget);
    if (r.kind == "occlusion") {
        OcclusionOptions oo;
        oo.patch_h = oo.patch_w = r.patch;
        oo.stride_y = oo.stride_x = r.stride;
        oo.baseline = parse_baseline(r.baseline);
        oo.score = OcclusionScore::Prob;
        const OcclusionResult res = occlusion(model, r.input, oo, context(progress));
        const OcclusionSummary s = summarize_occlusion(res, 0, oo);
        const cv::Mat base = upscale_nearest(detail::input_picture(pre, r.input[0]), factor);
        const detail::HeatPictures p = detail::occlusion_pictures(base, res, 0, factor);
        json j = to_json(s, class_names);
        j["overlay"] = png_url(p.overlay);
        j["heat"] = png_url(p.heat);
        j["scale"] = factor;
        j["input_size"] = {r.input.size(2), r.input.size(3)};
        j["patch"] = r.patch;
        j["stride"] = r.stride;
        j["positions"] = {res.positions_y, res.positions_x};
        return j;
    }
    if (r.kind == "attribution") {
        AttributionOptions ao;
        ao.method = parse_attribution_method(r.method);
        ao.layer = r.layer;
        ao.samples = 25;
        ao.steps = 32;
        const AttributionResult res = attribute(model, r.input, ao, context(progress));
        const cv::Mat base = upscale_nearest(detail::input_picture(pre, r.input[0]), factor);
        const detail::HeatPictures p = detail::attribution_pictures(base, res, 0, factor);
        return {{"method", r.method},
                {"layer", res.layer},
                {"target", res.targets[0]},
                {"target_name", class_name(class_names, res.targets[0])},
                {"score", res.scores[0].item<double>()},
                {"overlay", png_url(p.overlay)},
                {"heat", png_url(p.heat)}};
    }
    if (r.kind == "feature-vis") {
        FeatureVisOptions fo;
        fo.objective = FeatureVisOptions::Objective::Channel;
        fo.layer = r.layer;
        fo.units = {r.channel};
        fo.steps = opts.feature_vis_steps;
        fo.preprocess = pre;
        fo.preprocess.as_is = false;
        const FeatureVisResult res = feature_vis(model, fo, context(progress));
        if (!res.display.defined())
            throw Error("the model's input has " + std::to_string(res.pixels.size(1)) +
                        " channels: feature visualisations are pictures for 1 or 3 channels only");
        const cv::Mat img = detail::readable(image_from_hwc_uint8(res.display[0]), 160);
        return {{"layer", r.layer},
                {"channel", r.channel},
                {"image", png_url(img)},
                {"activation", res.activation[0].item<double>()},
                {"initial_activation", res.initial_activation[0].item<double>()},
                {"steps", fo.steps}};
    }
    if (r.kind == "patches") {
        const auto s = ensure_scan(sub_progress(progress, 0.0, 0.95));
        const LayerPatches* lp = nullptr;
        for (const auto& l : s->layers)
            if (l.name == r.layer) lp = &l;
        if (!lp) throw NotFoundError("layer '" + r.layer + "' was not scanned");
        if (r.channel >= int64_t(lp->channels.size()))
            throw NotFoundError("layer '" + r.layer + "' has no channel " + std::to_string(r.channel));
        const ChannelPatches& c = lp->channels[size_t(r.channel)];
        const auto crops = patch_crops(data, s->preprocess, {c.top}, kCropPx);
        json entries = json::array();
        for (size_t i = 0; i < c.top.size(); ++i) {
            const PatchEntry& e = c.top[i];
            entries.push_back({{"index", e.image},
                               {"label", e.label},
                               {"label_name", class_name(class_names, e.label)},
                               {"value", e.value},
                               {"y", e.y},
                               {"x", e.x},
                               {"box", to_json(e.box)},
                               {"crop", png_url(crops[0][i])}});
        }
        report_progress(progress, 1.0);
        return {{"layer", r.layer},
                {"channel", r.channel},
                {"entries", entries},
                {"dead", c.dead},
                {"images_scanned", s->images_scanned}};
    }
    // map
    ensure_map(progress);
    std::lock_guard<std::mutex> lock(map_mutex);
    return {{"n", map_xy.size(0)}, {"layer", map_layer}};
}

json Explorer::start_job(const json& request) {
    Impl& d = *impl_;
    auto r = std::make_shared<const Impl::Request>(d.parse(request));
    return d.jobs->start(r->key, r->kind, [&d, r](const ProgressFn& progress) { return d.execute(*r, progress); });
}

json Explorer::job(const std::string& id) const { return impl_->jobs->status(id); }

json Explorer::cancel_job(const std::string& id) { return impl_->jobs->cancel(id); }

json Explorer::run_job(const json& request) {
    Impl& d = *impl_;
    return d.execute(d.parse(request), {});
}

json Explorer::map_points() const {
    const Impl& d = *impl_;
    std::lock_guard<std::mutex> lock(d.map_mutex);
    if (!d.map_xy.defined())
        throw NotFoundError("the dataset map is not computed yet: start a job {\"kind\": \"map\"}");
    const int64_t n = d.map_xy.size(0);
    const float* p = d.map_xy.data_ptr<float>();
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    std::vector<int64_t> labels(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        x[size_t(i)] = p[2 * i];
        y[size_t(i)] = p[2 * i + 1];
        labels[size_t(i)] = d.data.label(i);
    }
    json colours = json::array();
    for (size_t c = 0; c < std::max<size_t>(d.class_names.size(), 1); ++c)
        colours.push_back(colour_json(category_colour(int64_t(c))));
    return {{"n", n},
            {"layer", d.map_layer},
            {"x", x},
            {"y", y},
            {"labels", labels},
            {"class_names", d.class_names},
            {"class_colours", colours},
            {"unknown_colour", colour_json(category_colour(-1))}};
}

}  // namespace convscope
