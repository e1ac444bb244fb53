#include "convscope/methods/occlusion.hpp"

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/detail/occlusion_search.hpp"
#include "methods/incremental/engine.hpp"

namespace convscope {

int64_t occlusion_positions(int64_t size, int64_t patch, int64_t stride) {
    if (patch < 1 || stride < 1 || patch > size) return 0;
    return (size - patch) / stride + 1;
}

namespace {

using namespace occlusion_search;

// Approximate mode: how many classes per image get the first-order correction (the target and
// the most likely other).
constexpr int64_t kCorrectedClasses = 2;
// Automatic threshold: kAutoTau where a centred window's projective field covers at least this
// share of some convolution's output (rows and columns), else none (1).
constexpr double kCoverageForThreshold = 0.9;
constexpr double kAutoTau = 0.25;
// Automatic coarse step: the diagonal lattice where neighbouring windows overlap by at least
// 3/4 (patch >= 4 x stride on both axes; the map is smooth from one position to the next), else 1
// (every position). bench/RESULTS.md has the accuracy of each start.
int64_t auto_coarse_step(const OcclusionOptions& o) {
    return o.patch_h >= 4 * o.stride_y && o.patch_w >= 4 * o.stride_x ? kLatticeStep : 1;
}
// Automatic batch sizes. A copy in full recomputation holds every activation of the model; in the
// incremental engine only patches about the size of the occluder's projective field, so its
// batches can be larger, which amortises each op's fixed cost over more positions. Only for models
// with small activations (kSmallModelBytes of clean activations per image at most): with large ones
// the patches amortise those costs already and larger batches fall out of the caches
// (bench/RESULTS.md).
constexpr int64_t kFullBatch = 128;
constexpr int64_t kIncrementalBatch = 512;
constexpr int64_t kSmallModelBytes = int64_t{4} << 20;
// ... and a batch's outputs stay within kOutputBatchBytes (at least 32 copies): a dense output
// (segmentation maps) is formed in full for every copy, and batches of them that leave the
// cache cost more than the engine saves (see bench/RESULTS.md).
constexpr int64_t kOutputBatchBytes = int64_t{16} << 20;

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
    if (o.batch_size < 0)
        throw Error("the occlusion batch size must be at least 1 (0 = automatic), got " +
                    std::to_string(o.batch_size));
    check_baseline(o.baseline);
    if (o.mode == OcclusionMode::Approximate) {
        if (!(o.tau >= 0 && o.tau <= 1))
            throw Error("tau (projective-field threshold) must be in (0, 1] (0 = automatic), got " +
                        std::to_string(o.tau));
        if (o.coarse_step < 0 || (o.coarse_step != kLatticeStep && (o.coarse_step & (o.coarse_step - 1)) != 0))
            throw Error("the coarse step must be 3 (the diagonal lattice) or a power of 2 (1, 2, 4, 8, ...; "
                        "0 = automatic), got " + std::to_string(o.coarse_step));
        if (!(o.refine_drop >= 0) || !(o.refine_error >= 0))
            throw Error("the refinement thresholds must be >= 0");
    }
    check_target(o.target, x.size(0));
}


// Copies the baseline windows into dst: dst [B,C,Hd,Wd] at (dy[b], dx[b]) from base[si[b]]
// (base [G,C,Hb,Wb]) at (sy[b], sx[b]), ph x pw each.
void copy_windows(const at::Tensor& base, at::Tensor& dst, const std::vector<int64_t>& si,
                  const std::vector<int64_t>& sy, const std::vector<int64_t>& sx,
                  const std::vector<int64_t>& dy, const std::vector<int64_t>& dx, int64_t ph, int64_t pw) {
    const int64_t B = dst.size(0), C = dst.size(1), Hd = dst.size(2), Wd = dst.size(3);
    const int64_t Hb = base.size(2), Wb = base.size(3);
    const float* s = base.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            for (int64_t r = 0; r < ph; ++r)
                std::memcpy(d + (i * Hd + dy[b] + r) * Wd + dx[b],
                            s + ((si[b] * C + c) * Hb + sy[b] + r) * Wb + sx[b], pw * sizeof(float));
        }
    });
}

