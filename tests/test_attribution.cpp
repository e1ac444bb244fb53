// Gradient attributions against references: central finite differences in double precision,
// the completeness axiom of integrated gradients, hand-written guided backprop / deconvnet on
// small nets defined here, and Grad-CAM on a model whose answer is known by construction.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

at::Tensor lenet_input() { return read_npy(fixture("lenet_scripted/input.npy")); }

AttributionOptions opts(AttributionMethod method, int64_t target_class = -1) {
    AttributionOptions o;
    o.method = method;
    if (target_class >= 0) {
        o.target.kind = Target::Kind::Class;
        o.target.class_index = target_class;
    }
    return o;
}

// A small net with explicit weights: x -> conv(w1) -> relu -> conv(w2) -> relu_ (in place) ->
// spatial sum, two outputs. Small enough to write every backward rule by hand.
struct TinyNet {
    at::Tensor w1, w2;
    torch::jit::Module module{"TinyNet"};
    TinyNet() {
        auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
        w1 = torch::randn({3, 1, 3, 3}, gen, torch::kFloat);
        w2 = torch::randn({2, 3, 3, 3}, gen, torch::kFloat);
        module.register_parameter("w1", w1, false);
        module.register_parameter("w2", w2, false);
        module.define(R"(
def forward(self, x):
    y1 = torch.conv2d(x, self.w1)
    r1 = torch.relu(y1)
    y2 = torch.conv2d(r1, self.w2)
    y2.relu_()
    return y2.sum([2, 3])
)");
    }
    enum class Rule { Plain, Guided, Deconv };
    // d output[:, cls] / d x with the given ReLU backward rule, by hand.
    at::Tensor gradient(const at::Tensor& x, int64_t cls, Rule rule) const {
        namespace F = torch::nn::functional;
        const at::Tensor y1 = F::conv2d(x, w1);
        const at::Tensor y2 = F::conv2d(torch::relu(y1), w2);
        auto relu_back = [&](const at::Tensor& g, const at::Tensor& y) {
            switch (rule) {
                case Rule::Plain:
                    return g * (y > 0).to(g.scalar_type());
                case Rule::Guided:
                    return g.clamp_min(0) * (y > 0).to(g.scalar_type());
                case Rule::Deconv:
                    return g.clamp_min(0);
            }
            return g;
        };
        at::Tensor g_r2 = torch::zeros_like(y2);
        g_r2.select(1, cls).fill_(1.0);
        const at::Tensor g_r1 = F::conv_transpose2d(relu_back(g_r2, y2), w2);
        return F::conv_transpose2d(relu_back(g_r1, y1), w1);
    }
};

// Input -> avg_pool 2x2 -> a conv-like layer "features" whose channel 0 copies the top-left
// quadrant of the pooled input and channel 1 the bottom-right one (zeros elsewhere); the
// logits are the channels' spatial means. Grad-CAM of class 0 must be the top-left quadrant.
Model quadrant_model() {
    torch::jit::Module features("QuadConv");
    at::Tensor masks = torch::zeros({1, 2, 8, 8});
    masks.index_put_({0, 0, torch::indexing::Slice(0, 4), torch::indexing::Slice(0, 4)}, 1.0);
    masks.index_put_({0, 1, torch::indexing::Slice(4, 8), torch::indexing::Slice(4, 8)}, 1.0);
    features.register_buffer("masks", masks);
    features.define(R"(
def forward(self, x):
    p = torch.avg_pool2d(x, 2)
    return torch.cat([p, p], 1) * self.masks
)");
    torch::jit::Module net("QuadNet");
    net.register_module("features", features);
    net.define(R"(
def forward(self, x):
    a = self.features.forward(x)
    return a.mean([2, 3])
)");
    Model m = Model::from_module(net, ModelMeta{});
    m.set_input_shape({1, 16, 16});
    return m;
}

}  // namespace

