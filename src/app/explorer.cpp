// The web explorer's back end: construction, the image store, live activations, channel
// pictures and the map's points (jobs: explorer_jobs.cpp; shared state: detail/explorer_impl.hpp).
#include "app/detail/explorer_impl.hpp"
#include "convscope/runtime/image_header.hpp"

namespace convscope {



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
    if (d.opts.max_queued_jobs < 1) throw UsageError("the job queue must hold at least 1 job");
    if (!(d.opts.max_job_seconds >= 0)) throw UsageError("the job time limit must be >= 0 seconds (0 = none)");
    d.pre = preprocess_for(d.model, d.data);
    d.layers = d.model.layers();  // computed once here; read-only afterwards
    d.class_names = detail::class_names_for(d.model, d.data);
    d.cache_dir = d.opts.cache_dir.empty() ? fs::path(default_model_path()).parent_path().string()
                                           : d.opts.cache_dir;
    d.upload_dir = fs::temp_directory_path() /
                   ("convscope-uploads-" + std::to_string(::getpid()) + "-" +
                    std::to_string(reinterpret_cast<uintptr_t>(this) & 0xffffff));
    // The last 256 finished jobs (and their results) kept for late pollers.
    d.jobs = std::make_unique<detail::JobQueue>(d.opts.workers, static_cast<size_t>(d.opts.max_queued_jobs), 256,
                                                  d.opts.max_job_seconds);
    if (!d.opts.map_path.empty()) d.map = std::make_shared<const DatasetMap>(read_dataset_map(d.opts.map_path, d.data));
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
    for (const auto& l : d.layers)  // attention probabilities have their own view
        if (!l.output_shape.empty() && l.layout.kind != LayoutKind::Attention && (all || l.depth == 0))
            shown.push_back(l.name);
    j["default_layers"] = shown;
    j["attribution_methods"] = attribution_methods_for(d.model);
    // Transformers with attention over all tokens get the attention view.
    j["attention"] = rollout_applies(d.model);
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
            {"map_items", d.opts.map_path.empty() ? std::min<int64_t>(d.opts.map_items, d.data.size()) : d.map->size()},
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
    // The size from the header, before any pixel is decoded.
    const std::optional<ImageSize> declared = image_size_from_header(bytes);
    if (!declared)
        throw UnsupportedMediaError("the upload cannot be decoded as an image (corrupt or truncated " + ext.substr(1) +
                                    "); send a valid image");
    try {
        check_image_pixels(*declared, "the upload");
    } catch (const Error& e) {
        throw TooLargeError(std::string(e.what()) + " (the server's limit)");
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
    if (r.output.dim() == 4) {
        // A segmentation: per class the share of the pixels predicted as it (for the bars), the
        // mean logits, and the predicted classes over the input; clicking there picks a region.
        const at::Tensor out0 = r.output[0].to(torch::kFloat);
        const int64_t k = out0.size(0);
        const at::Tensor share =
            torch::bincount(out0.argmax(0).reshape({-1}), {}, k).to(torch::kFloat) / double(out0[0].numel());
        const at::Tensor mean_logits = out0.mean({1, 2}).contiguous();
        out["output"] = {{"dense", true},
                         {"logits", std::vector<float>(mean_logits.data_ptr<float>(), mean_logits.data_ptr<float>() + k)},
                         {"probs", std::vector<float>(share.data_ptr<float>(), share.data_ptr<float>() + k)},
                         {"predicted", share.argmax().item<int64_t>()},
                         {"size", {out0.size(1), out0.size(2)}},
                         {"segmentation", d.segmentation_url(input, r.output)}};
    } else {
        const at::Tensor logits = r.output.reshape({-1}).to(torch::kFloat);
        const at::Tensor probs = torch::softmax(logits, 0);
        out["output"] = {{"logits", std::vector<float>(logits.data_ptr<float>(), logits.data_ptr<float>() + logits.numel())},
                         {"probs", std::vector<float>(probs.data_ptr<float>(), probs.data_ptr<float>() + probs.numel())},
                         {"predicted", logits.argmax().item<int64_t>()}};
    }
    auto& arr = out["layers"] = json::array();
    for (const auto& name : names) {
        // Tokens and channels-last maps as maps (C,h,w), extra tokens left out.
        const Layout& layout = d.find_layer(name).layout;
        at::Tensor t = layout.spatial() && layout.kind != LayoutKind::Nchw ? as_maps(r.taps.at(name), layout)[0]
                                                                         : r.taps.at(name)[0].to(torch::kFloat);
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
    if (!l.layout.spatial())
        throw Error("layer '" + layer + "' is not spatial (" + layout_summary(l.layout) +
                    "): it has no map to overlay on the input");
    const at::Tensor input = d.input_of(image_id);
    torch::NoGradGuard no_grad;
    const TapResult r = d.model.forward_taps(input, {layer});
    const at::Tensor map = as_maps(r.taps.at(layer), l.layout)[0][channel];
    const cv::Mat base = detail::readable(detail::input_picture(d.pre, input[0]), kPictureTarget);
    return png_bytes(overlay_map(base, map, Colormap::Viridis, value_range(map), 0.6f));
}

// --- jobs -----------------------------------------------------------------------------------

json Explorer::map_points(bool with_points) const {
    const Impl& d = *impl_;
    std::lock_guard<std::mutex> lock(d.map_mutex);
    if (!d.map)
        throw NotFoundError("the dataset map is not computed yet: start a job {\"kind\": \"map\"}");
    const DatasetMap& m = *d.map;
    json colours = json::array();
    for (size_t c = 0; c < std::max<size_t>(d.class_names.size(), 1); ++c)
        colours.push_back(colour_json(category_colour(int64_t(c))));
    json j = {{"n", m.size()},
              {"layer", m.layer},
              {"source", m.source.empty() ? "computed" : "file"},
              {"points", "/api/map/points"},
              {"class_names", d.class_names},
              {"class_colours", colours},
              {"unknown_colour", colour_json(category_colour(-1))}};
    if (with_points) {
        j["x"] = m.x;
        j["y"] = m.y;
        j["labels"] = m.labels;
        j["items"] = m.items;
    }
    return j;
}

std::string Explorer::map_bytes() const {
    const Impl& d = *impl_;
    std::lock_guard<std::mutex> lock(d.map_mutex);
    if (!d.map)
        throw NotFoundError("the dataset map is not computed yet: start a job {\"kind\": \"map\"}");
    return dataset_map_bytes(*d.map);
}

}  // namespace convscope
