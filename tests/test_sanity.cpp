// Sanity checks against their definitions: rank correlations against a plain O(n^2) ranking,
// HOG on maps whose orientations are known, randomised copies compared weight by weight, and the
// known result of Adebayo et al.: saliency maps decorrelate when a trained model's top layers
// are randomised, while a "method" that ignores the model (an edge detector) does not.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "convscope/methods/explain.hpp"
#include "convscope/methods/sanity.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

// Ranks by counting: 1 + (values below) + (equal values - 1) / 2.
std::vector<double> plain_ranks(const std::vector<double>& v) {
    std::vector<double> r;
    for (double a : v) {
        double below = 0, equal = 0;
        for (double b : v) {
            below += b < a;
            equal += b == a;
        }
        r.push_back(1 + below + (equal - 1) / 2);
    }
    return r;
}

double plain_pearson(const std::vector<double>& a, const std::vector<double>& b) {
    double ma = 0, mb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        ma += a[i] / double(a.size());
        mb += b[i] / double(b.size());
    }
    double sab = 0, saa = 0, sbb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
        sab += (a[i] - ma) * (b[i] - mb);
        saa += (a[i] - ma) * (a[i] - ma);
        sbb += (b[i] - mb) * (b[i] - mb);
    }
    return sab / std::sqrt(saa * sbb);
}

std::vector<double> to_vector(const at::Tensor& t) {
    const at::Tensor d = t.to(torch::kDouble).contiguous().view({-1});
    return std::vector<double>(d.data_ptr<double>(), d.data_ptr<double>() + d.numel());
}

// The explanation an edge detector gives: the gradient magnitude of the image itself.
Explainer edge_detector() {
    return [](const Model&, const at::Tensor& images, const Target&, const RunContext&) {
        const at::Tensor g = images.mean(1);
        const at::Tensor gx = torch::zeros_like(g), gy = torch::zeros_like(g);
        gx.slice(2, 1, -1) = g.slice(2, 2) - g.slice(2, 0, -2);
        gy.slice(1, 1, -1) = g.slice(1, 2) - g.slice(1, 0, -2);
        Explanation e;
        e.method = "edges";
        e.map = (gx * gx + gy * gy).sqrt().contiguous();
        e.signed_map = e.map;
        e.targets.assign(size_t(images.size(0)), 0);
        return e;
    };
}

// The built-in model trained briefly (one pass over 3,000 images), once for the whole suite.
const Model& trained_model() {
    static Model model = [] {
        TempDir tmp;
        TrainOptions opts;
        opts.epochs = 1;
        opts.train_limit = 3000;
        opts.test_limit = 500;
        opts.seed = 5;
        const std::string path = tmp / "m.pt";
        train_default_model(path, opts);
        return Model::load(path);
    }();
    return model;
}

at::Tensor fashion_items(const Model& model, int64_t n) {
    const Dataset data = Dataset::open("fashion-mnist:test");
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
    return data.batch(idx, preprocess_for(model, data));
}

}  // namespace

TEST(Sanity, RankCorrelationsFollowTheirDefinitions) {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    // Values rounded to tenths: many ties.
    const at::Tensor a = (torch::randn({200}, gen, torch::kFloat) * 5).round() / 10;
    const at::Tensor b = a + (torch::randn({200}, gen, torch::kFloat) * 3).round() / 10;
    EXPECT_NEAR(spearman(a, b), plain_pearson(plain_ranks(to_vector(a)), plain_ranks(to_vector(b))), 1e-12);
    EXPECT_NEAR(pearson(a, b), plain_pearson(to_vector(a), to_vector(b)), 1e-12);
    EXPECT_NEAR(spearman(a, a.pow(3)), 1.0, 1e-12);  // monotone: the same ranks
    EXPECT_NEAR(spearman(a, -a), -1.0, 1e-12);
    EXPECT_EQ(spearman(a, torch::ones({200})), 0.0);  // constant: no correlation
    expect_error([&] { spearman(a, b.slice(0, 0, 10)); }, "same number of values");
    // A map with a NaN (an overflowing random model) has no similarity.
    Explanation e1, e2;
    e1.map = e1.signed_map = randn({1, 8, 8}, 1);
    e2.map = e2.signed_map = e1.map.clone();
    EXPECT_NEAR(compare_maps(e1, e2, 0).ssim, 1.0, 1e-12);
    e2.signed_map[0][3][3] = std::nanf("");
    const MapSimilarity s = compare_maps(e1, e2, 0);
    EXPECT_TRUE(std::isnan(s.spearman) && std::isnan(s.spearman_abs) && std::isnan(s.ssim) && std::isnan(s.hog));
}

