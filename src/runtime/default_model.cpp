// The built-in Fashion-MNIST CNN: built as TorchScript modules in C++ (so the saved file is an
// ordinary TorchScript archive), trained with Adam and a cosine learning-rate decay.
#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/json.hpp"

#include <torch/script.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <unistd.h>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/preprocess.hpp"
#include "runtime/detail/builtin_layers.hpp"

namespace convscope {

namespace jit = torch::jit;

namespace detail {

jit::Module make_module(const std::shared_ptr<jit::CompilationUnit>& cu, const std::string& cls) {
    jit::Module m(c10::QualifiedName("__torch__.convscope." + cls), cu, /*shouldMangle=*/true);
    m.register_attribute("training", c10::BoolType::get(), true);
    return m;
}

jit::Module conv2d(const std::shared_ptr<jit::CompilationUnit>& cu, int64_t in, int64_t out, int64_t kernel,
                   int64_t dilation) {
    auto m = make_module(cu, "Conv2d");
    // He-uniform initialisation (the layers are followed by BatchNorm and ReLU).
    const double fan_in = static_cast<double>(in * kernel * kernel);
    const double bound = 1.0 / std::sqrt(fan_in);
    const double w_bound = std::sqrt(6.0 / fan_in);
    m.register_parameter("weight", (torch::empty({out, in, kernel, kernel}).uniform_(-w_bound, w_bound)).requires_grad_(true), false);
    m.register_parameter("bias", (torch::empty({out}).uniform_(-bound, bound)).requires_grad_(true), false);
    const std::string pad = std::to_string(dilation * (kernel / 2)), dil = std::to_string(dilation);
    m.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, [1, 1], [" + pad + ", " + pad +
             "], [" + dil + ", " + dil + "], 1)\n");
    return m;
}

jit::Module batch_norm(const std::shared_ptr<jit::CompilationUnit>& cu, int64_t channels) {
    auto m = make_module(cu, "BatchNorm2d");
    m.register_parameter("weight", (torch::ones({channels})).requires_grad_(true), false);
    m.register_parameter("bias", (torch::zeros({channels})).requires_grad_(true), false);
    m.register_buffer("running_mean", torch::zeros({channels}));
    m.register_buffer("running_var", torch::ones({channels}));
    m.define(R"JIT(
def forward(self, x):
    return torch.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            self.training, 0.1, 1e-5, False)
)JIT");
    return m;
}

jit::Module relu(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "ReLU");
    m.define(R"JIT(
def forward(self, x):
    return torch.relu(x)
)JIT");
    return m;
}

jit::Module max_pool(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "MaxPool2d");
    m.define(R"JIT(
def forward(self, x):
    return torch.max_pool2d(x, [2, 2], [2, 2], [0, 0], [1, 1], False)
)JIT");
    return m;
}

jit::Module linear(const std::shared_ptr<jit::CompilationUnit>& cu, int64_t in, int64_t out) {
    auto m = make_module(cu, "Linear");
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    m.register_parameter("weight", (torch::empty({out, in}).uniform_(-bound, bound)).requires_grad_(true), false);
    m.register_parameter("bias", (torch::empty({out}).uniform_(-bound, bound)).requires_grad_(true), false);
    m.define(R"JIT(
def forward(self, x):
    return torch.linear(x, self.weight, self.bias)
)JIT");
    return m;
}

jit::Module dropout(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "Dropout");
    m.define(R"JIT(
def forward(self, x):
    return torch.dropout(x, 0.3, self.training)
)JIT");
    return m;
}

void save_module_atomic(jit::Module& net, const std::string& out_path, const std::string& metadata_json) {
    jit::ExtraFilesMap extra{{"convscope.json", metadata_json}};
    namespace fs = std::filesystem;
    const fs::path target(out_path);
    if (target.has_parent_path()) fs::create_directories(target.parent_path());
    const std::string tmp = out_path + ".tmp" + std::to_string(::getpid());
    try {
        net.save(tmp, extra);
        fs::rename(tmp, target);
    } catch (const std::exception& e) {
        std::error_code ec;
        fs::remove(tmp, ec);
        throw Error("cannot write model file '" + out_path + "' (" + e.what() + ")");
    }
}

}  // namespace detail

