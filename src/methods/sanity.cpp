// Sanity checks: model-parameter randomisation (cascading and independent), the random-logit
// check and the map similarities they report.
#include "convscope/methods/sanity.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace {

std::vector<double> values_of(const at::Tensor& t) {
    const at::Tensor d = t.to(torch::kDouble).contiguous().view({-1});
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Ranks 1..n with ties given their mean rank.
std::vector<double> ranks_of(const std::vector<double>& v) {
    std::vector<size_t> order(v.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
    std::vector<double> ranks(v.size());
    for (size_t i = 0; i < order.size();) {
        size_t j = i;
        while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
        const double mean_rank = 0.5 * double(i + j) + 1.0;
        for (size_t k = i; k <= j; ++k) ranks[order[k]] = mean_rank;
        i = j + 1;
    }
    return ranks;
}

double pearson_of(const std::vector<double>& a, const std::vector<double>& b) {
    CONVSCOPE_CHECK(a.size() == b.size(), "correlations compare arrays of the same size");
    const double n = double(a.size());
    if (a.empty()) return 0.0;
    const double ma = std::accumulate(a.begin(), a.end(), 0.0) / n;
    const double mb = std::accumulate(b.begin(), b.end(), 0.0) / n;
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return saa > 0 && sbb > 0 ? sab / std::sqrt(saa * sbb) : 0.0;
}

// map_hw scaled to [0, 1] by its own range (a constant map: zeros).
at::Tensor unit_range(const at::Tensor& map_hw) {
    const at::Tensor d = map_hw.to(torch::kDouble);
    const double lo = d.min().item<double>(), hi = d.max().item<double>();
    return hi > lo ? (d - lo) / (hi - lo) : torch::zeros_like(d);
}

}  // namespace

double pearson(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() != b.numel()) throw Error("correlations need arrays of the same number of values");
    return pearson_of(values_of(a), values_of(b));
}

double spearman(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() != b.numel()) throw Error("correlations need arrays of the same number of values");
    return pearson_of(ranks_of(values_of(a)), ranks_of(values_of(b)));
}

at::Tensor hog_features(const at::Tensor& map_hw, int64_t cell) {
    CONVSCOPE_CHECK(map_hw.dim() == 2, "HOG of a map [H,W]");
    const int64_t h = map_hw.size(0), w = map_hw.size(1);
    if (cell <= 0) cell = std::max<int64_t>(2, std::min(h, w) / 7);
    const int64_t ncy = std::max<int64_t>(1, h / cell), ncx = std::max<int64_t>(1, w / cell);
    const at::Tensor m = map_hw.to(torch::kDouble).contiguous();
    const auto a = m.accessor<double, 2>();
    std::vector<double> hist(size_t(ncy * ncx * 9), 0.0);
    for (int64_t y = 0; y < std::min(h, ncy * cell); ++y)
        for (int64_t x = 0; x < std::min(w, ncx * cell); ++x) {
            const double gx = (x > 0 && x + 1 < w) ? a[y][x + 1] - a[y][x - 1] : 0.0;
            const double gy = (y > 0 && y + 1 < h) ? a[y + 1][x] - a[y - 1][x] : 0.0;
            const double mag = std::sqrt(gx * gx + gy * gy);
            if (mag == 0) continue;
            double deg = std::atan2(gy, gx) * 180.0 / M_PI;
            if (deg < 0) deg += 180.0;
            if (deg >= 180.0) deg -= 180.0;  // unsigned: 180 degrees is 0
            const int64_t bin = std::min<int64_t>(8, static_cast<int64_t>(deg / 20.0));
            hist[size_t(((y / cell) * ncx + x / cell) * 9 + bin)] += mag;
        }
    const int64_t by = std::min<int64_t>(2, ncy), bx = std::min<int64_t>(2, ncx);
    std::vector<double> out;
    for (int64_t y0 = 0; y0 + by <= ncy; ++y0)
        for (int64_t x0 = 0; x0 + bx <= ncx; ++x0) {
            std::vector<double> v;
            for (int64_t y = y0; y < y0 + by; ++y)
                for (int64_t x = x0; x < x0 + bx; ++x)
                    for (int64_t b = 0; b < 9; ++b) v.push_back(hist[size_t((y * ncx + x) * 9 + b)]);
            auto normalise = [&] {
                double ss = 1e-10;
                for (double e : v) ss += e * e;
                for (double& e : v) e /= std::sqrt(ss);
            };
            normalise();
            for (double& e : v) e = std::min(e, 0.2);
            normalise();
            out.insert(out.end(), v.begin(), v.end());
        }
    return torch::tensor(out, torch::kDouble);
}

MapSimilarity compare_maps(const Explanation& a, const Explanation& b, int64_t n) {
    CONVSCOPE_CHECK(a.map.sizes() == b.map.sizes() && a.signed_map.sizes() == b.signed_map.sizes(),
                    "compared explanations have the same shape");
    MapSimilarity s;
    s.spearman_abs = spearman(a.map[n].abs(), b.map[n].abs());
    s.spearman = spearman(a.signed_map[n], b.signed_map[n]);
    const at::Tensor ua = unit_range(a.map[n]), ub = unit_range(b.map[n]);
    s.ssim = map_ssim(ua, ub);
    s.hog = pearson(hog_features(ua), hog_features(ub));
    return s;
}

