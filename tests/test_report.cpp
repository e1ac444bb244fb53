// The HTML report: its inline data against references computed here (accuracy and the examples
// from plain forward passes), pictures beside the page, and bad options.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/app/report.hpp"
#include "convscope/methods/explain.hpp"
#include "convscope/methods/faithfulness.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string slurp(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream s;
    s << f.rdbuf();
    return s.str();
}

// The JSON the page carries in `window.REPORT = {...};`.
json inline_data(const std::string& html) {
    const std::string key = "window.REPORT = ";
    const size_t a = html.find(key);
    EXPECT_NE(a, std::string::npos);
    const size_t b = html.find(";\n", a);
    std::string text = html.substr(a + key.size(), b - a - key.size());
    for (size_t at; (at = text.find("<\\/")) != std::string::npos;) text.replace(at, 3, "</");
    return json::parse(text);
}

ReportOptions small() {
    ReportOptions o;
    o.eval_items = 300;
    o.examples = 2;
    o.scan_items = 100;
    o.patch_channels = 2;
    o.vis_channels = 2;
    o.feature_vis_steps = 4;
    o.map_items = 80;
    o.map_iterations = 60;
    o.attributions = {"saliency", "grad-cam"};
    o.trust_items = 3;
    return o;
}

TEST(Report, DataMatchesPlainForwardPassesAndPicturesExist) {
    TempDir tmp;
    Model model = load_lenet();
    const Dataset data = Dataset::open("fashion-mnist:test");
    OutputDir out(tmp / "r");
    int calls = 0;
    double last = -1;
    bool monotone = true;
    const ReportResult r = write_report(model, data, out, small(), [&](double f) {
        monotone = monotone && f >= last - 1e-12;
        last = f;
        ++calls;
        return true;
    });
    EXPECT_TRUE(monotone);
    EXPECT_DOUBLE_EQ(last, 1.0);
    EXPECT_GT(calls, 5);

    // Reference: predictions of the first 300 items, one batch.
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < 300; ++i) idx.push_back(i);
    const at::Tensor pred = model.forward(data.batch(idx, data.preprocess_for({1, 28, 28}, {}, {}))).argmax(1);
    int64_t right = 0;
    std::vector<int64_t> correct, wrong;
    for (int64_t i = 0; i < 300; ++i) {
        const bool ok = pred[i].item<int64_t>() == data.label(i);
        right += ok;
        if (ok && correct.size() < 2) correct.push_back(i);
        if (!ok && wrong.size() < 2) wrong.push_back(i);
    }
    EXPECT_DOUBLE_EQ(r.accuracy, double(right) / 300.0);
    EXPECT_EQ(r.correct, correct);
    EXPECT_EQ(r.wrong, wrong);
    EXPECT_EQ(r.layers, (std::vector<std::string>{"conv1", "conv2"}));
    EXPECT_EQ(r.map_points, 80);

    const std::string html = slurp(r.index_html);
    const json R = inline_data(html);
    EXPECT_DOUBLE_EQ(R["accuracy"].get<double>(), r.accuracy);
    ASSERT_EQ(R["examples"].size(), 4u);
    for (const auto& e : R["examples"]) {
        const int64_t i = e["index"];
        EXPECT_EQ(e["predicted"].get<int64_t>(), pred[i].item<int64_t>());
        EXPECT_EQ(e["label"].get<int64_t>(), data.label(i));
        EXPECT_EQ(e["activations"].size(), 2u);
        EXPECT_EQ(e["attributions"].size(), 2u);
        EXPECT_TRUE(e["occlusion"].contains("confounders"));
    }
    EXPECT_EQ(R["map"]["x"].size(), 80u);
    // The map's thumbnails: items 0..79 on sheet 0 (loaded by the page when hovered).
    EXPECT_EQ(R["map"]["sprite"]["sheets"], json::array({0}));
    EXPECT_TRUE(fs::exists(tmp.path / "r" / (R["map"]["sprite"]["folder"].get<std::string>() + "/0.png")));
    // Which map to trust: occlusion and the two methods on the first 3 items; saliency's
    // deletion area as the metric computes it from saliency's maps directly.
    const json& T = R["trust"];
    EXPECT_EQ(T["methods"], json({"occlusion", "saliency", "grad-cam"}));
    std::vector<std::string> rows;
    for (const auto& row : T["rows"]) rows.push_back(row["metric"]);
    EXPECT_EQ(rows.front(), "deletion_morf");
    EXPECT_NE(std::find(rows.begin(), rows.end(), "randomisation_spearman_abs"), rows.end());
    EXPECT_NE(std::find(rows.begin(), rows.end(), "random_logit_ssim"), rows.end());
    {
        std::vector<int64_t> first{0, 1, 2};
        const at::Tensor x = data.batch(first, data.preprocess_for({1, 28, 28}, {}, {}));
        Target t;
        t.score = Score::Prob;
        const Explanation e = method_explainer("saliency", ExplainOptions{})(model, x, t, {});
        CurveOptions co;
        co.target = fixed_target(t, e.targets);
        co.steps = 20;
        const double area = perturbation_curve(model, x, e.map, co).areas.mean().item<double>();
        EXPECT_NEAR(T["rows"][0]["mean"]["saliency"].get<double>(), area, 1e-5);
    }
    EXPECT_EQ(T["curves"].size(), 2u);
    EXPECT_TRUE(T.contains("cascade"));
    EXPECT_EQ(R["patches"][1]["channels"][0]["entries"].size(), 9u);
    // Every picture the page names is a PNG beside it.
    const std::regex src("\"(img/[^\"]+\\.png)\"");
    int pictures = 0;
    for (auto it = std::sregex_iterator(html.begin(), html.end(), src); it != std::sregex_iterator(); ++it) {
        const std::string p = (tmp.path / "r" / (*it)[1].str()).string();
        ASSERT_TRUE(fs::exists(p)) << p;
        EXPECT_EQ(slurp(p).substr(1, 3), "PNG") << p;
        ++pictures;
    }
    EXPECT_GT(pictures, 20);
    // Self-contained: the scripts are inline, nothing is fetched.
    EXPECT_EQ(html.find("<script src"), std::string::npos);
    EXPECT_EQ(html.find("fetch("), std::string::npos);
    EXPECT_NE(html.find("class MapView"), std::string::npos);
}

