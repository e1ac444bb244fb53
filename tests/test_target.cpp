// The shared Target and Baseline (parsing, resolution per image, baseline images) and the
// RunContext's thread scope, each against a plain reference.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <tuple>
#include <opencv2/imgproc.hpp>

#include "convscope/methods/target.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/run_context.hpp"
#include "test_util.hpp"

using namespace convscope;

TEST(Target, ParseAndNameRoundTrip) {
    for (const std::string spec : {"pred", "label", "0", "7", "123"})
        EXPECT_EQ(target_name(parse_target(spec)), spec);
    EXPECT_EQ(parse_target("predicted").kind, Target::Kind::Predicted);
    EXPECT_EQ(parse_target("7").class_index, 7);
    for (const std::string bad : {"", "best", "-1", "3.5", "7x", "99999999999999999999"})
        expect_error([&] { parse_target(bad); }, "bad target '" + bad + "'");
}

TEST(Target, ResolvesEachKindAgainstArgmax) {
    const Model model = load_lenet();  // only similarity targets run it
    torch::manual_seed(5);
    const at::Tensor out = torch::randn({6, 4});
    const at::Tensor arg = out.argmax(1);
    Target pred;
    const auto p = TargetScorer(model, pred, out).classes();
    for (int64_t i = 0; i < 6; ++i) EXPECT_EQ(p[size_t(i)], arg[i].item<int64_t>());
    Target cls;
    cls.kind = Target::Kind::Class;
    cls.class_index = 3;
    EXPECT_EQ(TargetScorer(model, cls, out).classes(), std::vector<int64_t>(6, 3));
    cls.class_index = 4;
    expect_error([&] { TargetScorer(model, cls, out); }, "target class 4 is out of range: the model has 4 classes (0..3)");
    // Labels of a chunk start at `first`.
    Target lab;
    lab.kind = Target::Kind::Label;
    lab.labels = {0, 1, 2, 3, 2, 1, 0, 3};
    check_target(lab, 8);
    EXPECT_EQ(TargetScorer(model, lab, out, 2).classes(), (std::vector<int64_t>{2, 3, 2, 1, 0, 3}));
    lab.labels[5] = 4;
    expect_error([&] { TargetScorer(model, lab, out, 2); }, "label 4 of image 5 is out of range");
    // What check_target finds before the model runs.
    expect_error([&] { check_target(lab, 7); }, "one label per image, but got 8 labels for 7 images");
    lab.labels[1] = -1;
    expect_error([&] { check_target(lab, 8); }, "image 1 has none");
    lab.labels.clear();
    expect_error([&] { check_target(lab, 8); }, "the data has no labels");
    cls.class_index = -2;
    expect_error([&] { check_target(cls, 8); }, "target class -2 is out of range");
}

// The scores of each kind, against their definitions computed here with plain tensor ops.
TEST(Target, ScoresFollowTheirDefinitions) {
    const Model model = load_lenet();
    torch::manual_seed(6);
    Target t = parse_target("2");
    const at::Tensor logits = torch::randn({3, 5});
    for (const std::string s : {"logit", "prob", "sigmoid"}) {
        t.score = parse_score(s);
        const at::Tensor want = s == "logit" ? logits.select(1, 2)
                                : s == "prob" ? torch::softmax(logits, 1).select(1, 2)
                                              : torch::sigmoid(logits.select(1, 2));
        expect_close(TargetScorer(model, t, logits).scores(logits), want, 1e-6, s);
    }
    // Rows scored as other images: image 1's class for every row.
    t = parse_target("pred");
    const TargetScorer by_pred(model, t, logits);
    const int64_t c1 = logits[1].argmax().item<int64_t>();
    expect_close(by_pred.scores(logits, {1, 1, 1}), logits.select(1, c1), 1e-6, "rows");
    // Dense: the mean over a box of the class's probability.
    const at::Tensor dense = torch::randn({2, 3, 6, 8});
    t = parse_target("1");
    t.score = Score::Prob;
    t.region = parse_region("box:2,1,5,4");
    const TargetScorer box(model, t, dense);
    const at::Tensor want = torch::softmax(dense, 1).select(1, 1).slice(1, 1, 4).slice(2, 2, 5).mean({1, 2});
    expect_close(box.scores(dense), want, 1e-6, "box");
    EXPECT_EQ(region_name(t.region), "box:2,1,5,4");
    const at::Tensor mean_logits = dense.slice(2, 1, 4).slice(3, 2, 5).mean({2, 3});
    expect_close(box.class_probs(dense), torch::softmax(mean_logits, 1), 1e-6, "class probs");
    EXPECT_FALSE(box.reads_region_means());  // a mean of probabilities: not linear in the logits
    // Logit scores follow from the region's mean logits: the box's, and the predicted pixels'
    // (rows scored as other images).
    t.score = Score::Logit;
    const TargetScorer box_logit(model, t, dense);
    ASSERT_TRUE(box_logit.reads_region_means());
    auto [s, p] = box_logit.region_mean_scores(mean_logits, {0, 1});
    expect_close(s, mean_logits.select(1, 1), 1e-6, "box logit from the means");
    expect_close(p, torch::softmax(mean_logits, 1), 1e-6, "class probs from the means");
    t = parse_target("pred");
    const TargetScorer pred(model, t, dense);
    const std::vector<int64_t> rows{1, 0, 1};
    const at::Tensor three = dense.index_select(0, torch::tensor(rows, torch::kLong));
    const at::Tensor means =
        (three * pred.region_weights().index_select(0, torch::tensor(rows, torch::kLong)).unsqueeze(1)).sum({2, 3});
    std::tie(s, p) = pred.region_mean_scores(means, rows);
    expect_close(s, pred.scores(three, rows), 1e-6, "pred region logit from the means");
    expect_close(p, pred.class_probs(three, rows), 1e-6, "pred region class probs from the means");
}