TEST(Attribution, SaliencyMatchesFiniteDifferences) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();  // [2,1,28,28]
    auto r = attribute(model, x, opts(AttributionMethod::Saliency, 3));
    ASSERT_EQ(r.attributions.sizes(), x.sizes());
    EXPECT_EQ(r.targets, (std::vector<int64_t>{3, 3}));
    // Central differences of a double-precision copy of the model, for every pixel.
    torch::jit::Module dbl = model.module().clone();
    dbl.to(torch::kDouble);
    const double eps = 1e-6;
    for (int64_t n = 0; n < x.size(0); ++n) {
        const at::Tensor base = x[n].to(torch::kDouble).reshape({1, 784});
        const at::Tensor bump = torch::eye(784, torch::kDouble) * eps;
        const at::Tensor plus = (base + bump).view({784, 1, 28, 28});
        const at::Tensor minus = (base - bump).view({784, 1, 28, 28});
        torch::NoGradGuard no_grad;
        const at::Tensor fp = dbl.forward({plus}).toTensor().select(1, 3);
        const at::Tensor fm = dbl.forward({minus}).toTensor().select(1, 3);
        const at::Tensor fd = ((fp - fm) / (2 * eps)).view({1, 28, 28});
        ASSERT_GT(fd.abs().max().item<double>(), 1e-6) << "the reference is not trivially zero";
        expect_close(r.attributions[n], fd, 1e-3, "saliency of image " + std::to_string(n));
    }
    // The heat map is the largest absolute value over channels (one channel here).
    expect_close(r.heat, r.attributions.abs().squeeze(1), 0, "heat");
    // Scores are the target logits.
    const at::Tensor out = model.forward(x);
    expect_close(r.scores, out.select(1, 3), 1e-6, "scores");
}

TEST(Attribution, TargetsPredictedAndLabels) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    const at::Tensor pred = model.forward(x).argmax(1);
    auto r = attribute(model, x, opts(AttributionMethod::Saliency));
    EXPECT_EQ(r.targets, (std::vector<int64_t>{pred[0].item<int64_t>(), pred[1].item<int64_t>()}));
    auto o = opts(AttributionMethod::Saliency);
    o.target.kind = Target::Kind::Label;
    o.target.labels = {7, 2};
    auto l = attribute(model, x, o);
    EXPECT_EQ(l.targets, (std::vector<int64_t>{7, 2}));
    // Each image's gradient is its own: image 1 explained alone gives the same values.
    auto single = attribute(model, x.slice(0, 1, 2), opts(AttributionMethod::Saliency, 2));
    auto both = attribute(model, x, opts(AttributionMethod::Saliency, 2));
    expect_close(single.attributions[0], both.attributions[1], 1e-6, "per-image gradients");
}

TEST(Attribution, IntegratedGradientsCompleteness) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    // The fixture LeNet has random weights: its logits change little and its ReLU and max-pool
    // kinks make the path integrand jump, so the quadrature needs many steps. Class 8 moves the
    // most; with 256 steps the gap is a few tenths of a percent.
    for (const std::string baseline : {"zero", "blur", "mean"}) {
        auto o = opts(AttributionMethod::IntegratedGradients, 8);
        o.steps = 256;
        o.batch_size = 128;
        o.baseline = parse_baseline(baseline);
        auto r = attribute(model, x, o);
        ASSERT_EQ(r.attributions.sizes(), x.sizes());
        // The reported scores are the model's outputs at x and at the baseline.
        const at::Tensor fx = model.forward(x).select(1, 8);
        const at::Tensor fb = model.forward(r.baselines).select(1, 8);
        expect_close(r.scores, fx, 1e-5, baseline + " score(x)");
        expect_close(r.baseline_scores, fb, 1e-5, baseline + " score(baseline)");
        expect_close(r.attribution_sums, r.attributions.sum({1, 2, 3}), 1e-5, baseline + " sums");
        for (int64_t n = 0; n < x.size(0); ++n) {
            const double delta = (fx[n] - fb[n]).item<double>();
            const double sum = r.attribution_sums[n].item<double>();
            ASSERT_GT(std::abs(delta), 1e-2) << baseline << ": the test needs a score change";
            EXPECT_LE(std::abs(sum - delta), 0.01 * std::abs(delta))
                << baseline << " image " << n << ": sum " << sum << " vs " << delta;
            EXPECT_NEAR(r.completeness_gap[n].item<double>(), sum - delta, 1e-4 * std::abs(delta));
        }
    }
    // The zero baseline is zero; the blurred one is smoother than the image.
    auto o = opts(AttributionMethod::IntegratedGradients, 1);
    o.steps = 4;
    o.baseline = parse_baseline("blur:2");
    auto blurred = attribute(model, x, o);
    EXPECT_LT(blurred.baselines.diff(1, 3).abs().mean().item<double>(),
              x.diff(1, 3).abs().mean().item<double>());
    // Batching the path does not change the result.
    o.batch_size = 2;
    auto small_batches = attribute(model, x, o);
    expect_close(small_batches.attributions, blurred.attributions, 1e-5, "batch size");
}

