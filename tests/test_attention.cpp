// Transformers: layouts, token maps, attention probabilities, rollout and gradient-weighted
// rollout, Grad-CAM on tokens, against PyTorch on a scripted torchvision ViT and a traced Swin
// (tests/fixtures/transformer_fixtures.py).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "convscope/methods/activations.hpp"
#include "convscope/methods/attention.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/layout.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

Model load_fixture(const std::string& name) {
    Model m = Model::load(fixture(name + ".pt"));
    m.set_input_shape({3, 32, 32});
    return m;
}

nlohmann::json reference(const std::string& name) {
    std::ifstream f(fixture(name + "/reference.json"));
    return nlohmann::json::parse(f);
}

// The model's layers that PyTorch's forward pre-hooks saw (reference "module_order") are listed
// in that order; returns how many there are.
size_t expect_execution_order(const Model& m, const nlohmann::json& ref) {
    const auto order = ref["module_order"].get<std::vector<std::string>>();
    std::vector<std::string> listed;
    for (const auto& l : m.layers())
        if (std::find(order.begin(), order.end(), l.name) != order.end()) listed.push_back(l.name);
    std::vector<std::string> expected;
    for (const auto& n : order)
        if (std::find(listed.begin(), listed.end(), n) != listed.end()) expected.push_back(n);
    EXPECT_EQ(listed, expected);
    return listed.size();
}

}  // namespace

TEST(Attention, VitLayersHaveTokenLayoutsAndGlobalFieldsAfterAttention) {
    Model m = load_fixture("vit_tiny");
    const LayerInfo& ln = m.layer("encoder.layers.encoder_layer_0.ln_1");
    EXPECT_EQ(ln.layout.kind, LayoutKind::Tokens);
    EXPECT_EQ(ln.layout.grid_h, 4);
    EXPECT_EQ(ln.layout.grid_w, 4);
    EXPECT_EQ(ln.layout.extra_front, 1);
    EXPECT_EQ(ln.layout.grid_source, "graph");
    // Before any attention a patch token sees its 8x8 patch; after it, the whole image.
    EXPECT_EQ(ln.rf.kind, ReceptiveField::Kind::Exact);
    EXPECT_EQ(ln.rf.size_y, 8);
    EXPECT_EQ(ln.rf.stride_y, 8);
    EXPECT_EQ(m.layer("encoder.layers.encoder_layer_0.ln_2").rf.kind, ReceptiveField::Kind::Global);
    EXPECT_EQ(m.layer("heads.head").layout.kind, LayoutKind::Vector);
    const auto att = m.attention_layers();
    ASSERT_EQ(att.size(), 2u);
    EXPECT_EQ(att[0], "encoder.layers.encoder_layer_0.self_attention.attention_probs");
    EXPECT_EQ(m.layer(att[0]).layout.heads, 2);
    EXPECT_EQ(m.layer(att[0]).layout.windows, 1);
}

TEST(Attention, VitOutputsAndTokenMapsEqualPyTorch) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    const auto taps = m.forward_taps(x, {"encoder.layers.encoder_layer_1.ln_1"});
    expect_close(taps.output, read_npy(fixture("vit_tiny/output.npy")), 1e-5, "logits with explicit attention");
    const at::Tensor tokens = read_npy(fixture("vit_tiny/tokens_ln1.npy"));
    const Layout& l = m.layer("encoder.layers.encoder_layer_1.ln_1").layout;
    const at::Tensor maps = as_maps(taps.taps.at("encoder.layers.encoder_layer_1.ln_1"), l);
    expect_close(maps, tokens.narrow(1, 1, 16).transpose(1, 2).reshape({2, 32, 4, 4}), 1e-5, "token maps");
    expect_close(extra_tokens(taps.taps.at("encoder.layers.encoder_layer_1.ln_1"), l), tokens.narrow(1, 0, 1), 1e-5,
                 "class token");
    expect_close(from_maps(maps, l).narrow(1, 1, 16), tokens.narrow(1, 1, 16), 1e-6, "from_maps inverts as_maps");

    ActivationsOptions ao;
    ao.layers = {"encoder.layers.encoder_layer_1.ln_1"};
    ao.pictures = false;
    const auto r = activations(m, x, ao);
    expect_close(r.layers.at(0).values, tokens.narrow(1, 1, 16).transpose(1, 2).reshape({2, 32, 4, 4}), 1e-5,
                 "activations of a token layer");
}

