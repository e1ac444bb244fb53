// Models with several outputs and targets beyond one class logit, against PyTorch in Python
// (tests/fixtures/target_fixtures.py): torchvision's scripted LR-ASPP and FCN-ResNet50 (dict
// outputs) with region targets, an embedding model with similarity and sigmoid targets, and a
// model returning a tuple. Occlusion (full and incremental) and saliency equal brute force.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <deque>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convscope/app/explorer.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/methods/feature_vis.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/methods/target.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

std::string target_file(const std::string& name) { return fixture("targets/" + name); }

nlohmann::json cases() {
    std::ifstream f(target_file("cases.json"));
    return nlohmann::json::parse(f);
}

Model load_with_input(const std::string& file, const at::Tensor& x) {
    Model m = Model::load(target_file(file));
    m.set_input_shape({x.size(1), x.size(2), x.size(3)});
    return m;
}

// The case's target as the command line would give it (a similarity reference: item 2).
Target target_of(const nlohmann::json& c, const at::Tensor& x) {
    Target t = parse_target(c["target"].get<std::string>());
    t.score = parse_score(c["score"].get<std::string>());
    t.region = parse_region(c["region"].get<std::string>());
    if (t.kind == Target::Kind::Similarity) t.reference_input = x.slice(0, 2, 3);
    return t;
}

}  // namespace

TEST(TargetOutputs, OcclusionAndSaliencyEqualPyTorchForEveryKindOfTarget) {
    const nlohmann::json all = cases();
    for (const auto& [name, c] : all.items()) {
        SCOPED_TRACE(name);
        const at::Tensor x = read_npy(target_file(c["input"].get<std::string>()));
        Model model = load_with_input(c["model"].get<std::string>(), x);
        if (c["output"] != "out") model.select_output(c["output"].get<std::string>());
        const Target target = target_of(c, x);
        const std::vector<int64_t> classes = c["classes"].get<std::vector<int64_t>>();

        OcclusionOptions o;
        o.patch_h = o.patch_w = c["patch"].get<int64_t>();
        o.stride_y = o.stride_x = c["stride"].get<int64_t>();
        o.target = target;
        const at::Tensor coarse = read_npy(target_file(name + "_coarse.npy"));
        for (OcclusionMode mode : {OcclusionMode::Full, OcclusionMode::Incremental}) {
            SCOPED_TRACE(occlusion_mode_name(mode));
            o.mode = mode;
            const OcclusionResult r = occlusion(model, x, o);
            EXPECT_EQ(r.targets, classes);
            expect_close(r.coarse, coarse, 1e-4, "coarse drops");
            expect_close(r.clean_score, read_npy(target_file(name + "_scores.npy")), 1e-5, "clean scores");
        }

        AttributionOptions ao;
        ao.method = AttributionMethod::Saliency;
        ao.target = target;
        const AttributionResult a = attribute(model, x, ao);
        EXPECT_EQ(a.targets, classes);
        expect_close(a.attributions, read_npy(target_file(name + "_saliency.npy")), 1e-3, "saliency");
        expect_close(a.scores, read_npy(target_file(name + "_scores.npy")), 1e-5, "scores");
    }
}

TEST(TargetOutputs, DictAndTupleOutputsAreListedAndChosen) {
    const at::Tensor x = read_npy(target_file("fcn_input.npy"));
    Model fcn = load_with_input("fcn.pt", x);
    EXPECT_EQ(fcn.output_name(), "out");
    const auto outs = fcn.outputs();
    ASSERT_EQ(outs.size(), 2u);
    EXPECT_EQ(outs[0].name, "out");
    EXPECT_EQ(outs[0].shape, (std::vector<int64_t>{3, 32, 32}));
    EXPECT_TRUE(outs[0].chosen);
    EXPECT_EQ(outs[1].name, "aux");
    EXPECT_FALSE(outs[1].chosen);
    EXPECT_EQ(fcn.num_classes(), 3);
    // The auxiliary head is not part of "out": cut from the graph and the layer table.
    const auto has_layer = [](const Model& m, const std::string& n) {
        for (const auto& l : m.layers())
            if (l.name == n) return true;
        return false;
    };
    EXPECT_FALSE(has_layer(fcn, "aux_classifier.4"));
    fcn.select_output("aux");
    EXPECT_TRUE(has_layer(fcn, "aux_classifier.4"));
    EXPECT_FALSE(has_layer(fcn, "classifier.4"));
    EXPECT_TRUE(fcn.outputs()[1].chosen);
    expect_error([&] { fcn.select_output("logits"); }, "has no output 'logits': its outputs are out, aux");
    EXPECT_EQ(fcn.output_name(), "aux");  // a failed choice keeps the last one

    const at::Tensor t = read_npy(target_file("tuple_input.npy"));
    Model tup = load_with_input("tuple.pt", t);
    EXPECT_EQ(tup.output_name(), "0");
    expect_close(tup.forward(t), read_npy(target_file("tuple_out0.npy")), 1e-5, "output 0");
    expect_close(tup.forward_taps(t, {"conv"}).output, read_npy(target_file("tuple_out0.npy")), 1e-5, "tapped 0");
    tup.select_output("1");
    expect_close(tup.forward(t), read_npy(target_file("tuple_out1.npy")), 1e-5, "output 1");
    const auto g = tup.gradients(t, [](const TapResult& r) { return r.output.sum(); });
    EXPECT_EQ(g.forward.output.sizes(), (std::vector<int64_t>{2, 6}));
    expect_error([&] { tup.select_output("2"); }, "its outputs are 0, 1");
    expect_error([&] { tup.select_output("out"); }, "name an entry by its position");
}

