// The explorer's jobs: requests parsed and checked, one handler per kind (occlusion,
// attribution, feature visualisation, top patches, the dataset map), and the scan and the map
// computed once and cached on disk. The queue that runs them: job_queue.cpp.
#include "app/detail/explorer_impl.hpp"

#include <opencv2/imgproc.hpp>

namespace convscope {

Explorer::Impl::Request Explorer::Impl::parse(const json& j) const {
    if (!j.is_object()) throw Error("a job request must be a JSON object with a \"kind\"");
    Request r;
    r.kind = get_string(j, "kind", "", true);
    if (r.kind == "occlusion" || r.kind == "attribution" || r.kind == "evaluate") {
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
        } else if (r.kind == "evaluate") {
            r.key = "evaluate|" + r.image;
        } else {
            r.method = get_string(j, "method", "saliency");
            (void)parse_attribution_method(r.method);  // UsageError listing the names
            r.layer = get_string(j, "layer", "");
            if (!r.layer.empty()) (void)find_layer(r.layer);
            r.key = "attribution|" + r.image + "|" + r.method + "|" + r.layer;
        }
        parse_target_fields(j, r);
        r.key += "|" + r.target + "|" + r.region + "|" + std::to_string(r.at_y) + "," + std::to_string(r.at_x);
    } else if (r.kind == "feature-vis" || r.kind == "patches") {
        r.layer = get_string(j, "layer", "", true);
        r.channel = get_int(j, "channel", 0, true);
        const LayerInfo& l = find_layer(r.layer);
        check_channel(l, r.channel);
        r.key = r.kind + "|" + r.layer + "|" + std::to_string(r.channel);
    } else if (r.kind == "map") {
        r.key = "map";
    } else if (r.kind == "attention") {
        r.image = get_string(j, "image", "", true);
        r.input = input_of(r.image);
        (void)rollout_layers(model);  // Error for a model without attention over all tokens
        r.key = "attention|" + r.image;
    } else {
        throw Error("unknown job kind '" + r.kind +
                    "': use occlusion, attribution, evaluate, attention, feature-vis, patches or map");
    }
    // Uploaded images are keyed by content, dataset items by index: equal keys, equal work.
    return r;
}

void Explorer::Impl::parse_target_fields(const json& j, Request& r) const {
    r.target = get_string(j, "target", "pred");
    const Target t = parse_target(r.target);
    if (t.kind != Target::Kind::Predicted && t.kind != Target::Kind::Class)
        throw Error("\"target\" must be pred or a class number, got '" + r.target + "'");
    r.region = get_string(j, "region", "pred");
    if (r.region.rfind("mask:", 0) == 0)
        throw Error("a request cannot name a mask file: click a region (\"at\": [y, x]) or give a box");
    (void)parse_region(r.region);
    const json& at = field(j, "at");
    if (at.is_null()) return;
    if (!at.is_array() || at.size() != 2 || !at[0].is_number_integer() || !at[1].is_number_integer())
        throw Error("\"at\" must be [y, x], an output pixel (two integers)");
    const std::vector<OutputInfo> outputs = model.outputs();
    const OutputInfo* chosen = nullptr;
    for (const auto& o : outputs)
        if (o.chosen) chosen = &o;
    if (!chosen || chosen->shape.size() != 3)
        throw Error("\"at\" picks a region of a dense output [K,H,W] (segmentation); this model's output is "
                    "not one: leave \"at\" out");
    r.at_y = at[0].get<int64_t>();
    r.at_x = at[1].get<int64_t>();
    const int64_t h = chosen->shape[1], w = chosen->shape[2];
    if (r.at_y < 0 || r.at_y >= h || r.at_x < 0 || r.at_x >= w)
        throw Error("\"at\" [" + std::to_string(r.at_y) + ", " + std::to_string(r.at_x) + "] is outside the output, which is " +
                    std::to_string(h) + " high and " + std::to_string(w) + " wide");
}

at::Tensor Explorer::Impl::clean_output(const Request& r) const {
    torch::NoGradGuard no_grad;
    return model.forward(r.input).detach();
}

