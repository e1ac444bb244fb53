// Deletion and insertion curves, ROAD with noisy linear imputation, infidelity and
// max-sensitivity: every perturbed copy is built in batches and scored with the TargetScorer
// fixed from the clean images.
#include "convscope/methods/faithfulness.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <mutex>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/batches.hpp"
#include "methods/detail/imputation.hpp"
#include "methods/detail/radix_sort.hpp"

namespace convscope {

const char* relevance_order_name(RelevanceOrder order) {
    return order == RelevanceOrder::MostFirst ? "morf" : "lerf";
}

at::Tensor relevance_ranks(const at::Tensor& maps, RelevanceOrder order) {
    const int64_t n = maps.size(0), p = maps.size(1) * maps.size(2);
    const bool descending = order == RelevanceOrder::MostFirst;
    at::Tensor ranks = torch::empty({n, p}, torch::kLong);
    if (maps.scalar_type() != torch::kFloat || p >= (int64_t(1) << 32)) {
        const at::Tensor flat = maps.reshape({n, p}).to(torch::kDouble);
        const at::Tensor idx = std::get<1>(torch::sort(flat, /*stable=*/true, 1, descending));
        ranks.scatter_(1, idx, torch::arange(p, torch::kLong).expand({n, p}).contiguous());
        return ranks;
    }
    // Float maps (every method's): a stable radix sort of each map's values, ties in pixel order
    // as the stable sort above gives them.
    const at::Tensor flat = maps.reshape({n, p}).contiguous();
    const float* pm = flat.data_ptr<float>();
    int64_t* pr = ranks.data_ptr<int64_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        std::vector<uint32_t> key(static_cast<size_t>(p)), idx(static_cast<size_t>(p)), key2, idx2;
        for (int64_t i = begin; i < end; ++i) {
            for (int64_t q = 0; q < p; ++q) {
                key[size_t(q)] = detail::orderable_key(pm[i * p + q], descending);
                idx[size_t(q)] = uint32_t(q);
            }
            detail::radix_sort(key, idx, key2, idx2);
            for (int64_t j = 0; j < p; ++j) pr[i * p + idx[size_t(j)]] = j;
        }
    });
    return ranks;
}

namespace {

void check_maps(const at::Tensor& images, const at::Tensor& maps) {
    if (!maps.defined() || maps.dim() != 3 || maps.size(0) != images.size(0) || maps.size(1) != images.size(2) ||
        maps.size(2) != images.size(3))
        throw Error("the maps must be [N,H,W] for images [N,C,H,W] = " + detail::shape_str(images.sizes().vec()) +
                    ", got " + (maps.defined() ? detail::shape_str(maps.sizes().vec()) : std::string("none")));
    if (!torch::isfinite(maps).all().item<bool>())
        throw Error("a map holds NaN or infinite values: the method's map cannot order the pixels; check the "
                    "model and the method's settings");
}

// Scores rows [R,...] of perturbed copies, row r of image images_of[r].
at::Tensor score_rows(const Model& model, const TargetScorer& scorer, const at::Tensor& rows,
                      const std::vector<int64_t>& images_of) {
    return scorer.scores(model.forward_unchecked(rows), images_of).to(torch::kDouble);
}

// Calls fn(first, end) for [0, total) in batches, reporting progress in [lo, hi].
template <class Fn>
void in_batches(int64_t total, int64_t batch, const ProgressFn& progress, double lo, double hi, Fn fn) {
    for (int64_t first = 0; first < total; first += batch) {
        const int64_t end = std::min(total, first + batch);
        fn(first, end);
        report_progress(progress, lo + (hi - lo) * double(end) / double(total));
    }
}

void check_batch(int batch_size) {
    if (batch_size < 1) throw Error("the batch size must be at least 1, got " + std::to_string(batch_size));
}

}  // namespace

void check_curve_steps(int steps, int64_t pixels) {
    if (steps < 1 || steps > pixels)
        throw Error("the curve needs 1 to " + std::to_string(pixels) + " steps (the pixels of an image), got " +
                    std::to_string(steps) + ": pass --steps N in that range");
}

void check_road_options(const RoadOptions& o) {
    if (o.percentages.empty()) throw Error("ROAD needs at least one percentage: pass --percentages 10,20,...");
    for (double q : o.percentages)
        if (!(q > 0 && q < 100))
            throw Error("ROAD's percentages must lie strictly between 0 and 100, got " + detail::format_number(q) +
                        ": pass --percentages 10,20,...,90 for example");
    if (!(o.noise >= 0 && std::isfinite(o.noise)))
        throw Error("ROAD's imputation noise must be a finite number >= 0, got " + detail::format_number(o.noise));
}

