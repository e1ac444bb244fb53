// The built-in segmentation model: synthetic scenes of Fashion-MNIST items, a small fully
// convolutional network with a skip connection, trained with Adam and a cosine decay like the
// classifier (default_model.cpp), evaluated by mean IoU on held-out scenes.
#include <torch/script.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "runtime/detail/builtin_layers.hpp"

namespace convscope {

namespace jit = torch::jit;

namespace {

constexpr int64_t kCanvas = 64, kItem = 28, kClasses = 11;
constexpr float kInk = 0.1f;  // an item's pixels above this belong to it

jit::Module build_segment_module() {
    using namespace detail;
    auto cu = std::make_shared<jit::CompilationUnit>();
    auto net = make_module(cu, "SceneSegmenter");
    auto block = [&](int i, int64_t in, int64_t out, int64_t dilation) {
        net.register_module("conv" + std::to_string(i), conv2d(cu, in, out, 3, dilation));
        net.register_module("bn" + std::to_string(i), batch_norm(cu, out));
        net.register_module("relu" + std::to_string(i), relu(cu));
    };
    block(1, 1, 16, 1);
    net.register_module("pool1", max_pool(cu));
    block(2, 16, 32, 1);
    block(3, 32, 32, 1);
    net.register_module("pool2", max_pool(cu));
    block(4, 32, 64, 1);
    block(5, 64, 64, 1);
    net.register_module("pool3", max_pool(cu));
    block(6, 64, 64, 1);
    block(7, 64, 64, 2);
    net.register_module("head", conv2d(cu, 64, kClasses, 1));
    net.register_module("skip", conv2d(cu, 32, kClasses, 1));
    net.define(R"JIT(
def forward(self, x):
    x = self.pool1.forward(self.relu1.forward(self.bn1.forward(self.conv1.forward(x))))
    x = self.relu2.forward(self.bn2.forward(self.conv2.forward(x)))
    a = self.relu3.forward(self.bn3.forward(self.conv3.forward(x)))
    x = self.relu4.forward(self.bn4.forward(self.conv4.forward(self.pool2.forward(a))))
    x = self.pool3.forward(self.relu5.forward(self.bn5.forward(self.conv5.forward(x))))
    x = self.relu6.forward(self.bn6.forward(self.conv6.forward(x)))
    x = self.relu7.forward(self.bn7.forward(self.conv7.forward(x)))
    y = torch.upsample_bilinear2d(self.head.forward(x), None, False, [4.0, 4.0]) + self.skip.forward(a)
    return torch.upsample_bilinear2d(y, None, False, [2.0, 2.0])
)JIT");
    return net;
}

ModelMeta segment_meta(const std::string& source) {
    ModelMeta meta;
    meta.input_shape = {1, kCanvas, kCanvas};
    meta.mean = {kFashionMean};
    meta.std = {kFashionStd};
    meta.class_names = {"background"};
    for (const auto& c : fashion_mnist_classes()) meta.class_names.push_back(c);
    meta.dataset = "fashion-mnist-scenes";
    meta.source = meta.classes_source = source;
    return meta;
}

// Mean over the classes present in either of the intersection over union; and the pixel accuracy.
std::pair<double, double> mean_iou(const at::Tensor& pred, const at::Tensor& truth) {
    double sum = 0;
    int used = 0;
    for (int64_t c = 0; c < kClasses; ++c) {
        const at::Tensor p = pred == c, t = truth == c;
        const double uni = (p | t).sum().item<double>();
        if (uni == 0) continue;
        sum += (p & t).sum().item<double>() / uni;
        ++used;
    }
    return {used ? sum / used : 0.0, (pred == truth).to(torch::kDouble).mean().item<double>()};
}

}  // namespace

std::pair<at::Tensor, at::Tensor> segment_scenes(int64_t n, uint64_t seed, bool train_split) {
    const Dataset items = Dataset::open(train_split ? "fashion-mnist:train" : "fashion-mnist:test");
    std::mt19937_64 rng(seed);
    at::Tensor images = torch::zeros({n, 1, kCanvas, kCanvas});
    at::Tensor labels = torch::zeros({n, kCanvas, kCanvas}, torch::kLong);
    const int64_t cell = kCanvas / 2, slack = cell - kItem;
    for (int64_t i = 0; i < n; ++i) {
        std::array<int64_t, 4> cells = {0, 1, 2, 3};
        std::shuffle(cells.begin(), cells.end(), rng);
        const int64_t count = 2 + static_cast<int64_t>(rng() % 2);
        for (int64_t j = 0; j < count; ++j) {
            const int64_t item = static_cast<int64_t>(rng() % static_cast<uint64_t>(items.size()));
            const int64_t y0 = (cells[j] / 2) * cell + static_cast<int64_t>(rng() % (slack + 1));
            const int64_t x0 = (cells[j] % 2) * cell + static_cast<int64_t>(rng() % (slack + 1));
            const at::Tensor ink = items.raw(item)[0];  // [28,28] in [0,1]
            images[i][0].slice(0, y0, y0 + kItem).slice(1, x0, x0 + kItem).copy_(ink);
            labels[i].slice(0, y0, y0 + kItem).slice(1, x0, x0 + kItem).masked_fill_(ink > kInk, items.label(item) + 1);
        }
    }
    return {images, labels};
}

std::string segment_model_path() { return builtin_model_path("segment-fashion-mnist.pt"); }

TrainResult train_segment_model(const std::string& out_path, TrainOptions opts, const ProgressFn& progress) {
    if (opts.epochs < 1) throw UsageError("--epochs must be at least 1");
    if (opts.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    const auto start = std::chrono::steady_clock::now();
    torch::manual_seed(opts.seed);
    const int64_t n_train = opts.train_limit > 0 ? opts.train_limit : 12000;
    const int64_t n_test = opts.test_limit > 0 ? opts.test_limit : 1000;
    auto [train_x, train_y] = segment_scenes(n_train, opts.seed, /*train_split=*/true);
    auto [test_x, test_y] = segment_scenes(n_test, 1000 + opts.seed);
    train_x = (train_x - kFashionMean) / kFashionStd;
    test_x = (test_x - kFashionMean) / kFashionStd;

    auto net = build_segment_module();
    net.train();
    std::vector<at::Tensor> params;
    for (const auto& p : net.parameters()) params.push_back(p);
    torch::optim::Adam optimizer(params, torch::optim::AdamOptions(opts.learning_rate));
    const int64_t steps_per_epoch = n_train / opts.batch_size;
    if (steps_per_epoch < 1) throw UsageError("--train-limit must be at least the batch size");
    const int64_t total = steps_per_epoch * opts.epochs;
    int64_t step = 0;
    for (int epoch = 0; epoch < opts.epochs; ++epoch) {
        const at::Tensor order = torch::randperm(n_train, torch::kLong);
        for (int64_t b = 0; b < steps_per_epoch; ++b) {
            const double lr = 0.5 * opts.learning_rate * (1 + std::cos(M_PI * double(step) / double(total)));
            for (auto& group : optimizer.param_groups())
                static_cast<torch::optim::AdamOptions&>(group.options()).lr(lr);
            const at::Tensor idx = order.slice(0, b * opts.batch_size, (b + 1) * opts.batch_size);
            const at::Tensor out = net.forward({train_x.index_select(0, idx)}).toTensor();
            const at::Tensor loss = torch::nn::functional::cross_entropy(out, train_y.index_select(0, idx));
            optimizer.zero_grad();
            loss.backward();
            optimizer.step();
            ++step;
            report_progress(progress, 0.95 * double(step) / double(total));
        }
    }
    net.eval();
    std::vector<at::Tensor> preds;
    {
        torch::NoGradGuard no_grad;
        for (int64_t i = 0; i < n_test; i += 250)
            preds.push_back(net.forward({test_x.slice(0, i, std::min(n_test, i + 250))}).toTensor().argmax(1));
    }
    const auto [miou, pixel_accuracy] = mean_iou(torch::cat(preds), test_y);
    report_progress(progress, 1.0);

    TrainResult r;
    r.path = out_path;
    r.mean_iou = miou;
    r.test_accuracy = pixel_accuracy;
    r.epochs = opts.epochs;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const ModelMeta meta = segment_meta("metadata in the model file");
    const nlohmann::json j = {{"input_shape", meta.input_shape}, {"mean", meta.mean}, {"std", meta.std},
                              {"class_names", meta.class_names}, {"dataset", meta.dataset},
                              {"mean_iou", miou}, {"pixel_accuracy", pixel_accuracy}, {"epochs", opts.epochs},
                              {"seed", opts.seed}, {"train_scenes", n_train}, {"test_scenes", n_test}};
    detail::save_module_atomic(net, out_path, json_text(j, 2));
    return r;
}

Model load_segment_model(const ProgressFn& progress) {
    const std::string path = segment_model_path();
    if (!std::filesystem::exists(path)) {
        TrainOptions o;
        o.epochs = 3;
        o.batch_size = 64;
        train_segment_model(path, o, progress);
    }
    return Model::load(path);
}

}  // namespace convscope
