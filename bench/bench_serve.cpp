// Server time of one live update of `convscope serve`: what the HTTP handler runs for a request
// (decode the drawing or upload, preprocess, one forward pass with taps of the shown layers,
// quantise, JSON), timed directly without sockets. Baseline in the same run: a plain forward
// pass of the same input, the least any update can cost.
//
//   cmake --build build --target bench_serve && ./build/bench/bench_serve build/fixtures
//
// Cases: the default model (the cached one if present, else one trained briefly here; the
// timing does not depend on the weights) with a 28x28 drawing, all 18 layers; and ResNet-18
// (fixture resnet18_scripted.pt) with a 224x224 JPEG upload, its top-level layers (what the page
// shows first) and all its layers; with a second argument (bench/make_vit_models.py's
// vit_b_16_scripted.pt) ViT-B/16 with a 224x224 upload and the layers the page shows first.
// Median of 30 updates after 5 warm-up ones; 2 threads.
#include <ATen/Parallel.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>

#include "bench_util.hpp"
#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/app/explorer.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "convscope/runtime/base64.hpp"

using namespace convscope;
using Clock = std::chrono::steady_clock;

using convscope::bench::median;
using convscope::bench::seconds_since;

namespace {

template <class F>
double median_ms(F f, int warmup = 5, int runs = 30) {
    for (int i = 0; i < warmup; ++i) f();
    std::vector<double> t;
    for (int i = 0; i < runs; ++i) {
        const auto t0 = Clock::now();
        f();
        t.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }
    return median(t);
}

void report(const char* name, double update_ms, double forward_ms, size_t bytes, double target_ms) {
    std::printf("%-44s update %7.2f ms  forward %7.2f ms  ratio %5.2f  reply %7.1f KiB  target %s %.0f ms\n", name,
                update_ms, forward_ms, update_ms / forward_ms, double(bytes) / 1024.0,
                update_ms <= target_ms ? "<=" : "MISSED", target_ms);
}

}  // namespace