TEST(Report, ScriptEndingStringsInDataAreEscaped) {
    TempDir tmp;
    Model model = load_lenet();
    OutputDir out(tmp / "r");
    ReportOptions o = small();
    o.title = "a </script><script>alert(1)</script> title";
    o.map_items = 0;
    o.vis_channels = 0;
    o.attributions = {};
    const ReportResult r = write_report(model, Dataset::open("fashion-mnist:test"), out, o);
    const std::string html = slurp(r.index_html);
    EXPECT_EQ(html.find("</script><script>alert"), std::string::npos);
    EXPECT_EQ(inline_data(html)["title"], o.title);
    EXPECT_TRUE(inline_data(html)["map"].is_null());
}

TEST(Report, BadOptionsAreRefused) {
    TempDir tmp;
    Model model = load_lenet();
    const Dataset data = Dataset::open("fashion-mnist:test");
    OutputDir out(tmp / "r");
    ReportOptions o = small();
    o.map_items = 5;
    expect_error([&] { write_report(model, data, out, o); }, "8..70000");
    o = small();
    o.attributions = {"saliency", "nope"};
    expect_error([&] { write_report(model, data, out, o); }, "grad-cam");
    o = small();
    o.layers = {"conv7"};
    expect_error([&] { write_report(model, data, out, o); }, "unknown layer 'conv7'");
    o = small();
    o.examples = 0;
    expect_error([&] { write_report(model, data, out, o); }, "at least 1");
    EXPECT_FALSE(fs::exists(tmp / "r/index.html"));
}

}  // namespace
TEST(Report, PlanFollowsTheModelsCostAndKeepsExplicitSettings) {
    const Dataset data = Dataset::open("fashion-mnist:test");
    Model lenet = load_lenet();
    ReportOptions o;
    // The default budget: the item counts are what it pays for at the measured cost, up to the
    // caps (the measured cost depends on the machine and the build, so only through forward_ms).
    ReportPlan p = plan_report(lenet, data, {"conv1", "conv2"}, o);
    EXPECT_GT(p.forward_ms, 0);
    EXPECT_NEAR(double(p.eval_items),
                std::clamp(std::floor(0.08 * o.budget_seconds / (p.forward_ms / 1000.0)), 1.0, 10000.0), 1.0);
    // A budget no machine runs short of: every automatic setting at its cap.
    o.budget_seconds = 1e6;
    p = plan_report(lenet, data, {"conv1", "conv2"}, o);
    EXPECT_EQ(p.eval_items, 10000);
    EXPECT_EQ(p.scan_items, 2000);
    EXPECT_EQ(p.map_items, 2000);
    EXPECT_EQ(p.feature_vis_steps, 128);
    EXPECT_EQ(p.attribution_steps, 32);
    EXPECT_EQ(p.occlusion_patch, 4);   // 28 / 7
    EXPECT_EQ(p.occlusion_stride, 2);  // half the patch
    EXPECT_EQ(p.feature_vis_size, (std::vector<int64_t>{0, 0}));  // 28 px: the input size
    // The same model with a budget of a millisecond: every automatic setting at its floor; the
    // item counts are what that budget pays for at the measured cost (at least 1, or 8 points).
    o.budget_seconds = 1e-3;
    p = plan_report(lenet, data, {"conv1", "conv2"}, o);
    EXPECT_LT(p.eval_items, 10000);
    EXPECT_NEAR(double(p.eval_items), std::max(1.0, std::floor(0.08 * 1e-3 / (p.forward_ms / 1000.0))), 1.0);
    EXPECT_GE(p.map_items, 8);
    EXPECT_EQ(p.feature_vis_steps, 32);
    EXPECT_EQ(p.attribution_steps, 8);
    EXPECT_EQ(p.occlusion_stride, 4);  // at most the patch
    // What is given explicitly is kept.
    o.eval_items = 123;
    o.feature_vis_steps = 7;
    o.occlusion_stride = 3;
    o.attribution_steps = 5;
    o.map_items = 0;
    o.feature_vis_size = 20;
    p = plan_report(lenet, data, {"conv1"}, o);
    EXPECT_EQ(p.eval_items, 123);
    EXPECT_EQ(p.feature_vis_steps, 7);
    EXPECT_EQ(p.occlusion_stride, 3);
    EXPECT_EQ(p.attribution_steps, 5);
    EXPECT_EQ(p.map_items, 0);
    EXPECT_EQ(p.feature_vis_size, (std::vector<int64_t>{20}));
}

