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
#include "methods/incremental/engine.hpp"

namespace convscope {

int64_t occlusion_positions(int64_t size, int64_t patch, int64_t stride) {
    if (patch < 1 || stride < 1 || patch > size) return 0;
    return (size - patch) / stride + 1;
}

namespace {

// Approximate mode: how many classes per image get the first-order correction (the target and
// the most likely other).
constexpr int64_t kCorrectedClasses = 2;
// Automatic threshold: kAutoTau where a centred window's projective field covers at least this
// share of some convolution's output (rows and columns), else none (1).
constexpr double kCoverageForThreshold = 0.9;
constexpr double kAutoTau = 0.25;
// Automatic coarse step: the diagonal lattice (3) where neighbouring windows overlap by at least
// 3/4 (patch >= 4 x stride on both axes; the map is smooth from one position to the next), else 1
// (every position). On the default model's maps (patch 4, stride 1) the lattice, a third of the
// positions, keeps a mean SSIM of 0.97 against the exact map where the quadtree's first level
// from a step-2 grid (half of them) keeps 0.99 and a step-2 grid alone (a quarter) 0.91.
constexpr int64_t kLatticeStep = 3;
int64_t auto_coarse_step(const OcclusionOptions& o) {
    return o.patch_h >= 4 * o.stride_y && o.patch_w >= 4 * o.stride_x ? kLatticeStep : 1;
}
// Automatic batch sizes. A copy in full recomputation holds every activation of the model; in the
// incremental engine only patches about the size of the occluder's projective field, so its
// batches can be larger: that amortises each op's fixed cost over more positions (on the default
// model 512 positions per batch ran 8-12% faster than 128, full recomputation ran equally fast).
// Only for models with small activations (kSmallModelBytes of clean activations per image at
// most): with large ones the patches are large enough to amortise those costs, and larger
// batches fall out of the caches (ResNet-18 at 224x224, exact: 2.8x at 512, 3.3x at 128).
constexpr int64_t kFullBatch = 128;
constexpr int64_t kIncrementalBatch = 512;
constexpr int64_t kSmallModelBytes = int64_t{4} << 20;

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

// Runs the model on occluded copies of a group of images.
class Evaluator {
public:
    virtual ~Evaluator() = default;
    // Sets the images [G,C,H,W] and their baselines [G,C,H,W]; returns the clean outputs [G,K].
    // classes [G,m]: the classes whose outputs the approximate mode corrects (else undefined).
    virtual at::Tensor set_images(const at::Tensor& images, const at::Tensor& baselines,
                                  const at::Tensor& classes) = 0;
    // Outputs [B,K]: copy b is image img[b] with the window at (ys[b], xs[b]) of size ph x pw set
    // to the image's baseline.
    virtual at::Tensor outputs(const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                               const std::vector<int64_t>& xs) = 0;
};

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
    at::Tensor images_, baselines_;
};

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
        const int64_t B = static_cast<int64_t>(ys.size());
        at::Tensor patches = at::empty({B, baselines_.size(1), ph_, pw_}, baselines_.options());
        const std::vector<int64_t> zero(B, 0);
        copy_windows(baselines_, patches, img, ys, xs, zero, zero, ph_, pw_);
        return engine_.run(patches, img, ys, xs);
    }
    int64_t bytes_per_image() const { return engine_.bytes_per_image(); }

private:
    incremental::Engine engine_;
    int64_t ph_, pw_;
    at::Tensor baselines_;
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

// One image of the group being processed.
struct ImageRun {
    CleanInfo clean;
    int64_t predicted = 0;
    Drops d;
};

struct Job {
    int64_t img = 0;  // index into the group
    int64_t pos = 0;  // index into the grid
};

