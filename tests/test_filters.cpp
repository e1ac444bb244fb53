// Tests for filters(): hand-set weights in a small TorchScript module give known tiles (exact
// pixel values from the documented normalisation), statistics equal brute-force sums, the noise
// score follows its definition (checked against a direct DFT), fixture first layers give colour
// tiles, and every bad request gives its error.
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <complex>

#include "convscope/methods/filters.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "test_util.hpp"

namespace jit = torch::jit;
using namespace convscope;

namespace {

jit::Module make_module(const std::shared_ptr<jit::CompilationUnit>& cu, const std::string& cls) {
    jit::Module m(c10::QualifiedName("__torch__.filterstest." + cls), cu, /*shouldMangle=*/true);
    m.register_attribute("training", c10::BoolType::get(), false);
    return m;
}

jit::Module conv(const std::shared_ptr<jit::CompilationUnit>& cu, const at::Tensor& w, int64_t pad) {
    auto m = make_module(cu, "Conv2d");
    m.register_parameter("weight", w, false);
    m.register_parameter("bias", torch::zeros({w.size(0)}), false);
    m.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, [1, 1], [" +
             std::to_string(pad) + ", " + std::to_string(pad) + "], [1, 1], 1)\n");
    return m;
}

// Filter 0 of conv_rgb: R, G, B slices; filter 1 is twice filter 0.
at::Tensor rgb_weights() {
    at::Tensor f0 = torch::tensor({1.f, 0.f, 0.f, -1.f, 0.5f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, -0.5f}).view({3, 2, 2});
    return torch::stack({f0, f0 * 2});
}
at::Tensor gray_weights() {
    return torch::tensor({-2.f, 0.f, 1.f, 2.f, 0.f, 0.f, 0.f, 4.f}).view({2, 1, 2, 2});
}
at::Tensor deep_weights() { return torch::arange(36, torch::kFloat).sub(17.f).view({2, 2, 3, 3}) / 10.f; }
at::Tensor fc_weights() { return torch::arange(24, torch::kFloat).sub(12.f).view({3, 8}); }

// x [N,3,4,4] -> conv_rgb (k2) -> conv_deep (k3, pad 1) -> first channel -> conv_gray (k2)
// -> flatten [N,8] -> fc -> relu.
Model tiny_model() {
    auto cu = std::make_shared<jit::CompilationUnit>();
    auto net = make_module(cu, "Net");
    net.register_module("conv_rgb", conv(cu, rgb_weights(), 0));
    net.register_module("conv_deep", conv(cu, deep_weights(), 1));
    net.register_module("conv_gray", conv(cu, gray_weights(), 0));
    auto fc = make_module(cu, "Linear");
    fc.register_parameter("weight", fc_weights(), false);
    fc.register_parameter("bias", torch::zeros({3}), false);
    fc.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
    net.register_module("fc", fc);
    auto relu = make_module(cu, "ReLU");
    relu.define("def forward(self, x):\n    return torch.relu(x)\n");
    net.register_module("relu", relu);
    net.define(R"JIT(
def forward(self, x):
    x = self.conv_deep.forward(self.conv_rgb.forward(x))
    x = self.conv_gray.forward(x[:, 0:1])
    x = torch.flatten(x, 1)
    return self.relu.forward(self.fc.forward(x))
)JIT");
    ModelMeta meta;
    meta.input_shape = {3, 4, 4};
    return Model::from_module(net, meta);
}

cv::Vec3b px(const cv::Mat& img, int x, int y) { return img.at<cv::Vec3b>(y, x); }
cv::Vec3b gray(int v) { return cv::Vec3b(v, v, v); }
cv::Vec3b scalar_px(const cv::Scalar& s) { return cv::Vec3b(uchar(s[0]), uchar(s[1]), uchar(s[2])); }

// The noise score by its definition with a direct O(n^4) DFT (no FFT library).
double brute_noise(const at::Tensor& ckk) {
    const at::Tensor w = ckk.to(torch::kDouble).contiguous();
    const int64_t c = w.size(0), kh = w.size(1), kw = w.size(2);
    double high = 0, total = 0;
    for (int64_t ch = 0; ch < c; ++ch) {
        std::vector<double> v(static_cast<size_t>(kh * kw));
        double mean = 0;
        for (int64_t i = 0; i < kh * kw; ++i) mean += (v[i] = w[ch].flatten()[i].item<double>());
        mean /= double(kh * kw);
        for (auto& x : v) x -= mean;
        for (double x : v) total += x * x;
        // Fit b*y + c*x by least squares (normal equations, centred coordinates).
        double syy = 0, sxx = 0, sy = 0, sx = 0;
        for (int64_t y = 0; y < kh; ++y)
            for (int64_t x = 0; x < kw; ++x) {
                const double yc = y - (kh - 1) / 2.0, xc = x - (kw - 1) / 2.0;
                syy += yc * yc, sxx += xc * xc;
                sy += v[y * kw + x] * yc, sx += v[y * kw + x] * xc;
            }
        const double b = syy > 0 ? sy / syy : 0, cc = sxx > 0 ? sx / sxx : 0;
        for (int64_t y = 0; y < kh; ++y)
            for (int64_t x = 0; x < kw; ++x) v[y * kw + x] -= b * (y - (kh - 1) / 2.0) + cc * (x - (kw - 1) / 2.0);
        for (int64_t u = 0; u < kh; ++u)
            for (int64_t q = 0; q < kw; ++q) {
                const double fu = u <= kh / 2 ? double(u) / kh : double(u) / kh - 1;
                const double fq = q <= kw / 2 ? double(q) / kw : double(q) / kw - 1;
                if (2 * std::sqrt(fu * fu + fq * fq) <= 0.5) continue;
                std::complex<double> s = 0;
                for (int64_t y = 0; y < kh; ++y)
                    for (int64_t x = 0; x < kw; ++x)
                        s += v[y * kw + x] * std::polar(1.0, -2 * M_PI * (double(u * y) / kh + double(q * x) / kw));
                high += std::norm(s) / double(kh * kw);
            }
    }
    return total > 0 ? high / total : 0;
}

}  // namespace

