#include "convscope/occlusion.hpp"

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <deque>
#include <memory>
#include <sstream>

#include "convscope/error.hpp"
#include "convscope/model.hpp"
#include "detail/incremental.hpp"

namespace convscope {

int64_t occlusion_positions(int64_t size, int64_t patch, int64_t stride) {
    if (patch < 1 || stride < 1 || patch > size) return 0;
    return (size - patch) / stride + 1;
}

namespace {

std::string dims(int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); }

void validate_options(const at::Tensor& x, const OcclusionOptions& o) {
    const int64_t H = x.size(2), W = x.size(3);
    if (o.patch_h < 1 || o.patch_w < 1)
        throw Error("the occlusion patch must be at least 1x1 pixels, got " + dims(o.patch_h, o.patch_w) +
                    ": use --patch P or PxQ with positive sizes");
    if (o.stride_y < 1 || o.stride_x < 1)
        throw Error("the occlusion stride must be at least 1 pixel, got " + dims(o.stride_y, o.stride_x) +
                    ": use --stride S or SxT with positive steps");
    if (o.patch_h > H || o.patch_w > W)
        throw Error("the occlusion patch " + dims(o.patch_h, o.patch_w) + " is larger than the input " +
                    dims(H, W) + ": use a patch of at most " + dims(H, W));
    if (o.batch_size < 1)
        throw Error("the occlusion batch size must be at least 1, got " + std::to_string(o.batch_size));
    if (o.baseline == OcclusionBaseline::Value && !std::isfinite(o.baseline_value))
        throw Error("the occlusion baseline must be a finite number");
    if (o.baseline == OcclusionBaseline::Blur && (o.blur_sigma < 0 || !std::isfinite(o.blur_sigma)))
        throw Error("the blur sigma must be a finite number >= 0 (0 = automatic)");
    if (o.mode == OcclusionMode::Approximate) {
        if (!(o.tau > 0 && o.tau <= 1))
            throw Error("tau (projective-field threshold) must be in (0, 1], got " + std::to_string(o.tau));
        if (o.coarse_step < 1 || (o.coarse_step & (o.coarse_step - 1)) != 0)
            throw Error("the coarse step must be a power of 2 (1, 2, 4, 8, ...), got " +
                        std::to_string(o.coarse_step));
        if (!(o.refine_drop >= 0) || !(o.refine_spread >= 0))
            throw Error("the refinement thresholds must be >= 0");
    }
    if (o.target == OcclusionTarget::Label && static_cast<int64_t>(o.labels.size()) != x.size(0))
        throw Error("target 'label' needs one label per image, but the data has no labels: use "
                    "--target pred or a class number, or give labels (--labels L.npy for .npy data)");
}

// Targets per image from the clean outputs [N,K].
std::vector<int64_t> choose_targets(const at::Tensor& clean_out, const OcclusionOptions& o) {
    const int64_t N = clean_out.size(0), K = clean_out.size(1);
    std::vector<int64_t> t(N);
    for (int64_t n = 0; n < N; ++n) {
        switch (o.target) {
        case OcclusionTarget::Predicted: t[n] = clean_out[n].argmax().item<int64_t>(); break;
        case OcclusionTarget::Class:
            if (o.target_class < 0 || o.target_class >= K)
                throw Error("target class " + std::to_string(o.target_class) +
                            " is out of range: the model has " + std::to_string(K) + " classes (0.." +
                            std::to_string(K - 1) + ")");
            t[n] = o.target_class;
            break;
        case OcclusionTarget::Label:
            if (o.labels[n] < 0)
                throw Error("target 'label' needs a label for every image, but image " + std::to_string(n) +
                            " has none: use --target pred or a class number");
            if (o.labels[n] >= K)
                throw Error("label " + std::to_string(o.labels[n]) + " of image " + std::to_string(n) +
                            " is out of range: the model has " + std::to_string(K) + " classes (0.." +
                            std::to_string(K - 1) + ")");
            t[n] = o.labels[n];
            break;
        }
    }
    return t;
}

at::Tensor gaussian_blur(const at::Tensor& x, double sigma) {
    const int64_t C = x.size(1);
    const int64_t r = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(3 * sigma)));
    auto k = torch::arange(-r, r + 1, torch::kDouble);
    k = torch::exp(-(k * k) / (2 * sigma * sigma));
    k = (k / k.sum()).to(torch::kFloat);
    auto ky = k.view({1, 1, 2 * r + 1, 1}).repeat({C, 1, 1, 1});
    auto kx = k.view({1, 1, 1, 2 * r + 1}).repeat({C, 1, 1, 1});
    // Edge pixels repeat outwards (reflection would need the image to be larger than the kernel).
    auto padded = at::replication_pad2d(x, {r, r, r, r});
    const std::vector<int64_t> one{1, 1}, zero{0, 0};
    auto y = at::conv2d(padded, ky, at::Tensor(), one, zero, one, C);
    return at::conv2d(y, kx, at::Tensor(), one, zero, one, C).contiguous();
}

