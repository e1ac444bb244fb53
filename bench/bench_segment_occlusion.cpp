// Occlusion with a region target on the built-in segmentation model: exact incremental inference
// against full batched recomputation, runs interleaved in this binary, medians of the per-run
// ratios; also checks that both give the same drops.
//
//   bench_segment_occlusion [--runs N (5)] [--images K (4)] [--patch P (8)] [--stride S (2)] [--threads T (2)]
//                           [--batch-size B (0: automatic)]
//   bench_segment_occlusion --save-inputs FILE.npy [--images K]
//
// --save-inputs writes the K scenes as model input [K,1,64,64] float32 and stops: the data the
// comparison with Captum (segment_occlusion_captum.py) runs both tools on.
// Model: load_segment_model() (trained on first use, `convscope train --arch segment`), 64x64
// scenes of Fashion-MNIST items ("fashion-mnist-scenes", the first K held-out scenes). Target
// `--target pred --region pred`: the mean logit of each scene's most frequent predicted class
// (the background, in these scenes) over the pixels predicted as it, fixed from the clean scene:
// the largest region, so the most output pixels rescored per copy.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

#include "convscope/methods/occlusion.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "bench_util.hpp"

using namespace convscope;
using convscope::bench::median;
using convscope::bench::seconds_of;

namespace {

// "--name value" pairs into the given integers; false (with a message) for anything else.
bool parse_args(int argc, char** argv, const std::vector<std::pair<std::string, int64_t*>>& options) {
    for (int i = 1; i < argc; i += 2) {
        bool known = false;
        for (const auto& [name, value] : options)
            if (argv[i] == name && i + 1 < argc) {
                *value = std::atoll(argv[i + 1]);
                known = true;
            }
        if (!known) {
            std::fprintf(stderr, "unknown option or missing value: %s\n", argv[i]);
            return false;
        }
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    // Passive OpenMP waiting, as bench_occlusion does (read when the runtime starts: re-exec).
    if (!std::getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        execv("/proc/self/exe", argv);
    }
    int64_t runs = 5, threads = 2, images = 4, patch = 8, stride = 2, batch = 0;
    std::string save_inputs;
    if (argc >= 3 && std::string(argv[1]) == "--save-inputs") {
        save_inputs = argv[2];
        argv[2] = argv[0];
        argc -= 2;
        argv += 2;
    }
    if (!parse_args(argc, argv, {{"--runs", &runs}, {"--images", &images}, {"--patch", &patch}, {"--stride", &stride},
                                 {"--threads", &threads}, {"--batch-size", &batch}}))
        return 2;
    at::set_num_threads(static_cast<int>(threads));
    std::string load;
    std::getline(std::ifstream("/proc/loadavg"), load);
    try {
        Model model = load_segment_model();
        Dataset data = Dataset::open("fashion-mnist-scenes");
        std::vector<int64_t> idx;
        for (int64_t i = 0; i < images; ++i) idx.push_back(i);
        const at::Tensor x = data.batch(idx, data.preprocess_for(model.input_shape(), model.meta().mean, model.meta().std));
        if (!save_inputs.empty()) {
            write_npy(save_inputs, x.contiguous());
            return 0;
        }
        OcclusionOptions o;
        o.patch_h = o.patch_w = patch;
        o.stride_y = o.stride_x = stride;
        o.batch_size = batch;
        o.target = parse_target("pred");
        o.target.region = parse_region("pred");
        OcclusionOptions full = o, inc = o;
        full.mode = OcclusionMode::Full;
        inc.mode = OcclusionMode::Incremental;
        const OcclusionResult rf = occlusion(model, x, full);  // warm-up and the results to compare
        const OcclusionResult ri = occlusion(model, x, inc);
        std::printf("bench_segment_occlusion: %lld threads, load average at start: %s\n", static_cast<long long>(threads),
                    load.c_str());
        std::printf("built-in segmentation model, 64x64 scenes, %lld images, patch %lld, stride %lld, %lldx%lld "
                    "positions, target pred over region pred\n",
                    static_cast<long long>(images), static_cast<long long>(patch), static_cast<long long>(stride),
                    static_cast<long long>(ri.positions_y), static_cast<long long>(ri.positions_x));
        std::printf("  engine: %s\n", ri.engine_note.c_str());
        std::vector<double> tf, ti, ratio;
        for (int64_t r = 0; r < runs; ++r) {
            const double f = seconds_of([&] { occlusion(model, x, full); });
            const double i = seconds_of([&] { occlusion(model, x, inc); });
            tf.push_back(f);
            ti.push_back(i);
            ratio.push_back(f / i);
            std::printf("  run %d: full %.3f s, incremental %.3f s (%.2fx)\n", static_cast<int>(r + 1), f, i, f / i);
            std::fflush(stdout);
        }
        const double scale = std::max(1e-12, rf.coarse.abs().max().item<double>());
        std::printf("  median of %lld runs: full %.3f s, incremental %.3f s; speedup (median of per-run ratios) %.2fx\n",
                    static_cast<long long>(runs), median(tf), median(ti), median(ratio));
        std::printf("  incremental vs full: max relative difference %.2e (coarse drops)\n",
                    (ri.coarse - rf.coarse).abs().max().item<double>() / scale);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_segment_occlusion: %s\n", e.what());
        return 1;
    }
    return 0;
}