TEST(Filters, RgbTilesHaveExactPixelsPerFilterNormalisation) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_rgb";
    o.upscale = 1;
    const FiltersResult r = filters(m, o);
    EXPECT_EQ(r.mode, FilterMode::Rgb);
    EXPECT_EQ(r.layer_type, "Conv2d");
    ASSERT_EQ(r.picture.type(), CV_8UC3);
    // Two 2x2 tiles side by side, one white separator column.
    ASSERT_EQ(r.picture.cols, 5);
    ASSERT_EQ(r.picture.rows, 2);
    // Filter 0, range [-1, 1]: byte = round((v + 1) / 2 * 255); both filters look the same.
    for (int x0 : {0, 3}) {
        EXPECT_EQ(px(r.picture, x0 + 0, 0), cv::Vec3b(255, 191, 128));
        EXPECT_EQ(px(r.picture, x0 + 1, 0), cv::Vec3b(128, 128, 128));
        EXPECT_EQ(px(r.picture, x0 + 0, 1), cv::Vec3b(128, 128, 128));
        EXPECT_EQ(px(r.picture, x0 + 1, 1), cv::Vec3b(0, 128, 64));
    }
    EXPECT_EQ(px(r.picture, 2, 0), cv::Vec3b(255, 255, 255));
    expect_close(r.weights, rgb_weights(), 0, "raw weights");
}

TEST(Filters, LayerNormalisationSharesOneSymmetricRange) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_rgb";
    o.upscale = 1;
    o.normalize = FilterNormalize::Layer;
    const FiltersResult r = filters(m, o);
    EXPECT_FLOAT_EQ(r.layer_max_abs, 2.f);
    // Range [-2, 2]: filter 0 is weaker, filter 1 reaches the ends.
    EXPECT_EQ(px(r.picture, 0, 0), cv::Vec3b(191, 159, 128));
    EXPECT_EQ(px(r.picture, 1, 1), cv::Vec3b(64, 128, 96));
    EXPECT_EQ(px(r.picture, 3, 0), cv::Vec3b(255, 191, 128));
    EXPECT_EQ(px(r.picture, 4, 1), cv::Vec3b(0, 128, 64));
}

TEST(Filters, UpscalingIsNearestNeighbour) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_rgb";
    o.upscale = 3;
    const FiltersResult r = filters(m, o);
    ASSERT_EQ(r.picture.cols, 2 * 6 + 1);
    ASSERT_EQ(r.picture.rows, 6);
    for (int y = 0; y < 3; ++y)
        for (int x = 0; x < 3; ++x) {
            EXPECT_EQ(px(r.picture, x, y), cv::Vec3b(255, 191, 128));
            EXPECT_EQ(px(r.picture, 3 + x, 3 + y), cv::Vec3b(0, 128, 64));
        }
    EXPECT_EQ(px(r.picture, 6, 4), cv::Vec3b(255, 255, 255));
    // Automatic size: 2x2 kernels become readable_factor(2, 2, 64) = 32 px per weight.
    o.upscale = 0;
    EXPECT_EQ(filters(m, o).upscale, 32);
}

