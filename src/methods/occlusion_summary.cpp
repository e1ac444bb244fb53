#include <torch/torch.h>

#include <algorithm>
#include <deque>
#include <vector>

#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope {

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
    // Window sums from summed-area tables of a, r, a^2, r^2 and a r: O(1) per window.
    const int64_t W1 = W + 1;
    std::vector<double> tables(size_t(5 * (H + 1) * W1), 0.0);
    double* s_a = tables.data();
    double* s_r = s_a + (H + 1) * W1;
    double* s_aa = s_r + (H + 1) * W1;
    double* s_rr = s_aa + (H + 1) * W1;
    double* s_ar = s_rr + (H + 1) * W1;
    for (int64_t y = 0; y < H; ++y)
        for (int64_t x = 0; x < W; ++x) {
            const double va = pa[y * W + x], vr = pr[y * W + x];
            const int64_t k = (y + 1) * W1 + x + 1, up = y * W1 + x + 1, left = (y + 1) * W1 + x, diag = y * W1 + x;
            s_a[k] = va + s_a[up] + s_a[left] - s_a[diag];
            s_r[k] = vr + s_r[up] + s_r[left] - s_r[diag];
            s_aa[k] = va * va + s_aa[up] + s_aa[left] - s_aa[diag];
            s_rr[k] = vr * vr + s_rr[up] + s_rr[left] - s_rr[diag];
            s_ar[k] = va * vr + s_ar[up] + s_ar[left] - s_ar[diag];
        }
    auto box = [&](const double* t, int64_t y, int64_t x) {
        return t[(y + win) * W1 + x + win] - t[y * W1 + x + win] - t[(y + win) * W1 + x] + t[y * W1 + x];
    };
    double total = 0;
    int64_t count = 0;
    for (int64_t y = 0; y + win <= H; ++y)
        for (int64_t x = 0; x + win <= W; ++x) {
            const double sa = box(s_a, y, x), sr = box(s_r, y, x), saa = box(s_aa, y, x), srr = box(s_rr, y, x),
                         sar = box(s_ar, y, x);
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
