// convscope attention: the attention probabilities of a transformer's attention layers as NPY,
// and pictures of a query token's attention over the image (per head and averaged) and of the
// class token's attention.
#include <iostream>
#include <nlohmann/json.hpp>
#include <opencv2/core.hpp>

#include "common.hpp"
#include "convscope/methods/attention.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {
namespace {

struct Args {
    std::string layers = "all", query, colormap = "inferno";
    float alpha = 0.6f;
};

// "i,j" (a grid token), "cls" (the first extra token) or "extra:k".
std::pair<int64_t, int64_t> parse_query(const std::string& q) {
    if (q == "cls") return {-1, 0};
    if (q.rfind("extra:", 0) == 0) {
        const auto k = parse_shape(q.substr(6), "--query");
        if (k.size() == 1) return {-1, k[0]};
    } else {
        const auto parts = detail::split(q, ',');
        if (parts.size() == 2) {
            try {
                size_t a = 0, b = 0;
                const long long i = std::stoll(parts[0], &a), j = std::stoll(parts[1], &b);
                if (a == parts[0].size() && b == parts[1].size() && i >= 0 && j >= 0) return {i, j};
            } catch (const std::exception&) {
            }
        }
    }
    throw UsageError("--query takes ROW,COL of a patch token (e.g. 3,4), cls for the class token or extra:K, got '" +
                     q + "'");
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<Args>();
    add_model_options(app, *o);
    add_data_options(app, *o);
    add_out_option(app, *o, "attention-out");
    add_json_option(app, *o);
    app.add_option("--layers", a->layers,
                   "attention layers, their modules or blocks holding them, L1,L2,... or all (see `convscope describe`)")
        ->capture_default_str();
    app.add_option("--query", a->query,
                   "the query token shown: ROW,COL on the patch grid, cls (the class token) or extra:K "
                   "(default: the grid's centre)");
    app.add_option("--colormap", a->colormap, "colormap of the attention maps")->capture_default_str();
    app.add_option("--alpha", a->alpha, "opacity of the maps over the input (0..1)")->capture_default_str();
    return [o, a]() {
        AttentionOptions opts;
        if (a->layers != "all")
            for (const auto& name : detail::split(a->layers, ','))
                if (!name.empty()) opts.layers.push_back(name);
        const Colormap cmap = parse_colormap(a->colormap);
        if (!(a->alpha >= 0 && a->alpha <= 1)) throw UsageError("--alpha must be between 0 and 1");
        std::optional<std::pair<int64_t, int64_t>> query;
        if (!a->query.empty()) query = parse_query(a->query);
        auto [model, data, indices, pre, images, labels] = open_selected_inputs(*o);
        const AttentionResult r = attention(model, images, opts, run_context(*o, "attention"));
        // Check every layer's query before writing anything.
        for (const auto& la : r.layers) {
            if (la.layout.grid_h <= 0)
                throw Error("the queries of attention layer '" + la.layer +
                            "' are not on a known grid: pass --grid HxW with the patch grid");
            if (query) (void)query_attention(la, query->first, query->second);
        }

        nlohmann::json options = {{"layers", a->layers}, {"query", a->query}, {"colormap", colormap_name(cmap)},
                                  {"alpha", a->alpha}, {"data", data.spec()}, {"indices", indices}};
        OutputDir dir = open_out(*o, options, &model);
        const at::Tensor display = pre.to_display(images);  // [N,H,W,C] uint8
        std::vector<std::pair<std::string, cv::Mat>> pngs;
        nlohmann::json layers = nlohmann::json::array();
        for (const auto& la : r.layers) {
            const Layout& l = la.layout;
            const bool windowed = l.window > 0;
            write_npy(dir.file(la.layer + "/attention.npy",
                               windowed ? "attention probabilities (N,windows,heads,queries,keys) float32 of " +
                                              std::to_string(l.window) + "x" + std::to_string(l.window) +
                                              " windows (shift " + std::to_string(l.shift) + "), rows sum to 1"
                                        : "attention probabilities (N,heads,queries,keys) float32, rows sum to 1; "
                                          "tokens: " + std::to_string(l.extra_front) + " extra, the " +
                                              std::to_string(l.grid_h) + "x" + std::to_string(l.grid_w) +
                                              " grid row by row, " + std::to_string(l.extra_back) + " extra"),
                      la.probs);
            const auto q = query ? *query : std::make_pair(l.grid_h / 2, l.grid_w / 2);
            std::vector<std::pair<std::string, at::Tensor>> views{
                {q.first < 0 ? "extra" + std::to_string(q.second) : "query_" + std::to_string(q.first) + "_" +
                                                                       std::to_string(q.second),
                 query_attention(la, q.first, q.second)}};
            if (!windowed && l.extra_front > 0 && !(q.first == -1 && q.second == 0))
                views.push_back({"cls", query_attention(la, -1, 0)});
            nlohmann::json jl = {{"layer", la.layer}, {"layout", to_json(l)}, {"shape", la.probs.sizes().vec()}};
            for (const auto& [what, maps] : views) {
                write_npy(dir.file(la.layer + "/" + what + ".npy",
                                   "the " + what + " token's attention over the grid (N,heads,h,w) float32"),
                          maps);
                for (size_t n = 0; n < indices.size(); ++n) {
                    const int64_t row = static_cast<int64_t>(n);
                    const cv::Mat base = image_from_hwc_uint8(display[row]);
                    const cv::Mat big = resize_to_fit(base, std::max(96, std::max(base.rows, base.cols)));
                    std::vector<cv::Mat> tiles{big};
                    std::vector<std::string> captions{"input"};
                    const at::Tensor m = maps[row];
                    const Range range = value_range(m);
                    for (int64_t h = 0; h < l.heads; ++h) {
                        tiles.push_back(overlay_map(big, m[h], cmap, range, a->alpha));
                        captions.push_back("head " + std::to_string(h));
                    }
                    tiles.push_back(overlay_map(big, m.mean(0), cmap, value_range(m.mean(0)), a->alpha));
                    captions.push_back("mean");
                    GridOptions g;
                    g.cols = std::min<int>(static_cast<int>(tiles.size()), 7);
                    g.tile_captions = captions;
                    g.separator_px = 2;
                    pngs.emplace_back(dir.file(la.layer + "/" + std::to_string(indices[n]) + "_" + what + ".png",
                                               "input " + std::to_string(indices[n]) + ": the " + what +
                                                   " token's attention per head and averaged, over the input"),
                                      labelled_grid(tiles, g));
                }
            }
            layers.push_back(jl);
        }
        write_pngs(pngs);
        nlohmann::json summary = {{"indices", indices}, {"layers", layers}, {"pictures", pngs.size()}};
        if (query) summary["query"] = a->query;
        write_json(dir.file("summary.json", "the attention layers shown, their layouts, the query"), summary);
        dir.write_manifest();
        if (o->json) std::cout << json_text(summary, 2) << "\n";
        else
            std::cout << r.layers.size() << " attention layers, " << indices.size() << " inputs, " << pngs.size()
                      << " pictures in " << dir.dir() << "\n";
        return 0;
    };
}

RegisterCommand reg({"attention",
                     "a transformer's attention: probabilities as NPY, a query token's and the class token's "
                     "attention over the image per head",
                     setup, 55});

}  // namespace
}  // namespace convscope::cli
