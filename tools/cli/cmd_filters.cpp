// convscope filters: a layer's weights as a grid of filter tiles, the raw weights and per-filter
// statistics (L2 norm, mean, std, high-frequency noise score).
#include <iostream>
#include "convscope/runtime/json.hpp"

#include "common.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/methods/filters.hpp"
#include "convscope/runtime/render.hpp"

namespace convscope::cli {
namespace {

struct Args {
    std::string layer, filters, in_channels, normalize = "filter", mode = "auto", reshape;
    int upscale = 0;
};

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<Args>();
    add_model_options(app, *o);
    add_out_option(app, *o, "filters-out");
    add_json_option(app, *o);
    app.add_option("--layer", a->layer, "layer whose weights to show, e.g. conv1 (see `convscope describe`)")
        ->required();
    app.add_option("--filters", a->filters, "filters (output channels / units) to show, slice a:b (default: all)");
    app.add_option("--in-channels", a->in_channels, "input channels to show, slice a:b (default: all)");
    app.add_option("--normalize", a->normalize,
                   "colour scale: filter (each filter its own +-max|w|) or layer (one +-max|w| for all)")
        ->capture_default_str();
    app.add_option("--mode", a->mode,
                   "auto (rgb for 3 input channels, gray for 1, else channels, or summary above 4096 "
                   "slices), rgb, gray, channels (a sub-grid of input-channel slices per filter) or "
                   "summary (one tile per filter: L2 norm over input channels)")
        ->capture_default_str();
    app.add_option("--reshape", a->reshape, "C,H,W: show each unit of a Linear layer as a C-channel HxW image");
    app.add_option("--upscale", a->upscale, "pixels per weight (nearest neighbour); 0 = readable size")
        ->check(CLI::NonNegativeNumber);
    return [o, a]() {
        FiltersOptions opts;
        opts.layer = a->layer;
        opts.normalize = parse_filter_normalize(a->normalize);
        opts.mode = parse_filter_mode(a->mode);
        opts.upscale = a->upscale;
        if (!a->reshape.empty()) {
            opts.reshape = parse_shape(a->reshape, "--reshape");
            if (opts.reshape.size() != 3)
                throw UsageError("--reshape takes three numbers C,H,W, got '" + a->reshape + "'");
        }
        Model model = open_model(*o);
        if (!a->filters.empty() || !a->in_channels.empty()) {
            // Slices are read against the layer's filter and channel counts.
            const auto shape = filter_shape(model, opts.layer, opts.reshape);
            if (!a->filters.empty()) opts.filters = parse_range(a->filters, shape[0], "--filters");
            if (!a->in_channels.empty()) opts.in_channels = parse_range(a->in_channels, shape[1], "--in-channels");
        }
        const FiltersResult r = filters(model, opts);

        nlohmann::json options = {{"layer", r.layer},
                                  {"filters", r.filters},
                                  {"in_channels", r.in_channels},
                                  {"normalize", filter_normalize_name(opts.normalize)},
                                  {"mode", filter_mode_name(r.mode)},
                                  {"upscale", r.upscale}};
        if (!opts.reshape.empty()) options["reshape"] = opts.reshape;
        OutputDir dir = open_out(*o, options, &model);
        write_png(dir.file("filters.png",
                           std::string("the filters of layer ") + r.layer + " as " + filter_mode_name(r.mode) +
                               " tiles, zero at the centre of the colour scale, normalised per " +
                               filter_normalize_name(opts.normalize)),
                  r.picture);
        write_npy(dir.file("filters.npy", "the shown weights, raw (F,C,kh,kw) float32; rows follow "
                                          "filters.json's filters, channels its in_channels"),
                  r.weights);
        nlohmann::json j;
        j["layer"] = r.layer;
        j["type"] = r.layer_type;
        j["weight_shape"] = r.weight_shape;
        j["shape"] = r.weights.sizes().vec();
        j["mode"] = filter_mode_name(r.mode);
        j["normalize"] = filter_normalize_name(opts.normalize);
        j["upscale"] = r.upscale;
        j["layer_max_abs"] = r.layer_max_abs;
        j["filters"] = r.filters;
        j["in_channels"] = r.in_channels;
        if (!opts.reshape.empty()) j["reshape"] = opts.reshape;
        j["noise_definition"] =
            "share of the mean-free energy in the residual after removing each slice's least-squares "
            "plane, at normalised radial frequency > 0.5 of Nyquist (periodic DFT), summed over input channels";
        auto& stats = j["stats"] = nlohmann::json::array();
        for (const auto& s : r.stats)
            stats.push_back({{"filter", s.filter}, {"l2_norm", s.l2_norm}, {"mean", s.mean},
                             {"std", s.std}, {"noise", s.noise}});
        write_json(dir.file("filters.json", "per-filter statistics: L2 norm, mean, std, noise score"), j);
        dir.write_manifest();

        if (o->json) {
            std::cout << json_text(j, 2) << "\n";
        } else {
            double noise = 0;
            for (const auto& s : r.stats) noise += s.noise;
            std::cout << "filters: layer " << r.layer << " (" << r.layer_type << "), " << r.filters.size()
                      << " filter(s) x " << r.in_channels.size() << " input channel(s) of " << r.weights.size(2)
                      << "x" << r.weights.size(3) << ", " << filter_mode_name(r.mode) << " tiles, mean noise score "
                      << (r.stats.empty() ? 0.0 : noise / static_cast<double>(r.stats.size())) << "\n"
                      << "wrote " << dir.dir() << "\n";
        }
        return 0;
    };
}

RegisterCommand reg({"filters", "show a layer's weights as a grid of filters, with per-filter statistics", setup, 20});

}  // namespace
}  // namespace convscope::cli