int main(int argc, char** argv) {
    const std::string fixtures = argc > 1 ? argv[1] : "build/fixtures";
    at::set_num_threads(2);
    torch::NoGradGuard no_grad;
    std::printf("bench_serve: %d intra-op threads\n", at::get_num_threads());

    // --- the default model, a drawing ---
    {
        std::string path = default_model_path();
        const std::string tmp = (std::filesystem::temp_directory_path() / "bench-serve-default.pt").string();
        if (!std::filesystem::exists(path)) {
            TrainOptions t;
            t.epochs = 1;
            t.train_limit = 512;
            t.test_limit = 100;
            train_default_model(tmp, t);
            path = tmp;
            std::printf("(default model: briefly trained architecture copy; timings do not depend on weights)\n");
        }
        ExplorerOptions eo;
        eo.cache_dir = std::filesystem::temp_directory_path().string();
        eo.workers = 1;
        Explorer ex(Model::load(path), Dataset::open("fashion-mnist:test"), eo);
        const nlohmann::json info = ex.model_info();
        LiveOptions lo;
        for (const auto& n : info["default_layers"]) lo.layers.push_back(n);
        // The browser sends the drawing as base64 gray bytes in JSON.
        const at::Tensor raw = (ex.data().raw(0)[0] * 255).round().to(torch::kUInt8).contiguous();
        std::string gray(reinterpret_cast<const char*>(raw.data_ptr<uint8_t>()), 784);
        const std::string body =
            nlohmann::json{{"gray", convscope::detail::base64_encode(gray)}, {"width", 28}, {"height", 28}}.dump();
        size_t bytes = 0;
        int k = 0;
        const double update = median_ms([&] {
            const auto j = nlohmann::json::parse(body);
            std::string px = convscope::detail::base64_decode(j["gray"].get<std::string>());
            px[size_t(k++ % 784)] ^= 0x55;  // a new stroke each time: no cache can help
            const std::string id = ex.add_gray_image(px, 28, 28);
            bytes = ex.activations(id, lo).dump().size();
        });
        const at::Tensor x = ex.image_input("d0");
        const double forward = median_ms([&] { (void)ex.model().forward(x); });
        std::printf("default model: %zu layers shown\n", lo.layers.size());
        report("default model, 28x28 drawing, all layers", update, forward, bytes, 50);
    }

    // --- ViT-B/16, a 224x224 upload (optional) ---
    if (argc > 2) {
        Model model = Model::load(argv[2]);
        model.set_input_shape({3, 224, 224});
        ExplorerOptions eo;
        eo.cache_dir = std::filesystem::temp_directory_path().string();
        eo.workers = 1;
        Explorer ex(std::move(model), Dataset::open("fashion-mnist:test"), eo);
        const nlohmann::json info = ex.model_info();
        cv::Mat img(224, 224, CV_8UC3);
        cv::randu(img, cv::Scalar::all(0), cv::Scalar::all(255));
        cv::GaussianBlur(img, img, cv::Size(9, 9), 3);
        std::vector<uint8_t> jpg;
        cv::imencode(".jpg", img, jpg);
        std::string upload(jpg.begin(), jpg.end());
        const at::Tensor x = ex.image_input(ex.add_encoded_image(upload));
        const double forward = median_ms([&] {
            c10::InferenceMode guard;
            (void)ex.model().module().forward({x});
        }, 3, 15);
        LiveOptions lo;
        for (const auto& n : info["default_layers"]) lo.layers.push_back(n);
        size_t bytes = 0;
        int k = 0;
        const double update = median_ms([&] {
            upload[upload.size() / 2 + size_t(k++ % 64)] ^= 0x01;
            std::string id;
            try {
                id = ex.add_encoded_image(upload);
            } catch (const Error&) {
                upload[upload.size() / 2 + size_t((k - 1) % 64)] ^= 0x01;
                id = ex.add_encoded_image(upload);
            }
            bytes = ex.activations(id, lo).dump().size();
        }, 3, 15);
        std::printf("vit_b_16: %zu layers shown; forward = the model's own TorchScript\n", lo.layers.size());
        report("vit_b_16 224x224 upload, top-level layers", update, forward, bytes, 300);
    }

    // --- ResNet-18, a 224x224 upload ---
    {
        const std::string path = fixtures + "/resnet18_scripted.pt";
        if (!std::filesystem::exists(path)) {
            std::printf("resnet18: %s missing (make the fixtures first)\n", path.c_str());
            return 0;
        }
        Model model = Model::load(path);
        model.set_input_shape({3, 224, 224});
        ExplorerOptions eo;
        eo.cache_dir = std::filesystem::temp_directory_path().string();
        eo.workers = 1;
        Explorer ex(std::move(model), Dataset::open("fashion-mnist:test"), eo);
        const nlohmann::json info = ex.model_info();
        cv::Mat img(224, 224, CV_8UC3);
        cv::randu(img, cv::Scalar::all(0), cv::Scalar::all(255));
        cv::GaussianBlur(img, img, cv::Size(9, 9), 3);
        std::vector<uint8_t> jpg;
        cv::imencode(".jpg", img, jpg);
        std::string upload(jpg.begin(), jpg.end());
        const at::Tensor x = ex.image_input(ex.add_encoded_image(upload));
        const double forward = median_ms([&] { (void)ex.model().forward(x); }, 3, 15);
        for (int all = 0; all < 2; ++all) {
            LiveOptions lo;
            if (!all)
                for (const auto& n : info["default_layers"]) lo.layers.push_back(n);
            size_t bytes = 0;
            int k = 0;
            const double update = median_ms([&] {
                upload[upload.size() / 2 + size_t(k++ % 64)] ^= 0x01;  // new bytes each time
                std::string id;
                try {
                    id = ex.add_encoded_image(upload);
                } catch (const Error&) {
                    upload[upload.size() / 2 + size_t((k - 1) % 64)] ^= 0x01;
                    id = ex.add_encoded_image(upload);
                }
                bytes = ex.activations(id, lo).dump().size();
            }, 3, 15);
            const std::string name = all ? "resnet18 224x224 upload, all layers" : "resnet18 224x224 upload, top-level layers";
            std::printf("resnet18: %zu layers shown\n", all ? info["layers"].size() : lo.layers.size());
            report(name.c_str(), update, forward, bytes, 300);
        }
    }
    return 0;
}