TEST(Sanity, HogSeesTheOrientationOfStripes) {
    // Vertical stripes vary along x only: every gradient points at 0 degrees (bin 0).
    const at::Tensor x = torch::arange(24, torch::kDouble).remainder(4).lt(2).to(torch::kDouble);
    const at::Tensor vertical = x.view({1, 24}).expand({24, 24}).contiguous();
    const at::Tensor hv = hog_features(vertical, 4);
    ASSERT_EQ(hv.numel(), 5 * 5 * 36);  // 6x6 cells, 2x2 blocks at every cell position
    const at::Tensor bins = hv.view({-1, 9});
    EXPECT_GT(bins.select(1, 0).sum().item<double>(), 0.0);
    EXPECT_EQ(bins.slice(1, 1).abs().sum().item<double>(), 0.0);
    // Horizontal stripes: 90 degrees, bin 4; the two are uncorrelated in HOG space.
    const at::Tensor hh = hog_features(vertical.t().contiguous(), 4);
    EXPECT_GT(hh.view({-1, 9}).select(1, 4).sum().item<double>(), 0.0);
    EXPECT_EQ(hh.view({-1, 9}).select(1, 0).abs().sum().item<double>(), 0.0);
    EXPECT_LT(pearson(hv, hh), 0.0);
    EXPECT_EQ(hog_features(torch::ones({16, 16}), 4).abs().sum().item<double>(), 0.0);
    // L2-Hys: each block's vector has unit length (or is zero).
    const at::Tensor blocks = hog_features(randn({20, 20}, 4), 4).view({-1, 36});
    expect_close(blocks.norm(2, 1), torch::ones({blocks.size(0)}, torch::kDouble), 1e-6, "block norms");
}

TEST(Sanity, RandomisedCopiesChangeExactlyTheNamedLayers) {
    Model model = load_lenet();
    const auto layers = parameter_layers(model);
    ASSERT_GE(layers.size(), 3u);
    // The output's side first: the last parameter layer computed comes first.
    std::vector<std::string> forward;
    for (const auto& l : model.layers())
        if (!model.parameter_names(l.name).empty()) forward.push_back(l.name);
    EXPECT_EQ(std::vector<std::string>(forward.rbegin(), forward.rend()), layers);

    std::map<std::string, at::Tensor> before;
    for (const auto& l : layers)
        for (const auto& p : model.parameter_names(l)) before[l + "." + p] = model.parameter(l, p).clone();
    const std::vector<std::string> chosen{layers[0], layers[2]};
    const Model copy = randomised_copy(model, chosen, 11);
    for (const auto& l : layers)
        for (const auto& p : model.parameter_names(l)) {
            const at::Tensor orig = before[l + "." + p];
            EXPECT_TRUE(torch::equal(model.parameter(l, p), orig)) << l << "." << p << ": the original changed";
            const bool named = l == chosen[0] || l == chosen[1];
            EXPECT_EQ(!torch::equal(copy.parameter(l, p), orig), named) << l << "." << p;
            if (named && orig.numel() > 10) {
                // Redrawn with the tensor's own mean and spread.
                const at::Tensor v = copy.parameter(l, p).to(torch::kDouble);
                EXPECT_NEAR(v.std().item<double>(), orig.to(torch::kDouble).std().item<double>(),
                            0.3 * orig.to(torch::kDouble).std().item<double>());
            }
        }
    // A layer gets the same values whatever else is randomised with it.
    const Model single = randomised_copy(model, {layers[2]}, 11);
    for (const auto& p : model.parameter_names(layers[2]))
        EXPECT_TRUE(torch::equal(single.parameter(layers[2], p), copy.parameter(layers[2], p)));
    // The copy computes with its own weights; the original still gives its outputs.
    const at::Tensor x = read_npy(fixture("lenet_scripted/input.npy"));
    EXPECT_FALSE(torch::allclose(copy.forward(x), model.forward(x)));
    expect_error([&] { randomised_copy(model, {"conv9"}, 1); }, "unknown layer 'conv9'");
}

