// Model runtime against PyTorch: layer tables, taps and gradients of fixture models made in
// Python (tests/fixtures/make_fixtures.py), receptive fields against hand-derived values, and
// the clear errors for bad model files.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;
namespace fs = std::filesystem;

namespace {

nlohmann::json layers_json(const std::string& model) {
    return nlohmann::json::parse(read_file(fixture(model + "/layers.json")));
}

Model load_fixture(const std::string& model) {
    Model m = Model::load(fixture(model + ".pt"));
    auto j = layers_json(model);
    m.set_input_shape(j["input_shape"].get<std::vector<int64_t>>());
    return m;
}

at::Tensor scalar_of_targets(const TapResult& r, const std::vector<int64_t>& targets) {
    at::Tensor s = torch::zeros({});
    for (size_t n = 0; n < targets.size(); ++n) s = s + r.output[static_cast<int64_t>(n)][targets[n]];
    return s;
}

class FixtureModel : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureModel, LayerTableMatchesPyTorch) {
    const std::string name = GetParam();
    Model m = load_fixture(name);
    auto j = layers_json(name);
    std::map<std::string, nlohmann::json> ref;
    for (const auto& l : j["layers"]) ref[l["name"].get<std::string>()] = l;
    const auto& layers = m.layers();
    ASSERT_EQ(layers.size(), ref.size()) << "every module that computes something is a layer";
    for (const auto& l : layers) {
        ASSERT_TRUE(ref.count(l.name)) << "unexpected layer " << l.name;
        const auto& r = ref[l.name];
        EXPECT_EQ(l.type, r["type"].get<std::string>()) << l.name;
        EXPECT_EQ(l.output_shape, r["output_shape"].get<std::vector<int64_t>>()) << l.name;
        EXPECT_EQ(l.num_params, r["num_params"].get<int64_t>()) << l.name;
    }
    EXPECT_EQ(m.num_classes(), j["num_classes"].get<int64_t>());
}

TEST_P(FixtureModel, TapsMatchPyTorch) {
    const std::string name = GetParam();
    Model m = load_fixture(name);
    auto input = read_npy(fixture(name + "/input.npy"));
    std::vector<std::string> names;
    for (const auto& l : m.layers()) names.push_back(l.name);
    auto r = m.forward_taps(input, names);
    expect_close(r.output, read_npy(fixture(name + "/output.npy")), 1e-5, "output");
    for (const auto& n : names) {
        const std::string path = fixture(name + "/act/" + n + ".npy");
        ASSERT_TRUE(fs::exists(path)) << path;
        expect_close(r.taps.at(n), read_npy(path), 1e-5, n);
    }
    // The plain forward gives the same output.
    expect_close(m.forward(input), r.output, 1e-6, "forward");
}

TEST_P(FixtureModel, GradientsMatchPyTorch) {
    const std::string name = GetParam();
    Model m = load_fixture(name);
    auto j = layers_json(name);
    auto targets = j["targets"].get<std::vector<int64_t>>();
    auto input = read_npy(fixture(name + "/input.npy"));
    std::vector<std::string> grad_layers;
    for (const auto& entry : fs::directory_iterator(fixture(name + "/grad"))) {
        std::string file = entry.path().filename().string();
        grad_layers.push_back(file.substr(0, file.size() - 4));
    }
    ASSERT_FALSE(grad_layers.empty());
    auto g = m.gradients(
        input, [&](const TapResult& r) { return scalar_of_targets(r, targets); }, grad_layers);
    expect_close(g.input_grad, read_npy(fixture(name + "/grad_input.npy")), 1e-5, "input grad");
    for (const auto& n : grad_layers)
        expect_close(g.tap_grads.at(n), read_npy(fixture(name + "/grad/" + n + ".npy")), 1e-5, n);
    // Taps returned by a gradient run equal those of a plain run.
    auto plain = m.forward_taps(input, grad_layers);
    for (const auto& n : grad_layers) expect_close(g.forward.taps.at(n), plain.taps.at(n), 1e-6, n);
}

