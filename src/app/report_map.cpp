// The report's dataset map: t-SNE of the penultimate layer's features for the first items, or a
// map made earlier by `convscope embed` (ReportOptions::map_path, a million points and more),
// as pictures and as data for the interactive view. Thumbnails are written in sheets that the
// page loads when one of their items is hovered.
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include "app/detail/report_sections.hpp"
#include "convscope/app/views.hpp"
#include "convscope/methods/dataset_map.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/tsne.hpp"
#include "convscope/runtime/base64.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::detail {

using nlohmann::json;

namespace {

constexpr int kSheetCols = 32;
constexpr int64_t kSheetItems = kSheetCols * kSheetCols;
constexpr int64_t kThumbMapPoints = 4000;  // points drawn as pictures in the thumbnail map

// The metrics embed wrote beside a map (null where absent).
json map_folder_metrics(const std::string& folder) {
    json out = {{"kl_divergence", nullptr}, {"knn_accuracy", nullptr}, {"neighbour_preservation", nullptr}};
    std::ifstream in(std::filesystem::path(folder) / "metrics.json");
    if (!in) return out;
    try {
        const json m = json::parse(in);
        for (auto& [k, v] : out.items())
            if (m.contains(k) && m[k].is_number()) v = m[k];
    } catch (const json::exception&) {
        // Metrics are an extra: a map without readable ones is shown without them.
    }
    return out;
}

}  // namespace

// Thumbnails of the map's items on sheets of 32 x 32: map_thumbs/K.png holds items
// K*1024 .. K*1024+1023 row-major (cells of items not on the map blank); only sheets with an
// item on the map are written. thumbs_of(items) gives the pictures of a sheet's items.
json ReportContext::write_map_sheets(const std::vector<int32_t>& items, int thumb_px, const ThumbsOf& thumbs_of,
                                     double lo, double hi) {
    std::map<int64_t, std::vector<int64_t>> sheets;  // sheet -> its items on the map, sorted
    {
        std::vector<int32_t> sorted(items);
        std::sort(sorted.begin(), sorted.end());
        sorted.erase(std::unique(sorted.begin(), sorted.end()), sorted.end());
        for (int32_t i : sorted) sheets[i / kSheetItems].push_back(i);
    }
    const cv::Mat blank(thumb_px, thumb_px, CV_8UC3, cv::Scalar(255, 255, 255));
    json written = json::array();
    size_t done = 0;
    for (const auto& [sheet, on_map] : sheets) {
        std::vector<cv::Mat> tiles(size_t(kSheetItems), blank);
        const std::vector<cv::Mat> pictures = thumbs_of(on_map);
        for (size_t k = 0; k < on_map.size(); ++k) {
            cv::Mat t = resize_to_fit(pictures[k], thumb_px);
            if (t.channels() == 1) cv::cvtColor(t, t, cv::COLOR_GRAY2BGR);
            tiles[size_t(on_map[k] % kSheetItems)] = t;
        }
        put("map_thumbs/" + std::to_string(sheet) + ".png",
            "thumbnails of items " + std::to_string(sheet * kSheetItems) + ".." +
                std::to_string(sheet * kSheetItems + kSheetItems - 1) + " (those on the map), " +
                std::to_string(kSheetCols) + " a row, " + std::to_string(thumb_px) + " px each",
            tile_grid(tiles, kSheetCols, 0));
        written.push_back(sheet);
        stages.report("map", lo + (hi - lo) * double(++done) / double(sheets.size()));
    }
    return {{"folder", "img/map_thumbs"},  // sheet K is folder/K.png
            {"per_sheet", kSheetItems},
            {"cols", kSheetCols},
            {"thumb", thumb_px},
            {"sheets", written}};
}

// The page's part of a map: the points as base64 of dataset_map_bytes, the pictures, colours.
void ReportContext::write_map_data(const DatasetMap& m, json& map, const std::vector<cv::Mat>& sample_thumbs,
                                   const std::vector<int64_t>& sample) {
    const int64_t n = m.size();
    // [N,2]: stack copies, so the blobs over m's vectors are only read.
    const at::Tensor xy = torch::stack({torch::from_blob(const_cast<float*>(m.x.data()), {n}, torch::kFloat),
                                        torch::from_blob(const_cast<float*>(m.y.data()), {n}, torch::kFloat)},
                                       1);
    const std::vector<int64_t> labels(m.labels.begin(), m.labels.end());
    const bool any_label = std::any_of(labels.begin(), labels.end(), [](int64_t l) { return l >= 0; });
    const std::vector<int64_t> plot_labels = any_label ? labels : std::vector<int64_t>{};
    const std::string scatter = put("map_scatter.png", "t-SNE map coloured by label",
                                    scatter_plot(xy, plot_labels, class_names, 720, n > 100000 ? 1 : 2));
    at::Tensor sample_xy = xy.index_select(0, torch::tensor(sample, torch::kLong));
    std::vector<int64_t> sample_labels;
    if (any_label)
        for (int64_t i : sample) sample_labels.push_back(labels[size_t(i)]);
    const std::string thumbmap = put("map_thumbnails.png", "t-SNE map with item thumbnails",
                                     thumbnail_map(sample_xy, sample_thumbs, 1200, 28, sample_labels, true));
    json colours = json::array();
    for (size_t c = 0; c < std::max<size_t>(class_names.size(), 1); ++c) {
        const cv::Scalar s = category_colour(int64_t(c));
        colours.push_back({int(s[0]), int(s[1]), int(s[2])});
    }
    const cv::Scalar unknown = category_colour(-1);
    map.update(json{{"n", n},
                    {"layer", m.layer},
                    {"scatter", scatter},
                    {"thumbnails", thumbmap},
                    {"points", base64_encode(dataset_map_bytes(m))},
                    {"class_names", class_names},
                    {"class_colours", colours},
                    {"unknown_colour", {int(unknown[0]), int(unknown[1]), int(unknown[2])}}});
    result.map_points = n;
}

