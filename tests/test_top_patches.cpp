// Top patches against brute force (every activation kept and sorted), shard merge and resumed
// scans against one pass, receptive-field boxes against gradient-derived regions, and bad input.
#include <torch/script.h>
#include <torch/torch.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/top_patches.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

// A .npy dataset of n random images [C,H,W] used as is, with labels 0..9. Images n/2.. repeat
// the first ones, so equal maxima (ties) occur in every channel.
struct NpyData {
    std::string images, labels;
};
NpyData make_data(const TempDir& dir, const std::string& name, int64_t n, int64_t c, int64_t h, int64_t w,
                  uint64_t seed) {
    torch::manual_seed(seed);
    at::Tensor x = torch::randn({n, c, h, w});
    x.slice(0, n - 8, n).copy_(x.slice(0, 0, 8));
    at::Tensor y = torch::randint(0, 10, {n}, torch::kLong);
    NpyData d{dir / (name + ".npy"), dir / (name + "_labels.npy")};
    write_npy(d.images, x);
    write_npy(d.labels, y);
    return d;
}

Dataset open_npy(const NpyData& d) {
    DatasetOptions o;
    o.labels_path = d.labels;
    return Dataset::open(d.images, o);
}

std::vector<int64_t> all_indices(const Dataset& data) { return parse_indices(":", data.size()); }

// The preprocessing for m and d; fixture models learn their input shape from the data.
Preprocess pre_for(Model& m, const Dataset& d) {
    if (!m.has_input_shape()) m.set_input_shape(d.item_shape());
    return d.preprocess_for(m.input_shape(), m.meta().mean, m.meta().std);
}

std::string json_of(const TopPatchesResult& r) { return top_patches_to_json(r).dump(); }

// The reference: every per-image maximum of every channel, from the same batches, sorted.
struct Brute {
    // [layer][channel] -> all (value, image, y, x, label)
    std::vector<std::vector<std::vector<PatchEntry>>> all;
};
Brute brute_force(const Model& model, const Dataset& data, const Preprocess& pre,
                  const std::vector<std::string>& layers, int64_t batch) {
    Brute b;
    b.all.resize(layers.size());
    const int64_t n = data.size();
    for (int64_t s = 0; s < n; s += batch) {
        std::vector<int64_t> idx;
        for (int64_t i = s; i < std::min(n, s + batch); ++i) idx.push_back(i);
        auto taps = model.forward_taps(data.batch(idx, pre), layers);
        for (size_t l = 0; l < layers.size(); ++l) {
            at::Tensor t = taps.taps.at(layers[l]);
            if (t.dim() == 2) t = t.unsqueeze(2).unsqueeze(3);
            const int64_t C = t.size(1), H = t.size(2), W = t.size(3);
            b.all[l].resize(size_t(C));
            auto a = t.accessor<float, 4>();
            for (size_t r = 0; r < idx.size(); ++r) {
                for (int64_t c = 0; c < C; ++c) {
                    PatchEntry e;
                    e.value = a[int64_t(r)][c][0][0];
                    for (int64_t y = 0; y < H; ++y)
                        for (int64_t x = 0; x < W; ++x)
                            if (a[int64_t(r)][c][y][x] > e.value) {
                                e.value = a[int64_t(r)][c][y][x];
                                e.y = y;
                                e.x = x;
                            }
                    e.image = idx[r];
                    e.label = data.label(idx[r]);
                    b.all[l][size_t(c)].push_back(e);
                }
            }
        }
    }
    return b;
}

void expect_same_entries(const std::vector<PatchEntry>& got, const std::vector<PatchEntry>& want,
                         const ReceptiveField& rf, int64_t h, int64_t w, const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i) {
        const std::string at = what + " entry " + std::to_string(i);
        EXPECT_EQ(got[i].value, want[i].value) << at;
        EXPECT_EQ(got[i].image, want[i].image) << at;
        EXPECT_EQ(got[i].y, want[i].y) << at;
        EXPECT_EQ(got[i].x, want[i].x) << at;
        EXPECT_EQ(got[i].label, want[i].label) << at;
        const Box b = unit_box(rf, want[i].y, want[i].x, h, w);
        EXPECT_EQ(got[i].box.y0, b.y0) << at;
        EXPECT_EQ(got[i].box.x0, b.x0) << at;
        EXPECT_EQ(got[i].box.y1, b.y1) << at;
        EXPECT_EQ(got[i].box.x1, b.x1) << at;
    }
}

