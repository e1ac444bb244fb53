// Occlusion speed: exact incremental inference and the approximate mode against full batched
// recomputation, all in this binary, runs interleaved, medians of several runs. Also checks that
// incremental equals full and reports the approximate map's SSIM against the exact one.
//
//   bench_occlusion [--runs N (11)] [--resnet-runs M (3)] [--trained-runs R (3)] [--images K (16)] [--fixtures DIR]
//                   [--threads T] [--tau X] [--coarse-step S] [--batch-size B]
//                   [--refine-error E] [--refine-drop D] [--approximate-only]
//
// Cases: the built-in Fashion-MNIST model (load_default_model(); trained on first use), 28x28,
// patch 4, stride 1, on the first K test images; and torchvision's ResNet-18
// (DIR/resnet18_scripted.pt from tests/fixtures/make_fixtures.py, random weights), 224x224,
// patch 16, stride 8, on a synthetic scene (synthetic_scene() below).
//
// Third case, when DIR/resnet18_fashion.pt exists: the same architecture with trained weights
// (`/usr/bin/python3 bench/train_resnet18.py DIR`: torchvision's ResNet-18 trained briefly on
// Fashion-MNIST upscaled to 224x224, since pretrained ImageNet weights need a download), on its
// first test image (DIR/resnet18_fashion_input.npy), 224x224, patch 16, stride 8.
//
// Why a synthetic scene for ResNet-18: the fixture's own input (DIR/resnet18_scripted/input.npy)
// is Gaussian noise, and the occlusion map of a noise image is itself noise: there is no
// structure for an approximation to keep, so an SSIM measured on it says nothing about the
// approximate mode. The scene is deterministic (no random numbers) and looks like a photo's
// content to the network's filters: smooth colour gradients as background, an object (a shaded
// ellipse with a darker stripe), a rectangle, a disc and a thin bar, in [0,1] RGB, normalised
// with the ImageNet mean and standard deviation as torchvision's models expect. The speed ratios
// do not depend on the content (the same positions run in every mode, except for the
// approximate mode's drill-down, which is the point of measuring it on structured content).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <unistd.h>
#include <string>
#include <vector>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/occlusion.hpp"