void ReportContext::write_map() {
    doc["map"] = nullptr;
    if (!opts.map_path.empty()) {
        write_map_from_file();
        return;
    }
    if (plan.map_items <= 0) return;
    const std::vector<int64_t> shape = model.input_shape();
    const int64_t n = std::min(plan.map_items, data.size());
    const std::string layer = model.penultimate_layer();
    if (n < 8 || layer.empty()) {
        skip(n < 8 ? "dataset map: fewer than 8 items" : "dataset map: no layer to take features from");
        return;
    }
    std::vector<int64_t> indices(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) indices[size_t(i)] = i;
    // Features and the items' pictures in one pass.
    const int thumb_px = n > 10000 ? 16 : (shape[1] <= 28 && shape[2] <= 28 ? 28 : 32);
    LayerFeaturesOptions lo;
    lo.layer = layer;
    lo.keep_display = true;
    const EmbeddingFeatures ef = layer_features(model, data, indices, lo, context("map", 0.0, 0.2));
    std::vector<cv::Mat> thumbs;
    for (int64_t i = 0; i < n; ++i) thumbs.push_back(resize_to_fit(image_from_hwc_uint8(ef.display[i]), thumb_px));
    TsneOptions to;
    to.iterations = opts.map_iterations;
    to.early_exaggeration_iters = std::min(to.early_exaggeration_iters, std::max(1, to.iterations / 3));
    to.perplexity = std::min(30.0, (double(n) - 2.0) / 3.0 - 0.01);
    if (ef.features.size(1) > 50) to.pca_dims = 50;
    const EmbeddingResult er = embed_features(ef.features, ef.labels, to, context("map", 0.2, 0.85));
    const at::Tensor xy = er.tsne.embedding.to(torch::kFloat).contiguous();
    write_npy(out.file("map_embedding.npy",
                       "t-SNE of " + layer + " for the first " + std::to_string(n) + " items [N,2] float32"),
              xy);
    DatasetMap m;
    m.layer = layer;
    const float* p = xy.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
        m.x.push_back(p[2 * i]);
        m.y.push_back(p[2 * i + 1]);
        m.items.push_back(int32_t(i));
        m.labels.push_back(int32_t(ef.labels[size_t(i)]));
    }
    json& map = doc["map"] = to_json(er);
    map["source"] = "computed";
    // Coordinates as numbers too, for scripts that read the page's data (rounded: the view
    // reads the exact ones from "points").
    std::vector<float> x(static_cast<size_t>(n)), y(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        x[size_t(i)] = std::round(p[2 * i] * 1000.f) / 1000.f;
        y[size_t(i)] = std::round(p[2 * i + 1] * 1000.f) / 1000.f;
    }
    map["x"] = x;
    map["y"] = y;
    map["labels"] = ef.labels;
    map["sprite"] = write_map_sheets(m.items, thumb_px,
                                     [&](const std::vector<int64_t>& items) {
                                         std::vector<cv::Mat> out;
                                         for (int64_t i : items) out.push_back(thumbs[size_t(i)]);
                                         return out;
                                     },
                                     0.85, 1.0);
    write_map_data(m, map, thumbs, indices);
}

// A map made earlier: its points as they are, the thumbnails from the data.
void ReportContext::write_map_from_file() {
    CONVSCOPE_CHECK(given_map != nullptr, "write_report reads the map before the sections");
    const DatasetMap& m = *given_map;
    const int64_t n = m.size();
    const std::vector<int64_t> shape = model.input_shape();
    const int thumb_px = n > 10000 ? 16 : (shape[1] <= 28 && shape[2] <= 28 ? 28 : 32);
    const ThumbsOf thumbs_of = [&](const std::vector<int64_t>& items) {
        std::vector<cv::Mat> out;
        for (size_t a = 0; a < items.size(); a += 256) {
            const std::vector<int64_t> part(items.begin() + long(a), items.begin() + long(std::min(items.size(), a + 256)));
            const at::Tensor display = pre.to_display(data.batch(part, pre));
            for (int64_t k = 0; k < display.size(0); ++k)
                out.push_back(resize_to_fit(image_from_hwc_uint8(display[k]), thumb_px));
        }
        return out;
    };
    json& map = doc["map"] = map_folder_metrics(opts.map_path);
    map["source"] = "file";
    map["folder"] = std::filesystem::path(opts.map_path).filename().string();
    map["sprite"] = write_map_sheets(m.items, thumb_px, thumbs_of, 0.0, 0.9);
    // The thumbnail map draws an even sample of the points.
    std::vector<int64_t> sample, sample_items;
    const int64_t step = std::max<int64_t>(1, n / kThumbMapPoints);
    for (int64_t i = 0; i < n; i += step) {
        sample.push_back(i);
        sample_items.push_back(m.items[size_t(i)]);
    }
    write_map_data(m, map, thumbs_of(sample_items), sample);
}

}  // namespace convscope::detail