Target Explorer::Impl::target_of(const Request& r, const at::Tensor& clean) const {
    Target t = parse_target(r.target);
    t.region = parse_region(r.region);
    if (r.at_y < 0) return t;
    const at::Tensor predicted = clean[0].argmax(0).to(torch::kInt).contiguous();  // [H,W]
    const int64_t c = predicted[r.at_y][r.at_x].item<int64_t>();
    // The connected pixels (4-neighbours) predicted as the clicked pixel's class.
    cv::Mat same = cv::Mat(int(predicted.size(0)), int(predicted.size(1)), CV_32S, predicted.data_ptr<int>()) == int(c);
    cv::Mat labels;
    cv::connectedComponents(same, labels, 4, CV_32S);
    const int component = labels.at<int>(int(r.at_y), int(r.at_x));
    at::Tensor mask = torch::from_blob(labels.data, {labels.rows, labels.cols}, torch::kInt).eq(component).clone();
    t.kind = Target::Kind::Class;
    t.class_index = c;
    t.region.kind = Region::Kind::Mask;
    t.region.mask = mask;
    t.region.mask_path = "clicked at " + std::to_string(r.at_y) + "," + std::to_string(r.at_x);
    return t;
}

std::string Explorer::Impl::segmentation_url(const at::Tensor& input, const at::Tensor& out,
                                             const at::Tensor& region_hw) const {
    if (out.dim() != 4) return "";
    const cv::Mat base = detail::readable(detail::input_picture(pre, input[0]), kPictureTarget);
    return png_url(segmentation_overlay(base, out[0].argmax(0), region_hw));
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
        if (map) return;
    }
    static std::mutex compute_mutex;  // one map computation at a time
    std::lock_guard<std::mutex> compute(compute_mutex);
    {
        std::lock_guard<std::mutex> lock(map_mutex);
        if (map) return;
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
    xy = xy.to(torch::kFloat).contiguous();
    auto m = std::make_shared<DatasetMap>();
    const float* p = xy.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
        m->x.push_back(p[2 * i]);
        m->y.push_back(p[2 * i + 1]);
        m->items.push_back(int32_t(i));
        m->labels.push_back(int32_t(data.label(i)));
    }
    m->layer = layer;
    std::lock_guard<std::mutex> lock(map_mutex);
    map = std::move(m);
}

void Explorer::Impl::add_region(json& j, const Request& r, const Target& t, const at::Tensor& out) const {
    if (out.dim() != 4) return;
    const TargetScorer scorer(model, t, out);
    j["region"] = region_name(t.region);
    j["region_pixels"] = (scorer.region_weights()[0] > 0).sum().item<int64_t>();
    j["segmentation"] = segmentation_url(r.input, out, scorer.region_weights()[0] > 0);
}

json Explorer::Impl::run_occlusion(const Request& r, const ProgressFn& progress) {
    const int factor = readable_factor(int(r.input.size(2)), int(r.input.size(3)), kPictureTarget);
    OcclusionOptions oo;
    oo.patch_h = oo.patch_w = r.patch;
    oo.stride_y = oo.stride_x = r.stride;
    oo.baseline = parse_baseline(r.baseline);
    const at::Tensor clean = clean_output(r);
    oo.target = target_of(r, clean);
    oo.target.score = Score::Prob;
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
    add_region(j, r, oo.target, clean);
    return j;
}

json Explorer::Impl::run_attribution(const Request& r, const ProgressFn& progress) {
    const int factor = readable_factor(int(r.input.size(2)), int(r.input.size(3)), kPictureTarget);
    AttributionOptions ao;
    ao.method = parse_attribution_method(r.method);
    ao.layer = r.layer;
    ao.samples = 25;
    ao.steps = 32;
    ao.masks = 1000;  // a live view: RISE's map is already clear with this many masks
    const at::Tensor clean = clean_output(r);
    ao.target = target_of(r, clean);
    const AttributionResult res = attribute(model, r.input, ao, context(progress));
    const cv::Mat base = upscale_nearest(detail::input_picture(pre, r.input[0]), factor);
    const detail::HeatPictures p = detail::attribution_pictures(base, res, 0, factor);
    json j = {{"method", r.method},
              {"layer", res.layer},
              {"target", res.targets[0]},
              {"target_name", class_name(class_names, res.targets[0])},
              {"score", res.scores[0].item<double>()},
              {"overlay", png_url(p.overlay)},
              {"heat", png_url(p.heat)}};
    add_region(j, r, ao.target, clean);
    return j;
}

