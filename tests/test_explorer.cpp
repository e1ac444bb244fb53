// The web explorer's back end: live activations against the model's own taps, uploads preprocessed
// like dataset items, errors for bad requests, the job system, and the on-disk caches.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "convscope/runtime/dataset.hpp"
#include "convscope/app/explorer.hpp"
#include "convscope/runtime/image_header.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/methods/evaluation.hpp"
#include "convscope/methods/filters.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/runtime/base64.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

ExplorerOptions small_options(const std::string& cache) {
    ExplorerOptions o;
    o.cache_dir = cache;
    o.map_items = 60;
    o.map_iterations = 60;
    o.scan_items = 50;
    o.feature_vis_steps = 4;
    o.max_images = 4;
    return o;
}

template <class E>
void expect_throw_kind(const std::function<void()>& f, const std::string& needle) {
    try {
        f();
        ADD_FAILURE() << "expected an error containing '" << needle << "'";
    } catch (const E& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    } catch (const std::exception& e) {
        ADD_FAILURE() << "wrong error type: " << e.what();
    }
}

// Dequantises a layer of a live update: [channels, height, width] float.
at::Tensor dequantise(const json& L) {
    const std::string bytes = detail::base64_decode(L["data"].get<std::string>());
    const int64_t c = L["channels"], h = L["height"], w = L["width"];
    EXPECT_EQ(int64_t(bytes.size()), c * h * w);
    at::Tensor q = torch::from_blob(const_cast<char*>(bytes.data()), {c, h, w}, torch::kUInt8).clone();
    const double lo = L["lo"], hi = L["hi"];
    return q.to(torch::kDouble) / 255.0 * (hi - lo) + lo;
}

TEST(Explorer, UsesTheModelsPreprocessingAndClassNames) {
    // A model annotated with torchvision's ImageNet preprocessing and its own class names, on an
    // image folder: the explorer's inputs are what torchvision's transforms make of the files,
    // uploads are preprocessed the same way, and the names are the model's.
    TempDir tmp;
    Model model = Model::load(fixture("own/resnet18_ft_meta.pt"));
    Explorer ex(std::move(model), Dataset::open(fixture("own/images")), small_options(tmp / "cache"));
    const json info = ex.model_info();
    EXPECT_EQ(info["preprocess"]["resize"], 256);
    EXPECT_EQ(info["preprocess"]["crop"], json({224, 224}));
    EXPECT_EQ(info["class_names"], json({"dog", "cat", "bird"}));
    const at::Tensor ref = read_npy(fixture("own/input.npy"));  // torchvision, ImageFolder order
    EXPECT_TRUE(at::equal(ex.image_input(ex.add_dataset_image(1))[0], ref[1]));
    const std::string png = read_file(fixture("own/images/bird/a1.png"));
    EXPECT_TRUE(at::equal(ex.image_input(ex.add_encoded_image(png))[0], ref[1]));
}

TEST(Explorer, LiveActivationsMatchTheModelsTaps) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    const std::string id = ex.add_dataset_image(7);
    EXPECT_EQ(id, "d7");
    const json j = ex.activations(id, {});
    // Reference: the model's own forward pass with taps on the same preprocessed item.
    const Dataset& data = ex.data();
    const Preprocess pre = data.preprocess_for({1, 28, 28}, {}, {});
    const at::Tensor x = data.batch({7}, pre);
    std::vector<std::string> names;
    for (const auto& L : j["layers"]) names.push_back(L["name"]);
    EXPECT_EQ(names, (std::vector<std::string>{"conv1", "relu1", "pool1", "conv2", "relu2", "pool2", "fc1", "fc2", "fc3"}));
    const TapResult ref = ex.model().forward_taps(x, names);
    for (const auto& L : j["layers"]) {
        const at::Tensor want = ref.taps.at(L["name"].get<std::string>())[0].to(torch::kDouble);
        EXPECT_EQ(L["bars"].get<bool>(), want.dim() == 1) << L["name"];
        at::Tensor got = dequantise(L);
        const double lo = L["lo"], hi = L["hi"];
        EXPECT_DOUBLE_EQ(lo, want.min().item<double>());
        EXPECT_DOUBLE_EQ(hi, want.max().item<double>());
        // One quantisation step is (hi - lo) / 255: rounding is within half of it.
        EXPECT_LE((got.reshape(want.sizes()) - want).abs().max().item<double>(), (hi - lo) / 255.0 * 0.5 + 1e-6)
            << L["name"];
    }
    const at::Tensor logits = ref.output[0];
    EXPECT_EQ(j["output"]["predicted"].get<int64_t>(), logits.argmax().item<int64_t>());
    double sum = 0;
    for (double p : j["output"]["probs"]) sum += p;
    EXPECT_NEAR(sum, 1.0, 1e-5);
    EXPECT_EQ(j["label"].get<int64_t>(), data.label(7));
}

