// convscope embed: dataset maps. The features of a layer (default: the penultimate one) for every
// selected image, or given vectors (--features), placed in 2-D by t-SNE; a labelled scatter plot,
// a thumbnail map, Karpathy's grid view, a TensorBoard projector export and quality metrics.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>

#include "common.hpp"
#include "convscope/runtime/cluster.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/embedding.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::cli {
namespace {

struct Options {
    CommonOptions common;
    std::string layer;
    std::string features;
    double perplexity = TsneOptions{}.perplexity;
    bool pca = false;
    int pca_dims = 50;
    int iterations = 0;  // 0: automatic (tsne_auto_iterations)
    std::string gradient = "auto";
    std::string kernel = "gaussian";
    int64_t batch_size = 256;
    std::string pool = "auto";
    std::string grid;
    int64_t grid_max = 1024;
    int map_size = 1600;
    int thumb_size = 28;
};

std::string num(double v, const char* fmt = "%.9g") {
    char buf[40];
    std::snprintf(buf, sizeof buf, fmt, v);
    return buf;
}

// "RxC" -> (R, C).
std::pair<int, int> parse_grid(const std::string& spec) {
    const auto x = spec.find_first_of("xX");
    try {
        if (x == std::string::npos) throw std::invalid_argument(spec);
        size_t ur = 0, uc = 0;
        const std::string a = spec.substr(0, x), b = spec.substr(x + 1);
        const int r = std::stoi(a, &ur), c = std::stoi(b, &uc);
        if (ur != a.size() || uc != b.size() || r < 1 || c < 1 || int64_t(r) * c > 4096)
            throw std::invalid_argument(spec);
        return {r, c};
    } catch (const std::exception&) {
        throw UsageError("--grid-cells takes ROWSxCOLS with at most 4096 cells (like 32x32), got '" + spec + "'");
    }
}

// Labels from an .npy file: [N] integers.
std::vector<int64_t> read_labels(const std::string& path) {
    at::Tensor t = read_npy(path);
    if (t.dim() != 1 || at::isFloatingType(t.scalar_type()))
        throw Error("labels '" + path + "' must be a 1-D integer array [N], got " + std::to_string(t.dim()) +
                    "-D " + std::string(c10::toString(t.scalar_type())));
    t = t.to(at::kLong).contiguous();
    return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

void write_projector(OutputDir& out, const at::Tensor& features, const std::vector<int64_t>& labels,
                     const std::vector<int64_t>& indices, const std::vector<std::string>& names,
                     const std::vector<cv::Mat>& thumbs, const std::string& tensor_name) {
    const at::Tensor f = features.to(at::kFloat).contiguous();
    const int64_t n = f.size(0), d = f.size(1);
    const float* p = f.data_ptr<float>();
    std::string tsv;
    tsv.reserve(size_t(n * d * 10));
    for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < d; ++j) {
            if (j) tsv += '\t';
            tsv += num(double(p[i * d + j]), "%.6g");
        }
        tsv += '\n';
    }
    write_file_atomic(out.file("projector/tensors.tsv", "TensorBoard projector: the features, one row per item"),
                      tsv);
    std::string meta = "index\tlabel\tclass\n";
    for (int64_t i = 0; i < n; ++i) {
        const int64_t label = labels.empty() ? -1 : labels[size_t(i)];
        meta += std::to_string(indices[size_t(i)]) + "\t" + std::to_string(label) + "\t" + class_name(names, label) +
                "\n";
    }
    write_file_atomic(out.file("projector/metadata.tsv", "TensorBoard projector: index, label and class per row"),
                      meta);
    std::string config = "embeddings {\n  tensor_name: \"" + tensor_name +
                         "\"\n  tensor_path: \"tensors.tsv\"\n  metadata_path: \"metadata.tsv\"\n";
    if (!thumbs.empty()) {
        // The projector reads sprites of at most 8192 x 8192 pixels, ceil(sqrt(N)) images a row.
        const int per_row = int(std::ceil(std::sqrt(double(n)) - 1e-9));
        int side = 0;
        for (const auto& t : thumbs) side = std::max({side, t.cols, t.rows});
        side = std::max(1, std::min({side, 64, 8192 / per_row}));
        std::vector<cv::Mat> tiles;
        tiles.reserve(thumbs.size());
        int cw = 0, ch = 0;
        for (const auto& t : thumbs) {
            tiles.push_back(resize_to_fit(t, side));
            cw = std::max(cw, tiles.back().cols);
            ch = std::max(ch, tiles.back().rows);
        }
        write_png(out.file("projector/sprite.png",
                           "TensorBoard projector: the images in a grid of " + std::to_string(per_row) + " a row"),
                  tile_grid(tiles, per_row, 0, cv::Scalar(255, 255, 255)));
        config += "  sprite {\n    image_path: \"sprite.png\"\n    single_image_dim: " + std::to_string(cw) +
                  "\n    single_image_dim: " + std::to_string(ch) + "\n  }\n";
    }
    config += "}\n";
    write_file_atomic(out.file("projector/projector_config.pbtxt",
                               "TensorBoard projector configuration (open the folder with tensorboard --logdir)"),
                      config);
}