// ---------------------------------------------------------------------------------------------
// Randomisation

std::vector<std::string> parameter_layers(const Model& model) {
    std::vector<std::string> out;
    for (const auto& l : model.layers())
        if (!model.parameter_names(l.name).empty()) out.push_back(l.name);
    std::reverse(out.begin(), out.end());
    return out;
}

Model randomised_copy(const Model& model, const std::vector<std::string>& layers, uint64_t seed) {
    const std::vector<std::string> all = parameter_layers(model);
    Model copy = model.copy();
    torch::NoGradGuard no_grad;
    for (const auto& layer : layers) {
        const auto it = std::find(all.begin(), all.end(), layer);
        if (it == all.end()) {
            model.layer(layer);  // an unknown layer: the error names the closest ones
            throw Error("layer '" + layer + "' holds no parameters of its own: randomise one of " +
                        detail::join(all, ", "));
        }
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed + uint64_t(it - all.begin()));
        for (const auto& name : copy.parameter_names(layer)) {
            at::Tensor p = copy.parameter(layer, name);
            const double mean = p.to(torch::kDouble).mean().item<double>();
            double sd = p.numel() > 1 ? p.to(torch::kDouble).std(/*unbiased=*/false).item<double>() : 0.0;
            if (!(sd > 0)) sd = std::max(std::abs(mean), 0.1);
            p.copy_(torch::randn(p.sizes(), gen, torch::kDouble).mul_(sd).add_(mean));
        }
    }
    return copy;
}

const char* randomisation_mode_name(RandomisationMode mode) {
    return mode == RandomisationMode::Cascading ? "cascading" : "independent";
}

namespace {

struct SimilarityColumns {
    at::Tensor spearman_abs, spearman, ssim, hog;
    SimilarityColumns(int64_t rows, int64_t n)
        : spearman_abs(torch::zeros({rows, n})), spearman(torch::zeros({rows, n})), ssim(torch::zeros({rows, n})),
          hog(torch::zeros({rows, n})) {}
    void set(int64_t row, int64_t n, const MapSimilarity& s) {
        spearman_abs[row][n] = s.spearman_abs;
        spearman[row][n] = s.spearman;
        ssim[row][n] = s.ssim;
        hog[row][n] = s.hog;
    }
};

}  // namespace

RandomisationResult randomisation(const Model& model, const at::Tensor& images, const Explanation& original,
                                  const Explainer& explainer, const Target& target, const RandomisationOptions& o,
                                  const RunContext& context) {
    check_input(model, images);
    RandomisationResult r;
    r.layers = o.layers.empty() ? parameter_layers(model) : o.layers;
    if (r.layers.empty())
        throw Error("the model has no parameters to randomise: the randomisation check needs a trained model "
                    "with weights");
    const Target fixed = fixed_target(target, original.targets);
    const int64_t steps = int64_t(r.layers.size()), n = images.size(0);
    SimilarityColumns cols(steps, n);
    for (int64_t l = 0; l < steps; ++l) {
        std::vector<std::string> chosen;
        if (o.mode == RandomisationMode::Cascading)
            chosen.assign(r.layers.begin(), r.layers.begin() + l + 1);
        else
            chosen = {r.layers[size_t(l)]};
        const Model random_model = randomised_copy(model, chosen, context.seed);
        RunContext sub = context;
        sub.progress = sub_progress(context.progress, double(l) / double(steps), double(l + 1) / double(steps));
        const Explanation e = explainer(random_model, images, fixed, sub);
        for (int64_t i = 0; i < n; ++i) cols.set(l, i, compare_maps(original, e, i));
    }
    r.spearman_abs = cols.spearman_abs;
    r.spearman = cols.spearman;
    r.ssim = cols.ssim;
    r.hog = cols.hog;
    return r;
}

RandomLogitResult random_logit(const Model& model, const at::Tensor& images, const Explanation& original,
                               const Explainer& explainer, const Target& target, const RunContext& context) {
    check_input(model, images);
    if (target.kind == Target::Kind::Similarity)
        throw Error("the random-logit check explains another class: it needs a class target, not a similarity");
    const int64_t k = model.num_classes(), n = images.size(0);
    if (k < 2)
        throw Error("the random-logit check needs an output with at least 2 classes, this one has " +
                    std::to_string(k));
    RandomLogitResult r;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    for (int64_t i = 0; i < n; ++i) {
        const int64_t t = original.targets[size_t(i)];
        int64_t c = torch::randint(0, k - 1, {1}, gen, torch::kLong).item<int64_t>();
        if (c >= t) ++c;
        r.classes.push_back(c);
    }
    const Explanation e = explainer(model, images, fixed_target(target, r.classes), context);
    SimilarityColumns cols(1, n);
    for (int64_t i = 0; i < n; ++i) cols.set(0, i, compare_maps(original, e, i));
    r.spearman_abs = cols.spearman_abs[0];
    r.spearman = cols.spearman[0];
    r.ssim = cols.ssim[0];
    r.hog = cols.hog[0];
    return r;
}

}  // namespace convscope