// Window positions (top-left corners) in row-major order.
struct Grid {
    int64_t py = 0, px = 0;
    std::vector<int64_t> ys, xs;  // per position index i = iy * px + ix
};

Grid make_grid(int64_t H, int64_t W, const OcclusionOptions& o) {
    Grid g;
    g.py = occlusion_positions(H, o.patch_h, o.stride_y);
    g.px = occlusion_positions(W, o.patch_w, o.stride_x);
    for (int64_t iy = 0; iy < g.py; ++iy)
        for (int64_t ix = 0; ix < g.px; ++ix) {
            g.ys.push_back(iy * o.stride_y);
            g.xs.push_back(ix * o.stride_x);
        }
    return g;
}

// Runs the model on occluded copies of one image.
class Evaluator {
public:
    virtual ~Evaluator() = default;
    // Sets the image [1,C,H,W] and its baseline [1,C,H,W]; returns the clean output [1,K].
    virtual at::Tensor set_image(const at::Tensor& image, const at::Tensor& baseline) = 0;
    // Outputs [B,K] with windows (ys[b], xs[b]) of size ph x pw set to the baseline.
    virtual at::Tensor outputs(const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) = 0;
};

// Copies the baseline windows into dst: dst [B,C,Hd,Wd] at (dy[b], dx[b]) from base [1,C,Hb,Wb]
// at (sy[b], sx[b]), ph x pw each.
void copy_windows(const at::Tensor& base, at::Tensor& dst, const std::vector<int64_t>& sy,
                  const std::vector<int64_t>& sx, const std::vector<int64_t>& dy,
                  const std::vector<int64_t>& dx, int64_t ph, int64_t pw) {
    const int64_t B = dst.size(0), C = dst.size(1), Hd = dst.size(2), Wd = dst.size(3);
    const int64_t Hb = base.size(2), Wb = base.size(3);
    const float* s = base.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            for (int64_t r = 0; r < ph; ++r)
                std::memcpy(d + (i * Hd + dy[b] + r) * Wd + dx[b], s + (c * Hb + sy[b] + r) * Wb + sx[b],
                            pw * sizeof(float));
        }
    });
}

class FullEvaluator : public Evaluator {
public:
    FullEvaluator(const Model& m, int64_t ph, int64_t pw) : model_(m), ph_(ph), pw_(pw) {}
    at::Tensor set_image(const at::Tensor& image, const at::Tensor& baseline) override {
        image_ = image.contiguous();
        baseline_ = baseline.contiguous();
        return forward(image_);
    }
    at::Tensor outputs(const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) override {
        const int64_t B = static_cast<int64_t>(ys.size());
        // A fresh tensor (expand + contiguous would alias the image itself when B = 1).
        at::Tensor batch = at::empty({B, image_.size(1), image_.size(2), image_.size(3)}, image_.options());
        batch.copy_(image_.expand({B, -1, -1, -1}));
        copy_windows(baseline_, batch, ys, xs, ys, xs, ph_, pw_);
        return forward(batch);
    }

private:
    // The module's forward without Model::forward's input checks (done once for all images).
    at::Tensor forward(const at::Tensor& batch) {
        c10::IValue out = model_.module().forward({batch});
        if (out.isTuple()) out = out.toTupleRef().elements().at(0);
        if (!out.isTensor())
            throw Error("the model does not return a tensor from forward: occlusion needs a "
                        "classifier that returns logits [N,K]");
        return out.toTensor();
    }