void add_options(CLI::App& app, Options& opts) {
    Options* o = &opts;
    add_model_options(app, o->common);
    add_data_options(app, o->common);
    add_out_option(app, o->common, "embed");
    app.add_option("--layer", o->layer, "layer whose features are embedded (default: the penultimate one)");
    app.add_option("--features", o->features,
                   "embed these vectors instead: an .npy [N,D] float array (labels from --labels)");
    app.add_option("--perplexity", o->perplexity, "t-SNE perplexity (needs 3 x perplexity < N - 1)")
        ->capture_default_str();
    app.add_flag("--pca", o->pca, "reduce the features to --pca-dims principal components first");
    app.add_option("--pca-dims", o->pca_dims, "components kept by --pca")->capture_default_str();
    app.add_option("--iterations", o->iterations,
                   "t-SNE iterations, 250 of them early exaggeration (default: 1000 up to 20,000 points, "
                   "then one more per 125 points, at most 2000)");
    app.add_option("--gradient", o->gradient,
                   "t-SNE gradient: exact (O(N^2)), fft (interpolation) or auto (exact below 1000 points)")
        ->check(CLI::IsMember({"auto", "exact", "fft"}))
        ->capture_default_str();
    app.add_option("--kernel", o->kernel,
                   "t-SNE input affinities: gaussian (exp(-beta d^2), the paper's) or exponential (exp(-beta d), "
                   "what FIt-SNE computes)")
        ->check(CLI::IsMember({"gaussian", "exponential"}))
        ->capture_default_str();
    app.add_option("--batch-size", o->batch_size, "images per forward pass")->capture_default_str();
    app.add_option("--pool", o->pool,
                   "token layers: cls (the class token), mean (of the patch tokens), flatten, or auto (cls where "
                   "there is a class token, else mean)")
        ->capture_default_str();
    app.add_option("--grid-cells", o->grid, "cells of grid.png as ROWSxCOLS (default: near-square for min(N, --grid-max))");
    app.add_option("--grid-max", o->grid_max, "images in the default grid")->capture_default_str();
    app.add_option("--map-size", o->map_size, "side of scatter.png and thumbnails.png in pixels")
        ->capture_default_str();
    app.add_option("--thumb-size", o->thumb_size, "side of each image in thumbnails.png and grid.png")
        ->capture_default_str();
}

// Usage errors, before any work; returns the --grid shape (0 x 0: automatic).
std::pair<int, int> check_options(const Options& opts) {
    const Options* o = &opts;
    if (o->map_size < 64 || o->map_size > 16384) throw UsageError("--map-size must be between 64 and 16384");
    if (o->thumb_size < 4 || o->thumb_size > 256) throw UsageError("--thumb-size must be between 4 and 256");
    if (o->iterations < 0) throw UsageError("--iterations must be at least 1 (or 0 for the default)");
    if (o->pca_dims < 1) throw UsageError("--pca-dims must be at least 1");
    if (o->grid_max < 1) throw UsageError("--grid-max must be at least 1");
    std::pair<int, int> grid_shape{0, 0};
    if (!o->grid.empty()) grid_shape = parse_grid(o->grid);
    const bool given = !o->features.empty();
    if (given && (!o->common.model.empty() || !o->common.data.empty() || !o->common.image.empty() ||
                  !o->layer.empty() || !o->common.indices.empty() || !o->common.index.empty()))
        throw UsageError("--features embeds the given vectors: --model, --data, --image, --layer and "
                         "--indices do not apply to it");
    return grid_shape;
}

// What is embedded: given vectors, or a layer's features of the selected images (with their
// pictures for the maps).
struct Inputs {
    at::Tensor features;  // [N,D]
    std::vector<int64_t> labels, indices;
    std::vector<std::string> names;
    std::vector<cv::Mat> thumbs;
    at::Tensor display;  // [N,H,W,C] uint8 under mpirun (the pictures gathered on rank 0)
    std::string layer;
    std::string data_hash;  // of the data the items index ("" for given vectors)
    double feature_seconds = 0.0;
    std::optional<Model> model;
    bool elsewhere = false;  // a rank other than 0: its share went to rank 0, which writes the map
    bool streamed = false;   // the features are the output's features.npy, mapped
};

