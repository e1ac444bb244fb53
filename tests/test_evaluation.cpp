// The evaluation suite: every column equals its metric computed directly from the method's maps,
// directions and rankings follow the definitions, and bad options are refused before any work.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>

#include "convscope/methods/evaluation.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

at::Tensor lenet_input() { return read_npy(fixture("lenet_scripted/input.npy")); }

const MetricColumn& column(const EvaluationResult& r, const std::string& name) {
    for (const auto& c : r.columns)
        if (c.name == name) return c;
    throw std::runtime_error("no column " + name);
}

}  // namespace

TEST(Evaluation, ColumnsEqualTheMetricsComputedDirectly) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    EvaluationOptions o;
    o.methods = {"saliency", "grad-cam"};
    o.metrics = {Metric::Deletion, Metric::Road, Metric::RandomLogit};
    o.steps = 16;
    o.road.percentages = {25, 75};
    o.explain.target.score = Score::Prob;
    RunContext ctx;
    ctx.seed = 5;
    const EvaluationResult r = evaluate(model, x, o, ctx);
    std::vector<std::string> names;
    for (const auto& c : r.columns) names.push_back(c.name);
    EXPECT_EQ(names, (std::vector<std::string>{"deletion_morf", "deletion_lerf", "road_morf", "road_lerf",
                                                "random_logit_spearman_abs", "random_logit_spearman",
                                                "random_logit_ssim", "random_logit_hog"}));
    EXPECT_FALSE(column(r, "deletion_morf").higher_is_better);
    EXPECT_TRUE(column(r, "deletion_lerf").higher_is_better);
    EXPECT_FALSE(column(r, "road_morf").higher_is_better);
    EXPECT_TRUE(column(r, "road_lerf").higher_is_better);
    for (const auto& method : o.methods) {
        const Explainer ex = method_explainer(method, o.explain);
        const Explanation e = ex(model, x, o.explain.target, ctx);
        EXPECT_TRUE(torch::equal(r.maps.at(method), e.map)) << method;
        CurveOptions co;
        co.target = fixed_target(o.explain.target, e.targets);
        co.steps = 16;
        co.order = RelevanceOrder::LeastFirst;
        const CurveResult c = perturbation_curve(model, x, e.map, co);
        expect_close(column(r, "deletion_lerf").values.at(method), c.areas, 1e-6, method + " deletion_lerf");
        expect_close(r.curves.at(method).curves.at("deletion_lerf"), c.curves, 1e-6, method + " curve");
        RoadOptions ro = o.road;
        ro.target = co.target;
        const RoadResult rr = road(model, x, e.map, ro, ctx);
        expect_close(column(r, "road_morf").values.at(method), rr.areas, 1e-6, method + " road");
        const RandomLogitResult rl = random_logit(model, x, e, ex, o.explain.target, ctx);
        expect_close(column(r, "random_logit_ssim").values.at(method), rl.ssim, 1e-6, method + " random logit");
    }
    // Means and the ranking, best first.
    const MetricColumn& del = column(r, "deletion_morf");
    const auto means = r.means(del);
    const auto rank = r.ranking(del);
    ASSERT_EQ(rank.size(), 2u);
    EXPECT_LE(means.at(rank[0]), means.at(rank[1]));
    EXPECT_NEAR(means.at("saliency"), del.values.at("saliency").mean().item<double>(), 1e-6);
    EXPECT_GT(r.seconds.at("saliency").at("map"), 0.0);
}

TEST(Evaluation, RankingPutsMethodsWithoutANumberLast) {
    EvaluationResult r;
    r.methods = {"a", "b", "c"};
    MetricColumn c{"m", true, "", {{"a", torch::tensor({std::nanf("")})}, {"b", torch::tensor({1.f})},
                                   {"c", torch::tensor({2.f})}}};
    EXPECT_EQ(r.ranking(c), (std::vector<std::string>{"c", "b", "a"}));
    c.higher_is_better = false;
    EXPECT_EQ(r.ranking(c), (std::vector<std::string>{"b", "c", "a"}));
}

TEST(Evaluation, BadOptionsAreRefusedBeforeAnyWork) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    EvaluationOptions o;
    o.methods = {"saliency", "sailency"};
    EXPECT_THROW(evaluate(model, x, o), UsageError);
    o.methods = {"saliency"};
    o.metrics = {Metric::Deletion};
    o.steps = 785;
    expect_error([&] { evaluate(model, x, o); }, "1 to 784 steps");
    o.steps = 10;
    o.metrics = {Metric::Road};
    o.road.percentages = {50, 100};
    expect_error([&] { evaluate(model, x, o); }, "strictly between 0 and 100");
    o.metrics = {Metric::Infidelity};
    o.infidelity.samples = 0;
    expect_error([&] { evaluate(model, x, o); }, "at least 1 sample");
    o.metrics = {Metric::MaxSensitivity};
    o.sensitivity.radius = -1;
    expect_error([&] { evaluate(model, x, o); }, "radius");
    o.metrics = {Metric::RandomLogit};
    o.explain.target.kind = Target::Kind::Similarity;
    o.explain.target.reference_input = x.slice(0, 0, 1);
    expect_error([&] { evaluate(model, x, o); }, "needs a class target");
    o.explain.target = Target{};
    o.explain.target.kind = Target::Kind::Class;
    o.explain.target.class_index = 11;
    expect_error([&] { evaluate(model, x, o); }, "out of range");
    o.metrics.clear();
    EXPECT_THROW(evaluate(model, x, o), UsageError);
    EXPECT_THROW(parse_metric("fidelity"), UsageError);
    EXPECT_EQ(parse_metric("randomization"), Metric::Randomisation);
    EXPECT_EQ(std::string(metric_name(Metric::MaxSensitivity)), "max-sensitivity");
    // A model without parameters cannot be randomised.
    torch::jit::Module m("NoParams");
    m.define(R"(
def forward(self, x):
    return torch.stack([x.mean([1, 2, 3]), x.amax([1, 2, 3])], 1)
)");
    Model none = Model::from_module(m, ModelMeta{});
    none.set_input_shape({1, 28, 28});
    EvaluationOptions r;
    r.methods = {"saliency"};
    r.metrics = {Metric::Randomisation};
    expect_error([&] { evaluate(none, x, r); }, "no parameters to randomise");
}

