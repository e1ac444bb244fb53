// The incremental engine's parts, each against a plain reference: the patch kernels against
// at::conv2d / at::max_pool2d of the whole occluded image (random inputs, windows at the borders,
// strides, padding, dilation, groups, NaN), the plan of every fixture model against the changes
// the model really makes (activations of the clean and the occluded image compared position by
// position), and the settings as the plan's input.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "methods/incremental/engine.hpp"
#include "methods/incremental/kernels.hpp"
#include "methods/incremental/plan.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

namespace inc = convscope::incremental;

// One op's geometry on both axes.
struct Geo {
    int64_t k, s, p, d;
};

inc::Axis make_axis(const Geo& g, int64_t in) {
    inc::Axis a;
    a.k = g.k;
    a.s = g.s;
    a.p = g.p;
    a.d = g.d;
    a.in = in;
    a.out = (in + 2 * g.p - g.d * (g.k - 1) - 1) / g.s + 1;
    a.pad_hi = std::max<int64_t>(0, (a.out - 1) * a.s + (a.k - 1) * a.d + 1 - a.in - a.p);
    return a;
}

// B positions on G images: patch boxes of h x w at the corners, the borders and inside.
struct Positions {
    inc::IncValue v;
    std::vector<at::Tensor> full;  // per position: the whole occluded image [1,C,H,W]
};

Positions positions(const at::Tensor& clean, int64_t h, int64_t w, uint64_t seed, bool with_nan = false) {
    const int64_t G = clean.size(0), C = clean.size(1), H = clean.size(2), W = clean.size(3);
    const std::vector<std::array<int64_t, 2>> at_ = {
        {0, 0}, {H - h, W - w}, {0, W - w}, {H - h, 0}, {(H - h) / 2, (W - w) / 2}, {1, 2}, {H - h - 1, 3}};
    Positions p;
    const int64_t B = static_cast<int64_t>(at_.size());
    p.v.patch = randn({B, C, h, w}, seed);
    if (with_nan) p.v.patch[2][0][0][0] = std::numeric_limits<float>::quiet_NaN();
    p.v.h = h;
    p.v.w = w;
    for (int64_t b = 0; b < B; ++b) {
        const int64_t y = at_[b][0], x = at_[b][1];
        p.v.img.push_back(b % G);
        p.v.py.push_back(y);
        p.v.px.push_back(x);
        p.v.y0.push_back(y);
        p.v.y1.push_back(y + h);
        p.v.x0.push_back(x);
        p.v.x1.push_back(x + w);
        at::Tensor f = clean[b % G].clone();
        f.slice(1, y, y + h).slice(2, x, x + w).copy_(p.v.patch[b]);
        p.full.push_back(f.unsqueeze(0));
    }
    return p;
}

// The output boxes of a window op for the positions, as the engine chooses them.
struct OutBoxes {
    int64_t oh = 0, ow = 0, L = 0, Lw = 0;
    std::vector<int64_t> py, px, wy, wx, y0, y1, x0, x1;
};

OutBoxes out_boxes(const inc::IncValue& v, const inc::Axis& ay, const inc::Axis& ax) {
    OutBoxes o;
    const size_t B = v.py.size();
    o.y0.resize(B), o.y1.resize(B), o.x0.resize(B), o.x1.resize(B);
    for (size_t b = 0; b < B; ++b) {
        inc::window_range(ay, v.y0[b], v.y1[b], 1.0, false, o.y0[b], o.y1[b]);
        inc::window_range(ax, v.x0[b], v.x1[b], 1.0, false, o.x0[b], o.x1[b]);
    }
    o.oh = inc::place(o.y0, o.y1, ay.out, o.py);
    o.ow = inc::place(o.x0, o.x1, ax.out, o.px);
    for (size_t b = 0; b < B; ++b) {
        o.wy.push_back(o.py[b] * ay.s);
        o.wx.push_back(o.px[b] * ax.s);
    }
    o.L = (o.oh - 1) * ay.s + (ay.k - 1) * ay.d + 1;
    o.Lw = (o.ow - 1) * ax.s + (ax.k - 1) * ax.d + 1;
    return o;
}

at::Tensor conv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b, int64_t s, int64_t p, int64_t d,
                int64_t groups = 1) {
    const std::vector<int64_t> stride{s, s}, pad{p, p}, dil{d, d};
    return at::conv2d(x, w, b, stride, pad, dil, groups);
}

