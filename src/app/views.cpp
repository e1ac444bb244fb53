// Pictures shared by the web explorer and the HTML report, drawn with render.hpp.
#include "convscope/app/views.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::detail {

std::vector<std::string> class_names_for(const Model& model, const Dataset& data) {
    if (!model.meta().class_names.empty()) return model.meta().class_names;
    return data.class_names();
}

cv::Mat input_picture(const Preprocess& pre, const at::Tensor& input_chw) {
    const at::Tensor display = pre.to_display(input_chw.unsqueeze(0));
    return image_from_hwc_uint8(display[0]);
}

cv::Mat readable(const cv::Mat& img, int target_px) {
    const int f = readable_factor(img.rows, img.cols, target_px);
    return f > 1 ? upscale_nearest(img, f) : img;
}

namespace {
// Layers that keep each channel where it is (so a channel still "is" the conv's filter).
bool per_channel_type(const std::string& type) {
    static const std::set<std::string> types = {
        "BatchNorm2d", "BatchNorm1d", "ReLU",    "ReLU6",   "LeakyReLU", "ELU",
        "GELU",        "SiLU",        "Sigmoid", "Tanh",    "Dropout",   "Dropout2d",
        "Identity",    "Hardtanh",    "Hardswish", "PReLU", "Mish",      "CELU", "SELU"};
    return types.count(type) > 0;
}
}  // namespace

std::string filter_layer_for(const Model& model, const std::string& layer) {
    const auto& layers = model.layers();
    size_t at = layers.size();
    for (size_t i = 0; i < layers.size(); ++i)
        if (layers[i].name == layer) at = i;
    if (at == layers.size()) return "";
    if (layers[at].is_conv) return layer;
    if (!per_channel_type(layers[at].type)) return "";
    const auto shape = layers[at].output_shape;
    for (size_t i = at; i-- > 0;) {
        const LayerInfo& l = layers[i];
        if (l.output_shape != shape) return "";
        if (l.is_conv) return l.name;
        if (!per_channel_type(l.type)) return "";
    }
    return "";
}

namespace {

// A map [H,W] as a heatmap with its colour bar (enlarged by factor) and over the input.
HeatPictures heat_pictures(const cv::Mat& base_rgb, const at::Tensor& map, Colormap cmap, Range range,
                           int factor) {
    HeatPictures p;
    p.factor = factor;
    p.heat = heat_with_colorbar(upscale_nearest(apply_colormap(map, cmap, range), factor), cmap, range);
    p.overlay = overlay_map(base_rgb, map, cmap, range, 0.55f);
    return p;
}

}  // namespace

HeatPictures occlusion_pictures(const cv::Mat& base_rgb, const OcclusionResult& r, int64_t n,
                                int factor) {
    // The map is the same for every input channel: channel 0 is the picture.
    const at::Tensor map = r.occlusion[n][0];
    return heat_pictures(base_rgb, map, Colormap::Diverging, symmetric_range(map), factor);
}

Range attribution_range(AttributionMethod method, const at::Tensor& heat_hw) {
    if (method == AttributionMethod::Rise) return value_range(heat_hw);
    return {0.f, is_cam_method(method) ? value_range(heat_hw).hi : percentile_range(heat_hw, 0, 99.5).hi};
}

HeatPictures attribution_pictures(const cv::Mat& base_rgb, const AttributionResult& r, int64_t n,
                                  int factor) {
    const at::Tensor heat = r.heat[n];
    return heat_pictures(base_rgb, heat, Colormap::Inferno, attribution_range(r.method, heat), factor);
}

std::vector<std::string> layers_with_output(const Model& model) {
    std::vector<std::string> out;
    for (const auto& l : model.layers())
        if (!l.output_shape.empty()) out.push_back(l.name);
    return out;
}

namespace {
double round4(double v) {
    if (v == 0 || !std::isfinite(v)) return 0.0;  // probabilities: finite
    const double scale = std::pow(10.0, 3 - std::floor(std::log10(std::fabs(v))));
    return std::round(v * scale) / scale;
}
nlohmann::json rows(const at::Tensor& t) {  // [T,G] -> flat list
    const at::Tensor c = t.to(torch::kDouble).contiguous();
    const double* p = c.data_ptr<double>();
    nlohmann::json out = nlohmann::json::array();
    for (int64_t i = 0; i < c.numel(); ++i) out.push_back(round4(p[i]));
    return out;
}
}  // namespace

nlohmann::json attention_view(const AttentionResult& a, int64_t n, const at::Tensor& rollout_hw, int64_t max_values) {
    std::vector<const LayerAttention*> global;
    for (const auto& l : a.layers)
        if (l.layout.window == 0 && l.layout.grid_h > 0) global.push_back(&l);
    if (global.empty()) return nullptr;
    const Layout& l0 = global.back()->layout;
    const int64_t grid = l0.grid_h * l0.grid_w, t = global.back()->probs.size(2);
    const int64_t per_head = t * grid;
    // Per-head rows where they fit; else head means only, of the last layers that fit.
    int64_t heads_total = 0;
    for (const auto* l : global) heads_total += (l->layout.heads + 1) * per_head;
    const bool with_heads = heads_total <= max_values;
    size_t first = 0;
    if (!with_heads)
        while (first < global.size() && int64_t(global.size() - first) * per_head > max_values) ++first;
    nlohmann::json j = {{"grid", {l0.grid_h, l0.grid_w}}, {"extra_front", l0.extra_front}, {"tokens", t},
                        {"layers", nlohmann::json::array()}, {"heads_shown", with_heads}};
    for (size_t i = first; i < global.size(); ++i) {
        const LayerAttention& l = *global[i];
        if (l.probs.size(2) != t || l.layout.grid_h * l.layout.grid_w != grid) continue;
        const at::Tensor p = l.probs[n].narrow(2, l.layout.extra_front, grid);  // [heads,T,G]
        nlohmann::json heads = nlohmann::json::array();
        if (with_heads)
            for (int64_t h = 0; h < p.size(0); ++h) heads.push_back(rows(p[h]));
        j["layers"].push_back({{"name", l.layer}, {"heads", heads}, {"mean", rows(p.mean(0))}});
    }
    if (rollout_hw.defined()) j["rollout"] = rows(rollout_hw[n]);
    return j;
}

}  // namespace convscope::detail
