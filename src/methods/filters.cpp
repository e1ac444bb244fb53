#include "convscope/methods/filters.hpp"

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <optional>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace jit = torch::jit;

namespace {

std::string shape_str(at::IntArrayRef s) { return detail::shape_str(s.vec()); }

std::string type_name(const jit::Module& m) {
    const auto& qn = m.type()->name();
    return qn ? qn->name() : std::string("Module");
}

// The module's own `weight` parameter, or an undefined tensor.
at::Tensor weight_of(const jit::Module& m) {
    for (const auto& p : m.named_parameters(/*recurse=*/false))
        if (p.name == "weight") return p.value.detach();
    return {};
}

std::string spatial_list(const Model& model) {
    const auto names = spatial_weight_layers(model);
    if (names.empty()) return "this model has no layer with spatial (4-D) weights";
    return "layers with spatial weights: " + detail::join(names, ", ");
}

std::vector<int64_t> checked_indices(const std::vector<int64_t>& wanted, int64_t n,
                                     const std::string& layer, const char* noun, const char* option) {
    if (wanted.empty()) {
        std::vector<int64_t> all(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
        return all;
    }
    for (int64_t i : wanted)
        if (i < 0 || i >= n)
            throw Error(std::string(noun) + " " + std::to_string(i) + " is out of range: layer '" + layer +
                        "' has " + std::to_string(n) + " " + noun + "s (0.." + std::to_string(n - 1) +
                        "); choose others with " + option);
    return wanted;
}

at::Tensor index_tensor(const std::vector<int64_t>& v) {
    return torch::tensor(v, torch::kLong);
}

double max_abs(const at::Tensor& t) {
    return t.numel() ? t.abs().max().item<double>() : 0.0;
}

// Near-square grid size for n cells of w x h with gap px between cells.
cv::Size grid_size(int64_t n, int64_t cell_w, int64_t cell_h, int64_t gap) {
    const int64_t cols = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(n))));
    const int64_t rows = (n + cols - 1) / cols;
    return cv::Size(static_cast<int>(cols * cell_w + (cols - 1) * gap),
                    static_cast<int>(rows * cell_h + (rows - 1) * gap));
}

// FilterStats::noise for filters [F, C, kh, kw] float64, batched: one FFT call for all slices.
std::vector<double> noise_scores(const at::Tensor& w) {
    const int64_t f = w.size(0), kh = w.size(2), kw = w.size(3);
    std::vector<double> out(static_cast<size_t>(f), 0.0);
    if (f == 0 || w.size(1) == 0 || kh * kw == 1) return out;
    const auto opts = torch::TensorOptions().dtype(torch::kDouble);
    const at::Tensor centred = w - w.mean({2, 3}, /*keepdim=*/true);
    // Least-squares plane: on a full grid the centred coordinates are orthogonal to each other
    // and to the constant, so each slope is a plain projection.
    at::Tensor residual = centred;
    if (kh > 1) {
        const at::Tensor y = (torch::arange(kh, opts) - (kh - 1) / 2.0).view({1, 1, kh, 1});
        const at::Tensor b = (centred * y).sum({2, 3}, true) / ((y * y).sum() * kw);
        residual = residual - b * y;
    }
    if (kw > 1) {
        const at::Tensor x = (torch::arange(kw, opts) - (kw - 1) / 2.0).view({1, 1, 1, kw});
        const at::Tensor c = (centred * x).sum({2, 3}, true) / ((x * x).sum() * kh);
        residual = residual - c * x;
    }
    // High-frequency mask: normalised radial frequency above 0.5 (1 = Nyquist on an axis).
    auto signed_freq = [](int64_t u, int64_t n) {
        return u <= n / 2 ? static_cast<double>(u) / n : static_cast<double>(u) / n - 1.0;
    };
    at::Tensor mask = torch::zeros({kh, kw}, opts);
    auto m = mask.accessor<double, 2>();
    for (int64_t u = 0; u < kh; ++u)
        for (int64_t v = 0; v < kw; ++v) {
            const double fu = signed_freq(u, kh), fv = signed_freq(v, kw);
            m[u][v] = 2.0 * std::sqrt(fu * fu + fv * fv) > 0.5 ? 1.0 : 0.0;
        }
    const at::Tensor power = torch::fft::fft2(residual).abs().pow(2);
    // Parseval: sum over all bins of |R|^2 / (kh*kw) = sum of r^2.
    const at::Tensor high = (power * mask).sum({1, 2, 3}) / static_cast<double>(kh * kw);
    const at::Tensor total = centred.pow(2).sum({1, 2, 3});
    const at::Tensor raw = w.pow(2).sum({1, 2, 3});
    const auto h = high.accessor<double, 1>(), t = total.accessor<double, 1>(), r = raw.accessor<double, 1>();
    for (int64_t i = 0; i < f; ++i) {
        // Constant slices leave rounding noise only: treat as no mean-free energy.
        if (!(t[i] > 1e-20 * r[i]) || t[i] <= 0) continue;
        out[static_cast<size_t>(i)] = std::clamp(h[i] / t[i], 0.0, 1.0);
    }
    return out;
}

}  // namespace