    const Model& model_;
    int64_t ph_, pw_;
    at::Tensor image_, baseline_;
};

class IncrementalEvaluator : public Evaluator {
public:
    IncrementalEvaluator(const Model& m, const std::vector<int64_t>& chw, double tau, int64_t ph,
                         int64_t pw)
        : engine_(m, chw, tau), ph_(ph), pw_(pw) {}
    at::Tensor set_image(const at::Tensor& image, const at::Tensor& baseline) override {
        baseline_ = baseline.contiguous();
        return engine_.set_image(image);
    }
    at::Tensor outputs(const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) override {
        const int64_t B = static_cast<int64_t>(ys.size());
        at::Tensor patches = at::empty({B, baseline_.size(1), ph_, pw_}, baseline_.options());
        const std::vector<int64_t> zero(B, 0);
        copy_windows(baseline_, patches, ys, xs, zero, zero, ph_, pw_);
        return engine_.run(patches, ys, xs);
    }
    const std::string& note() const { return engine_.note(); }

private:
    detail::IncrementalEngine engine_;
    int64_t ph_, pw_;
    at::Tensor baseline_;
};

// Per-position results of one image.
struct Drops {
    std::vector<float> drop, top_prob, target_prob;
    std::vector<int64_t> top_class;
    std::vector<char> evaluated;
    void resize(size_t n) {
        drop.assign(n, 0.f);
        top_prob.assign(n, 0.f);
        target_prob.assign(n, 0.f);
        top_class.assign(n, 0);
        evaluated.assign(n, 0);
    }
};

struct CleanInfo {
    int64_t target = 0;
    float score = 0;  // target's logit or probability
};

// Evaluates the positions `which` (indices into the grid) in batches and fills `out`.
void evaluate(Evaluator& ev, const Grid& g, const std::vector<int64_t>& positions, const CleanInfo& clean,
              const OcclusionOptions& o, Drops& out, int64_t& forwards,
              const std::function<void(int64_t)>& done) {
    // Batches of positions with the same offset modulo 4: CNNs downsample by powers of 2, so such
    // windows change equally large regions of the downsampled layers, and the incremental engine
    // (which pads every patch of a batch to the largest) computes less slack.
    std::vector<int64_t> which = positions;
    std::stable_sort(which.begin(), which.end(), [&](int64_t a, int64_t b) {
        return std::make_pair(g.ys[a] % 4, g.xs[a] % 4) < std::make_pair(g.ys[b] % 4, g.xs[b] % 4);
    });
    for (size_t start = 0; start < which.size(); start += static_cast<size_t>(o.batch_size)) {
        const size_t end = std::min(which.size(), start + static_cast<size_t>(o.batch_size));
        std::vector<int64_t> ys, xs;
        for (size_t i = start; i < end; ++i) {
            ys.push_back(g.ys[which[i]]);
            xs.push_back(g.xs[which[i]]);
        }
        at::Tensor logits = ev.outputs(ys, xs).to(torch::kFloat).contiguous();
        at::Tensor probs = torch::softmax(logits, 1).contiguous();
        auto top = probs.max(1);
        const at::Tensor top_p = std::get<0>(top).contiguous(), top_c = std::get<1>(top).contiguous();
        const int64_t K = logits.size(1);
        const float* lp = logits.data_ptr<float>();
        const float* pp = probs.data_ptr<float>();
        const float* tp = top_p.data_ptr<float>();
        const int64_t* tc = top_c.data_ptr<int64_t>();
        for (size_t i = start; i < end; ++i) {
            const int64_t b = static_cast<int64_t>(i - start), pos = which[i];
            const float score = o.score == OcclusionScore::Logit ? lp[b * K + clean.target]
                                                                  : pp[b * K + clean.target];
            out.drop[pos] = clean.score - score;
            out.target_prob[pos] = pp[b * K + clean.target];
            out.top_prob[pos] = tp[b];
            out.top_class[pos] = tc[b];
            out.evaluated[pos] = 1;
        }
        forwards += static_cast<int64_t>(end - start);
        done(static_cast<int64_t>(end - start));
    }
}

