#include "convscope/methods/activations.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <functional>
#include <exception>
#include <set>
#include <thread>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "convscope/runtime/model.hpp"

namespace convscope {

namespace {

// Channels of one input ordered by mean, largest first; ties keep the lower index first.
std::vector<int64_t> by_mean(const float* means, int64_t c) {
    std::vector<int64_t> idx(static_cast<size_t>(c));
    for (int64_t i = 0; i < c; ++i) idx[static_cast<size_t>(i)] = i;
    std::stable_sort(idx.begin(), idx.end(), [&](int64_t a, int64_t b) {
        // NaN means sort last.
        const float x = means[a], y = means[b];
        if (std::isnan(x) || std::isnan(y)) return !std::isnan(x) && std::isnan(y);
        return x > y;
    });
    return idx;
}

// Per-channel statistics of one layer's values.
void compute_stats(LayerActivations& la) {
    const at::Tensor& v = la.values;
    if (v.dim() == 4) {
        const at::Tensor x = v.reshape({v.size(0), v.size(1), -1});
        la.channel_mean = x.mean(2);
        la.channel_max = std::get<0>(x.max(2));
        la.channel_active = (x > 0).to(torch::kFloat).mean(2);
    } else {
        la.channel_mean = v.clone();
        la.channel_max = v.clone();
        la.channel_active = (v > 0).to(torch::kFloat);
    }
    // Every input has the same number of positions, so the mean of means is the overall mean.
    la.mean = la.channel_mean.mean(0);
    la.max = std::get<0>(la.channel_max.max(0));
    la.active = la.channel_active.mean(0);
}

// Runs work(i) for i in [0, n) on up to `threads` threads, taking items from a shared counter so
// big and small items balance; rethrows the first error in item order.
void run_parallel(int64_t n, int threads, const std::function<void(int64_t)>& work) {
    if (n <= 0) return;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(n));
    std::atomic<int64_t> next{0};
    auto loop = [&]() {
        for (int64_t i = next++; i < n; i = next++) {
            try {
                work(i);
            } catch (...) {
                errors[static_cast<size_t>(i)] = std::current_exception();
            }
        }
    };
    const int workers = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, n)));
    std::vector<std::thread> pool;
    for (int t = 1; t < workers; ++t) pool.emplace_back(loop);
    loop();
    for (auto& t : pool) t.join();
    for (const auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace

namespace {
constexpr EnumTable<ActivationScale, 2> kScaleNames = {{{ActivationScale::Layer, "layer"}, {ActivationScale::Tile, "tile"}}};
constexpr EnumTable<ChannelOrder, 2> kOrderNames = {{{ChannelOrder::Index, "index"}, {ChannelOrder::Mean, "mean"}}};
}  // namespace

const char* activation_scale_name(ActivationScale s) { return enum_name(kScaleNames, s); }
const char* channel_order_name(ChannelOrder o) { return enum_name(kOrderNames, o); }
ActivationScale parse_activation_scale(const std::string& name) { return parse_enum(kScaleNames, name, "scale"); }
ChannelOrder parse_channel_order(const std::string& name) { return parse_enum(kOrderNames, name, "channel order"); }

namespace {

// The layers to show: opt.layers (checked), or every layer with a C,H,W or F output (the others
// listed in skipped).
std::vector<std::string> select_layers(const Model& model, const ActivationsOptions& opt,
                                       std::vector<std::string>& skipped) {
    std::vector<std::string> names;
    if (opt.layers.empty()) {
        for (const auto& l : model.layers()) {
            if (l.layout.spatial() || l.output_shape.size() == 1) names.push_back(l.name);
            else skipped.push_back(l.name + ": output " + detail::shape_str(l.output_shape) + " laid out as " +
                                   layout_summary(l.layout) + " is neither maps nor a vector");
        }
        if (names.empty())
            throw Error("the model has no layer with a C,H,W or F output to show");
    } else {
        std::set<std::string> seen;
        for (const auto& n : opt.layers) {
            const LayerInfo& l = model.layer(n);  // throws for unknown names, with the closest ones
            if (!l.layout.spatial() && l.output_shape.size() != 1)
                throw Error("layer '" + n + "' gives outputs of shape " + detail::shape_str(l.output_shape) +
                            " laid out as " + layout_summary(l.layout) +
                            ": activations shows maps (C,H,W, channels-last H,W,C, or tokens on a patch grid) and "
                            "F-vectors only; for tokens whose grid is not found pass --grid HxW, else pick another layer");
            if (seen.insert(n).second) names.push_back(n);
        }
    }

    return names;
}

// A layer's values, statistics, colour range and channel orders from its tap [N,...].
LayerActivations layer_activations(const LayerInfo& layer, const at::Tensor& tap, const ActivationsOptions& opt) {
    LayerActivations la;
    const std::string& name = layer.name;
    la.name = name;
    la.layout = layer.layout;
    if (layer.layout.spatial() && layer.layout.kind != LayoutKind::Nchw) {
        // Channels-last maps and tokens: the same view every method uses, extra tokens aside.
        la.values = as_maps(tap.to(torch::kCPU), layer.layout);
        la.extra_tokens = extra_tokens(tap.to(torch::kCPU), layer.layout).contiguous();
    } else {
        la.values = tap.to(torch::kCPU, torch::kFloat).contiguous();
    }
    if (la.values.dim() != 4 && la.values.dim() != 2)
        throw Error("layer '" + name + "' gave outputs of shape " + detail::shape_str(la.values.sizes().vec()) +
                    " for this input: activations shows C,H,W feature maps and F-vectors only");
    la.spatial = la.values.dim() == 4 && la.values.size(2) * la.values.size(3) > 1;
    compute_stats(la);
    la.range = auto_range(opt.colormap, la.values);
    const int64_t c = la.values.size(1);
    const at::Tensor means = la.channel_mean.contiguous();
    for (int64_t n = 0; n < la.values.size(0); ++n) {
        const float* m = means.data_ptr<float>() + n * c;
        std::vector<int64_t> sorted = by_mean(m, c);
        la.strongest.emplace_back(sorted.begin(),
                                  sorted.begin() + std::min<int64_t>(opt.top_channels, c));
        if (opt.order == ChannelOrder::Mean) {
            la.order.push_back(std::move(sorted));
        } else {
            std::vector<int64_t> idx(static_cast<size_t>(c));
            for (int64_t i = 0; i < c; ++i) idx[static_cast<size_t>(i)] = i;
            la.order.push_back(std::move(idx));
        }
    }
    return la;
}

// The pictures: per input and layer the channel grid (or bar strip), the picture beside the
// input and the overlay of the strongest channels.
void make_pictures(const at::Tensor& images_nchw, const ActivationsOptions& opt, ActivationsResult& result) {
    const int64_t n_inputs = images_nchw.size(0);
    // Inputs as pictures (only 1- or 3-channel inputs can be shown).
    const int64_t in_c = images_nchw.size(1), in_h = images_nchw.size(2), in_w = images_nchw.size(3);
    std::vector<cv::Mat> overlay_bases(static_cast<size_t>(n_inputs));
    result.inputs.resize(static_cast<size_t>(n_inputs));
    if (in_c == 1 || in_c == 3) {
        const at::Tensor display = opt.preprocess.to_display(images_nchw);
        const int factor = readable_factor(static_cast<int>(in_h), static_cast<int>(in_w), opt.overlay_px);
        for (int64_t n = 0; n < n_inputs; ++n) {
            result.inputs[static_cast<size_t>(n)] = image_from_hwc_uint8(display[n]);
            if (opt.overlays) overlay_bases[static_cast<size_t>(n)] = upscale_nearest(result.inputs[static_cast<size_t>(n)], factor);
        }
    }

    for (auto& la : result.layers) {
        la.grids.resize(static_cast<size_t>(n_inputs));
        la.pictures.resize(static_cast<size_t>(n_inputs));
        if (la.spatial && opt.overlays) la.overlays.resize(static_cast<size_t>(n_inputs));
    }

    // One picture set per (layer, input), in parallel: they share only read-only data.
    const int64_t n_layers = static_cast<int64_t>(result.layers.size());
    const cv::Scalar separator = separator_colour_for(opt.colormap);
    auto make = [&](int64_t item) {
        LayerActivations& la = result.layers[static_cast<size_t>(item / n_inputs)];
        const int64_t n = item % n_inputs;
        const auto& order = la.order[static_cast<size_t>(n)];
        const at::Tensor v = la.values[n];
        cv::Mat grid;
        if (la.spatial) {
            const int factor = readable_factor(static_cast<int>(v.size(1)), static_cast<int>(v.size(2)), opt.tile_px);
            std::vector<cv::Mat> tiles;
            tiles.reserve(order.size());
            for (int64_t ch : order) {
                const at::Tensor map = v[ch];
                const Range r = opt.scale == ActivationScale::Layer ? la.range : auto_range(opt.colormap, map);
                tiles.push_back(upscale_nearest(apply_colormap(map, opt.colormap, r), factor));
            }
            grid = tile_grid(tiles, 0, 1, separator);
            if (opt.overlays && !overlay_bases[static_cast<size_t>(n)].empty()) {
                at::Tensor sum = torch::zeros({v.size(1), v.size(2)});
                for (int64_t ch : la.strongest[static_cast<size_t>(n)]) sum += v[ch];
                la.overlays[static_cast<size_t>(n)] = overlay_map(overlay_bases[static_cast<size_t>(n)], sum,
                                                                  opt.colormap, auto_range(opt.colormap, sum),
                                                                  opt.overlay_alpha);
            }
        } else {
            const at::Tensor units = v.reshape({-1}).index_select(0, torch::tensor(order, torch::kLong));
            const bool narrow = units.numel() > 256;
            grid = bar_strip(units, opt.bar_height, opt.colormap, narrow ? 1 : 3, narrow ? 0 : 1);
        }
        const cv::Mat& input = result.inputs[static_cast<size_t>(n)];
        la.pictures[static_cast<size_t>(n)] =
            input.empty() ? grid.clone()
                          : side_by_side({resize_to_fit(input, std::min(grid.rows, opt.input_px)), grid}, 4);
        la.grids[static_cast<size_t>(n)] = std::move(grid);
    };
    run_parallel(n_layers * n_inputs, std::max(1, at::get_num_threads()), make);
}

}  // namespace

ActivationsResult activations(const Model& model, const at::Tensor& images_nchw,
                              const ActivationsOptions& opt, const RunContext& context) {
    const ThreadScope threads(context);
    const ProgressFn& progress = context.progress;
    if (opt.tile_px < 1 || opt.bar_height < 1 || opt.overlay_px < 1 || opt.input_px < 1)
        throw UsageError("tile_px, bar_height, overlay_px and input_px must be >= 1");
    if (opt.top_channels < 1) throw UsageError("the overlay needs at least 1 channel (top_channels >= 1)");
    check_input(model, images_nchw);
    ActivationsResult result;
    const std::vector<std::string> names = select_layers(model, opt, result.skipped);

    // One forward pass with all taps.
    report_progress(progress, 0.0);
    TapResult taps = model.forward_taps(images_nchw, names);
    result.output = taps.output;
    report_progress(progress, 0.4);
    for (const auto& name : names) result.layers.push_back(layer_activations(model.layer(name), taps.taps.at(name), opt));
    taps.taps.clear();
    if (opt.pictures) make_pictures(images_nchw, opt, result);
    report_progress(progress, 1.0);
    return result;
}

}  // namespace convscope