class FullEvaluator : public Evaluator {
public:
    FullEvaluator(const Model& m, int64_t ph, int64_t pw) : model_(m), ph_(ph), pw_(pw) {}
    at::Tensor set_images(const at::Tensor& images, const at::Tensor& baselines, const at::Tensor&) override {
        images_ = images.contiguous();
        baselines_ = baselines.contiguous();
        return forward(images_);
    }
    at::Tensor outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                       const std::vector<int64_t>& xs) override {
        // A fresh tensor (index_select copies; a view would alias the images themselves).
        at::Tensor batch = images_.index_select(0, torch::tensor(img, torch::kLong)).contiguous();
        copy_windows(baselines_, batch, img, ys, xs, ys, xs, ph_, pw_);
        return forward(batch);
    }

private:
    // The module's forward without Model::forward's input checks (done once for all images).
    at::Tensor forward(const at::Tensor& batch) { return model_.forward_unchecked(batch); }

    const Model& model_;
    int64_t ph_, pw_;
    at::Tensor images_, baselines_;
};

// Token masking: the copies run with the patch embedding's output edited (Model::forward_edited),
// the tokens whose patch centre the window covers set to the baseline's.
class TokenEvaluator : public Evaluator {
public:
    TokenEvaluator(const Model& m, std::string layer, int64_t ph, int64_t pw)
        : model_(m), layer_(std::move(layer)), ph_(ph), pw_(pw) {}
    at::Tensor set_images(const at::Tensor& images, const at::Tensor& baselines, const at::Tensor&) override {
        images_ = images.contiguous();
        const TapResult clean = model_.forward_taps(images_, {layer_});
        diff_ = model_.forward_taps(baselines.contiguous(), {layer_}).taps.at(layer_) - clean.taps.at(layer_);
        return clean.output;
    }
    at::Tensor outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                       const std::vector<int64_t>& xs) override {
        const at::Tensor idx = torch::tensor(img, torch::kLong);
        const int64_t b = int64_t(img.size()), gh = diff_.size(2), gw = diff_.size(3);
        const double sy = double(images_.size(2)) / double(gh), sx = double(images_.size(3)) / double(gw);
        at::Tensor mask = torch::zeros({b, 1, gh, gw});
        auto m = mask.accessor<float, 4>();
        for (int64_t k = 0; k < b; ++k)
            for (int64_t i = 0; i < gh; ++i)
                for (int64_t j = 0; j < gw; ++j) {
                    const double cy = (double(i) + 0.5) * sy, cx = (double(j) + 0.5) * sx;
                    m[k][0][i][j] = cy >= double(ys[size_t(k)]) && cy < double(ys[size_t(k)] + ph_) &&
                                    cx >= double(xs[size_t(k)]) && cx < double(xs[size_t(k)] + pw_);
                }
        return model_.forward_edited(images_.index_select(0, idx), layer_, diff_.index_select(0, idx) * mask);
    }

private:
    const Model& model_;
    std::string layer_;
    int64_t ph_, pw_;
    at::Tensor images_, diff_;  // diff: baseline's patch embedding - the image's [G,D,h,w]
};

// The patch embedding of a transformer: the first NCHW layer on the first attention's grid.
std::string patch_embedding_layer(const Model& model) {
    const auto att = model.attention_layers();
    if (att.empty())
        throw Error("token masking needs a transformer (attention layers over patch tokens); this model has none: "
                    "occlude pixels instead (leave out --occlude tokens)");
    const Layout& a = model.layer(att[0]).layout;
    for (const auto& l : model.layers())
        if (l.layout.kind == LayoutKind::Nchw && l.layout.grid_h == a.grid_h && l.layout.grid_w == a.grid_w &&
            l.is_conv && l.rf.kind == ReceptiveField::Kind::Exact && l.rf.stride_y > 1)
            return l.name;
    throw Error("token masking found no patch embedding (a strided conv on the attention's " +
                std::to_string(a.grid_h) + "x" + std::to_string(a.grid_w) +
                " grid) before the first attention: occlude pixels instead");
}

class IncrementalEvaluator : public Evaluator {
public:
    IncrementalEvaluator(const Model& m, const incremental::Plan& plan, const incremental::EngineSettings& s)
        : engine_(m, plan, s), ph_(s.patch_h), pw_(s.patch_w) {}
    // Whether the changes are convolved in bfloat16 (asked for and supported).
    bool bf16() const { return engine_.bf16(); }
    at::Tensor set_images(const at::Tensor& images, const at::Tensor& baselines,
                          const at::Tensor& classes) override {
        baselines_ = baselines.contiguous();
        return engine_.set_images(images, classes);
    }
    at::Tensor outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                       const std::vector<int64_t>& xs) override {
        return engine_.run(patches(img, ys, xs), img, ys, xs);
    }
    bool weighted() const override { return engine_.weighted_output(); }
    void set_output_weights(const at::Tensor& w) override { engine_.set_output_weights(w); }
    at::Tensor weighted_outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                                const std::vector<int64_t>& xs) override {
        return engine_.run_weighted(patches(img, ys, xs), img, ys, xs);
    }
    int64_t bytes_per_image() const { return engine_.bytes_per_image(); }

