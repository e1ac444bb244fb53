// Feature visualisation by optimisation: Adam on a pixel or Fourier parameterisation of one
// image per unit, through random jitter/scale/rotation (affine_grid + grid_sample), with L2
// decay and periodic blur; the model's gradient comes from the runtime (Model::gradients) and
// is carried back through the parameterisation by a second, small autograd graph.
#include "convscope/methods/feature_vis.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/detail/blur.hpp"

namespace convscope {

namespace {

constexpr double kPi = 3.14159265358979323846;

// SplitMix64: a well-mixed seed per (seed, unit), so each unit's run is independent of the others.
uint64_t mix_seed(uint64_t seed, int64_t unit) {
    uint64_t z = seed + 0x9E3779B97F4A7C15ULL * (static_cast<uint64_t>(unit) + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

struct Space {
    int64_t c = 0, h = 0, w = 0;
    Preprocess pre;  // pixels [0,1] RGB -> model inputs
    at::Tensor normalise(const at::Tensor& pixels) const { return pre.normalise(pixels); }
};

Space input_space(const Model& model, const FeatureVisOptions& o) {
    const Preprocess& pre = o.preprocess;
    const std::vector<int64_t> shape =
        pre.input_shape.empty() ? model.input_shape() : pre.input_shape;
    if (shape.size() != 3) throw Error("the feature visualisation input shape must be C,H,W");
    if (model.has_input_shape() && model.input_shape() != shape)
        throw Error(
            "the preprocessing's input shape does not fit the model's: use the model's "
            "input shape");
    Space s;
    s.c = shape[0];
    s.h = o.size > 0 ? o.size : shape[1];
    s.w = o.size > 0 ? o.size : shape[2];
    s.pre = pre;
    s.pre.as_is = false;  // synthetic pixels are in [0,1]: always normalised
    s.pre.validate(s.c);
    return s;
}

// The objective of every unit the layer or output has: [N,K] (similarity: [N,1]).
struct Objectives {
    const FeatureVisOptions* o;
    Target target;         // o->target, of kind Similarity for that objective
    at::Tensor reference;  // Objective::Similarity: the reference's output, unit length

    Objectives(const Model& model, const FeatureVisOptions& options) : o(&options), target(options.target) {
        if (o->objective == FeatureVisOptions::Objective::Similarity) {
            target.kind = Target::Kind::Similarity;
            reference = unit_reference(model, target.reference_input);
        }
    }
    bool channel() const { return o->objective == FeatureVisOptions::Objective::Channel; }
    at::Tensor operator()(const TapResult& r) const {
        if (!channel()) return every_class_score(r.output, target, reference);
        at::Tensor t = r.taps.at(o->layer);
        if (t.dim() >= 3) return t.flatten(2).mean(2);
        return t;
    }
};

void check_options(const Model& model, const FeatureVisOptions& o) {
    if (o.units.empty())
        throw Error("no units to visualise: give channels (--channels a:b) or a class (--class c)");
    if (o.steps < 1)
        throw Error("feature visualisation needs at least 1 step, got " + std::to_string(o.steps) +
                    ": pass --steps N with N >= 1 (256 is usual)");
    if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate))
        throw Error("the learning rate must be > 0, got " + detail::format_number(o.learning_rate));
    if (!(o.l2_decay >= 0) || !(o.jitter >= 0) || !(o.scale >= 0 && o.scale < 1) ||
        !(o.rotate_degrees >= 0) || !(o.blur_sigma >= 0) || o.blur_every < 0)
        throw Error(
            "the regularisers must be >= 0 (and the scale range below 1): check --l2, "
            "--jitter, --scale, --rotate, --blur-every and --blur-sigma");
    if (o.batch_size < 1 || o.dataset_batch_size < 1)
        throw Error("the batch size must be at least 1");
    int64_t count = 0;
    std::string what;
    if (o.objective == FeatureVisOptions::Objective::Similarity) {
        if (o.units != std::vector<int64_t>{0})
            throw Error("a similarity objective has one unit, 0: the image most like the reference");
        if (!o.target.reference_input.defined())
            throw Error("a similarity objective needs its reference (--similarity INDEX|IMAGE)");
    } else if (o.objective == FeatureVisOptions::Objective::Class) {
        count = model.num_classes();
        what = "class";
        for (int64_t u : o.units)
            if (u < 0 || u >= count)
                throw Error("class " + std::to_string(u) + " is out of range: the model has " +
                            std::to_string(count) + " classes (0.." + std::to_string(count - 1) +
                            ")");
    } else {
        if (o.layer.empty()) throw Error("give the layer whose channels to visualise (--layer L)");
        const LayerInfo& info = model.layer(o.layer);  // unknown names: Error with suggestions
        if (info.output_shape.empty())
            throw Error("layer '" + o.layer + "' has no channels to visualise");
        count = info.output_shape[0];
        for (int64_t u : o.units)
            if (u < 0 || u >= count)
                throw Error("channel " + std::to_string(u) + " is out of range: layer '" + o.layer +
                            "' has " + std::to_string(count) + " channels (0.." +
                            std::to_string(count - 1) + ")");
    }
}

// The image parameterisation of a batch of units.
struct Param {
    FeatureVisParam kind;
    int64_t h, w;
    at::Tensor values;          // pixel: [B,C,H,W] (before the sigmoid); fourier: [B,C,H,W/2+1,2]
    at::Tensor spectrum_scale;  // fourier: [H,W/2+1], 1/frequency
    at::Tensor freq2;           // fourier: [H,W/2+1], squared frequency in cycles per pixel