// Coarse-to-fine drill-down: positions on a grid of step coarse_step first; then at each finer
// level, the new positions of a cell (of the previous level's grid) are evaluated only when the
// cell's corner drops are large or spread out, or its corners disagree about the class;
// elsewhere they are interpolated bilinearly from the corners.
void drill_down(Evaluator& ev, const Grid& g, const CleanInfo& clean, int64_t predicted,
                const OcclusionOptions& o, Drops& d, int64_t& forwards,
                const std::function<void(int64_t)>& done) {
    auto coords = [](int64_t n, int64_t step) {
        std::vector<int64_t> c;
        for (int64_t i = 0; i < n; i += step) c.push_back(i);
        if (c.back() != n - 1) c.push_back(n - 1);
        return c;
    };
    int64_t step = o.coarse_step;
    while (step > 1 && (step >= g.py && step >= g.px)) step /= 2;  // at least a 2x2 start grid
    std::vector<int64_t> first;
    {
        const auto cy = coords(g.py, step), cx = coords(g.px, step);
        for (int64_t y : cy)
            for (int64_t x : cx) first.push_back(y * g.px + x);
    }
    evaluate(ev, g, first, clean, o, d, forwards, done);
    for (int64_t s = step / 2; s >= 1; s /= 2) {
        const auto py_c = coords(g.py, 2 * s), px_c = coords(g.px, 2 * s);
        const auto cy = coords(g.py, s), cx = coords(g.px, s);
        // Known values so far (evaluated or interpolated on the previous level's grid).
        float lo = 0, hi = 0, max_abs = 0;
        for (size_t i = 0; i < d.drop.size(); ++i)
            if (d.evaluated[i]) {
                lo = std::min(lo, d.drop[i]);
                hi = std::max(hi, d.drop[i]);
                max_abs = std::max(max_abs, std::abs(d.drop[i]));
            }
        const float range = hi - lo;
        auto bracket = [](const std::vector<int64_t>& c, int64_t v, int64_t& a, int64_t& b) {
            auto it = std::lower_bound(c.begin(), c.end(), v);
            if (*it == v) {
                a = b = v;
                return;
            }
            b = *it;
            a = *(it - 1);
        };
        std::vector<int64_t> refine;
        std::vector<std::array<int64_t, 5>> interp;  // pos, y0, y1, x0, x1
        for (int64_t y : cy)
            for (int64_t x : cx) {
                const int64_t pos = y * g.px + x;
                if (d.evaluated[pos]) continue;
                int64_t y0, y1, x0, x1;
                bracket(py_c, y, y0, y1);
                bracket(px_c, x, x0, x1);
                const int64_t corners[4] = {y0 * g.px + x0, y0 * g.px + x1, y1 * g.px + x0, y1 * g.px + x1};
                float cmin = d.drop[corners[0]], cmax = cmin, cabs = 0;
                bool class_change = false;
                for (int64_t c : corners) {
                    cmin = std::min(cmin, d.drop[c]);
                    cmax = std::max(cmax, d.drop[c]);
                    cabs = std::max(cabs, std::abs(d.drop[c]));
                    if (d.top_class[c] != predicted || d.top_class[c] != d.top_class[corners[0]])
                        class_change = true;
                }
                const bool big = max_abs > 0 && cabs >= o.refine_drop * max_abs;
                const bool spread = range > 0 && cmax - cmin >= o.refine_spread * range;
                if (big || spread || class_change) refine.push_back(pos);
                else interp.push_back({pos, y0, y1, x0, x1});
            }
        evaluate(ev, g, refine, clean, o, d, forwards, done);
        for (const auto& e : interp) {
            const int64_t pos = e[0], y = pos / g.px, x = pos % g.px;
            const double fy = e[2] == e[1] ? 0.0 : double(y - e[1]) / double(e[2] - e[1]);
            const double fx = e[4] == e[3] ? 0.0 : double(x - e[3]) / double(e[4] - e[3]);
            const int64_t c00 = e[1] * g.px + e[3], c01 = e[1] * g.px + e[4];
            const int64_t c10 = e[2] * g.px + e[3], c11 = e[2] * g.px + e[4];
            auto lerp = [&](const std::vector<float>& v) {
                return static_cast<float>((1 - fy) * ((1 - fx) * v[c00] + fx * v[c01]) +
                                          fy * ((1 - fx) * v[c10] + fx * v[c11]));
            };
            d.drop[pos] = lerp(d.drop);
            d.top_prob[pos] = lerp(d.top_prob);
            d.target_prob[pos] = lerp(d.target_prob);
            const int64_t nearest = (fy < 0.5 ? (fx < 0.5 ? c00 : c01) : (fx < 0.5 ? c10 : c11));
            d.top_class[pos] = d.top_class[nearest];
        }
        // Interpolated positions count as known for the next level's corners.
        for (const auto& e : interp) d.evaluated[e[0]] = 2;
    }
    for (auto& e : d.evaluated) e = e == 1 ? 1 : 0;
}