TEST(Explorer, LargeMapsAreAreaAveragedAndChannelsCapped) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    LiveOptions lo;
    lo.layers = {"conv1"};
    lo.max_side = 10;      // 28 -> factor 3 -> 10x10 (the last block is partial)
    lo.max_channels = 4;
    const json j = ex.activations("d2", lo);
    const json& L = j["layers"][0];
    EXPECT_EQ(L["factor"].get<int64_t>(), 3);
    EXPECT_EQ(L["channels"].get<int64_t>(), 4);
    EXPECT_EQ(L["height"].get<int64_t>(), 10);
    EXPECT_EQ(L["shape"], json({6, 28, 28}));
    // Reference: plain loops over the 3x3 blocks (the last row/column blocks hold 1 pixel).
    const at::Tensor x = ex.image_input("d2");
    const at::Tensor t = ex.model().forward_taps(x, {"conv1"}).taps.at("conv1")[0].to(torch::kDouble);
    at::Tensor want = torch::zeros({4, 10, 10}, torch::kDouble);
    for (int64_t c = 0; c < 4; ++c)
        for (int64_t by = 0; by < 10; ++by)
            for (int64_t bx = 0; bx < 10; ++bx) {
                double s = 0;
                int n = 0;
                for (int64_t y = by * 3; y < std::min<int64_t>(28, by * 3 + 3); ++y)
                    for (int64_t xx = bx * 3; xx < std::min<int64_t>(28, bx * 3 + 3); ++xx, ++n)
                        s += t[c][y][xx].item<double>();
                want[c][by][bx] = s / n;
            }
    const double step = (L["hi"].get<double>() - L["lo"].get<double>()) / 255.0;
    EXPECT_LE((dequantise(L) - want).abs().max().item<double>(), step * 0.5 + 1e-6);
}

TEST(Explorer, UploadsArePreprocessedLikeDatasetItems) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    // Fashion-MNIST pixels are 8-bit, so the PNG of item 5 is the item exactly.
    const std::string png = ex.item_png(5);
    const std::string id = ex.add_encoded_image(png);
    ASSERT_EQ(id[0], 'u');
    EXPECT_TRUE(torch::allclose(ex.image_input(id), ex.image_input("d5"), 0.0, 1e-6));
    EXPECT_EQ(ex.add_encoded_image(png), id);  // same content, same id
    // A drawing: the gray bytes of the same item.
    const at::Tensor raw = ex.data().raw(5);  // [1,28,28] in [0,1]
    const at::Tensor bytes = (raw[0] * 255).round().to(torch::kUInt8).contiguous();
    const std::string pixels(reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()), 784);
    EXPECT_EQ(ex.add_gray_image(pixels, 28, 28), id);
    // A larger RGB JPEG is converted and resized to 1x28x28.
    cv::Mat big(90, 60, CV_8UC3, cv::Scalar(10, 200, 30));
    std::vector<uint8_t> jpg;
    cv::imencode(".jpg", big, jpg);
    const std::string jid = ex.add_encoded_image(std::string(jpg.begin(), jpg.end()));
    EXPECT_EQ(ex.image_input(jid).sizes(), (std::vector<int64_t>{1, 1, 28, 28}));
    EXPECT_EQ(ex.image_png(jid).substr(1, 3), "PNG");
}