    at::Tensor pixels() const {
        if (kind == FeatureVisParam::Pixel) return torch::sigmoid(values);
        const at::Tensor spectrum = torch::view_as_complex(values) * spectrum_scale;
        // Lucid's convention: the 1/4 keeps the initial image in the sigmoid's linear range.
        const at::Tensor image = torch::fft::irfft2(spectrum, std::vector<int64_t>{h, w}) / 4.0;
        return torch::sigmoid(image);
    }
    void blur(double sigma) {
        torch::NoGradGuard no_grad;
        if (kind == FeatureVisParam::Pixel) {
            values.copy_(detail::gaussian_blur(values, sigma));
        } else {
            // A Gaussian's frequency response: exp(-2 pi^2 sigma^2 f^2).
            values.mul_(torch::exp(-2.0 * kPi * kPi * sigma * sigma * freq2).unsqueeze(-1));
        }
    }
};

Param make_param(FeatureVisParam kind, const Space& s, const std::vector<int64_t>& units,
                 uint64_t seed) {
    Param p;
    p.kind = kind;
    p.h = s.h;
    p.w = s.w;
    std::vector<at::Tensor> rows;
    const int64_t wf = s.w / 2 + 1;
    for (int64_t u : units) {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(mix_seed(seed, u));
        if (kind == FeatureVisParam::Pixel)
            rows.push_back(torch::randn({s.c, s.h, s.w}, gen, torch::kFloat) * 0.01);
        else
            rows.push_back(torch::randn({s.c, s.h, wf, 2}, gen, torch::kFloat) * 0.01);
    }
    p.values = torch::stack(rows, 0).contiguous();
    if (kind == FeatureVisParam::Fourier) {
        const at::Tensor fy = torch::fft::fftfreq(s.h, torch::kDouble).view({-1, 1});
        const at::Tensor fx = torch::fft::rfftfreq(s.w, torch::kDouble).view({1, -1});
        p.freq2 = (fy * fy + fx * fx).to(torch::kFloat);
        // Olah et al.: scale each frequency by 1/f (floored at the lowest frequency), times
        // sqrt(H*W) to undo most of irfft2's 1/(H*W).
        const at::Tensor f =
            torch::sqrt(fy * fy + fx * fx).clamp_min(1.0 / double(std::max(s.h, s.w)));
        p.spectrum_scale = (1.0 / f * std::sqrt(double(s.h * s.w))).to(torch::kFloat);
    }
    p.values.requires_grad_(true);
    return p;
}

// One random transformation per row: theta [B,2,3] for affine_grid (normalised coordinates).
at::Tensor random_thetas(std::vector<std::mt19937_64>& rngs, const FeatureVisOptions& o, int64_t h,
                         int64_t w) {
    const int64_t b = static_cast<int64_t>(rngs.size());
    at::Tensor theta = torch::zeros({b, 2, 3}, torch::kFloat);
    auto acc = theta.accessor<float, 3>();
    const double jitter_px = o.jitter * double(std::max(h, w));
    const double ratio = double(h) / double(w);
    for (int64_t i = 0; i < b; ++i) {
        auto& rng = rngs[size_t(i)];
        std::uniform_real_distribution<double> unit(-1.0, 1.0);
        const double sc = 1.0 + o.scale * unit(rng);
        const double ang = o.rotate_degrees * unit(rng) * kPi / 180.0;
        const double dx = jitter_px * unit(rng), dy = jitter_px * unit(rng);
        const double c = std::cos(ang) / sc, sn = std::sin(ang) / sc;
        // A rotation in pixel coordinates, written in grid_sample's [-1,1] coordinates.
        acc[i][0][0] = float(c);
        acc[i][0][1] = float(-sn * ratio);
        acc[i][0][2] = float(2.0 * dx / double(w));
        acc[i][1][0] = float(sn / ratio);
        acc[i][1][1] = float(c);
        acc[i][1][2] = float(2.0 * dy / double(h));
    }
    return theta;
}

at::Tensor transform(const at::Tensor& pixels, const at::Tensor& theta) {
    namespace F = torch::nn::functional;
    const at::Tensor grid = F::affine_grid(theta, pixels.sizes(), /*align_corners=*/false);
    return F::grid_sample(pixels, grid,
                          F::GridSampleFuncOptions()
                              .mode(torch::kBilinear)
                              .padding_mode(torch::kReflection)
                              .align_corners(false));
}

at::Tensor gather_rows(const at::Tensor& all, const std::vector<int64_t>& units) {
    return all.gather(1, torch::tensor(units, torch::kLong).view({-1, 1})).view({-1});
}

}  // namespace

namespace {
constexpr EnumTable<FeatureVisParam, 2> kParamNames = {{{FeatureVisParam::Pixel, "pixel"}, {FeatureVisParam::Fourier, "fourier"}}};
}  // namespace

FeatureVisParam parse_feature_vis_param(const std::string& name) {
    return parse_enum(kParamNames, name, "parameterisation");
}

const std::string& feature_vis_param_name(FeatureVisParam param) {
    static const std::vector<std::string> names = enum_names(kParamNames);
    return names.at(static_cast<size_t>(param));
}

namespace {
at::Tensor objective_of_units(const Model& model, const Objectives& objectives, const at::Tensor& images_nchw) {
    const FeatureVisOptions& o = *objectives.o;
    TapResult r;
    if (!objectives.channel())
        r.output = model.forward(images_nchw);
    else
        r = model.forward_taps(images_nchw, {o.layer});
    const at::Tensor all = objectives(r);
    return all.index_select(1, torch::tensor(o.units, torch::kLong)).to(torch::kFloat).contiguous();
}
}  // namespace

at::Tensor feature_vis_objective(const Model& model, const FeatureVisOptions& o,
                                 const at::Tensor& images_nchw) {
    check_options(model, o);
    return objective_of_units(model, Objectives(model, o), images_nchw);
}

namespace {

// The optimisation of every unit's image, in chunks of batch_size units; the progress runs to
// `share`.
void optimise(const Model& model, const Objectives& all_objectives, const Space& space, const RunContext& context,
              double share, FeatureVisResult& result) {
    const FeatureVisOptions& o = *all_objectives.o;
    const bool channel = all_objectives.channel();
    const std::vector<std::string> taps =
        channel ? std::vector<std::string>{o.layer} : std::vector<std::string>{};
    const int64_t u_count = static_cast<int64_t>(o.units.size());
    const int64_t chunks = (u_count + o.batch_size - 1) / o.batch_size;
    std::vector<at::Tensor> pixels_out, act_out, init_out;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
        const int64_t first = chunk * o.batch_size;
        const int64_t end = std::min(u_count, first + o.batch_size);
        const std::vector<int64_t> units(o.units.begin() + first, o.units.begin() + end);
        std::vector<std::mt19937_64> rngs;
        for (int64_t u : units) rngs.emplace_back(mix_seed(context.seed ^ 0x5EEDULL, u));

        Param param = make_param(o.param, space, units, context.seed);
        torch::optim::Adam adam({param.values}, torch::optim::AdamOptions(o.learning_rate));
        {
            torch::NoGradGuard no_grad;
            const at::Tensor start = space.normalise(param.pixels()).contiguous();
            TapResult r =
                channel ? model.forward_until(start, taps) : TapResult{model.forward(start), {}};
            init_out.push_back(gather_rows(all_objectives(r), units));
        }
        for (int step = 0; step < o.steps; ++step) {
            torch::AutoGradMode grad_mode(true);
            adam.zero_grad();
            const at::Tensor pixels = param.pixels();
            const at::Tensor input =
                space.normalise(transform(pixels, random_thetas(rngs, o, space.h, space.w)));
            // d objective / d input from the runtime, then carried back to the parameters through
            // this graph: d(sum(input * g)) / d param = J^T g.
            const auto objective = [&](const TapResult& r) {
                return gather_rows(all_objectives(r), units).sum();
            };
            // A channel's objective needs the graph only up to its layer.
            auto g = channel ? model.gradients_until(input.detach().contiguous(), objective, taps)
                             : model.gradients(input.detach().contiguous(), objective, {}, taps);
            const at::Tensor decay = (pixels - 0.5).pow(2).mean({1, 2, 3}).sum();
            const at::Tensor loss = -(input * g.input_grad).sum() + o.l2_decay * decay;
            loss.backward();
            adam.step();
            if (o.blur_every > 0 && o.blur_sigma > 0 && (step + 1) % o.blur_every == 0 &&
                step + 1 < o.steps)
                param.blur(o.blur_sigma);
            report_progress(context.progress, share *
                                            (double(chunk) + double(step + 1) / double(o.steps)) /
                                            double(chunks));
        }
        torch::NoGradGuard no_grad;
        const at::Tensor pixels = param.pixels().detach().contiguous();
        const at::Tensor final_input = space.normalise(pixels).contiguous();
        TapResult r = channel ? model.forward_until(final_input, taps)
                              : TapResult{model.forward(final_input), {}};
        act_out.push_back(gather_rows(all_objectives(r), units));
        pixels_out.push_back(pixels);
    }

