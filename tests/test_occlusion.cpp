// Occlusion sensitivity: every mode against a naive loop that occludes one position at a time
// with the model's plain forward pass, incremental inference against full recomputation on
// residual and branched graphs, the coverage mean at borders on a hand-computed case, the prob
// score and baselines against closed forms and OpenCV, SSIM against a numpy reference, the
// summary's region and confounder flags, and the clear errors for bad input.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <set>
#include <opencv2/imgproc.hpp>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/occlusion.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

Model load_fixture(const std::string& name, std::vector<int64_t> chw) {
    Model m = Model::load(fixture(name + ".pt"));
    m.set_input_shape(chw);
    return m;
}

at::Tensor fixture_input(const std::string& name) { return read_npy(fixture(name + "/input.npy")); }

// The reference: one occluded copy at a time through Model::forward; drops per position, and the
// pixel map by looping over every pixel and every window that covers it.
struct Naive {
    at::Tensor coarse;     // [N,PY,PX]
    at::Tensor map;        // [N,H,W]
    at::Tensor top_class;  // [N,PY,PX]
};

Naive naive_occlusion(const Model& m, const at::Tensor& x, const OcclusionOptions& o,
                      const std::vector<int64_t>& targets) {
    const int64_t N = x.size(0), H = x.size(2), W = x.size(3);
    const at::Tensor base = occlusion_baseline(x, o);
    std::vector<int64_t> ys, xs;
    for (int64_t y = 0; y + o.patch_h <= H; y += o.stride_y) ys.push_back(y);
    for (int64_t xx = 0; xx + o.patch_w <= W; xx += o.stride_x) xs.push_back(xx);
    const int64_t PY = ys.size(), PX = xs.size();
    Naive r;
    r.coarse = torch::zeros({N, PY, PX});
    r.top_class = torch::zeros({N, PY, PX}, torch::kLong);
    r.map = torch::zeros({N, H, W});
    using torch::indexing::Slice;
    for (int64_t n = 0; n < N; ++n) {
        const at::Tensor img = x.slice(0, n, n + 1);
        auto score = [&](const at::Tensor& out) {
            return o.target.score == Score::Logit ? out[0][targets[n]].item<double>()
                                                    : torch::softmax(out, 1)[0][targets[n]].item<double>();
        };
        const double clean = score(m.forward(img));
        for (int64_t i = 0; i < PY; ++i)
            for (int64_t j = 0; j < PX; ++j) {
                at::Tensor occ = img.clone();
                occ.index_put_({0, Slice(), Slice(ys[i], ys[i] + o.patch_h), Slice(xs[j], xs[j] + o.patch_w)},
                               base.index({n, Slice(), Slice(ys[i], ys[i] + o.patch_h),
                                           Slice(xs[j], xs[j] + o.patch_w)}));
                const at::Tensor out = m.forward(occ);
                r.coarse[n][i][j] = clean - score(out);
                r.top_class[n][i][j] = out[0].argmax().item<int64_t>();
            }
        for (int64_t y = 0; y < H; ++y)
            for (int64_t xx = 0; xx < W; ++xx) {
                double sum = 0;
                int count = 0;
                for (int64_t i = 0; i < PY; ++i)
                    for (int64_t j = 0; j < PX; ++j)
                        if (y >= ys[i] && y < ys[i] + o.patch_h && xx >= xs[j] && xx < xs[j] + o.patch_w) {
                            sum += r.coarse[n][i][j].item<double>();
                            ++count;
                        }
                r.map[n][y][xx] = count ? sum / count : 0.0;
            }
    }
    return r;
}

void expect_matches_naive(const OcclusionResult& r, const Naive& ref, double tol, const std::string& what) {
    expect_close(r.coarse, ref.coarse, tol, what + " coarse");
    for (int64_t c = 0; c < r.occlusion.size(1); ++c)
        expect_close(r.occlusion.select(1, c), ref.map, tol, what + " map channel " + std::to_string(c));
}