// Pixel attribution [H,W]: mean drop of the windows covering each pixel, 0 where none does.
at::Tensor pixel_map(const std::vector<float>& drop, const Grid& g, int64_t H, int64_t W,
                     const OcclusionOptions& o) {
    std::vector<double> sum(H * W, 0.0);
    std::vector<int32_t> count(H * W, 0);
    for (size_t i = 0; i < drop.size(); ++i) {
        for (int64_t y = g.ys[i]; y < g.ys[i] + o.patch_h; ++y)
            for (int64_t x = g.xs[i]; x < g.xs[i] + o.patch_w; ++x) {
                sum[y * W + x] += drop[i];
                count[y * W + x] += 1;
            }
    }
    at::Tensor m = torch::zeros({H, W});
    float* p = m.data_ptr<float>();
    for (int64_t i = 0; i < H * W; ++i) p[i] = count[i] ? static_cast<float>(sum[i] / count[i]) : 0.f;
    return m;
}

}  // namespace

at::Tensor occlusion_baseline(const at::Tensor& images, const OcclusionOptions& o) {
    torch::NoGradGuard no_grad;
    const at::Tensor x = images.to(torch::kFloat).contiguous();
    switch (o.baseline) {
    case OcclusionBaseline::Zero: return torch::zeros_like(x);
    case OcclusionBaseline::Value: return torch::full_like(x, o.baseline_value);
    case OcclusionBaseline::Mean: return x.mean({2, 3}, true).expand_as(x).contiguous();
    case OcclusionBaseline::Blur: {
        const double sigma = o.blur_sigma > 0 ? o.blur_sigma
                                              : static_cast<double>(std::max(x.size(2), x.size(3))) / 8.0;
        return gaussian_blur(x, sigma);
    }
    }
    return torch::zeros_like(x);
}

