// Faithfulness metrics against references: deletion, insertion and ROAD curves computed by plain
// loops in PyTorch on the LeNet fixture (tests/fixtures/metric_fixtures.py), the linear
// imputation against its defining equations, infidelity and max-sensitivity on a linear model
// whose exact attribution is known.
#include <ATen/CPUGeneratorImpl.h>
#include <gtest/gtest.h>
#include <random>
#include <torch/script.h>
#include <torch/torch.h>

#include "convscope/methods/explain.hpp"
#include "convscope/methods/faithfulness.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/detail/imputation.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

at::Tensor lenet_input() { return read_npy(fixture("lenet_scripted/input.npy")); }
at::Tensor metric_ref(const std::string& name) { return read_npy(fixture("metrics/" + name + ".npy")); }

Target prob_target() {
    Target t;
    t.score = Score::Prob;
    return t;
}

// out = [<w, x>, -<w, x>] on 1x8x8 inputs: the gradient of class 0 is w everywhere.
struct LinearModel {
    at::Tensor w = randn({1, 1, 8, 8}, 21);
    Model model = make();
    Model make() const {
        torch::jit::Module m("Linear");
        m.register_parameter("w", w, false);
        m.define(R"(
def forward(self, x):
    s = (x * self.w).sum([1, 2, 3])
    return torch.stack([s, -s], 1)
)");
        Model model = Model::from_module(m, ModelMeta{});
        model.set_input_shape({1, 8, 8});
        return model;
    }
};

// The largest distance of a removed value of y [N,C,H,W] from the weighted mean of its
// neighbours inside the image (1/6 direct, 1/12 diagonal), by a convolution with zero padding.
double imputation_equation_error(const at::Tensor& y, const at::Tensor& removed) {
    const int64_t n = y.size(0), c = y.size(1), h = y.size(2), w = y.size(3);
    const at::Tensor k =
        torch::tensor({1.0 / 12, 1.0 / 6, 1.0 / 12, 1.0 / 6, 0.0, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 12}, torch::kDouble)
            .view({1, 1, 3, 3});
    const at::Tensor yd = y.to(torch::kDouble).view({n * c, 1, h, w});
    const at::Tensor sums = torch::conv2d(yd, k, {}, 1, 1),
                     weights = torch::conv2d(torch::ones({1, 1, h, w}, torch::kDouble), k, {}, 1, 1);
    const at::Tensor rm = removed.unsqueeze(1).expand({n, c, h, w});
    return (yd - sums / weights).view({n, c, h, w}).abs().masked_select(rm).max().item<double>();
}

}  // namespace

// The relevance order of float maps (a radix sort of their bits) is the stable sort's: ranks
// 0..P-1, most relevant first or last, ties (repeated values, -0 and +0) in pixel order. The
// reference is the stable sort of the same maps as float64 (the order of double maps).
TEST(Faithfulness, RelevanceRanksOfFloatMapsAreTheStableSortsOrder) {
    at::Tensor maps = randn({5, 13, 11}, 40);
    maps[1] = maps[1].round();                                      // many ties
    maps[2].view({-1}).slice(0, 0, 60).fill_(0.f);                  // +0 ...
    maps[2].view({-1}).slice(0, 60, 90).fill_(-0.f);                // ... and -0 together
    maps[3] = maps[3] * 1e-38f;                                     // subnormal values
    maps[4].view({-1}).slice(0, 0, 70).fill_(3.f);
    maps[4].view({-1}).slice(0, 70, 143).fill_(-2.5f);
    for (const RelevanceOrder order : {RelevanceOrder::MostFirst, RelevanceOrder::LeastFirst}) {
        const at::Tensor got = relevance_ranks(maps, order);
        const at::Tensor want = relevance_ranks(maps.to(torch::kDouble), order);
        EXPECT_TRUE(torch::equal(got, want)) << relevance_order_name(order);
        // A plain check of the definition on one map: rank r holds the r-th value in order, and
        // equal values are ranked in pixel order.
        const at::Tensor m = maps[1].reshape({-1}), r = got[1];
        for (int64_t a = 0; a < m.numel(); ++a)
            for (int64_t b = a + 1; b < m.numel(); ++b) {
                const float va = m[a].item<float>(), vb = m[b].item<float>();
                const bool a_first = order == RelevanceOrder::MostFirst ? va >= vb : va <= vb;
                EXPECT_EQ(r[a].item<int64_t>() < r[b].item<int64_t>(), a_first) << a << " " << b;
            }
    }
}