// logits = [s, -s] with s the sum of all input values: a window's drop is the sum of what it
// removes, so results can be written down by hand.
Model sum_model(std::vector<int64_t> chw) {
    torch::jit::Module m("SumNet");
    m.define(R"(
def forward(self, x):
    s = torch.sum(x, [1, 2, 3])
    return torch.stack([s, -s], 1)
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape(chw);
    return model;
}

// Odd sizes, strided/dilated/grouped convs, "same" padding with an even kernel, ceil-mode max
// pooling with padding, average pooling counting padding, a product of two feature maps, a
// per-channel scale and a channel concatenation: every geometry the incremental engine handles.
Model zoo_model() {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
    torch::jit::Module m("ZooNet");
    m.register_parameter("w1", torch::randn({4, 3, 3, 3}, gen, torch::kFloat) * 0.5, false);
    m.register_parameter("b1", torch::randn({4}, gen, torch::kFloat) * 0.1, false);
    m.register_parameter("w2", torch::randn({4, 4, 4, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("w3", torch::randn({4, 4, 3, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("b3", torch::randn({4}, gen, torch::kFloat) * 0.1, false);
    m.register_buffer("scale", torch::rand({1, 4, 1, 1}, gen, torch::kFloat) + 0.5);
    m.define(R"(
def forward(self, x):
    a = torch.relu(torch.conv2d(x, self.w1, self.b1, [2, 1], [1, 2], [1, 2], 1))
    b = torch.max_pool2d(a, [3, 3], [2, 2], [1, 1], [1, 1], True)
    c = torch.conv2d(b, self.w2, None, [1, 1], "same", [1, 1], 1)
    d = torch.avg_pool2d(c, [2, 2], [1, 1], [1, 1], False, True)
    e = torch.sigmoid(d) * d
    f = torch.cat([e, d * self.scale], 1)
    g = torch.conv2d(f, self.w3, self.b3, [1, 1], [0, 0], [1, 1], 2)
    return g.mean([2, 3])
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({3, 20, 23});
    return model;
}

// A stand-in for a trained detector on 28x28 inputs, with fixed weights: smooth first-layer
// filters (a blob and two edge detectors), ReLU, 2x2 max pooling, a second convolution, ReLU,
// pooling and a read-out by smooth spatial templates. Its occlusion map follows the image's
// structure, as a trained model's does (random weights give maps that are mostly noise).
Model detector_model() {
    const at::Tensor t = torch::arange(-2, 3, torch::kFloat);
    const at::Tensor g = torch::exp(-(t * t) / 2);
    const at::Tensor blob = torch::outer(g, g) / torch::outer(g, g).sum();
    const at::Tensor dy = torch::outer(t * g, g) / 4, dx = torch::outer(g, t * g) / 4;
    torch::jit::Module m("DetectorNet");
    m.register_parameter("w1", torch::stack({blob, dy, dx}).unsqueeze(1), false);
    m.register_parameter("b1", torch::tensor({-0.1f, 0.0f, 0.0f}), false);
    m.register_parameter("w2", (torch::sin(torch::arange(4 * 3 * 9, torch::kFloat) * 0.7) * 0.4).view({4, 3, 3, 3}),
                         false);
    const at::Tensor p = torch::arange(7, torch::kFloat) - 3;
    const at::Tensor bump = torch::exp(-(p.view({7, 1}) * p.view({7, 1}) + p.view({1, 7}) * p.view({1, 7})) / 8);
    std::vector<at::Tensor> rows;
    for (int k = 0; k < 3; ++k) {
        std::vector<at::Tensor> per_channel;
        for (int c = 0; c < 4; ++c) per_channel.push_back(bump * std::cos(0.9 * (k + 1) * (c + 1)));
        rows.push_back(torch::stack(per_channel).flatten());
    }
    m.register_parameter("w3", torch::stack(rows), false);
    m.define(R"(
def forward(self, x):
    a = torch.max_pool2d(torch.relu(torch.conv2d(x, self.w1, self.b1, [1, 1], [2, 2], [1, 1], 1)), [2, 2], [2, 2], [0, 0], [1, 1], False)
    b = torch.max_pool2d(torch.relu(torch.conv2d(a, self.w2, None, [1, 1], [1, 1], [1, 1], 1)), [2, 2], [2, 2], [0, 0], [1, 1], False)
    return torch.matmul(torch.flatten(b, 1), self.w3.t())
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({1, 28, 28});
    return model;
}

OcclusionOptions opts(int64_t ph, int64_t pw, int64_t sy, int64_t sx, OcclusionMode mode) {
    OcclusionOptions o;
    o.patch_h = ph;
    o.patch_w = pw;
    o.stride_y = sy;
    o.stride_x = sx;
    o.mode = mode;
    return o;
}

}  // namespace

// --- agreement with the naive loop -----------------------------------------------------------

TEST(Occlusion, LenetMatchesNaiveLoopInEveryExactMode) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    for (auto mode : {OcclusionMode::Full, OcclusionMode::Incremental}) {
        auto o = opts(5, 4, 3, 5, mode);  // strides that do not divide 28 - 5 or 28 - 4
        o.batch_size = 16;                // several batches, the last one partial
        const auto r = occlusion(m, x, o);
        ASSERT_EQ(r.positions_y, 8);
        ASSERT_EQ(r.positions_x, 5);
        const auto ref = naive_occlusion(m, x, o, r.targets);
        expect_matches_naive(r, ref, 1e-5, mode == OcclusionMode::Full ? "full" : "incremental");
        EXPECT_TRUE(torch::equal(r.top_class, ref.top_class));
        EXPECT_TRUE(r.evaluated.all().item<bool>());
        EXPECT_EQ(r.forwards, 2 * 8 * 5);
    }
}

TEST(Occlusion, ConcatModelMatchesNaiveLoop) {
    Model m = load_fixture("concat_scripted", {3, 32, 32});
    const at::Tensor x = fixture_input("concat_scripted");
    auto o = opts(6, 6, 5, 4, OcclusionMode::Incremental);
    o.baseline.kind = Baseline::Kind::Mean;
    o.target.kind = Target::Kind::Class;
    o.target.class_index = 2;
    const auto r = occlusion(m, x, o);
    EXPECT_NE(r.engine_note.find("cat x1"), std::string::npos) << r.engine_note;
    const auto ref = naive_occlusion(m, x, o, r.targets);
    expect_matches_naive(r, ref, 1e-5, "concat incremental");
    const auto full = occlusion(m, x, opts(6, 6, 5, 4, OcclusionMode::Full));
    EXPECT_EQ(full.targets, r.predicted);  // target pred = the clean prediction
}

// --- incremental == full ----------------------------------------------------------------------

TEST(Occlusion, IncrementalEqualsFullOnResidualModels) {
    for (const std::string name : {"resnet_small_scripted", "resnet_small_traced"}) {
        Model m = load_fixture(name, {3, 32, 32});
        const at::Tensor x = fixture_input(name);
        auto o = opts(4, 4, 2, 2, OcclusionMode::Full);
        o.batch_size = 64;
        const auto full = occlusion(m, x, o);
        o.mode = OcclusionMode::Incremental;
        const auto inc = occlusion(m, x, o);
        // Everything up to global pooling runs incrementally: all 8 convs and batch norms, the 7
        // in-place ReLUs and the 3 in-place residual adds.
        for (const char* part : {"add x3", "conv+batch_norm x8", "relu x7"})
            EXPECT_NE(inc.engine_note.find(part), std::string::npos) << name << ": " << inc.engine_note;
        expect_close(inc.coarse, full.coarse, 1e-4, name + " coarse");
        expect_close(inc.occlusion, full.occlusion, 1e-4, name + " map");
        expect_close(inc.target_prob, full.target_prob, 1e-4, name + " target prob");
        EXPECT_TRUE(torch::equal(inc.top_class, full.top_class)) << name;
    }
}

static at::Tensor structured_image();

// A small CNN ending in flatten -> linear, with the head in three forms: the model's output
// itself (no bias), followed by more layers, and with the flattened map read twice (then the
// engine leaves the head to the rest of the graph).
Model head_model(int form) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    torch::jit::Module m("HeadNet");
    m.register_parameter("w1", torch::randn({6, 1, 3, 3}, gen, torch::kFloat) * 0.5, false);
    m.register_parameter("w2", torch::randn({8, 6, 3, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("fc", torch::randn({5, 8 * 7 * 7}, gen, torch::kFloat) * 0.1, false);
    m.register_parameter("fb", torch::randn({5}, gen, torch::kFloat) * 0.1, false);
    m.register_parameter("fc2", torch::randn({4, 5}, gen, torch::kFloat), false);
    const std::string body = R"(
def forward(self, x):
    a = torch.max_pool2d(torch.relu(torch.conv2d(x, self.w1, None, [1, 1], [1, 1], [1, 1], 1)), [2, 2], [2, 2], [0, 0], [1, 1], False)
    b = torch.max_pool2d(torch.relu(torch.conv2d(a, self.w2, None, [1, 1], [1, 1], [1, 1], 1)), [2, 2], [2, 2], [0, 0], [1, 1], False)
    f = torch.flatten(b, 1)
)";
    const char* tails[] = {
        "    return torch.linear(f, self.fc)\n",
        "    return torch.linear(torch.relu(torch.linear(f, self.fc, self.fb)), self.fc2)\n",
        "    return torch.linear(f, self.fc, self.fb) + f.sum(1, True)\n",
    };
    m.define(body + tails[form]);
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({1, 28, 28});
    return model;
}

TEST(Occlusion, FullyConnectedHeadIsIncrementalAndExact) {
    const at::Tensor x = torch::cat({structured_image(), structured_image().flip({2})}, 0);
    for (int form = 0; form < 3; ++form) {
        SCOPED_TRACE("head form " + std::to_string(form));
        Model m = head_model(form);
        const auto full = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Full));
        const auto inc = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Incremental));
        EXPECT_EQ(inc.engine_note.find("flatten+linear") != std::string::npos, form < 2) << inc.engine_note;
        expect_close(inc.coarse, full.coarse, 1e-4, "incremental head");
        // In bfloat16 mode the head multiplies the change alone: its error scales with the drops.
        auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
        o.tau = 1.0;
        o.coarse_step = 1;
        const auto approx = occlusion(m, x, o);
        const double scale = full.coarse.abs().max().item<double>();
        EXPECT_LT((approx.coarse - full.coarse).abs().max().item<double>(), 0.02 * scale);
    }
}

TEST(Occlusion, IncrementalEqualsFullOnLenetWithProbScore) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Full);
    o.target.score = Score::Prob;
    o.baseline.kind = Baseline::Kind::Constant;
    o.baseline.value = 1.5;
    const auto full = occlusion(m, x, o);
    o.mode = OcclusionMode::Incremental;
    const auto inc = occlusion(m, x, o);
    // The fully connected head (flatten -> linear) is computed by the engine; the rest from its
    // output on.
    EXPECT_NE(inc.engine_note.find("flatten+linear x1"), std::string::npos) << inc.engine_note;
    EXPECT_NE(inc.engine_note.find("full recomputation from aten::relu"), std::string::npos) << inc.engine_note;
    expect_close(inc.coarse, full.coarse, 1e-4, "lenet prob coarse");
    expect_close(inc.occlusion, full.occlusion, 1e-4, "lenet prob map");
}

TEST(Occlusion, IncrementalEqualsFullOnEveryWindowGeometry) {
    Model m = zoo_model();
    const at::Tensor x = torch::randn({2, 3, 20, 23}, at::make_generator<at::CPUGeneratorImpl>(3));
    for (auto [ph, pw, sy, sx] : std::vector<std::array<int64_t, 4>>{{3, 5, 2, 3}, {1, 1, 1, 1}, {20, 23, 1, 1}, {7, 2, 4, 7}}) {
        auto o = opts(ph, pw, sy, sx, OcclusionMode::Full);
        o.baseline.kind = Baseline::Kind::Blur;
        const auto full = occlusion(m, x, o);
        o.mode = OcclusionMode::Incremental;
        const auto inc = occlusion(m, x, o);
        const std::string what = "zoo " + std::to_string(ph) + "x" + std::to_string(pw);
        EXPECT_NE(inc.engine_note.find("conv x3"), std::string::npos) << inc.engine_note;
        EXPECT_NE(inc.engine_note.find("max_pool2d x1"), std::string::npos) << inc.engine_note;
        EXPECT_NE(inc.engine_note.find("avg_pool2d x1"), std::string::npos) << inc.engine_note;
        EXPECT_NE(inc.engine_note.find("full recomputation from aten::mean"), std::string::npos) << inc.engine_note;
        expect_close(inc.coarse, full.coarse, 1e-4, what);
        expect_close(inc.occlusion, full.occlusion, 1e-4, what);
    }
}

TEST(Occlusion, IncrementalEqualsFullOnResnet18) {
    Model m = load_fixture("resnet18_scripted", {3, 224, 224});
    const at::Tensor x = fixture_input("resnet18_scripted");
    auto o = opts(32, 32, 48, 64, OcclusionMode::Full);  // 5 x 4 positions: quick
    const auto full = occlusion(m, x, o);
    o.mode = OcclusionMode::Incremental;
    const auto inc = occlusion(m, x, o);
    for (const char* part : {"add x8", "conv+batch_norm x20", "max_pool2d x1", "relu x17"})
        EXPECT_NE(inc.engine_note.find(part), std::string::npos) << inc.engine_note;
    expect_close(inc.coarse, full.coarse, 1e-4, "resnet18 coarse");
}

// --- definition: coverage means, scores, baselines --------------------------------------------

TEST(Occlusion, IncrementalMaxPoolingPropagatesNaNAsFullDoes) {
    // A NaN made inside the model (0/0 at a zero pixel): max pooling must give NaN wherever its
    // window reads it (as at::max_pool2d does), whether the NaN is in the clean activations or
    // beside the occluder's patch; the model turns NaN into a large number afterwards, so a
    // pooling that dropped it would change the drops. Both the 2x2/stride-2 path and the general
    // one.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    torch::jit::Module m("NanPool");
    m.register_parameter("fc", torch::randn({3, 2 * (16 + 9)}, gen, torch::kFloat), false);
    m.define(R"(
def forward(self, x):
    x = x * (x / x)
    a = torch.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
    b = torch.max_pool2d(x, [3, 3], [2, 2], [0, 0], [1, 1], False)
    a = torch.nan_to_num(a, 50.0)
    b = torch.nan_to_num(b, -50.0)
    return torch.matmul(torch.cat([torch.flatten(a, 1), torch.flatten(b, 1)], 1), self.fc.t())
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({2, 8, 8});
    at::Tensor x = torch::randn({2, 2, 8, 8}, gen, torch::kFloat);
    x[0][1][2][4] = 0.f;  // first in its 2x2 window
    x[1][0][5][7] = 0.f;  // last in its 2x2 window
    for (int64_t patch : {2, 3}) {
        auto o = opts(patch, patch, 1, 1, OcclusionMode::Full);
        o.baseline.kind = Baseline::Kind::Constant;  // a finite fill (0 would be NaN too)
        o.baseline.value = 0.5;
        const auto full = occlusion(model, x, o);
        o.mode = OcclusionMode::Incremental;
        const auto inc = occlusion(model, x, o);
        ASSERT_TRUE(torch::isfinite(full.coarse).all().item<bool>());
        expect_close(inc.coarse, full.coarse, 1e-5, "NaN through max pooling, patch " + std::to_string(patch));
    }
}

TEST(Occlusion, CoverageMeansAtBordersByHand) {
    // Image 1x3x5 holding 1..15 row by row, baseline 0, patch 2x2, stride 1x2: windows at rows
    // {0,1} x columns {0,2}; column 4 is never covered (the stride does not divide 5 - 2).
    // Drops: (0,0) 1+2+6+7 = 16, (0,2) 3+4+8+9 = 24, (1,0) 6+7+11+12 = 36, (1,2) 8+9+13+14 = 44.
    Model m = sum_model({1, 3, 5});
    const at::Tensor x = torch::arange(1, 16, torch::kFloat).view({1, 1, 3, 5});
    const at::Tensor expected = torch::tensor({16.f, 16.f, 24.f, 24.f, 0.f,    //
                                               26.f, 26.f, 34.f, 34.f, 0.f,    // (16+36)/2, (24+44)/2
                                               36.f, 36.f, 44.f, 44.f, 0.f})
                                    .view({3, 5});
    for (auto mode : {OcclusionMode::Full, OcclusionMode::Incremental, OcclusionMode::Approximate}) {
        auto o = opts(2, 2, 1, 2, mode);
        o.tau = 1.0;
        o.bf16 = false;
        const auto r = occlusion(m, x, o);
        ASSERT_EQ(r.occlusion.sizes(), (std::vector<int64_t>{1, 1, 3, 5}));
        EXPECT_TRUE(torch::allclose(r.occlusion[0][0], expected)) << r.occlusion[0][0];
        EXPECT_TRUE(torch::allclose(r.coarse[0], torch::tensor({16.f, 24.f, 36.f, 44.f}).view({2, 2})));
        EXPECT_EQ(r.targets[0], 0);
        EXPECT_FLOAT_EQ(r.clean_score[0].item<float>(), 120.f);
    }
}

TEST(Occlusion, ProbScoreIsTheSoftmaxDrop) {
    // logits [s, -s]: p0 = sigmoid(2 s). Window (0,0) removes 0.01 * (1+2+6+7).
    Model m = sum_model({1, 3, 5});
    const at::Tensor x = torch::arange(1, 16, torch::kFloat).view({1, 1, 3, 5}) * 0.01;
    auto o = opts(2, 2, 1, 2, OcclusionMode::Full);
    o.target.score = Score::Prob;
    const auto r = occlusion(m, x, o);
    auto sig = [](double v) { return 1.0 / (1.0 + std::exp(-v)); };
    const double s = 1.2;
    EXPECT_NEAR(r.clean_score[0].item<double>(), sig(2 * s), 1e-6);
    EXPECT_NEAR(r.coarse[0][0][0].item<double>(), sig(2 * s) - sig(2 * (s - 0.16)), 1e-6);
    EXPECT_NEAR(r.coarse[0][1][1].item<double>(), sig(2 * s) - sig(2 * (s - 0.44)), 1e-6);
    EXPECT_NEAR(r.target_prob[0][1][1].item<double>(), sig(2 * (s - 0.44)), 1e-6);
    EXPECT_NEAR(r.clean_prob[0].item<double>(), sig(2 * s), 1e-6);
}

TEST(Occlusion, Baselines) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    const at::Tensor x = torch::rand({2, 3, 12, 17}, gen, torch::kFloat);
    OcclusionOptions o;
    o.baseline.kind = Baseline::Kind::Zero;
    EXPECT_EQ(occlusion_baseline(x, o).abs().max().item<float>(), 0.f);
    o.baseline.kind = Baseline::Kind::Constant;
    o.baseline.value = -0.75;
    EXPECT_TRUE(torch::equal(occlusion_baseline(x, o), torch::full_like(x, -0.75)));
    o.baseline.kind = Baseline::Kind::Mean;
    const at::Tensor mean = occlusion_baseline(x, o);
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 3; ++c)
            EXPECT_NEAR(mean[n][c][5][7].item<double>(), x[n][c].mean().item<double>(), 1e-6);
    // Blur: OpenCV's Gaussian with the same kernel (radius ceil(3 sigma)) and replicated edges.
    o.baseline.kind = Baseline::Kind::Blur;
    o.baseline.value = 1.7;
    const at::Tensor blur = occlusion_baseline(x, o);
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 3; ++c) {
            at::Tensor plane = x[n][c].contiguous();
            cv::Mat src(12, 17, CV_32F, plane.data_ptr<float>()), dst;
            const int r = static_cast<int>(std::ceil(3 * 1.7));
            cv::GaussianBlur(src, dst, cv::Size(2 * r + 1, 2 * r + 1), 1.7, 1.7, cv::BORDER_REPLICATE);
            at::Tensor ref = torch::from_blob(dst.ptr<float>(), {12, 17}, torch::kFloat).clone();
            expect_close(blur[n][c], ref, 1e-5, "blur");
        }
    // The default sigma is max(H, W) / 8 and blurs strongly: far flatter than the image.
    o.baseline.value = 0;
    EXPECT_LT(occlusion_baseline(x, o).std().item<double>(), 0.3 * x.std().item<double>());
}