// Plain forward passes run the inference copy (frozen, BatchNorm folded, MKLDNN): its outputs
// are PyTorch's, it follows in-place writes to the parameters and buffers (the copy is rebuilt),
// and turned off the module's own forward runs.
TEST_P(FixtureModel, ForwardRunsTheInferenceCopyAndFollowsWrites) {
    const std::string name = GetParam();
    Model m = load_fixture(name);
    const auto input = read_npy(fixture(name + "/input.npy"));
    EXPECT_EQ(m.inference_note(), "not yet run");
    expect_close(m.forward(input), read_npy(fixture(name + "/output.npy")), 1e-5, "output");
    EXPECT_EQ(m.inference_note(), "the inference copy") << name;
    expect_close(m.forward(input), read_npy(fixture(name + "/output.npy")), 1e-5, "output again");
    // Another batch size (a new input shape: checked again).
    expect_close(m.forward(input.slice(0, 0, 1)), read_npy(fixture(name + "/output.npy")).slice(0, 0, 1), 1e-5,
                 "one row");

    // Every parameter and BatchNorm statistic written in place: the output follows, as the
    // analysed graph (which reads the module's values) computes it.
    const at::Tensor before = m.forward(input);
    {
        torch::NoGradGuard no_grad;
        for (auto p : m.module().parameters()) p.mul_(-0.5).add_(0.01);
        for (auto b : m.module().buffers())
            if (b.is_floating_point()) b.mul_(1.5).add_(0.2);
    }
    const at::Tensor after = m.forward(input);
    expect_close(after, m.forward_taps(input, {}).output, 1e-5, "after the writes");
    EXPECT_GT((after - before).abs().max().item<double>(), 1e-3) << name;
    EXPECT_EQ(m.inference_note(), "the inference copy");

    // A copy keeps the setting; turned off, the module's own forward gives the same values.
    m.set_inference_copy(false);
    EXPECT_NE(m.inference_note().find("turned off"), std::string::npos);
    expect_close(m.forward(input), after, 1e-5, "own forward");
    EXPECT_NE(m.copy().inference_note().find("turned off"), std::string::npos);
}

// Gradients run a channels-last copy of the module: contiguous results equal to PyTorch's (above)
// and to the module's own, and a weight written in place (one layer, as a randomisation step
// does) is followed.
TEST_P(FixtureModel, GradientsRunAChannelsLastCopyAndFollowWrites) {
    const std::string name = GetParam();
    Model m = load_fixture(name);
    const auto targets = layers_json(name)["targets"].get<std::vector<int64_t>>();
    const auto input = read_npy(fixture(name + "/input.npy"));
    const auto scalar = [&](const TapResult& r) { return scalar_of_targets(r, targets); };
    std::string conv;  // the first layer with a 4-D weight
    at::Tensor weight;
    for (const auto& p : m.module().named_parameters())
        if (conv.empty() && p.value.dim() == 4) {
            conv = p.name.substr(0, p.name.rfind('.'));
            weight = p.value;
        }
    ASSERT_FALSE(conv.empty()) << name;
    ASSERT_NO_THROW((void)m.layer(conv));
    const auto before = m.gradients(input, scalar, {conv});
    EXPECT_TRUE(before.input_grad.is_contiguous());
    EXPECT_TRUE(before.tap_grads.at(conv).is_contiguous());
    EXPECT_TRUE(before.forward.taps.at(conv).is_contiguous());
    {
        torch::NoGradGuard no_grad;
        weight.mul_(-0.5);
    }
    const auto after = m.gradients(input, scalar, {conv});
    EXPECT_GT((after.input_grad - before.input_grad).abs().max().item<double>(), 1e-6) << name;
    m.set_inference_copy(false);
    const auto own = m.gradients(input, scalar, {conv});
    expect_close(after.input_grad, own.input_grad, 1e-5, "input grad after the write");
    expect_close(after.tap_grads.at(conv), own.tap_grads.at(conv), 1e-5, "tap grad after the write");
}

