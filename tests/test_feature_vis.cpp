// Feature visualisation: the optimised image must excite its unit far more than noise does, runs
// are seeded and per-unit independent, the dataset's best activation is the brute-force maximum,
// and bad options give clear errors.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/detail/blur.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

FeatureVisOptions channel_opts(const std::string& layer, std::vector<int64_t> units) {
    FeatureVisOptions o;
    o.layer = layer;
    o.units = std::move(units);
    o.steps = 48;
    o.learning_rate = 0.1;
    return o;
}

// Uniform noise images in [0,1], the usual starting point for comparison.
at::Tensor noise_images(int64_t n) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(17);
    return torch::rand({n, 1, 28, 28}, gen, torch::kFloat);
}

}  // namespace

TEST(FeatureVis, RaisesLeNetChannelsWellAboveNoise) {
    // relu2 channels 3 and 4 of the fixture LeNet respond to noise, so "well above noise" is a
    // real claim for them (with inputs bounded to [0,1], first-layer units cannot reach 3x).
    Model model = load_lenet();
    for (auto param : {FeatureVisParam::Pixel, FeatureVisParam::Fourier}) {
        auto o = channel_opts("relu2", {3, 4});
        o.param = param;
        o.steps = 64;
        auto r = feature_vis(model, o);
        ASSERT_EQ(r.images.sizes(), (std::vector<int64_t>{2, 1, 28, 28}));
        ASSERT_EQ(r.display.sizes(), (std::vector<int64_t>{2, 28, 28, 1}));
        EXPECT_GE(r.pixels.min().item<double>(), 0.0);
        EXPECT_LE(r.pixels.max().item<double>(), 1.0);
        // The reported activation is the objective of the returned image.
        const at::Tensor again = feature_vis_objective(model, o, r.images);  // [2,2]
        expect_close(r.activation, again.diagonal(), 1e-5, "activation of the returned image");
        const at::Tensor noise = feature_vis_objective(model, o, noise_images(32)).mean(0);
        for (int64_t u = 0; u < 2; ++u) {
            const double on_noise = noise[u].item<double>();
            ASSERT_GT(on_noise, 1e-3)
                << "noise must excite the unit for the comparison to mean something";
            EXPECT_GT(r.activation[u].item<double>(), 3.0 * on_noise)
                << feature_vis_param_name(param) << " unit " << o.units[size_t(u)] << ": "
                << r.activation[u].item<double>() << " vs noise " << on_noise;
            EXPECT_GT(r.activation[u].item<double>(), 3.0 * r.initial_activation[u].item<double>());
        }
    }
}

TEST(FeatureVis, ClassObjectiveRaisesTheLogit) {
    Model model = load_lenet();
    FeatureVisOptions o;
    o.objective = FeatureVisOptions::Objective::Class;
    o.units = {3, 8};
    o.steps = 64;
    o.learning_rate = 0.1;
    auto r = feature_vis(model, o);
    EXPECT_EQ(r.layer, "");
    const at::Tensor out = model.forward(r.images);
    EXPECT_NEAR(out[0][3].item<double>(), r.activation[0].item<double>(), 1e-5);
    EXPECT_NEAR(out[1][8].item<double>(), r.activation[1].item<double>(), 1e-5);
    // Logits can be negative: the synthetic image must lie far outside the logit's spread
    // over noise images.
    const at::Tensor noise = model.forward(noise_images(32));
    for (int64_t i = 0; i < 2; ++i) {
        const int64_t cls = o.units[size_t(i)];
        const double mean = noise.select(1, cls).mean().item<double>();
        const double sd = noise.select(1, cls).std().item<double>();
        EXPECT_GT(r.activation[i].item<double>() - mean, 5.0 * sd) << "class " << cls;
    }
}

TEST(FeatureVis, SeededAndIndependentPerUnit) {
    Model model = load_lenet();
    auto o = channel_opts("conv2", {1, 4});
    o.steps = 12;
    RunContext ctx;
    ctx.seed = 7;
    auto a = feature_vis(model, o, ctx);
    auto b = feature_vis(model, o, ctx);
    EXPECT_TRUE(torch::equal(a.pixels, b.pixels)) << "same seed, same bytes";
    auto single = channel_opts("conv2", {4});
    single.steps = 12;
    auto c = feature_vis(model, single, ctx);
    expect_close(c.pixels[0], a.pixels[1], 1e-4, "unit 4 alone");
    o.batch_size = 1;
    auto d = feature_vis(model, o, ctx);
    expect_close(d.pixels, a.pixels, 1e-4, "batch size");
    ctx.seed = 8;
    auto e = feature_vis(model, o, ctx);
    EXPECT_GT((e.pixels - a.pixels).abs().max().item<double>(), 1e-3) << "seed matters";
}