TEST(Attention, VitAttentionProbabilitiesEqualNeedWeights) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    AttentionOptions o;
    o.layers = {"encoder.layers.encoder_layer_1"};  // a block picks the attention inside it
    const auto r = attention(m, x, o);
    ASSERT_EQ(r.layers.size(), 1u);
    expect_close(r.layers[0].probs, read_npy(fixture("vit_tiny/attention_1.npy")), 1e-5, "layer 1 attention");
    const auto all = attention(m, x, {});
    expect_close(all.layers[0].probs, read_npy(fixture("vit_tiny/attention_0.npy")), 1e-5, "layer 0 attention");
    // A query's row over the grid, and the class token's.
    const at::Tensor q = query_attention(all.layers[0], 1, 2);
    expect_close(q, all.layers[0].probs.select(2, 1 + 1 * 4 + 2).narrow(2, 1, 16).reshape({2, 2, 4, 4}), 0,
                 "query 1,2");
    expect_error([&] { query_attention(all.layers[0], 4, 0); }, "outside");
    expect_error([&] { query_attention(all.layers[0], -1, 1); }, "extra tokens");
}

TEST(Attention, RolloutAndGradientRolloutEqualPlainReferences) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    AttributionOptions o;
    o.method = AttributionMethod::AttentionRollout;
    auto r = attribute(m, x, o);
    expect_close(r.attributions, read_npy(fixture("vit_tiny/rollout_mean.npy")), 1e-5, "rollout, mean");
    EXPECT_EQ(r.heat.sizes(), (std::vector<int64_t>{2, 32, 32}));
    o.head_fusion = HeadFusion::Max;
    o.discard_ratio = 0.5;
    r = attribute(m, x, o);
    expect_close(r.attributions, read_npy(fixture("vit_tiny/rollout_max_discard.npy")), 1e-5, "rollout, max, discard");
    o = AttributionOptions{};
    o.method = AttributionMethod::AttentionGradient;
    r = attribute(m, x, o);
    const auto targets = reference("vit_tiny")["targets"].get<std::vector<int64_t>>();
    EXPECT_EQ(r.targets, targets);
    expect_close(r.attributions, read_npy(fixture("vit_tiny/gradient_rollout.npy")), 1e-4, "gradient rollout");
}

TEST(Attention, GradCamOnTokensEqualsReferenceAndDefaultsToTheLastBlocksNorm) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    AttributionOptions o;
    o.method = AttributionMethod::GradCam;
    const auto r = attribute(m, x, o);
    EXPECT_EQ(r.layer, "encoder.layers.encoder_layer_1.ln_1");
    expect_close(r.attributions, read_npy(fixture("vit_tiny/gradcam_ln1.npy")), 1e-4, "Grad-CAM on tokens");
    o.layer = "heads.head";
    expect_error([&] { attribute(m, x, o); }, "is not spatial");
    const auto methods = attribution_methods_for(m);
    EXPECT_NE(std::find(methods.begin(), methods.end(), "attention-gradient"), methods.end());
}