void check_against_brute_force(const std::string& model_file, const std::vector<std::string>& layers,
                               int64_t c, int64_t h, int64_t w) {
    TempDir dir;
    Model model = Model::load(fixture(model_file));
    const auto files = make_data(dir, "data", 64, c, h, w, 3);
    Dataset data = open_npy(files);
    const Preprocess pre = pre_for(model, data);
    TopPatchesOptions opts;
    opts.layers = layers;
    opts.k = 5;
    opts.batch_size = 16;
    const auto r = top_patches(model, data, all_indices(data), pre, opts);
    const auto ref = brute_force(model, data, pre, layers, 16);
    ASSERT_EQ(r.layers.size(), layers.size());
    EXPECT_EQ(r.images_scanned, 64);
    for (size_t l = 0; l < layers.size(); ++l) {
        const auto& L = r.layers[l];
        EXPECT_EQ(L.name, layers[l]);
        ASSERT_EQ(L.channels.size(), ref.all[l].size()) << layers[l];
        for (size_t ch = 0; ch < L.channels.size(); ++ch) {
            const std::string what = layers[l] + " channel " + std::to_string(ch);
            auto all = ref.all[l][ch];
            std::sort(all.begin(), all.end(), [](const PatchEntry& a, const PatchEntry& b) {
                return a.value > b.value || (a.value == b.value && a.image < b.image);
            });
            std::vector<PatchEntry> top(all.begin(), all.begin() + 5);
            std::sort(all.begin(), all.end(), [](const PatchEntry& a, const PatchEntry& b) {
                return a.value < b.value || (a.value == b.value && a.image < b.image);
            });
            std::vector<PatchEntry> bottom(all.begin(), all.begin() + 5);
            const auto& got = L.channels[ch];
            expect_same_entries(got.top, top, L.rf, h, w, what + " top");
            expect_same_entries(got.bottom, bottom, L.rf, h, w, what + " bottom");
            // Dead count, range and histogram against the full list.
            int64_t dead = 0;
            float lo = all.front().value, hi = all.back().value;
            for (const auto& e : all) dead += e.value > 0.f ? 0 : 1;
            EXPECT_EQ(got.dead, dead) << what;
            EXPECT_EQ(got.min, lo) << what;
            EXPECT_EQ(got.max, hi) << what;
            const Histogram hist = make_histogram(got, 20);
            ASSERT_GE(hist.edges.size(), 2u) << what;
            ASSERT_EQ(hist.counts.size() + 1, hist.edges.size()) << what;
            EXPECT_LE(hist.edges.front(), lo) << what;
            EXPECT_GT(hist.edges.back(), hi) << what;
            for (size_t i = 0; i < hist.counts.size(); ++i) {
                EXPECT_LT(hist.edges[i], hist.edges[i + 1]) << what;
                int64_t in_bin = 0;
                for (const auto& e : all) in_bin += (e.value >= hist.edges[i] && e.value < hist.edges[i + 1]) ? 1 : 0;
                EXPECT_EQ(hist.counts[i], in_bin) << what << " bin " << i;
            }
            // Bins are at least 2^-7 of the magnitude wide; a wide range gets nearly all of them.
            if (hi - lo > 0.5f * std::max(std::abs(lo), std::abs(hi)))
                EXPECT_GE(hist.counts.size(), 15u) << what << ": the bins should spread over the range";
        }
    }
    // Duplicated images tie exactly; the lower index must come first wherever both are listed.
    bool saw_tie = false;
    for (const auto& L : r.layers)
        for (const auto& c : L.channels)
            for (size_t i = 1; i < c.top.size(); ++i)
                if (c.top[i].value == c.top[i - 1].value) {
                    saw_tie = true;
                    EXPECT_LT(c.top[i - 1].image, c.top[i].image);
                }
    EXPECT_TRUE(saw_tie) << "the data should produce ties";
}