OcclusionResult occlusion(const Model& model, const at::Tensor& images_nchw, const OcclusionOptions& o,
                          const ProgressFn& progress) {
    check_input(model, images_nchw);
    validate_options(images_nchw, o);
    torch::NoGradGuard no_grad;
    const at::Tensor x = images_nchw.contiguous();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const Grid grid = make_grid(H, W, o);
    const int64_t P = grid.py * grid.px;

    // Clean outputs first: targets are checked before the long work starts.
    std::vector<at::Tensor> outs;
    for (int64_t n = 0; n < N; n += o.batch_size)
        outs.push_back(model.forward(x.slice(0, n, std::min(N, n + o.batch_size))));
    const at::Tensor clean_out = torch::cat(outs, 0).to(torch::kFloat);
    if (clean_out.dim() != 2)
        throw Error("occlusion needs a classifier whose output is [N,K] logits; this model returns " +
                    std::to_string(clean_out.dim()) + " dimensions");
    OcclusionResult r;
    r.targets = choose_targets(clean_out, o);
    r.positions_y = grid.py;
    r.positions_x = grid.px;
    const at::Tensor baselines = occlusion_baseline(x, o);

    std::unique_ptr<Evaluator> ev;
    std::unique_ptr<IncrementalEvaluator> exact;  // Approximate with compare_exact
    const std::vector<int64_t> chw{C, H, W};
    if (o.mode == OcclusionMode::Full) {
        ev = std::make_unique<FullEvaluator>(model, o.patch_h, o.patch_w);
    } else {
        auto inc = std::make_unique<IncrementalEvaluator>(
            model, chw, o.mode == OcclusionMode::Approximate ? o.tau : 1.0, o.patch_h, o.patch_w);
        r.engine_note = inc->note();
        ev = std::move(inc);
        if (o.mode == OcclusionMode::Approximate && o.compare_exact)
            exact = std::make_unique<IncrementalEvaluator>(model, chw, 1.0, o.patch_h, o.patch_w);
    }

    r.occlusion = torch::zeros({N, C, H, W});
    r.coarse = torch::zeros({N, grid.py, grid.px});
    r.top_class = torch::zeros({N, grid.py, grid.px}, torch::kLong);
    r.top_prob = torch::zeros({N, grid.py, grid.px});
    r.target_prob = torch::zeros({N, grid.py, grid.px});
    r.evaluated = torch::zeros({N, grid.py, grid.px}, torch::kBool);
    r.clean_score = torch::zeros({N});
    r.clean_prob = torch::zeros({N});

    const double total = static_cast<double>(N * P) * (exact ? 2.0 : 1.0);
    double done_units = 0;
    report_progress(progress, 0.0);
    std::vector<int64_t> all(P);
    for (int64_t i = 0; i < P; ++i) all[i] = i;
    for (int64_t n = 0; n < N; ++n) {
        const at::Tensor img = x.slice(0, n, n + 1);
        const at::Tensor base = baselines.slice(0, n, n + 1);
        at::Tensor out1 = ev->set_image(img, base).to(torch::kFloat);
        at::Tensor probs1 = torch::softmax(out1, 1);
        CleanInfo clean;
        clean.target = r.targets[n];
        const float logit = out1[0][clean.target].item<float>();
        const float prob = probs1[0][clean.target].item<float>();
        clean.score = o.score == OcclusionScore::Logit ? logit : prob;
        r.predicted.push_back(out1[0].argmax().item<int64_t>());
        r.clean_score[n] = clean.score;
        r.clean_prob[n] = prob;

        const double image_start = done_units;
        int64_t image_done = 0;
        auto done = [&](int64_t k) {
            image_done += k;
            // Approximate mode evaluates an unknown share of the positions: the bar moves with
            // the evaluations and jumps to the image's end when it is finished.
            done_units = std::min(image_start + static_cast<double>(P), image_start + image_done);
            report_progress(progress, std::min(1.0, done_units / total));
        };
        Drops d;
        d.resize(P);
        if (o.mode == OcclusionMode::Approximate) drill_down(*ev, grid, clean, r.predicted[n], o, d, r.forwards, done);
        else evaluate(*ev, grid, all, clean, o, d, r.forwards, done);
        done_units = image_start + static_cast<double>(P);

        at::Tensor map = pixel_map(d.drop, grid, H, W, o);
        r.occlusion[n].copy_(map.unsqueeze(0).expand({C, H, W}));
        r.coarse[n].copy_(torch::from_blob(d.drop.data(), {grid.py, grid.px}, torch::kFloat));
        r.top_prob[n].copy_(torch::from_blob(d.top_prob.data(), {grid.py, grid.px}, torch::kFloat));
        r.target_prob[n].copy_(torch::from_blob(d.target_prob.data(), {grid.py, grid.px}, torch::kFloat));
        r.top_class[n].copy_(torch::from_blob(d.top_class.data(), {grid.py, grid.px}, torch::kLong));
        std::vector<uint8_t> ev_flags(d.evaluated.begin(), d.evaluated.end());
        r.evaluated[n].copy_(torch::from_blob(ev_flags.data(), {grid.py, grid.px}, torch::kUInt8).to(torch::kBool));

        if (exact) {
            exact->set_image(img, base);
            Drops e;
            e.resize(P);
            int64_t ignored = 0;
            auto done_exact = [&](int64_t k) {
                done_units += static_cast<double>(k);
                report_progress(progress, std::min(1.0, done_units / total));
            };
            evaluate(*exact, grid, all, clean, o, e, ignored, done_exact);
            at::Tensor exact_map = pixel_map(e.drop, grid, H, W, o);
            r.ssim.push_back(map_ssim(map, exact_map));
            r.ssim_coarse.push_back(map_ssim(r.coarse[n], torch::from_blob(e.drop.data(), {grid.py, grid.px},
                                                                            torch::kFloat)));
        }
    }
    report_progress(progress, 1.0);
    return r;
}

