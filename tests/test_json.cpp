// The one JSON shape of each struct (runtime/json.hpp, methods/json.hpp): every field written
// from the struct it comes from, and the class-name rule.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>

#include "convscope/methods/embedding.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

using namespace convscope;
using nlohmann::json;

TEST(Json, ClassNamesOneRule) {
    const std::vector<std::string> names = {"cat", "dog"};
    EXPECT_EQ(class_name(names, 1), "dog");
    EXPECT_EQ(class_name(names, 5), "5");
    EXPECT_EQ(class_name({}, 0), "0");
    EXPECT_EQ(class_name(names, -1), "unknown");
}

TEST(Json, LayerAndReceptiveField) {
    LayerInfo l;
    l.name = "features.3";
    l.type = "Conv2d";
    l.output_shape = {16, 7, 9};
    l.num_params = 1234;
    l.depth = 1;
    l.is_conv = true;
    l.rf = ReceptiveField{ReceptiveField::Kind::Exact, 11, 13, 4, 2, 3, 1};
    l.layout.kind = LayoutKind::Nchw;
    l.layout.grid_h = 7;
    l.layout.grid_w = 9;
    l.layout.channels = 16;
    const json j = to_json(l);
    EXPECT_EQ(j, json({{"name", "features.3"},
                       {"type", "Conv2d"},
                       {"output_shape", {16, 7, 9}},
                       {"layout", {{"kind", "nchw"}, {"grid", {7, 9}}, {"channels", 16}}},
                       {"parameters", 1234},
                       {"depth", 1},
                       {"is_conv", true},
                       {"is_linear", false},
                       {"receptive_field",
                        {{"kind", "exact"}, {"size", {11, 13}}, {"stride", {4, 2}}, {"padding", {3, 1}}}}}));
    ReceptiveField g;
    g.kind = ReceptiveField::Kind::Global;
    EXPECT_EQ(to_json(g), json({{"kind", "global"}}));
    g.kind = ReceptiveField::Kind::Unknown;
    EXPECT_EQ(to_json(g), json({{"kind", "unknown"}}));
    EXPECT_EQ(to_json(Box{1, 2, 3, 4}), json({1, 2, 3, 4}));
}

TEST(Json, OcclusionSummaryFields) {
    OcclusionSummary s;
    s.target = 1;
    s.predicted = 0;
    s.clean_score = 2.5f;
    s.clean_prob = 0.75f;
    s.max_drop = 1.25f;
    s.max_py = 2;
    s.max_px = 3;
    s.max_window = Box{4, 6, 8, 10};
    s.important = Box{2, 2, 10, 12};
    s.confounders.push_back(OcclusionFlag{0, 5, Box{0, 10, 4, 14}, 7, 0.5f, 0.25f});
    const json j = to_json(s, {"cat", "dog"});
    EXPECT_EQ(j["target"], 1);
    EXPECT_EQ(j["target_name"], "dog");
    EXPECT_EQ(j["predicted_name"], "cat");
    EXPECT_EQ(j["clean_score"], 2.5);
    EXPECT_EQ(j["clean_prob"], 0.75);
    EXPECT_EQ(j["max_drop"], 1.25);
    EXPECT_EQ(j["max_position"], json({2, 3}));
    EXPECT_EQ(j["max_window"], json({4, 6, 8, 10}));
    EXPECT_EQ(j["important_region"], json({2, 2, 10, 12}));
    ASSERT_EQ(j["confounders"].size(), 1u);
    EXPECT_EQ(j["confounders"][0], json({{"position", {0, 5}},
                                         {"window", {0, 10, 4, 14}},
                                         {"class", 7},
                                         {"class_name", "7"},
                                         {"prob", 0.5},
                                         {"drop", 0.25}}));
}

TEST(Json, EmbeddingMetrics) {
    EmbeddingResult r;
    r.metric_k = 10;
    r.knn_accuracy = std::numeric_limits<double>::quiet_NaN();
    r.neighbour_preservation = 0.5;
    r.tsne.kl_divergence = 1.5;
    r.tsne.exact = true;
    r.tsne.neighbours = 99;
    r.tsne.iterations = 1000;
    r.tsne.optimisation_seconds = 2.0;
    json j = to_json(r);
    EXPECT_TRUE(j["knn_accuracy"].is_null()) << "no labels: null, not NaN";
    EXPECT_EQ(j["neighbour_preservation"], 0.5);
    EXPECT_EQ(j["kl_divergence"], 1.5);
    EXPECT_EQ(j["gradient"], "exact");
    EXPECT_EQ(j["neighbours"], 99);
    EXPECT_EQ(j["iterations"], 1000);
    EXPECT_EQ(j["seconds"]["optimisation"], 2.0);
    r.knn_accuracy = 0.25;
    r.tsne.exact = false;
    j = to_json(r);
    EXPECT_EQ(j["knn_accuracy"], 0.25);
    EXPECT_EQ(j["gradient"], "fft");
}

namespace {
enum class Fruit { Apple, Pear, Plum };
constexpr EnumTable<Fruit, 4> kFruit = {
    {{Fruit::Apple, "apple"}, {Fruit::Pear, "pear"}, {Fruit::Plum, "plum"}, {Fruit::Pear, "poire"}}};
}  // namespace

TEST(EnumNames, OneTableParsesAndPrints) {
    EXPECT_EQ(parse_enum(kFruit, "Pear", "fruit"), Fruit::Pear);
    EXPECT_EQ(parse_enum(kFruit, "poire", "fruit"), Fruit::Pear);  // an alias
    EXPECT_STREQ(enum_name(kFruit, Fruit::Pear), "pear");          // printed by its first name
    EXPECT_EQ(enum_names(kFruit), (std::vector<std::string>{"apple", "pear", "plum"}));
    expect_error([] { parse_enum(kFruit, "kiwi", "fruit"); }, "unknown fruit 'kiwi': use apple, pear or plum");
    // The library's tables round-trip.
    for (const auto& n : {"full", "incremental", "approximate"})
        EXPECT_STREQ(occlusion_mode_name(parse_occlusion_mode(n)), n);
    for (const auto& n : {"logit", "prob", "sigmoid"}) EXPECT_STREQ(score_name(parse_score(n)), n);
}

TEST(JsonText, InvalidUtf8BecomesReplacementCharacter) {
    nlohmann::json j = {{"name", std::string("a\xff" "b")}, {"ok", "\xc3\xa9"}};
    EXPECT_THROW((void)j.dump(), nlohmann::json::type_error);  // what json_text guards against
    EXPECT_EQ(convscope::json_text(j), "{\"name\":\"a\xef\xbf\xbd" "b\",\"ok\":\"\xc3\xa9\"}");
    EXPECT_EQ(convscope::json_text(nlohmann::json::array({1, 2}), 1), "[\n 1,\n 2\n]");
}
