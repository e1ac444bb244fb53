// Transformer explanations on ViT-B/16 (224x224, one image), as ratios against a baseline
// measured in the same run (interleaved rounds, medians):
//   - the attention probabilities of all 12 layers and their rollout against one plain forward
//     pass (target: at most 1.3x): the model's own TorchScript forward (PyTorch's fused attention,
//     need_weights=False) and convscope's forward (attention made explicit);
//   - gradient-weighted rollout (attribute --method attention-gradient) against one forward +
//     backward pass of the top logit to the input (Model::gradients; target: at most 1.5x);
//   - Grad-CAM on the last block's norm against the same forward + backward pass.
// Usage: bench_attention vit_b_16_scripted.pt [--runs R] [--threads T]
// (the model: bench/make_vit_models.py). Prints medians and ratios.
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "bench_util.hpp"
#include "convscope/methods/attention.hpp"
#include "convscope/methods/attribution.hpp"
#include "convscope/runtime/model.hpp"

using namespace convscope;
using convscope::bench::interleaved;
using convscope::bench::median;
using convscope::bench::median_ratio;

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s vit_b_16_scripted.pt [--runs R] [--threads T]\n", argv[0]);
        return 2;
    }
    int runs = 7, threads = 2;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string flag = argv[i];
        if (flag == "--runs") runs = std::atoi(argv[i + 1]);
        else if (flag == "--threads") threads = std::atoi(argv[i + 1]);
    }
    at::set_num_threads(threads);
    Model model = Model::load(argv[1]);
    model.set_input_shape({3, 224, 224});
    torch::manual_seed(0);
    const at::Tensor x = torch::randn({1, 3, 224, 224});
    const auto layers = rollout_layers(model);
    auto forward = [&] { (void)model.forward(x); };
    auto own_forward = [&] {
        c10::InferenceMode guard;
        (void)model.module().forward({x});
    };
    auto maps_and_rollout = [&] {
        AttentionOptions o;
        o.layers = layers;
        const auto r = attention(model, x, o);
        std::vector<at::Tensor> probs;
        for (const auto& l : r.layers) probs.push_back(l.probs);
        (void)attention_rollout(probs, r.layers.back().layout, {});
    };
    auto forward_backward = [&] {
        (void)model.gradients(x, [](const TapResult& t) { return std::get<0>(t.output.max(1)).sum(); });
    };
    auto gradient_rollout = [&] {
        AttributionOptions o;
        o.method = AttributionMethod::AttentionGradient;
        (void)attribute(model, x, o);
    };
    auto gradcam = [&] {
        AttributionOptions o;
        o.method = AttributionMethod::GradCam;
        (void)attribute(model, x, o);
    };
    for (int w = 0; w < 2; ++w) {  // the profiling executor specialises on the first runs
        forward();
        own_forward();
        maps_and_rollout();
        forward_backward();
        gradient_rollout();
        gradcam();
    }
    const auto t =
        interleaved({forward, maps_and_rollout, forward_backward, gradient_rollout, gradcam, own_forward}, runs);
    std::printf("ViT-B/16, 1 image 224x224, %d threads, %d rounds (median seconds)\n", threads, runs);
    std::printf("  forward, the model's own    %.3f\n", median(t[5]));
    std::printf("  forward, convscope          %.3f  ratio %.2fx\n", median(t[0]), median_ratio(t[0], t[5]));
    std::printf("  attention maps + rollout    %.3f  ratio %.2fx to the model's own forward (target <= 1.3x), "
                "%.2fx to convscope's\n",
                median(t[1]), median_ratio(t[1], t[5]), median_ratio(t[1], t[0]));
    std::printf("  forward + backward          %.3f\n", median(t[2]));
    std::printf("  gradient-weighted rollout   %.3f  ratio %.2fx (target <= 1.5x)\n", median(t[3]),
                median_ratio(t[3], t[2]));
    std::printf("  grad-cam (last block norm)  %.3f  ratio %.2fx\n", median(t[4]), median_ratio(t[4], t[2]));
    return 0;
}