TEST(TargetOutputs, BadTargetsOnDenseAndVectorOutputsSayWhatToDo) {
    const at::Tensor x = read_npy(target_file("lraspp_input.npy"));
    Model model = load_with_input("lraspp.pt", x);
    const at::Tensor out = model.forward(x);  // [2,4,64,64]
    Target t;
    t.region = parse_region("box:0,0,65,10");
    expect_error([&] { TargetScorer(model, t, out); }, "is outside the output, which is 64 wide and 64 high");
    // A class the clean prediction assigns to no pixel.
    const at::Tensor predicted = out.argmax(1);
    int64_t absent = -1;
    for (int64_t k = 0; k < 4 && absent < 0; ++k)
        if (!(predicted[0] == k).any().item<bool>()) absent = k;
    if (absent >= 0) {
        t = parse_target(std::to_string(absent));
        expect_error([&] { TargetScorer(model, t, out); }, "is not predicted anywhere in image 0");
    }
    t = parse_target("7");
    expect_error([&] { TargetScorer(model, t, out); }, "target class 7 is out of range: the model has 4 classes");
    t = parse_target("label");
    t.labels = {0, 1};
    expect_error([&] { TargetScorer(model, t, out); }, "takes one class per image");
    TempDir dir;
    const std::string mask = dir / "mask.png";
    write_png(mask, cv::Mat(10, 20, CV_8UC3, cv::Scalar(255, 255, 255)));
    t = Target{};
    t.region = parse_region("mask:" + mask);
    expect_error([&] { TargetScorer(model, t, out); }, "is 20x10 but the output is 64x64");
    // A region on a classifier, a class target on an output without a class axis.
    const at::Tensor logits = torch::randn({2, 5});
    t = Target{};
    t.region = parse_region("all");
    expect_error([&] { TargetScorer(model, t, logits); }, "needs a dense output [N,K,H,W]");
    expect_error([&] { TargetScorer(model, Target{}, torch::randn({2, 3, 5})); }, "a class target needs an output [N,K]");
    // Similarity with a reference whose output does not match.
    t = parse_target("similarity:ref");
    t.reference_input = x.slice(0, 0, 1);
    expect_error([&] { TargetScorer(model, t, logits); }, "the reference's output has");
    t.reference_input = at::Tensor();
    expect_error([&] { check_target(t, 2); }, "has no reference image");
    // The approximate occlusion's correction follows class logits.
    OcclusionOptions o;
    o.mode = OcclusionMode::Approximate;
    o.patch_h = o.patch_w = 16;
    o.stride_y = o.stride_x = 16;
    expect_error([&] { occlusion(model, x, o); }, "use --mode incremental");
    for (const std::string bad : {"box:1,2,3", "box:5,5,5,9", "box:-1,0,4,4", "square", "mask:"})
        EXPECT_THROW(parse_region(bad), UsageError) << bad;
}

// Feature visualisation with the targets that need no clean image: the image most like a
// reference (cosine similarity, on the embedding model) and a class's mean probability over a
// box of a segmentation output (LR-ASPP). The reported objective is recomputed here from the
// model's outputs by the targets' definitions, and the optimisation raises it.
TEST(TargetOutputs, FeatureVisualisationTakesSimilarityAndRegionTargets) {
    const at::Tensor ex = read_npy(target_file("embed_input.npy"));
    Model embed = load_with_input("embed.pt", ex);
    FeatureVisOptions o;
    o.objective = FeatureVisOptions::Objective::Similarity;
    o.units = {0};
    o.steps = 40;
    o.learning_rate = 0.1;
    o.target.reference_input = ex.slice(0, 1, 2);
    const FeatureVisResult r = feature_vis(embed, o);
    const at::Tensor a = embed.forward(r.images)[0], b = embed.forward(o.target.reference_input)[0];
    EXPECT_NEAR(r.activation[0].item<double>(), ((a * b).sum() / (a.norm() * b.norm())).item<double>(), 1e-5);
    EXPECT_GT(r.activation[0].item<double>(), r.initial_activation[0].item<double>() + 0.05);
    o.units = {1};
    expect_error([&] { feature_vis(embed, o); }, "one unit, 0");

    const at::Tensor lx = read_npy(target_file("lraspp_input.npy"));
    Model seg = load_with_input("lraspp.pt", lx);
    FeatureVisOptions c;
    c.objective = FeatureVisOptions::Objective::Class;
    c.units = {3};
    c.steps = 4;
    c.learning_rate = 0.1;
    c.target.score = Score::Prob;
    c.target.region = parse_region("box:8,8,40,24");
    const FeatureVisResult cr = feature_vis(seg, c);
    const at::Tensor p = torch::softmax(seg.forward(cr.images), 1).select(1, 3).slice(1, 8, 24).slice(2, 8, 40);
    EXPECT_NEAR(cr.activation[0].item<double>(), p.mean().item<double>(), 1e-5);
    EXPECT_GT(cr.activation[0].item<double>(), cr.initial_activation[0].item<double>());
    c.target.region = parse_region("box:8,8,80,24");
    expect_error([&] { feature_vis(seg, c); }, "is outside the output");
}