void check_infidelity_options(const InfidelityOptions& o) {
    if (o.samples < 1) throw Error("infidelity needs at least 1 sample, got " + std::to_string(o.samples));
    if (!(o.noise >= 0 && std::isfinite(o.noise)))
        throw Error("infidelity's noise must be a finite number >= 0, got " + detail::format_number(o.noise));
}

void check_sensitivity_options(const SensitivityOptions& o) {
    if (o.samples < 1) throw Error("max-sensitivity needs at least 1 sample, got " + std::to_string(o.samples));
    if (!(o.radius > 0 && std::isfinite(o.radius)))
        throw Error("max-sensitivity's radius must be a finite number > 0, got " + detail::format_number(o.radius));
}

CurveResult perturbation_curve(const Model& model, const at::Tensor& images, const at::Tensor& maps,
                               const CurveOptions& o, const RunContext& context) {
    ThreadScope threads(context);
    torch::NoGradGuard no_grad;
    check_input(model, images);
    check_maps(images, maps);
    check_batch(o.batch_size);
    check_baseline(o.baseline);
    const int64_t n = images.size(0), h = images.size(2), w = images.size(3), p = h * w;
    check_curve_steps(o.steps, p);
    check_target(o.target, n);
    const TargetScorer scorer(model, o.target, detail::forward_chunks(model, images, o.batch_size));
    const at::Tensor base = baseline_images(images, o.baseline, 10.0);
    const at::Tensor& from = o.insertion ? base : images;
    const at::Tensor& to = o.insertion ? images : base;
    const at::Tensor ranks = relevance_ranks(maps, o.order);
    const int64_t per_image = o.steps + 1;
    at::Tensor curves = torch::empty({n, per_image}, torch::kDouble);
    in_batches(n * per_image, o.batch_size, context.progress, 0.0, 1.0, [&](int64_t first, int64_t end) {
        std::vector<int64_t> img, cut;
        for (int64_t r = first; r < end; ++r) {
            img.push_back(r / per_image);
            cut.push_back((r % per_image) * p / o.steps);
        }
        const at::Tensor idx = torch::tensor(img, torch::kLong);
        const at::Tensor changed = ranks.index_select(0, idx).lt(torch::tensor(cut, torch::kLong).unsqueeze(1));
        const at::Tensor rows =
            torch::where(changed.view({end - first, 1, h, w}), to.index_select(0, idx), from.index_select(0, idx));
        curves.view({-1}).slice(0, first, end).copy_(score_rows(model, scorer, rows, img));
    });
    CurveResult r;
    r.targets = scorer.classes();
    r.curves = curves.to(torch::kFloat);
    r.areas = ((curves.sum(1) - 0.5 * (curves.select(1, 0) + curves.select(1, o.steps))) / double(o.steps))
                  .to(torch::kFloat);
    return r;
}

// ---------------------------------------------------------------------------------------------
// ROAD

namespace {

// The clean outputs a TargetScorer is built from. A classifier's scorer reads them only to find
// the predicted class: with the classes given, the output's shape is enough and ROAD's forward
// passes are the perturbed images' alone.
at::Tensor scorer_outputs(const Model& model, const at::Tensor& images, const Target& t, int64_t batch) {
    const std::vector<int64_t> shape = model.output_shape();
    const bool given = t.kind == Target::Kind::Class || t.kind == Target::Kind::Label || t.kind == Target::Kind::PerImage;
    if (shape.size() == 1 && given) return torch::zeros({images.size(0), shape[0]});
    return detail::forward_chunks(model, images, batch);
}

}  // namespace