TEST(Faithfulness, DeletionAndInsertionCurvesMatchPlainLoops) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input(), maps = metric_ref("maps");
    for (const bool insertion : {false, true})
        for (const auto order : {RelevanceOrder::MostFirst, RelevanceOrder::LeastFirst}) {
            CurveOptions o;
            o.target = prob_target();
            o.insertion = insertion;
            o.order = order;
            o.steps = 20;
            o.baseline = insertion ? parse_baseline("mean") : parse_baseline("0");
            o.batch_size = 9;  // batches that cut across images
            const CurveResult r = perturbation_curve(model, x, maps, o);
            const std::string name = std::string(insertion ? "insertion_" : "deletion_") + relevance_order_name(order);
            const at::Tensor ref = metric_ref(name);
            expect_close(r.curves, ref, 1e-5, name);
            // The area: the trapezoidal rule over the changed share in [0, 1].
            const at::Tensor d = ref.to(torch::kDouble);
            const at::Tensor area = (d.sum(1) - 0.5 * (d.select(1, 0) + d.select(1, 20))) / 20.0;
            expect_close(r.areas, area.to(torch::kFloat), 1e-5, name + " area");
        }
}

TEST(Faithfulness, RoadMatchesLinearImputationByPlainLoops) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input(), maps = metric_ref("maps");
    for (const auto order : {RelevanceOrder::MostFirst, RelevanceOrder::LeastFirst}) {
        RoadOptions o;
        o.target = prob_target();
        o.order = order;
        o.percentages = {20, 50, 80};
        o.noise = 0;
        o.batch_size = 4;
        const RoadResult r = road(model, x, maps, o);
        const std::string name = std::string("road_") + relevance_order_name(order);
        expect_close(r.scores, metric_ref(name + "_scores"), 1e-4, name);
        EXPECT_TRUE(torch::equal(r.kept, metric_ref(name + "_kept"))) << name << " kept";
        expect_close(r.areas, metric_ref(name + "_scores").mean(1), 1e-4, name + " mean");
    }
}