TEST(TopPatches, MatchesBruteForceLenet) {
    check_against_brute_force("lenet_scripted.pt", {"conv1", "relu1", "conv2", "pool2", "fc1"}, 1, 28, 28);
}

TEST(TopPatches, MatchesBruteForceResnet) {
    check_against_brute_force("resnet_small_scripted.pt",
                              {"conv1", "relu", "layer1.0.conv2", "layer1.1", "layer2.0.conv1",
                               "layer2.0.downsample.0", "layer2.0", "avgpool", "fc"},
                              3, 32, 32);
}

TEST(TopPatches, DefaultLayersAreTheConvLayers) {
    TempDir dir;
    Model model = Model::load(fixture("lenet_scripted.pt"));
    Dataset data = open_npy(make_data(dir, "d", 16, 1, 28, 28, 1));
    TopPatchesOptions opts;
    opts.k = 2;
    opts.lowest = false;
    const auto r = top_patches(model, data, all_indices(data), pre_for(model, data), opts);
    ASSERT_EQ(r.layers.size(), 2u);
    EXPECT_EQ(r.layers[0].name, "conv1");
    EXPECT_EQ(r.layers[1].name, "conv2");
    EXPECT_EQ(r.layers[0].channels.size(), 6u);
    for (const auto& c : r.layers[1].channels) {
        EXPECT_EQ(c.top.size(), 2u);
        EXPECT_TRUE(c.bottom.empty());
    }
}

