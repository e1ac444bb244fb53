// Tests for activations(): a small TorchScript module with hand-set weights gives known values,
// statistics and tiles (exact pixels); ordering by mean activation; bar strips for 1-D layers;
// the values of every layer of fixture models equal PyTorch's (forward hooks, computed by
// make_fixtures.py); bad requests give their errors.
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>

#include "convscope/methods/activations.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "test_util.hpp"

namespace jit = torch::jit;
using namespace convscope;

namespace {

jit::Module make_module(const std::shared_ptr<jit::CompilationUnit>& cu, const std::string& cls,
                        const std::string& forward) {
    jit::Module m(c10::QualifiedName("__torch__.actstest." + cls), cu, /*shouldMangle=*/true);
    m.register_attribute("training", c10::BoolType::get(), false);
    if (!forward.empty()) m.define("def forward(self, x):\n    return " + forward + "\n");
    return m;
}

const float kConvW[3] = {1.f, 3.f, -2.f};

// x [N,1,4,4] -> conv (1x1: channel c = kConvW[c] * x) -> relu -> fc (48 -> 2), plus a global
// pool [N,3,1,1] and a 3-D "spread" [N,3,16] that feed the output.
Model tiny_model() {
    auto cu = std::make_shared<jit::CompilationUnit>();
    auto net = make_module(cu, "Net", "");
    auto conv = make_module(cu, "Conv2d", "");
    conv.register_parameter("weight", torch::tensor({kConvW[0], kConvW[1], kConvW[2]}).view({3, 1, 1, 1}), false);
    conv.register_parameter("bias", torch::zeros({3}), false);
    conv.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, [1, 1], [0, 0], [1, 1], 1)\n");
    net.register_module("conv", conv);
    net.register_module("relu", make_module(cu, "ReLU", "torch.relu(x)"));
    net.register_module("spread", make_module(cu, "Spread", "torch.flatten(x, 2)"));
    net.register_module("pool", make_module(cu, "Pool", "torch.adaptive_avg_pool2d(x, [1, 1])"));
    auto fc = make_module(cu, "Linear", "");
    fc.register_parameter("weight", torch::arange(96, torch::kFloat).view({2, 48}) / 100.f, false);
    fc.register_parameter("bias", torch::tensor({0.5f, -0.5f}), false);
    fc.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
    net.register_module("fc", fc);
    net.define(R"JIT(
def forward(self, x):
    h = self.relu.forward(self.conv.forward(x))
    s = self.spread.forward(h)
    p = self.pool.forward(h)
    out = self.fc.forward(torch.flatten(h, 1))
    return out + torch.flatten(p, 1)[:, 0:2] + s.sum(2)[:, 0:2]
)JIT");
    ModelMeta meta;
    meta.input_shape = {1, 4, 4};
    return Model::from_module(net, meta);
}

// Image 0 ramps 0..1, image 1 ramps 1..0.
at::Tensor tiny_inputs() {
    const at::Tensor ramp = torch::arange(16, torch::kFloat).view({1, 1, 4, 4}) / 15.f;
    return torch::cat({ramp, 1.f - ramp});
}

cv::Vec3b px(const cv::Mat& img, int x, int y) { return img.at<cv::Vec3b>(y, x); }

int gray_index(double v, double lo, double hi) { return static_cast<int>(std::lround((v - lo) / (hi - lo) * 255)); }

const LayerActivations& find(const ActivationsResult& r, const std::string& name) {
    for (const auto& l : r.layers)
        if (l.name == name) return l;
    throw std::runtime_error("no layer " + name);
}

bool same_pixels(const cv::Mat& a, const cv::Mat& b) {
    if (a.size() != b.size() || a.type() != b.type()) return false;
    return cv::countNonZero(a.reshape(1) != b.reshape(1)) == 0;
}

}  // namespace

