// Dataset maps: layer features against the model's own taps, the grid assignment against brute
// force and its invariants, and embed_features' metrics and errors.
#include "convscope/methods/embedding.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

// Points (c, rows-1-r) * scale + shift for index r*cols + c: a grid drawn with y up.
at::Tensor grid_points(int rows, int cols, double sx = 1.0, double sy = 1.0, double jitter = 0.0) {
    at::Tensor xy = torch::empty({int64_t(rows) * cols, 2}, torch::kFloat);
    std::mt19937 rng(3);
    std::uniform_real_distribution<double> u(-jitter, jitter);
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            xy[r * cols + c][0] = float(c * sx + 5.0 + u(rng));
            xy[r * cols + c][1] = float((rows - 1 - r) * sy - 2.0 + u(rng));
        }
    return xy;
}

at::Tensor random_points(int64_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> g(0.f, 1.f);
    at::Tensor xy = torch::empty({n, 2}, torch::kFloat);
    for (int64_t i = 0; i < n; ++i) {
        xy[i][0] = g(rng);
        xy[i][1] = 3.f * g(rng);
    }
    return xy;
}

// Rank of each value scaled to [0,1], ties sharing their mean rank (brute force, O(n^2)).
std::vector<double> ranks(const std::vector<double>& v) {
    std::vector<double> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
        double less = 0, equal = 0;
        for (double w : v) less += w < v[i], equal += w == v[i];
        r[i] = v.size() > 1 ? (less + (equal - 1) / 2) / double(v.size() - 1) : 0.5;
    }
    return r;
}

// The total squared distance of an assignment with the normalisation grid_assignment documents.
double assignment_cost(const at::Tensor& xy, int rows, int cols, const std::vector<int64_t>& cell_point) {
    const auto a = xy.accessor<float, 2>();
    std::vector<double> x, y;
    for (int64_t i = 0; i < xy.size(0); ++i) x.push_back(a[i][0]), y.push_back(a[i][1]);
    const auto rx = ranks(x), ry = ranks(y);
    double total = 0;
    for (size_t cell = 0; cell < cell_point.size(); ++cell) {
        const int64_t i = cell_point[cell];
        if (i < 0) continue;
        const int r = int(cell) / cols, c = int(cell) % cols;
        const double cx = (c + 0.5) / cols, cy = 1.0 - (r + 0.5) / rows;
        total += (rx[size_t(i)] - cx) * (rx[size_t(i)] - cx) + (ry[size_t(i)] - cy) * (ry[size_t(i)] - cy);
    }
    return total;
}

TEST(GridAssignment, GridMapsToItself) {
    for (auto [rows, cols] : std::vector<std::pair<int, int>>{{4, 6}, {7, 7}, {1, 5}, {32, 32}}) {
        const auto cells = grid_assignment(grid_points(rows, cols, 2.5, 0.3), rows, cols);
        ASSERT_EQ(cells.size(), size_t(rows * cols));
        for (size_t j = 0; j < cells.size(); ++j) ASSERT_EQ(cells[j], int64_t(j)) << rows << "x" << cols;
    }
    // A slightly disturbed grid still keeps every point in its own cell.
    const auto cells = grid_assignment(grid_points(10, 12, 1.0, 1.0, 0.2), 10, 12);
    for (size_t j = 0; j < cells.size(); ++j) ASSERT_EQ(cells[j], int64_t(j));
}

TEST(GridAssignment, IsAnInjection) {
    // Fewer points than cells: every point once, the rest empty.
    const auto a = grid_assignment(random_points(100, 1), 8, 13);
    ASSERT_EQ(a.size(), 104u);
    std::vector<int64_t> placed;
    for (int64_t p : a)
        if (p >= 0) placed.push_back(p);
    std::sort(placed.begin(), placed.end());
    std::vector<int64_t> all(100);
    std::iota(all.begin(), all.end(), 0);
    EXPECT_EQ(placed, all);
    EXPECT_EQ(std::count(a.begin(), a.end(), -1), 4);

    // More points than cells: a full grid of distinct points from the even subsample.
    const auto b = grid_assignment(random_points(300, 2), 10, 10);
    std::set<int64_t> seen(b.begin(), b.end());
    EXPECT_EQ(seen.size(), 100u);
    std::set<int64_t> expected;
    for (int64_t i = 0; i < 100; ++i) expected.insert(i * 300 / 100);
    EXPECT_EQ(seen, expected);
}