TEST(TopPatches, ShardsMergeIntoOnePass) {
    TempDir dir;
    Model model = Model::load(fixture("resnet_small_scripted.pt"));
    Dataset data = open_npy(make_data(dir, "d", 60, 3, 32, 32, 5));
    const auto pre = pre_for(model, data);
    // A selection that is not 0..n-1 in order, and a last batch that is not full.
    const auto indices = parse_indices("59:0:-1", data.size());
    TopPatchesOptions opts;
    opts.layers = {"conv1", "layer1.1.conv1", "layer2.0", "fc"};
    opts.k = 4;
    opts.batch_size = 8;
    const auto single = top_patches(model, data, indices, pre, opts);
    EXPECT_EQ(single.images_scanned, 59);
    std::vector<TopPatchesResult> shards;
    int64_t scanned = 0;
    for (int i : {2, 0, 1}) {
        auto o = opts;
        o.shard_index = i;
        o.shard_count = 3;
        auto s = top_patches(model, data, indices, pre, o);
        scanned += s.images_scanned;
        // Through the file format, as --merge reads them.
        shards.push_back(top_patches_from_json(nlohmann::json::parse(json_of(s)), "shard"));
    }
    EXPECT_EQ(scanned, 59);
    EXPECT_LT(shards[0].images_scanned, 59);
    const auto merged = merge_top_patches(shards);
    EXPECT_EQ(json_of(merged), json_of(single));
    // And the file format round-trips.
    EXPECT_EQ(json_of(top_patches_from_json(top_patches_to_json(single), "x")), json_of(single));

    // Shard sets that do not fit together.
    expect_error([&] { merge_top_patches({shards[0], shards[1]}); }, "shard 1/3 is missing");
    expect_error([&] { merge_top_patches({shards[0], shards[1], shards[2], shards[1]}); }, "given twice");
    auto other_k = shards[2];
    other_k.k = 5;
    expect_error([&] { merge_top_patches({shards[0], shards[1], other_k}); }, "another k");
    auto other_model = shards[2];
    other_model.model_hash = "0123";
    expect_error([&] { merge_top_patches({shards[0], shards[1], other_model}); }, "another model");
    auto other_data = shards[2];
    other_data.data_hash = "0123";
    expect_error([&] { merge_top_patches({shards[0], shards[1], other_data}); }, "another dataset");
    auto other_layers = shards[2];
    other_layers.layers.pop_back();
    expect_error([&] { merge_top_patches({shards[0], shards[1], other_layers}); }, "another set of layers");
    auto other_n = shards[2];
    other_n.shard_count = 4;
    expect_error([&] { merge_top_patches({shards[0], shards[1], other_n}); }, "does not fit");
    expect_error([] { top_patches_from_json(nlohmann::json::parse("{\"a\": 1}"), "'x.json'"); },
                 "not a top_patches.json");
    // Found by fuzz_top_patches: a "format" that is not a string escaped as a JSON type error.
    expect_error([] { top_patches_from_json(nlohmann::json::parse("{\"format\": [1]}"), "'f.json'"); },
                 "not a top_patches.json");
    // Found by fuzz_top_patches: numbers that are not whole ones (or do not fit) where whole ones
    // belong were converted, 4.9e113 with undefined behaviour.
    nlohmann::json bad = top_patches_to_json(single);
    bad["options"]["k"] = 2.5;
    expect_error([&] { top_patches_from_json(bad, "'k.json'"); }, "'k.json' is damaged (expected a whole number");
    bad = top_patches_to_json(single);
    bad["layers"][0]["channels"][0]["fine_histogram"]["keys"][0] = 4.9e113;
    expect_error([&] { top_patches_from_json(bad, "'keys.json'"); }, "is damaged (expected a whole number in 0..4294967295");
    bad = top_patches_to_json(single);
    bad["layers"][0]["channels"][0]["top"][0]["box"][1] = -1e300;
    expect_error([&] { top_patches_from_json(bad, "'box.json'"); }, "is damaged");
    bad = top_patches_to_json(single);
    bad["layers"][0]["receptive_field"]["size"] = {3.5, 3};
    expect_error([&] { top_patches_from_json(bad, "'rf.json'"); }, "is damaged");
    // ... and a histogram whose maximum lies below its minimum indexed before its first bin.
    bad = top_patches_to_json(single);
    bad["layers"][0]["channels"][0]["histogram"]["min"] = 5.0;
    bad["layers"][0]["channels"][0]["histogram"]["max"] = -5.0;
    expect_error([&] { top_patches_from_json(bad, "'minmax.json'"); }, "has a damaged histogram");
    ChannelPatches upside_down;
    upside_down.min = 5.f;
    upside_down.max = -5.f;
    upside_down.fine = {{1000u, 3}};
    const Histogram h = make_histogram(upside_down, 4);
    ASSERT_EQ(h.counts.size(), 1u);
    EXPECT_EQ(h.counts[0], 3);
}

TEST(TopPatches, InterruptedScanResumesToOnePass) {
    TempDir dir;
    Model model = Model::load(fixture("lenet_scripted.pt"));
    const auto files = make_data(dir, "d", 64, 1, 28, 28, 7);
    Dataset data = open_npy(files);
    const auto pre = pre_for(model, data);
    const auto indices = all_indices(data);
    TopPatchesOptions opts;
    opts.layers = {"conv1", "conv2", "fc2"};
    opts.k = 3;
    opts.batch_size = 8;
    const auto single = top_patches(model, data, indices, pre, opts);

    opts.checkpoint_path = dir / "scan.ckpt";
    opts.checkpoint_every = 2;
    int calls = 0;
    const RunContext stop_after_two{[&](double) { return ++calls < 3; }};
    EXPECT_THROW(top_patches(model, data, indices, pre, opts, stop_after_two), Cancelled);
    ASSERT_TRUE(std::filesystem::exists(opts.checkpoint_path));
    const auto saved = nlohmann::json::parse(read_file(opts.checkpoint_path));
    EXPECT_EQ(saved.at("checkpoint_position").get<int64_t>(), 3);
    EXPECT_EQ(saved.at("images_scanned").get<int64_t>(), 24);

    // Resuming scans only the 5 remaining batches and gives what one pass gives.
    calls = 0;
    const RunContext count_calls{[&](double) { return ++calls > 0; }};
    const auto resumed = top_patches(model, data, indices, pre, opts, count_calls);
    EXPECT_EQ(calls, 5);
    EXPECT_EQ(json_of(resumed), json_of(single));

    // A checkpoint from another model, data or options is refused.
    Model other = Model::load(fixture("lenet_traced.pt"));
    other.set_input_shape({1, 28, 28});
    expect_error([&] { top_patches(other, data, indices, pre, opts); }, "another model");
    Dataset other_data = open_npy(make_data(dir, "other", 64, 1, 28, 28, 8));
    expect_error([&] { top_patches(model, other_data, indices, pre, opts); }, "another dataset");
    auto o = opts;
    o.k = 4;
    expect_error([&] { top_patches(model, data, indices, pre, o); }, "another k");
    o = opts;
    o.layers = {"conv1"};
    expect_error([&] { top_patches(model, data, indices, pre, o); }, "another set of layers");
    o = opts;
    o.batch_size = 16;
    expect_error([&] { top_patches(model, data, indices, pre, o); }, "another batch size");
    expect_error([&] { top_patches(model, data, parse_indices("0:40", 64), pre, opts); },
                 "another selection");
    o = opts;
    o.shard_count = 2;
    expect_error([&] { top_patches(model, data, indices, pre, o); }, "use that shard's checkpoint");
    write_file_atomic(opts.checkpoint_path, "{\"format\": \"something else\"}");
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "not a top-patches checkpoint");
    write_file_atomic(opts.checkpoint_path, "{\"format\": ");
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "not valid JSON");
}