// A segmentation model (torchvision's LR-ASPP, a dict output): no accuracy, the first items as
// examples, each explaining its main class (recomputed here) over the pixels predicted as it.
TEST(Report, SegmentationExamplesExplainTheirMainClassRegion) {
    TempDir tmp;
    const at::Tensor x = read_npy(fixture("targets/lraspp_input.npy"));
    write_npy(tmp / "data.npy", torch::cat({x, x.flip(3), x.flip(2), x.flip({2, 3}), x, x.flip(3)}));
    Model model = Model::load(fixture("targets/lraspp.pt"));
    model.set_input_shape({3, 64, 64});
    const Dataset data = Dataset::open(tmp / "data.npy");
    ReportOptions o = small();
    o.examples = 2;
    o.scan_items = 6;
    o.patch_channels = 1;
    o.vis_channels = 0;
    o.map_items = 0;
    o.max_filter_layers = 1;
    o.max_filters = 8;
    o.occlusion_stride = 16;
    o.layers = {"backbone.0"};
    o.attributions = {"saliency"};
    OutputDir out(tmp / "r");
    const ReportResult r = write_report(model, data, out, o);
    const json R = inline_data(slurp(r.index_html));
    EXPECT_TRUE(R["accuracy"].is_null());
    EXPECT_TRUE(R["dense"].get<bool>());
    ASSERT_EQ(R["examples"].size(), 4u);
    const at::Tensor outs = model.forward(data.batch({0, 1, 2, 3}, data.preprocess_for({3, 64, 64}, {}, {})));
    for (int64_t n = 0; n < 4; ++n) {
        const json& e = R["examples"][size_t(n)];
        EXPECT_EQ(e["index"].get<int64_t>(), n);
        const at::Tensor counts = torch::bincount(outs[n].argmax(0).reshape({-1}), {}, outs.size(1));
        const int64_t c = counts.argmax().item<int64_t>();  // no class is named background here
        EXPECT_EQ(e["predicted"].get<int64_t>(), c);
        EXPECT_NEAR(e["prob"].get<double>(), counts[c].item<double>() / 4096.0, 1e-6);
        ASSERT_TRUE(fs::exists(tmp.path / "r" / e["segmentation"].get<std::string>()));
        EXPECT_EQ(e["attributions"][0]["target_name"].get<std::string>(), e["predicted_name"].get<std::string>());
        EXPECT_TRUE(e["occlusion"].contains("max_drop"));
    }
}

TEST(Report, LargeInputsVisualiseFeaturesAt128PixelsWhereTheLayerAllows) {
    Model m = Model::load(fixture("resnet_small_scripted.pt"));
    m.set_input_shape({3, 160, 160});  // fully convolutional up to its pooling
    const Dataset data = Dataset::open(fixture("resnet_small_scripted/input.npy"));
    ReportOptions o;
    const ReportPlan p = plan_report(m, data, {"conv1", "layer2"}, o);
    EXPECT_EQ(p.feature_vis_size, (std::vector<int64_t>{128, 128}));
}

}  // namespace convscope