at::Tensor noisy_linear_imputation(const at::Tensor& images, const at::Tensor& removed, double noise,
                                   at::Generator& gen, ImputationSolver solver) {
    const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
    CONVSCOPE_CHECK(removed.dim() == 3 && removed.size(0) == n && removed.size(1) == h && removed.size(2) == w,
                    "one removal mask [H,W] per image");
    const at::Tensor rm = removed.to(torch::kBool).contiguous();
    const bool* pm = rm.data_ptr<bool>();
    for (int64_t i = 0; i < n; ++i)
        if (std::all_of(pm + i * h * w, pm + (i + 1) * h * w, [](bool b) { return b; }))
            throw Error("every pixel of an image is removed: linear imputation needs at least one kept pixel; "
                        "use a percentage below 100");
    const at::Tensor x = images.to(torch::kFloat).contiguous();
    at::Tensor filled = torch::empty_like(x);
    const float* px = x.data_ptr<float>();
    float* po = filled.data_ptr<float>();
    // Noise only for the removed values: each image draws from its own generator, seeded from
    // gen image by image in order, so that the values depend neither on how callers batch nor
    // on the threads.
    std::vector<uint64_t> seeds(size_t(n), 0);
    if (noise > 0) {
        auto* g = at::check_generator<at::CPUGeneratorImpl>(gen);
        std::lock_guard<std::mutex> lock(g->mutex_);
        for (auto& s : seeds) s = g->random64();
    }
    const float sigma = float(noise);
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> cells(size_t(h * w) + 1);
        for (int64_t i = begin; i < end; ++i) {
            float* dst = po + i * c * h * w;
            const bool* rm_i = pm + i * h * w;
            detail::impute_image(px + i * c * h * w, rm_i, c, h, w, dst, solver);
            if (noise <= 0) continue;
            // The removed pixels in order, gathered without a branch (the mask is irregular).
            size_t count = 0;
            for (int64_t q = 0; q < h * w; ++q) {
                cells[count] = q;
                count += size_t(rm_i[q]);
            }
            detail::NormalStream z(seeds[size_t(i)]);
            for (int64_t ch = 0; ch < c; ++ch) {
                float* plane = dst + ch * h * w;
                for (size_t j = 0; j < count; ++j) plane[cells[j]] += sigma * z.next();
            }
        }
    });
    return filled;
}

RoadResult road(const Model& model, const at::Tensor& images, const at::Tensor& maps, const RoadOptions& o,
                const RunContext& context) {
    ThreadScope threads(context);
    torch::NoGradGuard no_grad;
    check_input(model, images);
    check_maps(images, maps);
    check_batch(o.batch_size);
    check_road_options(o);
    check_target(o.target, images.size(0));
    const int64_t n = images.size(0), h = images.size(2), w = images.size(3), p = h * w;
    const int64_t per_image = static_cast<int64_t>(o.percentages.size());
    const TargetScorer scorer(model, o.target, scorer_outputs(model, images, o.target, o.batch_size));
    const at::Tensor ranks = relevance_ranks(maps, o.order);
    at::Tensor scores = torch::empty({n * per_image}, torch::kDouble);
    at::Tensor kept = torch::empty({n * per_image}, torch::kFloat);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    in_batches(n * per_image, o.batch_size, context.progress, 0.0, 1.0, [&](int64_t first, int64_t end) {
        std::vector<int64_t> img, cut;
        for (int64_t r = first; r < end; ++r) {
            img.push_back(r / per_image);
            cut.push_back(static_cast<int64_t>(std::floor(o.percentages[size_t(r % per_image)] * double(p) / 100.0)));
        }
        const at::Tensor idx = torch::tensor(img, torch::kLong);
        // Row r removes the pixels ranked below its cut.
        at::Tensor removed = torch::empty({end - first, h, w}, torch::kBool);
        bool* pr = removed.data_ptr<bool>();
        for (int64_t r = 0; r < end - first; ++r) {
            const int64_t* rank = ranks.data_ptr<int64_t>() + img[size_t(r)] * p;
            const int64_t c = cut[size_t(r)];
            for (int64_t q = 0; q < p; ++q) pr[r * p + q] = rank[q] < c;
        }
        const at::Tensor rows = noisy_linear_imputation(images.index_select(0, idx), removed, o.noise, gen);
        const at::Tensor out = model.forward_unchecked(rows);
        scores.slice(0, first, end).copy_(scorer.scores(out, img).to(torch::kDouble));
        if (!scorer.similarity()) {
            std::vector<int64_t> cls;
            for (const int64_t i : img) cls.push_back(scorer.classes()[size_t(i)]);
            const at::Tensor pred = scorer.class_probs(out, img).argmax(1);
            kept.slice(0, first, end).copy_(pred.eq(torch::tensor(cls, torch::kLong)));
        }
    });
    RoadResult r;
    r.targets = scorer.classes();
    r.scores = scores.view({n, per_image}).to(torch::kFloat);
    if (!scorer.similarity()) r.kept = kept.view({n, per_image});
    r.areas = scores.view({n, per_image}).mean(1).to(torch::kFloat);
    return r;
}

