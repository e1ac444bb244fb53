// Describing a model convscope did not train: class name files, the convscope.json metadata,
// presets and options, annotated model files, the resize-then-crop of torchvision, folder
// labels matched by name, the cut graph (forward_until) and the input-statistics warning.
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "runtime/detail/pil_resize.hpp"
#include "test_util.hpp"

using namespace convscope;
namespace fs = std::filesystem;

namespace {
void write_text(const std::string& path, const std::string& text) {
    std::ofstream f(path);
    f << text;
}
void write_png(const std::string& path, const cv::Mat& m) {
    fs::create_directories(fs::path(path).parent_path());
    ASSERT_TRUE(cv::imwrite(path, m));
}
}  // namespace

TEST(ClassNames, EveryFormatGivesTheSameNames) {
    TempDir dir;
    const std::vector<std::string> want = {"tench", "goldfish", "great white shark"};
    write_text(dir / "lines.txt", "tench\ngoldfish\n\ngreat white shark\n");
    write_text(dir / "list.json", R"(["tench", "goldfish", "great white shark"])");
    write_text(dir / "index.txt", "{0: 'tench',\n 1: 'goldfish',\n 2: 'great white shark'}\n");
    write_text(dir / "index.json", R"({"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"], "2": "great white shark"})");
    for (const char* f : {"lines.txt", "list.json", "index.txt", "index.json"})
        EXPECT_EQ(read_class_names(dir / f), want) << f;
}

TEST(ClassNames, BadFilesNameTheProblem) {
    TempDir dir;
    expect_error([&] { read_class_names(dir / "missing.txt"); }, "does not exist");
    write_text(dir / "empty.txt", "\n \n");
    expect_error([&] { read_class_names(dir / "empty.txt"); }, "is empty");
    write_text(dir / "bad.json", "[\"a\", ");
    expect_error([&] { read_class_names(dir / "bad.json"); }, "not valid JSON");
    write_text(dir / "gap.txt", "0: 'a'\n2: 'c'\n");
    expect_error([&] { read_class_names(dir / "gap.txt"); }, "no name for class 1");
    write_text(dir / "twice.txt", "0: 'a'\n0: 'b'\n");
    expect_error([&] { read_class_names(dir / "twice.txt"); }, "names class 0 twice");
    write_text(dir / "mixed.txt", "0: 'a'\nb\n");
    expect_error([&] { read_class_names(dir / "mixed.txt"); }, "mixes numbered lines");
    write_text(dir / "numbers.json", "[1, 2]");
    expect_error([&] { read_class_names(dir / "numbers.json"); }, "must be a name");
}

TEST(ModelMetaJson, RoundTripsAndRejectsWrongValues) {
    ModelMeta m;
    m.input_shape = {3, 224, 224};
    m.mean = {103.9, 116.8, 123.7};
    m.std = {1.0};
    m.resize = 256;
    m.pixel_range = 255;
    m.bgr = true;
    m.class_names = {"a", "b"};
    m.dataset = "imagenet";
    const ModelMeta back = model_meta_from_json(model_meta_to_json(m).dump());
    EXPECT_EQ(back.input_shape, m.input_shape);
    EXPECT_EQ(back.mean, m.mean);
    EXPECT_EQ(back.std, m.std);
    EXPECT_EQ(back.resize, 256);
    EXPECT_EQ(back.pixel_range, 255.0);
    EXPECT_TRUE(back.bgr);
    EXPECT_EQ(back.class_names, m.class_names);
    EXPECT_EQ(back.dataset, "imagenet");
    // Every key is optional.
    EXPECT_TRUE(model_meta_from_json("{}").mean.empty());
    expect_error([] { model_meta_from_json("{\"mean\": [0.5,"); }, "not valid JSON");
    expect_error([] { model_meta_from_json("[1, 2]"); }, "must be a JSON object");
    expect_error([] { model_meta_from_json(R"({"mean": "0.5"})"); }, "'mean' of the wrong type");
    expect_error([] { model_meta_from_json(R"({"std": [0.2, 0]})"); }, "invalid 'std'");
    expect_error([] { model_meta_from_json(R"({"input_shape": [3, 224]})"); }, "invalid 'input_shape'");
    expect_error([] { model_meta_from_json(R"({"pixel_range": 7})"); }, "invalid 'pixel_range'");
    // Found by fuzz_model_meta: sizes that are not whole numbers, or do not fit, were converted
    // (2e130 to an integer is undefined behaviour).
    expect_error([] { model_meta_from_json(R"({"input_shape": [3, 2e130, 1]})"); }, "'input_shape' of the wrong type");
    expect_error([] { model_meta_from_json(R"({"input_shape": [3, 22.5, 1]})"); }, "whole numbers expected");
    expect_error([] { model_meta_from_json(R"({"resize": 18446744073709551615})"); }, "'resize' of the wrong type");
    expect_error([] { model_meta_from_json(R"({"resize": 1e300})"); }, "'resize' of the wrong type");
    EXPECT_EQ(model_meta_from_json(R"({"resize": 256})").resize, 256);
}