    torch::NoGradGuard no_grad;
    result.pixels = torch::cat(pixels_out, 0).to(torch::kFloat).contiguous();
    result.images = space.normalise(result.pixels).contiguous();
    result.activation = torch::cat(act_out, 0).to(torch::kFloat).contiguous();
    result.initial_activation = torch::cat(init_out, 0).to(torch::kFloat).contiguous();
    if (space.c == 1 || space.c == 3)
        result.display = result.pixels.mul(255.0)
                             .round()
                             .clamp(0, 255)
                             .to(torch::kByte)
                             .permute({0, 2, 3, 1})
                             .contiguous();
}

// Each unit's best activation over the items of data (empty indices: all) and the ratio of the
// synthetic image's to it; the progress runs from share0 to 1.
void dataset_best(const Model& model, const Dataset& data, const std::vector<int64_t>& dataset_indices,
                  const Objectives& objectives, const Space& space, const ProgressFn& progress, double share0,
                  FeatureVisResult& result) {
    torch::NoGradGuard no_grad;
    const FeatureVisOptions& o = *objectives.o;
    const int64_t u_count = static_cast<int64_t>(o.units.size());
    std::vector<int64_t> indices = dataset_indices;
    if (indices.empty())
        for (int64_t i = 0; i < data.size(); ++i) indices.push_back(i);
    if (indices.empty()) throw Error("the dataset for the best activations is empty");
    Preprocess pre = o.preprocess;
    if (pre.input_shape.empty()) pre.input_shape = {space.c, space.h, space.w};
    BatchLoader loader(data, indices, o.dataset_batch_size, pre);
    at::Tensor best =
        torch::full({u_count}, -std::numeric_limits<float>::infinity(), torch::kFloat);
    at::Tensor best_index = torch::full({u_count}, int64_t(-1), torch::kLong);
    Batch batch;
    int64_t done = 0;
    while (loader.next(batch)) {
        const at::Tensor obj = objective_of_units(model, objectives, batch.images);  // [B,U]
        const auto [vals, rows] = obj.max(0);
        const at::Tensor better = vals > best;
        best = torch::where(better, vals, best);
        const at::Tensor idx = torch::tensor(batch.indices, torch::kLong).index_select(0, rows);
        best_index = torch::where(better, idx, best_index);
        done += static_cast<int64_t>(batch.indices.size());
        report_progress(progress, share0 + (1.0 - share0) * double(done) / double(indices.size()));
    }
    result.dataset_best = best;
    result.dataset_best_index = best_index;
    result.ratio =
        torch::where(best > 0, result.activation / best,
                     torch::full_like(best, std::numeric_limits<float>::quiet_NaN()));
}

FeatureVisResult run_feature_vis(const Model& model, const Dataset* data, const std::vector<int64_t>& indices,
                                 const FeatureVisOptions& o, const RunContext& context) {
    const ThreadScope threads(context);
    check_options(model, o);
    const Space space = input_space(model, o);
    const bool channel = o.objective == FeatureVisOptions::Objective::Channel;
    if (o.size < 0) throw Error("the feature visualisation size must be >= 0 (0 = the model's input size)");
    if (o.size > 0 && !channel && model.has_input_shape() &&
        (o.size != model.input_shape()[1] || o.size != model.input_shape()[2]))
        throw Error("a class or similarity objective needs the model's input size: leave the size at 0");
    const double share = data ? 0.9 : 1.0;  // of the progress for the optimisation
    FeatureVisResult result;
    result.layer = channel ? o.layer : "";
    result.units = o.units;
    report_progress(context.progress, 0.0);
    const Objectives objectives(model, o);
    optimise(model, objectives, space, context, share, result);
    if (data) dataset_best(model, *data, indices, objectives, space, context.progress, share, result);
    report_progress(context.progress, 1.0);
    return result;
}

}  // namespace

FeatureVisResult feature_vis(const Model& model, const FeatureVisOptions& o, const RunContext& context) {
    return run_feature_vis(model, nullptr, {}, o, context);
}

FeatureVisResult feature_vis(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                             const FeatureVisOptions& o, const RunContext& context) {
    return run_feature_vis(model, &data, indices, o, context);
}

}  // namespace convscope