TEST(Faithfulness, LinearImputationSatisfiesItsEquationsAndAddsSeededNoise) {
    const at::Tensor x = randn({2, 3, 9, 11}, 4);
    at::Tensor removed = torch::rand({2, 9, 11}, at::make_generator<at::CPUGeneratorImpl>(5)) < 0.6;
    removed[0][0][0] = false;  // at least one kept pixel per image
    removed[1][8][10] = false;
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    const at::Tensor y = noisy_linear_imputation(x, removed, 0.0, gen);
    EXPECT_TRUE(torch::equal(torch::where(removed.unsqueeze(1), torch::zeros_like(x), x),
                             torch::where(removed.unsqueeze(1), torch::zeros_like(y), y)))
        << "kept values changed";
    // Every removed value is the weighted mean of its neighbours inside the image.
    const double wt[3][3] = {{1.0 / 12, 1.0 / 6, 1.0 / 12}, {1.0 / 6, 0, 1.0 / 6}, {1.0 / 12, 1.0 / 6, 1.0 / 12}};
    double worst = 0;
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 3; ++c)
            for (int64_t i = 0; i < 9; ++i)
                for (int64_t j = 0; j < 11; ++j) {
                    if (!removed[n][i][j].item<bool>()) continue;
                    double sum = 0, weights = 0;
                    for (int di = -1; di <= 1; ++di)
                        for (int dj = -1; dj <= 1; ++dj) {
                            const int64_t a = i + di, b = j + dj;
                            if (a < 0 || a >= 9 || b < 0 || b >= 11) continue;
                            sum += wt[di + 1][dj + 1] * y[n][c][a][b].item<double>();
                            weights += wt[di + 1][dj + 1];
                        }
                    worst = std::max(worst, std::abs(y[n][c][i][j].item<double>() - sum / weights));
                }
    EXPECT_LT(worst, 1e-5);
    // Noise: seeded, of the asked size, only on removed values.
    at::Generator g1 = at::make_generator<at::CPUGeneratorImpl>(9), g2 = at::make_generator<at::CPUGeneratorImpl>(9);
    const at::Tensor a = noisy_linear_imputation(x, removed, 0.5, g1), b = noisy_linear_imputation(x, removed, 0.5, g2);
    EXPECT_TRUE(torch::equal(a, b));
    const at::Tensor noise = (a - y).masked_select(removed.unsqueeze(1).expand_as(x));
    EXPECT_NEAR(noise.std().item<double>(), 0.5, 0.05);
    // Drawn image by image: one image at a time from one generator gives the same values.
    at::Generator g4 = at::make_generator<at::CPUGeneratorImpl>(9);
    const at::Tensor first = noisy_linear_imputation(x.slice(0, 0, 1), removed.slice(0, 0, 1), 0.5, g4);
    const at::Tensor second = noisy_linear_imputation(x.slice(0, 1, 2), removed.slice(0, 1, 2), 0.5, g4);
    EXPECT_TRUE(torch::equal(a, torch::cat({first, second})));
    at::Generator g3 = at::make_generator<at::CPUGeneratorImpl>(9);
    expect_error([&] { noisy_linear_imputation(x, torch::ones({2, 9, 11}, torch::kBool), 0.0, g3); },
                 "every pixel of an image is removed");
}

// Large holes: the equations still hold for a disc, a speckle of half the pixels, a disc bordered
// by black pixels only (its right-hand side is 0, the image is not) and 95% removed, on two image
// sizes, by both solvers and by the automatic choice.
TEST(Faithfulness, LinearImputationOfLargeHolesSatisfiesItsEquations) {
    for (const auto& [h, w, r] : std::vector<std::tuple<int64_t, int64_t, int64_t>>{{56, 64, 20}, {96, 120, 30}}) {
        const at::Tensor yy = torch::arange(h).view({h, 1}).expand({h, w}), xx = torch::arange(w).view({1, w}).expand({h, w});
        const at::Tensor d2 = (yy - h / 2).pow(2) + (xx - w / 2).pow(2);
        const at::Tensor disc = d2 < r * r;
        const at::Tensor speckle = torch::rand({h, w}, at::make_generator<at::CPUGeneratorImpl>(3)) < 0.5;
        const at::Tensor most = torch::rand({h, w}, at::make_generator<at::CPUGeneratorImpl>(4)) < 0.95;
        at::Tensor x = randn({4, 3, h, w}, 6);
        x[2].masked_fill_((d2 < (r + 3) * (r + 3)).logical_and(disc.logical_not()), 0.f);
        const at::Tensor removed = torch::stack({disc, speckle, disc, most});
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
        const at::Tensor y = noisy_linear_imputation(x, removed, 0.0, gen);
        // Both solvers give the same values (the iterations to 1e-8 of the right-hand side).
        const at::Tensor by_cg = noisy_linear_imputation(x, removed, 0.0, gen, ImputationSolver::Iterative);
        const at::Tensor by_ldlt = noisy_linear_imputation(x, removed, 0.0, gen, ImputationSolver::Factorisation);
        EXPECT_LT((by_cg - by_ldlt).abs().max().item<double>(), 1e-5) << h << "x" << w;
        for (int64_t i = 0; i < 4; ++i) EXPECT_TRUE(torch::equal(y[i], by_cg[i]) || torch::equal(y[i], by_ldlt[i]));
        const at::Tensor rm = removed.unsqueeze(1).expand_as(x);
        EXPECT_TRUE(torch::equal(x.masked_select(rm.logical_not()), y.masked_select(rm.logical_not())));
        EXPECT_LT(imputation_equation_error(y, removed), 1e-5) << h << "x" << w;
        // The fill of the black-bordered hole is black.
        EXPECT_LT(y[2].masked_select(disc.unsqueeze(0).expand({3, h, w})).abs().max().item<double>(), 1e-5);
        // A weighted mean lies between the values around it (the maximum principle).
        EXPECT_LE(y[0].max().item<double>(), x[0].max().item<double>() + 1e-5);
    }
}