std::vector<std::string> spatial_weight_layers(const Model& model) {
    std::vector<std::string> out;
    for (const auto& item : model.module().named_modules()) {
        if (item.name.empty()) continue;
        const at::Tensor w = weight_of(item.value);
        if (w.defined() && w.dim() == 4) out.push_back(item.name);
    }
    return out;
}

namespace {
constexpr EnumTable<FilterMode, 5> kModeNames = {{{FilterMode::Auto, "auto"},
                                                  {FilterMode::Rgb, "rgb"},
                                                  {FilterMode::Gray, "gray"},
                                                  {FilterMode::Channels, "channels"},
                                                  {FilterMode::Summary, "summary"}}};
constexpr EnumTable<FilterNormalize, 2> kNormalizeNames = {
    {{FilterNormalize::Filter, "filter"}, {FilterNormalize::Layer, "layer"}}};
}  // namespace

const char* filter_mode_name(FilterMode mode) { return enum_name(kModeNames, mode); }
const char* filter_normalize_name(FilterNormalize n) { return enum_name(kNormalizeNames, n); }
FilterMode parse_filter_mode(const std::string& name) { return parse_enum(kModeNames, name, "filter mode"); }
FilterNormalize parse_filter_normalize(const std::string& name) {
    return parse_enum(kNormalizeNames, name, "normalisation");
}

double filter_noise_score(const at::Tensor& filter_ckk) {
    if (!filter_ckk.defined() || filter_ckk.dim() != 3)
        throw Error("filter_noise_score: expected one filter [C,kh,kw], got " +
                    (filter_ckk.defined() ? shape_str(filter_ckk.sizes()) : std::string("nothing")));
    const at::Tensor w = filter_ckk.detach().to(torch::kCPU, torch::kDouble).unsqueeze(0);
    return noise_scores(w)[0];
}