TEST(Occlusion, MeanBaselineDropIsTheRemovedDeviation) {
    Model m = sum_model({2, 4, 4});
    const at::Tensor x = torch::arange(32, torch::kFloat).view({1, 2, 4, 4});
    auto o = opts(2, 3, 2, 1, OcclusionMode::Incremental);
    o.baseline.kind = Baseline::Kind::Mean;
    const auto r = occlusion(m, x, o);
    using torch::indexing::Slice;
    const at::Tensor mean = x.mean({2, 3}, true);
    const double want = (x.index({0, Slice(), Slice(2, 4), Slice(1, 4)}) - mean[0]).sum().item<double>();
    EXPECT_NEAR(r.coarse[0][1][1].item<double>(), want, 1e-4);
}

TEST(Occlusion, LabelTargetUsesTheLabels) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    auto o = opts(7, 7, 7, 7, OcclusionMode::Incremental);
    o.target.kind = Target::Kind::Label;
    o.target.labels = {4, 9};
    const auto r = occlusion(m, x, o);
    EXPECT_EQ(r.targets, (std::vector<int64_t>{4, 9}));
    const auto ref = naive_occlusion(m, x, o, r.targets);
    expect_close(r.coarse, ref.coarse, 1e-5, "label target");
}

// --- approximate mode ---------------------------------------------------------------------------