// Under mpirun: the batches go round the ranks (batch b to rank b mod R: the batches one process
// runs, so the same bits). In round k every rank computes batch kR + rank, and rank 0 receives the
// round's R batches, which follow each other in item order, and appends their rows to the
// output's features.npy as one process does: rank 0 never holds the features, and no message is
// larger than one batch. Returns true on rank 0 with `in` complete, false on the other ranks.
bool distributed_features(const Model& model, const Dataset& data, Inputs& in, const LayerFeaturesOptions& lo,
                          const CommonOptions& common) {
    check_ranks_agree(model, data, in.indices);
    const auto t0 = std::chrono::steady_clock::now();
    const int64_t n = int64_t(in.indices.size()), batch = lo.batch_size;
    const int ranks = cluster::size();
    const bool root = cluster::rank() == 0;
    const int64_t batches = (n + batch - 1) / batch, rounds = (batches + ranks - 1) / ranks;
    std::string features_path;
    if (root) features_path = (std::filesystem::path(OutputDir(common.out).dir()) / "features.npy").string();
    std::unique_ptr<NpyRowWriter> writer;
    const RunContext ctx = run_context(common, "features");  // a progress bar on rank 0 only
    RunContext quiet = ctx;
    quiet.progress = nullptr;
    int64_t row = 0;
    for (int64_t k = 0; k < rounds; ++k) {
        // This rank's batch of the round: a JSON line (rows, layer, labels, shapes), then the
        // features and the pictures as raw bytes.
        const int64_t b = k * ranks + cluster::rank();
        std::string bytes;
        if (b < batches) {
            const std::vector<int64_t> items(in.indices.begin() + b * batch,
                                             in.indices.begin() + std::min(n, (b + 1) * batch));
            const EmbeddingFeatures ef = layer_features(model, data, items, lo, quiet);
            const at::Tensor f = ef.features.to(at::kFloat).contiguous(), d = ef.display.contiguous();
            bytes = nlohmann::json{{"rows", f.size(0)}, {"dims", f.size(1)}, {"layer", ef.layer},
                                   {"labels", ef.labels}, {"display", d.sizes().vec()}}
                        .dump() +
                    "\n";
            bytes.append(static_cast<const char*>(f.data_ptr()), size_t(f.numel()) * sizeof(float));
            bytes.append(static_cast<const char*>(d.data_ptr()), size_t(d.numel()));
        }
        const std::vector<std::string> parts = cluster::gather(bytes);
        if (!root) continue;
        for (const std::string& part : parts) {  // in rank order: batches kR, kR + 1, ...
            if (part.empty()) continue;
            const size_t eol = part.find('\n');
            const nlohmann::json head = nlohmann::json::parse(part.substr(0, eol));
            const int64_t rows = head["rows"].get<int64_t>(), dims = head["dims"].get<int64_t>();
            const auto dshape = head["display"].get<std::vector<int64_t>>();
            char* p = const_cast<char*>(part.data()) + eol + 1;
            if (!writer) {
                writer = std::make_unique<NpyRowWriter>(features_path, n, dims);
                in.layer = head["layer"].get<std::string>();
            }
            writer->write(torch::from_blob(p, {rows, dims}, torch::kFloat));
            put_display_rows(in.display, n, row, torch::from_blob(p + rows * dims * 4, dshape, torch::kUInt8));
            const auto labels = head["labels"].get<std::vector<int64_t>>();
            in.labels.insert(in.labels.end(), labels.begin(), labels.end());
            row += rows;
        }
        report_progress(ctx.progress, double(k + 1) / double(rounds));
    }
    if (!root) return false;
    writer->finish();
    in.features = map_npy(features_path);
    in.streamed = true;
    in.feature_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    in.names = data.class_names();
    if (in.names.empty()) in.names = model.meta().class_names;
    for (int64_t i = 0; i < in.display.size(0); ++i) in.thumbs.push_back(image_from_hwc_uint8(in.display[i]));
    return true;
}