json Explorer::Impl::run_evaluate(const Request& r, const ProgressFn& progress) {
    // Every method on this input, with the metrics that cost a few hundred forward passes: the
    // deletion and insertion curves and the random-logit check (the randomisation checks and the
    // rest: convscope evaluate).
    EvaluationOptions eo;
    eo.metrics = {Metric::Deletion, Metric::Insertion, Metric::RandomLogit};
    eo.steps = std::min<int>(kEvaluateSteps, int(r.input.size(2) * r.input.size(3)));
    eo.explain.attribution.samples = 25;
    eo.explain.attribution.steps = 32;
    const at::Tensor clean = clean_output(r);
    eo.explain.target = target_of(r, clean);
    eo.explain.target.score = Score::Prob;
    const EvaluationResult res = evaluate(model, r.input, eo, context(progress));
    json rows = json::array();
    for (const auto& c : res.columns) {
        json row = {{"metric", c.name}, {"higher_is_better", c.higher_is_better}, {"meaning", c.meaning},
                    {"ranking", res.ranking(c)}};
        for (const auto& [m, v] : res.means(c)) row["value"][m] = std::isfinite(v) ? json(v) : json(nullptr);
        rows.push_back(row);
    }
    json curves = json::array();
    for (const char* name : {"deletion_morf", "insertion_morf"}) {
        std::vector<at::Tensor> cs;
        for (const auto& m : res.methods) cs.push_back(res.curves.at(m).curves.at(name)[0]);
        curves.push_back({{"name", name}, {"picture", png_url(line_plot(torch::stack(cs), 420, 220, res.methods))}});
    }
    json j = {{"methods", res.methods}, {"rows", rows}, {"curves", curves}, {"steps", eo.steps},
              {"target", res.targets[0]}, {"target_name", class_name(class_names, res.targets[0])}};
    add_region(j, r, eo.explain.target, clean);
    return j;
}

json Explorer::Impl::run_attention(const Request& r, const ProgressFn& progress) {
    // Every query's attention per layer and head over the grid, and the class token's rollout.
    AttentionOptions ao;
    ao.layers = rollout_layers(model);
    const AttentionResult a = attention(model, r.input, ao, context(progress));
    std::vector<at::Tensor> probs;
    for (const auto& l : a.layers) probs.push_back(l.probs);
    const at::Tensor rollout = attention_rollout(probs, a.layers.back().layout, {});
    json j = detail::attention_view(a, 0, rollout, kAttentionValues);
    j["input"] = png_url(detail::readable(detail::input_picture(pre, r.input[0]), kPictureTarget));
    return j;
}

json Explorer::Impl::run_feature_vis(const Request& r, const ProgressFn& progress) {
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

json Explorer::Impl::run_patches(const Request& r, const ProgressFn& progress) {
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

json Explorer::Impl::run_map(const Request&, const ProgressFn& progress) {
    ensure_map(progress);
    std::lock_guard<std::mutex> lock(map_mutex);
    return {{"n", map->size()}, {"layer", map->layer}};
}

json Explorer::Impl::execute(const Request& r, const ProgressFn& progress) {
    using Handler = json (Impl::*)(const Request&, const ProgressFn&);
    static const std::map<std::string, Handler> handlers = {
        {"occlusion", &Impl::run_occlusion}, {"attribution", &Impl::run_attribution}, {"evaluate", &Impl::run_evaluate},
        {"attention", &Impl::run_attention},
        {"feature-vis", &Impl::run_feature_vis}, {"patches", &Impl::run_patches}, {"map", &Impl::run_map}};
    const auto it = handlers.find(r.kind);
    CONVSCOPE_CHECK(it != handlers.end(), "parse() admits only the kinds with a handler");
    return (this->*(it->second))(r, progress);
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

}  // namespace convscope