TEST(Explorer, BadRequestsGiveTheirErrors) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    expect_throw_kind<UnsupportedMediaError>([&] { ex.add_encoded_image("hello, not an image"); }, "not an image");
    expect_throw_kind<UnsupportedMediaError>([&] { ex.add_encoded_image(std::string("\x89PNG\r\n\x1a\nxx", 10)); },
                                             "cannot be decoded");
    expect_throw_kind<UnsupportedMediaError>([&] { ex.add_encoded_image(""); }, "not an image");
    expect_error([&] { ex.add_gray_image("abc", 28, 28); }, "has 784 bytes, got 3");
    expect_error([&] { ex.add_gray_image("", 0, 28); }, "1..4096");
    expect_throw_kind<NotFoundError>([&] { ex.add_dataset_image(10000); }, "0..9999");
    expect_throw_kind<NotFoundError>([&] { ex.add_dataset_image(-1); }, "does not exist");
    expect_throw_kind<NotFoundError>([&] { ex.item_png(10000); }, "does not exist");
    expect_throw_kind<NotFoundError>([&] { ex.image_input("u0123"); }, "unknown image");
    expect_throw_kind<NotFoundError>([&] { ex.image_input("dx"); }, "unknown image");
    LiveOptions lo;
    lo.layers = {"conv1", "conv3"};
    expect_throw_kind<NotFoundError>([&] { ex.activations("d1", lo); }, "unknown layer 'conv3'");
    lo = {};
    lo.max_channels = 0;
    expect_error([&] { ex.activations("d1", lo); }, "max_channels");
    expect_throw_kind<NotFoundError>([&] { ex.filter_png("conv1", 6); }, "channel 6 does not exist");
    expect_error([&] { ex.filter_png("fc1", 0); }, "no filters");
    expect_error([&] { ex.overlay_png("d1", "fc2", 0); }, "is not spatial");
    expect_error([&] { ex.start_job(json::array()); }, "JSON object");
    expect_error([&] { ex.start_job({{"kind", 3}}); }, "\"kind\" must be a string");
    expect_error([&] { ex.start_job({{"kind", "nope"}}); }, "unknown job kind");
    expect_error([&] { ex.start_job({{"kind", "occlusion"}, {"image", "d1"}, {"patch", 29}}); }, "patch must be 1..28");
    expect_error([&] { ex.start_job({{"kind", "patches"}, {"layer", "conv1"}}); }, "needs \"channel\"");
    expect_error([&] { ex.start_job({{"kind", "attribution"}, {"image", "d1"}, {"method", "x"}}); }, "saliency");
    expect_throw_kind<NotFoundError>([&] { ex.start_job({{"kind", "feature-vis"}, {"layer", "fc3"}, {"channel", 10}}); },
                                     "channel 10");
    expect_throw_kind<NotFoundError>([&] { ex.job("j42"); }, "unknown job");
    expect_throw_kind<NotFoundError>([&] { ex.map_points(); }, "not computed yet");
}

TEST(Explorer, NonFiniteItemsAndOversizedUploadsAreRefused) {
    TempDir tmp;
    at::Tensor x = torch::rand({3, 1, 28, 28});
    x[2][0][4][6] = std::numeric_limits<float>::infinity();
    write_npy(tmp / "x.npy", x);
    Explorer ex(load_lenet(), Dataset::open(tmp / "x.npy"), small_options(tmp / "cache"));
    EXPECT_NO_THROW(ex.activations("d1", {}));
    // A bad request of the user's (the server's 400), naming the item and the position.
    expect_error([&] { ex.activations("d2", {}); }, "item 2 holds NaN or Inf values (channel 0, row 4, column 6)");
    expect_error([&] { ex.start_job({{"kind", "occlusion"}, {"image", "d2"}}); }, "item 2 holds NaN or Inf");
    // An upload that declares more pixels than the limit: refused from its header (413).
    std::vector<uchar> png;
    cv::imencode(".png", cv::Mat(60, 50, CV_8UC1, cv::Scalar(9)), png);
    const int64_t before = max_image_pixels();
    set_max_image_pixels(2999);
    expect_throw_kind<TooLargeError>([&] { ex.add_encoded_image(std::string(png.begin(), png.end())); },
                                     "declares 50x60 pixels, more than the limit of 2999");
    set_max_image_pixels(3000);
    EXPECT_NO_THROW(ex.add_encoded_image(std::string(png.begin(), png.end())));
    set_max_image_pixels(before);
}