namespace {

at::Tensor buffer(const Model& m, const std::string& layer, const std::string& name) {
    for (const auto& item : m.module().named_modules())
        if (item.name == layer) return item.value.attr(name).toTensor();
    ADD_FAILURE() << "no layer " << layer;
    return {};
}

}  // namespace

// Quantus' MPRT convention: PyTorch's reset_parameters (kaiming-uniform weights, biases in the
// same bound, BatchNorm back to 1, 0 and its running statistics to 0, 1).
TEST(Sanity, ResetRedrawsAsPyTorchsResetParameters) {
    Model model = Model::load(fixture("resnet_small_scripted.pt"));
    model.set_input_shape({3, 32, 32});
    const std::vector<std::string> chosen{"fc", "layer2.0.conv2", "layer2.0.bn2"};
    const at::Tensor mean_before = buffer(model, "layer2.0.bn2", "running_mean").clone();
    const at::Tensor conv1_before = model.parameter("layer1.0.conv1", "weight").clone();
    const Model copy = randomised_copy(model, chosen, 5, RandomInit::Reset);
    // fan_in: fc 32 inputs; layer2.0.conv2 32 channels x 3 x 3.
    for (const auto& [layer, fan_in] : std::vector<std::pair<std::string, int64_t>>{{"fc", 32}, {"layer2.0.conv2", 288}}) {
        const double bound = 1.0 / std::sqrt(double(fan_in));
        const at::Tensor w = copy.parameter(layer, "weight").to(torch::kDouble);
        EXPECT_LE(w.abs().max().item<double>(), bound) << layer;
        EXPECT_GT(w.abs().max().item<double>(), 0.9 * bound) << layer;
        EXPECT_NEAR(w.std().item<double>(), bound / std::sqrt(3.0), 0.15 * bound / std::sqrt(3.0)) << layer;
        EXPECT_FALSE(torch::equal(copy.parameter(layer, "weight"), model.parameter(layer, "weight"))) << layer;
    }
    EXPECT_LE(copy.parameter("fc", "bias").abs().max().item<double>(), 1.0 / std::sqrt(32.0));
    EXPECT_TRUE(torch::equal(copy.parameter("layer2.0.bn2", "weight"), torch::ones({32})));
    EXPECT_TRUE(torch::equal(copy.parameter("layer2.0.bn2", "bias"), torch::zeros({32})));
    EXPECT_TRUE(torch::equal(buffer(copy, "layer2.0.bn2", "running_mean"), torch::zeros({32})));
    EXPECT_TRUE(torch::equal(buffer(copy, "layer2.0.bn2", "running_var"), torch::ones({32})));
    // The original and the other layers keep theirs.
    EXPECT_TRUE(torch::equal(buffer(model, "layer2.0.bn2", "running_mean"), mean_before));
    EXPECT_FALSE(torch::equal(mean_before, torch::zeros({32})));
    EXPECT_TRUE(torch::equal(copy.parameter("layer1.0.conv1", "weight"), conv1_before));
    // A BatchNorm reset to the identity computes x * 1 + 0 with statistics 0, 1: the block's
    // output equals a copy whose bn2 is replaced by hand.
    const at::Tensor x = read_npy(fixture("resnet_small_scripted/input.npy"));
    Model by_hand = randomised_copy(model, {"fc", "layer2.0.conv2"}, 5, RandomInit::Reset);
    {
        torch::NoGradGuard g;
        by_hand.parameter("layer2.0.bn2", "weight").fill_(1);
        by_hand.parameter("layer2.0.bn2", "bias").zero_();
        buffer(by_hand, "layer2.0.bn2", "running_mean").zero_();
        buffer(by_hand, "layer2.0.bn2", "running_var").fill_(1);
    }
    expect_close(copy.forward(x), by_hand.forward(x), 1e-6, "reset BatchNorm");

    // Independent randomisation with reset puts the running statistics back after each step:
    // step 1 (conv1 alone) equals a copy with conv1 alone reset, although step 0 reset a BatchNorm.
    Target t;
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    const Explanation orig = saliency(model, x, t, {});
    RandomisationOptions ro;
    ro.mode = RandomisationMode::Independent;
    ro.init = RandomInit::Reset;
    ro.layers = {"layer2.0.bn2", "layer1.0.conv1"};
    const RandomisationResult ri = randomisation(model, x, orig, saliency, t, ro);
    const Explanation alone = saliency(randomised_copy(model, {"layer1.0.conv1"}, 0, RandomInit::Reset), x,
                                       fixed_target(t, orig.targets), {});
    for (int64_t i = 0; i < 2; ++i)
        EXPECT_NEAR(ri.spearman[1][i].item<double>(), compare_maps(orig, alone, i).spearman, 1e-6);
    EXPECT_EQ(parse_random_init("reset"), RandomInit::Reset);
    EXPECT_THROW(parse_random_init("xavier"), UsageError);
}