TEST(GridAssignment, OptimalAgainstBruteForce) {
    // All 9! assignments of 9 points to a 3x3 grid, and all 9!/2! of 7 points.
    for (int64_t n : {9, 7}) {
        const at::Tensor xy = random_points(n, uint32_t(10 + n));
        const auto got = grid_assignment(xy, 3, 3);
        const double got_cost = assignment_cost(xy, 3, 3, got);
        std::vector<int64_t> perm(9);
        std::iota(perm.begin(), perm.end(), 0);  // cell -> slot; slots >= n are empty cells
        double best = 1e300;
        do {
            std::vector<int64_t> cp(9);
            for (int j = 0; j < 9; ++j) cp[size_t(j)] = perm[size_t(j)] < n ? perm[size_t(j)] : -1;
            best = std::min(best, assignment_cost(xy, 3, 3, cp));
        } while (std::next_permutation(perm.begin(), perm.end()));
        EXPECT_NEAR(got_cost, best, 1e-9) << n << " points";
    }
}

TEST(GridAssignment, BadInput) {
    expect_error([] { grid_assignment(torch::zeros({5, 3}), 2, 2); }, "[N,2]");
    expect_error([] { grid_assignment(torch::zeros({5, 2}), 0, 2); }, "at least one row");
    expect_error([] { grid_assignment(torch::zeros({0, 2}), 2, 2); }, "at least one point");
    at::Tensor xy = random_points(4, 5);
    xy[2][1] = std::nanf("");
    expect_error([&] { grid_assignment(xy, 2, 2); }, "point 2 is not finite");
}

TEST(GridAssignment, NearSquare) {
    EXPECT_EQ(near_square_grid(1024), std::make_pair(32, 32));
    EXPECT_EQ(near_square_grid(10), std::make_pair(3, 4));
    EXPECT_EQ(near_square_grid(1), std::make_pair(1, 1));
    EXPECT_EQ(near_square_grid(150), std::make_pair(12, 13));
}

// A small .npy dataset for a fixture model (float32 inputs used as is) with labels.
struct NpyData {
    TempDir dir;
    std::string images, labels;
    NpyData(int64_t n, std::vector<int64_t> chw) {
        chw.insert(chw.begin(), n);
        torch::manual_seed(7);
        images = dir / "x.npy";
        labels = dir / "y.npy";
        write_npy(images, torch::rand(chw));
        write_npy(labels, torch::arange(n, torch::kLong).remainder(3));
    }
};

// LeNet on 10 random labelled .npy items.
struct LenetOnNpy {
    NpyData d{10, {1, 28, 28}};
    Dataset data = Dataset::open(d.images, {d.labels});
    Model model = [this] {
        Model m = Model::load(fixture("lenet_scripted.pt"));
        if (!m.has_input_shape()) m.set_input_shape(data.item_shape());
        return m;
    }();
};

TEST(LayerFeatures, EqualTheTapsFlattened) {
    LenetOnNpy f;
    const Dataset& data = f.data;
    const Model& model = f.model;
    const std::vector<int64_t> indices = {7, 2, 5, 0, 9, 1, 3};
    const Preprocess pre = data.preprocess_for(model.input_shape(), model.meta().mean, model.meta().std);
    const at::Tensor batch = data.batch(indices, pre);
    for (const std::string layer : {"", "conv2"}) {
        int calls = 0;
        // Batch size 3: two full batches and a partial one.
        const EmbeddingFeatures f =
            layer_features(model, data, indices, LayerFeaturesOptions{layer, 3, true},
                           RunContext{[&](double) { return ++calls, true; }});
        const std::string name = layer.empty() ? model.penultimate_layer() : layer;
        EXPECT_EQ(f.layer, name);
        EXPECT_EQ(calls, 3);
        const at::Tensor tap = model.forward_taps(batch, {name}).taps.at(name);
        ASSERT_EQ(f.features.dim(), 2);
        EXPECT_EQ(f.features.size(1), tap[0].numel());
        expect_close(f.features, tap.reshape({7, -1}), 1e-5, "features of " + name);
        EXPECT_EQ(f.indices, indices);
        EXPECT_EQ(f.labels, (std::vector<int64_t>{1, 2, 2, 0, 0, 1, 0}));
        ASSERT_TRUE(f.display.defined());
        EXPECT_EQ(f.display.sizes(), (std::vector<int64_t>{7, 28, 28, 1}));
        EXPECT_TRUE(torch::equal(f.display, pre.to_display(batch)));
    }
    EXPECT_FALSE(layer_features(model, data, {0, 1}, LayerFeaturesOptions{"", 8}).display.defined());
    expect_error([&] { layer_features(model, data, {0, 1}, LayerFeaturesOptions{"no_such_layer", 8}); }, "no_such_layer");
    expect_error([&] { layer_features(model, data, {}, LayerFeaturesOptions{"", 8}); }, "no items");
    expect_error([&] { layer_features(model, data, {0}, LayerFeaturesOptions{"", 0}); }, "batch size");
}