TEST(TopPatches, BadInput) {
    TempDir dir;
    Model model = Model::load(fixture("lenet_scripted.pt"));
    Dataset data = open_npy(make_data(dir, "d", 16, 1, 28, 28, 1));
    const auto pre = pre_for(model, data);
    const auto indices = all_indices(data);
    TopPatchesOptions opts;
    opts.k = 0;
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "k must be at least 1");
    opts.k = 17;
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "larger than the 16 selected images");
    opts.k = 3;
    opts.layers = {"conv3"};
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "unknown layer 'conv3'");
    opts.layers = {"conv1", "conv1"};
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "listed twice");
    opts.layers = {};
    opts.shard_index = 3;
    opts.shard_count = 3;
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "shard 3/3 does not exist");
    opts.shard_index = 0;
    opts.shard_count = 5;
    opts.batch_size = 4;
    expect_error([&] { top_patches(model, data, indices, pre, opts); }, "5 shards but only 4 batches");
}

// --- receptive-field boxes against gradient-derived regions -----------------------------------

namespace jit = torch::jit;

// A sequential model with positive weights: conv 3x3 pad 1 -> relu -> conv 3x3 stride 2 pad 1 ->
// relu -> avg pool 2 -> conv 3x3 dilation 2 pad 1. On positive inputs every activation is
// positive, so the input gradient of a unit is non-zero exactly on its receptive field.
Model positive_sequential_model() {
    auto cu = std::make_shared<jit::CompilationUnit>();
    torch::manual_seed(11);
    jit::Module net(c10::QualifiedName("__torch__.rf_test.Net"), cu, /*shouldMangle=*/true);
    net.register_attribute("training", c10::BoolType::get(), false);
    auto add_conv = [&](const std::string& name, int64_t in, int64_t out, int stride, int pad, int dil) {
        jit::Module m(c10::QualifiedName("__torch__.rf_test.Conv2d"), cu, /*shouldMangle=*/true);
        m.register_attribute("training", c10::BoolType::get(), false);
        m.register_parameter("weight", torch::rand({out, in, 3, 3}) + 0.05, false);
        m.register_parameter("bias", torch::rand({out}) + 0.05, false);
        m.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, [" +
                 std::to_string(stride) + ", " + std::to_string(stride) + "], [" + std::to_string(pad) + ", " +
                 std::to_string(pad) + "], [" + std::to_string(dil) + ", " + std::to_string(dil) + "], 1)\n");
        net.register_module(name, m);
    };
    auto add_plain = [&](const std::string& name, const std::string& cls, const std::string& body) {
        jit::Module m(c10::QualifiedName("__torch__.rf_test." + cls), cu, /*shouldMangle=*/true);
        m.register_attribute("training", c10::BoolType::get(), false);
        m.define("def forward(self, x):\n    return " + body + "\n");
        net.register_module(name, m);
    };
    add_conv("conv1", 2, 3, 1, 1, 1);
    add_plain("relu1", "ReLU", "torch.relu(x)");
    add_conv("conv2", 3, 4, 2, 1, 1);
    add_plain("relu2", "ReLU", "torch.relu(x)");
    add_plain("pool", "AvgPool2d", "torch.avg_pool2d(x, [2, 2], [2, 2], [0, 0], False, True, None)");
    add_conv("conv3", 4, 3, 1, 1, 2);
    net.define("def forward(self, x):\n"
               "    x = self.relu1.forward(self.conv1.forward(x))\n"
               "    x = self.relu2.forward(self.conv2.forward(x))\n"
               "    return self.conv3.forward(self.pool.forward(x))\n");
    ModelMeta meta;
    meta.input_shape = {2, 24, 24};
    return Model::from_module(net, meta);
}