namespace {

struct LayerWeights {
    std::string type;
    std::vector<int64_t> stored_shape;
    at::Tensor w;  // [F, C, kh, kw] float32 CPU
};

// The layer's weights as filters [F, C, kh, kw], with every "cannot show this layer" error.
LayerWeights layer_weights(const Model& model, const std::string& layer, const std::vector<int64_t>& reshape) {
    if (layer.empty())
        throw UsageError("no layer given: choose one with --layer (" + spatial_list(model) + ")");
    std::optional<jit::Module> found;
    std::vector<std::string> names;
    for (const auto& item : model.module().named_modules()) {
        if (item.name.empty()) continue;
        names.push_back(item.name);
        if (item.name == layer) found = item.value;
    }
    if (!found)
        throw Error("unknown layer '" + layer + "'" + detail::closest_names_hint(layer, names) + " (" +
                    spatial_list(model) + ")");

    LayerWeights out;
    out.type = type_name(*found);
    const at::Tensor raw = weight_of(*found);
    if (!raw.defined())
        throw Error("layer '" + layer + "' (" + out.type + ") has no weights to show (" + spatial_list(model) + ")");
    out.stored_shape = raw.sizes().vec();
    at::Tensor w = raw.to(torch::kCPU, torch::kFloat);
    if (w.dim() == 4) {
        if (!reshape.empty())
            throw Error("layer '" + layer + "' (" + out.type + ") already has spatial weights " +
                        shape_str(w.sizes()) + ": reshape (--reshape) is only for Linear layers; drop it");
        // ConvTranspose2d stores [in, out, kh, kw]: show its output channels as the filters.
        if (out.type.find("ConvTranspose") != std::string::npos) w = w.transpose(0, 1);
    } else if (w.dim() == 2) {
        const int64_t inputs = w.size(1);
        if (reshape.empty())
            throw Error("layer '" + layer + "' (" + out.type + ", weights " + shape_str(w.sizes()) +
                        ") has no spatial weights (" + spatial_list(model) + "): pick one of those, or pass "
                        "--reshape C,H,W with C*H*W = " + std::to_string(inputs) +
                        " to show each unit's weights as an image");
        if (reshape.size() != 3)
            throw UsageError("reshape takes three numbers C,H,W, got " + std::to_string(reshape.size()));
        int64_t product = 1;
        for (int64_t d : reshape) {
            if (d < 1) throw UsageError("reshape sizes must be positive, got " + shape_str(reshape));
            product *= d;
        }
        if (product != inputs)
            throw Error("reshape " + shape_str(reshape) + " holds " + std::to_string(product) +
                        " values but each unit of layer '" + layer + "' has " + std::to_string(inputs) +
                        " weights: give C,H,W with C*H*W = " + std::to_string(inputs));
        w = w.reshape({w.size(0), reshape[0], reshape[1], reshape[2]});
    } else {
        throw Error("layer '" + layer + "' (" + out.type + ", weights " + shape_str(w.sizes()) +
                    ") has no spatial weights (" + spatial_list(model) + ")");
    }
    out.w = w;
    return out;
}

}  // namespace

std::vector<int64_t> filter_shape(const Model& model, const std::string& layer,
                                  const std::vector<int64_t>& reshape) {
    return layer_weights(model, layer, reshape).w.sizes().vec();
}