private:
    // The occluder windows of the copies: their images' baselines there [B,C,ph,pw].
    at::Tensor patches(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                       const std::vector<int64_t>& xs) const {
        const int64_t B = static_cast<int64_t>(ys.size());
        at::Tensor p = at::empty({B, baselines_.size(1), ph_, pw_}, baselines_.options());
        const std::vector<int64_t> zero(B, 0);
        copy_windows(baselines_, p, img, ys, xs, zero, zero, ph_, pw_);
        return p;
    }

    incremental::Engine engine_;
    int64_t ph_, pw_;
    at::Tensor baselines_;
};

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

// What occlusion() decides before the search: the automatic settings resolved, the evaluator
// (and the exact one for compare_exact), the images processed together and the clean outputs.
struct Setup {
    OcclusionOptions o;
    std::unique_ptr<Evaluator> ev;
    std::unique_ptr<IncrementalEvaluator> exact;  // Approximate with compare_exact
    at::Tensor clean_out;       // [N,...] float32
    std::unique_ptr<TargetScorer> scorer;  // the targets, fixed from clean_out
    bool images_set = false;    // ev holds all images already (its clean pass gave clean_out)
    int64_t group = 1;          // images processed together
    int64_t linear_classes = 0; // classes per image that get the first-order correction
};

incremental::EngineSettings engine_settings(const OcclusionOptions& o, double tau, int64_t corrected, bool bf16) {
    incremental::EngineSettings s;
    s.tau = tau;
    s.corrected_classes = corrected;
    s.bf16 = bf16;
    s.patch_h = o.patch_h;
    s.patch_w = o.patch_w;
    return s;
}

// Images processed together in the approximate mode: it evaluates a few positions per image and
// drill-down round, so it shares the rounds between images (at most 32, and at most 256 MiB of
// clean activations). The exact modes fill whole batches from one image.
int64_t approximate_group(const IncrementalEvaluator& inc) {
    const int64_t bytes = std::max<int64_t>(1, inc.bytes_per_image());
    return std::clamp<int64_t>((int64_t{256} << 20) / bytes, 1, 32);
}

// The clean outputs by forward passes of o.batch_size images.
at::Tensor clean_outputs(const Model& model, const at::Tensor& x, int64_t batch) {
    const int64_t N = x.size(0);
    std::vector<at::Tensor> outs;
    for (int64_t n = 0; n < N; n += batch) outs.push_back(model.forward(x.slice(0, n, std::min(N, n + batch))));
    return torch::cat(outs, 0).to(torch::kFloat);
}