// On a segmentation output the metrics keep scoring the clean image's region: fixed_target pins
// each image's pixels, so another class (the random-logit check) is scored there too.
TEST(Evaluation, DenseOutputsKeepTheCleanRegion) {
    const at::Tensor x = read_npy(fixture("targets/lraspp_input.npy"));
    Model model = Model::load(fixture("targets/lraspp.pt"));
    model.set_input_shape({x.size(1), x.size(2), x.size(3)});
    const at::Tensor x2 = x.slice(0, 0, 2);
    const at::Tensor predicted = model.forward(x2).argmax(1);
    Target t;  // pred over the region pred
    const Explainer saliency = method_explainer("saliency", ExplainOptions{});
    const Explanation e = saliency(model, x2, t, {});
    const Target fixed = fixed_target(model, x2, t, e.targets);
    ASSERT_EQ(fixed.region.kind, Region::Kind::Mask);
    for (int64_t i = 0; i < 2; ++i)
        EXPECT_TRUE(torch::equal(fixed.region.mask[i], predicted[i] == e.targets[size_t(i)])) << "image " << i;
    // The fixed target explains what the original did.
    expect_close(saliency(model, x2, fixed, {}).map, e.map, 1e-4, "saliency with the fixed region");
    // Another class over the same pixels: no "not predicted anywhere" error.
    const RandomLogitResult r = random_logit(model, x2, e, saliency, t);
    for (int64_t i = 0; i < 2; ++i) {
        EXPECT_NE(r.classes[size_t(i)], e.targets[size_t(i)]);
        EXPECT_TRUE(std::isfinite(r.spearman_abs[i].item<double>()));
    }
    // The scores of a class over a per-image mask are the class's mean over those pixels.
    Target other = fixed;
    other.labels = r.classes;
    const at::Tensor out = model.forward(x2);
    const TargetScorer scorer(model, other, out);
    for (int64_t i = 0; i < 2; ++i) {
        const at::Tensor m = fixed.region.mask[i];
        const double want = out[i][r.classes[size_t(i)]].masked_select(m).mean().item<double>();
        EXPECT_NEAR(scorer.scores(out)[i].item<double>(), want, 1e-5);
    }
}

// An evaluation split by methods (as the ranks of an MPI run split it), sent as bytes and
// merged, is the evaluation of all the methods, bit for bit.
TEST(Evaluation, PartsByMethodMergeIntoTheWholeEvaluation) {
    Model model = load_lenet();
    const at::Tensor x = lenet_input();
    EvaluationOptions o;
    o.methods = {"saliency", "grad-cam", "rise"};
    o.metrics = {Metric::Deletion, Metric::Infidelity, Metric::Randomisation, Metric::RandomLogit};
    o.steps = 8;
    o.explain.attribution.masks = 40;
    RunContext ctx;
    ctx.seed = 3;
    const EvaluationResult whole = evaluate(model, x, o, ctx);
    std::vector<EvaluationResult> parts;
    for (const std::vector<std::string>& share : {std::vector<std::string>{"saliency", "rise"}, {"grad-cam"}}) {
        EvaluationOptions p = o;
        p.methods = share;
        parts.push_back(evaluation_from_bytes(evaluation_bytes(evaluate(model, x, p, ctx))));
    }
    const EvaluationResult merged = merge_evaluations(parts, o.methods);
    EXPECT_EQ(merged.methods, whole.methods);
    EXPECT_EQ(merged.targets, whole.targets);
    ASSERT_EQ(merged.columns.size(), whole.columns.size());
    for (size_t c = 0; c < whole.columns.size(); ++c) {
        EXPECT_EQ(merged.columns[c].name, whole.columns[c].name);
        EXPECT_EQ(merged.columns[c].higher_is_better, whole.columns[c].higher_is_better);
        EXPECT_EQ(merged.columns[c].meaning, whole.columns[c].meaning);
        for (const auto& m : o.methods)
            EXPECT_TRUE(torch::equal(merged.columns[c].values.at(m), whole.columns[c].values.at(m)))
                << whole.columns[c].name << " " << m;
    }
    for (const auto& m : o.methods) {
        EXPECT_TRUE(torch::equal(merged.maps.at(m), whole.maps.at(m))) << m;
        const MethodCurves &a = merged.curves.at(m), &b = whole.curves.at(m);
        EXPECT_EQ(a.cascade_layers, b.cascade_layers);
        ASSERT_EQ(a.curves.size(), b.curves.size());
        for (const auto& [name, t] : b.curves) EXPECT_TRUE(torch::equal(a.curves.at(name), t)) << m << " " << name;
        for (const auto& [name, t] : b.cascade) EXPECT_TRUE(torch::equal(a.cascade.at(name), t)) << m << " " << name;
    }
    expect_error([&] { merge_evaluations(parts, {"saliency", "occlusion"}); }, "no part of the evaluation holds");
    expect_error([&] { evaluation_from_bytes("not a result"); }, "not the bytes of an evaluation result");
}
