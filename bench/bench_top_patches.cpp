// Benchmark: the top-patches scan of Fashion-MNIST's test split (10,000 images) through the
// built-in model, all conv layers, k = 9, against plain batched inference (Model::forward) over
// the same batches from the same loader, in one run. Prints each repetition and the median ratio.
//
//   <build>/bench/bench_top_patches [repetitions=3] [batch_size=128] [threads=all]
//
// The built-in model is trained first if it is not cached (a few minutes).
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "bench_util.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/methods/top_patches.hpp"

using namespace convscope;

using convscope::bench::median;
using convscope::bench::seconds_since;

namespace {

}  // namespace

int main(int argc, char** argv) {
    const int reps = argc > 1 ? std::max(1, std::stoi(argv[1])) : 3;
    const int64_t batch_size = argc > 2 ? std::stoll(argv[2]) : 128;
    const int threads = argc > 3 ? std::stoi(argv[3]) : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    at::set_num_threads(threads);

    Model model = load_default_model(stderr_progress("training the built-in model"));
    Dataset data = Dataset::open("fashion-mnist:test");
    const Preprocess pre = data.preprocess_for(model.input_shape(), model.meta().mean, model.meta().std);
    const std::vector<int64_t> indices = parse_indices(":", data.size());

    TopPatchesOptions opts;  // all conv layers, k = 9, lowest too
    opts.k = 9;
    opts.batch_size = batch_size;
    const auto layers = model.conv_layer_names();

    // Warm-up: the profiling executor specialises both graphs on their first runs.
    {
        std::vector<int64_t> first(indices.begin(), indices.begin() + batch_size);
        const at::Tensor x = data.batch(first, pre);
        for (int i = 0; i < 3; ++i) {
            model.forward(x);
            model.forward_taps(x, layers);
        }
    }

    std::printf("top-patches scan vs plain inference: %lld images, %zu conv layers, k=9, batch %lld, %d threads\n",
                static_cast<long long>(indices.size()), layers.size(), static_cast<long long>(batch_size), threads);
    std::vector<double> ratios, plain_s, scan_s;
    for (int r = 0; r < reps; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        {
            BatchLoader loader(data, indices, batch_size, pre);
            Batch b;
            int64_t seen = 0;
            while (loader.next(b)) seen += model.forward(b.images).size(0);
            if (seen != static_cast<int64_t>(indices.size())) return 1;
        }
        const double plain = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        {
            BatchLoader loader(data, indices, batch_size, pre);
            Batch b;
            while (loader.next(b)) model.forward_taps(b.images, layers);
        }
        const double taps_only = seconds_since(t0);
        t0 = std::chrono::steady_clock::now();
        const TopPatchesResult result = top_patches(model, data, indices, pre, opts);
        const double scan = seconds_since(t0);
        if (result.images_scanned != static_cast<int64_t>(indices.size())) return 1;
        plain_s.push_back(plain);
        scan_s.push_back(scan);
        ratios.push_back(scan / plain);
        std::printf("  run %d: plain inference %.3f s, forward with taps only %.3f s, scan %.3f s, ratio %.3f\n", r + 1,
                    plain, taps_only, scan, scan / plain);
    }
    std::printf("median: plain inference %.3f s, scan %.3f s, ratio %.3f (target <= 1.15)\n", median(plain_s),
                median(scan_s), median(ratios));
    return 0;
}