TEST(Explorer, ImageStoreForgetsTheLeastRecentlyUsed) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));  // keeps 4
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) {
        const std::string gray(784, char(10 * i + 1));
        ids.push_back(ex.add_gray_image(gray, 28, 28));
        if (i == 3) (void)ex.image_input(ids[0]);  // touch the first: the second becomes the oldest
    }
    EXPECT_NO_THROW(ex.image_input(ids[0]));
    expect_throw_kind<NotFoundError>([&] { ex.image_input(ids[1]); }, "forgotten");
    for (int i = 2; i < 5; ++i) EXPECT_NO_THROW(ex.image_input(ids[size_t(i)]));
}

TEST(Explorer, FilterOfAnActivationIsItsConvsFilter) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    EXPECT_EQ(ex.filter_png("relu1", 2), ex.filter_png("conv1", 2));
    EXPECT_NE(ex.filter_png("conv1", 3), ex.filter_png("conv1", 2));
    const json info = ex.model_info();
    std::map<std::string, json> filter_of;
    for (const auto& l : info["layers"]) filter_of[l["name"]] = l["filter"];
    EXPECT_EQ(filter_of["relu1"], "conv1");
    EXPECT_EQ(filter_of["conv2"], "conv2");
    EXPECT_TRUE(filter_of["pool1"].is_null());  // pooling changes the map size
    EXPECT_TRUE(filter_of["fc1"].is_null());
    EXPECT_EQ(info["colormap"].size(), 256u);
    EXPECT_EQ(info["colormap"][0], json({0x44, 0x01, 0x54}));  // viridis starts at #440154
}

TEST(Explorer, OcclusionJobMatchesTheLibrary) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    const json r = ex.run_job({{"kind", "occlusion"}, {"image", "d4"}});
    OcclusionOptions oo;  // the explorer's defaults for 28x28: patch 4, stride 2, probabilities
    oo.patch_h = oo.patch_w = 4;
    oo.stride_y = oo.stride_x = 2;
    oo.target.score = Score::Prob;
    const OcclusionResult ref = occlusion(ex.model(), ex.image_input("d4"), oo);
    const OcclusionSummary s = summarize_occlusion(ref, 0, oo);
    EXPECT_EQ(r["positions"], json({13, 13}));
    EXPECT_EQ(r["target"].get<int64_t>(), s.target);
    EXPECT_FLOAT_EQ(r["max_drop"].get<float>(), s.max_drop);
    EXPECT_EQ(r["important_region"], json({s.important.y0, s.important.x0, s.important.y1, s.important.x1}));
    EXPECT_EQ(r["confounders"].size(), s.confounders.size());
    EXPECT_EQ(r["overlay"].get<std::string>().rfind("data:image/png;base64,", 0), 0u);
}

