// convscope occlusion: slide a patch over the input and map the drop of the target's score;
// per image a heatmap, its overlay, the target probability over occluder positions and a
// summary with the most important region and candidate confounders.
#include <chrono>
#include "convscope/runtime/json.hpp"
#include <iostream>

#include "common.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/methods/json.hpp"
#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/strings.hpp"
#include "convscope/app/views.hpp"

namespace convscope::cli {
namespace {

struct Args {
    std::string patch = "4", stride = "2", baseline = "0", mode, occlude = "pixels";
    TargetArgs target;
    bool no_correction = false;
    bool approximate = false, report_ssim = false, no_bf16 = false;
    int64_t batch_size = 0;
    double tau = OcclusionOptions{}.tau, blur_sigma = 0;
    int64_t coarse_step = OcclusionOptions{}.coarse_step;
    double refine_drop = OcclusionOptions{}.refine_drop, refine_error = OcclusionOptions{}.refine_error;
};

int64_t parse_int(const std::string& s, const std::string& what, const std::string& spec) {
    int64_t v = 0;
    if (!detail::parse_int64(s, v))
        throw UsageError(what + " takes N or NxM with whole numbers (like 8 or 8x4), got '" + spec + "'");
    return v;
}

// "P" or "PxQ" -> {P, Q}; both at least 1.
std::pair<int64_t, int64_t> parse_size(const std::string& spec, const std::string& what,
                                       const std::string& noun) {
    auto parts = detail::split(spec, 'x');
    if (parts.size() == 1) parts.push_back(parts[0]);
    if (parts.size() != 2) throw UsageError(what + " takes N or NxM (like 8 or 8x4), got '" + spec + "'");
    const int64_t a = parse_int(parts[0], what, spec), b = parse_int(parts[1], what, spec);
    if (a < 1 || b < 1)
        throw UsageError("the occlusion " + noun + " must be at least 1 pixel, got " + spec + ": use " +
                         what + " with positive sizes");
    return {a, b};
}

OcclusionOptions to_options(const Args& a) {
    OcclusionOptions o;
    std::tie(o.patch_h, o.patch_w) = parse_size(a.patch, "--patch", "patch");
    std::tie(o.stride_y, o.stride_x) = parse_size(a.stride, "--stride", "stride");
    o.baseline = parse_baseline(a.baseline);
    if (a.blur_sigma != 0) {
        if (o.baseline.kind != Baseline::Kind::Blur)
            throw UsageError("--blur-sigma sets the sigma of --baseline blur: add --baseline blur (or use blur:SIGMA)");
        o.baseline.value = a.blur_sigma;
    }
    o.target = parse_target_args(a.target);
    if (a.approximate && !a.mode.empty())
        throw UsageError("--approximate is a mode of its own: drop --mode " + a.mode);
    if (a.occlude != "pixels" && a.occlude != "tokens")
        throw UsageError("--occlude takes pixels or tokens, got '" + a.occlude + "'");
    o.tokens = a.occlude == "tokens";
    if (o.tokens && a.approximate) throw UsageError("--occlude tokens runs exact recomputation: drop --approximate");
    if (a.approximate) o.mode = OcclusionMode::Approximate;
    else if (!a.mode.empty()) o.mode = parse_occlusion_mode(a.mode);
    if (o.mode == OcclusionMode::Approximate && !a.approximate)
        throw UsageError("--mode takes full or incremental; the approximate mode is --approximate");
    if (a.report_ssim && !a.approximate)
        throw UsageError("--report-ssim compares an approximate map with the exact one: add --approximate");
    if (a.no_bf16 && !a.approximate)
        throw UsageError("--no-bf16 is an option of the approximate mode (the exact modes use float32): add --approximate");
    o.batch_size = a.batch_size;
    o.tau = a.tau;
    o.coarse_step = a.coarse_step;
    o.refine_drop = a.refine_drop;
    o.refine_error = a.refine_error;
    o.compare_exact = a.report_ssim;
    o.bf16 = !a.no_bf16;
    if (a.no_correction && !a.approximate)
        throw UsageError("--no-correction is an option of the approximate mode (the exact modes cut nothing): "
                         "add --approximate");
    o.correct = !a.no_correction;
    return o;
}

nlohmann::json grid_json(const at::Tensor& t) {
    nlohmann::json rows = nlohmann::json::array();
    const at::Tensor c = t.contiguous();
    for (int64_t y = 0; y < c.size(0); ++y) {
        nlohmann::json row = nlohmann::json::array();
        for (int64_t x = 0; x < c.size(1); ++x) {
            if (c.scalar_type() == at::kLong) row.push_back(c[y][x].item<int64_t>());
            else row.push_back(c[y][x].item<double>());
        }
        rows.push_back(row);
    }
    return rows;
}

void add_options(CLI::App& app, Args& args) {
    Args* a = &args;
    app.add_option("--patch", a->patch, "occluder size P or PxQ in input pixels")->capture_default_str();
    app.add_option("--stride", a->stride, "step between occluder positions, S or SxT")->capture_default_str();
    app.add_option("--baseline", a->baseline,
                   "what the occluder holds: 0, mean (the image's channel means), blur or blur:SIGMA (a "
                   "blurred copy) or a number, in model-input units")
        ->capture_default_str();
    app.add_option("--blur-sigma", a->blur_sigma, "Gaussian sigma for --baseline blur (0 = max(H,W)/8; same as blur:SIGMA)");
    add_target_options(app, a->target, "whose score drop is measured");
    app.add_option("--mode", a->mode, "full (every copy through the whole model) or incremental "
                                      "(exact, recomputes only what the occluder changes; default)");
    app.add_option("--occlude", a->occlude,
                   "pixels, or tokens (transformers: the patch tokens whose patch centre the window covers are "
                   "replaced by the baseline image's, at the patch embedding)")
        ->capture_default_str();
    app.add_flag("--approximate", a->approximate,
                 "approximate: projective-field thresholding and coarse-to-fine drill-down");
    app.add_option("--tau", a->tau,
                   "--approximate: share of each convolution's output recomputed (0,1]; 0 = automatic (0.25 "
                   "where the occluder's projective field covers whole maps, else 1)")
        ->capture_default_str();
    app.add_flag("--no-correction", a->no_correction,
                 "--approximate: drop what tau cuts instead of correcting it to first order (faster, less accurate)");
    app.add_option("--coarse-step", a->coarse_step,
                   "--approximate: first drill-down level: 3 = the diagonal lattice (every third position), "
                   "or a grid step (power of 2); 0 = automatic (3 where the patch is at least 4 strides, "
                   "else 1: every position)")
        ->capture_default_str();
    app.add_option("--refine-drop", a->refine_drop,
                   "--approximate: evaluate around positions whose |drop| reaches this share of the largest")
        ->capture_default_str();
    app.add_option("--refine-error", a->refine_error,
                   "--approximate, grid steps 2, 4, ...: evaluate cells whose centre's drop differs from "
                   "their corners' mean by this share of the range")
        ->capture_default_str();
    app.add_flag("--no-bf16", a->no_bf16,
                 "--approximate: convolve the changes in float32 (default: bfloat16 where the CPU has AVX512-BF16)");
    app.add_flag("--report-ssim", a->report_ssim,
                 "--approximate: also compute the exact map and report the SSIM against it");
    app.add_option("--batch-size", a->batch_size,
                   "occluded copies per forward pass; 0 = automatic (512 in the incremental modes on models "
                   "with small activation maps, else 128)")
        ->capture_default_str();
}

void write_arrays(OutputDir& dir, const OcclusionResult& r) {
    write_npy(dir.file("occlusion.npy", "attribution per pixel (N,C,H,W) float32: mean score drop of "
                                        "the occluder positions covering the pixel, 0 where none does"),
              r.occlusion);
    write_npy(dir.file("coarse.npy", "score drop per occluder position (N,positions_y,positions_x) "
                                     "float32; position (i,j) covers rows i*stride_y.. and columns "
                                     "j*stride_x.."),
              r.coarse);
    write_npy(dir.file("target_prob.npy", "target class probability with the occluder at each position "
                                          "(N,positions_y,positions_x) float32"),
              r.target_prob);
    write_npy(dir.file("top_class.npy", "most likely class with the occluder at each position "
                                        "(N,positions_y,positions_x) int64"),
              r.top_class);
}

// Image n's pictures (heat map, overlay, target probability over positions) and summary.
nlohmann::json write_image(OutputDir& dir, const OcclusionResult& r, int64_t n, int64_t index,
                           const at::Tensor& display, const OcclusionOptions& opts, const Dataset& data,
                           const std::vector<std::string>& names, const std::string& score) {
    const std::string folder = "image_" + std::to_string(index) + "/";
    const at::Tensor map = r.occlusion[n][0];
    const Range range = symmetric_range(map);
    const int factor = readable_factor(static_cast<int>(map.size(0)), static_cast<int>(map.size(1)), 256);
    cv::Mat heat = upscale_nearest(apply_colormap(map, Colormap::Diverging, range), factor);
    write_png(dir.file(folder + "heatmap.png",
                       "occlusion map of image " + std::to_string(index) +
                           " (red: occluding lowers the target's score, blue: raises it)"),
              heat_with_colorbar(heat, Colormap::Diverging, range));
    cv::Mat base = upscale_nearest(image_from_hwc_uint8(display[n]), factor);
    write_png(dir.file(folder + "overlay.png", "the occlusion map over the input image"),
              overlay_map(base, map, Colormap::Diverging, range, 0.5f));
    const at::Tensor tp = r.target_prob[n];
    const int pf = readable_factor(static_cast<int>(tp.size(0)), static_cast<int>(tp.size(1)), 256);
    const Range unit{0.f, 1.f};
    write_png(dir.file(folder + "target_prob.png",
                       "probability of the target class as a function of the occluder position"),
              heat_with_colorbar(upscale_nearest(apply_colormap(tp, Colormap::Viridis, unit), pf),
                                 Colormap::Viridis, unit));

    const OcclusionSummary s = summarize_occlusion(r, n, opts);
    nlohmann::json j = to_json(s, names);
    j["index"] = index;
    if (data.has_labels()) j["label"] = data.label(index);
    j["score"] = score;
    j["positions"] = {{"y", r.positions_y}, {"x", r.positions_x}};
    j["most_likely_class"] = grid_json(r.top_class[n]);
    j["most_likely_prob"] = grid_json(r.top_prob[n]);
    j["prediction_changes"] = (r.top_class[n] != s.predicted).sum().item<int64_t>();
    if (!r.ssim.empty()) {
        j["ssim"] = r.ssim[n];
        j["ssim_coarse"] = r.ssim_coarse[n];
    }
    if (opts.mode == OcclusionMode::Approximate) j["evaluated_positions"] = r.evaluated[n].sum().item<int64_t>();
    write_json(dir.file(folder + "summary.json",
                        "image " + std::to_string(index) +
                            ": clean score and prediction, most important region, most likely "
                            "class per occluder position, candidate confounders"),
               j);
    return j;
}

nlohmann::json make_summary(const OcclusionResult& r, const OcclusionOptions& opts, nlohmann::json images,
                            double seconds) {
    nlohmann::json summary = {{"images", std::move(images)}, {"forwards", r.forwards},
                              {"seconds", seconds},          {"mode", occlusion_mode_name(opts.mode)},
                              {"engine", r.engine_note},     {"batch_size", r.batch_size}};
    if (opts.mode == OcclusionMode::Approximate) {
        summary["tau"] = r.tau;
        summary["coarse_step"] = r.coarse_step;
        summary["bf16"] = r.bf16;
        summary["corrected"] = r.corrected;
    }
    if (!r.ssim.empty()) {
        double mean = 0;
        for (double v : r.ssim) mean += v;
        summary["ssim_mean"] = mean / static_cast<double>(r.ssim.size());
    }
    return summary;
}

void print_summary(const nlohmann::json& summary, const OcclusionResult& r, const OcclusionOptions& opts,
                   const std::string& dir) {
    const nlohmann::json& all = summary["images"];
    std::cout << "occlusion: " << all.size() << " image(s), " << r.positions_y << "x" << r.positions_x
              << " positions, " << r.forwards << " occluded forwards in " << summary["seconds"].get<double>()
              << " s (" << occlusion_mode_name(opts.mode);
    if (opts.mode == OcclusionMode::Approximate)
        std::cout << ": tau " << r.tau << ", coarse step " << r.coarse_step << (r.bf16 ? ", bfloat16 changes" : "");
    std::cout << ")\n";
    for (const auto& j : all) {
        std::cout << "  image " << j["index"] << ": predicted " << j["predicted"] << ", target " << j["target"]
                  << ", max drop " << j["max_drop"] << ", " << j["confounders"].size()
                  << " candidate confounder position(s)";
        if (j.contains("ssim")) std::cout << ", SSIM vs exact " << j["ssim"];
        std::cout << "\n";
    }
    std::cout << "wrote " << dir << "\n";
}

RunFn setup(CLI::App& app) {
    auto o = std::make_shared<CommonOptions>();
    auto a = std::make_shared<Args>();
    add_model_options(app, *o);
    add_data_options(app, *o);
    add_out_option(app, *o, "occlusion-out");
    add_json_option(app, *o);
    add_options(app, *a);
    return [o, a]() {
        const OcclusionOptions opts = to_options(*a);  // usage errors before any work
        auto [model, data, indices, pre, images, labels] = open_selected_inputs(*o);
        OcclusionOptions run_opts = opts;
        run_opts.target.labels = labels;
        load_reference(run_opts.target, model, data, pre);

        const auto t0 = std::chrono::steady_clock::now();
        const OcclusionResult r = occlusion(model, images, run_opts, run_context(*o, "occlusion"));
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

        nlohmann::json options = {
            {"patch", {opts.patch_h, opts.patch_w}}, {"stride", {opts.stride_y, opts.stride_x}},
            {"baseline", baseline_name(opts.baseline)}, {"target", target_name(opts.target)},
            {"score", score_name(opts.target.score)}, {"region", region_name(opts.target.region)},
            {"output", model.output_name()},
            {"mode", occlusion_mode_name(opts.mode)}, {"occlude", opts.tokens ? "tokens" : "pixels"},
            {"batch_size", opts.batch_size}, {"data", data.spec()},
            {"indices", indices}};
        if (opts.mode == OcclusionMode::Approximate) {
            options["tau"] = opts.tau;  // as asked (0 = automatic); summary.json: what ran
            options["coarse_step"] = opts.coarse_step;
            options["refine_drop"] = opts.refine_drop;
            options["refine_error"] = opts.refine_error;
            options["bf16"] = opts.bf16;
            options["correct"] = opts.correct;
        }
        OutputDir dir = open_out(*o, options, &model);
        write_arrays(dir, r);
        const at::Tensor display = pre.to_display(images);
        const std::vector<std::string> names = detail::class_names_for(model, data);
        nlohmann::json all = nlohmann::json::array();
        for (int64_t n = 0; n < images.size(0); ++n)
            all.push_back(write_image(dir, r, n, indices[n], display, opts, data, names, score_name(opts.target.score)));
        write_segmentation_pictures(dir, model, run_opts.target, images, display, indices);
        write_similarity_pictures(
            dir, run_opts.target, pre, images, r.occlusion.select(1, 0), indices,
            [&](const at::Tensor& item) {
                OcclusionOptions swapped = run_opts;
                swapped.target.reference_input = item;
                return occlusion(model, run_opts.target.reference_input, swapped).occlusion[0][0];
            },
            [](const at::Tensor& display, const at::Tensor& map) {
                const int factor = readable_factor(static_cast<int>(map.size(0)), static_cast<int>(map.size(1)), 256);
                return overlay_map(upscale_nearest(image_from_hwc_uint8(display), factor), map, Colormap::Diverging,
                                   symmetric_range(map), 0.5f);
            });
        const nlohmann::json summary = make_summary(r, opts, std::move(all), seconds);
        write_json(dir.file("summary.json", "all images' summaries, forward passes, time, engine"), summary);
        dir.write_manifest();
        if (o->json) std::cout << json_text(summary, 2) << "\n";
        else print_summary(summary, r, opts, dir.dir());
        return 0;
    };
}

RegisterCommand reg({"occlusion", "occlusion sensitivity: map the score drop under a sliding patch, find confounders",
                     setup, 30});

}  // namespace
}  // namespace convscope::cli