TEST(Attribution, SmoothGradIsSeededAndReducesToSaliency) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    auto o = opts(AttributionMethod::SmoothGrad, 4);
    o.samples = 6;
    o.noise = 0.2;
    RunContext ctx;
    ctx.seed = 3;
    auto a = attribute(model, x, o, ctx);
    auto b = attribute(model, x, o, ctx);
    EXPECT_TRUE(torch::equal(a.attributions, b.attributions)) << "same seed, same bytes";
    o.batch_size = 4;
    auto c = attribute(model, x, o, ctx);
    expect_close(c.attributions, a.attributions, 1e-6, "noise independent of the batch size");
    ctx.seed = 4;
    auto d = attribute(model, x, o, ctx);
    EXPECT_GT((d.attributions - a.attributions).abs().max().item<double>(), 1e-6) << "seed matters";
    // Reference: the mean of the gradients at x + noise for the same noise, drawn by hand.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    at::Tensor expect = torch::zeros_like(x);
    for (int64_t n = 0; n < 2; ++n) {
        const double range = (x[n].max() - x[n].min()).item<double>();
        const at::Tensor noisy =
            x[n].unsqueeze(0) + torch::randn({6, 1, 28, 28}, gen) * (0.2 * range);
        auto g =
            model.gradients(noisy, [](const TapResult& r) { return r.output.select(1, 4).sum(); });
        expect[n] = g.input_grad.mean(0);
    }
    expect_close(a.attributions, expect, 1e-5, "smoothgrad reference");
    // No noise: every sample is x itself.
    o.noise = 0;
    auto plain = attribute(model, x, o);
    auto sal = attribute(model, x, opts(AttributionMethod::Saliency, 4));
    expect_close(plain.attributions, sal.attributions, 1e-5, "noise 0 is the saliency");
}

TEST(Attribution, GuidedBackpropAndDeconvnetMatchHandReference) {
    TinyNet net;
    Model model = Model::from_module(net.module, ModelMeta{});
    model.set_input_shape({1, 8, 8});
    auto gen = at::make_generator<at::CPUGeneratorImpl>(5);
    const at::Tensor x = torch::randn({2, 1, 8, 8}, gen, torch::kFloat);
    for (int64_t cls : {0, 1}) {
        auto guided = attribute(model, x, opts(AttributionMethod::GuidedBackprop, cls));
        auto deconv = attribute(model, x, opts(AttributionMethod::Deconvnet, cls));
        auto plain = attribute(model, x, opts(AttributionMethod::Saliency, cls));
        const at::Tensor g_ref = net.gradient(x, cls, TinyNet::Rule::Guided);
        const at::Tensor d_ref = net.gradient(x, cls, TinyNet::Rule::Deconv);
        const at::Tensor p_ref = net.gradient(x, cls, TinyNet::Rule::Plain);
        ASSERT_GT(g_ref.abs().max().item<double>(), 0.1);
        expect_close(guided.attributions, g_ref, 1e-5, "guided backprop");
        expect_close(deconv.attributions, d_ref, 1e-5, "deconvnet");
        expect_close(plain.attributions, p_ref, 1e-5, "saliency");
        // The three rules really are different here.
        EXPECT_GT((g_ref - d_ref).abs().max().item<double>(), 1e-3);
        EXPECT_GT((g_ref - p_ref).abs().max().item<double>(), 1e-3);
    }
}