OcclusionSummary summarize_occlusion(const OcclusionResult& r, int64_t n, const OcclusionOptions& o,
                                     double region_fraction) {
    if (n < 0 || n >= r.coarse.size(0))
        throw Error("image " + std::to_string(n) + " is not in the occlusion result (it has " +
                    std::to_string(r.coarse.size(0)) + ")");
    OcclusionSummary s;
    s.target = r.targets[n];
    s.predicted = r.predicted[n];
    s.clean_score = r.clean_score[n].item<float>();
    s.clean_prob = r.clean_prob[n].item<float>();
    const int64_t PY = r.positions_y, PX = r.positions_x;
    const at::Tensor drops = r.coarse[n].contiguous();
    const float* d = drops.data_ptr<float>();
    const at::Tensor classes = r.top_class[n].contiguous();
    const int64_t* cls = classes.data_ptr<int64_t>();
    const at::Tensor probs = r.top_prob[n].contiguous();
    const float* pr = probs.data_ptr<float>();
    const int64_t H = r.occlusion.size(2), W = r.occlusion.size(3);
    auto window = [&](int64_t iy, int64_t ix) {
        Box b;
        b.y0 = iy * o.stride_y;
        b.x0 = ix * o.stride_x;
        b.y1 = std::min(H, b.y0 + o.patch_h);
        b.x1 = std::min(W, b.x0 + o.patch_w);
        return b;
    };
    int64_t best = 0;
    for (int64_t i = 1; i < PY * PX; ++i)
        if (d[i] > d[best]) best = i;
    s.max_drop = d[best];
    s.max_py = best / PX;
    s.max_px = best % PX;
    s.max_window = window(s.max_py, s.max_px);
    // Grow the region over neighbouring positions whose drop is a large share of the maximum.
    s.important = s.max_window;
    if (s.max_drop > 0) {
        const float cut = static_cast<float>(region_fraction) * s.max_drop;
        std::vector<char> seen(PY * PX, 0);
        std::deque<int64_t> queue{best};
        seen[best] = 1;
        while (!queue.empty()) {
            const int64_t i = queue.front();
            queue.pop_front();
            const Box b = window(i / PX, i % PX);
            s.important.y0 = std::min(s.important.y0, b.y0);
            s.important.x0 = std::min(s.important.x0, b.x0);
            s.important.y1 = std::max(s.important.y1, b.y1);
            s.important.x1 = std::max(s.important.x1, b.x1);
            const int64_t iy = i / PX, ix = i % PX;
            const int64_t nb[4][2] = {{iy - 1, ix}, {iy + 1, ix}, {iy, ix - 1}, {iy, ix + 1}};
            for (const auto& q : nb) {
                if (q[0] < 0 || q[0] >= PY || q[1] < 0 || q[1] >= PX) continue;
                const int64_t j = q[0] * PX + q[1];
                if (seen[j] || d[j] < cut) continue;
                seen[j] = 1;
                queue.push_back(j);
            }
        }
    }
    for (int64_t i = 0; i < PY * PX; ++i) {
        if (cls[i] == s.predicted) continue;
        const Box b = window(i / PX, i % PX);
        const bool overlaps = b.y0 < s.important.y1 && s.important.y0 < b.y1 && b.x0 < s.important.x1 &&
                              s.important.x0 < b.x1;
        if (overlaps) continue;
        OcclusionFlag f;
        f.py = i / PX;
        f.px = i % PX;
        f.window = b;
        f.new_class = cls[i];
        f.new_prob = pr[i];
        f.drop = d[i];
        s.confounders.push_back(f);
    }
    std::stable_sort(s.confounders.begin(), s.confounders.end(),
                     [](const OcclusionFlag& a, const OcclusionFlag& b) { return a.new_prob > b.new_prob; });
    return s;
}