// A model that flattens with `view` needs its own layout (a channels-last activation cannot be
// viewed so): gradients fall back to the module itself, equal to the copy turned off, and bad
// input still fails with its own message.
TEST(Model, GradientsOfAModelThatNeedsItsOwnLayoutRunTheModule) {
    torch::jit::Module net("ViewNet");
    torch::manual_seed(3);
    net.register_parameter("weight", torch::randn({3, 2, 3, 3}), false);
    net.register_parameter("fc", torch::randn({2, 48}), false);
    net.define(R"JIT(
def forward(self, x):
    h = torch.relu(torch.conv2d(x, self.weight, None, [1, 1], [1, 1], [1, 1], 1))
    return torch.linear(h.view(h.size(0), -1), self.fc, None)
)JIT");
    net.eval();
    ModelMeta meta;
    meta.input_shape = {2, 4, 4};
    Model m = Model::from_module(net, meta);
    const at::Tensor x = torch::randn({3, 2, 4, 4});
    const auto scalar = [](const TapResult& r) { return r.output.select(1, 0).sum(); };
    const auto g = m.gradients(x, scalar);
    Model own = Model::from_module(net, meta);
    own.set_inference_copy(false);
    expect_close(g.input_grad, own.gradients(x, scalar).input_grad, 1e-6, "input grad");
    EXPECT_GT(g.input_grad.abs().max().item<double>(), 0.0);
    // Its later gradients too, and a wrong shape is the module's own clear error.
    expect_close(m.gradients(x * 2, scalar).input_grad, own.gradients(x * 2, scalar).input_grad, 1e-6, "again");
    Model loose = Model::from_module(net, ModelMeta{});  // no input shape: the model itself sees 5x5
    EXPECT_THROW((void)loose.gradients(torch::randn({1, 2, 5, 5}), scalar), Error);
    expect_close(loose.gradients(x, scalar).input_grad, g.input_grad, 1e-6, "after bad input");
}

// LibTorch 1.13's optimize_for_inference miscomputes LR-ASPP (MobileNetV3: off by 1.1 on outputs
// of about 2): the check sees it, and the model runs its own forward from then on.
TEST(Model, AnInferenceCopyThatComputesOtherOutputsIsNotUsed) {
    Model m = Model::load(fixture("targets/lraspp.pt"));
    const at::Tensor x = read_npy(fixture("targets/lraspp_input.npy"));
    m.set_input_shape({x.size(1), x.size(2), x.size(3)});
    const at::Tensor own = m.forward_taps(x, {}).output;
    expect_close(m.forward(x), own, 1e-5, "first forward");
    EXPECT_NE(m.inference_note().find("computed other outputs"), std::string::npos) << m.inference_note();
    expect_close(m.forward(x), own, 1e-5, "later forward");
    expect_close(m.forward(x.slice(0, 0, 1)), own.slice(0, 0, 1), 1e-5, "another shape");
}

INSTANTIATE_TEST_SUITE_P(Models, FixtureModel,
                         ::testing::Values("lenet_scripted", "lenet_traced", "seq_scripted",
                                           "resnet_small_scripted", "resnet_small_traced",
                                           "concat_scripted"));

TEST(Model, ResNet18LayersShapesAndReceptiveFields) {
    Model m = load_fixture("resnet18_scripted");
    const auto& layers = m.layers();
    EXPECT_GT(layers.size(), 60u);
    const auto& l4 = m.layer("layer4");
    EXPECT_EQ(l4.output_shape, (std::vector<int64_t>{512, 7, 7}));
    // Hand-derived with the Distill formulas: ResNet-18's last block sees 435 pixels.
    EXPECT_EQ(l4.rf.kind, ReceptiveField::Kind::Exact);
    EXPECT_EQ(l4.rf.size_y, 435);
    EXPECT_EQ(l4.rf.stride_y, 32);
    EXPECT_EQ(l4.rf.pad_y, 217);
    const auto& mp = m.layer("maxpool");
    EXPECT_EQ(mp.rf.size_x, 11);
    EXPECT_EQ(mp.rf.stride_x, 4);
    EXPECT_EQ(mp.rf.pad_x, 5);
    // The stride-2 block merges a 3x3 path and a 1x1 downsample path: the union is the 3x3 one.
    const auto& l2 = m.layer("layer2.0");
    EXPECT_EQ(l2.rf.size_y, 67);
    EXPECT_EQ(l2.rf.pad_y, 33);
    EXPECT_EQ(m.layer("fc").rf.kind, ReceptiveField::Kind::Global);
    EXPECT_EQ(m.layer("avgpool").rf.kind, ReceptiveField::Kind::Global);
    EXPECT_EQ(m.layer("layer1.0.conv2").type, "Conv2d");
    EXPECT_EQ(m.layer("layer1.0").type, "BasicBlock");
    EXPECT_EQ(m.num_classes(), 1000);
    EXPECT_EQ(m.penultimate_layer(), "avgpool");
}