TEST(Filters, GrayTilesForOneInputChannel) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_gray";
    o.upscale = 1;
    const FiltersResult r = filters(m, o);
    EXPECT_EQ(r.mode, FilterMode::Gray);
    ASSERT_EQ(r.picture.cols, 5);
    // Filter 0 [[-2,0],[1,2]] over [-2,2]; filter 1 [[0,0],[0,4]] over [-4,4].
    EXPECT_EQ(px(r.picture, 0, 0), gray(0));
    EXPECT_EQ(px(r.picture, 1, 0), gray(128));
    EXPECT_EQ(px(r.picture, 0, 1), gray(191));
    EXPECT_EQ(px(r.picture, 1, 1), gray(255));
    EXPECT_EQ(px(r.picture, 3, 0), gray(128));
    EXPECT_EQ(px(r.picture, 4, 1), gray(255));
    EXPECT_EQ(px(r.picture, 2, 0), scalar_px(separator_colour_for(Colormap::Gray)));
}

TEST(Filters, ChannelsModeShowsSubGridsOnTheDivergingMap) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_deep";
    o.upscale = 1;
    const FiltersResult r = filters(m, o);
    EXPECT_EQ(r.mode, FilterMode::Channels);
    // Per filter: two 3x3 slices with a 1-px separator (7x3); filters kFilterGroupGap apart.
    ASSERT_EQ(r.picture.cols, 7 + kFilterGroupGap + 7);
    ASSERT_EQ(r.picture.rows, 3);
    const auto& table = colormap_table(Colormap::Diverging);
    const at::Tensor w = deep_weights();
    for (int f = 0; f < 2; ++f) {
        const float mx = w[f].abs().max().item<float>();
        for (int c = 0; c < 2; ++c)
            for (int y = 0; y < 3; ++y)
                for (int x = 0; x < 3; ++x) {
                    const float v = w[f][c][y][x].item<float>();
                    const int idx = static_cast<int>(std::lround((double(v) + mx) / (2.0 * mx) * 255));
                    EXPECT_EQ(px(r.picture, f * (7 + kFilterGroupGap) + c * 4 + x, y), table[idx])
                        << "filter " << f << " channel " << c << " at " << y << "," << x;
                }
    }
    // Filter 0 runs from -1.7 (its most negative weight: pure blue end) upwards.
    EXPECT_EQ(px(r.picture, 0, 0), table[0]);
    EXPECT_EQ(px(r.picture, 3, 0), scalar_px(separator_colour_for(Colormap::Diverging)));
    EXPECT_EQ(px(r.picture, 7, 0), scalar_px(kFilterGroupColour));
    // A weight of exactly zero is white: weight number 17 is 0 -> filter 0, channel 1, (2, 2).
    EXPECT_EQ(px(r.picture, 4 + 2, 2), cv::Vec3b(255, 255, 255));
}

TEST(Filters, SummaryModeShowsTheNormOverInputChannels) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_deep";
    o.upscale = 1;
    o.mode = FilterMode::Summary;
    o.normalize = FilterNormalize::Layer;
    const FiltersResult r = filters(m, o);
    ASSERT_EQ(r.picture.cols, 7);
    const at::Tensor norms = deep_weights().pow(2).sum(1).sqrt();  // [2,3,3]
    EXPECT_NEAR(r.layer_max_abs, norms.max().item<float>(), 1e-6);
    const auto& table = colormap_table(Colormap::Diverging);
    for (int f = 0; f < 2; ++f)
        for (int y = 0; y < 3; ++y)
            for (int x = 0; x < 3; ++x) {
                const float v = norms[f][y][x].item<float>(), mx = r.layer_max_abs;
                const int idx = static_cast<int>(std::lround((double(v) + mx) / (2.0 * mx) * 255));
                EXPECT_EQ(px(r.picture, f * 4 + x, y), table[idx]);
            }
    // The largest norm (filter 1 at (2, 2): sqrt(0.9^2 + 1.8^2)) is the red end.
    EXPECT_EQ(px(r.picture, 4 + 2, 2), table[255]);
}

