// Deletion and insertion curves, ROAD with noisy linear imputation, infidelity and
// max-sensitivity: every perturbed copy is built in batches and scored with the TargetScorer
// fixed from the clean images.
#include "convscope/methods/faithfulness.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <Eigen/Sparse>
#include <Eigen/SparseCholesky>

#include <algorithm>
#include <cmath>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"
#include "methods/detail/batches.hpp"

namespace convscope {

const char* relevance_order_name(RelevanceOrder order) {
    return order == RelevanceOrder::MostFirst ? "morf" : "lerf";
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

// [N,P] int64: each pixel's place in the order (0 = perturbed first).
at::Tensor order_ranks(const at::Tensor& maps, RelevanceOrder order) {
    const int64_t n = maps.size(0), p = maps.size(1) * maps.size(2);
    const at::Tensor flat = maps.reshape({n, p}).to(torch::kDouble);
    const at::Tensor idx = std::get<1>(torch::sort(flat, /*stable=*/true, 1, order == RelevanceOrder::MostFirst));
    at::Tensor ranks = torch::empty({n, p}, torch::kLong);
    ranks.scatter_(1, idx, torch::arange(p, torch::kLong).expand({n, p}).contiguous());
    return ranks;
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
    const at::Tensor ranks = order_ranks(maps, o.order);
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

constexpr int kDy[8] = {-1, -1, -1, 0, 0, 1, 1, 1}, kDx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
constexpr double kWt[8] = {1.0 / 12, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 12};

// The system of one image: for every removed pixel q,
//   wsum(q) v(q) - sum_{removed r ~ q} w v(r) = sum_{kept r ~ q} w x(r),
// with w = 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours inside the image and
// wsum(q) their sum. It is symmetric positive definite when a pixel is kept.

// Exact solve by a sparse LDL^T factorisation, one per image shared by its channels. The
// fallback of impute_cg.
void impute_ldlt(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out) {
    const int64_t p = h * w;
    std::vector<int64_t> id(size_t(p), -1);
    std::vector<int64_t> cells;
    for (int64_t q = 0; q < p; ++q)
        if (removed[q]) {
            id[size_t(q)] = int64_t(cells.size());
            cells.push_back(q);
        }
    const int64_t m = int64_t(cells.size());
    if (m == 0) return;
    std::vector<Eigen::Triplet<double>> triplets;
    triplets.reserve(size_t(m) * 9);
    Eigen::MatrixXd rhs = Eigen::MatrixXd::Zero(m, c);
    for (int64_t k = 0; k < m; ++k) {
        const int64_t y = cells[size_t(k)] / w, x = cells[size_t(k)] % w;
        double wsum = 0;
        for (int j = 0; j < 8; ++j) {
            const int64_t yy = y + kDy[j], xx = x + kDx[j];
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            wsum += kWt[j];
            const int64_t r = yy * w + xx;
            if (removed[r])
                triplets.emplace_back(k, id[size_t(r)], -kWt[j]);
            else
                for (int64_t ch = 0; ch < c; ++ch) rhs(k, ch) += kWt[j] * double(img[ch * p + r]);
        }
        triplets.emplace_back(k, k, wsum);
    }
    Eigen::SparseMatrix<double> a(m, m);
    a.setFromTriplets(triplets.begin(), triplets.end());
    Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>> solver(a);
    CONVSCOPE_CHECK(solver.info() == Eigen::Success, "the imputation system is positive definite when a pixel is kept");
    const Eigen::MatrixXd v = solver.solve(rhs);
    for (int64_t k = 0; k < m; ++k)
        for (int64_t ch = 0; ch < c; ++ch) out[ch * p + cells[size_t(k)]] = float(v(k, ch));
}

// Conjugate gradients on the image grid, channel by channel, without building the matrix: the
// vectors live on the grid with a border of zeros, are zero at kept pixels, and the product is
// the 8-neighbour stencil (branch-free, so the compiler vectorises it). The removed pixels start
// at the mean of the kept ones (the fill of a large hole tends to its border's mean), and the
// iteration stops at a residual of 1e-8 of the right-hand side's norm (or of the first
// residual's, when larger). Returns false when a
// channel has not converged after max_iter iterations (the caller then solves exactly).
bool impute_cg(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out) {
    const int64_t hp = h + 2, wp = w + 2, pp = hp * wp;
    int64_t off[8];
    for (int j = 0; j < 8; ++j) off[j] = kDy[j] * wp + kDx[j];
    thread_local std::vector<double> buf;
    buf.assign(size_t(pp) * 6, 0.0);
    double* mask = buf.data();     // 1 at removed pixels
    double* diag = mask + pp;      // wsum at removed pixels
    double* x = diag + pp;         // the solution (removed pixels) and the image (kept pixels)
    double* r = x + pp;
    double* d = r + pp;
    double* ad = d + pp;
    int64_t ymin = h, ymax = -1;
    for (int64_t y = 0; y < h; ++y)
        for (int64_t xx = 0; xx < w; ++xx)
            if (removed[y * w + xx]) {
                const int64_t q = (y + 1) * wp + xx + 1;
                mask[q] = 1.0;
                for (int j = 0; j < 8; ++j) {
                    const int64_t yy = y + kDy[j], xj = xx + kDx[j];
                    if (yy >= 0 && yy < h && xj >= 0 && xj < w) diag[q] += kWt[j];
                }
                ymin = std::min(ymin, y);
                ymax = std::max(ymax, y);
            }
    if (ymax < 0) return true;
    // Rows [lo, hi) of the padded grid hold every removed pixel.
    const int64_t lo = (ymin + 1) * wp, hi = (ymax + 2) * wp;
    const int64_t max_iter = 4 * (h + w) + 100;
    const double* __restrict mk = mask;
    const double* __restrict dg = diag;
    for (int64_t ch = 0; ch < c; ++ch) {
        const float* src = img + ch * h * w;
        double kept_sum = 0;
        int64_t kept = 0;
        for (int64_t y = 0; y < h; ++y)
            for (int64_t xx = 0; xx < w; ++xx) {
                const double v = double(src[y * w + xx]);
                x[(y + 1) * wp + xx + 1] = v;
                if (!removed[y * w + xx]) {
                    kept_sum += v;
                    ++kept;
                }
            }
        const double start = kept_sum / double(std::max<int64_t>(kept, 1));
        for (int64_t q = lo; q < hi; ++q)
            if (mk[q] != 0.0) x[q] = start;
        // r = b - A x0 = mask * (sum_j w_j x(q + off_j) - wsum x(q)) over the full grid x.
        double rr = 0, bb = 0;
        for (int64_t q = lo; q < hi; ++q) {
            double s = 0;
            for (int j = 0; j < 8; ++j) s += kWt[j] * x[q + off[j]];
            double b = 0;  // the kept neighbours' part alone, for the tolerance
            if (mk[q] != 0.0)
                for (int j = 0; j < 8; ++j) b += kWt[j] * x[q + off[j]] * (1.0 - mk[q + off[j]]);
            r[q] = mk[q] * (s - dg[q] * x[q]);
            d[q] = r[q];
            rr += r[q] * r[q];
            bb += b * b;
        }
        // Relative to the larger of b and the first residual: b alone is 0 where every kept
        // neighbour is black.
        const double tol2 = 1e-16 * std::max({bb, rr, 1e-300});
        bool done = !(rr > tol2);
        for (int64_t it = 0; it < max_iter && !done; ++it) {
            double dad = 0;
            double* __restrict adv = ad;
            const double* __restrict dv = d;
#pragma omp simd reduction(+ : dad)
            for (int64_t q = lo; q < hi; ++q) {
                const double s = kWt[0] * dv[q + off[0]] + kWt[1] * dv[q + off[1]] + kWt[2] * dv[q + off[2]] +
                                 kWt[3] * dv[q + off[3]] + kWt[4] * dv[q + off[4]] + kWt[5] * dv[q + off[5]] +
                                 kWt[6] * dv[q + off[6]] + kWt[7] * dv[q + off[7]];
                adv[q] = mk[q] * (dg[q] * dv[q] - s);
                dad += dv[q] * adv[q];
            }
            if (!(dad > 0)) break;
            const double alpha = rr / dad;
            double rr_new = 0;
#pragma omp simd reduction(+ : rr_new)
            for (int64_t q = lo; q < hi; ++q) {
                x[q] += alpha * d[q];
                r[q] -= alpha * ad[q];
                rr_new += r[q] * r[q];
            }
            const double beta = rr_new / rr;
            rr = rr_new;
#pragma omp simd
            for (int64_t q = lo; q < hi; ++q) d[q] = r[q] + beta * d[q];
            done = !(rr > tol2);
        }
        if (!done) return false;
        float* dst = out + ch * h * w;
        for (int64_t y = 0; y < h; ++y)
            for (int64_t xx = 0; xx < w; ++xx) dst[y * w + xx] = float(x[(y + 1) * wp + xx + 1]);
        // The direction vectors are zero outside the removed pixels again for the next channel.
        std::fill(r + lo, r + hi, 0.0);
        std::fill(d + lo, d + hi, 0.0);
    }
    return true;
}

// Whether conjugate gradients should beat the factorisation. Their iterations grow with the
// widest hole (D: the largest chessboard distance of a removed pixel to a kept one, by a
// two-pass distance transform) and cost the rows that hold removed pixels; the factorisation
// costs about m^1.5 for m removed pixels of a 2-D grid. The constants are fitted to timings of
// both on holes of every kind (`bench_evaluation --imputation`); small images always take the
// iterations, whose grid stays in cache.
bool prefer_cg(const bool* removed, int64_t h, int64_t w) {
    if (h * w <= 4096) return true;
    std::vector<int32_t> dist(size_t(h * w));
    const int32_t far = int32_t(h + w);
    int64_t m = 0, ymin = h, ymax = -1;
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
            const int64_t q = y * w + x;
            int32_t d = removed[q] ? far : 0;
            if (removed[q]) {
                ++m;
                ymin = std::min(ymin, y);
                ymax = std::max(ymax, y);
                if (y > 0) {
                    d = std::min(d, dist[size_t(q - w)] + 1);
                    if (x > 0) d = std::min(d, dist[size_t(q - w - 1)] + 1);
                    if (x + 1 < w) d = std::min(d, dist[size_t(q - w + 1)] + 1);
                }
                if (x > 0) d = std::min(d, dist[size_t(q - 1)] + 1);
            }
            dist[size_t(q)] = d;
        }
    int32_t widest = 0;
    for (int64_t y = h - 1; y >= 0; --y)
        for (int64_t x = w - 1; x >= 0; --x) {
            const int64_t q = y * w + x;
            int32_t d = dist[size_t(q)];
            if (d == 0) continue;
            if (y + 1 < h) {
                d = std::min(d, dist[size_t(q + w)] + 1);
                if (x > 0) d = std::min(d, dist[size_t(q + w - 1)] + 1);
                if (x + 1 < w) d = std::min(d, dist[size_t(q + w + 1)] + 1);
            }
            if (x + 1 < w) d = std::min(d, dist[size_t(q + 1)] + 1);
            dist[size_t(q)] = d;
            widest = std::max(widest, d);
        }
    if (m == 0) return true;
    const double rows = double(ymax - ymin + 1) * double(w);
    return double(widest + 4) * rows < 0.3 * std::pow(double(m), 1.5);
}

// The linear imputation of one image [C,H,W] (float32, contiguous) where removed [H,W] (bool,
// contiguous) is true, written into out [C,H,W]: by conjugate gradients where the solver (or for
// Auto prefer_cg) says so and they converge, else by the factorisation.
void impute_one(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out,
                ImputationSolver solver) {
    std::copy(img, img + c * h * w, out);
    const bool cg = solver == ImputationSolver::Iterative ||
                    (solver == ImputationSolver::Auto && prefer_cg(removed, h, w));
    if (!cg) {
        impute_ldlt(img, removed, c, h, w, out);
        return;
    }
    if (!impute_cg(img, removed, c, h, w, out)) {
        std::copy(img, img + c * h * w, out);
        impute_ldlt(img, removed, c, h, w, out);
    }
}

}  // namespace

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
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i)
            impute_one(px + i * c * h * w, pm + i * h * w, c, h, w, po + i * c * h * w, solver);
    });
    // Noise image by image in order, so that it does not depend on how callers batch.
    if (noise > 0) {
        at::Tensor eps = torch::empty({n, c, h, w}, torch::kFloat);
        for (int64_t i = 0; i < n; ++i) eps.select(0, i).normal_(0.0, 1.0, gen);
        filled = torch::where(rm.unsqueeze(1), filled + float(noise) * eps, filled);
    }
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
    const at::Tensor ranks = order_ranks(maps, o.order);
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
        const at::Tensor removed =
            ranks.index_select(0, idx).lt(torch::tensor(cut, torch::kLong).unsqueeze(1)).view({end - first, h, w});
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