TEST(Activations, ValuesAndStatisticsOfKnownLayers) {
    Model m = tiny_model();
    const at::Tensor x = tiny_inputs();
    ActivationsOptions o;
    o.pictures = false;
    const ActivationsResult r = activations(m, x, o);
    // All layers with C,H,W or F outputs, in model order; the 3-D one is skipped.
    std::vector<std::string> names;
    for (const auto& l : r.layers) names.push_back(l.name);
    EXPECT_EQ(names, std::vector<std::string>({"conv", "relu", "pool", "fc"}));
    ASSERT_EQ(r.skipped.size(), 1u);
    EXPECT_NE(r.skipped[0].find("spread"), std::string::npos);
    EXPECT_TRUE(r.inputs.empty());

    const auto& conv = find(r, "conv");
    ASSERT_EQ(conv.values.sizes(), (std::vector<int64_t>{2, 3, 4, 4}));
    EXPECT_TRUE(conv.spatial);
    for (int c = 0; c < 3; ++c) expect_close(conv.values.select(1, c), x.select(1, 0) * kConvW[c], 1e-6, "conv");
    expect_close(find(r, "relu").values, conv.values.clamp_min(0), 1e-6, "relu");
    expect_close(find(r, "fc").values, m.forward_taps(x, {"fc"}).taps.at("fc"), 1e-6, "fc");
    EXPECT_FALSE(find(r, "pool").spatial);
    EXPECT_FALSE(find(r, "fc").spatial);
    expect_close(r.output, m.forward(x), 1e-6, "output");

    // Statistics by brute force.
    for (const auto* name : {"conv", "relu"}) {
        const auto& la = find(r, name);
        for (int64_t n = 0; n < 2; ++n)
            for (int64_t c = 0; c < 3; ++c) {
                double sum = 0, mx = -1e30, pos = 0;
                for (int64_t y = 0; y < 4; ++y)
                    for (int64_t xx = 0; xx < 4; ++xx) {
                        const double v = la.values[n][c][y][xx].item<double>();
                        sum += v, mx = std::max(mx, v), pos += v > 0;
                    }
                EXPECT_NEAR(la.channel_mean[n][c].item<double>(), sum / 16, 1e-6);
                EXPECT_NEAR(la.channel_max[n][c].item<double>(), mx, 1e-6);
                EXPECT_NEAR(la.channel_active[n][c].item<double>(), pos / 16, 1e-6);
            }
        expect_close(la.mean, la.channel_mean.mean(0), 1e-6, "pooled mean");
        expect_close(la.max, std::get<0>(la.channel_max.max(0)), 0, "pooled max");
        expect_close(la.active, la.channel_active.mean(0), 1e-6, "pooled active");
    }
    // Image 0: channel 1 (3x) is strongest, then 0 (x), then 2 (-2x), which is never active.
    EXPECT_EQ(conv.strongest[0], std::vector<int64_t>({1, 0, 2}));
    EXPECT_NEAR(conv.channel_active[0][0].item<double>(), 15.0 / 16, 1e-7);  // x = 0 at (0, 0)
    EXPECT_EQ(conv.channel_active[0][2].item<double>(), 0.0);
    const auto& fc = find(r, "fc");
    expect_close(fc.channel_mean, fc.values, 0, "1-D mean");
    expect_close(fc.channel_active, (fc.values > 0).to(torch::kFloat), 0, "1-D active");
}

TEST(Activations, TilesHaveExactPixelsOnTheLayerScale) {
    Model m = tiny_model();
    const at::Tensor x = tiny_inputs();
    ActivationsOptions o;
    o.layers = {"conv"};
    o.colormap = Colormap::Gray;
    o.tile_px = 1;  // no upscaling
    const ActivationsResult r = activations(m, x, o);
    const auto& la = r.layers.at(0);
    // One range for the layer over both inputs: [-2, 3].
    EXPECT_FLOAT_EQ(la.range.lo, -2.f);
    EXPECT_FLOAT_EQ(la.range.hi, 3.f);
    for (int64_t n = 0; n < 2; ++n) {
        const cv::Mat& g = la.grids[n];
        ASSERT_EQ(g.cols, 9);  // 2 columns of 4 px + 1 separator
        ASSERT_EQ(g.rows, 9);
        for (int c = 0; c < 3; ++c)
            for (int y = 0; y < 4; ++y)
                for (int xx = 0; xx < 4; ++xx) {
                    const double v = kConvW[c] * x[n][0][y][xx].item<double>();
                    const int want = gray_index(v, -2, 3);
                    EXPECT_EQ(px(g, (c % 2) * 5 + xx, (c / 2) * 5 + y), cv::Vec3b(want, want, want))
                        << "input " << n << " channel " << c;
                }
        const cv::Scalar sep = separator_colour_for(Colormap::Gray);
        EXPECT_EQ(px(g, 4, 0), cv::Vec3b(sep[0], sep[1], sep[2]));
        EXPECT_EQ(px(g, 7, 7), cv::Vec3b(255, 255, 255));  // the empty fourth cell: margin colour
        EXPECT_EQ(px(g, 4, 7), cv::Vec3b(255, 255, 255));  // and the separator before it
        // The input beside the grid, scaled to its height, 4 px apart.
        const cv::Mat& p = la.pictures[n];
        ASSERT_EQ(p.rows, 9);
        ASSERT_EQ(p.cols, 9 + 4 + 9);
        EXPECT_TRUE(same_pixels(p(cv::Rect(13, 0, 9, 9)), g));
    }
    // The inputs as pictures: 0..1 -> 0..255.
    ASSERT_EQ(r.inputs.size(), 2u);
    EXPECT_EQ(px(r.inputs[0], 0, 0), cv::Vec3b(0, 0, 0));
    EXPECT_EQ(px(r.inputs[0], 3, 3), cv::Vec3b(255, 255, 255));
    EXPECT_EQ(px(r.inputs[1], 0, 0), cv::Vec3b(255, 255, 255));
}