at::Tensor box(const at::Tensor& t, int64_t y, int64_t x, int64_t h, int64_t w) {
    return t.slice(-2, y, y + h).slice(-1, x, x + w);
}

// Outside rows [y0,y1) x columns [x0,x1), a and b are equal up to float rounding (b comes from a
// batched call): the op's output cannot change there.
void expect_same_outside(const at::Tensor& a, const at::Tensor& b, int64_t y0, int64_t y1, int64_t x0, int64_t x1,
                         const std::string& what) {
    at::Tensor mask = torch::ones({a.size(-2), a.size(-1)}, torch::kBool);
    mask.slice(0, y0, y1).slice(1, x0, x1).fill_(false);
    const at::Tensor diff = (a - b).abs().amax(0).masked_select(mask);
    EXPECT_LE(diff.numel() == 0 ? 0.0 : diff.max().item<double>(), 1e-5 * b.abs().max().item<double>()) << what;
}

const std::vector<Geo> kConvGeometries = {{3, 1, 1, 1}, {5, 2, 2, 1}, {3, 1, 0, 2}, {1, 1, 0, 1}, {4, 3, 1, 1}};

TEST(IncrementalKernels, GatherThenConvolutionEqualsConvolutionOfTheOccludedImage) {
    const at::Tensor clean = randn({2, 4, 13, 11}, 1);
    const Positions p = positions(clean, 3, 4, 2);
    for (const Geo& g : kConvGeometries)
        for (int64_t groups : {1, 2}) {
            const std::string what = "k" + std::to_string(g.k) + " s" + std::to_string(g.s) + " p" +
                                     std::to_string(g.p) + " d" + std::to_string(g.d) + " groups " +
                                     std::to_string(groups);
            const at::Tensor weight = randn({6, 4 / groups, g.k, g.k}, 3), bias = randn({6}, 4);
            const inc::Axis ay = make_axis(g, 13), ax = make_axis(g, 11);
            const at::Tensor padded = at::constant_pad_nd(clean, {g.p, ax.pad_hi, g.p, ay.pad_hi}, 0.0).contiguous();
            const OutBoxes o = out_boxes(p.v, ay, ax);
            const at::Tensor win = inc::gather(padded, p.v, g.p, g.p, o.wy, o.wx, o.L, o.Lw);
            const at::Tensor got = conv(win, weight, bias, g.s, 0, g.d, groups);
            const at::Tensor clean_out = conv(clean, weight, bias, g.s, g.p, g.d, groups);
            ASSERT_EQ(clean_out.size(2), ay.out) << what;
            for (size_t b = 0; b < p.full.size(); ++b) {
                const at::Tensor ref = conv(p.full[b], weight, bias, g.s, g.p, g.d, groups)[0];
                expect_close(got[b], box(ref, o.py[b], o.px[b], o.oh, o.ow), 1e-5, what + " position " + std::to_string(b));
                // Nothing outside the range window_range gives can change.
                expect_same_outside(ref, clean_out[p.v.img[b]], o.y0[b], o.y1[b], o.x0[b], o.x1[b], what + " outside");
            }
        }
}

TEST(IncrementalKernels, MaxPoolingEqualsMaxPool2dOfTheOccludedImageWithNaN) {
    const at::Tensor clean = randn({2, 3, 12, 13}, 5);
    const Positions p = positions(clean, 4, 3, 6, /*with_nan=*/true);
    const float inf = std::numeric_limits<float>::infinity();
    for (const Geo& g : std::vector<Geo>{{2, 2, 0, 1}, {3, 2, 1, 1}, {3, 1, 1, 2}, {2, 1, 0, 1}, {3, 3, 0, 1}}) {
        const std::string what = "k" + std::to_string(g.k) + " s" + std::to_string(g.s) + " p" +
                                 std::to_string(g.p) + " d" + std::to_string(g.d);
        const inc::Axis ay = make_axis(g, 12), ax = make_axis(g, 13);
        const at::Tensor padded = at::constant_pad_nd(clean, {g.p, ax.pad_hi, g.p, ay.pad_hi}, -inf).contiguous();
        const OutBoxes o = out_boxes(p.v, ay, ax);
        const at::Tensor got = inc::max_pool(padded, p.v, g.p, g.p, o.wy, o.wx, o.L, o.Lw, ay, ax, o.oh, o.ow);
        for (size_t b = 0; b < p.full.size(); ++b) {
            const at::Tensor ref = at::max_pool2d(p.full[b], {g.k, g.k}, {g.s, g.s}, {g.p, g.p}, {g.d, g.d})[0];
            const at::Tensor want = box(ref, o.py[b], o.px[b], o.oh, o.ow);
            EXPECT_TRUE(torch::equal(got[b].isnan(), want.isnan())) << what << " NaN, position " << b;
            EXPECT_TRUE(torch::equal(torch::nan_to_num(got[b], 0.0), torch::nan_to_num(want, 0.0)))
                << what << " position " << b;
        }
    }
}