TEST(Occlusion, ApproximateWithoutThresholdsIsExact) {
    Model m = load_fixture("resnet_small_scripted", {3, 32, 32});
    const at::Tensor x = fixture_input("resnet_small_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Incremental);
    const auto exact = occlusion(m, x, o);
    o.mode = OcclusionMode::Approximate;
    o.tau = 1.0;
    o.bf16 = false;
    o.refine_drop = 0;  // refine every cell: every position is evaluated
    o.compare_exact = true;
    const auto approx = occlusion(m, x, o);
    EXPECT_TRUE(approx.evaluated.all().item<bool>());
    expect_close(approx.coarse, exact.coarse, 1e-4, "approximate without thresholds");
    ASSERT_EQ(approx.ssim.size(), 2u);
    EXPECT_NEAR(approx.ssim[0], 1.0, 1e-6);
    EXPECT_NEAR(approx.ssim_coarse[1], 1.0, 1e-6);
}

// The sum model on a ramp image (drops linear in the window position), patch 4, stride 1: the
// approximate result from the given coarse step (with the exact comparison) and the full one.
std::pair<OcclusionResult, OcclusionResult> smooth_map_case(int64_t coarse_step) {
    Model m = sum_model({1, 20, 20});
    const at::Tensor ramp = torch::arange(20, torch::kFloat).view({1, 20}) * 0.5 + 1.0;
    const at::Tensor x = (ramp + ramp.t()).view({1, 1, 20, 20});
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.coarse_step = coarse_step;
    o.compare_exact = true;
    return {occlusion(m, x, o), occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Full))};
}