// Thin and odd shapes: one row, one column, a single kept pixel in a corner, a width that is
// not a multiple of any SIMD width; every removed value is the weighted mean of its neighbours
// inside the image (checked by a convolution with zero padding) and the kept ones stay.
TEST(Faithfulness, LinearImputationOfThinImagesAndOneKeptPixelSatisfiesItsEquations) {
    int64_t seed = 30;
    for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{1, 37}, {41, 1}, {2, 3}, {17, 19}, {28, 28}}) {
        const at::Tensor x = randn({3, 2, h, w}, seed++);
        at::Tensor removed = torch::rand({3, h, w}, at::make_generator<at::CPUGeneratorImpl>(uint64_t(seed++))) < 0.7;
        removed[0].fill_(true);
        removed[0][h - 1][w - 1] = false;  // one kept pixel
        removed[1][0][0] = false;
        removed[2].fill_(true);
        removed[2][h / 2][w / 2] = false;
        for (const ImputationSolver solver : {ImputationSolver::Iterative, ImputationSolver::Factorisation}) {
            at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
            const at::Tensor y = noisy_linear_imputation(x, removed, 0.0, gen, solver);
            const at::Tensor rm = removed.unsqueeze(1).expand_as(x);
            EXPECT_TRUE(torch::equal(x.masked_select(rm.logical_not()), y.masked_select(rm.logical_not())));
            EXPECT_LT(imputation_equation_error(y, removed), 1e-5) << h << "x" << w;
            // One kept pixel: the whole image takes its value.
            EXPECT_LT((y[0] - x[0].select(1, h - 1).select(1, w - 1).view({2, 1, 1})).abs().max().item<double>(), 1e-5);
        }
    }
}

// The iterations keep their buffers between images: images of changing sizes, and of one size with
// holes in other rows (the range of grid rows they work on moves), one after another on one
// thread (one image a call runs on the caller). Each equals the factorisation's exact solve of its
// own system and does not depend on the images solved before it: solved again in reverse order,
// it is the same to the bit (values left over from an earlier image would change the iterations).
TEST(Faithfulness, LinearImputationOfImagesOneAfterAnotherEqualsTheExactSolve) {
    std::mt19937 g(17);
    std::vector<at::Tensor> xs, masks, first;
    int64_t seed = 100;
    for (const auto& [h, w] : std::vector<std::pair<int64_t, int64_t>>{{28, 28}, {1, 37}, {17, 19}, {40, 33}, {28, 28}})
        for (int t = 0; t < 8; ++t) {
            xs.push_back(randn({1, 2, h, w}, seed++));
            // Holes in a band of rows that moves from image to image, or a speckle over the whole image.
            at::Tensor removed = torch::rand({1, h, w}, at::make_generator<at::CPUGeneratorImpl>(uint64_t(seed++))) < 0.6;
            if (t % 4 != 3) {
                const int64_t y0 = int64_t(g() % uint32_t(h)), y1 = y0 + 1 + int64_t(g() % uint32_t(h - y0));
                removed.slice(1, 0, y0).fill_(false);
                removed.slice(1, y1, h).fill_(false);
            }
            if (removed.all().item<bool>()) removed[0][0][0] = false;
            masks.push_back(removed);
        }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(1);
    double worst = 0;
    for (size_t i = 0; i < xs.size(); ++i) {
        first.push_back(noisy_linear_imputation(xs[i], masks[i], 0.0, gen, ImputationSolver::Iterative));
        const at::Tensor exact = noisy_linear_imputation(xs[i], masks[i], 0.0, gen, ImputationSolver::Factorisation);
        worst = std::max(worst, (first[i] - exact).abs().max().item<double>());
    }
    EXPECT_LT(worst, 1e-5);
    for (size_t i = xs.size(); i-- > 0;)
        EXPECT_TRUE(torch::equal(noisy_linear_imputation(xs[i], masks[i], 0.0, gen, ImputationSolver::Iterative), first[i]))
            << "image " << i;
}