TEST(Model, LeNetReceptiveFields) {
    Model m = load_fixture("lenet_scripted");
    auto rf = [&](const std::string& n) { return m.layer(n).rf; };
    EXPECT_EQ(rf("conv1").size_y, 5);
    EXPECT_EQ(rf("conv1").pad_y, 2);
    EXPECT_EQ(rf("pool1").size_y, 6);
    EXPECT_EQ(rf("pool1").stride_y, 2);
    EXPECT_EQ(rf("conv2").size_y, 14);
    EXPECT_EQ(rf("conv2").pad_y, 2);
    EXPECT_EQ(rf("pool2").size_y, 16);
    EXPECT_EQ(rf("pool2").stride_y, 4);
    EXPECT_EQ(rf("fc1").kind, ReceptiveField::Kind::Global);
    EXPECT_TRUE(m.layer("conv1").is_conv);
    EXPECT_TRUE(m.layer("fc1").is_linear);
    EXPECT_EQ(m.conv_layer_names(), (std::vector<std::string>{"conv1", "conv2"}));
    EXPECT_EQ(m.penultimate_layer(), "fc2");
}

TEST(Model, ConcatReceptiveFieldIsTheUnionOfBranches) {
    Model m = load_fixture("concat_scripted");
    // stem 3x3 (r=3,P=1); branch_a 1x1 keeps it; branch_b 3x3 grows it to 5 (P=2); the concat
    // sees the union, 5; head 3x3 stride 2 gives 7 with stride 2 and padding 3.
    EXPECT_EQ(m.layer("branch_a").rf.size_y, 3);
    EXPECT_EQ(m.layer("branch_b").rf.size_y, 5);
    EXPECT_EQ(m.layer("head").rf.size_y, 7);
    EXPECT_EQ(m.layer("head").rf.stride_y, 2);
    EXPECT_EQ(m.layer("head").rf.pad_y, 3);
}

TEST(Model, UnknownLayerNamesTheClosest) {
    Model m = load_fixture("resnet_small_scripted");
    try {
        m.forward_taps(read_npy(fixture("resnet_small_scripted/input.npy")), {"layer1.0.conv3"});
        FAIL() << "expected an error";
    } catch (const Error& e) {
        const std::string msg = e.what();
        EXPECT_NE(msg.find("unknown layer 'layer1.0.conv3'"), std::string::npos) << msg;
        EXPECT_NE(msg.find("layer1.0.conv1"), std::string::npos) << msg;
    }
}

TEST(Model, WrongInputShapeIsAClearError) {
    Model m = load_fixture("lenet_scripted");
    expect_error([&] { m.forward(torch::zeros({1, 3, 28, 28})); }, "3 channels but the model expects 1");
    expect_error([&] { m.forward(torch::zeros({1, 1, 32, 32})); }, "model expects 28x28");
    auto nan = torch::zeros({1, 1, 28, 28});
    nan[0][0][3][3] = std::numeric_limits<float>::quiet_NaN();
    expect_error([&] { m.forward(nan); }, "NaN or Inf");
    Model unknown = Model::load(fixture("lenet_scripted.pt"));
    expect_error([&] { (void)unknown.input_shape(); }, "--input-shape");
    unknown.set_input_shape({1, 40, 40});
    expect_error([&] { (void)unknown.layers(); }, "cannot run on inputs of shape 1,40,40");
    // An input the model itself cannot run fails with the same message after the inference copy
    // ran, and the copy stays for the inputs that fit.
    const at::Tensor ok = torch::rand({2, 1, 28, 28});
    const at::Tensor before = m.forward(ok);
    ASSERT_EQ(m.inference_note(), "the inference copy");
    expect_error([&] { m.forward_unchecked(torch::zeros({1, 1, 40, 40})); }, "the model failed on inputs of shape [1,1,40,40]");
    EXPECT_EQ(m.inference_note(), "the inference copy");
    EXPECT_TRUE(at::equal(m.forward(ok), before));
}