TEST(Occlusion, ApproximateInterpolatesSmoothMapsExactly) {
    // With the sum model on a ramp image the drops are linear in the window position: every cell's
    // centre equals the mean of its corners and is below the largest drop (a corner), so nothing
    // is refined, and the interpolation (a local linear fit) is exact: only the coarse grid and
    // the cell centres need the model.
    const auto [r, exact] = smooth_map_case(4);
    EXPECT_EQ(r.forwards, 5 * 5 + 4 * 4);  // the grid (positions 0, 4, 8, 12, 16) and the centres
    EXPECT_EQ(r.evaluated.sum().item<int64_t>(), r.forwards);
    EXPECT_TRUE(r.evaluated[0][0][0].item<bool>() && r.evaluated[0][16][16].item<bool>());
    EXPECT_TRUE(r.evaluated[0][2][2].item<bool>() && r.evaluated[0][14][10].item<bool>());  // centres
    EXPECT_FALSE(r.evaluated[0][1][1].item<bool>());  // interpolated
    EXPECT_FALSE(r.evaluated[0][0][2].item<bool>());
    expect_close(r.coarse, exact.coarse, 1e-5, "interpolated linear drops");
    ASSERT_EQ(r.ssim.size(), 1u);
    EXPECT_NEAR(r.ssim[0], 1.0, 1e-6);
    EXPECT_NEAR(r.ssim_coarse[0], 1.0, 1e-6);
}

TEST(Occlusion, ApproximateLatticeInterpolatesSmoothMapsExactly) {
    // The same linear drops from the diagonal lattice: the positions with (x - y) mod 3 == 0, the
    // grid's corners, and the neighbours of the largest drop (a corner) are evaluated; a local
    // linear fit to the lattice gives the others exactly.
    const auto [r, exact] = smooth_map_case(3);
    int64_t lattice = 0;
    for (int64_t y = 0; y < 17; ++y)
        for (int64_t xx = 0; xx < 17; ++xx) {
            const bool on = (xx - y + 18) % 3 == 0;
            lattice += on;
            if (on) EXPECT_TRUE(r.evaluated[0][y][xx].item<bool>()) << y << "," << xx;
        }
    EXPECT_EQ(lattice, 97);
    // Corners (0,16) and (16,0) are off the lattice; (15,16) and (16,15) neighbour the peak (16,16).
    EXPECT_EQ(r.forwards, lattice + 2 + 2);
    EXPECT_EQ(r.evaluated.sum().item<int64_t>(), r.forwards);
    EXPECT_TRUE(r.evaluated[0][0][16].item<bool>() && r.evaluated[0][16][0].item<bool>());
    EXPECT_TRUE(r.evaluated[0][15][16].item<bool>() && r.evaluated[0][16][15].item<bool>());
    EXPECT_FALSE(r.evaluated[0][0][1].item<bool>());  // interpolated
    EXPECT_FALSE(r.evaluated[0][8][6].item<bool>());
    expect_close(r.coarse, exact.coarse, 1e-5, "interpolated linear drops from the lattice");
    ASSERT_EQ(r.ssim.size(), 1u);
    EXPECT_NEAR(r.ssim[0], 1.0, 1e-6);
}

TEST(Occlusion, ApproximateLatticeEvaluatesWhereTheClassChanges) {
    // After the lattice's drill-down no position left to interpolation has evaluated neighbours
    // that disagree about the most likely class or that hold the largest drop; the evaluated
    // positions hold the exact drops (float32 changes, no thresholding).
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.coarse_step = 3;
    o.tau = 1.0;
    o.bf16 = false;
    const auto r = occlusion(m, x, o);
    const auto ex = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Full));
    expect_close(r.coarse.masked_select(r.evaluated), ex.coarse.masked_select(r.evaluated), 1e-4,
                 "evaluated positions");
    int64_t class_changes = 0;
    for (int64_t n = 0; n < 2; ++n) {
        const double peak = ex.coarse[n].abs().max().item<double>();
        const at::Tensor ev_n = r.evaluated[n], cls_n = ex.top_class[n], drop_n = ex.coarse[n];
        auto ev = ev_n.accessor<bool, 2>();
        auto cls = cls_n.accessor<int64_t, 2>();
        auto drop = drop_n.accessor<float, 2>();
        for (int64_t y = 0; y < 25; ++y)
            for (int64_t xx = 0; xx < 25; ++xx) {
                std::set<int64_t> seen;
                bool at_peak = false;
                for (int64_t a = std::max<int64_t>(0, y - 1); a <= std::min<int64_t>(24, y + 1); ++a)
                    for (int64_t b = std::max<int64_t>(0, xx - 1); b <= std::min<int64_t>(24, xx + 1); ++b)
                        if (ev[a][b] && !(a == y && b == xx)) {
                            seen.insert(cls[a][b]);
                            at_peak = at_peak || std::abs(drop[a][b]) >= peak * (1 - 1e-6);
                        }
                if (seen.size() > 1 && ev[y][xx]) ++class_changes;
                if (ev[y][xx]) continue;
                EXPECT_LE(seen.size(), 1u) << "image " << n << " position " << y << "," << xx;
                EXPECT_FALSE(at_peak) << "image " << n << " position " << y << "," << xx;
            }
    }
    EXPECT_GT(class_changes, 0) << "the fixture should have class changes to refine";
    EXPECT_LT(r.forwards, 2 * 25 * 25);  // the untrained LeNet changes class often: many refined
    EXPECT_GT(r.forwards, 2 * 25 * 25 / 3);
}