TEST(Filters, SelectionAndStatistics) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_deep";
    o.filters = {1};
    o.in_channels = {1, 0};
    const FiltersResult r = filters(m, o);
    const at::Tensor want = deep_weights().index_select(0, torch::tensor({1L})).index_select(1, torch::tensor({1L, 0L}));
    expect_close(r.weights, want, 0, "selected weights");
    EXPECT_EQ(r.filters, std::vector<int64_t>({1}));
    EXPECT_EQ(r.in_channels, std::vector<int64_t>({1, 0}));
    ASSERT_EQ(r.stats.size(), 1u);
    const auto& s = r.stats[0];
    EXPECT_EQ(s.filter, 1);
    // Brute force over the 18 shown values.
    double sum = 0, sq = 0;
    const at::Tensor flat = want.flatten().to(torch::kDouble);
    for (int64_t i = 0; i < flat.numel(); ++i) sum += flat[i].item<double>(), sq += std::pow(flat[i].item<double>(), 2);
    const double mean = sum / 18.0;
    double var = 0;
    for (int64_t i = 0; i < flat.numel(); ++i) var += std::pow(flat[i].item<double>() - mean, 2);
    EXPECT_NEAR(s.l2_norm, std::sqrt(sq), 1e-6);
    EXPECT_NEAR(s.mean, mean, 1e-7);
    EXPECT_NEAR(s.std, std::sqrt(var / 18.0), 1e-6);
    EXPECT_NEAR(s.noise, brute_noise(want[0]), 1e-9);
}

TEST(Filters, NoiseScoreSmoothVersusCheckerboard) {
    auto opts = torch::TensorOptions().dtype(torch::kDouble);
    EXPECT_EQ(filter_noise_score(torch::full({3, 5, 5}, 0.7)), 0.0);
    EXPECT_EQ(filter_noise_score(torch::randn({4, 1, 1})), 0.0);  // 1x1 kernels
    const at::Tensor y = torch::arange(5, opts).view({5, 1}), x = torch::arange(7, opts).view({1, 7});
    EXPECT_LT(filter_noise_score((0.3 * y - 0.2 * x + 1.0).unsqueeze(0)), 1e-12);  // a ramp
    const at::Tensor r7 = torch::arange(7, opts) - 3;
    const at::Tensor g = torch::exp(-(r7.view({7, 1}).pow(2) + r7.view({1, 7}).pow(2)) / 4.0);
    EXPECT_LT(filter_noise_score(g.unsqueeze(0)), 0.02);  // a Gaussian blob (0.0067)
    for (int64_t k : {2, 3, 4, 8}) {
        const at::Tensor idx = torch::arange(k, opts);
        const at::Tensor checker = 1.0 - 2.0 * torch::remainder(idx.view({k, 1}) + idx.view({1, k}), 2.0);
        EXPECT_GT(filter_noise_score(torch::stack({checker, -checker})), 0.999) << k << "x" << k;
    }
    torch::manual_seed(3);
    const at::Tensor noise = torch::randn({3, 7, 7});
    const double s = filter_noise_score(noise);
    EXPECT_GT(s, 0.6);
    EXPECT_LT(s, 0.95);
    EXPECT_NEAR(s, brute_noise(noise), 1e-9);
    const at::Tensor odd = torch::randn({2, 4, 5});
    EXPECT_NEAR(filter_noise_score(odd), brute_noise(odd), 1e-9);
    // Noisy first-layer filters score higher than smooth ones with the same energy.
    EXPECT_GT(filter_noise_score(noise), filter_noise_score((g * 3).unsqueeze(0)) + 0.5);
    expect_error([] { filter_noise_score(torch::zeros({3, 3})); }, "[C,kh,kw]");
}

TEST(Filters, LinearLayerWithReshape) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "fc";
    o.reshape = {1, 2, 4};
    o.upscale = 1;
    FiltersResult r = filters(m, o);
    EXPECT_EQ(r.layer_type, "Linear");
    EXPECT_EQ(r.mode, FilterMode::Gray);
    EXPECT_EQ(r.weight_shape, std::vector<int64_t>({3, 8}));
    expect_close(r.weights, fc_weights().view({3, 1, 2, 4}), 0, "reshaped weights");
    // Unit 0 holds -12..-5: range [-12, 12]; -12 -> 0, -6 -> round(0.25 * 255) = 64.
    EXPECT_EQ(px(r.picture, 0, 0), gray(0));
    EXPECT_EQ(px(r.picture, 2, 1), gray(64));
    o.reshape = {2, 2, 2};
    r = filters(m, o);
    EXPECT_EQ(r.mode, FilterMode::Channels);
    EXPECT_EQ(filter_shape(m, "fc", {2, 2, 2}), std::vector<int64_t>({3, 2, 2, 2}));
}