TEST(Explorer, RiseIsOneOfTheAttributionMethods) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    const json methods = ex.model_info()["attribution_methods"];
    EXPECT_NE(std::find(methods.begin(), methods.end(), "rise"), methods.end());
    // A CNN has no attention: the rollouts are not offered.
    EXPECT_EQ(std::find(methods.begin(), methods.end(), "attention-rollout"), methods.end());
    const json r = ex.run_job({{"kind", "attribution"}, {"image", "d2"}, {"method", "rise"}});
    EXPECT_EQ(r["method"], "rise");
    // The clean score of the class explained, as attribute() gives it with the explorer's settings.
    AttributionOptions ao;
    ao.method = AttributionMethod::Rise;
    ao.masks = 1000;
    const AttributionResult ref = attribute(ex.model(), ex.image_input("d2"), ao);
    EXPECT_EQ(r["target"].get<int64_t>(), ref.targets[0]);
    EXPECT_NEAR(r["score"].get<double>(), ref.scores[0].item<double>(), 1e-5);
    const std::string url = r["heat"];
    ASSERT_EQ(url.rfind("data:image/png;base64,", 0), 0u);
    const std::string png = detail::base64_decode(url.substr(22));
    const cv::Mat heat = cv::imdecode(std::vector<uchar>(png.begin(), png.end()), cv::IMREAD_COLOR);
    ASSERT_FALSE(heat.empty());
    double lo = 0, hi = 0;
    cv::minMaxLoc(heat.reshape(1), &lo, &hi);
    EXPECT_LT(lo, hi) << "a RISE map with one colour";
}

TEST(Explorer, EvaluateJobRanksTheMethodsOnOneInput) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    const json r = ex.run_job({{"kind", "evaluate"}, {"image", "d5"}});
    EXPECT_EQ(r["methods"], json(EvaluationOptions{}.methods));
    ASSERT_EQ(r["rows"].size(), 8u);  // deletion and insertion (2 orders each), 4 random-logit similarities
    EXPECT_EQ(r["rows"][0]["metric"], "deletion_morf");
    EXPECT_EQ(r["curves"].size(), 2u);
    // Saliency's deletion area as the metric computes it on this input with the job's settings.
    const at::Tensor x = ex.image_input("d5");
    Target t;
    t.score = Score::Prob;
    const Explanation e = method_explainer("saliency", ExplainOptions{})(ex.model(), x, t, {});
    CurveOptions co;
    co.target = fixed_target(t, e.targets);
    co.steps = 20;
    const double area = perturbation_curve(ex.model(), x, e.map, co).areas[0].item<double>();
    EXPECT_NEAR(r["rows"][0]["value"]["saliency"].get<double>(), area, 1e-5);
    EXPECT_EQ(r["target"].get<int64_t>(), e.targets[0]);
    expect_error([&] { ex.start_job({{"kind", "evaluate"}}); }, "image");
}

TEST(Explorer, JobsRunInTheBackgroundAndJoinIdenticalRequests) {
    TempDir tmp;
    Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache"));
    const json req = {{"kind", "attribution"}, {"image", "d3"}, {"method", "saliency"}};
    const json a = ex.start_job(req);
    const json b = ex.start_job(req);
    EXPECT_EQ(a["id"], b["id"]);
    json st = a;
    for (int i = 0; i < 2000 && (st["state"] == "queued" || st["state"] == "running"); ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        st = ex.job(a["id"]);
    }
    ASSERT_EQ(st["state"], "done") << st.dump();
    EXPECT_EQ(st["progress"], 1.0);
    EXPECT_EQ(st["result"]["method"], "saliency");
    // A finished job answers again without running.
    EXPECT_EQ(ex.start_job(req)["state"], "done");
    // Cancelling a finished job leaves it done.
    EXPECT_EQ(ex.cancel_job(a["id"])["state"], "done");
}