TEST(Attention, SwinLayersInExecutionOrderWithChannelsLastMapsAndWindowedAttention) {
    Model m = load_fixture("swin_tiny");
    EXPECT_GT(expect_execution_order(m, reference("swin_tiny")), 30u);
    const LayerInfo& s3 = m.layer("features.3.1");
    EXPECT_EQ(s3.layout.kind, LayoutKind::Nhwc);
    EXPECT_EQ(s3.layout.grid_h, 4);
    EXPECT_EQ(s3.layout.channels, 32);
    for (const auto& l : m.layers()) EXPECT_NE(l.rf.kind, ReceptiveField::Kind::Unknown) << l.name;
    // A window of 2x2 tokens of stride 4 widens the field by (2*2-1)-1 tokens.
    EXPECT_EQ(m.layer("features.1.0").rf.size_y, 4 + 2 * 4);

    const at::Tensor x = read_npy(fixture("swin_tiny/input.npy"));
    const auto taps = m.forward_taps(x, {"features.3.1"});
    expect_close(taps.output, read_npy(fixture("swin_tiny/output.npy")), 1e-5, "logits");
    expect_close(as_maps(taps.taps.at("features.3.1"), s3.layout),
                 read_npy(fixture("swin_tiny/stage.npy")).permute({0, 3, 1, 2}), 1e-5, "channels-last maps");

    const auto r = attention(m, x, {});
    ASSERT_EQ(r.layers.size(), 4u);
    for (size_t i = 0; i < 4; ++i)
        expect_close(r.layers[i].probs, read_npy(fixture("swin_tiny/attention_" + std::to_string(i) + ".npy")), 1e-5,
                     "window attention " + std::to_string(i));
    EXPECT_EQ(r.layers[1].layout.shift, 1);
    EXPECT_EQ(r.layers[1].layout.window, 2);
    // A query's window on the grid: its 4 keys carry the probabilities, the rest is zero.
    const at::Tensor q = query_attention(r.layers[0], 3, 5);
    EXPECT_NEAR(q.sum().item<double>(), 2.0 * 2.0, 1e-4);  // 2 images x 2 heads, rows sum to 1
    EXPECT_EQ((q[0][0] != 0).sum().item<int64_t>(), 4);
    expect_error([&] { attribute(m, x, [] { AttributionOptions o; o.method = AttributionMethod::AttentionRollout; return o; }()); },
                 "windowed");
}

// The full-size models users bring: torchvision's vit_b_16 (scripted) and swin_t (traced) at
// 224x224, random weights, one input each.
TEST(Attention, FullSizeVitB16EqualsPyTorch) {
    Model m = Model::load(fixture("vit_b_16.pt"));
    m.set_input_shape({3, 224, 224});
    const nlohmann::json ref = reference("vit_b_16");
    const int64_t blocks = ref["layers"].get<int64_t>();
    ASSERT_EQ(blocks, 12);
    ASSERT_EQ(ref["grid"].get<int64_t>(), 14);
    const std::string last = "encoder.layers.encoder_layer_11.ln_1";
    const LayerInfo& ln = m.layer(last);
    EXPECT_EQ(ln.layout.kind, LayoutKind::Tokens);
    EXPECT_EQ(ln.layout.grid_h, 14);
    EXPECT_EQ(ln.layout.grid_w, 14);
    EXPECT_EQ(ln.layout.extra_front, 1);
    EXPECT_EQ(ln.layout.channels, 768);
    EXPECT_EQ(ln.rf.kind, ReceptiveField::Kind::Global);
    EXPECT_EQ(m.layer("encoder.layers.encoder_layer_0.ln_1").rf.size_y, 16);
    for (const auto& l : m.layers()) EXPECT_NE(l.rf.kind, ReceptiveField::Kind::Unknown) << l.name;

    const at::Tensor x = read_npy(fixture("vit_b_16/input.npy"));
    const auto taps = m.forward_taps(x, {last});
    expect_close(taps.output, read_npy(fixture("vit_b_16/output.npy")), 1e-4, "ViT-B/16 logits");
    const at::Tensor tokens = read_npy(fixture("vit_b_16/tokens_ln1.npy"));
    expect_close(as_maps(taps.taps.at(last), ln.layout),
                 tokens.narrow(1, 1, 196).transpose(1, 2).reshape({1, 768, 14, 14}), 1e-4, "ViT-B/16 token maps");

    const auto att = attention(m, x, {});
    ASSERT_EQ(att.layers.size(), 12u);
    for (int64_t b = 0; b < blocks; ++b)
        expect_close(att.layers[static_cast<size_t>(b)].probs,
                     read_npy(fixture("vit_b_16/attention_" + std::to_string(b) + ".npy")), 1e-5,
                     "ViT-B/16 attention " + std::to_string(b));

    AttributionOptions o;
    o.method = AttributionMethod::AttentionRollout;
    expect_close(attribute(m, x, o).attributions, read_npy(fixture("vit_b_16/rollout_mean.npy")), 1e-5,
                 "ViT-B/16 rollout, mean");
    o.head_fusion = HeadFusion::Max;
    o.discard_ratio = 0.5;
    expect_close(attribute(m, x, o).attributions, read_npy(fixture("vit_b_16/rollout_max_discard.npy")), 1e-5,
                 "ViT-B/16 rollout, max, discard");
    o = AttributionOptions{};
    o.method = AttributionMethod::AttentionGradient;
    const auto g = attribute(m, x, o);
    EXPECT_EQ(g.targets, ref["targets"].get<std::vector<int64_t>>());
    expect_close(g.attributions, read_npy(fixture("vit_b_16/gradient_rollout.npy")), 1e-4,
                 "ViT-B/16 gradient rollout");
    o.method = AttributionMethod::GradCam;
    const auto cam = attribute(m, x, o);
    EXPECT_EQ(cam.layer, last);
    expect_close(cam.attributions, read_npy(fixture("vit_b_16/gradcam_ln1.npy")), 1e-4, "ViT-B/16 Grad-CAM");
}