// Evaluates the jobs in batches and fills the images' drops.
void evaluate(Evaluator& ev, const Grid& g, const std::vector<Job>& jobs, std::vector<ImageRun>& runs,
              const OcclusionOptions& o, int64_t& forwards, const std::function<void(int64_t)>& done) {
    // Batches of positions with the same offset modulo 4: CNNs downsample by powers of 2, so such
    // windows change equally large regions of the downsampled layers, and the incremental engine
    // (which pads every patch of a batch to the largest) computes less slack.
    std::vector<Job> which = jobs;
    std::stable_sort(which.begin(), which.end(), [&](const Job& a, const Job& b) {
        return std::make_pair(g.ys[a.pos] % 4, g.xs[a.pos] % 4) < std::make_pair(g.ys[b.pos] % 4, g.xs[b.pos] % 4);
    });
    for (size_t start = 0; start < which.size(); start += static_cast<size_t>(o.batch_size)) {
        const size_t end = std::min(which.size(), start + static_cast<size_t>(o.batch_size));
        std::vector<int64_t> img, ys, xs;
        for (size_t i = start; i < end; ++i) {
            img.push_back(which[i].img);
            ys.push_back(g.ys[which[i].pos]);
            xs.push_back(g.xs[which[i].pos]);
        }
        at::Tensor logits = ev.outputs(img, ys, xs).to(torch::kFloat).contiguous();
        at::Tensor probs = torch::softmax(logits, 1).contiguous();
        auto top = probs.max(1);
        const at::Tensor top_p = std::get<0>(top).contiguous(), top_c = std::get<1>(top).contiguous();
        const int64_t K = logits.size(1);
        const float* lp = logits.data_ptr<float>();
        const float* pp = probs.data_ptr<float>();
        const float* tp = top_p.data_ptr<float>();
        const int64_t* tc = top_c.data_ptr<int64_t>();
        for (size_t i = start; i < end; ++i) {
            const int64_t b = static_cast<int64_t>(i - start), pos = which[i].pos;
            ImageRun& r = runs[which[i].img];
            const int64_t t = r.clean.target;
            const float score = o.score == OcclusionScore::Logit ? lp[b * K + t] : pp[b * K + t];
            r.d.drop[pos] = r.clean.score - score;
            r.d.target_prob[pos] = pp[b * K + t];
            r.d.top_prob[pos] = tp[b];
            r.d.top_class[pos] = tc[b];
            r.d.evaluated[pos] = 1;
        }
        forwards += static_cast<int64_t>(end - start);
        done(static_cast<int64_t>(end - start));
    }
}

std::vector<int64_t> grid_coords(int64_t n, int64_t step) {
    std::vector<int64_t> c;
    for (int64_t i = 0; i < n; i += step) c.push_back(i);
    if (c.back() != n - 1) c.push_back(n - 1);
    return c;
}

// A cell of the drill-down: the positions [y0, y1] x [x0, x1] (inclusive) of the grid.
struct Cell {
    int64_t y0, y1, x0, x1;
    int64_t yc() const { return (y0 + y1) / 2; }
    int64_t xc() const { return (x0 + x1) / 2; }
    int64_t size() const { return std::max(y1 - y0, x1 - x0); }
    bool splits() const { return y1 - y0 >= 2 || x1 - x0 >= 2; }
};