// Bounding box of the pixels where d unit / d input is non-zero, for one image.
Box gradient_region(const Model& model, const at::Tensor& image_chw, const std::string& layer, int64_t c,
                    int64_t y, int64_t x) {
    auto g = model.gradients(
        image_chw.unsqueeze(0), [&](const TapResult& r) { return r.taps.at(layer)[0][c][y][x]; }, {}, {layer});
    const at::Tensor nz = g.input_grad[0].abs().sum(0).ne(0);
    const at::Tensor rows = nz.any(1).nonzero().flatten(), cols = nz.any(0).nonzero().flatten();
    if (rows.numel() == 0) return Box{-1, -1, -1, -1};
    return Box{rows.min().item<int64_t>(), cols.min().item<int64_t>(), rows.max().item<int64_t>() + 1,
               cols.max().item<int64_t>() + 1};
}

TEST(TopPatches, ReceptiveFieldBoxesEqualGradientRegions) {
    TempDir dir;
    Model model = positive_sequential_model();
    torch::manual_seed(2);
    const at::Tensor images = torch::rand({24, 2, 24, 24}) + 0.01;  // positive
    write_npy(dir / "pos.npy", images);
    Dataset data = Dataset::open(dir / "pos.npy");
    const auto pre = pre_for(model, data);
    ASSERT_TRUE(pre.as_is);
    TopPatchesOptions opts;
    opts.k = 3;
    opts.batch_size = 8;
    const auto r = top_patches(model, data, all_indices(data), pre, opts);
    ASSERT_EQ(r.layers.size(), 3u);
    opts.gradient_boxes = true;
    const auto from_grad = top_patches(model, data, all_indices(data), pre, opts);
    int checked = 0, smaller_than_image = 0;
    for (size_t l = 0; l < r.layers.size(); ++l) {
        const auto& L = r.layers[l];
        ASSERT_EQ(L.rf.kind, ReceptiveField::Kind::Exact) << L.name;
        EXPECT_FALSE(L.gradient_boxes);
        EXPECT_TRUE(from_grad.layers[l].gradient_boxes);
        for (size_t c = 0; c < L.channels.size(); ++c) {
            const auto& ch = L.channels[c];
            const auto& gch = from_grad.layers[l].channels[c];
            ASSERT_EQ(ch.top.size(), gch.top.size());
            for (int list = 0; list < 2; ++list) {
                const auto& es = list == 0 ? ch.top : ch.bottom;
                const auto& ges = list == 0 ? gch.top : gch.bottom;
                for (size_t i = 0; i < es.size(); ++i) {
                    const auto& e = es[i];
                    const Box want = gradient_region(model, images[e.image], L.name, int64_t(c), e.y, e.x);
                    const std::string what = L.name + " c" + std::to_string(c) + " image " + std::to_string(e.image) +
                                             " at " + std::to_string(e.y) + "," + std::to_string(e.x);
                    EXPECT_EQ(e.box.y0, want.y0) << what;
                    EXPECT_EQ(e.box.x0, want.x0) << what;
                    EXPECT_EQ(e.box.y1, want.y1) << what;
                    EXPECT_EQ(e.box.x1, want.x1) << what;
                    // The library's own gradient-derived boxes agree too.
                    EXPECT_EQ(ges[i].box.y0, want.y0) << what;
                    EXPECT_EQ(ges[i].box.x0, want.x0) << what;
                    EXPECT_EQ(ges[i].box.y1, want.y1) << what;
                    EXPECT_EQ(ges[i].box.x1, want.x1) << what;
                    ++checked;
                    if (want.y1 - want.y0 < 24 || want.x1 - want.x0 < 24) ++smaller_than_image;
                }
            }
        }
    }
    EXPECT_EQ(checked, 2 * 3 * (3 + 4 + 3));
    EXPECT_GT(smaller_than_image, checked / 2) << "boxes should be local, not whole images";
}