// The imputation noise's draws: standard normal by the Kolmogorov-Smirnov distance of 400,000
// draws to the normal CDF (the 0.1% critical value is 1.95 / sqrt(n) = 0.0031), with the tail
// beyond the ziggurat's base strip (|x| > 3.44) at its probability, a pure function of the seed,
// and other seeds other values.
TEST(Faithfulness, ImputationNoiseIsStandardNormalAndAFunctionOfItsSeed) {
    const int n = 400000;
    std::vector<double> v(n);
    convscope::detail::NormalStream z(12345);
    int64_t tail = 0;
    for (auto& x : v) {
        x = double(z.next());
        tail += std::abs(x) > 3.442619855899;
    }
    std::sort(v.begin(), v.end());
    double ks = 0, sum = 0, sq = 0;
    for (int i = 0; i < n; ++i) {
        const double cdf = 0.5 * std::erfc(-v[size_t(i)] / std::sqrt(2.0));
        ks = std::max({ks, std::abs(cdf - double(i) / n), std::abs(cdf - double(i + 1) / n)});
        sum += v[size_t(i)];
        sq += v[size_t(i)] * v[size_t(i)];
    }
    EXPECT_LT(ks, 1.95 / std::sqrt(double(n)));
    EXPECT_NEAR(sum / n, 0.0, 0.01);
    EXPECT_NEAR(std::sqrt(sq / n), 1.0, 0.01);
    // P(|x| > 3.4426) = 5.76e-4: 230 expected, sd about 15.
    EXPECT_NEAR(double(tail), n * std::erfc(3.442619855899 / std::sqrt(2.0)), 75.0);
    convscope::detail::NormalStream a(7), b(7), c(8);
    int same = 0;
    for (int i = 0; i < 1000; ++i) {
        const float x = a.next();
        EXPECT_EQ(x, b.next());
        same += x == c.next();
    }
    EXPECT_EQ(same, 0);
}

TEST(Faithfulness, InfidelityIsZeroForTheExactAttributionOfALinearModel) {
    LinearModel lin;
    const at::Tensor x = randn({3, 1, 8, 8}, 22);
    Target t;
    t.kind = Target::Kind::Class;
    t.class_index = 0;
    Explanation exact;
    exact.per_value = lin.w.expand({3, 1, 8, 8}).contiguous();
    exact.signed_map = exact.per_value.sum(1);
    exact.map = exact.signed_map.abs();
    InfidelityOptions o;
    o.target = t;
    o.samples = 400;
    EXPECT_LT(infidelity(lin.model, x, exact, o).max().item<double>(), 1e-8);
    // Twice the gradient: exact again once normalised; without, the error is E[<w, I>^2] =
    // sigma^2 |w|^2 per image (sigma = noise x the image's range).
    Explanation twice = exact;
    twice.per_value = exact.per_value * 2;
    EXPECT_LT(infidelity(lin.model, x, twice, o).max().item<double>(), 1e-8);
    o.normalize = false;
    const at::Tensor err = infidelity(lin.model, x, twice, o);
    for (int64_t n = 0; n < 3; ++n) {
        const double sigma = 0.1 * (x[n].max() - x[n].min()).item<double>();
        const double expected = sigma * sigma * lin.w.pow(2).sum().item<double>();
        EXPECT_NEAR(err[n].item<double>(), expected, 0.2 * expected) << "image " << n;
    }
    // A map that ignores the model is worse than the exact one.
    Explanation noise = exact;
    noise.per_value = randn({3, 1, 8, 8}, 23);
    o.normalize = true;
    EXPECT_GT(infidelity(lin.model, x, noise, o).min().item<double>(), 1e-3);
    o.samples = 0;
    expect_error([&] { infidelity(lin.model, x, exact, o); }, "at least 1 sample");
}