TEST(PreprocessOptions, PresetsAndOptionsMerge) {
    ModelMeta file;
    file.mean = {0.5};
    file.std = {0.25};
    file.source = "metadata in the model file";
    PreprocessOptions o;
    o.preset = "imagenet";
    ModelMeta m = apply_preprocess_options(file, o);
    EXPECT_EQ(m.mean, (std::vector<double>{0.485, 0.456, 0.406}));
    EXPECT_EQ(m.std, (std::vector<double>{0.229, 0.224, 0.225}));
    EXPECT_EQ(m.resize, 256);
    EXPECT_EQ(m.input_shape, (std::vector<int64_t>{3, 224, 224}));
    EXPECT_EQ(m.source, "--preprocess imagenet");
    // Options override one by one; the crop is the input size.
    o.std = {0.5};
    o.crop = {192, 160};
    m = apply_preprocess_options(file, o);
    EXPECT_EQ(m.std, (std::vector<double>{0.5}));
    EXPECT_EQ(m.input_shape, (std::vector<int64_t>{3, 192, 160}));
    EXPECT_EQ(m.source, "--preprocess imagenet with --std, --crop");
    // none drops the metadata's normalisation, with a warning.
    std::vector<std::string> warnings;
    PreprocessOptions none;
    none.preset = "none";
    m = apply_preprocess_options(file, none, &warnings);
    EXPECT_TRUE(m.mean.empty() && m.std.empty());
    ASSERT_EQ(warnings.size(), 1u);
    EXPECT_NE(warnings[0].find("--preprocess none"), std::string::npos);
    // model (the default) keeps the metadata and adds what is given.
    PreprocessOptions range;
    range.pixel_range = 255;
    m = apply_preprocess_options(file, range);
    EXPECT_EQ(m.mean, file.mean);
    EXPECT_EQ(m.pixel_range, 255.0);
    EXPECT_EQ(m.source, "metadata in the model file with --pixel-range");
    EXPECT_THROW(parse_preprocess_preset("imagenette"), UsageError);
}

TEST(PreprocessSteps, NormaliseIsTheFormulaAndDisplayUndoesIt) {
    torch::manual_seed(5);
    const at::Tensor pixels = torch::randint(0, 256, {2, 3, 4, 5}).to(torch::kFloat) / 255.0;
    Preprocess p;
    p.input_shape = {3, 4, 5};
    p.mean = {103.9, 116.8, 123.7};
    p.std = {57.4, 57.1, 58.4};
    p.pixel_range = 255;
    p.bgr = true;
    const at::Tensor got = p.normalise(pixels);
    // Caffe-style: B,G,R channels in 0..255 minus the mean, over the std.
    for (int64_t c = 0; c < 3; ++c) {
        const at::Tensor want = (pixels.select(1, 2 - c) * 255.0 - p.mean[size_t(c)]) / p.std[size_t(c)];
        EXPECT_LE((got.select(1, c) - want).abs().max().item<double>(), 1e-4) << c;
    }
    const at::Tensor shown = p.to_display(got);
    const at::Tensor bytes = (pixels * 255).round().to(torch::kByte).permute({0, 2, 3, 1});
    EXPECT_TRUE(at::equal(shown, bytes));
    EXPECT_NE(p.describe().find("BGR channel order, pixels 0-255, mean 103.9,116.8,123.7"), std::string::npos);
    Preprocess bad = p;
    bad.mean = {1, 2};
    expect_error([&] { bad.validate(3); }, "--mean has 2 values but the model's input has 3 channels");
    bad = p;
    bad.std = {1, 0, 1};
    expect_error([&] { bad.validate(3); }, "--std holds 0");
}

