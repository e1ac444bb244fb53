// convscope activations: the feature maps of any layers for some inputs: a picture per layer and
// input (tile grid or bar strip beside the input), an overlay of the strongest channels, the exact
// values and per-channel statistics.
#include <chrono>
#include "convscope/runtime/json.hpp"
#include <iostream>

#include "common.hpp"
#include "convscope/methods/activations.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope::cli {
namespace {

struct Args {
    std::string layers = "all", colormap = "viridis", scale = "layer", sort = "index";
    int top_channels = 3;
    bool no_overlay = false;
};

nlohmann::json floats(const at::Tensor& t) {
    const at::Tensor c = t.to(torch::kFloat).contiguous();
    const float* p = c.data_ptr<float>();
    return std::vector<float>(p, p + c.numel());
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<Args>();
    add_model_options(app, *o);
    add_data_options(app, *o);
    add_out_option(app, *o, "activations-out");
    add_json_option(app, *o);
    app.add_option("--layers", a->layers, "layers to show, L1,L2,... or all (see `convscope describe`)")
        ->capture_default_str();
    app.add_option("--colormap", a->colormap, "viridis, gray or inferno (also magma, turbo)")->capture_default_str();
    app.add_option("--scale", a->scale, "layer (one colour range per layer) or tile (one per channel)")
        ->capture_default_str();
    app.add_option("--sort", a->sort, "channel order: index, or mean (largest mean activation first)")
        ->capture_default_str();
    app.add_option("--top-channels", a->top_channels, "channels summed in the overlay")
        ->capture_default_str()
        ->check(CLI::PositiveNumber);
    app.add_flag("--no-overlay", a->no_overlay, "skip the overlay pictures");
    return [o, a]() {
        // Usage errors before any work.
        ActivationsOptions opts;
        opts.colormap = parse_colormap(a->colormap);
        opts.scale = parse_activation_scale(a->scale);
        opts.order = parse_channel_order(a->sort);
        opts.top_channels = a->top_channels;
        opts.overlays = !a->no_overlay;
        if (a->layers != "all") {
            for (const auto& name : detail::split(a->layers, ','))
                if (!name.empty()) opts.layers.push_back(name);
            if (opts.layers.empty()) throw UsageError("--layers needs layer names L1,L2,... or all");
        }
        if (o->index.empty() && o->indices.empty() && o->image.empty())
            throw UsageError("choose the inputs with --index i, --indices a:b or --image P");

        auto [model, data, indices, pre, images, labels] = open_selected_inputs(*o);
        opts.preprocess = pre;

        const auto t0 = std::chrono::steady_clock::now();
        const ActivationsResult r = activations(model, images, opts, run_context(*o, "activations"));

        nlohmann::json options = {{"layers", a->layers},       {"colormap", colormap_name(opts.colormap)},
                                  {"scale", a->scale},         {"sort", a->sort},
                                  {"top_channels", a->top_channels}, {"overlay", opts.overlays},
                                  {"data", data.spec()},       {"indices", indices}};
        OutputDir dir = open_out(*o, options, &model);
        std::vector<std::pair<std::string, cv::Mat>> pngs;
        for (size_t n = 0; n < indices.size(); ++n)
            if (!r.inputs[n].empty())
                pngs.emplace_back(dir.file("inputs/" + std::to_string(indices[n]) + ".png",
                                           "input " + std::to_string(indices[n]) + " as the model sees it "
                                           "(preprocessing undone)"),
                                  r.inputs[n]);
        nlohmann::json layer_list = nlohmann::json::array();
        for (const auto& la : r.layers) {
            const std::string folder = la.name + "/";
            const bool viewed = la.layout.spatial() && la.layout.kind != LayoutKind::Nchw;
            const std::string shape_note =
                la.values.dim() == 4 ? (viewed ? "(N,C,h,w) viewed from " + layout_summary(la.layout) : "(N,C,H,W)")
                                     : "(N,F)";
            write_npy(dir.file(folder + "activations.npy",
                               "layer " + la.name + "'s output " + shape_note +
                                   " float32, exactly as computed; rows follow stats.json's indices"),
                      la.values);
            if (la.extra_tokens.defined() && la.extra_tokens.size(1) > 0)
                write_npy(dir.file(folder + "extra_tokens.npy",
                                   "layer " + la.name + "'s extra tokens (N,k,D) float32, " +
                                       std::to_string(la.layout.extra_front) + " before the grid first, then " +
                                       std::to_string(la.layout.extra_back) + " after it"),
                          la.extra_tokens);
            for (size_t n = 0; n < indices.size(); ++n) {
                const std::string idx = std::to_string(indices[n]);
                pngs.emplace_back(dir.file(folder + idx + ".png",
                                           "input " + idx + " (left) and layer " + la.name +
                                               (la.spatial ? "'s channels as tiles" : "'s units as bars") +
                                               " (" + colormap_name(opts.colormap) + ", order " + a->sort + ")"),
                                  la.pictures[n]);
                if (!la.overlays.empty() && !la.overlays[n].empty())
                    pngs.emplace_back(dir.file(folder + idx + "_overlay.png",
                                               "the sum of layer " + la.name + "'s " +
                                                   std::to_string(la.strongest[n].size()) +
                                                   " strongest channels (by mean) over input " + idx),
                                      la.overlays[n]);
            }
            nlohmann::json j;
            j["layer"] = la.name;
            j["shape"] = std::vector<int64_t>(la.values.sizes().begin() + 1, la.values.sizes().end());
            j["spatial"] = la.spatial;
            j["layout"] = to_json(la.layout);
            j["indices"] = indices;
            j["range"] = {la.range.lo, la.range.hi};
            j["definition"] = "per channel: mean and max over positions, active = fraction of positions > 0; "
                              "'channels' pools all inputs";
            auto& ch = j["channels"] = nlohmann::json::array();
            const at::Tensor mean = la.mean.contiguous(), max = la.max.contiguous(), act = la.active.contiguous();
            for (int64_t c = 0; c < mean.numel(); ++c)
                ch.push_back({{"channel", c},
                              {"mean", mean.data_ptr<float>()[c]},
                              {"max", max.data_ptr<float>()[c]},
                              {"active", act.data_ptr<float>()[c]}});
            auto& per = j["inputs"] = nlohmann::json::array();
            for (size_t n = 0; n < indices.size(); ++n) {
                const int64_t row = static_cast<int64_t>(n);
                per.push_back({{"index", indices[n]},
                               {"mean", floats(la.channel_mean[row])},
                               {"max", floats(la.channel_max[row])},
                               {"active", floats(la.channel_active[row])},
                               {"order", la.order[n]},
                               {"strongest", la.strongest[n]}});
            }
            write_json(dir.file(folder + "stats.json",
                                "layer " + la.name + ": per channel mean, max, fraction active, per input and pooled"),
                       j);
            layer_list.push_back({{"layer", la.name}, {"shape", j["shape"]}, {"spatial", la.spatial}});
        }
        write_pngs(pngs);
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        nlohmann::json summary = {{"indices", indices}, {"layers", layer_list}, {"skipped", r.skipped},
                                  {"pictures", pngs.size()}, {"seconds", seconds}};
        write_json(dir.file("summary.json", "layers shown, layers skipped, inputs, time"), summary);
        dir.write_manifest();
        if (o->json) {
            std::cout << json_text(summary, 2) << "\n";
        } else {
            std::cout << "activations: " << indices.size() << " input(s), " << r.layers.size() << " layer(s), "
                      << pngs.size() << " picture(s) in " << seconds << " s\n";
            for (const auto& s : r.skipped) std::cout << "  skipped " << s << "\n";
            std::cout << "wrote " << dir.dir() << "\n";
        }
        return 0;
    };
}

RegisterCommand reg({"activations", "show the feature maps of any layers for some inputs, with statistics",
                     setup, 25});

}  // namespace
}  // namespace convscope::cli