TEST(Attribution, DeconvnetAndGuidedDifferExactlyWhereReluInputIsNegative) {
    // score = sum(v * relu(x)): d/dx is v where x > 0. Guided: relu(v) where x > 0. Deconvnet
    // ignores the sign of x: relu(v) everywhere. They differ exactly where x < 0 and v > 0.
    auto gen = at::make_generator<at::CPUGeneratorImpl>(9);
    const at::Tensor v = torch::randn({1, 1, 6, 6}, gen, torch::kFloat);
    const at::Tensor x = torch::randn({1, 1, 6, 6}, gen, torch::kFloat);
    torch::jit::Module m("OneRelu");
    m.register_buffer("v", v);
    m.define(R"(
def forward(self, x):
    r = torch.relu(x)
    return (r * self.v).sum([1, 2, 3]).unsqueeze(1)
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({1, 6, 6});
    auto guided = attribute(model, x, opts(AttributionMethod::GuidedBackprop, 0)).attributions;
    auto deconv = attribute(model, x, opts(AttributionMethod::Deconvnet, 0)).attributions;
    const at::Tensor where = (x < 0).logical_and(v > 0);
    ASSERT_GT(where.sum().item<int64_t>(), 0) << "the test needs such positions";
    const at::Tensor differ = (guided - deconv).abs() > 1e-7;
    EXPECT_TRUE(torch::equal(differ, where));
    expect_close(deconv, v.clamp_min(0), 1e-6, "deconvnet");
    expect_close(guided, v.clamp_min(0) * (x > 0), 1e-6, "guided");
}

TEST(Attribution, GradCamPeaksWhereTheClassLooks) {
    Model model = quadrant_model();
    EXPECT_EQ(model.conv_layer_names(), (std::vector<std::string>{"features"}));
    auto gen = at::make_generator<at::CPUGeneratorImpl>(2);
    const at::Tensor x = torch::rand({2, 1, 16, 16}, gen, torch::kFloat) + 0.1;
    const at::Tensor pooled = torch::avg_pool2d(x, 2).squeeze(1);  // [2,8,8]
    for (auto method : {AttributionMethod::GradCam, AttributionMethod::GradCamPlusPlus}) {
        for (int64_t cls : {0, 1}) {
            auto r = attribute(model, x, opts(method, cls));
            EXPECT_EQ(r.layer, "features");
            ASSERT_EQ(r.attributions.sizes(), (std::vector<int64_t>{2, 8, 8}));
            ASSERT_EQ(r.heat.sizes(), (std::vector<int64_t>{2, 16, 16}));
            const auto q = torch::indexing::Slice(cls == 0 ? 0 : 4, cls == 0 ? 4 : 8);
            at::Tensor expect = torch::zeros({2, 8, 8});
            expect.index_put_({torch::indexing::Slice(), q, q},
                              pooled.index({torch::indexing::Slice(), q, q}));
            // Grad-CAM: the weight of channel cls is 1/64, the other's 0, so the map is the copy
            // / 64.
            if (method == AttributionMethod::GradCam)
                expect_close(r.attributions, expect / 64.0, 1e-5, "grad-cam map");
            // Both: zero outside the quadrant, proportional to the input inside it (Grad-CAM++'s
            // factor depends on the image through sum(A)).
            for (int64_t n = 0; n < 2; ++n) {
                const at::Tensor ratio = r.attributions[n].index({q, q}) / pooled[n].index({q, q});
                EXPECT_GT(ratio.mean().item<double>(), 0);
                EXPECT_LT((ratio - ratio.mean()).abs().max().item<double>(),
                          1e-4 * ratio.mean().item<double>());
            }
            EXPECT_EQ((r.attributions - r.attributions * (expect > 0)).abs().max().item<double>(),
                      0.0);
            for (int64_t n = 0; n < 2; ++n) {
                const int64_t at = r.heat[n].argmax().item<int64_t>();
                const int64_t row = at / 16, col = at % 16;
                if (cls == 0) {
                    EXPECT_TRUE(row < 8 && col < 8) << row << "," << col;
                } else {
                    EXPECT_TRUE(row >= 8 && col >= 8) << row << "," << col;
                }
            }
        }
    }
}

TEST(Attribution, GradCamOnLeNetUsesTheLastConvLayer) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    auto r = attribute(model, x, opts(AttributionMethod::GradCam, 5));
    EXPECT_EQ(r.layer, "conv2");
    ASSERT_EQ(r.attributions.sizes(), (std::vector<int64_t>{2, 10, 10}));
    ASSERT_EQ(r.heat.sizes(), (std::vector<int64_t>{2, 28, 28}));
    // The published formula from the runtime's tap gradients.
    auto g = model.gradients(x, [](const TapResult& t) { return t.output.select(1, 5).sum(); },
                             {"conv2"});
    const at::Tensor w = g.tap_grads.at("conv2").mean({2, 3}, true);
    const at::Tensor expect = torch::relu((w * g.forward.taps.at("conv2")).sum(1));
    ASSERT_GT(expect.max().item<double>(), 0);
    expect_close(r.attributions, expect, 1e-5, "grad-cam");
    // Upsampled bilinearly with pixel centres aligned (align_corners = false).
    namespace F = torch::nn::functional;
    const at::Tensor up =
        F::interpolate(expect.unsqueeze(1), F::InterpolateFuncOptions()
                                                .size(std::vector<int64_t>{28, 28})
                                                .mode(torch::kBilinear)
                                                .align_corners(false));
    expect_close(r.heat, up.squeeze(1), 1e-5, "upsampled");
    auto other = opts(AttributionMethod::GradCam, 5);
    other.layer = "conv1";
    EXPECT_EQ(attribute(model, x, other).attributions.sizes(), (std::vector<int64_t>{2, 28, 28}));
}