// Resolves the automatic settings, makes the evaluators and computes the clean outputs (targets
// are checked before the long work starts). In the approximate mode without the correction (which
// needs the targets to plan), when all images fit one group, the engine's clean pass (which it
// needs anyway) gives them; else a forward pass. Records the settings it ran with in r.
Setup prepare(const Model& model, const at::Tensor& x, const at::Tensor& baselines, const OcclusionOptions& options,
              OcclusionResult& r) {
    Setup s;
    OcclusionOptions& o = s.o;
    o = options;
    // Attention over all tokens spreads an occluder's change to every token at once: past the
    // first such layer the incremental engine would recompute everything, so occlusion runs
    // exact batched recomputation and says so.
    std::string attention_note;
    std::string token_layer;
    if (o.tokens) {
        token_layer = patch_embedding_layer(model);
        attention_note = "token masking at " + token_layer +
                         " (the patch tokens under the window set to the baseline's), full batched recomputation";
        o.mode = OcclusionMode::Full;
    }
    if (o.mode != OcclusionMode::Full)
        for (const auto& name : model.attention_layers())
            if (model.layer(name).layout.windows == 1) {
                attention_note = "full batched recomputation: " + name +
                                 " attends over all tokens, so an occluded patch changes every token after it and "
                                 "incremental inference saves nothing";
                o.mode = OcclusionMode::Full;
                break;
            }
    if (o.mode == OcclusionMode::Approximate && o.coarse_step == 0) o.coarse_step = auto_coarse_step(o);
    const bool auto_batch = o.batch_size == 0;
    if (auto_batch) o.batch_size = kFullBatch;  // the engine's modes: decided with the plan below
    std::optional<incremental::Plan> plan;
    std::unique_ptr<IncrementalEvaluator> inc;
    bool correct = false;
    if (o.mode != OcclusionMode::Full) {
        plan = incremental::make_plan(model, {x.size(1), x.size(2), x.size(3)});
        if (auto_batch && incremental::bytes_per_image(*plan) <= kSmallModelBytes) o.batch_size = kIncrementalBatch;
        if (o.mode == OcclusionMode::Approximate) {
            // Automatic threshold: thresholding pays where the occluder's projective field covers
            // whole feature maps (deep networks on large inputs: there exact incremental inference
            // recomputes everything); elsewhere it saves little and costs accuracy (see
            // bench/RESULTS.md).
            if (o.tau == 0)
                o.tau = incremental::field_coverage(*plan, o.patch_h, o.patch_w) >= kCoverageForThreshold ? kAutoTau
                                                                                                         : 1.0;
            correct = o.tau < 1.0 && o.correct;
            if (!correct) {
                inc = std::make_unique<IncrementalEvaluator>(model, *plan, engine_settings(o, o.tau, 0, o.bf16));
                s.group = approximate_group(*inc);
                if (x.size(0) <= s.group) {
                    s.clean_out = inc->set_images(x, baselines, at::Tensor()).to(torch::kFloat);
                    s.images_set = true;
                }
            }
        }
    }
    if (!s.images_set) s.clean_out = clean_outputs(model, x, o.batch_size);
    if (auto_batch) {
        const int64_t out_bytes = std::max<int64_t>(1, s.clean_out[0].numel() * int64_t{4});
        while (o.batch_size > 32 && o.batch_size * out_bytes > kOutputBatchBytes) o.batch_size /= 2;
    }
    r.batch_size = o.batch_size;
    s.scorer = std::make_unique<TargetScorer>(model, o.target, s.clean_out);
    r.targets = s.scorer->classes();
    if (o.mode == OcclusionMode::Approximate && !s.scorer->classifier())
        throw Error("the approximate occlusion needs a class target on a classifier's output [N,K] (its correction "
                    "follows class logits): use --mode incremental, which is exact");

    if (o.mode == OcclusionMode::Full) {
        if (o.tokens) s.ev = std::make_unique<TokenEvaluator>(model, token_layer, o.patch_h, o.patch_w);
        else s.ev = std::make_unique<FullEvaluator>(model, o.patch_h, o.patch_w);
        r.engine_note = attention_note;
        return s;
    }
    r.engine_note = plan->note;
    if (o.mode == OcclusionMode::Approximate) {
        // The target and the most likely other class (the one that can become the most likely
        // class when a window is occluded) get the correction for what thresholding cuts.
        if (correct) s.linear_classes = std::min<int64_t>(s.clean_out.size(1), kCorrectedClasses);
        r.corrected = correct;
        if (!inc)
            inc = std::make_unique<IncrementalEvaluator>(model, *plan,
                                                         engine_settings(o, o.tau, s.linear_classes, o.bf16));
        r.bf16 = inc->bf16();
        r.tau = o.tau;
        r.coarse_step = o.coarse_step;
        s.group = approximate_group(*inc);
        if (o.compare_exact)
            s.exact = std::make_unique<IncrementalEvaluator>(model, *plan, engine_settings(o, 1.0, 0, false));
    }
    if (!inc) inc = std::make_unique<IncrementalEvaluator>(model, *plan, engine_settings(o, 1.0, 0, false));
    s.ev = std::move(inc);
    return s;
}

// The classes [G,m] whose outputs get the correction for images n0 .. n0+G-1: the target first,
// then the most likely others.
at::Tensor corrected_classes(const at::Tensor& clean_out, const std::vector<int64_t>& targets, int64_t n0,
                             int64_t G, int64_t m) {
    at::Tensor classes = torch::empty({G, m}, torch::kLong);
    const at::Tensor order = clean_out.slice(0, n0, n0 + G).argsort(1, /*descending=*/true).contiguous();
    const int64_t K = clean_out.size(1);
    const int64_t* ord = order.data_ptr<int64_t>();
    int64_t* cls = classes.data_ptr<int64_t>();
    for (int64_t g = 0; g < G; ++g) {
        const int64_t t = targets[n0 + g];
        cls[g * m] = t;
        int64_t j = 1;
        for (int64_t k = 0; k < K && j < m; ++k)
            if (ord[g * K + k] != t) cls[g * m + j++] = ord[g * K + k];
    }
    return classes;
}