TEST(Attention, FullSizeSwinTEqualsPyTorch) {
    Model m = Model::load(fixture("swin_t.pt"));
    m.set_input_shape({3, 224, 224});
    const nlohmann::json ref = reference("swin_t");
    EXPECT_GT(expect_execution_order(m, ref), 140u);  // features.7 after features.5
    for (const auto& l : m.layers()) EXPECT_NE(l.rf.kind, ReceptiveField::Kind::Unknown) << l.name;
    const std::string stage = ref["stage"].get<std::string>();
    const LayerInfo& s = m.layer(stage);
    EXPECT_EQ(s.layout.kind, LayoutKind::Nhwc);
    EXPECT_EQ(s.layout.grid_h, 14);
    EXPECT_EQ(s.layout.channels, 384);

    const at::Tensor x = read_npy(fixture("swin_t/input.npy"));
    const auto taps = m.forward_taps(x, {stage});
    expect_close(taps.output, read_npy(fixture("swin_t/output.npy")), 1e-4, "Swin-T logits");
    expect_close(as_maps(taps.taps.at(stage), s.layout), read_npy(fixture("swin_t/stage.npy")).permute({0, 3, 1, 2}),
                 1e-4, "Swin-T channels-last maps");
    const auto r = attention(m, x, {});
    ASSERT_EQ(static_cast<int64_t>(r.layers.size()), ref["attention_layers"].get<int64_t>());
    for (size_t i = 0; i < r.layers.size(); ++i) {
        at::Tensor want = read_npy(fixture("swin_t/attention_" + std::to_string(i) + ".npy"));
        // One window over the whole 7x7 grid (the last stage) is attention over all tokens: [N,heads,Q,K].
        if (r.layers[i].layout.windows == 1) want = want.squeeze(1);
        expect_close(r.layers[i].probs, want, 1e-5, "Swin-T window attention " + std::to_string(i));
    }
    EXPECT_EQ(r.layers[0].layout.window, 7);
    EXPECT_EQ(r.layers[0].layout.shift, 0);
    EXPECT_EQ(r.layers[1].layout.shift, 3);
    // The last stage (7x7 tokens, one window) attends over all its tokens: no shift there.
    EXPECT_EQ(r.layers.back().layout.windows, 1);
    AttributionOptions o;
    o.method = AttributionMethod::GradCam;
    EXPECT_EQ(attribute(m, x, o).layer, "features.7.1.norm1");
}

TEST(Attention, BadRequestsGetOneClearMessage) {
    Model lenet = load_lenet();
    const at::Tensor x = torch::zeros({1, 1, 28, 28});
    expect_error([&] { attention(lenet, x, {}); }, "no attention layers");
    Model m = load_fixture("vit_tiny");
    AttentionOptions o;
    o.layers = {"conv_proj"};
    expect_error([&] { attention(m, torch::zeros({1, 3, 32, 32}), o); }, "holds no attention layer");
    // A grid that fits no layer's token count.
    m.set_grid(5, 5);
    EXPECT_THROW(m.layers(), UsageError);
    m.set_grid(4, 4);
    EXPECT_EQ(m.layer("encoder.layers.encoder_layer_0.ln_1").layout.grid_source, "--grid");
    EXPECT_THROW(parse_grid("7"), UsageError);
    EXPECT_THROW(parse_grid("0x3"), UsageError);
    EXPECT_EQ(parse_grid("14x14"), std::make_pair(int64_t{14}, int64_t{14}));
}