namespace {
// The 4-connected pixels of pred [H,W] with pred's value at (y, x), by breadth-first search.
at::Tensor component_at(const at::Tensor& pred, int64_t y, int64_t x) {
    const int64_t h = pred.size(0), w = pred.size(1), c = pred[y][x].item<int64_t>();
    at::Tensor in = torch::zeros({h, w}, torch::kBool);
    std::deque<std::pair<int64_t, int64_t>> todo{{y, x}};
    in[y][x] = true;
    while (!todo.empty()) {
        const auto [py, px] = todo.front();
        todo.pop_front();
        const int64_t ny[4] = {py - 1, py + 1, py, py}, nx[4] = {px, px, px - 1, px + 1};
        for (int k = 0; k < 4; ++k) {
            if (ny[k] < 0 || ny[k] >= h || nx[k] < 0 || nx[k] >= w) continue;
            if (in[ny[k]][nx[k]].item<bool>() || pred[ny[k]][nx[k]].item<int64_t>() != c) continue;
            in[ny[k]][nx[k]] = true;
            todo.emplace_back(ny[k], nx[k]);
        }
    }
    return in;
}
}  // namespace

// The explorer on a segmentation model: the live answer is the pixel share of each class and the
// predicted classes; a click at an output pixel explains the connected region of the class
// there, by the same definitions as the library (brute-force region and mean logit here).
TEST(TargetOutputs, ExplorerExplainsAClickedRegionOfASegmentation) {
    TempDir tmp;
    const at::Tensor x = read_npy(target_file("lraspp_input.npy"));
    ExplorerOptions eo;
    eo.cache_dir = tmp / "cache";
    Explorer ex(load_with_input("lraspp.pt", x), Dataset::open(target_file("lraspp_input.npy")), eo);
    const nlohmann::json live = ex.activations("d1", {});
    const at::Tensor out = ex.model().forward(x.slice(0, 1, 2))[0];  // [K,64,64]
    const at::Tensor pred = out.argmax(0);
    const nlohmann::json& o = live["output"];
    ASSERT_TRUE(o.value("dense", false));
    EXPECT_EQ(o["size"], nlohmann::json({64, 64}));
    const at::Tensor share = torch::bincount(pred.reshape({-1}), {}, out.size(0)).to(torch::kFloat) / 4096.0;
    for (int64_t c = 0; c < out.size(0); ++c) EXPECT_NEAR(o["probs"][c].get<double>(), share[c].item<double>(), 1e-6);
    EXPECT_EQ(o["segmentation"].get<std::string>().rfind("data:image/png;base64,", 0), 0u);

    // A pixel of the least frequent predicted class: a small region, not the whole image.
    const int64_t rare = torch::where(share > 0, share, torch::full_like(share, 2.0)).argmin().item<int64_t>();
    const at::Tensor where = (pred == rare).nonzero()[0];
    const int64_t y = where[0].item<int64_t>(), xx = where[1].item<int64_t>();
    const at::Tensor region = component_at(pred, y, xx);
    const nlohmann::json r = ex.run_job({{"kind", "attribution"}, {"image", "d1"}, {"method", "saliency"}, {"at", {y, xx}}});
    EXPECT_EQ(r["target"].get<int64_t>(), rare);
    EXPECT_EQ(r["region_pixels"].get<int64_t>(), region.sum().item<int64_t>());
    EXPECT_NEAR(r["score"].get<double>(), out[rare].masked_select(region).mean().item<double>(), 1e-4);
    EXPECT_EQ(r["segmentation"].get<std::string>().rfind("data:image/png;base64,", 0), 0u);

    expect_error([&] { ex.run_job({{"kind", "occlusion"}, {"image", "d1"}, {"at", {64, 0}}}); }, "is outside the output");
    expect_error([&] { ex.run_job({{"kind", "occlusion"}, {"image", "d1"}, {"at", {1}}}); }, "must be [y, x]");
    expect_error([&] { ex.run_job({{"kind", "occlusion"}, {"image", "d1"}, {"region", "mask:x.png"}}); },
                 "cannot name a mask file");
    expect_error([&] { ex.run_job({{"kind", "occlusion"}, {"image", "d1"}, {"target", "similarity:0"}}); },
                 "must be pred or a class number");
    Explorer classifier(load_lenet(), Dataset::open("fashion-mnist:test"), eo);
    expect_error([&] { classifier.run_job({{"kind", "occlusion"}, {"image", "d1"}, {"at", {1, 1}}}); },
                 "leave \"at\" out");
}