Inputs load_inputs(const Options& opts) {
    const Options* o = &opts;
    Inputs in;
    if (!o->features.empty()) {
        // float32 [N,D] (what embed writes) is mapped, not read: a million rows are never copied.
        try {
            in.features = map_npy(o->features);
        } catch (const Error&) {
            in.features = read_npy(o->features);  // another dtype or rank: read (or refused with the reason)
        }
        if (in.features.dim() != 2 || !at::isFloatingType(in.features.scalar_type()))
            throw Error("features '" + o->features + "' must be a 2-D float array [N,D], got " +
                        std::to_string(in.features.dim()) + "-D " +
                        std::string(c10::toString(in.features.scalar_type())));
        if (!o->common.labels.empty()) in.labels = read_labels(o->common.labels);
        in.indices.resize(size_t(in.features.size(0)));
        for (size_t i = 0; i < in.indices.size(); ++i) in.indices[i] = int64_t(i);
        in.layer = "features";
        return in;
    }
    in.model.emplace(open_model(o->common));
    Dataset data = open_data(o->common);
    in.data_hash = data.hash();
    fit_model_to_data(*in.model, data);
    in.indices = selected_indices(o->common, data, ":");
    LayerFeaturesOptions lo;
    lo.layer = o->layer;
    lo.batch_size = o->batch_size;
    lo.pool = parse_token_pool(o->pool);
    lo.keep_display = true;
    if (cluster::distributed()) {
        in.elsewhere = !distributed_features(*in.model, data, in, lo, o->common);
        return in;
    }
    // The rows go straight to the output's features.npy, which is then mapped for t-SNE.
    const OutputDir early(o->common.out);
    lo.features_path = (std::filesystem::path(early.dir()) / "features.npy").string();
    in.streamed = true;
    EmbeddingFeatures ef = layer_features(*in.model, data, in.indices, lo, run_context(o->common, "features"));
    in.features = ef.features;
    in.labels = ef.labels;
    in.layer = ef.layer;
    in.feature_seconds = ef.seconds;
    in.names = data.class_names();
    if (in.names.empty()) in.names = in.model->meta().class_names;
    in.thumbs.reserve(in.indices.size());
    for (int64_t i = 0; i < ef.display.size(0); ++i) in.thumbs.push_back(image_from_hwc_uint8(ef.display[i]));
    return in;
}

TsneOptions tsne_options(const Options& opts) {
    const Options* o = &opts;
    TsneOptions topt;
    topt.perplexity = o->perplexity;
    topt.iterations = o->iterations;
    if (o->iterations > 0)
        topt.early_exaggeration_iters = std::min(topt.early_exaggeration_iters, o->iterations);
    topt.pca_dims = o->pca ? o->pca_dims : 0;
    topt.gradient = o->gradient == "exact" ? TsneOptions::Gradient::Exact
                    : o->gradient == "fft" ? TsneOptions::Gradient::Fft
                                           : TsneOptions::Gradient::Auto;
    topt.kernel = o->kernel == "exponential" ? AffinityKernel::Exponential : AffinityKernel::Gaussian;
    return topt;
}

// embedding.npy, embedding.csv and (for a layer) features.npy.
void write_tables(OutputDir& out, const at::Tensor& xy, const Inputs& in) {
    const int64_t n = xy.size(0);
    write_npy(out.file("embedding.npy", "t-SNE embedding [N,2] float32, rows in the order of embedding.csv"), xy);
    const at::Tensor e = xy.contiguous();
    const float* ep = e.data_ptr<float>();
    std::vector<std::vector<std::string>> rows;
    rows.reserve(size_t(n));
    for (int64_t i = 0; i < n; ++i)
        rows.push_back({std::to_string(in.indices[size_t(i)]), std::to_string(in.labels.empty() ? -1 : in.labels[size_t(i)]),
                        num(ep[2 * i]), num(ep[2 * i + 1])});
    write_csv(out.file("embedding.csv", "per item: dataset index, label (-1 unknown), x, y"),
              {"index", "label", "x", "y"}, rows);
    if (in.model) {  // a layer's features, not given ones
        const std::string path = out.file("features.npy", "the features of layer " + in.layer +
                                                              " [N,D] float32 (embed them again with --features)");
        if (!in.streamed) write_npy(path, in.features);  // streamed: already there
    }
}