TEST(Sanity, SaliencyDecorrelatesUnderRandomisationAndAnEdgeDetectorDoesNot) {
    const Model& model = trained_model();
    const at::Tensor x = fashion_items(model, 4);
    Target t;
    ExplainOptions eo;
    const Explainer saliency = method_explainer("saliency", eo);
    const Explanation orig = saliency(model, x, t, {});
    RandomisationOptions ro;
    const RandomisationResult r = randomisation(model, x, orig, saliency, t, ro);
    EXPECT_EQ(r.layers, parameter_layers(model));
    ASSERT_EQ(r.spearman_abs.sizes(), (std::vector<int64_t>{int64_t(r.layers.size()), 4}));
    // Once every layer is random the map has little to do with the original.
    const int64_t last = int64_t(r.layers.size()) - 1;
    EXPECT_LT(r.spearman_abs[last].mean().item<double>(), 0.5);
    EXPECT_LT(r.ssim[last].mean().item<double>(), 0.5);
    // Step 1 is the map of the copy with the top two layers randomised (and the seed's values).
    const Explanation two = saliency(randomised_copy(model, {r.layers[0], r.layers[1]}, 0), x, fixed_target(t, orig.targets), {});
    for (int64_t i = 0; i < 4; ++i) {
        const MapSimilarity s = compare_maps(orig, two, i);
        EXPECT_NEAR(r.spearman_abs[1][i].item<double>(), s.spearman_abs, 1e-6);
        EXPECT_NEAR(r.ssim[1][i].item<double>(), s.ssim, 1e-6);
        EXPECT_NEAR(r.hog[1][i].item<double>(), s.hog, 1e-6);
    }

    const Explainer edges = edge_detector();
    const Explanation e0 = edges(model, x, t, {});
    const RandomisationResult re = randomisation(model, x, e0, edges, t, ro);
    EXPECT_TRUE(torch::allclose(re.spearman_abs, torch::ones_like(re.spearman_abs)));
    EXPECT_TRUE(torch::allclose(re.ssim, torch::ones_like(re.ssim)));
    EXPECT_TRUE(torch::allclose(re.hog, torch::ones_like(re.hog)));
    // Independent randomisation: one layer at a time.
    ro.mode = RandomisationMode::Independent;
    ro.layers = {r.layers[0], r.layers[2]};
    const RandomisationResult ri = randomisation(model, x, orig, saliency, t, ro);
    EXPECT_EQ(ri.layers, ro.layers);
    EXPECT_LT(ri.spearman_abs.mean().item<double>(), 1.0);
    // Step 1 randomises the third layer alone: the first is back to its trained values.
    const Explanation third = saliency(randomised_copy(model, {r.layers[2]}, 0), x, fixed_target(t, orig.targets), {});
    for (int64_t i = 0; i < 4; ++i)
        EXPECT_NEAR(ri.spearman[1][i].item<double>(), compare_maps(orig, third, i).spearman, 1e-6);
}