TEST(Attribution, BadInputGivesClearErrors) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    auto cam = opts(AttributionMethod::GradCam, 1);
    cam.layer = "fc1";
    expect_error([&] { attribute(model, x, cam); }, "layer 'fc1' is not spatial");
    cam.layer = "conv9";
    expect_error([&] { attribute(model, x, cam); }, "unknown layer 'conv9'");
    auto ig = opts(AttributionMethod::IntegratedGradients, 1);
    ig.steps = 0;
    expect_error([&] { attribute(model, x, ig); }, "at least 1 step");
    auto sg = opts(AttributionMethod::SmoothGrad, 1);
    sg.samples = 0;
    expect_error([&] { attribute(model, x, sg); }, "at least 1 sample");
    sg.samples = 2;
    sg.noise = -0.1;
    expect_error([&] { attribute(model, x, sg); }, "noise");
    for (auto method : {AttributionMethod::Saliency, AttributionMethod::GradCam,
                        AttributionMethod::IntegratedGradients, AttributionMethod::SmoothGrad})
        expect_error([&] { attribute(model, x, opts(method, 10)); },
                     "target class 10 is out of range: the model has 10 classes (0..9)");
    auto label = opts(AttributionMethod::Saliency);
    label.target.kind = Target::Kind::Label;
    expect_error([&] { attribute(model, x, label); }, "needs labelled data");
    label.target.labels = {1, -1};
    expect_error([&] { attribute(model, x, label); }, "has no label");
    label.target.labels = {1, 12};
    expect_error([&] { attribute(model, x, label); }, "label 12 of image 1 is out of range");
    expect_error(
        [&] {
            attribute(model, torch::zeros({1, 3, 28, 28}), opts(AttributionMethod::Saliency));
        },
        "3 channels");
    // A model without conv layers has no default CAM layer.
    TinyNet tiny;
    Model no_conv = Model::from_module(tiny.module, ModelMeta{});
    no_conv.set_input_shape({1, 8, 8});
    expect_error(
        [&] {
            attribute(no_conv, torch::zeros({1, 1, 8, 8}), opts(AttributionMethod::GradCam, 0));
        },
        "no conv layer");
    // Option parsing.
    EXPECT_THROW(parse_attribution_method("gradient"), UsageError);
    EXPECT_EQ(parse_attribution_method("grad-cam++"), AttributionMethod::GradCamPlusPlus);
    EXPECT_THROW(parse_target("best"), UsageError);
    EXPECT_THROW(parse_target("-1"), UsageError);
    EXPECT_EQ(parse_target("7").class_index, 7);
    EXPECT_THROW(parse_baseline("black"), UsageError);
    EXPECT_THROW(parse_baseline("blur:0"), UsageError);
    EXPECT_EQ(parse_baseline("0.5").kind, Baseline::Kind::Constant);
}

namespace {

// A RISE mask as rise.hpp defines it, from its grid [cells,cells] of kept cells and its shift:
// the grid upsampled bilinearly (align_corners = false) to (cells + 1) cell sizes, cropped.
at::Tensor rise_mask_by_definition(const at::Tensor& grid, int64_t dy, int64_t dx, int64_t h, int64_t w) {
    namespace F = torch::nn::functional;
    const int64_t cells = grid.size(0), ch = (h + cells - 1) / cells, cw = (w + cells - 1) / cells;
    const at::Tensor up = F::interpolate(grid.view({1, 1, cells, cells}),
                                         F::InterpolateFuncOptions()
                                             .size(std::vector<int64_t>{(cells + 1) * ch, (cells + 1) * cw})
                                             .mode(torch::kBilinear)
                                             .align_corners(false));
    return up[0][0].slice(0, dy, dy + h).slice(1, dx, dx + w);
}

// out = [tanh(<v0, x>), sigmoid(<v1, x>)] on 1x6x6 inputs: nonlinear, so that RISE's map is not
// the weights times a constant.
Model tiny_dense_model() {
    torch::jit::Module m("RiseNet");
    m.register_parameter("v", randn({2, 36}, 5) * 0.4, false);
    m.define(R"(
def forward(self, x):
    f = torch.flatten(x, 1)
    z = torch.matmul(f, self.v.t())
    return torch.stack([torch.tanh(z[:, 0]), torch.sigmoid(z[:, 1])], 1)
)");
    Model model = Model::from_module(m, ModelMeta{});
    model.set_input_shape({1, 6, 6});
    return model;
}

}  // namespace