using namespace convscope;

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    if (n == 0) return 0;
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double seconds_of(const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double max_rel_diff(const at::Tensor& a, const at::Tensor& b) {
    const double scale = std::max(1e-12, b.abs().max().item<double>());
    return (a - b).abs().max().item<double>() / scale;
}

// A deterministic 224x224 RGB scene, ImageNet-normalised: [1,3,224,224] float32.
at::Tensor synthetic_scene(int64_t size = 224) {
    auto t = torch::arange(size, torch::kFloat) / static_cast<float>(size - 1);
    const at::Tensor yy = t.view({size, 1}).expand({size, size});
    const at::Tensor xx = t.view({1, size}).expand({size, size});
    // Background: smooth gradients (sky-like top, ground-like bottom).
    at::Tensor r = 0.25 + 0.35 * xx + 0.10 * torch::sin(6.0 * yy);
    at::Tensor g = 0.45 + 0.25 * yy - 0.10 * xx;
    at::Tensor b = 0.75 - 0.45 * yy + 0.05 * torch::cos(5.0 * xx);
    auto paint = [&](const at::Tensor& mask, const at::Tensor& cr, const at::Tensor& cg, const at::Tensor& cb) {
        r = torch::where(mask, cr, r);
        g = torch::where(mask, cg, g);
        b = torch::where(mask, cb, b);
    };
    auto flat = [&](double v) { return torch::full({size, size}, v); };
    // The object: a shaded ellipse (lit from the top left) with a darker stripe across it.
    const at::Tensor ey = (yy - 0.48) / 0.22, ex = (xx - 0.55) / 0.30;
    const at::Tensor e2 = ey * ey + ex * ex;
    const at::Tensor shade = 1.0 - 0.35 * (ey + ex + 2.0) / 4.0;
    paint(e2 < 1.0, 0.90 * shade, 0.55 * shade, 0.15 * shade);
    paint((e2 < 1.0) & ((yy - 0.62 + 0.3 * (xx - 0.55)).abs() < 0.035), flat(0.35), flat(0.15), flat(0.10));
    // A rectangle, a disc and a thin bar.
    paint((yy > 0.08) & (yy < 0.30) & (xx > 0.06) & (xx < 0.28), flat(0.15), flat(0.55), flat(0.25));
    const at::Tensor dy = yy - 0.82, dx = xx - 0.18;
    paint(dy * dy + dx * dx < 0.01, flat(0.95), flat(0.90), flat(0.30));
    paint((yy > 0.86) & (yy < 0.90) & (xx > 0.45) & (xx < 0.95), flat(0.05), flat(0.05), flat(0.10));
    at::Tensor img = torch::stack({r, g, b}).clamp(0.0, 1.0);
    const at::Tensor mean = torch::tensor({0.485f, 0.456f, 0.406f}).view({3, 1, 1});
    const at::Tensor sd = torch::tensor({0.229f, 0.224f, 0.225f}).view({3, 1, 1});
    return ((img - mean) / sd).unsqueeze(0).contiguous();
}

// Approximate-mode options from the command line (negative: the library's default).
double opt_tau = -1;
int64_t opt_coarse_step = -1;
int64_t opt_batch = -1;
double opt_refine_error = -1;
double opt_refine_drop = -1;
bool opt_approximate_only = false;  // time the approximate mode alone (for profiling it)

void run_case(const std::string& title, const Model& model, const at::Tensor& images, int64_t patch,
              int64_t stride, int runs) {
    OcclusionOptions o;
    if (opt_tau > 0) o.tau = opt_tau;
    if (opt_coarse_step > 0) o.coarse_step = opt_coarse_step;
    if (opt_batch > 0) o.batch_size = opt_batch;
    if (opt_refine_error >= 0) o.refine_error = opt_refine_error;
    if (opt_refine_drop >= 0) o.refine_drop = opt_refine_drop;
    o.patch_h = o.patch_w = patch;
    o.stride_y = o.stride_x = stride;
    OcclusionOptions full = o, inc = o, approx = o;
    full.mode = OcclusionMode::Full;
    inc.mode = OcclusionMode::Incremental;
    approx.mode = OcclusionMode::Approximate;

    // Warm-up (the TorchScript executor specializes on its first runs) and the results to compare.
    const OcclusionResult rf = occlusion(model, images, full);
    const OcclusionResult ri = occlusion(model, images, inc);
    const OcclusionResult ra = occlusion(model, images, approx);
    std::vector<double> tf, ti, ta, ratio_i, ratio_a;
    for (int r = 0; r < runs; ++r) {
        if (opt_approximate_only) {
            const double a = seconds_of([&] { occlusion(model, images, approx); });
            std::printf("  run %d: approximate %.3f s\n", r + 1, a);
            continue;
        }
        const double f = seconds_of([&] { occlusion(model, images, full); });
        const double i = seconds_of([&] { occlusion(model, images, inc); });
        const double a = seconds_of([&] { occlusion(model, images, approx); });
        tf.push_back(f);
        ti.push_back(i);
        ta.push_back(a);
        ratio_i.push_back(f / i);
        ratio_a.push_back(f / a);
        std::printf("  run %d: full %.3f s, incremental %.3f s (%.2fx), approximate %.3f s (%.2fx)\n", r + 1,
                    f, i, f / i, a, f / a);
        std::fflush(stdout);
    }
    double ssim = 0, ssim_coarse = 0, ssim_min = 1;
    const int64_t N = images.size(0);
    for (int64_t n = 0; n < N; ++n) {
        const double s = map_ssim(ra.occlusion[n][0], ri.occlusion[n][0]);
        ssim += s;
        ssim_min = std::min(ssim_min, s);
        ssim_coarse += map_ssim(ra.coarse[n], ri.coarse[n]);
    }
    ssim /= static_cast<double>(N);
    ssim_coarse /= static_cast<double>(N);
    const int64_t positions = N * ri.positions_y * ri.positions_x;
    std::printf("%s\n", title.c_str());
    std::printf("  images %lld, positions %lldx%lld per image, %lld occluded forwards (approximate: %lld)\n",
                static_cast<long long>(N), static_cast<long long>(ri.positions_y),
                static_cast<long long>(ri.positions_x), static_cast<long long>(positions),
                static_cast<long long>(ra.forwards));
    std::printf("  engine: %s\n", ri.engine_note.c_str());
    std::printf("  median of %d runs: full %.3f s, incremental %.3f s, approximate %.3f s\n", runs, median(tf),
                median(ti), median(ta));
    std::printf("  speedup (median of per-run ratios): exact incremental %.2fx, approximate %.2fx\n",
                median(ratio_i), median(ratio_a));
    std::printf("  incremental vs full: max relative difference %.2e (coarse), %.2e (map)\n",
                max_rel_diff(ri.coarse, rf.coarse), max_rel_diff(ri.occlusion, rf.occlusion));
    std::printf("  approximate vs exact: SSIM %.4f (map; lowest image %.4f), %.4f (coarse drops); tau %.2f, "
                "coarse step %lld\n",
                ssim, ssim_min, ssim_coarse, ra.tau, static_cast<long long>(ra.coarse_step));
    std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
    // On a shared, oversubscribed machine OpenMP threads that spin while they wait compete with
    // the threads doing the work, and the figures measure the scheduler more than the code. Wait
    // passively unless the caller chose otherwise; the OpenMP runtime reads the variable when it
    // starts, hence the re-exec.
    if (!std::getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
        execv("/proc/self/exe", argv);
    }
    int runs = 11, resnet_runs = 3, trained_runs = 3, threads = 2;
    int64_t images = 16;
    std::string fixtures =
        (std::filesystem::path(argv[0]).parent_path() / ".." / "fixtures").lexically_normal().string();
    for (int i = 1; i < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--approximate-only") {
            opt_approximate_only = true;
            --i;
            continue;
        }
        if (i + 1 >= argc) {
            std::fprintf(stderr, "option %s needs a value\n", a.c_str());
            return 2;
        }
        if (a == "--runs") runs = std::atoi(argv[i + 1]);
        else if (a == "--resnet-runs") resnet_runs = std::atoi(argv[i + 1]);
        else if (a == "--trained-runs") trained_runs = std::atoi(argv[i + 1]);
        else if (a == "--images") images = std::atoll(argv[i + 1]);
        else if (a == "--fixtures") fixtures = argv[i + 1];
        else if (a == "--threads") threads = std::atoi(argv[i + 1]);
        else if (a == "--tau") opt_tau = std::atof(argv[i + 1]);
        else if (a == "--coarse-step") opt_coarse_step = std::atoll(argv[i + 1]);
        else if (a == "--batch-size") opt_batch = std::atoll(argv[i + 1]);
        else if (a == "--refine-error") opt_refine_error = std::atof(argv[i + 1]);
        else if (a == "--refine-drop") opt_refine_drop = std::atof(argv[i + 1]);
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    at::set_num_threads(threads);
    std::string load;
    std::getline(std::ifstream("/proc/loadavg"), load);
    const std::string batch = opt_batch > 0 ? std::to_string(opt_batch) + " occluded copies per forward"
                                            : "automatic (full 128; incremental and approximate 512 on the default model, 128 on ResNet-18)";
    std::printf("bench_occlusion: %d threads (OMP_WAIT_POLICY=%s), batch %s, load average at start: %s\n", threads,
                std::getenv("OMP_WAIT_POLICY"), batch.c_str(), load.c_str());
    try {
        if (runs > 0) {
            Model model = load_default_model();
            Dataset data = Dataset::open("fashion-mnist:test");
            std::vector<int64_t> idx;
            for (int64_t i = 0; i < images; ++i) idx.push_back(i);
            const at::Tensor x =
                data.batch(idx, data.preprocess_for(model.input_shape(), model.meta().mean, model.meta().std));
            run_case("default model (Fashion-MNIST CNN), 28x28, patch 4, stride 1", model, x, 4, 1, runs);
        }
        if (resnet_runs > 0) {
            Model model = Model::load(fixtures + "/resnet18_scripted.pt");
            model.set_input_shape({3, 224, 224});
            const at::Tensor x = synthetic_scene(224);
            run_case("torchvision ResNet-18 (scripted, random weights), 224x224, patch 16, stride 8, "
                     "synthetic scene",
                     model, x, 16, 8, resnet_runs);
        }
        const std::string trained = fixtures + "/resnet18_fashion.pt";
        if (trained_runs > 0 && std::filesystem::exists(trained)) {
            Model model = Model::load(trained);
            model.set_input_shape({3, 224, 224});
            const at::Tensor x = read_npy(fixtures + "/resnet18_fashion_input.npy").slice(0, 0, 1).contiguous();
            run_case("torchvision ResNet-18 (scripted, trained on Fashion-MNIST at 224x224), 224x224, "
                     "patch 16, stride 8, first test image",
                     model, x, 16, 8, trained_runs);
        } else if (trained_runs > 0) {
            std::printf("(no %s: make it with /usr/bin/python3 bench/train_resnet18.py %s)\n", trained.c_str(),
                        fixtures.c_str());
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_occlusion: %s\n", e.what());
        return 1;
    }
    return 0;
}