TEST(Model, BadModelFilesGiveClearErrors) {
    expect_error([] { Model::load(fixture("does_not_exist.pt")); }, "does not exist");
    expect_error([] { Model::load(fixture("empty.pt")); }, "is empty");
    expect_error([] { Model::load(fixture("truncated.pt")); }, "truncated or corrupt");
    expect_error([] { Model::load(fixture("state_dict.pt")); }, "not TorchScript");
    expect_error([] { Model::load(fixture("not_a_model.pt")); }, "is an image");
    expect_error([] { Model::load(fixture("corrupt.pt")); }, "corrupt");
    expect_error([] { Model::load(fixtures_dir()); }, "is a folder");
}

TEST(Model, GuidedAndDeconvReluRulesOnAllReluKinds) {
    // resnet_small has module ReLUs used in place; lenet has functional F.relu after fc1/fc2.
    for (const std::string name : {"resnet_small_scripted", "lenet_scripted", "concat_scripted"}) {
        Model m = load_fixture(name);
        auto input = read_npy(fixture(name + "/input.npy"));
        auto scalar = [](const TapResult& r) { return r.output.select(1, 0).sum(); };
        auto plain = m.gradients(input, scalar);
        auto guided = m.gradients_with_relu_rule(Model::ReluBackward::Guided, input, scalar);
        auto deconv = m.gradients_with_relu_rule(Model::ReluBackward::Deconv, input, scalar);
        // Same forward pass under every rule.
        expect_close(guided.forward.output, plain.forward.output, 1e-6, name + " guided output");
        expect_close(deconv.forward.output, plain.forward.output, 1e-6, name + " deconv output");
        EXPECT_GT((guided.input_grad - plain.input_grad).abs().max().item<float>(), 1e-6) << name;
        EXPECT_GT((deconv.input_grad - guided.input_grad).abs().max().item<float>(), 1e-6) << name;
    }
}

}  // namespace

namespace {
TEST(Model, ResNet18TapsAndGradientsMatchPyTorch) {
    const std::string name = "resnet18_scripted";
    Model m = load_fixture(name);
    auto input = read_npy(fixture(name + "/input.npy"));
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(fixture(name + "/act"))) {
        std::string file = entry.path().filename().string();
        names.push_back(file.substr(0, file.size() - 4));
    }
    ASSERT_GE(names.size(), 5u);
    auto r = m.forward_taps(input, names);
    expect_close(r.output, read_npy(fixture(name + "/output.npy")), 1e-5, "output");
    for (const auto& n : names) expect_close(r.taps.at(n), read_npy(fixture(name + "/act/" + n + ".npy")), 1e-5, n);
    auto targets = layers_json(name)["targets"].get<std::vector<int64_t>>();
    std::vector<std::string> grad_layers;
    for (const auto& entry : fs::directory_iterator(fixture(name + "/grad"))) {
        std::string file = entry.path().filename().string();
        grad_layers.push_back(file.substr(0, file.size() - 4));
    }
    auto g = m.gradients(input, [&](const TapResult& t) { return scalar_of_targets(t, targets); }, grad_layers);
    expect_close(g.input_grad, read_npy(fixture(name + "/grad_input.npy")), 1e-5, "input grad");
    for (const auto& n : grad_layers)
        expect_close(g.tap_grads.at(n), read_npy(fixture(name + "/grad/" + n + ".npy")), 1e-5, n);
}
}  // namespace