double map_ssim(const at::Tensor& a_hw, const at::Tensor& ref_hw) {
    if (!a_hw.defined() || !ref_hw.defined() || a_hw.dim() != 2 || a_hw.sizes() != ref_hw.sizes())
        throw Error("SSIM needs two maps [H,W] of the same size");
    const at::Tensor a = a_hw.to(torch::kDouble).cpu().contiguous();
    const at::Tensor r = ref_hw.to(torch::kDouble).cpu().contiguous();
    const int64_t H = a.size(0), W = a.size(1);
    int64_t win = std::min<int64_t>({7, H, W});
    if (win % 2 == 0) --win;
    const double* pa = a.data_ptr<double>();
    const double* pr = r.data_ptr<double>();
    double lo = pr[0], hi = pr[0];
    for (int64_t i = 0; i < H * W; ++i) {
        lo = std::min(lo, pr[i]);
        hi = std::max(hi, pr[i]);
    }
    const double L = hi > lo ? hi - lo : 1.0;
    const double C1 = (0.01 * L) * (0.01 * L), C2 = (0.03 * L) * (0.03 * L);
    const double np = static_cast<double>(win * win);
    const double cov_norm = np > 1 ? np / (np - 1) : 1.0;
    double total = 0;
    int64_t count = 0;
    for (int64_t y = 0; y + win <= H; ++y)
        for (int64_t x = 0; x + win <= W; ++x) {
            double sa = 0, sr = 0, saa = 0, srr = 0, sar = 0;
            for (int64_t i = 0; i < win; ++i)
                for (int64_t j = 0; j < win; ++j) {
                    const double va = pa[(y + i) * W + x + j], vr = pr[(y + i) * W + x + j];
                    sa += va;
                    sr += vr;
                    saa += va * va;
                    srr += vr * vr;
                    sar += va * vr;
                }
            const double ma = sa / np, mr = sr / np;
            const double va = cov_norm * (saa / np - ma * ma);
            const double vr = cov_norm * (srr / np - mr * mr);
            const double cv = cov_norm * (sar / np - ma * mr);
            total += ((2 * ma * mr + C1) * (2 * cv + C2)) / ((ma * ma + mr * mr + C1) * (va + vr + C2));
            ++count;
        }
    return count ? total / static_cast<double>(count) : 1.0;
}

}  // namespace convscope