TEST(Attention, OcclusionRecomputesPastGlobalAttentionAndSaysSo) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    OcclusionOptions o;
    o.patch_h = o.patch_w = 8;
    o.stride_y = o.stride_x = 8;
    const auto r = occlusion(m, x, o);
    EXPECT_NE(r.engine_note.find("attends over all tokens"), std::string::npos) << r.engine_note;
    // Brute force: every window occluded with zeros, one forward pass each.
    const at::Tensor clean = m.forward(x);
    for (int64_t n = 0; n < 2; ++n) {
        const int64_t t = r.targets[static_cast<size_t>(n)];
        for (int64_t y = 0; y < 4; ++y)
            for (int64_t xx = 0; xx < 4; ++xx) {
                at::Tensor c = x.narrow(0, n, 1).clone();
                c.narrow(2, y * 8, 8).narrow(3, xx * 8, 8).zero_();
                const double drop = clean[n][t].item<double>() - m.forward(c)[0][t].item<double>();
                EXPECT_NEAR(r.coarse[n][y][xx].item<double>(), drop, 1e-4);
            }
    }
}

TEST(Attention, BuiltInVitHasTokenLayersAndAttentionEqualToItsDefinition) {
    Model m = untrained_vit_model(3);
    const LayerInfo& norm1 = m.layer("blocks.0.norm1");
    EXPECT_EQ(norm1.layout.kind, LayoutKind::Tokens);
    EXPECT_EQ(norm1.layout.grid_h, 7);
    EXPECT_EQ(norm1.layout.extra_front, 1);
    EXPECT_EQ(norm1.rf.size_y, 4);
    const auto att = m.attention_layers();
    ASSERT_EQ(att.size(), 4u);
    EXPECT_EQ(att[0], "blocks.0.attn.attention_probs");
    const at::Tensor x = randn({2, 1, 28, 28}, 4);
    const auto taps = m.forward_taps(x, {"blocks.0.norm1", att[0]});
    // softmax(q k^T / sqrt(d_head)) from the tapped norm and the qkv weights, head by head.
    const at::Tensor t = taps.taps.at("blocks.0.norm1");
    const at::Tensor w = m.parameter("blocks.0.attn.qkv", "weight"), b = m.parameter("blocks.0.attn.qkv", "bias");
    const at::Tensor qkv = torch::linear(t, w, b);  // [2,50,192]
    at::Tensor ref = torch::empty({2, 4, 50, 50});
    for (int64_t h = 0; h < 4; ++h) {
        const at::Tensor q = qkv.narrow(2, h * 16, 16), k = qkv.narrow(2, 64 + h * 16, 16);
        ref.select(1, h).copy_(torch::softmax(torch::matmul(q, k.transpose(1, 2)) / 4.0, -1));
    }
    expect_close(taps.taps.at(att[0]).squeeze(1), ref, 1e-5, "built-in ViT attention");
    AttributionOptions o;
    o.method = AttributionMethod::GradCam;
    EXPECT_EQ(attribute(m, x, o).layer, "blocks.3.norm1");
    o.method = AttributionMethod::AttentionRollout;
    const auto r = attribute(m, x, o);
    EXPECT_EQ(r.attributions.sizes(), (std::vector<int64_t>{2, 7, 7}));
}