// RISE's map is a Monte-Carlo estimate of E[score(baseline + M (x - baseline)) M(p)] / keep.
// With 2x2 cells the expectation is a finite sum: 16 grids x 9 shifts, each with its
// probability. 20,000 masks estimate it to about 0.01 (scores lie in [-1, 1]).
TEST(Attribution, RiseEstimatesItsExpectationOverMasks) {
    Model model = tiny_dense_model();
    const at::Tensor x = randn({1, 1, 6, 6}, 9);
    const double keep = 0.4;
    auto o = opts(AttributionMethod::Rise, 0);
    o.masks = 20000;
    o.cells = 2;
    o.keep = keep;
    o.batch_size = 512;
    o.baseline = parse_baseline("0.25");
    RunContext ctx;
    ctx.seed = 3;
    const AttributionResult r = attribute(model, x, o, ctx);
    ASSERT_EQ(r.attributions.sizes(), (std::vector<int64_t>{1, 6, 6}));
    expect_close(r.heat, r.attributions, 0, "RISE's heat is its map");

    at::Tensor expected = torch::zeros({6, 6}, torch::kDouble);
    for (int bits = 0; bits < 16; ++bits) {
        at::Tensor grid = torch::zeros({2, 2});
        int kept = 0;
        for (int b = 0; b < 4; ++b)
            if (bits & (1 << b)) {
                grid[b / 2][b % 2] = 1.0;
                ++kept;
            }
        const double p_grid = std::pow(keep, kept) * std::pow(1 - keep, 4 - kept);
        for (int dy = 0; dy < 3; ++dy)
            for (int dx = 0; dx < 3; ++dx) {
                const at::Tensor mask = rise_mask_by_definition(grid, dy, dx, 6, 6);
                const at::Tensor input = 0.25 + mask * (x[0][0] - 0.25);
                const double s = model.forward(input.view({1, 1, 6, 6}))[0][0].item<double>();
                expected += (p_grid / 9.0) * s * mask.to(torch::kDouble);
            }
    }
    expected /= keep;
    const double err = (r.attributions[0].to(torch::kDouble) - expected).abs().max().item<double>();
    EXPECT_LT(err, 0.03) << "RISE against the exact expectation";
    // The estimate is not trivially close: the map varies by more than the tolerance.
    EXPECT_GT((expected.max() - expected.min()).item<double>(), 0.1);
}

TEST(Attribution, RiseIsSeededAndIndependentOfTheBatchSize) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    auto o = opts(AttributionMethod::Rise, 2);
    o.masks = 300;  // more than one chunk of drawn masks
    RunContext ctx;
    ctx.seed = 17;
    const AttributionResult a = attribute(model, x, o, ctx);
    o.batch_size = 7;
    const AttributionResult b = attribute(model, x, o, ctx);
    ASSERT_EQ(a.attributions.sizes(), (std::vector<int64_t>{2, 28, 28}));
    EXPECT_TRUE(torch::allclose(a.attributions, b.attributions, 1e-5, 1e-6)) << "batch size changed the map";
    ctx.seed = 18;
    const AttributionResult c = attribute(model, x, o, ctx);
    EXPECT_FALSE(torch::allclose(a.attributions, c.attributions, 1e-3, 1e-4)) << "the seed did not change the masks";
    // Errors for options that cannot work.
    o.masks = 0;
    expect_error([&] { attribute(model, x, o); }, "at least 1 mask");
    o.masks = 10;
    o.cells = 29;
    expect_error([&] { attribute(model, x, o); }, "1 to 28 cells");
    o.cells = 7;
    o.keep = 1.0;
    expect_error([&] { attribute(model, x, o); }, "keep probability");
    EXPECT_EQ(parse_attribution_method("rise"), AttributionMethod::Rise);
}