TEST(PreprocessSteps, ResizeShorterSideThenCentreCropAsTorchvision) {
    TempDir dir;
    // 30 x 45 picture (H x W), shorter side to 20: 20 x int(20 * 45 / 30) = 20 x 30; a centre
    // crop 17 x 25: offsets round(3 / 2) = 2 (halves to even) and round(5 / 2) = 2.
    cv::Mat m(30, 45, CV_8UC3);
    cv::randu(m, 0, 255);
    write_png(dir / "p.png", m);
    Dataset ds = Dataset::open(dir / "p.png");
    Preprocess want;
    want.resize = 20;
    const Preprocess pre = ds.preprocess_for({3, 17, 25}, want);
    const at::Tensor got = ds.batch({0}, pre)[0];
    const at::Tensor resized = convscope::detail::pil_resize_bilinear(ds.raw(0), 20, 30, true);
    EXPECT_TRUE(at::equal(got, resized.slice(1, 2, 19).slice(2, 2, 27)));
    // Offsets that round up: 20 - 15 = 5 -> round(2.5) = 2, 30 - 23 = 7 -> round(3.5) = 4.
    const at::Tensor got2 = ds.batch({0}, ds.preprocess_for({3, 15, 23}, want))[0];
    EXPECT_TRUE(at::equal(got2, resized.slice(1, 2, 17).slice(2, 4, 27)));
    // A crop larger than the resized picture is an error that names the fix.
    expect_error([&] { ds.batch({0}, ds.preprocess_for({3, 24, 24}, want)); },
                 "the centre crop 24x24 is larger than item 0 after resizing (20x30)");
}

TEST(ClassMatch, FolderNamesMatchTheModelsClasses) {
    TempDir dir;
    const cv::Mat px(4, 4, CV_8UC1, cv::Scalar(9));
    for (const char* f : {"t/Great_White/a.png", "t/cat/b.png", "t/dog/c.png", "t/dog/d.png"}) write_png(dir / f, px);
    {
        Dataset ds = Dataset::open(dir / "t");
        ASSERT_EQ(ds.class_names(), (std::vector<std::string>{"Great_White", "cat", "dog"}));
        const auto m = ds.match_classes({"dog", "great white", "cat"}, 3);
        EXPECT_TRUE(m.comparable) << m.why;
        EXPECT_EQ(ds.label(0), 1);  // Great_White -> "great white"
        EXPECT_EQ(ds.label(1), 2);  // cat
        EXPECT_EQ(ds.label(3), 0);  // dog
        EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"dog", "great white", "cat"}));
    }
    {
        Dataset ds = Dataset::open(dir / "t");
        const auto m = ds.match_classes({"dog", "cat", "bird"}, 3);
        EXPECT_FALSE(m.comparable);
        EXPECT_NE(m.why.find("'Great_White'"), std::string::npos) << m.why;
        EXPECT_EQ(ds.label(3), 2);  // unchanged
    }
    {
        Dataset ds = Dataset::open(dir / "t");
        EXPECT_TRUE(ds.match_classes({}, 3).comparable);  // ImageFolder order
        EXPECT_FALSE(ds.match_classes({}, 1000).comparable);
        EXPECT_NE(ds.class_match().why.find("--classes"), std::string::npos);
    }
}

TEST(ModelCut, ForwardUntilEqualsTapsAndTakesOtherSizes) {
    Model m = Model::load(fixture("resnet_small_scripted.pt"));
    m.set_input_shape({3, 32, 32});
    torch::manual_seed(6);
    const at::Tensor x = torch::randn({2, 3, 32, 32});
    const TapResult full = m.forward_taps(x, {"layer1", "conv1"});
    const TapResult cut = m.forward_until(x, {"layer1", "conv1"});
    EXPECT_FALSE(cut.output.defined());
    EXPECT_TRUE(at::equal(cut.taps.at("layer1"), full.taps.at("layer1")));
    EXPECT_TRUE(at::equal(cut.taps.at("conv1"), full.taps.at("conv1")));
    // The convolutional part runs at another size; the whole model's shape check does not apply.
    const at::Tensor big = torch::randn({1, 3, 48, 40});
    const at::Tensor big_tap = m.forward_until(big, {"layer1"}).taps.at("layer1");
    EXPECT_EQ(big_tap.size(2) * 32, full.taps.at("layer1").size(2) * 48);
    EXPECT_EQ(big_tap.size(3) * 32, full.taps.at("layer1").size(3) * 40);
    EXPECT_THROW(m.forward(big), Error);
    // Gradients of a tap objective equal the full graph's.
    auto objective = [](const TapResult& r) { return r.taps.at("layer1").select(1, 3).sum(); };
    const auto g_cut = m.gradients_until(x, objective, {"layer1"});
    const auto g_full = m.gradients(x, objective, {}, {"layer1"});
    expect_close(g_cut.input_grad, g_full.input_grad, 1e-6, "input gradient through the cut graph");
}