// Streamed to disk and mapped back, the features are the bits kept in memory.
TEST(LayerFeatures, StreamedToAMappedFileEqualTheInMemoryOnes) {
    LenetOnNpy f;
    const Dataset& data = f.data;
    const Model& model = f.model;
    const std::vector<int64_t> indices = {7, 2, 5, 0, 9, 1, 3};
    const EmbeddingFeatures memory = layer_features(model, data, indices, LayerFeaturesOptions{"conv2", 3});
    TempDir dir;
    LayerFeaturesOptions lo{"conv2", 3};
    lo.features_path = (dir.path / "f.npy").string();
    EmbeddingFeatures streamed = layer_features(model, data, indices, lo);
    EXPECT_TRUE(torch::equal(streamed.features, memory.features));
    // The file is numpy's format: read whole, it holds the same.
    EXPECT_TRUE(torch::equal(read_npy(lo.features_path), memory.features));
    // The mapping outlives the result that made it.
    const at::Tensor kept = streamed.features;
    streamed = EmbeddingFeatures{};
    EXPECT_TRUE(torch::equal(kept, memory.features));
}

// Three well-separated Gaussian blobs of `per` points in `d` dimensions, labels 0..2.
std::pair<at::Tensor, std::vector<int64_t>> blobs(int64_t per, int64_t d) {
    torch::manual_seed(11);
    at::Tensor x = torch::randn({3 * per, d});
    std::vector<int64_t> labels(size_t(3 * per));
    for (int64_t b = 0; b < 3; ++b) {
        x.narrow(0, b * per, per).select(1, b) += 20.0;
        for (int64_t i = 0; i < per; ++i) labels[size_t(b * per + i)] = b;
    }
    return {x, labels};
}

TEST(EmbedFeatures, BlobsSeparatedAndDeterministic) {
    auto [x, labels] = blobs(40, 6);
    TsneOptions o;
    o.perplexity = 10;
    o.iterations = 300;
    o.early_exaggeration_iters = 100;  // enough for three far-apart blobs
    RunContext ctx;
    ctx.threads = 2;
    const EmbeddingResult a = embed_features(x, labels, o, ctx);
    EXPECT_EQ(a.tsne.embedding.sizes(), (std::vector<int64_t>{120, 2}));
    EXPECT_EQ(a.metric_k, 10);
    EXPECT_DOUBLE_EQ(a.knn_accuracy, 1.0);
    // The metrics match the library's metric functions on the same embedding.
    EXPECT_DOUBLE_EQ(a.neighbour_preservation, neighbour_preservation(x, a.tsne.embedding, 10, 2));
    EXPECT_GT(a.neighbour_preservation, 0.3);
    const EmbeddingResult b = embed_features(x, labels, o, ctx);
    EXPECT_TRUE(torch::equal(a.tsne.embedding, b.tsne.embedding));
    // No labels (or unknown ones): no accuracy.
    EXPECT_TRUE(std::isnan(embed_features(x, {}, o, ctx).knn_accuracy));
    // With PCA the preservation is still measured in the given feature space.
    o.pca_dims = 3;
    const EmbeddingResult c = embed_features(x, labels, o, ctx);
    EXPECT_DOUBLE_EQ(c.neighbour_preservation, neighbour_preservation(x, c.tsne.embedding, 10, 2));
}

TEST(EmbedFeatures, FftPathUsesItsNeighbours) {
    auto [x, labels] = blobs(40, 6);
    TsneOptions o;
    o.perplexity = 5;
    o.iterations = 300;
    o.early_exaggeration_iters = 100;  // enough for three far-apart blobs
    RunContext ctx;
    ctx.threads = 2;
    o.gradient = TsneOptions::Gradient::Fft;
    const EmbeddingResult r = embed_features(x, labels, o, ctx);
    EXPECT_FALSE(r.tsne.exact);
    EXPECT_DOUBLE_EQ(r.knn_accuracy, 1.0);
    // Small data: t-SNE's neighbours are exact, so the figure equals a fresh computation.
    EXPECT_DOUBLE_EQ(r.neighbour_preservation, neighbour_preservation(x, r.tsne.embedding, 10, 2));
}

TEST(EmbedFeatures, BadInput) {
    auto blob = blobs(10, 4);  // named, not bound: clang 14 cannot capture bindings in lambdas
    at::Tensor x = blob.first;
    std::vector<int64_t> labels = blob.second;
    TsneOptions o;
    o.perplexity = 5;
    o.iterations = 10;
    labels.pop_back();
    expect_error([&] { embed_features(x, labels, o); }, "30 rows but there are 29 labels");
    expect_error([&] { embed_features(x.narrow(0, 0, 1), {}, o); }, "at least 2 points");
    at::Tensor bad = x.clone();
    bad[4][2] = std::nanf("");
    expect_error([&] { embed_features(bad, {}, o); }, "row 4, column 2 is NaN");
    o.perplexity = 30;
    expect_error([&] { embed_features(x, {}, o); }, "too large for 30 points");
    expect_error([&] { embed_features(torch::zeros({5}), {}, o); }, "[N,D]");
}

}  // namespace
}  // namespace convscope