namespace {
using namespace detail;

// conv1-bn1-relu1-conv2-bn2-relu2-pool1 | conv3-bn3-relu3-conv4-bn4-relu4-pool2 | fc1-relu5-drop-fc2
jit::Module build_default_module() {
    auto cu = std::make_shared<jit::CompilationUnit>();
    auto net = make_module(cu, "FashionNet");
    const int64_t c1 = 16, c2 = 32;
    net.register_module("conv1", conv2d(cu, 1, c1));
    net.register_module("bn1", batch_norm(cu, c1));
    net.register_module("relu1", relu(cu));
    net.register_module("conv2", conv2d(cu, c1, c1));
    net.register_module("bn2", batch_norm(cu, c1));
    net.register_module("relu2", relu(cu));
    net.register_module("pool1", max_pool(cu));
    net.register_module("conv3", conv2d(cu, c1, c2));
    net.register_module("bn3", batch_norm(cu, c2));
    net.register_module("relu3", relu(cu));
    net.register_module("conv4", conv2d(cu, c2, c2));
    net.register_module("bn4", batch_norm(cu, c2));
    net.register_module("relu4", relu(cu));
    net.register_module("pool2", max_pool(cu));
    net.register_module("fc1", linear(cu, c2 * 7 * 7, 128));
    net.register_module("relu5", relu(cu));
    net.register_module("dropout", dropout(cu));
    net.register_module("fc2", linear(cu, 128, 10));
    net.define(R"JIT(
def forward(self, x):
    x = self.relu1.forward(self.bn1.forward(self.conv1.forward(x)))
    x = self.pool1.forward(self.relu2.forward(self.bn2.forward(self.conv2.forward(x))))
    x = self.relu3.forward(self.bn3.forward(self.conv3.forward(x)))
    x = self.pool2.forward(self.relu4.forward(self.bn4.forward(self.conv4.forward(x))))
    x = torch.flatten(x, 1)
    x = self.dropout.forward(self.relu5.forward(self.fc1.forward(x)))
    return self.fc2.forward(x)
)JIT");
    return net;
}

}  // namespace

std::string builtin_model_path(const std::string& file) {
    namespace fs = std::filesystem;
    fs::path dir;
    if (const char* d = std::getenv("CONVSCOPE_CACHE_DIR"); d && *d) dir = d;
    else if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) dir = fs::path(x) / "convscope";
    else if (const char* h = std::getenv("HOME"); h && *h) dir = fs::path(h) / ".cache" / "convscope";
    else dir = fs::temp_directory_path() / "convscope-cache";
    return (dir / file).string();
}

std::string default_model_path() { return builtin_model_path("default-fashion-mnist.pt"); }

namespace {
// The built-in model's metadata: Fashion-MNIST's input shape, normalisation and class names.
ModelMeta default_meta(const std::string& source) {
    ModelMeta meta;
    meta.input_shape = {1, 28, 28};
    meta.mean = {kFashionMean};
    meta.std = {kFashionStd};
    meta.class_names = fashion_mnist_classes();
    meta.source = meta.classes_source = source;
    return meta;
}
}  // namespace

Model untrained_default_model(uint64_t seed) {
    torch::manual_seed(seed);
    auto net = build_default_module();
    net.eval();
    return Model::from_module(net, default_meta("the untrained built-in model"));
}

double evaluate_accuracy(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                         const ProgressFn& progress) {
    if (!data.has_labels())
        throw Error("data '" + data.spec() + "' has no labels: accuracy needs labelled data");
    std::vector<int64_t> idx = indices;
    if (idx.empty()) {
        idx.resize(static_cast<size_t>(data.size()));
        std::iota(idx.begin(), idx.end(), 0);
    }
    if (!data.class_match().comparable)
        throw Error("no accuracy for '" + data.spec() + "': " + data.class_match().why);
    BatchLoader loader(data, idx, 500, preprocess_for(model, data));
    Batch b;
    int64_t correct = 0, seen = 0;
    while (loader.next(b)) {
        auto pred = model.forward(b.images).argmax(1);
        auto acc = pred.accessor<int64_t, 1>();
        for (int64_t i = 0; i < pred.size(0); ++i) correct += acc[i] == b.labels[static_cast<size_t>(i)];
        seen += pred.size(0);
        report_progress(progress, static_cast<double>(seen) / static_cast<double>(idx.size()));
    }
    return seen ? static_cast<double>(correct) / static_cast<double>(seen) : 0.0;
}