// The copy a check changes is kept for the next check of a model from the same file: its values
// are set from the model checked each time, so the numbers do not depend on what ran before,
// and the model itself is never changed.
TEST(Sanity, RepeatedChecksOfOneFileGiveTheSameNumbersAndLeaveTheModel) {
    const Model& model = trained_model();
    const at::Tensor x = fashion_items(model, 3);
    const std::vector<std::string> layers = parameter_layers(model);
    ASSERT_GE(layers.size(), 3u);
    // Another model from the same file, changed two layers below the top.
    const Model other = randomised_copy(model, {layers[2]}, 11);
    std::vector<at::Tensor> before;
    for (const auto& p : model.module().parameters()) before.push_back(p.clone());
    Target t;
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    const Explanation orig = saliency(model, x, t, {}), orig_other = saliency(other, x, t, {});
    RandomisationOptions ro;
    ro.init = RandomInit::Reset;
    const RandomisationResult a1 = randomisation(model, x, orig, saliency, t, ro);
    const RandomisationResult b1 = randomisation(other, x, orig_other, saliency, t, ro);
    const RandomisationResult a2 = randomisation(model, x, orig, saliency, t, ro);
    const RandomisationResult b2 = randomisation(other, x, orig_other, saliency, t, ro);
    for (const auto& [one, two] : {std::pair{&a1, &a2}, std::pair{&b1, &b2}}) {
        EXPECT_TRUE(torch::equal(one->spearman_abs, two->spearman_abs));
        EXPECT_TRUE(torch::equal(one->ssim, two->ssim));
        EXPECT_TRUE(torch::equal(one->hog, two->hog));
    }
    // Step 0 of the other model's check: its own values with the top layer redrawn.
    const Explanation top = saliency(randomised_copy(other, {layers[0]}, 0, RandomInit::Reset), x,
                                     fixed_target(t, orig_other.targets), {});
    for (int64_t i = 0; i < 3; ++i)
        EXPECT_NEAR(b1.spearman_abs[0][i].item<double>(), compare_maps(orig_other, top, i).spearman_abs, 1e-6);
    EXPECT_FALSE(torch::equal(a1.spearman_abs, b1.spearman_abs));
    size_t k = 0;
    for (const auto& p : model.module().parameters()) EXPECT_TRUE(torch::equal(p, before[k++]));
}

TEST(Sanity, RandomLogitExplainsAnotherClass) {
    const Model& model = trained_model();
    const at::Tensor x = fashion_items(model, 6);
    Target t;
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    const Explanation orig = saliency(model, x, t, {});
    RunContext ctx;
    ctx.seed = 4;
    const RandomLogitResult r = random_logit(model, x, orig, saliency, t, ctx);
    ASSERT_EQ(r.classes.size(), 6u);
    for (size_t i = 0; i < 6; ++i) {
        EXPECT_NE(r.classes[i], orig.targets[i]);
        EXPECT_GE(r.classes[i], 0);
        EXPECT_LT(r.classes[i], 10);
    }
    // The map of class c is exactly the saliency of class c.
    Target other;
    other.kind = Target::Kind::PerImage;
    other.labels = r.classes;
    const Explanation direct = saliency(model, x, other, {});
    for (int64_t n = 0; n < 6; ++n)
        EXPECT_NEAR(r.spearman[n].item<double>(), spearman(orig.signed_map[n], direct.signed_map[n]), 1e-6);
    EXPECT_LT(r.spearman_abs.mean().item<double>(), 0.999);
    const Explainer edges = edge_detector();
    const RandomLogitResult re = random_logit(model, x, edges(model, x, t, {}), edges, t, ctx);
    EXPECT_TRUE(torch::allclose(re.spearman_abs, torch::ones_like(re.spearman_abs)));
    Target sim;
    sim.kind = Target::Kind::Similarity;
    expect_error([&] { random_logit(model, x, orig, saliency, sim, ctx); }, "needs a class target");
}