FiltersResult filters(const Model& model, const FiltersOptions& opt) {
    if (opt.upscale < 0) throw UsageError("the upscale factor must be >= 1 (or 0 for automatic)");
    LayerWeights lw = layer_weights(model, opt.layer, opt.reshape);
    FiltersResult r;
    r.layer = opt.layer;
    r.layer_type = lw.type;
    r.weight_shape = lw.stored_shape;
    const at::Tensor& w = lw.w;

    r.filters = checked_indices(opt.filters, w.size(0), opt.layer, "filter", "--filters");
    r.in_channels = checked_indices(opt.in_channels, w.size(1), opt.layer, "input channel", "--in-channels");
    r.weights = w.index_select(0, index_tensor(r.filters))
                    .index_select(1, index_tensor(r.in_channels))
                    .contiguous();
    const at::Tensor& sel = r.weights;
    const int64_t nf = sel.size(0), nc = sel.size(1), kh = sel.size(2), kw = sel.size(3);

    // Mode.
    FilterMode mode = opt.mode;
    if (mode == FilterMode::Auto) {
        if (nc == 3) mode = FilterMode::Rgb;
        else if (nc == 1) mode = FilterMode::Gray;
        else mode = nf * nc <= kAutoMaxSlices ? FilterMode::Channels : FilterMode::Summary;
    }
    if (mode == FilterMode::Rgb && nc != 3)
        throw Error("rgb tiles need 3 input channels but " + std::to_string(nc) + " are shown for layer '" +
                    opt.layer + "': select three with --in-channels or use --mode channels or summary");
    if (mode == FilterMode::Gray && nc != 1)
        throw Error("gray tiles need 1 input channel but " + std::to_string(nc) + " are shown for layer '" +
                    opt.layer + "': select one with --in-channels or use --mode channels or summary");
    r.mode = mode;
    r.upscale = opt.upscale > 0 ? opt.upscale
                                : readable_factor(static_cast<int>(kh), static_cast<int>(kw),
                                                  mode == FilterMode::Channels ? 24 : 64);

    // Refuse pictures nobody can open before making them.
    const int64_t th = kh * r.upscale, tw = kw * r.upscale;
    cv::Size size;
    if (mode == FilterMode::Channels) {
        const cv::Size sub = grid_size(nc, tw, th, 1);
        size = grid_size(nf, sub.width, sub.height, kFilterGroupGap);
    } else {
        size = grid_size(nf, tw, th, 1);
    }
    const int64_t pixels = static_cast<int64_t>(size.width) * size.height;
    if (th > 100000 || tw > 100000 || pixels > opt.max_pixels)
        throw Error("the filter picture of layer '" + opt.layer + "' would be " + std::to_string(size.width) +
                    "x" + std::to_string(size.height) + " pixels (" + std::to_string(nf) + " filters x " +
                    std::to_string(nc) + " input channels of " + std::to_string(kh) + "x" + std::to_string(kw) +
                    "): show fewer with --filters a:b / --in-channels a:b, use --mode summary, or a smaller --upscale");

    // Statistics (double precision).
    const at::Tensor wd = sel.to(torch::kDouble);
    const at::Tensor flat = wd.reshape({nf, -1});
    const at::Tensor l2 = flat.pow(2).sum(1).sqrt();
    const at::Tensor mean = flat.mean(1);
    const at::Tensor sd = (flat - mean.unsqueeze(1)).pow(2).mean(1).sqrt();
    const std::vector<double> noise = noise_scores(wd);
    {
        const auto a = l2.accessor<double, 1>(), b = mean.accessor<double, 1>(), c = sd.accessor<double, 1>();
        for (int64_t i = 0; i < nf; ++i)
            r.stats.push_back(FilterStats{r.filters[static_cast<size_t>(i)], a[i], b[i], c[i],
                                          noise[static_cast<size_t>(i)]});
    }

    // Values shown per filter: the weights, or the per-position norm in Summary mode.
    const at::Tensor shown = mode == FilterMode::Summary ? sel.pow(2).sum(1).sqrt() : sel;  // [F,(C,)kh,kw]
    r.layer_max_abs = static_cast<float>(max_abs(shown));
    auto range_of = [&](int64_t f) {
        const float m = opt.normalize == FilterNormalize::Layer ? r.layer_max_abs
                                                                : static_cast<float>(max_abs(shown[f]));
        return Range{-m, m};
    };

    std::vector<cv::Mat> tiles;
    tiles.reserve(static_cast<size_t>(nf));
    for (int64_t f = 0; f < nf; ++f) {
        const Range range = range_of(f);
        switch (mode) {
        case FilterMode::Rgb:
        case FilterMode::Gray:
            tiles.push_back(upscale_nearest(image_from_chw_float(sel[f], range, Colormap::Gray), r.upscale));
            break;
        case FilterMode::Summary:
            tiles.push_back(upscale_nearest(apply_colormap(shown[f], Colormap::Diverging, range), r.upscale));
            break;
        case FilterMode::Channels: {
            std::vector<cv::Mat> slices;
            slices.reserve(static_cast<size_t>(nc));
            for (int64_t c = 0; c < nc; ++c)
                slices.push_back(upscale_nearest(apply_colormap(sel[f][c], Colormap::Diverging, range), r.upscale));
            tiles.push_back(tile_grid(slices, 0, 1, separator_colour_for(Colormap::Diverging)));
            break;
        }
        case FilterMode::Auto: break;
        }
    }
    if (tiles.empty()) throw Error("no filters selected for layer '" + opt.layer + "'");
    switch (mode) {
    case FilterMode::Rgb: r.picture = tile_grid(tiles, 0, 1, cv::Scalar(255, 255, 255)); break;
    case FilterMode::Gray: r.picture = tile_grid(tiles, 0, 1, separator_colour_for(Colormap::Gray)); break;
    case FilterMode::Summary: r.picture = tile_grid(tiles, 0, 1, separator_colour_for(Colormap::Diverging)); break;
    default: r.picture = tile_grid(tiles, 0, kFilterGroupGap, kFilterGroupColour); break;
    }
    return r;
}

}  // namespace convscope