TEST(Activations, TileScaleAndMeanOrder) {
    Model m = tiny_model();
    const at::Tensor x = tiny_inputs();
    ActivationsOptions o;
    o.layers = {"conv"};
    o.colormap = Colormap::Gray;
    o.tile_px = 1;
    o.scale = ActivationScale::Tile;
    o.order = ChannelOrder::Mean;
    const ActivationsResult r = activations(m, x, o);
    const auto& la = r.layers.at(0);
    for (int64_t n = 0; n < 2; ++n) {
        // Both images have positive means, so the order is 3x, x, -2x.
        EXPECT_EQ(la.order[n], std::vector<int64_t>({1, 0, 2}));
        for (int k = 0; k < 3; ++k) {
            const int c = static_cast<int>(la.order[n][k]);
            const at::Tensor map = x[n][0] * kConvW[c];
            const double lo = map.min().item<double>(), hi = map.max().item<double>();
            for (int y = 0; y < 4; ++y)
                for (int xx = 0; xx < 4; ++xx) {
                    const int want = gray_index(map[y][xx].item<double>(), lo, hi);
                    EXPECT_EQ(px(la.grids[n], (k % 2) * 5 + xx, (k / 2) * 5 + y), cv::Vec3b(want, want, want));
                }
        }
    }
}

TEST(Activations, BarStripsOverlaysAndUpscaling) {
    Model m = tiny_model();
    const at::Tensor x = tiny_inputs();
    ActivationsOptions o;
    o.layers = {"fc", "pool", "conv"};
    const ActivationsResult r = activations(m, x, o);
    ASSERT_EQ(r.layers.size(), 3u);
    EXPECT_EQ(r.layers[0].name, "fc");  // the order asked for
    const auto& fc = r.layers[0];
    EXPECT_EQ(fc.grids[0].size(), cv::Size(2 * 3 + 1, o.bar_height));
    EXPECT_TRUE(fc.overlays.empty());
    const auto& pool = r.layers[1];
    EXPECT_EQ(pool.grids[1].size(), cv::Size(3 * 3 + 2, o.bar_height));
    EXPECT_EQ(pool.pictures[1].size(), cv::Size(o.bar_height + 4 + 11, o.bar_height));
    const auto& conv = r.layers[2];
    // 4x4 maps become readable_factor(4, 4, 24) = 6 times larger.
    EXPECT_EQ(conv.grids[0].size(), cv::Size(2 * 24 + 1, 2 * 24 + 1));
    ASSERT_EQ(conv.overlays.size(), 2u);
    EXPECT_EQ(conv.overlays[0].size(), cv::Size(224, 224));
    // alpha 0 shows the input alone, upscaled (nearest).
    o.layers = {"conv"};
    o.overlay_alpha = 0.f;
    const ActivationsResult r0 = activations(m, x, o);
    EXPECT_TRUE(same_pixels(r0.layers[0].overlays[1], upscale_nearest(r0.inputs[1], 56)));
    EXPECT_FALSE(same_pixels(conv.overlays[1], r0.layers[0].overlays[1]));
    // overlays off: none made.
    o.overlays = false;
    EXPECT_TRUE(activations(m, x, o).layers[0].overlays.empty());
}