// Fills the positions that were not evaluated: at each, a linear function fitted by weighted least
// squares to the evaluated positions nearby (Gaussian weights, sigma a quarter of the size of the
// finest drill-down cell there, at least half a position), evaluated there (moving least squares
// of degree 1). Exact where the drops are linear; a weighted mean where the samples nearby lie on
// a line. The class is the nearest evaluated position's.
void interpolate(const Grid& g, const std::vector<float>& cell_size, Drops& d) {
    const int64_t PY = g.py, PX = g.px;
    std::vector<std::array<double, 4>> near;  // dy, dx, weight, index
    // exp(-r^2 / (2 sigma^2)) by r^2, for the sigma of the last position (sigma depends on the
    // cell size alone, so it rarely changes from one position to the next).
    std::vector<double> gauss;
    double gauss_sigma = -1;
    auto weight = [&](int64_t r2, double sigma) {
        if (sigma != gauss_sigma) {
            gauss.clear();
            gauss_sigma = sigma;
        }
        while (static_cast<int64_t>(gauss.size()) <= r2)
            gauss.push_back(std::exp(-static_cast<double>(gauss.size()) / (2 * sigma * sigma)));
        return gauss[r2];
    };
    for (int64_t y = 0; y < PY; ++y)
        for (int64_t x = 0; x < PX; ++x) {
            const int64_t pos = y * PX + x;
            if (d.evaluated[pos]) continue;
            const double sigma = std::max(0.5, cell_size[pos] / 4.0);
            int64_t R = static_cast<int64_t>(std::ceil(3 * sigma));
            for (;;) {
                near.clear();
                for (int64_t yy = std::max<int64_t>(0, y - R); yy <= std::min(PY - 1, y + R); ++yy)
                    for (int64_t xx = std::max<int64_t>(0, x - R); xx <= std::min(PX - 1, x + R); ++xx) {
                        const int64_t q = yy * PX + xx;
                        if (d.evaluated[q] != 1) continue;
                        const int64_t iy = yy - y, ix = xx - x;
                        near.push_back({double(iy), double(ix), weight(iy * iy + ix * ix, sigma), double(q)});
                    }
                if (!near.empty() || (R >= PY && R >= PX)) break;
                R *= 2;
            }
            if (near.empty()) continue;  // nothing evaluated at all (cannot happen: corners are)
            // Normalised moments of the weighted samples.
            double sw = 0, my = 0, mx = 0, syy = 0, sxx = 0, sxy = 0, best_w = -1;
            int64_t nearest = static_cast<int64_t>(near[0][3]);
            for (const auto& s : near) {
                sw += s[2];
                my += s[2] * s[0];
                mx += s[2] * s[1];
                if (s[2] > best_w) {
                    best_w = s[2];
                    nearest = static_cast<int64_t>(s[3]);
                }
            }
            if (!(sw > 0)) {  // every weight underflowed: the nearest sample alone
                for (auto& s : near) s[2] = s[3] == double(nearest) ? 1.0 : 0.0;
                sw = 1;
                my = mx = 0;
            }
            my /= sw;
            mx /= sw;
            for (const auto& s : near) {
                const double w = s[2] / sw, ey = s[0] - my, ex = s[1] - mx;
                syy += w * ey * ey;
                sxx += w * ex * ex;
                sxy += w * ey * ex;
            }
            // The fitted value at the point is sum_i w_i (1 - (p_i - m)^T S^-1 m) v_i / sw, with S the
            // weighted covariance of the sample positions p_i relative to the point and m their mean.
            const double det = syy * sxx - sxy * sxy;
            const bool linear = det > 1e-3 * sigma * sigma * sigma * sigma;
            double iyy = 0, ixx = 0, ixy = 0;
            if (linear) {
                iyy = sxx / det;
                ixx = syy / det;
                ixy = -sxy / det;
            }
            double v_drop = 0, v_top = 0, v_target = 0;
            for (const auto& s : near) {
                const int64_t q = static_cast<int64_t>(s[3]);
                double lambda = s[2] / sw;
                if (linear) {
                    const double ey = s[0] - my, ex = s[1] - mx;
                    // (p - m)^T S^-1 (0 - m)
                    const double gy = iyy * ey + ixy * ex, gx = ixy * ey + ixx * ex;
                    lambda *= 1.0 - (gy * my + gx * mx);
                }
                v_drop += lambda * d.drop[q];
                v_top += lambda * d.top_prob[q];
                v_target += lambda * d.target_prob[q];
            }
            d.drop[pos] = static_cast<float>(v_drop);
            d.top_prob[pos] = static_cast<float>(std::clamp(v_top, 0.0, 1.0));
            d.target_prob[pos] = static_cast<float>(std::clamp(v_target, 0.0, 1.0));
            d.top_class[pos] = d.top_class[nearest];
        }
}