TEST(IncrementalKernels, Bfloat16ChangeConvolvedAndAddedStaysCloseToTheExactConvolution) {
    const at::Tensor clean = randn({2, 8, 12, 12}, 7);
    const Positions p = positions(clean, 3, 3, 8);
    const Geo g{3, 1, 1, 1};
    const at::Tensor weight = randn({5, 8, 3, 3}, 9);
    const inc::Axis a = make_axis(g, 12);
    const at::Tensor padded = at::constant_pad_nd(clean, {1, a.pad_hi, 1, a.pad_hi}, 0.0).contiguous();
    const OutBoxes o = out_boxes(p.v, a, a);
    const at::Tensor change = inc::gather_change(padded, p.v, 1, 1, o.wy, o.wx, o.L, o.Lw);
    ASSERT_EQ(change.scalar_type(), at::kBFloat16);
    // The change itself: (occluded - clean) rounded to bfloat16 as at::Tensor::to does, zero elsewhere.
    const at::Tensor occluded = inc::gather(padded, p.v, 1, 1, o.wy, o.wx, o.L, o.Lw);
    std::vector<at::Tensor> plain;
    for (size_t b = 0; b < p.full.size(); ++b)
        plain.push_back(box(padded[p.v.img[b]], o.wy[b], o.wx[b], o.L, o.Lw));
    const at::Tensor want_change = (occluded - torch::stack(plain)).to(at::kBFloat16);
    EXPECT_TRUE(torch::equal(change, want_change));
    const at::Tensor delta =
        conv(change, weight.to(at::kBFloat16), at::Tensor(), 1, 0, 1).contiguous();
    const at::Tensor clean_out = conv(clean, weight, at::Tensor(), 1, 1, 1).contiguous();
    const at::Tensor got = inc::clean_windows(clean_out, p.v.img, o.py, o.px, o.oh, o.ow,
                                              reinterpret_cast<const uint16_t*>(delta.data_ptr<c10::BFloat16>()));
    for (size_t b = 0; b < p.full.size(); ++b) {
        const at::Tensor ref = box(conv(p.full[b], weight, at::Tensor(), 1, 1, 1)[0], o.py[b], o.px[b], o.oh, o.ow);
        const at::Tensor ref_change = ref - box(clean_out[p.v.img[b]], o.py[b], o.px[b], o.oh, o.ow);
        // bfloat16 keeps 8 bits: the error scales with the change, not with the activations.
        const double err = (got[b] - ref).abs().max().item<double>();
        EXPECT_LE(err, 0.02 * ref_change.abs().max().item<double>()) << "position " << b;
    }
}

TEST(IncrementalKernels, CleanWindowsAndExtractAreTheBoxesOfThePastedImage) {
    const at::Tensor clean = randn({2, 3, 9, 10}, 10);
    const Positions p = positions(clean, 2, 3, 11);
    const size_t B = p.full.size();
    std::vector<int64_t> py(B), px(B);
    for (size_t b = 0; b < B; ++b) {
        py[b] = std::min<int64_t>(p.v.py[b], 9 - 4);
        px[b] = std::min<int64_t>(p.v.px[b], 10 - 5);
    }
    const at::Tensor windows = inc::clean_windows(clean, p.v.img, py, px, 4, 5);
    const at::Tensor same = inc::extract(clean, p.v, p.v.py, p.v.px, 2, 3);
    EXPECT_EQ(same.data_ptr(), p.v.patch.data_ptr());  // the same boxes: the patch itself
    // A larger box around the patch: clean values with the patch pasted in.
    std::vector<int64_t> ey(B), ex(B);
    for (size_t b = 0; b < B; ++b) {
        ey[b] = std::max<int64_t>(0, std::min<int64_t>(p.v.py[b] - 1, 9 - 4));
        ex[b] = std::max<int64_t>(0, std::min<int64_t>(p.v.px[b] - 1, 10 - 5));
    }
    const at::Tensor pasted = inc::extract(clean, p.v, ey, ex, 4, 5);
    for (size_t b = 0; b < B; ++b) {
        EXPECT_TRUE(torch::equal(windows[b], box(clean[p.v.img[b]], py[b], px[b], 4, 5))) << b;
        EXPECT_TRUE(torch::equal(pasted[b], box(p.full[b][0], ey[b], ex[b], 4, 5))) << b;
    }
}