TEST(Activations, FixtureLayersEqualPyTorch) {
    for (const char* name : {"resnet_small_scripted", "seq_scripted", "lenet_traced"}) {
        Model m = Model::load(fixture(std::string(name) + ".pt"));
        const at::Tensor input = read_npy(fixture(std::string(name) + "/input.npy"));
        m.set_input_shape({input.size(1), input.size(2), input.size(3)});
        ActivationsOptions o;
        o.pictures = false;
        const ActivationsResult r = activations(m, input, o);
        int compared = 0;
        for (const auto& la : r.layers) {
            const std::string ref = fixture(std::string(name) + "/act/" + la.name + ".npy");
            if (!std::filesystem::exists(ref)) continue;
            expect_close(la.values, read_npy(ref), 1e-4, std::string(name) + " " + la.name);
            ++compared;
        }
        EXPECT_GE(compared, static_cast<int>(r.layers.size()) - 1) << name;
        EXPECT_GE(compared, 5) << name;
    }
}

TEST(Activations, MeanOrderOnAFixtureAndColourTiles) {
    Model m = Model::load(fixture("resnet_small_scripted.pt"));
    const at::Tensor input = read_npy(fixture("resnet_small_scripted/input.npy"));
    m.set_input_shape({3, 32, 32});
    ActivationsOptions o;
    o.layers = {"layer1.0.conv1", "fc"};
    o.order = ChannelOrder::Mean;
    o.tile_px = 1;
    const ActivationsResult r = activations(m, input, o);
    const auto& la = r.layers[0];
    for (int64_t n = 0; n < input.size(0); ++n) {
        const auto& order = la.order[n];
        ASSERT_EQ(order.size(), 16u);
        for (size_t k = 1; k < order.size(); ++k)
            EXPECT_GE(la.channel_mean[n][order[k - 1]].item<float>(), la.channel_mean[n][order[k]].item<float>());
        // The first tile is the strongest channel, on the layer's range.
        const cv::Mat first = apply_colormap(la.values[n][order[0]], Colormap::Viridis, la.range);
        EXPECT_TRUE(same_pixels(la.grids[n](cv::Rect(0, 0, 32, 32)), first));
        EXPECT_EQ(std::vector<int64_t>(order.begin(), order.begin() + 3), la.strongest[n]);
        // The input is shown in colour (3 channels).
        int coloured = 0;
        for (int y = 0; y < 32; ++y)
            for (int x = 0; x < 32; ++x) {
                const cv::Vec3b p = px(r.inputs[n], x, y);
                coloured += p[0] != p[1] || p[1] != p[2];
            }
        EXPECT_GT(coloured, 500);
    }
    // 1-D: bars in mean order too.
    const auto& fc = r.layers[1];
    EXPECT_GE(fc.channel_mean[0][fc.order[0][0]].item<float>(), fc.channel_mean[0][fc.order[0][9]].item<float>());
}

TEST(Activations, BadRequestsGiveClearErrors) {
    Model m = tiny_model();
    const at::Tensor x = tiny_inputs();
    ActivationsOptions o;
    o.layers = {"cnov"};
    expect_error([&] { activations(m, x, o); }, "unknown layer 'cnov'");
    o.layers = {"spread"};
    expect_error([&] { activations(m, x, o); }, "layer 'spread' gives outputs of shape [3,16]");
    o.layers = {"conv"};
    expect_error([&] { activations(m, torch::zeros({1, 3, 4, 4}), o); }, "channels");
    expect_error([&] { activations(m, torch::zeros({1, 1, 5, 4}), o); }, "5x4");
    expect_error([&] { activations(m, torch::zeros({4, 4}), o); }, "[N,C,H,W]");
    o.top_channels = 0;
    expect_error([&] { activations(m, x, o); }, "at least 1 channel");
    expect_error([] { parse_activation_scale("global"); }, "use layer");
    expect_error([] { parse_channel_order("max"); }, "use index or mean");
    EXPECT_EQ(parse_channel_order("Mean"), ChannelOrder::Mean);
    EXPECT_EQ(parse_activation_scale("tile"), ActivationScale::Tile);
}