TEST(Attention, EmbeddingPoolsTokensAndTopPatchesCropTheTokensPatch) {
    Model m = load_fixture("vit_tiny");
    const Dataset data = Dataset::open(fixture("vit_tiny/input.npy"));
    const at::Tensor tokens = read_npy(fixture("vit_tiny/tokens_ln1.npy"));
    LayerFeaturesOptions lo;
    lo.layer = "encoder.layers.encoder_layer_1.ln_1";
    lo.pool = TokenPool::Cls;
    expect_close(layer_features(m, data, {0, 1}, lo).features, tokens.select(1, 0), 1e-5, "class token");
    lo.pool = TokenPool::Mean;
    expect_close(layer_features(m, data, {0, 1}, lo).features, tokens.narrow(1, 1, 16).mean(1), 1e-5,
                 "mean of the patch tokens");
    lo.pool = TokenPool::Auto;
    expect_close(layer_features(m, data, {0, 1}, lo).features, tokens.select(1, 0), 1e-5, "auto: the class token");
    lo.layer = "conv_proj";
    lo.pool = TokenPool::Cls;
    expect_error([&] { layer_features(m, data, {0, 1}, lo); }, "needs a token layer");

    TopPatchesOptions to;
    to.layers = {"encoder.layers.encoder_layer_1.ln_1"};
    to.k = 1;
    to.lowest = false;
    const auto r = top_patches(m, data, {0, 1}, preprocess_for(m, data), to);
    ASSERT_EQ(r.layers.size(), 1u);
    const auto& L = r.layers[0];
    EXPECT_EQ(L.output_shape, (std::vector<int64_t>{32, 4, 4}));
    EXPECT_EQ(L.rf.kind, ReceptiveField::Kind::Global);
    const at::Tensor maps = tokens.narrow(1, 1, 16).transpose(1, 2).reshape({2, 32, 16});
    for (int64_t c = 0; c < 32; ++c) {
        const PatchEntry& e = L.channels[static_cast<size_t>(c)].top.at(0);
        const at::Tensor best = std::get<0>(maps.select(1, c).max(1));  // per image
        const int64_t image = best[0].item<float>() >= best[1].item<float>() ? 0 : 1;
        EXPECT_EQ(e.image, image) << c;
        EXPECT_NEAR(e.value, best[image].item<float>(), 1e-5);
        // The crop is the token's own 8x8 patch.
        EXPECT_EQ(e.box.y0, e.y * 8);
        EXPECT_EQ(e.box.x1, e.x * 8 + 8);
    }
}

TEST(Attention, TokenMaskingEqualsPixelOcclusionOnWholePatchesAndReplacesTokensOtherwise) {
    Model m = load_fixture("vit_tiny");
    const at::Tensor x = read_npy(fixture("vit_tiny/input.npy"));
    OcclusionOptions o;
    o.patch_h = o.patch_w = 8;
    o.stride_y = o.stride_x = 8;
    const auto pixels = occlusion(m, x, o);
    o.tokens = true;
    const auto tokens = occlusion(m, x, o);
    EXPECT_NE(tokens.engine_note.find("token masking at conv_proj"), std::string::npos) << tokens.engine_note;
    // A window on exactly one 8x8 patch: zero pixels give that patch the zero image's token.
    expect_close(tokens.coarse, pixels.coarse, 1e-4, "token masking on whole patches");
    // A 12x12 window at (4,4) covers the patch centres (4,4), (4,12), (12,4), (12,12): tokens 0,1,4,5.
    o.patch_h = o.patch_w = 12;
    o.stride_y = o.stride_x = 4;
    const auto r = occlusion(m, x, o);
    const at::Tensor clean = m.forward_taps(x, {"conv_proj"}).taps.at("conv_proj");
    const at::Tensor zero = m.forward_taps(torch::zeros_like(x), {"conv_proj"}).taps.at("conv_proj");
    at::Tensor offset = torch::zeros_like(clean);
    for (int64_t i = 0; i < 2; ++i)
        for (int64_t j = 0; j < 2; ++j) offset.select(2, i).select(2, j).copy_((zero - clean).select(2, i).select(2, j));
    const at::Tensor out = m.forward_edited(x, "conv_proj", offset), base = m.forward(x);
    for (int64_t n = 0; n < 2; ++n) {
        const int64_t t = r.targets[size_t(n)];
        EXPECT_NEAR(r.coarse[n][1][1].item<double>(), (base[n][t] - out[n][t]).item<double>(), 1e-4);
    }
    expect_error([&] { OcclusionOptions bad; bad.tokens = true; occlusion(load_lenet(), torch::zeros({1, 1, 28, 28}), bad); },
                 "token masking needs a transformer");
}