TEST(IncrementalKernels, PlaceKeepsEveryBoxInsideTheAxis) {
    const std::vector<int64_t> c0{0, 3, 7, 8}, c1{2, 6, 10, 9};
    std::vector<int64_t> start;
    EXPECT_EQ(inc::place(c0, c1, 10, start), 3);
    EXPECT_EQ(start, (std::vector<int64_t>{0, 3, 7, 7}));
    EXPECT_EQ(inc::place(c0, c1, 2, start), 2);  // never larger than the axis
    for (int64_t s : start) EXPECT_EQ(s, 0);
}

TEST(IncrementalKernels, WindowRangeMatchesBruteForceAndThresholdingCentres) {
    for (const Geo& g : std::vector<Geo>{{3, 1, 1, 1}, {5, 2, 2, 1}, {3, 2, 0, 2}, {2, 2, 0, 1}, {7, 3, 3, 1}}) {
        const inc::Axis a = make_axis(g, 17);
        for (int64_t c0 = 0; c0 < 17; ++c0)
            for (int64_t c1 = c0 + 1; c1 <= 17; ++c1) {
                int64_t o0 = 0, o1 = 0;
                EXPECT_FALSE(inc::window_range(a, c0, c1, 1.0, true, o0, o1));
                // Brute force: output o reads rows o*s - p + j*d, j < k.
                int64_t b0 = a.out, b1 = -1;
                for (int64_t o = 0; o < a.out; ++o)
                    for (int64_t j = 0; j < a.k; ++j) {
                        const int64_t r = o * a.s - a.p + j * a.d;
                        if (r >= c0 && r < c1) b0 = std::min(b0, o), b1 = std::max(b1, o + 1);
                    }
                if (b1 < 0 && a.d > 1) {  // only dilation holes meet the rows
                    EXPECT_GE(o1 - o0, 1);
                    continue;
                }
                if (b1 < 0) {  // a strided op that skips the rows: one output is kept
                    EXPECT_EQ(o1 - o0, 1);
                    continue;
                }
                // Exact without dilation; with it, the range may include outputs whose taps skip
                // the rows (never fewer).
                if (a.d == 1) {
                    EXPECT_EQ(o0, b0) << c0 << "," << c1;
                    EXPECT_EQ(o1, b1) << c0 << "," << c1;
                } else {
                    EXPECT_LE(o0, b0) << c0 << "," << c1;
                    EXPECT_GE(o1, b1) << c0 << "," << c1;
                    b0 = o0, b1 = o1;
                }
                // Thresholded at tau 0.3: at most ceil(0.3 * out) outputs, inside the exact range's
                // centre.
                int64_t t0 = 0, t1 = 0;
                const int64_t cap = static_cast<int64_t>(std::ceil(0.3 * a.out));
                const bool cut = inc::window_range(a, c0, c1, 0.3, true, t0, t1);
                EXPECT_EQ(cut, b1 - b0 > cap);
                EXPECT_LE(t1 - t0, std::max(cap, b1 - b0 > cap ? cap : b1 - b0));
                if (cut) EXPECT_LE(std::abs((t0 + t1) - (b0 + b1)), 1);
            }
    }
}

TEST(IncrementalKernels, DotsEqualDoublePrecisionSums) {
    const at::Tensor v = randn({37}, 12), rows = randn({3, 40}, 13);
    std::vector<double> acc(3, 1.0);
    inc::dots(v.data_ptr<float>(), rows.data_ptr<float>(), 40, 37, 3, acc.data());
    for (int j = 0; j < 3; ++j) {
        double want = 1.0;
        for (int i = 0; i < 37; ++i) want += double(v[i].item<float>()) * rows[j][i].item<float>();
        EXPECT_NEAR(acc[j], want, 1e-4) << j;
    }
}