// ---------------------------------------------------------------------------------------------
// Infidelity and max-sensitivity

at::Tensor infidelity(const Model& model, const at::Tensor& images, const Explanation& e, const InfidelityOptions& o,
                      const RunContext& context) {
    ThreadScope threads(context);
    torch::NoGradGuard no_grad;
    check_input(model, images);
    check_batch(o.batch_size);
    check_infidelity_options(o);
    const bool per_value = e.per_value.defined();
    const at::Tensor phi = per_value ? e.per_value : e.signed_map.unsqueeze(1);  // [N,C or 1,H,W]
    check_maps(images, phi.select(1, 0));
    check_target(o.target, images.size(0));
    const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
    const int64_t s = o.samples;
    const at::Tensor clean_out = detail::forward_chunks(model, images, o.batch_size);
    const TargetScorer scorer(model, o.target, clean_out);
    const at::Tensor clean = scorer.scores(clean_out).to(torch::kDouble);
    // Perturbations image by image in order: I [N,S,C or 1,H,W].
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed);
    at::Tensor pert = torch::empty({n, s, phi.size(1), h, w}, torch::kFloat);
    for (int64_t i = 0; i < n; ++i) {
        const double range = (images[i].max() - images[i].min()).item<double>();
        pert[i] = torch::randn({s, phi.size(1), h, w}, gen, torch::kFloat) * float(o.noise * range);
    }
    const at::Tensor predicted =
        (pert.to(torch::kDouble) * phi.unsqueeze(1).to(torch::kDouble)).sum({2, 3, 4});  // [N,S] <I, phi>
    at::Tensor change = torch::empty({n * s}, torch::kDouble);
    in_batches(n * s, o.batch_size, context.progress, 0.0, 1.0, [&](int64_t first, int64_t end) {
        std::vector<int64_t> img;
        for (int64_t r = first; r < end; ++r) img.push_back(r / s);
        const at::Tensor idx = torch::tensor(img, torch::kLong);
        const at::Tensor i_rows = pert.view({n * s, phi.size(1), h, w}).slice(0, first, end).expand({end - first, c, h, w});
        const at::Tensor rows = images.index_select(0, idx) - i_rows;
        change.slice(0, first, end).copy_(clean.index_select(0, idx) - score_rows(model, scorer, rows, img));
    });
    const at::Tensor delta = change.view({n, s});
    at::Tensor beta = torch::ones({n, 1}, torch::kDouble);
    if (o.normalize) {
        const at::Tensor pp = (predicted * predicted).sum(1, true);
        beta = torch::where(pp > 0, (predicted * delta).sum(1, true) / torch::where(pp > 0, pp, torch::ones_like(pp)),
                            torch::zeros_like(pp));
    }
    return (beta * predicted - delta).pow(2).mean(1).to(torch::kFloat);
}

at::Tensor max_sensitivity(const Model& model, const at::Tensor& images, const Explanation& e,
                           const Explainer& explainer, const Target& target, const SensitivityOptions& o,
                           const RunContext& context) {
    check_input(model, images);
    check_sensitivity_options(o);
    check_maps(images, e.map);
    const int64_t n = images.size(0);
    const at::Tensor range = std::get<0>(images.reshape({n, -1}).max(1)) - std::get<0>(images.reshape({n, -1}).min(1));
    const Target fixed = fixed_target(model, images, target, e.targets);
    const at::Tensor clean = e.map.to(torch::kDouble);
    const at::Tensor norm = clean.reshape({n, -1}).norm(2, 1);
    at::Tensor worst = torch::zeros({n}, torch::kDouble);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(context.seed ^ 0x5e5e5e5eULL);
    for (int64_t s = 0; s < o.samples; ++s) {
        const at::Tensor u = torch::rand(images.sizes(), gen, torch::kFloat) * 2 - 1;
        const at::Tensor y = images + u * (o.radius * range).view({n, 1, 1, 1}).to(torch::kFloat);
        RunContext sub = context;
        sub.progress = sub_progress(context.progress, double(s) / double(o.samples), double(s + 1) / double(o.samples));
        const Explanation ey = explainer(model, y, fixed, sub);
        const at::Tensor diff = (ey.map.to(torch::kDouble) - clean).reshape({n, -1}).norm(2, 1);
        worst = torch::maximum(worst, diff / torch::where(norm > 0, norm, torch::ones_like(norm)));
    }
    return worst.to(torch::kFloat);
}

}  // namespace convscope