TEST(FeatureVis, NormalisationAndDatasetBest) {
    Model model = load_lenet();
    TempDir tmp;
    auto gen = at::make_generator<at::CPUGeneratorImpl>(23);
    const at::Tensor data = torch::rand({10, 1, 28, 28}, gen, torch::kFloat);
    write_npy(tmp / "data.npy", data);
    Dataset ds = Dataset::open(tmp / "data.npy");
    auto o = channel_opts("pool2", {0, 5, 9});
    o.steps = 8;
    o.dataset_batch_size = 4;
    o.preprocess = ds.preprocess_for({1, 28, 28}, {}, {});
    auto r = feature_vis(model, ds, {}, o);
    const at::Tensor obj = feature_vis_objective(model, o, data);  // [10,3] brute force
    const auto [best, where] = obj.max(0);
    expect_close(r.dataset_best, best, 1e-6, "dataset best");
    EXPECT_TRUE(torch::equal(r.dataset_best_index, where));
    for (int64_t u = 0; u < 3; ++u) {
        if (best[u].item<double>() > 0)
            EXPECT_NEAR(r.ratio[u].item<double>(), (r.activation[u] / best[u]).item<double>(),
                        1e-6);
        else
            EXPECT_TRUE(std::isnan(r.ratio[u].item<double>()));
    }
    // With a normalisation, the model input is (pixels - mean) / std.
    auto n = channel_opts("conv1", {2});
    n.steps = 4;
    n.preprocess.mean = {0.5};
    n.preprocess.std = {0.25};
    auto rn = feature_vis(model, n);
    expect_close(rn.images, (rn.pixels - 0.5) / 0.25, 1e-6, "normalised input");
}

TEST(FeatureVis, GaussianBlurKeepsMassAndConstants) {
    at::Tensor impulse = torch::zeros({1, 1, 15, 15});
    impulse[0][0][7][7] = 1.0;
    const at::Tensor b = convscope::detail::gaussian_blur(impulse, 1.5);
    EXPECT_NEAR(b.sum().item<double>(), 1.0, 1e-5);
    EXPECT_EQ(b.argmax().item<int64_t>(), 7 * 15 + 7);
    // Second moment of the blurred impulse along x is sigma^2.
    const at::Tensor xs = (torch::arange(15, torch::kFloat) - 7).pow(2);
    EXPECT_NEAR((b.sum(2).view({15}) * xs).sum().item<double>(), 1.5 * 1.5, 0.05);
    const at::Tensor c = torch::full({2, 3, 5, 6}, 0.3);
    expect_close(convscope::detail::gaussian_blur(c, 4.0), c, 1e-5, "constant");
}

TEST(FeatureVis, BadInputGivesClearErrors) {
    Model model = load_lenet();
    auto o = channel_opts("conv2", {0});
    o.steps = 0;
    expect_error([&] { feature_vis(model, o); }, "at least 1 step");
    o = channel_opts("conv2", {16});
    expect_error([&] { feature_vis(model, o); },
                 "channel 16 is out of range: layer 'conv2' has 16 channels");
    o = channel_opts("conv7", {0});
    expect_error([&] { feature_vis(model, o); }, "unknown layer 'conv7'");
    o = channel_opts("conv2", {});
    expect_error([&] { feature_vis(model, o); }, "no units");
    FeatureVisOptions c;
    c.objective = FeatureVisOptions::Objective::Class;
    c.units = {10};
    expect_error([&] { feature_vis(model, c); },
                 "class 10 is out of range: the model has 10 classes");
    o = channel_opts("conv2", {0});
    o.learning_rate = 0;
    expect_error([&] { feature_vis(model, o); }, "learning rate");
    EXPECT_THROW(parse_feature_vis_param("wavelet"), UsageError);
    EXPECT_EQ(parse_feature_vis_param("fourier"), FeatureVisParam::Fourier);
}

TEST(FeatureVis, SmallerSizeRunsOnlyUpToTheLayer) {
    // A channel of an inner layer optimised at 20 px on a 32 px model: the images have that
    // size, and the reported activation is the layer's on them (the cut graph, checked against
    // the full graph's tap at the same size through a fully convolutional copy of the input).
    Model model = Model::load(fixture("resnet_small_scripted.pt"));
    model.set_input_shape({3, 32, 32});
    FeatureVisOptions o;
    o.layer = "layer1";
    o.units = {0, 5};
    o.steps = 3;
    o.size = 20;
    const FeatureVisResult r = feature_vis(model, o);
    ASSERT_EQ(r.pixels.sizes(), (std::vector<int64_t>{2, 3, 20, 20}));
    const at::Tensor tap = model.forward_until(r.images, {"layer1"}).taps.at("layer1");
    const at::Tensor want = tap.flatten(2).mean(2).index_select(1, torch::tensor({0, 5})).diagonal();
    expect_close(r.activation, want, 1e-6, "activation at 20 px");
    // A class objective needs the model's input size.
    FeatureVisOptions c;
    c.objective = FeatureVisOptions::Objective::Class;
    c.units = {1};
    c.steps = 1;
    c.size = 20;
    expect_error([&] { feature_vis(model, c); }, "needs the model's input size");
}