// --- the plan, against what the model really changes -------------------------------------------

struct FixtureModel {
    std::string name;
    std::vector<int64_t> chw;
};

const std::vector<FixtureModel> kModels = {
    {"lenet_scripted", {1, 28, 28}},      {"lenet_traced", {1, 28, 28}},
    {"seq_scripted", {3, 32, 32}},         {"resnet_small_scripted", {3, 32, 32}},
    {"resnet_small_traced", {3, 32, 32}},  {"concat_scripted", {3, 32, 32}},
};

Model load(const FixtureModel& f) {
    Model m = Model::load(fixture(f.name + ".pt"));
    m.set_input_shape(f.chw);
    return m;
}

int count(const inc::Plan& p, inc::StepKind kind) {
    int n = 0;
    for (const auto& st : p.steps) n += st.kind == kind;
    return n;
}

TEST(IncrementalPlan, EveryFixtureModelHasAConsistentPlan) {
    for (const auto& f : kModels) {
        Model m = load(f);
        const inc::Plan p = inc::make_plan(m, f.chw);
        ASSERT_FALSE(p.steps.empty()) << f.name;
        std::vector<int> writers(p.slots.size(), 0);
        for (size_t i = 0; i < p.steps.size(); ++i) {
            const auto& st = p.steps[i];
            for (int s : st.inputs) {
                EXPECT_LT(s, st.output) << f.name << ": step " << i << " reads a later slot";
                EXPECT_GE(p.slots[s].last_use, static_cast<int>(i)) << f.name;
            }
            ++writers[st.output];
            EXPECT_EQ(p.slots[st.output].shape.size(), 4u) << f.name;
        }
        // Every slot that is read or passed on has one writer (a convolution that absorbed its
        // batch norm writes the batch norm's slot; its own is left unused).
        for (size_t s = 1; s < writers.size(); ++s) {
            EXPECT_LE(writers[s], 1) << f.name << " slot " << s;
            if (p.slots[s].last_use >= 0 || p.slots[s].boundary || static_cast<int>(s) == p.head.slot)
                EXPECT_EQ(writers[s], 1) << f.name << " slot " << s;
        }
        // The rest of the graph starts from the boundary slots or the head's output.
        EXPECT_TRUE(!p.boundary.empty() || p.head.slot >= 0) << f.name;
        EXPECT_NE(p.note.find("incremental: "), std::string::npos) << f.name;
    }
}

TEST(IncrementalPlan, FixtureModelsPlanTheirSpatialOps) {
    struct Want {
        std::string name;
        int window, binary, cat;
        bool head;
    };
    // Counted from the fixtures' definitions (tests/fixtures/make_fixtures.py).
    for (const Want& w : std::vector<Want>{{"lenet_scripted", 4, 0, 0, true},
                                           {"lenet_traced", 4, 0, 0, true},
                                           {"resnet_small_scripted", 8, 3, 0, false},
                                           {"resnet_small_traced", 8, 3, 0, false},
                                           {"concat_scripted", 4, 0, 1, false}}) {
        const auto it = std::find_if(kModels.begin(), kModels.end(), [&](const FixtureModel& f) { return f.name == w.name; });
        Model m = load(*it);
        const inc::Plan p = inc::make_plan(m, it->chw);
        EXPECT_EQ(count(p, inc::StepKind::Window), w.window) << w.name << ": " << p.note;
        EXPECT_EQ(p.head.slot >= 0, w.head) << w.name << ": " << p.note;
        EXPECT_EQ(count(p, inc::StepKind::Binary), w.binary) << w.name << ": " << p.note;
        EXPECT_EQ(count(p, inc::StepKind::Cat), w.cat) << w.name << ": " << p.note;
    }
}

// Rows (axis 0) or columns (axis 1) where a and b ([G,C,H,W], image g) differ: [first, last + 1),
// or {0, 0} when they are equal.
std::array<int64_t, 2> changed(const at::Tensor& a, const at::Tensor& b, int64_t g, int axis) {
    const at::Tensor d = (a[g] - b[g]).abs().amax(0);  // [H,W]
    const at::Tensor line = d.amax(axis == 0 ? 1 : 0) > 0;
    const auto idx = line.nonzero();
    if (idx.numel() == 0) return {0, 0};
    return {idx.min().item<int64_t>(), idx.max().item<int64_t>() + 1};
}