// scatter.png and, with pictures, thumbnails.png and grid.png; returns the grid's rows and
// columns (0 x 0 without pictures).
std::pair<int, int> write_maps(OutputDir& out, const at::Tensor& xy, const Inputs& in, const Options& opts,
                               std::pair<int, int> grid_shape) {
    const Options* o = &opts;
    const int64_t n = xy.size(0);
    std::vector<std::pair<std::string, cv::Mat>> pictures;
    pictures.emplace_back(out.file("scatter.png", "the embedding, one dot per item coloured by label"),
                          scatter_plot(xy, in.labels, in.names, o->map_size));
    int grid_rows = 0, grid_cols = 0;
    if (!in.thumbs.empty()) {
        pictures.emplace_back(out.file("thumbnails.png", "each image drawn at its place in the embedding"),
                              thumbnail_map(xy, in.thumbs, o->map_size, o->thumb_size, in.labels));
        std::tie(grid_rows, grid_cols) =
            o->grid.empty() ? near_square_grid(std::min(n, o->grid_max)) : grid_shape;
        const auto cells = grid_assignment(xy, grid_rows, grid_cols);
        const cv::Mat blank(o->thumb_size, o->thumb_size, CV_8UC3, cv::Scalar(255, 255, 255));
        std::vector<cv::Mat> tiles;
        tiles.reserve(cells.size());
        for (int64_t c : cells) tiles.push_back(c < 0 ? blank : resize_to_fit(in.thumbs[size_t(c)], o->thumb_size));
        pictures.emplace_back(out.file("grid.png", "grid view: " + std::to_string(grid_rows) + "x" +
                                                       std::to_string(grid_cols) +
                                                       " cells, one image each, placed so that neighbours in "
                                                       "the embedding stay neighbours"),
                              tile_grid(tiles, grid_cols, 0, cv::Scalar(255, 255, 255)));
    }
    write_pngs(pictures, o->common.threads);
    return {grid_rows, grid_cols};
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<Options>();
    add_options(app, *o);
    return [o]() {
        const std::pair<int, int> grid_shape = check_options(*o);
        apply_threads(o->common);
        const bool given = !o->features.empty();
        if (given && cluster::rank() != 0) return 0;  // given vectors: rank 0 alone maps them
        const Inputs in = load_inputs(*o);
        if (in.elsewhere) return 0;
        const TsneOptions topt = tsne_options(*o);
        const EmbeddingResult r = embed_features(in.features, in.labels, topt, run_context(o->common, "t-SNE"));
        const at::Tensor& xy = r.tsne.embedding;
        const int64_t n = xy.size(0);
        const std::string& layer = in.layer;

        nlohmann::json options = {{"layer", layer}, {"pool", o->pool},
                                  {"features", o->features},
                                  {"labels", o->common.labels},
                                  {"indices", o->common.indices},
                                  {"perplexity", o->perplexity},
                                  {"pca_dims", topt.pca_dims},
                                  {"iterations", r.tsne.iterations},
                                  {"gradient", o->gradient},
                                  {"kernel", o->kernel},
                                  {"seed", o->common.seed},
                                  {"threads", o->common.threads}};
        if (!given) {
            options["data"] = o->common.data.empty() ? "fashion-mnist:test" : o->common.data;
            options["data_sha256"] = in.data_hash;  // serve --map and report --map check it
        }
        OutputDir out = open_out(o->common, options, in.model ? &*in.model : nullptr);

        write_tables(out, xy, in);
        const auto [grid_rows, grid_cols] = write_maps(out, xy, in, *o, grid_shape);
        write_projector(out, in.features, in.labels, in.indices, in.names, in.thumbs, layer);

        nlohmann::json metrics = to_json(r);
        metrics.update(nlohmann::json{{"n", n}, {"dims", in.features.size(1)}, {"layer", layer}});
        metrics["seconds"]["features"] = in.feature_seconds;
        if (grid_rows > 0) metrics["grid"] = {grid_rows, grid_cols};
        write_json(out.file("metrics.json",
                            "leave-one-out " + std::to_string(r.metric_k) +
                                "-NN label accuracy in 2-D, neighbour preservation, final KL divergence, "
                                "seconds per stage"),
                   metrics);
        out.write_manifest();
        std::cerr << "embedded " << n << " items (" << layer << ", " << in.features.size(1) << " dims): ";
        if (std::isfinite(r.knn_accuracy)) std::cerr << r.metric_k << "-NN accuracy " << num(r.knn_accuracy, "%.4f") << ", ";
        std::cerr << "neighbour preservation " << num(r.neighbour_preservation, "%.4f") << ", KL "
                  << num(r.tsne.kl_divergence, "%.4f") << " -> " << out.dir() << "\n";
        return 0;
    };
}

RegisterCommand reg({"embed",
                     "dataset maps: t-SNE of a layer's features with labelled scatter, thumbnails, grid view "
                     "and projector export",
                     setup, 50});

}  // namespace
}  // namespace convscope::cli