TEST(Occlusion, ApproximateReportsSsimAndKeepsEvaluatedDropsExact) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.coarse_step = 4;
    o.compare_exact = true;
    const auto r = occlusion(m, x, o);
    EXPECT_LE(r.forwards, 2 * 25 * 25);
    EXPECT_GE(r.forwards, 2 * (7 * 7 + 6 * 6));  // the first round: every fourth position and the centres
    EXPECT_EQ(r.evaluated.sum().item<int64_t>(), r.forwards);
    ASSERT_EQ(r.ssim.size(), 2u);
    for (double s : r.ssim) {
        EXPECT_GT(s, 0.0);
        EXPECT_LE(s, 1.0 + 1e-9);
    }
    // Without projective-field thresholding and in float32 the evaluated positions hold exact drops.
    o.tau = 1.0;
    o.bf16 = false;
    o.compare_exact = false;
    const auto r1 = occlusion(m, x, o);
    const auto ex = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Full));
    const at::Tensor mask = r1.evaluated;
    expect_close(r1.coarse.masked_select(mask), ex.coarse.masked_select(mask), 1e-4, "evaluated positions");
    // Thresholding changes the drops where the projective field is cut.
    o.tau = 0.3;
    const auto r2 = occlusion(m, x, o);
    EXPECT_GT((r2.coarse - r1.coarse).abs().max().item<double>(), 1e-3);
}

TEST(Occlusion, ApproximateBfloat16ChangesStayCloseToExact) {
    // Every position evaluated, no thresholding: in float32 the drops are exact; in bfloat16 (where
    // the CPU has it) the convolved changes are rounded to 8 bits of mantissa, which moves each drop
    // by a small share of the largest, not more.
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    const auto ex = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Full));
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.tau = 1.0;
    o.coarse_step = 1;
    o.bf16 = false;
    const auto f32 = occlusion(m, x, o);
    EXPECT_FALSE(f32.bf16);
    expect_close(f32.coarse, ex.coarse, 1e-4, "float32 changes");
    o.bf16 = true;
    const auto b16 = occlusion(m, x, o);
    const double scale = ex.coarse.abs().max().item<double>();
    const double err = (b16.coarse - ex.coarse).abs().max().item<double>();
    if (b16.bf16) {
        EXPECT_GT(err, 0.0) << "bfloat16 reported but the drops are bit-exact";
        EXPECT_LT(err, 0.02 * scale);
    } else {
        EXPECT_LT(err, 1e-4 * scale);
    }
    EXPECT_TRUE(torch::equal(b16.coarse, occlusion(m, x, o).coarse));  // deterministic
}

// A structured 28x28 image (a bright ellipse with a dark bar on a smooth ramp), normalised to
// zero mean and unit variance: [1,1,28,28].
static at::Tensor structured_image() {
    const at::Tensor t = torch::arange(28, torch::kFloat) / 27.0;
    const at::Tensor yy = t.view({28, 1}).expand({28, 28}), xx = t.view({1, 28}).expand({28, 28});
    const at::Tensor ey = (yy - 0.5) / 0.3, ex = (xx - 0.45) / 0.22;
    at::Tensor img = 0.2 * xx + 0.1 * yy;
    img = torch::where(ey * ey + ex * ex < 1.0, 0.9 - 0.3 * yy, img);
    img = torch::where((yy - 0.55).abs() < 0.06 & (xx - 0.45).abs() < 0.25, torch::full_like(img, 0.05), img);
    return ((img - img.mean()) / img.std()).view({1, 1, 28, 28});
}

TEST(Occlusion, ApproximateKeepsTheStructureOfTheExactMap) {
    // On a structured image the drill-down evaluates a minority of the positions and the map
    // stays close to the exact one.
    Model m = detector_model();
    const at::Tensor x = torch::cat({structured_image(), structured_image().flip({3})}, 0);
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.coarse_step = 4;
    o.compare_exact = true;
    const auto r = occlusion(m, x, o);
    EXPECT_LT(r.forwards, 2 * 25 * 25 * 2 / 5);
    ASSERT_EQ(r.ssim.size(), 2u);
    // SSIM punishes small absolute errors where the exact drops are near 0 (its constants are 1%
    // and 3% of the map's range): the mirrored image, whose map has a wider flat margin, scores
    // lower although its structure is as well kept.
    EXPECT_GT(r.ssim[0], 0.9);
    EXPECT_GT(r.ssim[1], 0.6);
    EXPECT_GT(0.5 * (r.ssim[0] + r.ssim[1]), 0.75);
    // The reported SSIM is the one of the returned map against the exact incremental map.
    const auto exact = occlusion(m, x, opts(4, 4, 1, 1, OcclusionMode::Incremental));
    EXPECT_NEAR(map_ssim(r.occlusion[1][0], exact.occlusion[1][0]), r.ssim[1], 1e-3);
    // The automatic setting, the diagonal lattice: a third of the positions and a few more, and
    // closer.
    o.coarse_step = 0;
    const auto lat = occlusion(m, x, o);
    EXPECT_EQ(lat.coarse_step, 3);
    EXPECT_LT(lat.forwards, 2 * 25 * 25 * 2 / 5);
    ASSERT_EQ(lat.ssim.size(), 2u);
    EXPECT_GT(lat.ssim[0], 0.93);  // measured 0.944 and 0.896 (the quadtree: 0.908 and 0.670)
    EXPECT_GT(lat.ssim[1], 0.85);
}