TEST(IncrementalPlan, PropagatedBoxesContainEveryChangeTheModelMakes) {
    for (const auto& f : kModels) {
        Model m = load(f);
        const inc::Plan p = inc::make_plan(m, f.chw);
        const int64_t H = f.chw[1], W = f.chw[2];
        const at::Tensor x = randn({1, f.chw[0], H, W}, 21);
        for (const std::array<int64_t, 3> win : std::vector<std::array<int64_t, 3>>{{0, 0, 5}, {H - 4, W - 6, 4}, {H / 2, 3, 6}}) {
            const int64_t y = win[0], xo = win[1], size = win[2];
            const int64_t hh = std::min(size, H - y), ww = std::min(size, W - xo);
            at::Tensor occluded = x.clone();
            occluded.slice(2, y, y + hh).slice(3, xo, xo + ww).copy_(randn({1, f.chw[0], hh, ww}, 22) * 3);
            inc::Engine a(m, p, {}), b(m, p, {});
            a.set_images(x);
            b.set_images(occluded);
            std::vector<char> cut;
            const auto rows = inc::propagate(p, 0, y, hh, false, cut);
            // Columns: propagate takes one extent per axis; the window's columns start at xo.
            const auto cols = inc::propagate(p, 1, xo, ww, false, cut);
            std::vector<char> written(p.slots.size(), 0);
            written[0] = 1;
            for (const auto& st : p.steps) written[st.output] = 1;
            for (size_t s = 0; s < p.slots.size(); ++s) {
                if (!written[s]) continue;  // a convolution's own slot, unused after fusion
                const at::Tensor& ca = a.clean(static_cast<int>(s));
                const at::Tensor& cb = b.clean(static_cast<int>(s));
                for (int axis = 0; axis < 2; ++axis) {
                    const auto c = changed(ca, cb, 0, axis);
                    if (c[1] == 0) continue;  // nothing changed (e.g. a ReLU cut it off)
                    const auto& planned = axis == 0 ? rows[s] : cols[s];
                    EXPECT_GE(c[0], planned[0]) << f.name << " slot " << s << " axis " << axis;
                    EXPECT_LE(c[1], planned[1]) << f.name << " slot " << s << " axis " << axis;
                }
            }
            // The first convolution's change is exactly the planned range (generic weights).
            for (const auto& st : p.steps)
                if (st.kind == inc::StepKind::Window && st.op == inc::WindowOp::Conv && st.inputs[0] == 0) {
                    const int o = st.output;
                    EXPECT_EQ(changed(a.clean(o), b.clean(o), 0, 0), rows[o]) << f.name;
                    EXPECT_EQ(changed(a.clean(o), b.clean(o), 0, 1), cols[o]) << f.name;
                }
        }
    }
}

TEST(IncrementalPlan, SettingsAreTheEnginesInputAndLeaveThePlanAlone) {
    Model m = Model::load(fixture("resnet18_scripted.pt"));
    m.set_input_shape({3, 224, 224});
    const inc::Plan p = inc::make_plan(m, {3, 224, 224});
    // ResNet-18's deep maps are covered by a 16-pixel occluder's projective field.
    EXPECT_GE(inc::field_coverage(p, 16, 16), 0.9);
    inc::EngineSettings s;
    s.tau = 0.25;
    s.corrected_classes = 2;
    s.patch_h = s.patch_w = 16;
    inc::Engine approx(m, p, s), exact(m, p, {});
    EXPECT_EQ(approx.plan().settings.tau, 0.25);
    EXPECT_EQ(approx.plan().settings.corrected_classes, 2);
    int linear = 0;
    for (const auto& st : approx.plan().steps) linear += st.linear;
    EXPECT_GT(linear, 0);  // thresholding cuts some convolutions, which get the correction
    for (const auto& st : exact.plan().steps) EXPECT_FALSE(st.linear);
    for (const auto& st : p.steps) EXPECT_FALSE(st.linear);  // the shared plan is unchanged
    EXPECT_GT(approx.bytes_per_image(), exact.bytes_per_image());  // the correction's gradients
    // Without thresholding there is nothing to correct.
    s.tau = 1.0;
    inc::Engine no_cut(m, p, s);
    EXPECT_EQ(no_cut.plan().settings.corrected_classes, 0);
}

}  // namespace
}  // namespace convscope