namespace detail {

TrainResult train_builtin(const BuiltinTraining& how, const std::string& out_path, const TrainOptions& opts,
                          const ProgressFn& progress) {
    if (opts.epochs < 1) throw UsageError("--epochs must be at least 1");
    if (opts.batch_size < 1) throw UsageError("--batch-size must be at least 1");
    const auto start = std::chrono::steady_clock::now();
    torch::manual_seed(opts.seed);
    auto train = Dataset::open("fashion-mnist:train");
    auto test = Dataset::open("fashion-mnist:test");

    jit::Module net = how.build();
    net.train();
    std::vector<at::Tensor> params;
    for (const auto& p : net.parameters()) params.push_back(p);
    std::unique_ptr<torch::optim::Optimizer> optimizer;
    if (how.weight_decay > 0)
        optimizer = std::make_unique<torch::optim::AdamW>(
            params, torch::optim::AdamWOptions(opts.learning_rate).weight_decay(how.weight_decay));
    else
        optimizer = std::make_unique<torch::optim::Adam>(params, torch::optim::AdamOptions(opts.learning_rate));

    const Preprocess pre = how.meta.preprocess();
    const int64_t n_train = opts.train_limit > 0 ? std::min(opts.train_limit, train.size()) : train.size();
    std::vector<int64_t> order(static_cast<size_t>(n_train));
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(opts.seed);
    const int64_t steps_per_epoch = (n_train + opts.batch_size - 1) / opts.batch_size;
    const int64_t total_steps = steps_per_epoch * opts.epochs;
    const int64_t warmup = how.max_warmup_steps > 0 ? std::min(how.max_warmup_steps, total_steps / 10 + 1) : 0;
    int64_t step = 0;
    for (int epoch = 0; epoch < opts.epochs; ++epoch) {
        std::shuffle(order.begin(), order.end(), rng);
        BatchLoader loader(train, order, opts.batch_size, pre);
        Batch b;
        while (loader.next(b)) {
            const double cosine = 1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(total_steps));
            const double lr = warmup > 0
                                  ? opts.learning_rate * std::min(1.0, double(step + 1) / double(warmup)) * 0.5 * cosine
                                  : 0.5 * opts.learning_rate * cosine;
            for (auto& group : optimizer->param_groups()) group.options().set_lr(lr);
            auto labels = torch::tensor(b.labels, torch::kLong);
            auto logits = net.forward({b.images}).toTensor();
            auto loss = torch::nn::functional::cross_entropy(logits, labels);
            optimizer->zero_grad();
            loss.backward();
            optimizer->step();
            ++step;
            report_progress(progress, 0.95 * static_cast<double>(step) / static_cast<double>(total_steps));
        }
    }
    net.eval();

    auto model = Model::from_module(net, how.meta, out_path);
    std::vector<int64_t> test_idx;
    const int64_t n_test = opts.test_limit > 0 ? std::min(opts.test_limit, test.size()) : test.size();
    for (int64_t i = 0; i < n_test; ++i) test_idx.push_back(i);
    const double accuracy = evaluate_accuracy(model, test, test_idx);
    report_progress(progress, 1.0);

    TrainResult result;
    result.path = out_path;
    result.test_accuracy = accuracy;
    result.epochs = opts.epochs;
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

    const ModelMeta& meta = how.meta;
    nlohmann::json j = {{"input_shape", meta.input_shape}, {"mean", meta.mean}, {"std", meta.std},
                        {"class_names", meta.class_names}, {"dataset", meta.dataset},
                        {"test_accuracy", accuracy}, {"epochs", opts.epochs}, {"seed", opts.seed},
                        {"train_images", n_train}};
    if (!how.arch.empty()) j["arch"] = how.arch;
    save_module_atomic(net, out_path, json_text(j, 2));
    return result;
}

}  // namespace detail

TrainResult train_default_model(const std::string& out_path, const TrainOptions& opts,
                                const ProgressFn& progress) {
    detail::BuiltinTraining how;
    how.build = build_default_module;
    how.meta = default_meta("metadata in the model file");
    how.meta.dataset = "fashion-mnist";
    return detail::train_builtin(how, out_path, opts, progress);
}

Model load_default_model(const ProgressFn& progress) {
    const std::string path = default_model_path();
    if (!std::filesystem::exists(path)) train_default_model(path, TrainOptions{}, progress);
    return Model::load(path);
}

}  // namespace convscope