TEST(Occlusion, ApproximateIsDeterministicAndPerImage) {
    // The same input gives the same bytes, and processing images together (they share the
    // drill-down rounds and batches) gives what processing each alone gives.
    Model m = load_fixture("resnet_small_scripted", {3, 32, 32});
    const at::Tensor x = fixture_input("resnet_small_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    o.tau = 1.0;
    o.coarse_step = 4;
    const auto a = occlusion(m, x, o);
    const auto b = occlusion(m, x, o);
    EXPECT_TRUE(torch::equal(a.coarse, b.coarse));
    EXPECT_TRUE(torch::equal(a.evaluated, b.evaluated));
    EXPECT_TRUE(torch::equal(a.top_class, b.top_class));
    for (int64_t n = 0; n < x.size(0); ++n) {
        const auto one = occlusion(m, x.slice(0, n, n + 1), o);
        EXPECT_TRUE(torch::equal(one.evaluated[0], a.evaluated[n])) << "image " << n;
        // bfloat16 changes: the rounding of the convolved changes depends a little on the patch
        // size, which depends on the other positions of the batch.
        expect_close(one.coarse[0], a.coarse[n], a.bf16 ? 1e-3 : 1e-5, "image " + std::to_string(n) + " alone");
    }
    // Fewer positions than the exact modes, more than the first round.
    EXPECT_LT(a.forwards, x.size(0) * 29 * 29);
    EXPECT_GE(a.forwards, x.size(0) * (9 * 9 + 8 * 8));
    // The same with thresholding and its first-order correction (gradients per image).
    o.tau = 0.3;
    o.coarse_step = 1;
    const auto c = occlusion(m, x, o);
    EXPECT_TRUE(torch::equal(c.coarse, occlusion(m, x, o).coarse));
    for (int64_t n = 0; n < x.size(0); ++n) {
        const auto one = occlusion(m, x.slice(0, n, n + 1), o);
        expect_close(one.coarse[0], c.coarse[n], 1e-3, "thresholded, image " + std::to_string(n) + " alone");
    }
}

// A network that is linear in its input (convolutions, a strided and a dilated one, average
// pooling, a residual sum, batch-norm-like scaling; no activation): the first-order correction
// of what thresholding cuts off is then exact, so the approximate mode with a tight threshold
// must give the exact drops of both classes at every position.
Model linear_model() {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
    torch::jit::Module m("LinearNet");
    m.register_parameter("w1", torch::randn({6, 3, 3, 3}, gen, torch::kFloat) * 0.4, false);
    m.register_parameter("b1", torch::randn({6}, gen, torch::kFloat) * 0.1, false);
    m.register_parameter("w2", torch::randn({6, 6, 3, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("w3", torch::randn({8, 6, 3, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("b3", torch::randn({8}, gen, torch::kFloat) * 0.1, false);
    m.register_parameter("w4", torch::randn({8, 8, 3, 3}, gen, torch::kFloat) * 0.3, false);
    m.register_parameter("fc", torch::randn({2, 8 * 8 * 8}, gen, torch::kFloat) * 0.05, false);
    m.register_buffer("scale", torch::rand({1, 8, 1, 1}, gen, torch::kFloat) + 0.5);
    m.define(R"(
def forward(self, x):
    a = torch.conv2d(x, self.w1, self.b1, [1, 1], [1, 1], [1, 1], 1)
    b = torch.conv2d(a, self.w2, None, [1, 1], [2, 2], [2, 2], 1) + a
    c = torch.avg_pool2d(b, [2, 2], [2, 2], [0, 0], False, True)
    d = torch.conv2d(c, self.w3, self.b3, [2, 2], [1, 1], [1, 1], 1) * self.scale
    e = torch.conv2d(d, self.w4, None, [1, 1], [1, 1], [1, 1], 1)
    return torch.matmul(torch.flatten(e, 1), self.fc.t())
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({3, 32, 32});
    return model;
}

TEST(Occlusion, ApproximateCorrectionIsExactOnLinearNetworks) {
    Model m = linear_model();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(12);
    const at::Tensor x = torch::randn({2, 3, 32, 32}, gen, torch::kFloat);
    const auto exact = occlusion(m, x, opts(6, 6, 2, 2, OcclusionMode::Full));
    auto o = opts(6, 6, 2, 2, OcclusionMode::Approximate);
    o.tau = 0.2;  // a quarter of each map at most: the changes are cut at every convolution
    o.coarse_step = 1;
    const auto r = occlusion(m, x, o);
    EXPECT_TRUE(r.evaluated.all().item<bool>());
    EXPECT_EQ(r.tau, 0.2);
    expect_close(r.coarse, exact.coarse, 5e-3, "corrected thresholded drops");
    EXPECT_TRUE(torch::equal(r.top_class, exact.top_class));
    expect_close(r.top_prob, exact.top_prob, 5e-3, "top probability");
    // The other class (the runner-up) is corrected too: its drops with target = that class.
    o.target.kind = Target::Kind::Class;
    for (int64_t k = 0; k < 2; ++k) {
        o.target.class_index = k;
        auto f = opts(6, 6, 2, 2, OcclusionMode::Full);
        f.target.kind = Target::Kind::Class;
        f.target.class_index = k;
        expect_close(occlusion(m, x, o).coarse, occlusion(m, x, f).coarse, 5e-3, "class " + std::to_string(k));
    }
}

TEST(Occlusion, ApproximateAutomaticSettings) {
    // LeNet at 28x28 with a 4x4 window: the projective field stays local (no thresholding);
    // windows 4 strides wide: drill-down from the diagonal lattice; 1 stride wide: every position.
    // Batches: 512 copies in the engine's modes, 128 in full recomputation.
    Model lenet = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor xl = fixture_input("lenet_scripted");
    auto o = opts(4, 4, 1, 1, OcclusionMode::Approximate);
    auto r = occlusion(lenet, xl, o);
    EXPECT_EQ(r.tau, 1.0);
    EXPECT_FALSE(r.corrected);
    EXPECT_EQ(r.coarse_step, 3);
    EXPECT_EQ(r.batch_size, 512);
    EXPECT_EQ(occlusion(lenet, xl, opts(4, 4, 2, 2, OcclusionMode::Incremental)).batch_size, 512);
    EXPECT_EQ(occlusion(lenet, xl, opts(4, 4, 2, 2, OcclusionMode::Full)).batch_size, 128);
    o = opts(4, 4, 2, 2, OcclusionMode::Approximate);
    o.bf16 = false;  // float32 changes: exact drops
    r = occlusion(lenet, xl, o);
    EXPECT_EQ(r.coarse_step, 1);
    EXPECT_TRUE(r.evaluated.all().item<bool>());
    expect_close(r.coarse, occlusion(lenet, xl, opts(4, 4, 2, 2, OcclusionMode::Full)).coarse, 1e-4,
                 "no thresholding, every position");
    // The small ResNet at 32x32 with a 16x16 window: by its last stage the field covers the whole
    // map: tau 0.25, with the correction keeping the map close to the exact one.
    Model res = load_fixture("resnet_small_scripted", {3, 32, 32});
    const at::Tensor xr = fixture_input("resnet_small_scripted");
    o = opts(16, 16, 4, 4, OcclusionMode::Approximate);
    r = occlusion(res, xr, o);
    EXPECT_EQ(r.tau, 0.25);
    EXPECT_TRUE(r.corrected);
    EXPECT_EQ(r.coarse_step, 3);
    o.coarse_step = 1;
    o.compare_exact = true;
    r = occlusion(res, xr, o);
    EXPECT_EQ(r.tau, 0.25);
    const auto ex = occlusion(res, xr, opts(16, 16, 4, 4, OcclusionMode::Incremental));
    expect_close(r.coarse, ex.coarse, 0.15, "thresholded with the correction");
    for (double s : r.ssim) EXPECT_GT(s, 0.9);
    // Without the correction the same cut is further from the exact drops.
    o.correct = false;
    o.compare_exact = false;
    const auto off = occlusion(res, xr, o);
    EXPECT_FALSE(off.corrected);
    EXPECT_GT((off.coarse - ex.coarse).abs().max().item<double>(),
              (r.coarse - ex.coarse).abs().max().item<double>());
}

// --- SSIM ----------------------------------------------------------------------------------------

TEST(Occlusion, SsimMatchesNumpyReference) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    const at::Tensor ref = torch::rand({13, 16}, gen, torch::kDouble);
    const at::Tensor a = ref + 0.2 * torch::randn({13, 16}, gen, torch::kDouble);
    EXPECT_NEAR(map_ssim(ref, ref), 1.0, 1e-12);
    TempDir tmp;
    write_npy(tmp / "a.npy", a);
    write_npy(tmp / "ref.npy", ref);
    const std::string cmd = "/usr/bin/python3 " + std::string(CONVSCOPE_SOURCE_DIR) + "/tests/ref/ssim_ref.py " +
                            (tmp / "a.npy") + " " + (tmp / "ref.npy") + " > " + (tmp / "out.txt");
    ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::ifstream in(tmp / "out.txt");
    double want = 0;
    in >> want;
    EXPECT_NEAR(map_ssim(a, ref), want, 1e-9);
    EXPECT_LT(want, 0.95);  // the noise is visible
    // Small maps use a smaller odd window.
    const at::Tensor small = torch::rand({4, 9}, gen, torch::kDouble);
    EXPECT_NEAR(map_ssim(small, small), 1.0, 1e-12);
    expect_error([&] { map_ssim(small, ref); }, "same size");
}

// --- summary -------------------------------------------------------------------------------------

TEST(Occlusion, SummaryRegionAndConfounders) {
    // A 4x5 grid of positions, patch 4, stride 2 on a 10x12 image. The drop peaks at (1,1) and
    // stays high at (1,2) and (2,1); (3,4) is far away and flips the prediction: a confounder.
    // (0,0) flips it too but its window overlaps the important region.
    OcclusionResult r;
    r.positions_y = 4;
    r.positions_x = 5;
    r.occlusion = torch::zeros({1, 1, 10, 12});
    r.coarse = torch::zeros({1, 4, 5});
    r.coarse[0][1][1] = 2.0;
    r.coarse[0][1][2] = 1.5;
    r.coarse[0][2][1] = 1.2;
    r.coarse[0][2][2] = 0.5;  // below half of the maximum: not in the region
    r.coarse[0][3][4] = 0.1;
    r.top_class = torch::full({1, 4, 5}, 3, torch::kLong);
    r.top_class[0][3][4] = 7;
    r.top_class[0][0][0] = 5;
    r.top_prob = torch::full({1, 4, 5}, 0.9f);
    r.top_prob[0][3][4] = 0.6f;
    r.target_prob = torch::zeros({1, 4, 5});
    r.evaluated = torch::ones({1, 4, 5}, torch::kBool);
    r.clean_score = torch::tensor({4.f});
    r.clean_prob = torch::tensor({0.95f});
    r.targets = {3};
    r.predicted = {3};
    OcclusionOptions o = opts(4, 4, 2, 2, OcclusionMode::Full);
    const auto s = summarize_occlusion(r, 0, o);
    EXPECT_FLOAT_EQ(s.max_drop, 2.0f);
    EXPECT_EQ(s.max_py, 1);
    EXPECT_EQ(s.max_px, 1);
    EXPECT_EQ(s.max_window.y0, 2);
    EXPECT_EQ(s.max_window.x1, 6);
    // Union of windows (1,1), (1,2), (2,1): rows 2..8, columns 2..8.
    EXPECT_EQ(s.important.y0, 2);
    EXPECT_EQ(s.important.x0, 2);
    EXPECT_EQ(s.important.y1, 8);
    EXPECT_EQ(s.important.x1, 8);
    ASSERT_EQ(s.confounders.size(), 1u);
    EXPECT_EQ(s.confounders[0].py, 3);
    EXPECT_EQ(s.confounders[0].px, 4);
    EXPECT_EQ(s.confounders[0].new_class, 7);
    EXPECT_FLOAT_EQ(s.confounders[0].new_prob, 0.6f);
    EXPECT_EQ(s.confounders[0].window.y0, 6);
    EXPECT_EQ(s.confounders[0].window.x0, 8);
    expect_error([&] { summarize_occlusion(r, 1, o); }, "not in the occlusion result");
}

// --- progress and bad input ------------------------------------------------------------------------

TEST(Occlusion, ProgressCanCancel) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    double last = -1;
    bool monotone = true;
    occlusion(m, x, opts(4, 4, 4, 4, OcclusionMode::Incremental), RunContext{[&](double f) {
                  monotone = monotone && f >= last;
                  last = f;
                  return true;
              }});
    EXPECT_TRUE(monotone);
    EXPECT_DOUBLE_EQ(last, 1.0);
    EXPECT_THROW(occlusion(m, x, opts(4, 4, 4, 4, OcclusionMode::Full), RunContext{[](double f) { return f < 0.3; }}),
                 Cancelled);
}

TEST(Occlusion, BadInputGivesClearErrors) {
    Model m = load_fixture("lenet_scripted", {1, 28, 28});
    const at::Tensor x = fixture_input("lenet_scripted");
    expect_error([&] { occlusion(m, x, opts(29, 4, 1, 1, OcclusionMode::Full)); },
                 "patch 29x4 is larger than the input 28x28");
    expect_error([&] { occlusion(m, x, opts(4, 4, 0, 1, OcclusionMode::Full)); }, "stride must be at least 1");
    expect_error([&] { occlusion(m, x, opts(4, 4, 2, -3, OcclusionMode::Full)); }, "stride must be at least 1");
    expect_error([&] { occlusion(m, x, opts(0, 4, 2, 2, OcclusionMode::Full)); }, "at least 1x1");
    auto o = opts(4, 4, 2, 2, OcclusionMode::Incremental);
    o.target.kind = Target::Kind::Class;
    o.target.class_index = 10;
    expect_error([&] { occlusion(m, x, o); }, "target class 10 is out of range: the model has 10 classes");
    o.target.class_index = -1;
    expect_error([&] { occlusion(m, x, o); }, "out of range");
    o.target.kind = Target::Kind::Label;
    expect_error([&] { occlusion(m, x, o); }, "needs one label per image, but the data has no labels");
    o.target.labels = {1, -1};
    expect_error([&] { occlusion(m, x, o); }, "image 1 has none");
    o.target.labels = {1, 12};
    expect_error([&] { occlusion(m, x, o); }, "label 12 of image 1 is out of range");
    o = opts(4, 4, 2, 2, OcclusionMode::Full);
    o.batch_size = -1;
    expect_error([&] { occlusion(m, x, o); }, "batch size");
    o = opts(4, 4, 2, 2, OcclusionMode::Approximate);
    o.tau = -0.5;
    expect_error([&] { occlusion(m, x, o); }, "tau");
    o.tau = 1.5;
    expect_error([&] { occlusion(m, x, o); }, "tau");
    o.tau = 0.5;
    o.coarse_step = 6;
    expect_error([&] { occlusion(m, x, o); }, "power of 2");
    o.coarse_step = -2;
    expect_error([&] { occlusion(m, x, o); }, "power of 2");
    expect_error([&] { occlusion(m, torch::zeros({1, 1, 20, 20}), opts(4, 4, 2, 2, OcclusionMode::Full)); },
                 "the data is 20x20 but the model expects 28x28");
}