TEST(InputWarnings, BatchNormStatisticsTellUnnormalisedInputs) {
    Model m = Model::load(fixture("own/resnet18_ft.pt"));
    m.set_input_shape({3, 224, 224});
    // The fixture's bn1 holds conv1's statistics on these (ImageNet-normalised) inputs.
    const at::Tensor x = read_npy(fixture("own/input.npy"));
    Preprocess normalised;
    normalised.mean = {0.485, 0.456, 0.406};
    normalised.std = {0.229, 0.224, 0.225};
    EXPECT_TRUE(input_warnings(m, x, normalised).empty());
    // The same pictures as plain [0,1] pixels.
    const at::Tensor mean = torch::tensor({0.485f, 0.456f, 0.406f}).view({1, 3, 1, 1});
    const at::Tensor sd = torch::tensor({0.229f, 0.224f, 0.225f}).view({1, 3, 1, 1});
    const auto w = input_warnings(m, x * sd + mean, Preprocess{});
    ASSERT_EQ(w.size(), 1u);
    EXPECT_NE(w[0].find("--preprocess imagenet"), std::string::npos) << w[0];
    EXPECT_NE(w[0].find("'bn1'"), std::string::npos) << w[0];
    // A model without a BatchNorm after its first convolution: nothing to compare with.
    Model lenet = load_lenet();
    EXPECT_TRUE(input_warnings(lenet, torch::rand({2, 1, 28, 28}), Preprocess{}).empty());
}

TEST(Annotate, SavedMetadataLoadsBackAndTheModelIsUnchanged) {
    TempDir dir;
    ModelMeta meta;
    meta.input_shape = {1, 28, 28};
    meta.mean = {0.3};
    meta.std = {0.35};
    meta.class_names = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "nine"};
    save_model_with_meta(fixture("lenet_scripted.pt"), meta, dir / "sub/m.pt");
    Model back = Model::load(dir / "sub/m.pt");
    EXPECT_EQ(back.meta().mean, meta.mean);
    EXPECT_EQ(back.meta().class_names[9], "nine");
    EXPECT_EQ(back.meta().source, "metadata in the model file");
    EXPECT_EQ(back.input_shape(), meta.input_shape);
    validate_model_meta(back);
    const at::Tensor x = torch::rand({2, 1, 28, 28});
    // Bit for bit: both run the module's own forward.
    Model lenet = load_lenet();
    back.set_inference_copy(false);
    lenet.set_inference_copy(false);
    EXPECT_TRUE(at::equal(back.forward(x), lenet.forward(x)));
    EXPECT_FALSE(fs::exists(dir / "sub/m.pt.tmp"));
    // Class names that do not fit the outputs.
    ModelMeta wrong = meta;
    wrong.class_names = {"a", "b"};
    back.set_meta(wrong);
    expect_error([&] { validate_model_meta(back); }, "there are 2 class names (metadata) but the model has 10 outputs");
    // Unreadable metadata: an error on load that names annotate, and none when not read.
    expect_error([] { Model::load(fixture("own/badmeta.pt")); }, "convscope annotate");
    EXPECT_TRUE(Model::load(fixture("own/badmeta.pt"), false).meta().mean.empty());
}

TEST(Preprocess, ToDisplayPaintsNonFinitePixelsMagenta) {
    Preprocess pre;
    pre.input_shape = {1, 2, 3};
    pre.mean = {0.5};
    pre.std = {0.25};
    // Model inputs whose pixels are (v - 0.5) / 0.25 for v = 0, 0.2, ..., 1.
    at::Tensor pixels = torch::tensor({0.0f, 0.2f, 0.4f, 0.6f, 0.8f, 1.0f}).view({1, 1, 2, 3});
    at::Tensor inputs = (pixels - 0.5) / 0.25;
    const at::Tensor clean = pre.to_display(inputs);
    ASSERT_EQ(clean.sizes(), (std::vector<int64_t>{1, 2, 3, 1}));
    inputs[0][0][1][2] = std::numeric_limits<float>::quiet_NaN();
    const at::Tensor shown = pre.to_display(inputs);
    ASSERT_EQ(shown.sizes(), (std::vector<int64_t>{1, 2, 3, 3}));
    for (int64_t y = 0; y < 2; ++y)
        for (int64_t x = 0; x < 3; ++x)
            for (int64_t ch = 0; ch < 3; ++ch) {
                const int expected = (y == 1 && x == 2) ? (ch == 1 ? 0 : 255) : clean[0][y][x][0].item<int>();
                EXPECT_EQ(shown[0][y][x][ch].item<int>(), expected) << y << "," << x << "," << ch;
            }
    // Inputs used as is: the range comes from the finite values only.
    Preprocess raw;
    raw.input_shape = {1, 1, 3};
    raw.as_is = true;
    const at::Tensor r = raw.to_display(torch::tensor({1.0f, std::numeric_limits<float>::infinity(), 3.0f}).view({1, 1, 1, 3}));
    ASSERT_EQ(r.sizes(), (std::vector<int64_t>{1, 1, 3, 3}));
    EXPECT_EQ(r[0][0][0][0].item<int>(), 0);
    EXPECT_EQ(r[0][0][2][0].item<int>(), 255);
    EXPECT_EQ(r[0][0][1][0].item<int>(), 255);
    EXPECT_EQ(r[0][0][1][1].item<int>(), 0);
}