TEST(TopPatches, CropsShowTheBoxes) {
    TempDir dir;
    Model model = Model::load(fixture("lenet_scripted.pt"));
    torch::manual_seed(4);
    const at::Tensor raw = torch::randint(0, 256, {12, 28, 28}, torch::kLong).to(torch::kByte);
    write_npy(dir / "u8.npy", raw);  // uint8 [N,H,W]: scaled to [0,1]
    Dataset data = Dataset::open(dir / "u8.npy");
    const auto pre = pre_for(model, data);
    TopPatchesOptions opts;
    opts.layers = {"conv1"};  // 5x5 receptive field
    opts.k = 4;
    const auto r = top_patches(model, data, all_indices(data), pre, opts);
    const auto& ch = r.layers[0].channels[2];
    const auto crops = patch_crops(data, pre, {ch.top, ch.bottom}, 5);
    ASSERT_EQ(crops.size(), 2u);
    ASSERT_EQ(crops[0].size(), 4u);
    for (size_t i = 0; i < ch.top.size(); ++i) {
        const auto& e = ch.top[i];
        const cv::Mat& m = crops[0][i];
        ASSERT_EQ(m.type(), CV_8UC3);
        const int64_t bh = e.box.y1 - e.box.y0, bw = e.box.x1 - e.box.x0;
        ASSERT_EQ(std::max(m.rows, m.cols), 5);
        if (bh != 5 || bw != 5) continue;  // clipped at the border: resized
        for (int64_t y = 0; y < 5; ++y)
            for (int64_t x = 0; x < 5; ++x)
                EXPECT_EQ(m.at<cv::Vec3b>(int(y), int(x))[0], raw[e.image][e.box.y0 + y][e.box.x0 + x].item<uint8_t>());
    }
    // Larger crops are enlarged versions.
    const auto big = patch_crops(data, pre, {ch.top}, 40);
    EXPECT_EQ(std::max(big[0][0].rows, big[0][0].cols), 40);
}

// A model whose only layer is the flattened input, so per-image maxima are the data's values.
Model flatten_model(int64_t f) {
    auto cu = std::make_shared<jit::CompilationUnit>();
    jit::Module net(c10::QualifiedName("__torch__.hist_test.Net"), cu, /*shouldMangle=*/true);
    net.register_attribute("training", c10::BoolType::get(), false);
    jit::Module flat(c10::QualifiedName("__torch__.hist_test.Flatten"), cu, /*shouldMangle=*/true);
    flat.register_attribute("training", c10::BoolType::get(), false);
    flat.define("def forward(self, x):\n    return torch.flatten(x, 1)\n");
    net.register_module("flat", flat);
    net.define("def forward(self, x):\n    return self.flat.forward(x) * 2.0\n");
    ModelMeta meta;
    meta.input_shape = {1, 1, f};
    return Model::from_module(net, meta);
}

