// Sanity checks: model-parameter randomisation (cascading and independent), the random-logit
// check and the map similarities they report.
#include "convscope/methods/sanity.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <numeric>
#include <string>

#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/radix_sort.hpp"

namespace convscope {

namespace {

std::vector<double> values_of(const at::Tensor& t) {
    const at::Tensor d = t.to(torch::kDouble).contiguous().view({-1});
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// Ranks 1..n with ties given their mean rank. The values are maps of float32 numbers, finite:
// sorted as float keys by a radix sort, O(n).
std::vector<double> ranks_of(const std::vector<double>& v) {
    const size_t n = v.size();
    std::vector<uint32_t> key(n), idx(n), key2, idx2;
    for (size_t i = 0; i < n; ++i) {
        key[i] = detail::orderable_key(float(v[i]));
        idx[i] = uint32_t(i);
    }
    detail::radix_sort(key, idx, key2, idx2);
    std::vector<double> ranks(n);
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j + 1 < n && key[j + 1] == key[i]) ++j;
        const double mean_rank = 0.5 * double(i + j) + 1.0;
        for (size_t k = i; k <= j; ++k) ranks[idx[k]] = mean_rank;
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

}  // namespace

double pearson(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() != b.numel()) throw Error("correlations need arrays of the same number of values");
    return pearson_of(values_of(a), values_of(b));
}

double spearman(const at::Tensor& a, const at::Tensor& b) {
    if (a.numel() != b.numel()) throw Error("correlations need arrays of the same number of values");
    return pearson_of(ranks_of(values_of(a)), ranks_of(values_of(b)));
}

namespace {

// HOG of a row-major map [h,w] (hog_features' definition).
std::vector<double> hog_values(const double* a, int64_t h, int64_t w, int64_t cell) {
    if (cell <= 0) cell = std::max<int64_t>(2, std::min(h, w) / 7);
    const int64_t ncy = std::max<int64_t>(1, h / cell), ncx = std::max<int64_t>(1, w / cell);
    std::vector<double> hist(size_t(ncy * ncx * 9), 0.0);
    for (int64_t y = 0; y < std::min(h, ncy * cell); ++y)
        for (int64_t x = 0; x < std::min(w, ncx * cell); ++x) {
            const double gx = (x > 0 && x + 1 < w) ? a[y * w + x + 1] - a[y * w + x - 1] : 0.0;
            const double gy = (y > 0 && y + 1 < h) ? a[(y + 1) * w + x] - a[(y - 1) * w + x] : 0.0;
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
    std::vector<double> v;
    for (int64_t y0 = 0; y0 + by <= ncy; ++y0)
        for (int64_t x0 = 0; x0 + bx <= ncx; ++x0) {
            v.clear();
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
    return out;
}

// v scaled to [0, 1] by its own range (constant: zeros).
std::vector<double> unit_range(std::vector<double> v) {
    if (v.empty()) return v;
    const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
    const double l = *lo, r = *hi - *lo;
    for (double& e : v) e = r > 0 ? (e - l) / r : 0.0;
    return v;
}

}  // namespace

at::Tensor hog_features(const at::Tensor& map_hw, int64_t cell) {
    CONVSCOPE_CHECK(map_hw.dim() == 2, "HOG of a map [H,W]");
    const std::vector<double> v = values_of(map_hw);
    return torch::tensor(hog_values(v.data(), map_hw.size(0), map_hw.size(1), cell), torch::kDouble);
}

namespace {

// What the similarities need of one image's maps, computed once per map: a check compares its
// original map with many others (one per randomised layer).
struct PreparedMap {
    bool finite = true;
    int64_t h = 0, w = 0;
    std::vector<double> ranks_abs, ranks_signed, unit, hog;
};

// An explanation's maps as float64, contiguous: converted once, read by pointer per image.
struct MapValues {
    at::Tensor map, signed_map;  // [N,H,W] float64
    int64_t h = 0, w = 0;
    explicit MapValues(const Explanation& e)
        : map(e.map.to(torch::kDouble).contiguous()), signed_map(e.signed_map.to(torch::kDouble).contiguous()),
          h(e.map.size(1)), w(e.map.size(2)) {}
};

PreparedMap prepare(const MapValues& v, int64_t n) {
    PreparedMap p;
    p.h = v.h;
    p.w = v.w;
    const double* pm = v.map.data_ptr<double>() + n * v.h * v.w;
    const double* ps = v.signed_map.data_ptr<double>() + n * v.h * v.w;
    std::vector<double> m(pm, pm + v.h * v.w);
    const std::vector<double> sgn(ps, ps + v.h * v.w);
    auto finite = [](const std::vector<double>& v) {
        return std::all_of(v.begin(), v.end(), [](double x) { return std::isfinite(x); });
    };
    p.finite = finite(m) && finite(sgn);
    if (!p.finite) return p;
    p.ranks_signed = ranks_of(sgn);
    std::vector<double> mag(m);
    for (double& x : mag) x = std::abs(x);
    p.ranks_abs = ranks_of(mag);
    p.unit = unit_range(std::move(m));
    p.hog = hog_values(p.unit.data(), p.h, p.w, 0);
    return p;
}

MapSimilarity similarity(const PreparedMap& a, const PreparedMap& b) {
    if (!a.finite || !b.finite) {
        // A map with NaN or infinite values (a randomised model can overflow): no similarity.
        const double nan = std::nan("");
        return {nan, nan, nan, nan};
    }
    MapSimilarity s;
    s.spearman = pearson_of(a.ranks_signed, b.ranks_signed);
    s.spearman_abs = pearson_of(a.ranks_abs, b.ranks_abs);
    // map_ssim only reads its maps.
    s.ssim = map_ssim(torch::from_blob(const_cast<double*>(a.unit.data()), {a.h, a.w}, torch::kDouble),
                      torch::from_blob(const_cast<double*>(b.unit.data()), {b.h, b.w}, torch::kDouble));
    s.hog = pearson_of(a.hog, b.hog);
    return s;
}

}  // namespace

MapSimilarity compare_maps(const Explanation& a, const Explanation& b, int64_t n) {
    CONVSCOPE_CHECK(a.map.sizes() == b.map.sizes() && a.signed_map.sizes() == b.signed_map.sizes(),
                    "compared explanations have the same shape");
    return similarity(prepare(MapValues(a), n), prepare(MapValues(b), n));
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

namespace {

// The place of `layer` in `all` (parameter_layers), which seeds its values. Throws Error for an
// unknown layer or one without parameters.
uint64_t layer_place(const Model& model, const std::vector<std::string>& all, const std::string& layer) {
    const auto it = std::find(all.begin(), all.end(), layer);
    if (it == all.end()) {
        model.layer(layer);  // an unknown layer: the error names the closest ones
        throw Error("layer '" + layer + "' holds no parameters of its own: randomise one of " + detail::join(all, ", "));
    }
    return uint64_t(it - all.begin());
}

// The layer's own buffers (BatchNorm's running statistics), shared with the model: writes to
// them change the model.
std::vector<std::pair<std::string, at::Tensor>> own_buffers(const Model& model, const std::string& layer) {
    std::vector<std::pair<std::string, at::Tensor>> out;
    for (const auto& item : model.module().named_modules()) {
        if (item.name != layer) continue;
        for (const auto& b : item.value.named_buffers(/*recurse=*/false)) out.emplace_back(b.name, b.value);
        break;
    }
    return out;
}

// Redraws the layer's own parameters of `copy` in place, as randomised_copy documents.
void redraw(Model& copy, const std::string& layer, uint64_t seed, RandomInit init) {
    torch::NoGradGuard no_grad;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const std::vector<std::string> names = copy.parameter_names(layer);
    if (init == RandomInit::Reset) {
        // The fan-in of the layer's weight of 2 or more dimensions, for its bias too.
        int64_t layer_fan_in = 0;
        for (const auto& name : names) {
            const at::Tensor p = copy.parameter(layer, name);
            if (p.dim() >= 2 && (name == "weight" || layer_fan_in == 0)) layer_fan_in = p.numel() / p.size(0);
        }
        for (const auto& name : names) {
            at::Tensor p = copy.parameter(layer, name);
            const int64_t fan_in = p.dim() >= 2 ? p.numel() / p.size(0) : layer_fan_in;
            if (fan_in > 0) {
                const double bound = 1.0 / std::sqrt(double(fan_in));
                p.copy_(torch::rand(p.sizes(), gen, p.scalar_type()).mul_(2 * bound).sub_(bound));
            } else {
                p.fill_(name == "bias" ? 0.0 : 1.0);
            }
        }
        for (auto& [name, b] : own_buffers(copy, layer)) {
            if (name == "running_mean") b.zero_();
            else if (name == "running_var") b.fill_(1.0);
            else if (name == "num_batches_tracked") b.zero_();
        }
        return;
    }
    for (const auto& name : names) {
        at::Tensor p = copy.parameter(layer, name);
        const double mean = p.mean().item<double>();
        double sd = p.numel() > 1 ? p.std(/*unbiased=*/false).item<double>() : 0.0;
        if (!(sd > 0)) sd = std::max(std::abs(mean), 0.1);
        p.copy_(torch::randn(p.sizes(), gen, p.scalar_type()).mul_(sd).add_(mean));
    }
}

// Sets every parameter and buffer of `to` to the values of `from`, a model of the same file and
// structure. False (nothing written) when their lists differ.
bool restore_values(Model& to, const Model& from) {
    torch::NoGradGuard no_grad;
    const auto tp = to.module().named_parameters(), fp = from.module().named_parameters();
    const auto tb = to.module().named_buffers(), fb = from.module().named_buffers();
    if (tp.size() != fp.size() || tb.size() != fb.size()) return false;
    std::vector<std::pair<at::Tensor, at::Tensor>> pairs;
    for (auto a = tp.begin(), b = fp.begin(); a != tp.end(); ++a, ++b) pairs.emplace_back((*a).value, (*b).value);
    for (auto a = tb.begin(), b = fb.begin(); a != tb.end(); ++a, ++b) pairs.emplace_back((*a).value, (*b).value);
    for (const auto& [t, f] : pairs)
        if (t.sizes() != f.sizes() || t.scalar_type() != f.scalar_type()) return false;
    for (auto& [t, f] : pairs) t.copy_(f);
    return true;
}

// The copy the randomisation check changes, kept for the next check of a model from the same
// file: a fresh copy specialises its graphs again in its first runs (on the default model that
// cost more than a map). One check holds it at a time (another gets a fresh copy); its values
// are set from the model each time it is handed out.
class WorkCopy {
public:
    explicit WorkCopy(const Model& model) : key_(key_of(model)) {
        {
            std::lock_guard<std::mutex> lock(mutex());
            if (kept() && kept_key() == key_) {
                copy_ = std::move(kept());
                kept_key().clear();
            }
        }
        if (copy_ && !restore_values(*copy_, model)) copy_.reset();
        if (!copy_) copy_ = std::make_unique<Model>(model.copy());
    }
    ~WorkCopy() {
        std::lock_guard<std::mutex> lock(mutex());
        kept() = std::move(copy_);
        kept_key() = key_;
    }
    Model& get() { return *copy_; }

private:
    static std::string key_of(const Model& m) {
        std::string key = m.file_hash() + "|" + m.path() + "|" + m.output_name() + "|";
        for (int64_t d : m.input_shape()) key += std::to_string(d) + ",";
        return key;
    }
    static std::mutex& mutex() {
        static std::mutex m;
        return m;
    }
    // Never destroyed: a model torn down among LibTorch's own statics at exit can crash.
    static std::unique_ptr<Model>& kept() {
        static auto* k = new std::unique_ptr<Model>();
        return *k;
    }
    static std::string& kept_key() {
        static auto* k = new std::string();
        return *k;
    }
    std::string key_;
    std::unique_ptr<Model> copy_;
};

}  // namespace

const char* random_init_name(RandomInit init) { return init == RandomInit::Reset ? "reset" : "statistics"; }

RandomInit parse_random_init(const std::string& name) {
    if (name == "statistics") return RandomInit::Statistics;
    if (name == "reset") return RandomInit::Reset;
    throw UsageError("unknown randomisation init '" + name +
                     "': use statistics (normal with each tensor's mean and std) or reset (PyTorch's "
                     "reset_parameters, as Quantus' MPRT)");
}

Model randomised_copy(const Model& model, const std::vector<std::string>& layers, uint64_t seed, RandomInit init) {
    const std::vector<std::string> all = parameter_layers(model);
    std::vector<uint64_t> places;
    for (const auto& layer : layers) places.push_back(layer_place(model, all, layer));
    Model copy = model.copy();
    for (size_t i = 0; i < layers.size(); ++i) redraw(copy, layers[i], seed + places[i], init);
    return copy;
}

namespace {

// Subnormal numbers flushed to zero on this thread and on every intra-op worker (the setting is
// per thread), and the default back when the scope ends.
class FlushSubnormals {
public:
    FlushSubnormals() { set(true); }
    ~FlushSubnormals() { set(false); }
    FlushSubnormals(const FlushSubnormals&) = delete;
    FlushSubnormals& operator=(const FlushSubnormals&) = delete;

private:
    static void set(bool on) {
        at::globalContext().setFlushDenormal(on);
        // One chunk per worker: each runs on its own thread of the pool.
        at::parallel_for(0, at::get_num_threads(), 1,
                         [on](int64_t, int64_t) { at::globalContext().setFlushDenormal(on); });
    }
};

}  // namespace

void check_randomisable(const Model& model) {
    if (parameter_layers(model).empty())
        throw Error("the model has no parameters to randomise: the randomisation check needs a trained model "
                    "with weights");
}

void check_random_logit_target(const Target& target) {
    if (target.kind == Target::Kind::Similarity)
        throw Error("the random-logit check explains another class: it needs a class target, not a similarity");
}

const char* randomisation_mode_name(RandomisationMode mode) {
    return mode == RandomisationMode::Cascading ? "cascading" : "independent";
}

namespace {

// Similarities [rows, n], filled entry by entry.
struct SimilarityColumns {
    int64_t rows, n;
    std::vector<float> spearman_abs, spearman, ssim, hog;
    SimilarityColumns(int64_t rows_, int64_t n_)
        : rows(rows_), n(n_), spearman_abs(size_t(rows_ * n_)), spearman(size_t(rows_ * n_)), ssim(size_t(rows_ * n_)),
          hog(size_t(rows_ * n_)) {}
    void set(int64_t row, int64_t i, const MapSimilarity& s) {
        const size_t k = size_t(row * n + i);
        spearman_abs[k] = float(s.spearman_abs);
        spearman[k] = float(s.spearman);
        ssim[k] = float(s.ssim);
        hog[k] = float(s.hog);
    }
    static at::Tensor tensor(const std::vector<float>& v, int64_t rows, int64_t n) {
        return torch::tensor(v, torch::kFloat).view({rows, n});
    }
};

// Row `row` of cols: every image's similarities, images in parallel.
// Every image's original map, prepared once for all the comparisons of a check.
std::vector<PreparedMap> prepare_all(const Explanation& a) {
    std::vector<PreparedMap> out(size_t(a.map.size(0)));
    const MapValues v(a);
    at::parallel_for(0, a.map.size(0), 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) out[size_t(i)] = prepare(v, i);
    });
    return out;
}

void compare_all(const std::vector<PreparedMap>& a, const Explanation& b, SimilarityColumns& cols, int64_t row) {
    CONVSCOPE_CHECK(int64_t(a.size()) == b.map.size(0), "compared explanations have the same shape");
    const MapValues v(b);
    at::parallel_for(0, cols.n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) cols.set(row, i, similarity(a[size_t(i)], prepare(v, i)));
    });
}

}  // namespace