void allocate(OcclusionResult& r, int64_t N, int64_t C, int64_t H, int64_t W, const Grid& grid) {
    r.positions_y = grid.py;
    r.positions_x = grid.px;
    r.occlusion = torch::zeros({N, C, H, W});
    r.coarse = torch::zeros({N, grid.py, grid.px});
    r.top_class = torch::zeros({N, grid.py, grid.px}, torch::kLong);
    r.top_prob = torch::zeros({N, grid.py, grid.px});
    r.target_prob = torch::zeros({N, grid.py, grid.px});
    r.evaluated = torch::zeros({N, grid.py, grid.px}, torch::kBool);
    r.clean_score = torch::zeros({N});
    r.clean_prob = torch::zeros({N});
}

// The runs of images n0 .. n0+G-1 from their clean outputs [G,...]; records the clean scores in r.
std::vector<ImageRun> start_group(const TargetScorer& scorer, const at::Tensor& out, int64_t n0, int64_t P,
                                  OcclusionResult& r) {
    std::vector<int64_t> rows;
    for (int64_t g = 0; g < out.size(0); ++g) rows.push_back(n0 + g);
    const at::Tensor scores = scorer.scores(out, rows);
    const at::Tensor probs = scorer.class_probs(out, rows);
    std::vector<ImageRun> runs(out.size(0));
    for (size_t g = 0; g < runs.size(); ++g) {
        const int64_t n = n0 + static_cast<int64_t>(g);
        ImageRun& run = runs[g];
        run.scorer = &scorer;
        run.image = n;
        run.clean.target = r.targets[n];
        run.clean.score = scores[g].item<float>();
        const float prob = probs.defined() ? probs[g][run.clean.target].item<float>() : run.clean.score;
        run.predicted = probs.defined() ? probs[g].argmax().item<int64_t>() : -1;
        run.d.resize(P);
        r.predicted.push_back(run.predicted);
        r.clean_score[n] = run.clean.score;
        r.clean_prob[n] = prob;
    }
    return runs;
}

at::Tensor grid_tensor(std::vector<float>& v, const Grid& g) {
    return torch::from_blob(v.data(), {g.py, g.px}, torch::kFloat);
}

// Writes the runs of images n0 .. into r; with exact runs also the SSIM against them.
void store_group(std::vector<ImageRun>& runs, std::vector<ImageRun>& exact_runs, int64_t n0, const Grid& grid,
                 const OcclusionOptions& o, OcclusionResult& r) {
    const int64_t C = r.occlusion.size(1), H = r.occlusion.size(2), W = r.occlusion.size(3);
    for (size_t g = 0; g < runs.size(); ++g) {
        const int64_t n = n0 + static_cast<int64_t>(g);
        Drops& d = runs[g].d;
        const at::Tensor map = pixel_map(d.drop, grid, H, W, o);
        r.occlusion[n].copy_(map.unsqueeze(0).expand({C, H, W}));
        r.coarse[n].copy_(grid_tensor(d.drop, grid));
        r.top_prob[n].copy_(grid_tensor(d.top_prob, grid));
        r.target_prob[n].copy_(grid_tensor(d.target_prob, grid));
        r.top_class[n].copy_(torch::from_blob(d.top_class.data(), {grid.py, grid.px}, torch::kLong));
        std::vector<uint8_t> ev_flags(d.evaluated.begin(), d.evaluated.end());
        r.evaluated[n].copy_(torch::from_blob(ev_flags.data(), {grid.py, grid.px}, torch::kUInt8).to(torch::kBool));
        if (exact_runs.empty()) continue;
        Drops& e = exact_runs[g].d;
        r.ssim.push_back(map_ssim(map, pixel_map(e.drop, grid, H, W, o)));
        r.ssim_coarse.push_back(map_ssim(r.coarse[n], grid_tensor(e.drop, grid)));
    }
}