TEST(Explorer, PatchScanAndMapAreCachedOnDisk) {
    TempDir tmp;
    const std::string cache = tmp / "cache";
    json patches, map1;
    {
        Explorer ex(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(cache));
        patches = ex.run_job({{"kind", "patches"}, {"layer", "conv2"}, {"channel", 5}});
        (void)ex.run_job({{"kind", "map"}});
        map1 = ex.map_points();
    }
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cache)) files.push_back(e.path());
    ASSERT_EQ(files.size(), 2u);
    // Reference for the patches: the library's scan of the same items.
    TopPatchesOptions to;
    to.layers = {"conv2"};
    to.k = 9;
    to.lowest = false;
    std::vector<int64_t> idx;
    for (int64_t i = 0; i < 50; ++i) idx.push_back(i);
    const Model m = load_lenet();
    const Dataset data = Dataset::open("fashion-mnist:test");
    const TopPatchesResult ref = top_patches(m, data, idx, data.preprocess_for({1, 28, 28}, {}, {}), to);
    const auto& want = ref.layers[0].channels[5].top;
    ASSERT_EQ(patches["entries"].size(), want.size());
    for (size_t i = 0; i < want.size(); ++i) {
        EXPECT_EQ(patches["entries"][i]["index"].get<int64_t>(), want[i].image);
        EXPECT_FLOAT_EQ(patches["entries"][i]["value"].get<float>(), want[i].value);
    }
    EXPECT_EQ(map1["n"].get<int64_t>(), 60);
    EXPECT_EQ(map1["layer"], "fc2");
    // A new explorer reads both from the cache (the files are not rewritten) with equal results.
    std::map<fs::path, fs::file_time_type> times;
    for (const auto& f : files) times[f] = fs::last_write_time(f);
    Explorer again(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(cache));
    EXPECT_EQ(again.run_job({{"kind", "patches"}, {"layer", "conv2"}, {"channel", 5}})["entries"], patches["entries"]);
    (void)again.run_job({{"kind", "map"}});
    EXPECT_EQ(again.map_points()["x"], map1["x"]);
    for (const auto& f : files) EXPECT_EQ(fs::last_write_time(f), times[f]) << f;
}

TEST(Explorer, AttentionJobGivesEveryQuerysAttentionAndTheRollout) {
    TempDir tmp;
    Model vit = Model::load(fixture("vit_tiny.pt"));
    vit.set_input_shape({3, 32, 32});
    Explorer ex(std::move(vit), Dataset::open(fixture("vit_tiny/input.npy")), small_options(tmp / "cache"));
    EXPECT_TRUE(ex.model_info()["attention"].get<bool>());
    const json r = ex.run_job({{"kind", "attention"}, {"image", "d1"}});
    EXPECT_EQ(r["grid"], json({4, 4}));
    EXPECT_EQ(r["extra_front"], 1);
    ASSERT_EQ(r["layers"].size(), 2u);
    // Layer 1, head 1, the class token's row over the grid: PyTorch's need_weights values.
    const at::Tensor ref = read_npy(fixture("vit_tiny/attention_1.npy"))[1][1][0].narrow(0, 1, 16);
    const json row = r["layers"][1]["heads"][1];
    for (int64_t k = 0; k < 16; ++k) EXPECT_NEAR(row[size_t(k)].get<double>(), ref[k].item<double>(), 1e-3 * ref[k].item<double>() + 1e-7);
    const at::Tensor roll = read_npy(fixture("vit_tiny/rollout_mean.npy"))[1].reshape({16});
    for (int64_t k = 0; k < 16; ++k) EXPECT_NEAR(r["rollout"][size_t(k)].get<double>(), roll[k].item<double>(), 1e-3 * roll[k].item<double>());
    EXPECT_EQ(r["input"].get<std::string>().rfind("data:image/png;base64,", 0), 0u);
    // Live views show token layers as maps on their grid.
    LiveOptions lo;
    lo.layers = {"encoder.layers.encoder_layer_1.ln_1"};
    const json live = ex.activations("d1", lo);
    EXPECT_FALSE(live["layers"][0]["bars"].get<bool>());
    EXPECT_EQ(live["layers"][0]["channels"], 32);
    EXPECT_EQ(live["layers"][0]["height"], 4);
    const json shown = ex.model_info()["default_layers"];
    for (const auto& n : shown) EXPECT_EQ(n.get<std::string>().find("attention_probs"), std::string::npos);

    Explorer cnn(load_lenet(), Dataset::open("fashion-mnist:test"), small_options(tmp / "cache2"));
    EXPECT_FALSE(cnn.model_info()["attention"].get<bool>());
    EXPECT_THROW(cnn.run_job({{"kind", "attention"}, {"image", "d0"}}), Error);
}

}  // namespace
}  // namespace convscope
