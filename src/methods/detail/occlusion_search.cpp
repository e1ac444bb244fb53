#include "methods/detail/occlusion_search.hpp"

#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <tuple>
#include <utility>

namespace convscope::occlusion_search {

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

// Evaluates the jobs in batches and fills the images' drops.
void evaluate(Evaluator& ev, const Grid& g, const std::vector<Job>& jobs, std::vector<ImageRun>& runs,
              const OcclusionOptions& o, int64_t& forwards, const DoneFn& done) {
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
        const TargetScorer& scorer = *runs[which[start].img].scorer;
        std::vector<int64_t> rows;
        for (size_t i = start; i < end; ++i) rows.push_back(runs[which[i].img].image);
        // The scores and class probabilities (for dense outputs over the image's region): the
        // target's and the most likely class's. Dense logit targets from the region's mean
        // logits where the evaluator computes them from the output's changed part.
        at::Tensor scores, probs;
        if (ev.weighted() && scorer.reads_region_means()) {
            std::tie(scores, probs) = scorer.region_mean_scores(ev.weighted_outputs(img, ys, xs), rows);
        } else {
            const at::Tensor out = ev.outputs(img, ys, xs).to(torch::kFloat).contiguous();
            scores = scorer.scores(out, rows);
            probs = scorer.class_probs(out, rows);
        }
        scores = scores.contiguous();
        at::Tensor top_p, top_c;
        const float* pp = nullptr;
        int64_t K = 0;
        if (probs.defined()) {
            auto top = probs.max(1);
            top_p = std::get<0>(top).contiguous();
            top_c = std::get<1>(top).contiguous();
            probs = probs.contiguous();
            pp = probs.data_ptr<float>();
            K = probs.size(1);
        }
        const float* sp = scores.data_ptr<float>();
        for (size_t i = start; i < end; ++i) {
            const int64_t b = static_cast<int64_t>(i - start), pos = which[i].pos;
            ImageRun& r = runs[which[i].img];
            const int64_t t = r.clean.target;
            r.d.drop[pos] = r.clean.score - sp[b];
            if (probs.defined()) {
                r.d.target_prob[pos] = pp[b * K + t];
                r.d.top_prob[pos] = top_p.data_ptr<float>()[b];
                r.d.top_class[pos] = top_c.data_ptr<int64_t>()[b];
            } else {  // similarity: no classes
                r.d.target_prob[pos] = sp[b];
                r.d.top_prob[pos] = 0;
                r.d.top_class[pos] = -1;
            }
            r.d.evaluated[pos] = 1;
        }
        forwards += static_cast<int64_t>(end - start);
        done(static_cast<int64_t>(end - start));
    }
}

namespace {

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

}  // namespace

// Coarse-to-fine drill-down for a group of images. The first round evaluates a grid of step
// coarse_step and the centre of each of its cells. A cell is refined when its centre's drop differs
// from the mean of its corners' by refine_error x the range of the drops so far (the map is not
// locally linear there), when its centre reaches refine_drop x the largest |drop| so far (the
// peak), or when its corners and centre disagree about the most likely class (a confounder may
// hide there): the next round evaluates its edge midpoints and the centres of its four sub-cells,
// whose refinement is decided in turn. The other positions are interpolated (interpolate()).
// All images of the group share the rounds, so batches stay large.
void drill_down(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                int64_t& forwards, const DoneFn& done) {
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
// positions three apart fires on most of the map, which costs more than it gains; for more
// accuracy use the quadtree (coarse step 2) or every position.
void lattice_drill(Evaluator& ev, const Grid& g, std::vector<ImageRun>& runs, const OcclusionOptions& o,
                   int64_t& forwards, const DoneFn& done) {
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

}  // namespace convscope::occlusion_search