// Progress over all images' positions (twice with the exact comparison).
class OcclusionProgress {
public:
    OcclusionProgress(const ProgressFn& fn, double total) : fn_(fn), total_(total) { report_progress(fn_, 0.0); }
    // Starts a group of `units` positions.
    void start_group(double units) {
        group_start_ = done_;
        group_units_ = units;
        group_done_ = 0;
    }
    // Approximate mode evaluates an unknown share of the positions: the bar moves with the
    // evaluations and jumps to the group's end when it is finished.
    void group_evaluated(int64_t k) {
        group_done_ += k;
        done_ = std::min(group_start_ + group_units_, group_start_ + static_cast<double>(group_done_));
        report();
    }
    void finish_group() { done_ = group_start_ + group_units_; }
    void extra(int64_t k) {
        done_ += static_cast<double>(k);
        report();
    }

private:
    void report() { report_progress(fn_, std::min(1.0, done_ / total_)); }
    const ProgressFn& fn_;
    double total_, done_ = 0, group_start_ = 0, group_units_ = 0;
    int64_t group_done_ = 0;
};

}  // namespace

namespace {
constexpr EnumTable<OcclusionMode, 3> kModeNames = {{{OcclusionMode::Full, "full"},
                                                     {OcclusionMode::Incremental, "incremental"},
                                                     {OcclusionMode::Approximate, "approximate"}}};
}  // namespace

const char* occlusion_mode_name(OcclusionMode mode) { return enum_name(kModeNames, mode); }
OcclusionMode parse_occlusion_mode(const std::string& name) { return parse_enum(kModeNames, name, "occlusion mode"); }

at::Tensor occlusion_baseline(const at::Tensor& images, const OcclusionOptions& o) {
    return baseline_images(images, o.baseline, 8.0);
}

OcclusionResult occlusion(const Model& model, const at::Tensor& images_nchw, const OcclusionOptions& options,
                          const RunContext& context) {
    const ThreadScope threads(context);
    check_input(model, images_nchw);
    validate_options(images_nchw, options);
    torch::NoGradGuard no_grad;
    const at::Tensor x = images_nchw.contiguous();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const at::Tensor baselines = occlusion_baseline(x, options);
    OcclusionResult r;
    Setup s = prepare(model, x, baselines, options, r);
    const OcclusionOptions& o = s.o;
    const Grid grid = make_grid(H, W, o);
    const int64_t P = grid.py * grid.px;
    allocate(r, N, C, H, W, grid);
    std::vector<Job> all;  // every position of every image of a group
    for (int64_t g = 0; g < std::min(s.group, N); ++g)
        for (int64_t i = 0; i < P; ++i) all.push_back({g, i});

    OcclusionProgress progress(context.progress, static_cast<double>(N * P) * (s.exact ? 2.0 : 1.0));
    for (int64_t n0 = 0; n0 < N; n0 += s.group) {
        const int64_t G = std::min(s.group, N - n0);
        const at::Tensor imgs = x.slice(0, n0, n0 + G), bases = baselines.slice(0, n0, n0 + G);
        const at::Tensor classes =
            s.linear_classes > 0 ? corrected_classes(s.clean_out, r.targets, n0, G, s.linear_classes) : at::Tensor();
        const at::Tensor out = s.images_set ? s.clean_out : s.ev->set_images(imgs, bases, classes).to(torch::kFloat);
        if (s.ev->weighted() && s.scorer->reads_region_means())
            s.ev->set_output_weights(s.scorer->region_weights().slice(0, n0, n0 + G));
        std::vector<ImageRun> runs = start_group(*s.scorer, out, n0, P, r);
        const std::vector<Job> jobs(all.begin(), all.begin() + G * P);

        progress.start_group(static_cast<double>(G * P));
        auto done = [&](int64_t k) { progress.group_evaluated(k); };
        if (o.mode == OcclusionMode::Approximate && o.coarse_step == kLatticeStep)
            lattice_drill(*s.ev, grid, runs, o, r.forwards, done);
        else if (o.mode == OcclusionMode::Approximate)
            drill_down(*s.ev, grid, runs, o, r.forwards, done);
        else evaluate(*s.ev, grid, jobs, runs, o, r.forwards, done);
        progress.finish_group();

        std::vector<ImageRun> exact_runs;
        if (s.exact) {
            s.exact->set_images(imgs, bases, at::Tensor());
            exact_runs.resize(G);
            for (int64_t g = 0; g < G; ++g) {
                exact_runs[g].scorer = runs[g].scorer;
                exact_runs[g].image = runs[g].image;
                exact_runs[g].clean = runs[g].clean;
                exact_runs[g].d.resize(P);
            }
            int64_t ignored = 0;
            evaluate(*s.exact, grid, jobs, exact_runs, o, ignored, [&](int64_t k) { progress.extra(k); });
        }
        store_group(runs, exact_runs, n0, grid, o, r);
    }
    report_progress(context.progress, 1.0);
    return r;
}

}  // namespace convscope