TEST(Filters, BadRequestsGiveClearErrors) {
    Model m = tiny_model();
    FiltersOptions o;
    o.layer = "conv_rbg";
    expect_error([&] { filters(m, o); }, "unknown layer 'conv_rbg'");
    expect_error([&] { filters(m, o); }, "'conv_rgb'");
    o.layer = "fc";
    expect_error([&] { filters(m, o); }, "has no spatial weights (layers with spatial weights: conv_rgb, "
                                         "conv_deep, conv_gray): pick one of those, or pass --reshape C,H,W "
                                         "with C*H*W = 8");
    o.layer = "relu";
    expect_error([&] { filters(m, o); }, "layer 'relu' (ReLU) has no weights");
    o.layer = "fc";
    o.reshape = {2, 2, 3};
    expect_error([&] { filters(m, o); }, "holds 12 values but each unit of layer 'fc' has 8 weights");
    o.reshape = {2, 4};
    expect_error([&] { filters(m, o); }, "three numbers");
    o.layer = "conv_rgb";
    o.reshape = {3, 2, 2};
    expect_error([&] { filters(m, o); }, "only for Linear layers");
    o.reshape = {};
    o.filters = {0, 2};
    expect_error([&] { filters(m, o); }, "filter 2 is out of range: layer 'conv_rgb' has 2 filters (0..1)");
    o.filters = {};
    o.in_channels = {3};
    expect_error([&] { filters(m, o); }, "input channel 3 is out of range");
    o.in_channels = {0, 1};
    o.mode = FilterMode::Rgb;
    expect_error([&] { filters(m, o); }, "rgb tiles need 3 input channels but 2 are shown");
    o.mode = FilterMode::Gray;
    expect_error([&] { filters(m, o); }, "gray tiles need 1 input channel");
    o.mode = FilterMode::Channels;
    o.upscale = 5000;
    expect_error([&] { filters(m, o); }, "would be");
    o.upscale = 0;
    o.layer = "";
    expect_error([&] { filters(m, o); }, "no layer given");
    expect_error([] { parse_filter_mode("colour"); }, "use auto, rgb, gray, channels or summary");
    expect_error([] { parse_filter_normalize("global"); }, "use filter or layer");
    EXPECT_EQ(spatial_weight_layers(m), std::vector<std::string>({"conv_rgb", "conv_deep", "conv_gray"}));
}

TEST(Filters, FixtureFirstLayersGiveColourTiles) {
    for (const char* name : {"resnet_small_scripted.pt", "seq_scripted.pt"}) {
        Model m = Model::load(fixture(name));
        const std::string layer = std::string(name) == "seq_scripted.pt" ? "features.0" : "conv1";
        FiltersOptions o;
        o.layer = layer;
        const FiltersResult r = filters(m, o);
        EXPECT_EQ(r.mode, FilterMode::Rgb) << name;
        expect_close(r.weights, m.parameter(layer, "weight"), 0, name);
        // Colour: some pixel has different R, G and B.
        int coloured = 0;
        for (int y = 0; y < r.picture.rows; ++y)
            for (int x = 0; x < r.picture.cols; ++x) {
                const cv::Vec3b p = px(r.picture, x, y);
                coloured += p[0] != p[1] || p[1] != p[2];
            }
        EXPECT_GT(coloured, static_cast<int>(r.picture.total() / 4)) << name;
        ASSERT_EQ(r.stats.size(), static_cast<size_t>(r.weights.size(0)));
        for (size_t i = 0; i < r.stats.size(); ++i) {
            EXPECT_NEAR(r.stats[i].l2_norm, r.weights[i].norm().item<double>(), 1e-5);
            EXPECT_NEAR(r.stats[i].noise, brute_noise(r.weights[i]), 1e-6);
        }
    }
    // A deeper 3x3 layer: channel sub-grids by default.
    Model m = Model::load(fixture("resnet_small_scripted.pt"));
    FiltersOptions o;
    o.layer = "layer1.0.conv1";
    EXPECT_EQ(filters(m, o).mode, FilterMode::Channels);
    EXPECT_EQ(spatial_weight_layers(m).front(), "conv1");
}
