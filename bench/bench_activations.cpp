// Benchmark: activations() end to end (one forward with taps at every layer, statistics, tile
// grids, bar strips, overlays) plus the PNG writing the CLI does, against a plain forward of the
// same model and input in the same run.
//
//   bench_activations [model.pt] [threads] [repetitions] [image]
//   defaults: fixtures/resnet18_scripted.pt beside the bench folder, 2 threads, 7 repetitions,
//   uniform noise in [0,1] as the image (the worst case for PNG compression); an image file is
//   resized and centre-cropped to 224x224 as `convscope activations --image` does.
//
// Prints the median seconds of: plain forward, forward with taps at all layers, activations()
// (pictures included), PNG writing (write_pngs, as `convscope activations`), and the total.
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <time.h>
#include <unistd.h>

#include "bench_util.hpp"
#include "convscope/methods/activations.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"

using namespace convscope;
namespace fs = std::filesystem;

using convscope::bench::median;
using convscope::bench::seconds_since;

namespace {

// CPU seconds of the whole process (all threads): robust against other load on a shared machine.
double cpu_now() {
    timespec ts{};
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

}  // namespace

int main(int argc, char** argv) {
    const fs::path exe_dir = fs::absolute(argv[0]).parent_path();
    const std::string model_path = argc > 1 ? argv[1] : (exe_dir.parent_path() / "fixtures" / "resnet18_scripted.pt").string();
    const int threads = argc > 2 ? std::stoi(argv[2]) : 2;
    const int reps = argc > 3 ? std::stoi(argv[3]) : 7;
    at::set_num_threads(threads);

    Model model = Model::load(model_path);
    model.set_input_shape({3, 224, 224});
    ActivationsOptions opts;  // all layers, viridis, layer scale, overlays on
    at::Tensor x;
    if (argc > 4) {
        const Dataset data = Dataset::open(argv[4]);
        opts.preprocess = data.preprocess_for({3, 224, 224}, {}, {});
        x = data.batch({0}, opts.preprocess);
    } else {
        torch::manual_seed(0);
        x = torch::rand({1, 3, 224, 224});
    }
    std::vector<std::string> all;
    for (const auto& l : model.layers()) all.push_back(l.name);
    const fs::path out = fs::temp_directory_path() / ("convscope-bench-activations-" + std::to_string(::getpid()));

    // Warm up: the profiling executor specialises the graphs on their first runs.
    for (int i = 0; i < 3; ++i) {
        model.forward(x);
        model.forward_taps(x, all);
    }
    (void)activations(model, x, opts);

    std::vector<double> t_forward, t_taps, t_act, t_png, t_total;
    std::vector<double> c_forward, c_act, c_png;
    size_t pictures = 0, layers = 0;
    double megapixels = 0;
    for (int rep = 0; rep < reps; ++rep) {
        double c0 = cpu_now();
        auto t0 = std::chrono::steady_clock::now();
        model.forward(x);
        t_forward.push_back(seconds_since(t0));
        c_forward.push_back(cpu_now() - c0);

        t0 = std::chrono::steady_clock::now();
        model.forward_taps(x, all);
        t_taps.push_back(seconds_since(t0));

        c0 = cpu_now();
        t0 = std::chrono::steady_clock::now();
        const ActivationsResult r = activations(model, x, opts);
        const double act = seconds_since(t0);
        t_act.push_back(act);
        c_act.push_back(cpu_now() - c0);

        // Write what the CLI writes as pictures: one PNG per layer and input, plus overlays.
        c0 = cpu_now();
        t0 = std::chrono::steady_clock::now();
        fs::remove_all(out);
        std::vector<std::pair<std::string, cv::Mat>> files;
        megapixels = 0;
        for (const auto& la : r.layers) {
            fs::create_directories(out / la.name);
            files.emplace_back((out / la.name / "0.png").string(), la.pictures[0]);
            megapixels += la.pictures[0].total() / 1e6;
            if (!la.overlays.empty()) {
                files.emplace_back((out / la.name / "0_overlay.png").string(), la.overlays[0]);
                megapixels += la.overlays[0].total() / 1e6;
            }
        }
        write_pngs(files);
        const double png = seconds_since(t0);
        t_png.push_back(png);
        c_png.push_back(cpu_now() - c0);
        t_total.push_back(act + png);
        pictures = files.size();
        layers = r.layers.size();
    }
    fs::remove_all(out);

    const double fwd = median(t_forward), total = median(t_total);
    std::cout << std::fixed << std::setprecision(3);
    std::cout << "model " << model_path << ", input 1x3x224x224 (" << (argc > 4 ? argv[4] : "noise") << "), " << layers << " layers, " << pictures
              << " pictures (" << std::setprecision(1) << megapixels << " MP), " << threads << " threads, median of "
              << reps << "\n"
              << std::setprecision(3);
    std::cout << "                         wall       cpu (all threads)\n";
    std::cout << "plain forward            " << fwd << " s    " << median(c_forward) << " s\n";
    std::cout << "forward with all taps    " << median(t_taps) << " s\n";
    std::cout << "activations()            " << median(t_act) << " s    " << median(c_act) << " s\n";
    std::cout << "PNG writing              " << median(t_png) << " s    " << median(c_png) << " s\n";
    std::cout << "activations() + PNGs     " << total << " s  (" << std::setprecision(1) << total / fwd
              << "x the plain forward)\n";
    return 0;
}
