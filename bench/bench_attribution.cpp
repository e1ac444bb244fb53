// Attribution cost on ResNet-18 (224x224, one image), as ratios against a baseline measured in
// the same run:
//   - saliency and Grad-CAM through attribute() against one forward + one backward pass
//     (Model::gradients of the top logit); the target is at most 3x;
//   - integrated gradients (50 steps = 51 path points, run in batches) against the same 51
//     gradients taken one call at a time.
// Usage: bench_attribution MODEL.pt [--runs R] [--ig-runs R] [--threads T] [--batch-size B]
// (MODEL.pt: resnet18_scripted.pt from tests/fixtures/make_fixtures.py). Prints medians.
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "bench_util.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/model.hpp"

using namespace convscope;

using convscope::bench::median;
using convscope::bench::seconds_of;

using convscope::bench::interleaved;
using convscope::bench::median_ratio;

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr,
                     "usage: %s resnet18_scripted.pt [--runs R] [--ig-runs R] [--threads T] "
                     "[--batch-size B]\n",
                     argv[0]);
        return 2;
    }
    const std::string path = argv[1];
    int runs = 7, ig_runs = 3, threads = 2, batch_size = 16;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        const int v = std::atoi(argv[i + 1]);
        if (flag == "--runs")
            runs = v;
        else if (flag == "--ig-runs")
            ig_runs = v;
        else if (flag == "--threads")
            threads = v;
        else if (flag == "--batch-size")
            batch_size = v;
    }
    at::set_num_threads(threads);
    Model model = Model::load(path);
    model.set_input_shape({3, 224, 224});
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1);
    const at::Tensor x = torch::randn({1, 3, 224, 224}, gen, torch::kFloat);

    auto top_logit = [](const TapResult& r) { return std::get<0>(r.output.max(1)).sum(); };
    AttributionOptions sal;
    sal.method = AttributionMethod::Saliency;
    AttributionOptions cam;
    cam.method = AttributionMethod::GradCam;
    AttributionOptions campp;
    campp.method = AttributionMethod::GradCamPlusPlus;

    std::function<void()> fwd_bwd = [&] { (void)model.gradients(x, top_logit); };
    std::function<void()> saliency = [&] { (void)attribute(model, x, sal); };
    std::function<void()> grad_cam = [&] { (void)attribute(model, x, cam); };
    std::function<void()> grad_cam_pp = [&] { (void)attribute(model, x, campp); };
    // The profiling executor specialises graphs on their first runs: warm every path up.
    for (int i = 0; i < 3; ++i)
        for (auto* f : {&fwd_bwd, &saliency, &grad_cam, &grad_cam_pp}) (*f)();

    std::printf(
        "ResNet-18, 1x3x224x224, %d threads, %d interleaved rounds (median time; median of\n"
        "the per-round ratios against the baseline of the same round)\n",
        threads, runs);
    const auto t = interleaved({fwd_bwd, saliency, grad_cam, grad_cam_pp}, runs);
    const char* names[] = {"forward + backward (Model::gradients, top logit)",
                           "saliency   (attribute)", "grad-cam   (attribute, last conv layer)",
                           "grad-cam++ (attribute, last conv layer)"};
    std::printf("%-50s %8.1f ms\n", names[0], 1e3 * median(t[0]));
    for (size_t i = 1; i < t.size(); ++i)
        std::printf("%-50s %8.1f ms  ratio %.2fx\n", names[i], 1e3 * median(t[i]),
                    median_ratio(t[i], t[0]));

    // Integrated gradients: 50 steps -> 51 path points, batched, against 51 separate calls.
    AttributionOptions ig;
    ig.method = AttributionMethod::IntegratedGradients;
    ig.steps = 50;
    ig.batch_size = batch_size;
    ig.target.kind = Target::Kind::Class;
    ig.target.class_index = 0;
    const at::Tensor alphas = torch::arange(51, torch::kFloat) / 50.0;
    const at::Tensor path_points = alphas.view({-1, 1, 1, 1}) * x;  // zero baseline
    auto class0 = [](const TapResult& r) { return r.output.select(1, 0).sum(); };
    std::function<void()> ig_batched = [&] { (void)attribute(model, x, ig); };
    std::function<void()> ig_separate = [&] {
        for (int64_t k = 0; k < 51; ++k)
            (void)model.gradients(path_points.slice(0, k, k + 1), class0);
    };
    ig_batched();
    for (int64_t k = 0; k < 3; ++k) (void)model.gradients(path_points.slice(0, k, k + 1), class0);
    const auto ti = interleaved({ig_separate, ig_batched}, ig_runs);
    std::printf("integrated gradients, 50 steps (51 points), %d interleaved rounds:\n", ig_runs);
    std::printf("  %-48s %8.1f ms\n", "51 separate gradient calls", 1e3 * median(ti[0]));
    std::printf("  attribute(), batches of %2d rows %17s %8.1f ms  speed-up %.2fx\n", batch_size,
                "", 1e3 * median(ti[1]), median_ratio(ti[0], ti[1]));
    return 0;
}