TEST(Faithfulness, MaxSensitivityOfSaliency) {
    // A linear model's saliency does not change with the input: max-sensitivity 0. LeNet's does.
    LinearModel lin;
    const at::Tensor x = randn({2, 1, 8, 8}, 24);
    Target t;
    t.kind = Target::Kind::Class;
    t.class_index = 0;
    ExplainOptions eo;
    eo.target = t;
    const Explainer saliency = method_explainer("saliency", eo);
    const Explanation e = saliency(lin.model, x, t, {});
    SensitivityOptions so;
    EXPECT_LT(max_sensitivity(lin.model, x, e, saliency, t, so).max().item<double>(), 1e-6);

    Model lenet = load_lenet();
    const at::Tensor xl = lenet_input();
    const Explanation el = saliency(lenet, xl, t, {});
    so.samples = 4;
    const at::Tensor s = max_sensitivity(lenet, xl, el, saliency, t, so);
    // The reference: the same draws by hand (uniform in the box, the seed's stream).
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(uint64_t(0) ^ 0x5e5e5e5eULL);
    at::Tensor worst = torch::zeros({2}, torch::kDouble);
    const at::Tensor range = std::get<0>(xl.reshape({2, -1}).max(1)) - std::get<0>(xl.reshape({2, -1}).min(1));
    for (int i = 0; i < 4; ++i) {
        const at::Tensor u = torch::rand(xl.sizes(), gen, torch::kFloat) * 2 - 1;
        const at::Tensor y = xl + u * (0.02 * range).view({2, 1, 1, 1});
        const at::Tensor m = saliency(lenet, y, fixed_target(t, el.targets), {}).map.to(torch::kDouble);
        const at::Tensor rel = (m - el.map.to(torch::kDouble)).reshape({2, -1}).norm(2, 1) /
                               el.map.to(torch::kDouble).reshape({2, -1}).norm(2, 1);
        worst = torch::maximum(worst, rel);
    }
    expect_close(s, worst.to(torch::kFloat), 1e-5, "max-sensitivity");
    EXPECT_GT(s.min().item<double>(), 0.0);
    so.radius = 0;
    expect_error([&] { max_sensitivity(lenet, xl, el, saliency, t, so); }, "radius");
}

TEST(Faithfulness, BadInputGivesClearErrors) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input(), maps = metric_ref("maps");
    CurveOptions co;
    co.steps = 0;
    expect_error([&] { perturbation_curve(model, x, maps, co); }, "1 to 784 steps");
    co.steps = 785;
    expect_error([&] { perturbation_curve(model, x, maps, co); }, "1 to 784 steps");
    co.steps = 10;
    expect_error([&] { perturbation_curve(model, x, maps.slice(1, 0, 20), co); }, "the maps must be [N,H,W]");
    at::Tensor nan_maps = maps.clone();
    nan_maps[0][3][3] = std::nanf("");
    expect_error([&] { perturbation_curve(model, x, nan_maps, co); }, "NaN");
    co.target.kind = Target::Kind::Class;
    co.target.class_index = 10;
    expect_error([&] { perturbation_curve(model, x, maps, co); }, "out of range");
    RoadOptions ro;
    ro.percentages = {0};
    expect_error([&] { road(model, x, maps, ro); }, "strictly between 0 and 100");
    ro.percentages = {100};
    expect_error([&] { road(model, x, maps, ro); }, "strictly between 0 and 100");
    ro.percentages = {};
    expect_error([&] { road(model, x, maps, ro); }, "at least one percentage");
    ro.percentages = {50};
    ro.noise = -1;
    expect_error([&] { road(model, x, maps, ro); }, "noise");
}
