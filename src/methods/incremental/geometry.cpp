// The plan's geometry: which rows and columns of every map a window changes, how the
// thresholded convolutions are chosen, and what an engine keeps per image.
#include <algorithm>
#include <array>
#include <cmath>
#include <optional>
#include <vector>

#include "methods/incremental/plan.hpp"

namespace convscope::incremental {

bool window_range(const Axis& a, int64_t c0, int64_t c1, double tau, bool may_cap, int64_t& o0, int64_t& o1) {
    // Output o reads input rows [o*s - p, o*s - p + (k-1)*d]; it can change when that range
    // meets the changed rows [c0, c1).
    o0 = std::max<int64_t>(0, ceil_div(c0 + a.p - (a.k - 1) * a.d, a.s));
    o1 = std::min<int64_t>(a.out, floor_div(c1 - 1 + a.p, a.s) + 1);
    if (o1 <= o0) {  // nothing can change (a strided op skips the rows): keep one unit
        o0 = std::min<int64_t>(std::max<int64_t>(o0, 0), a.out - 1);
        o1 = o0 + 1;
    }
    if (tau < 1.0 && may_cap) {
        const int64_t cap = std::max<int64_t>(a.min_cap, static_cast<int64_t>(std::ceil(tau * a.out)));
        if (o1 - o0 > cap) {
            // Keep the cap-sized part centred on the change (projective field thresholding).
            const int64_t mid2 = o0 + o1;  // twice the centre
            int64_t start = (mid2 - cap) / 2;
            start = std::max<int64_t>(0, std::min(start, a.out - cap));
            o0 = start;
            o1 = start + cap;
            return true;
        }
    }
    return false;
}

// One axis of a resize from in to out rows, as ATen computes it (in float): the source row of
// output o is scale * (o + 0.5) - 0.5 (at least 0), or scale * o with align_corners; scale is
// 1 / scale_factor when one is given, else in / out ((in - 1) / (out - 1) with align_corners).
// Nearest neighbours: floor(o * scale), with ATen's exact cases for equal and doubled sizes.
ResizeAxis resize_axis(bool nearest, bool align, int64_t in, int64_t out, std::optional<double> factor) {
    ResizeAxis a;
    a.nearest = nearest;
    const float scale = align && !nearest ? (out > 1 ? static_cast<float>(in - 1) / static_cast<float>(out - 1) : 0.f)
                        : factor && *factor > 0 ? static_cast<float>(1.0 / *factor)
                                                : static_cast<float>(in) / static_cast<float>(out);
    for (int64_t o = 0; o < out; ++o) {
        if (nearest) {
            const int64_t i = out == in ? o : out == 2 * in ? o >> 1
                              : std::min<int64_t>(static_cast<int64_t>(std::floor(static_cast<float>(o) * scale)), in - 1);
            a.i0.push_back(i);
            a.i1.push_back(i);
            a.l1.push_back(0.f);
            continue;
        }
        const float src = align ? scale * static_cast<float>(o)
                                : std::max(scale * (static_cast<float>(o) + 0.5f) - 0.5f, 0.f);
        const int64_t i0 = std::min<int64_t>(static_cast<int64_t>(std::floor(src)), in - 1);
        a.i0.push_back(i0);
        a.i1.push_back(i0 + (i0 < in - 1 ? 1 : 0));
        a.l1.push_back(std::min(std::max(src - static_cast<float>(i0), 0.f), 1.f));
    }
    return a;
}

void resize_range(const ResizeAxis& a, int64_t c0, int64_t c1, int64_t& o0, int64_t& o1) {
    // Output o reads rows i0[o] .. i1[o]; both are non-decreasing in o.
    const int64_t n = static_cast<int64_t>(a.i0.size());
    o0 = std::lower_bound(a.i1.begin(), a.i1.end(), c0) - a.i1.begin();
    o1 = std::upper_bound(a.i0.begin(), a.i0.end(), c1 - 1) - a.i0.begin();
    if (o1 <= o0) {  // nothing can change (downsampling skips the rows): keep one unit
        o0 = std::min<int64_t>(o0, n - 1);
        o1 = o0 + 1;
    }
}

std::vector<std::array<int64_t, 2>> propagate(const Plan& plan, int axis, int64_t start, int64_t patch,
                                              bool may_cap, std::vector<char>& cut) {
    std::vector<std::array<int64_t, 2>> box(plan.slots.size());
    box[0] = {start, std::min(plan.chw[1 + axis], start + patch)};
    cut.assign(plan.steps.size(), 0);
    for (size_t i = 0; i < plan.steps.size(); ++i) {
        const Step& st = plan.steps[i];
        std::array<int64_t, 2> b = box[st.inputs[0]];
        if (st.kind == StepKind::Window) {
            const std::array<int64_t, 2> in = b;
            cut[i] = window_range(st.ax[axis], in[0], in[1], plan.settings.tau, may_cap && st.op == WindowOp::Conv,
                                  b[0], b[1]);
        } else if (st.kind == StepKind::Resize) {
            const std::array<int64_t, 2> in = b;
            resize_range(st.rz[axis], in[0], in[1], b[0], b[1]);
        } else if (st.kind != StepKind::Pointwise) {
            for (int k : st.inputs) {
                b[0] = std::min(b[0], box[k][0]);
                b[1] = std::max(b[1], box[k][1]);
            }
        }
        box[st.output] = b;
    }
    return box;
}

double field_coverage(const Plan& plan, int64_t patch_h, int64_t patch_w) {
    std::vector<char> cut;
    std::array<std::vector<std::array<int64_t, 2>>, 2> box;
    for (int axis = 0; axis < 2; ++axis) {
        const int64_t size = plan.chw[1 + axis], patch = axis == 0 ? patch_h : patch_w;
        box[axis] = propagate(plan, axis, std::max<int64_t>(0, (size - patch) / 2), patch, false, cut);
    }
    double most = 0;
    for (const auto& st : plan.steps)
        if (st.kind == StepKind::Window && st.op == WindowOp::Conv) {
            const auto &y = box[0][st.output], &x = box[1][st.output];
            most = std::max(most, std::min(double(y[1] - y[0]) / double(st.ax[0].out),
                                           double(x[1] - x[0]) / double(st.ax[1].out)));
        }
    return most;
}

void configure(Plan& plan, const EngineSettings& settings) {
    plan.settings = settings;
    auto& s = plan.settings;
    if (s.patch_h <= 0) s.patch_h = plan.chw[1];
    if (s.patch_w <= 0) s.patch_w = plan.chw[2];
    if (s.tau >= 1.0) s.corrected_classes = 0;
    for (auto& st : plan.steps) st.linear = false;
    // Thresholding never cuts into the occluder's own footprint (the window scaled to the map,
    // plus one for its alignment): there the changes are large and far from linear.
    for (auto& st : plan.steps)
        if (st.kind == StepKind::Window)
            for (int axis = 0; axis < 2; ++axis) {
                const int64_t size = plan.chw[1 + axis], patch = axis == 0 ? s.patch_h : s.patch_w;
                st.ax[axis].min_cap = std::min(st.ax[axis].out, ceil_div(patch * st.ax[axis].out, size) + 1);
            }
    if (s.corrected_classes <= 0) return;
    std::vector<char> cut;
    for (int axis = 0; axis < 2; ++axis) {
        const int64_t size = plan.chw[1 + axis], patch = axis == 0 ? s.patch_h : s.patch_w;
        for (int64_t start = 0; start + patch <= size; ++start) {
            propagate(plan, axis, start, patch, true, cut);
            for (size_t i = 0; i < plan.steps.size(); ++i) plan.steps[i].linear = plan.steps[i].linear || cut[i];
        }
    }
}

int64_t bytes_per_image(const Plan& plan) {
    int64_t n = 0;
    for (const auto& s : plan.slots) {
        int64_t e = 1;
        for (size_t i = 1; i < s.shape.size(); ++i) e *= s.shape[i];
        n += e;
    }
    for (const auto& st : plan.steps)
        if (st.kind == StepKind::Window) {
            const auto& in = plan.slots[st.inputs[0]].shape;
            const auto& out = plan.slots[st.output].shape;
            const int64_t padded =
                in[1] * (in[2] + st.ax[0].p + st.ax[0].pad_hi) * (in[3] + st.ax[1].p + st.ax[1].pad_hi);
            n += padded;
            if (st.linear) n += plan.settings.corrected_classes * (padded + out[1] * out[2] * out[3]);
        }
    return n * static_cast<int64_t>(sizeof(float));
}

}  // namespace convscope::incremental
