// convscope top-patches: for every channel of the chosen layers, the dataset images that
// activate it most (and least), cropped to the unit's receptive field; histograms of per-image
// maxima and dead channels. Resumable (--checkpoint), shardable (--shard i/n) and mergeable
// (--merge). Under mpirun each rank scans one shard with its own checkpoint and rank 0 merges
// them into the files one process writes.
#include <iostream>

#include "common.hpp"
#include "convscope/runtime/cluster.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/methods/top_patches.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {
namespace {

struct Options {
    CommonOptions common;
    std::string layers;
    int64_t k = 9;
    bool no_lowest = false;
    int64_t batch_size = 128;
    int bins = 20;
    std::string checkpoint;
    int64_t checkpoint_every = 10;
    std::string shard;
    bool gradient_boxes = false;
    int crop_px = 48;
    std::vector<std::string> merge;
};

// "i/n" -> (i, n).
std::pair<int64_t, int64_t> parse_shard(const std::string& spec) {
    const auto slash = spec.find('/');
    int64_t i = -1, n = 0;
    if (slash == std::string::npos || !detail::parse_int64(spec.substr(0, slash), i) ||
        !detail::parse_int64(spec.substr(slash + 1), n) || n < 1 || i < 0 || i >= n)
        throw UsageError("--shard takes i/n with 0 <= i < n (like 0/4), got '" + spec + "'");
    return {i, n};
}

std::string label_text(const TopPatchesResult& r, int64_t label) {
    if (label < 0) return "?";
    if (label < static_cast<int64_t>(r.class_names.size())) return r.class_names[size_t(label)];
    return std::to_string(label);
}

cv::Mat blank_tile(int px) { return cv::Mat(px, px, CV_8UC3, cv::Scalar(255, 255, 255)); }

// top_patches.json, a montage per layer (a row of top crops per channel) and a picture per channel
// (top and bottom crops with values and labels).
void write_outputs(OutputDir& out, const TopPatchesResult& r, const Dataset& data, int crop_px) {
    write_json(out.file("top_patches.json",
                        "per layer and channel: top/bottom images (index, label, value, y, x, receptive-field "
                        "box [y0,x0,y1,x1] in input pixels), dominant labels, histogram of per-image maxima, "
                        "dead fraction, mergeable state"),
               top_patches_to_json(r));
    const int k = static_cast<int>(r.k);
    for (const auto& L : r.layers) {
        std::vector<std::vector<PatchEntry>> lists;
        for (const auto& c : L.channels) {
            lists.push_back(c.top);
            lists.push_back(c.bottom);
        }
        const auto crops = patch_crops(data, r.preprocess, lists, crop_px);
        const std::string base = detail::file_safe(L.name);
        std::vector<cv::Mat> tiles;
        GridOptions grid;
        grid.cols = k;
        for (size_t c = 0; c < L.channels.size(); ++c) {
            const auto& top = crops[2 * c];
            for (int j = 0; j < k; ++j) tiles.push_back(j < int(top.size()) ? top[size_t(j)] : blank_tile(crop_px));
            std::string row = "c" + std::to_string(c);
            const auto dom = dominant_labels(L.channels[c]);
            if (!dom.empty())
                row += " " + label_text(r, dom[0].first) + " " + std::to_string(dom[0].second) + "/" +
                       std::to_string(L.channels[c].top.size());
            grid.row_labels.push_back(row);
        }
        write_png(out.file("montage_" + base + ".png",
                           "layer " + L.name + ": a row per channel with its top-" + std::to_string(k) +
                               " crops (highest first); row label: channel, dominant label and its count"),
                  labelled_grid(tiles, grid));

        for (size_t c = 0; c < L.channels.size(); ++c) {
            std::vector<cv::Mat> ctiles;
            GridOptions g;
            g.cols = k;
            g.row_labels.push_back("top");
            for (int j = 0; j < k; ++j) {
                const bool have = j < int(crops[2 * c].size());
                ctiles.push_back(have ? crops[2 * c][size_t(j)] : blank_tile(crop_px));
                const auto& e = have ? L.channels[c].top[size_t(j)] : PatchEntry{};
                g.tile_captions.push_back(have ? detail::format_number(e.value, 3) + " " + label_text(r, e.label) : "");
            }
            if (r.lowest) {
                g.row_labels.push_back("bottom");
                for (int j = 0; j < k; ++j) {
                    const bool have = j < int(crops[2 * c + 1].size());
                    ctiles.push_back(have ? crops[2 * c + 1][size_t(j)] : blank_tile(crop_px));
                    const auto& e = have ? L.channels[c].bottom[size_t(j)] : PatchEntry{};
                    g.tile_captions.push_back(have ? detail::format_number(e.value, 3) + " " + label_text(r, e.label) : "");
                }
            }
            write_png(out.file("channels/" + base + "/channel_" + std::to_string(c) + ".png",
                               "layer " + L.name + " channel " + std::to_string(c) +
                                   ": top crops" + (r.lowest ? " and bottom crops" : "") +
                                   ", each captioned with its value and label"),
                      labelled_grid(ctiles, g));
        }
    }
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<Options>();
    add_model_options(app, o->common);
    add_data_options(app, o->common);
    add_out_option(app, o->common, "top_patches");
    app.add_option("--layers", o->layers, "layers to scan, comma-separated (default: all conv layers)");
    app.add_option("--k", o->k, "images kept per channel, highest and lowest")->capture_default_str();
    app.add_flag("--no-lowest", o->no_lowest, "keep only the highest images, not the lowest");
    app.add_option("--batch-size", o->batch_size, "images per forward pass")->capture_default_str();
    app.add_option("--bins", o->bins, "bins of the histogram of per-image maxima")->capture_default_str();
    app.add_option("--checkpoint", o->checkpoint,
                   "checkpoint file: written every few batches; an interrupted scan resumes from it");
    app.add_option("--checkpoint-every", o->checkpoint_every, "batches between checkpoint writes")
        ->capture_default_str();
    app.add_option("--shard", o->shard, "scan only shard i of n (every n-th batch), e.g. 0/4");
    app.add_flag("--gradient-boxes", o->gradient_boxes,
                 "boxes from input gradients for every layer (default: only where the receptive field is unknown)");
    app.add_option("--crop-size", o->crop_px, "size of the crops in the pictures, in pixels")->capture_default_str();
    app.add_option("--merge", o->merge, "merge the top_patches.json files of all shards of one scan")
        ->expected(1, -1);
    return [o]() {
        if (o->crop_px < 4 || o->crop_px > 1024) throw UsageError("--crop-size must be between 4 and 1024");
        if (!o->merge.empty()) {
            if (cluster::distributed())
                throw UsageError("--merge joins finished shards in one process: run it without mpirun");
            std::vector<TopPatchesResult> shards;
            for (const auto& path : o->merge)
                shards.push_back(top_patches_from_json(nlohmann::json::parse(read_file(path), nullptr, false),
                                                       "'" + path + "'"));
            TopPatchesResult r = merge_top_patches(shards);
            // The data the shards scanned, for the crops; --data/--labels if it has moved.
            CommonOptions where = o->common;
            if (where.data.empty() && where.image.empty()) {
                where.data = r.data_spec;
                if (where.labels.empty()) where.labels = r.data_labels;
            }
            Dataset data = open_data(where);
            if (data.hash() != r.data_hash)
                throw Error("the data '" + data.spec() + "' is not the data the shards scanned ('" + r.data_spec +
                            "'): pass that data with --data (and --labels)");
            nlohmann::json options = {{"merge", o->merge}, {"crop_size", o->crop_px}};
            OutputDir out(o->common.out);
            out.set_command(command_line(), options, r.model_path, r.model_hash);
            write_outputs(out, r, data, o->crop_px);
            out.write_manifest();
            std::cerr << "merged " << shards.size() << " shards (" << r.images_scanned << " images) into "
                      << out.dir() << "\n";
            return 0;
        }

        Model model = open_model(o->common);
        Dataset data = open_data(o->common);
        fit_model_to_data(model, data);
        TopPatchesOptions opts;
        if (!o->layers.empty()) {
            for (const auto& name : detail::split(o->layers, ','))
                if (!name.empty()) opts.layers.push_back(name);
            if (opts.layers.empty()) throw UsageError("--layers is empty: give layer names like conv1,conv2");
        }
        opts.k = o->k;
        opts.lowest = !o->no_lowest;
        opts.batch_size = o->batch_size;
        opts.histogram_bins = o->bins;
        opts.checkpoint_path = o->checkpoint;
        opts.checkpoint_every = o->checkpoint_every;
        opts.gradient_boxes = o->gradient_boxes;
        if (!o->shard.empty()) std::tie(opts.shard_index, opts.shard_count) = parse_shard(o->shard);
        const auto indices = selected_indices(o->common, data, ":");
        if (cluster::distributed()) {
            if (!o->shard.empty())
                throw UsageError("--shard splits a scan by hand; under mpirun the ranks split it: leave --shard out");
            opts.shard_index = cluster::rank();
            opts.shard_count = cluster::size();
            opts.checkpoint_path = cluster::rank_path(o->checkpoint);  // each rank resumes its own share
            // Before any work: the same model, data, items and options on every rank.
            check_ranks_agree(model, data, indices);
        }

        nlohmann::json options = {{"layers", opts.layers},       {"k", opts.k},
                                  {"lowest", opts.lowest},       {"batch_size", opts.batch_size},
                                  {"bins", opts.histogram_bins}, {"checkpoint", opts.checkpoint_path},
                                  {"shard", o->shard},           {"gradient_boxes", opts.gradient_boxes},
                                  {"crop_size", o->crop_px},     {"data", data.spec()},
                                  {"indices", o->common.indices}};
        TopPatchesResult r = top_patches(model, data, indices, preprocess_for(model, data), opts,
                                         run_context(o->common, "scanning"));
        if (cluster::distributed()) {
            // The shards meet on rank 0, merged as --merge merges them: the bytes of one process.
            const std::vector<std::string> parts = cluster::gather(top_patches_to_json(r).dump());
            if (cluster::rank() != 0) return 0;
            std::vector<TopPatchesResult> shards;
            for (size_t k = 0; k < parts.size(); ++k)
                shards.push_back(top_patches_from_json(nlohmann::json::parse(parts[k], nullptr, false),
                                                       "rank " + std::to_string(k) + "'s results"));
            r = merge_top_patches(shards);
        }
        r.data_labels = o->common.labels;  // so --merge can reopen the same data
        OutputDir out = open_out(o->common, options, &model);
        write_outputs(out, r, data, o->crop_px);
        out.write_manifest();
        std::cerr << "scanned " << r.images_scanned << " images";
        if (r.shard_count > 1) std::cerr << " (shard " << r.shard_index << "/" << r.shard_count << ")";
        if (cluster::distributed()) std::cerr << " on " << cluster::size() << " ranks";
        std::cerr << " into " << out.dir() << "\n";
        return 0;
    };
}

RegisterCommand reg({"top-patches",
                     "the dataset images that activate each channel most and least, cropped to receptive fields",
                     setup, 40});

}  // namespace
}  // namespace convscope::cli