// Coarse-to-fine drill-down for a group of images. The first round evaluates a grid of step
// coarse_step and the centre of each of its cells. A cell is refined when its centre's drop differs
// from the mean of its corners' by refine_error x the range of the drops so far (the map is not
// locally linear there), when its centre reaches refine_drop x the largest |drop| so far (the
// peak), or when its corners and centre disagree about the most likely class (a confounder may
// hide there): the next round evaluates its edge midpoints and the centres of its four sub-cells,
// whose refinement is decided in turn. The other positions are interpolated (interpolate()).
// All images of the group share the rounds, so batches stay large.
void drill_down(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                int64_t& forwards, const std::function<void(int64_t)>& done) {
    int64_t step = o.coarse_step;
    while (step > 1 && (step >= g.py && step >= g.px)) step /= 2;  // at least a 2x2 start grid
    const auto cy = grid_coords(g.py, step), cx = grid_coords(g.px, step);
    std::vector<Cell> first;
    for (size_t i = 0; i + 1 < std::max<size_t>(2, cy.size()); ++i)
        for (size_t j = 0; j + 1 < std::max<size_t>(2, cx.size()); ++j) {
            const size_t i1 = std::min(i + 1, cy.size() - 1), j1 = std::min(j + 1, cx.size() - 1);
            first.push_back({cy[i], cy[i1], cx[j], cx[j1]});
        }
    const int64_t G = static_cast<int64_t>(runs.size());
    std::vector<std::vector<Cell>> cells(G, first);
    std::vector<std::vector<char>> queued(G, std::vector<char>(g.py * g.px, 0));
    std::vector<std::vector<float>> cell_size(G, std::vector<float>(g.py * g.px, 0.f));
    std::vector<Job> jobs;
    auto mark = [&](int64_t n, int64_t y, int64_t x) {
        const int64_t pos = y * g.px + x;
        if (queued[n][pos]) return;
        queued[n][pos] = 1;
        jobs.push_back({n, pos});
    };
    auto set_size = [&](int64_t n, const Cell& c, float size) {
        for (int64_t y = c.y0; y <= c.y1; ++y)
            for (int64_t x = c.x0; x <= c.x1; ++x) cell_size[n][y * g.px + x] = size;
    };
    for (int64_t n = 0; n < G; ++n) {
        for (int64_t y : cy)
            for (int64_t x : cx) mark(n, y, x);
        for (const Cell& c : first) {
            set_size(n, c, static_cast<float>(c.size()));
            if (c.splits()) mark(n, c.yc(), c.xc());
        }
    }
    for (;;) {
        evaluate(ev, g, jobs, runs, o, forwards, done);
        jobs.clear();
        bool more = false;
        for (int64_t n = 0; n < G; ++n) {
            const Drops& d = runs[n].d;
            float lo = 0, hi = 0, max_abs = 0;
            for (size_t i = 0; i < d.drop.size(); ++i)
                if (d.evaluated[i]) {
                    lo = std::min(lo, d.drop[i]);
                    hi = std::max(hi, d.drop[i]);
                    max_abs = std::max(max_abs, std::abs(d.drop[i]));
                }
            const float range = hi - lo;
            std::vector<Cell> next;
            for (const Cell& c : cells[n]) {
                if (!c.splits()) continue;
                const int64_t corners[4] = {c.y0 * g.px + c.x0, c.y0 * g.px + c.x1, c.y1 * g.px + c.x0,
                                            c.y1 * g.px + c.x1};
                const int64_t centre = c.yc() * g.px + c.xc();
                float mean = 0;
                bool class_change = false;
                for (int64_t q : corners) {
                    mean += 0.25f * d.drop[q];
                    if (d.top_class[q] != d.top_class[centre]) class_change = true;
                }
                const bool curved = range > 0 && std::abs(d.drop[centre] - mean) >= o.refine_error * range;
                const bool big = max_abs > 0 && std::abs(d.drop[centre]) >= o.refine_drop * max_abs;
                if (!(curved || big || class_change)) continue;
                // Edge midpoints, then the sub-cells (an axis of fewer than 2 steps is not split).
                const int64_t ym = c.yc(), xm = c.xc();
                mark(n, c.y0, xm);
                mark(n, c.y1, xm);
                mark(n, ym, c.x0);
                mark(n, ym, c.x1);
                std::vector<std::pair<int64_t, int64_t>> ys{{c.y0, c.y1}}, xs{{c.x0, c.x1}};
                if (c.y1 - c.y0 >= 2) ys = {{c.y0, ym}, {ym, c.y1}};
                if (c.x1 - c.x0 >= 2) xs = {{c.x0, xm}, {xm, c.x1}};
                for (const auto& [a0, a1] : ys)
                    for (const auto& [b0, b1] : xs) {
                        const Cell s{a0, a1, b0, b1};
                        set_size(n, s, static_cast<float>(s.size()));
                        if (!s.splits()) continue;
                        mark(n, s.yc(), s.xc());
                        next.push_back(s);
                    }
            }
            cells[n] = std::move(next);
            more = more || !cells[n].empty();
        }
        // Cells left whose corners and centre are all known already are decided in the next pass.
        if (jobs.empty() && !more) break;
    }
    at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) interpolate(g, cell_size[n], runs[n].d);
    });
}