TEST(TopPatches, HistogramAndDeadCountsAreExact) {
    TempDir dir;
    // Channel 0: mixed signs, zeros and ties; channel 1: always 0 (dead); channel 2: a wide range.
    const std::vector<float> c0 = {-2.5f, -1.0f, -0.999f, 0.0f, 0.0f, 1e-6f, 0.25f, 0.3f, 1.0f, 1.004f,
                                   3.75f, 0.3f, -1.0f, 2.0f, 2.0f, 0.7f};
    const int64_t n = static_cast<int64_t>(c0.size());
    at::Tensor x = torch::zeros({n, 1, 1, 3});
    for (int64_t i = 0; i < n; ++i) {
        x[i][0][0][0] = c0[size_t(i)];
        x[i][0][0][2] = std::pow(10.0f, float(i) / 3.0f - 2.0f);
    }
    write_npy(dir / "v.npy", x);
    Dataset data = Dataset::open(dir / "v.npy");
    Model model = flatten_model(3);
    const auto pre = pre_for(model, data);
    TopPatchesOptions opts;
    opts.layers = {"flat"};
    opts.k = 4;
    opts.batch_size = 4;
    opts.histogram_bins = 8;
    const auto r = top_patches(model, data, all_indices(data), pre, opts);
    ASSERT_EQ(r.layers[0].channels.size(), 3u);
    EXPECT_EQ(r.layers[0].rf.kind, ReceptiveField::Kind::Global);
    for (int c = 0; c < 3; ++c) {
        const auto& ch = r.layers[0].channels[size_t(c)];
        std::vector<float> v;
        for (int64_t i = 0; i < n; ++i) v.push_back(x[i][0][0][c].item<float>());  // as stored
        int64_t dead = 0;
        for (float f : v) dead += f > 0.f ? 0 : 1;
        EXPECT_EQ(ch.dead, dead) << c;
        EXPECT_EQ(ch.min, *std::min_element(v.begin(), v.end())) << c;
        EXPECT_EQ(ch.max, *std::max_element(v.begin(), v.end())) << c;
        const Histogram h = make_histogram(ch, 8);
        int64_t total = 0;
        for (size_t b = 0; b < h.counts.size(); ++b) {
            int64_t in_bin = 0;
            for (float f : v) in_bin += (f >= h.edges[b] && f < h.edges[b + 1]) ? 1 : 0;
            EXPECT_EQ(h.counts[b], in_bin) << "channel " << c << " bin " << b;
            total += h.counts[b];
        }
        EXPECT_EQ(total, n) << c;
        if (c == 1) {
            EXPECT_EQ(h.counts.size(), 1u);  // a constant channel has one bin
            EXPECT_EQ(h.edges[0], 0.0f);
        } else {
            // Nearly equal widths: every edge within 1% of the range of its equal-width place.
            ASSERT_EQ(h.edges.size(), 9u) << c;
            const double lo = ch.min, hi = ch.max;
            for (size_t b = 0; b < h.edges.size(); ++b) {
                const double want = lo + (hi - lo) * double(b) / 8.0;
                EXPECT_NEAR(h.edges[b], want, 0.01 * (hi - lo)) << "channel " << c << " edge " << b;
            }
        }
        // Entries: the values themselves, at unit (0, 0), with the whole image as the box.
        ASSERT_EQ(ch.top.size(), 4u);
        EXPECT_EQ(ch.top[0].value, ch.max);
        EXPECT_EQ(ch.bottom[0].value, ch.min);
        EXPECT_EQ(ch.top[0].box.y1, 1);
        EXPECT_EQ(ch.top[0].box.x1, 3);
    }
    // Ties: channel 0 has -1.0 at images 1 and 12, 2.0 at 13 and 14.
    const auto& ch0 = r.layers[0].channels[0];
    EXPECT_EQ(ch0.bottom[1].image, 1);
    EXPECT_EQ(ch0.bottom[2].image, 12);
    EXPECT_EQ(ch0.top[1].image, 13);
    EXPECT_EQ(ch0.top[2].image, 14);
    // Shards merge exactly (histogram included), also with an odd batch split.
    std::vector<TopPatchesResult> shards;
    for (int i = 0; i < 4; ++i) {
        auto o = opts;
        o.shard_index = i;
        o.shard_count = 4;
        shards.push_back(top_patches(model, data, all_indices(data), pre, o));
    }
    EXPECT_EQ(json_of(merge_top_patches(shards)), json_of(r));
}

}  // namespace
}  // namespace convscope