RandomisationResult randomisation(const Model& model, const at::Tensor& images, const Explanation& original,
                                  const Explainer& explainer, const Target& target, const RandomisationOptions& o,
                                  const RunContext& context) {
    check_input(model, images);
    RandomisationResult r;
    const std::vector<std::string> all = parameter_layers(model);
    r.layers = o.layers.empty() ? all : o.layers;
    if (o.layers.empty()) check_randomisable(model);
    std::vector<uint64_t> places;
    for (const auto& layer : r.layers) places.push_back(layer_place(model, all, layer));
    const Target fixed = fixed_target(model, images, target, original.targets);
    const int64_t steps = int64_t(r.layers.size()), n = images.size(0);
    SimilarityColumns cols(steps, n);
    const std::vector<PreparedMap> prepared = prepare_all(original);
    // One copy whose parameters change in place: its graphs are analysed and specialised once.
    WorkCopy lease(model);
    Model& work = lease.get();
    // Random layers can shrink activations into subnormal numbers, which cost the CPU up to 30x
    // per operation: flushed to zero during the check (reset when it ends).
    FlushSubnormals flush;
    // Independent: the values of the layer randomised last (parameters, then buffers).
    std::vector<at::Tensor> saved;
    const auto own_tensors = [&work](const std::string& layer) {
        std::vector<at::Tensor> t;
        for (const auto& name : work.parameter_names(layer)) t.push_back(work.parameter(layer, name));
        for (const auto& b : own_buffers(work, layer)) t.push_back(b.second);
        return t;
    };
    for (int64_t l = 0; l < steps; ++l) {
        const std::string& layer = r.layers[size_t(l)];
        if (o.mode == RandomisationMode::Independent) {
            if (l > 0) {
                torch::NoGradGuard no_grad;
                const std::vector<at::Tensor> now = own_tensors(r.layers[size_t(l - 1)]);
                for (size_t k = 0; k < now.size(); ++k) now[k].copy_(saved[k]);
            }
            saved.clear();
            for (const at::Tensor& t : own_tensors(layer)) saved.push_back(t.clone());
        }
        redraw(work, layer, context.seed + places[size_t(l)], o.init);
        RunContext sub = context;
        sub.progress = sub_progress(context.progress, double(l) / double(steps), double(l + 1) / double(steps));
        const Explanation e = explainer(work, images, fixed, sub);
        compare_all(prepared, e, cols, l);
    }
    r.spearman_abs = SimilarityColumns::tensor(cols.spearman_abs, steps, n);
    r.spearman = SimilarityColumns::tensor(cols.spearman, steps, n);
    r.ssim = SimilarityColumns::tensor(cols.ssim, steps, n);
    r.hog = SimilarityColumns::tensor(cols.hog, steps, n);
    return r;
}

RandomLogitResult random_logit(const Model& model, const at::Tensor& images, const Explanation& original,
                               const Explainer& explainer, const Target& target, const RunContext& context) {
    check_input(model, images);
    check_random_logit_target(target);
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
    // The other class over the original's region (dense outputs: the pixels of its class).
    Target other = fixed_target(model, images, target, original.targets);
    other.labels = r.classes;
    const Explanation e = explainer(model, images, other, context);
    SimilarityColumns cols(1, n);
    compare_all(prepare_all(original), e, cols, 0);
    r.spearman_abs = SimilarityColumns::tensor(cols.spearman_abs, 1, n)[0];
    r.spearman = SimilarityColumns::tensor(cols.spearman, 1, n)[0];
    r.ssim = SimilarityColumns::tensor(cols.ssim, 1, n)[0];
    r.hog = SimilarityColumns::tensor(cols.hog, 1, n)[0];
    return r;
}

}  // namespace convscope