// Drill-down from the diagonal lattice (coarse_step 3) for a group of images. The first round
// evaluates every third position of each row, shifted by one from row to row ((x - y) mod 3 == 0,
// a third of the positions; every position not on it has two of its row neighbours' and column
// neighbours' on it), and the grid's corners. Then, in rounds until nothing is added, the
// positions not yet evaluated are evaluated where their evaluated neighbours (8-neighbourhood)
// predict different classes (a confounder may hide there) or one of those reaches refine_drop x
// the largest |drop| so far (the peak). The others are interpolated (interpolate(), a local linear
// fit at the lattice's scale). refine_error does not apply: a curvature test between lattice
// positions three apart fires on most of the map (on the default model's maps it evaluated 53% of
// the positions at refine_error 0.25 for an SSIM of 0.983 instead of 0.974 at 36%); for more
// accuracy use the quadtree (coarse step 2) or every position.
void lattice_drill(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                   int64_t& forwards, const std::function<void(int64_t)>& done) {
    const int64_t PY = g.py, PX = g.px, G = static_cast<int64_t>(runs.size());
    const int64_t k = kLatticeStep;
    auto on_lattice = [&](int64_t y, int64_t x) { return ((x - y) % k + k) % k == 0; };
    std::vector<std::vector<char>> queued(G, std::vector<char>(PY * PX, 0));
    std::vector<Job> jobs;
    auto mark = [&](int64_t n, int64_t pos) {
        if (queued[n][pos]) return;
        queued[n][pos] = 1;
        jobs.push_back({n, pos});
    };
    for (int64_t n = 0; n < G; ++n)
        for (int64_t y = 0; y < PY; ++y)
            for (int64_t x = 0; x < PX; ++x)
                if (on_lattice(y, x) || ((y == 0 || y == PY - 1) && (x == 0 || x == PX - 1))) mark(n, y * PX + x);
    while (!jobs.empty()) {
        evaluate(ev, g, jobs, runs, o, forwards, done);
        jobs.clear();
        for (int64_t n = 0; n < G; ++n) {
            const Drops& d = runs[n].d;
            float max_abs = 0;
            for (size_t i = 0; i < d.drop.size(); ++i)
                if (d.evaluated[i]) max_abs = std::max(max_abs, std::abs(d.drop[i]));
            for (int64_t y = 0; y < PY; ++y)
                for (int64_t x = 0; x < PX; ++x) {
                    const int64_t pos = y * PX + x;
                    if (queued[n][pos]) continue;
                    int64_t cls = -1;
                    bool refine = false;
                    for (int64_t yy = std::max<int64_t>(0, y - 1); yy <= std::min(PY - 1, y + 1) && !refine; ++yy)
                        for (int64_t xx = std::max<int64_t>(0, x - 1); xx <= std::min(PX - 1, x + 1); ++xx) {
                            const int64_t q = yy * PX + xx;
                            if (!d.evaluated[q]) continue;
                            if ((cls >= 0 && d.top_class[q] != cls) ||
                                (max_abs > 0 && std::abs(d.drop[q]) >= o.refine_drop * max_abs)) {
                                refine = true;
                                break;
                            }
                            cls = d.top_class[q];
                        }
                    if (refine) mark(n, pos);
                }
        }
    }
    const std::vector<float> cell_size(PY * PX, 2.f);
    at::parallel_for(0, G, 1, [&](int64_t begin, int64_t end) {
        for (int64_t n = begin; n < end; ++n) interpolate(g, cell_size, runs[n].d);
    });
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

namespace {
constexpr EnumTable<OcclusionScore, 2> kScoreNames = {{{OcclusionScore::Logit, "logit"}, {OcclusionScore::Prob, "prob"}}};
constexpr EnumTable<OcclusionMode, 3> kModeNames = {{{OcclusionMode::Full, "full"},
                                                     {OcclusionMode::Incremental, "incremental"},
                                                     {OcclusionMode::Approximate, "approximate"}}};
}  // namespace

const char* occlusion_score_name(OcclusionScore score) { return enum_name(kScoreNames, score); }
OcclusionScore parse_occlusion_score(const std::string& name) { return parse_enum(kScoreNames, name, "score"); }
const char* occlusion_mode_name(OcclusionMode mode) { return enum_name(kModeNames, mode); }
OcclusionMode parse_occlusion_mode(const std::string& name) { return parse_enum(kModeNames, name, "occlusion mode"); }

at::Tensor occlusion_baseline(const at::Tensor& images, const OcclusionOptions& o) {
    return baseline_images(images, o.baseline, 8.0);
}

OcclusionResult occlusion(const Model& model, const at::Tensor& images_nchw, const OcclusionOptions& options,
                          const RunContext& context) {
    const ThreadScope threads(context);
    const ProgressFn& progress = context.progress;
    check_input(model, images_nchw);
    validate_options(images_nchw, options);
    OcclusionOptions o = options;  // with the automatic settings resolved
    if (o.mode == OcclusionMode::Approximate && o.coarse_step == 0) o.coarse_step = auto_coarse_step(o);
    const bool auto_batch = o.batch_size == 0;
    if (auto_batch) o.batch_size = kFullBatch;  // the engine's modes: decided with the engine below
    torch::NoGradGuard no_grad;
    const at::Tensor x = images_nchw.contiguous();
    const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const Grid grid = make_grid(H, W, o);
    const int64_t P = grid.py * grid.px;

    const at::Tensor baselines = occlusion_baseline(x, o);
    const std::vector<int64_t> chw{C, H, W};
    // The incremental modes: one plan, run by an engine per settings (the exact comparison runs
    // a second engine of the same plan).
    std::optional<incremental::Plan> plan;
    std::unique_ptr<IncrementalEvaluator> inc;
    auto settings = [&](double tau, int64_t corrected, bool bf16) {
        incremental::EngineSettings s;
        s.tau = tau;
        s.corrected_classes = corrected;
        s.bf16 = bf16;
        s.patch_h = o.patch_h;
        s.patch_w = o.patch_w;
        return s;
    };
    // Images processed together. The exact modes fill whole batches from one image; the
    // approximate mode evaluates a few positions per image and drill-down round, so it shares
    // the rounds between images (at most 32, and at most 256 MiB of clean activations).
    int64_t group = 1;
    auto approximate_group = [&] {
        const int64_t bytes = std::max<int64_t>(1, inc->bytes_per_image());
        return std::clamp<int64_t>((int64_t{256} << 20) / bytes, 1, 32);
    };
    // Clean outputs first: targets are checked before the long work starts. In the approximate
    // mode without the correction (which needs the targets to plan), when all images fit one
    // group, the engine's clean pass (which it needs anyway) gives them; else a forward pass.
    at::Tensor clean_out;
    bool images_set = false, correct = false;
    if (o.mode != OcclusionMode::Full) {
        plan = incremental::make_plan(model, chw);
        if (auto_batch && incremental::bytes_per_image(*plan) <= kSmallModelBytes) o.batch_size = kIncrementalBatch;
        if (o.mode == OcclusionMode::Approximate) {
            // Automatic threshold: thresholding pays where the occluder's projective field covers
            // whole feature maps (deep networks on large inputs: there exact incremental inference
            // recomputes everything); elsewhere it saves little and costs accuracy (on the
            // default model tau 0.5 uncorrected would save 9% at 0.002 of SSIM, but on a LeNet
            // with 5x5 kernels it brought the SSIM from 0.83-0.96 down to 0.35-0.41).
            if (o.tau == 0)
                o.tau = incremental::field_coverage(*plan, o.patch_h, o.patch_w) >= kCoverageForThreshold ? kAutoTau
                                                                                                         : 1.0;
            correct = o.tau < 1.0 && o.correct;
            if (!correct) {
                inc = std::make_unique<IncrementalEvaluator>(model, *plan, settings(o.tau, 0, o.bf16));
                group = approximate_group();
                if (N <= group) {
                    clean_out = inc->set_images(x, baselines, at::Tensor()).to(torch::kFloat);
                    images_set = true;
                }
            }
        }
    }
    if (!images_set) {
        std::vector<at::Tensor> outs;
        for (int64_t n = 0; n < N; n += o.batch_size)
            outs.push_back(model.forward(x.slice(0, n, std::min(N, n + o.batch_size))));
        clean_out = torch::cat(outs, 0).to(torch::kFloat);
    }
    if (clean_out.dim() != 2)
        throw Error("occlusion needs a classifier whose output is [N,K] logits; this model returns " +
                    std::to_string(clean_out.dim()) + " dimensions");
    OcclusionResult r;
    r.batch_size = o.batch_size;
    r.targets = resolve_targets(o.target, clean_out);
    r.positions_y = grid.py;
    r.positions_x = grid.px;

    std::unique_ptr<Evaluator> ev;
    std::unique_ptr<IncrementalEvaluator> exact;  // Approximate with compare_exact
    // Approximate mode: the classes per image whose outputs get the first-order correction for
    // what thresholding cuts: the target and the most likely other (the one that can become the
    // most likely class when a window is occluded).
    const int64_t K = clean_out.size(1);
    int64_t linear_classes = 0;
    if (o.mode == OcclusionMode::Full) {
        ev = std::make_unique<FullEvaluator>(model, o.patch_h, o.patch_w);
    } else {
        r.engine_note = plan->note;
        if (o.mode == OcclusionMode::Approximate) {
            if (correct) linear_classes = std::min<int64_t>(K, kCorrectedClasses);
            r.corrected = correct;
            // (Made above already without the correction.)
            if (!inc) inc = std::make_unique<IncrementalEvaluator>(model, *plan, settings(o.tau, linear_classes, o.bf16));
            r.bf16 = inc->bf16();
            r.tau = o.tau;
            r.coarse_step = o.coarse_step;
            group = approximate_group();
        }
        if (!inc) inc = std::make_unique<IncrementalEvaluator>(model, *plan, settings(1.0, 0, false));
        ev = std::move(inc);
        if (o.mode == OcclusionMode::Approximate && o.compare_exact)
            exact = std::make_unique<IncrementalEvaluator>(model, *plan, settings(1.0, 0, false));
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
    for (int64_t n0 = 0; n0 < N; n0 += group) {
        const int64_t G = std::min(group, N - n0);
        const at::Tensor imgs = x.slice(0, n0, n0 + G);
        const at::Tensor bases = baselines.slice(0, n0, n0 + G);
        at::Tensor classes;  // the target first, then the most likely other classes
        if (linear_classes > 0) {
            classes = torch::empty({G, linear_classes}, torch::kLong);
            const at::Tensor order = clean_out.slice(0, n0, n0 + G).argsort(1, /*descending=*/true);
            for (int64_t g = 0; g < G; ++g) {
                const int64_t t = r.targets[n0 + g];
                classes[g][0] = t;
                int64_t j = 1;
                for (int64_t k = 0; k < K && j < linear_classes; ++k) {
                    const int64_t c = order[g][k].item<int64_t>();
                    if (c != t) classes[g][j++] = c;
                }
            }
        }
        // The engine holds these images already when its clean pass gave the clean outputs.
        const at::Tensor out =
            images_set ? clean_out : ev->set_images(imgs, bases, classes).to(torch::kFloat);
        const at::Tensor probs = torch::softmax(out, 1);
        std::vector<ImageRun> runs(G);
        std::vector<Job> all;
        for (int64_t g = 0; g < G; ++g) {
            const int64_t n = n0 + g;
            ImageRun& run = runs[g];
            run.clean.target = r.targets[n];
            const float logit = out[g][run.clean.target].item<float>();
            const float prob = probs[g][run.clean.target].item<float>();
            run.clean.score = o.score == OcclusionScore::Logit ? logit : prob;
            run.predicted = out[g].argmax().item<int64_t>();
            run.d.resize(P);
            r.predicted.push_back(run.predicted);
            r.clean_score[n] = run.clean.score;
            r.clean_prob[n] = prob;
            for (int64_t i = 0; i < P; ++i) all.push_back({g, i});
        }

        const double group_start = done_units, group_units = static_cast<double>(G * P);
        int64_t group_done = 0;
        auto done = [&](int64_t k) {
            group_done += k;
            // Approximate mode evaluates an unknown share of the positions: the bar moves with
            // the evaluations and jumps to the group's end when it is finished.
            done_units = std::min(group_start + group_units, group_start + static_cast<double>(group_done));
            report_progress(progress, std::min(1.0, done_units / total));
        };
        if (o.mode == OcclusionMode::Approximate && o.coarse_step == kLatticeStep)
            lattice_drill(*ev, grid, runs, o, r.forwards, done);
        else if (o.mode == OcclusionMode::Approximate)
            drill_down(*ev, grid, runs, o, r.forwards, done);
        else evaluate(*ev, grid, all, runs, o, r.forwards, done);
        done_units = group_start + group_units;

        std::vector<ImageRun> exact_runs;
        if (exact) {
            exact->set_images(imgs, bases, at::Tensor());
            exact_runs.resize(G);
            for (int64_t g = 0; g < G; ++g) {
                exact_runs[g].clean = runs[g].clean;
                exact_runs[g].d.resize(P);
            }
            int64_t ignored = 0;
            auto done_exact = [&](int64_t k) {
                done_units += static_cast<double>(k);
                report_progress(progress, std::min(1.0, done_units / total));
            };
            evaluate(*exact, grid, all, exact_runs, o, ignored, done_exact);
        }
        for (int64_t g = 0; g < G; ++g) {
            const int64_t n = n0 + g;
            Drops& d = runs[g].d;
            at::Tensor map = pixel_map(d.drop, grid, H, W, o);
            r.occlusion[n].copy_(map.unsqueeze(0).expand({C, H, W}));
            r.coarse[n].copy_(torch::from_blob(d.drop.data(), {grid.py, grid.px}, torch::kFloat));
            r.top_prob[n].copy_(torch::from_blob(d.top_prob.data(), {grid.py, grid.px}, torch::kFloat));
            r.target_prob[n].copy_(torch::from_blob(d.target_prob.data(), {grid.py, grid.px}, torch::kFloat));
            r.top_class[n].copy_(torch::from_blob(d.top_class.data(), {grid.py, grid.px}, torch::kLong));
            std::vector<uint8_t> ev_flags(d.evaluated.begin(), d.evaluated.end());
            r.evaluated[n].copy_(
                torch::from_blob(ev_flags.data(), {grid.py, grid.px}, torch::kUInt8).to(torch::kBool));
            if (exact) {
                Drops& e = exact_runs[g].d;
                at::Tensor exact_map = pixel_map(e.drop, grid, H, W, o);
                r.ssim.push_back(map_ssim(map, exact_map));
                r.ssim_coarse.push_back(
                    map_ssim(r.coarse[n], torch::from_blob(e.drop.data(), {grid.py, grid.px}, torch::kFloat)));
            }
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