// Every class's score at once (feature visualisation), against the same definitions.
TEST(Target, EveryClassScoreFollowsItsDefinition) {
    torch::manual_seed(7);
    const at::Tensor logits = torch::randn({3, 5});
    Target t;
    expect_close(every_class_score(logits, t), logits, 1e-6, "logit");
    t.score = Score::Sigmoid;
    expect_close(every_class_score(logits, t), torch::sigmoid(logits), 1e-6, "sigmoid");
    t.score = Score::Prob;
    expect_close(every_class_score(logits, t), torch::softmax(logits, 1), 1e-6, "prob");
    const at::Tensor dense = torch::randn({2, 4, 6, 8});
    t.region = parse_region("box:1,2,7,5");
    expect_close(every_class_score(dense, t),
                 torch::softmax(dense, 1).slice(2, 2, 5).slice(3, 1, 7).mean({2, 3}), 1e-6, "box, prob");
    t.score = Score::Logit;
    t.region.kind = Region::Kind::All;
    expect_close(every_class_score(dense, t), dense.mean({2, 3}), 1e-6, "all");
    t.region.kind = Region::Kind::Mask;
    t.region.mask = torch::zeros({6, 8}, torch::kBool);
    t.region.mask[0][0] = true;
    t.region.mask[5][7] = true;
    const at::Tensor two = (dense.select(3, 0).select(2, 0) + dense.select(3, 7).select(2, 5)) / 2;
    expect_close(every_class_score(dense, t), two, 1e-6, "mask");
    expect_error([&] { every_class_score(logits, t); }, "needs a dense output");
    expect_error([&] { every_class_score(torch::randn({2, 3, 4}), Target{}); }, "needs an output [N,K]");
    // Similarity: the cosine with the reference, one column.
    const Model model = load_lenet();
    const at::Tensor x = torch::rand({3, 1, 28, 28});
    const at::Tensor ref = unit_reference(model, x.slice(0, 0, 1));
    const at::Tensor out = model.forward(x), r0 = model.forward(x.slice(0, 0, 1))[0];
    Target sim = parse_target("similarity:0");
    const at::Tensor got = every_class_score(out, sim, ref);
    ASSERT_EQ(got.sizes(), (std::vector<int64_t>{3, 1}));
    for (int64_t i = 0; i < 3; ++i)
        EXPECT_NEAR(got[i][0].item<double>(),
                    (out[i] * r0).sum().item<double>() / (out[i].norm() * r0.norm()).item<double>(), 1e-5);
    EXPECT_NEAR(got[0][0].item<double>(), 1.0, 1e-5);
}

TEST(Baseline, ParseAndNameRoundTrip) {
    for (const std::string spec : {"zero", "mean", "blur", "blur:2.5", "0.5", "-1"})
        EXPECT_EQ(baseline_name(parse_baseline(spec)), spec);
    EXPECT_EQ(parse_baseline("0").kind, Baseline::Kind::Zero);
    EXPECT_EQ(parse_baseline("blur:3").value, 3.0);
    for (const std::string bad : {"black", "blur:0", "blur:-1", "blur:x", "nan", "inf", ""})
        expect_error([&] { parse_baseline(bad); }, "bad baseline '" + bad + "'");
    Baseline b;
    b.kind = Baseline::Kind::Constant;
    b.value = std::nan("");
    expect_error([&] { check_baseline(b); }, "finite");
    b.kind = Baseline::Kind::Blur;
    b.value = -1;
    expect_error([&] { check_baseline(b); }, "sigma");
}

TEST(Baseline, ImagesMatchTheirDefinitions) {
    torch::manual_seed(2);
    const at::Tensor x = torch::rand({2, 3, 9, 13});
    EXPECT_TRUE(torch::equal(baseline_images(x, parse_baseline("zero"), 8), torch::zeros_like(x)));
    EXPECT_TRUE(torch::equal(baseline_images(x, parse_baseline("-1"), 8), torch::full_like(x, -1.0)));
    const at::Tensor mean = baseline_images(x, parse_baseline("mean"), 8);
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 3; ++c)
            EXPECT_NEAR(mean[n][c][4][6].item<double>(), x[n][c].mean().item<double>(), 1e-6);
    // Blur with the automatic sigma max(H, W) / divisor: OpenCV's Gaussian with replicated edges,
    // radius ceil(3 sigma).
    const double sigma = 13.0 / 5.0;
    const at::Tensor blur = baseline_images(x, parse_baseline("blur"), 5.0);
    const int r = static_cast<int>(std::ceil(3 * sigma));
    for (int64_t n = 0; n < 2; ++n)
        for (int64_t c = 0; c < 3; ++c) {
            at::Tensor plane = x[n][c].contiguous();
            cv::Mat src(9, 13, CV_32F, plane.data_ptr<float>()), dst;
            cv::GaussianBlur(src, dst, cv::Size(2 * r + 1, 2 * r + 1), sigma, sigma, cv::BORDER_REPLICATE);
            expect_close(blur[n][c], torch::from_blob(dst.ptr<float>(), {9, 13}, torch::kFloat).clone(), 1e-5,
                         "blur");
        }
}

TEST(RunContext, ThreadScopeSetsAndRestores) {
    const int before = at::get_num_threads();
    {
        RunContext ctx;
        ctx.threads = 1;
        const ThreadScope scope(ctx);
        EXPECT_EQ(at::get_num_threads(), 1);
    }
    EXPECT_EQ(at::get_num_threads(), before);
    {
        const ThreadScope scope(RunContext{});  // 0: the process's setting stays
        EXPECT_EQ(at::get_num_threads(), before);
    }
}
