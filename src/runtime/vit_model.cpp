// The built-in vision transformer: Fashion-MNIST cut into 4x4 patches (a 7x7 grid) plus a class
// token, a few pre-norm blocks of multi-head self-attention and an MLP, the class token's final
// norm read by a linear head. Built as ordinary TorchScript like the CNN (default_model.cpp),
// trained with AdamW, a short warm-up and a cosine decay.
#include <torch/script.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/default_model.hpp"
#include "runtime/detail/builtin_layers.hpp"

namespace convscope {

namespace jit = torch::jit;

namespace {

using namespace detail;

constexpr int64_t kDim = 64, kHeads = 4, kBlocks = 4, kHidden = 128, kPatch = 4, kGrid = 7;

jit::Module layer_norm(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "LayerNorm");
    m.register_parameter("weight", torch::ones({kDim}).requires_grad_(true), false);
    m.register_parameter("bias", torch::zeros({kDim}).requires_grad_(true), false);
    m.define("def forward(self, x):\n    return torch.layer_norm(x, [" + std::to_string(kDim) +
             "], self.weight, self.bias, 1e-5, False)\n");
    return m;
}

jit::Module dense(const std::shared_ptr<jit::CompilationUnit>& cu, int64_t in, int64_t out) {
    auto m = make_module(cu, "Linear");
    // Truncated-normal-like small weights, as ViTs start.
    m.register_parameter("weight", (torch::randn({out, in}) * 0.02).clamp(-0.04, 0.04).requires_grad_(true), false);
    m.register_parameter("bias", torch::zeros({out}).requires_grad_(true), false);
    m.define("def forward(self, x):\n    return torch.linear(x, self.weight, self.bias)\n");
    return m;
}

// Multi-head self-attention written with matmul and softmax (what convscope taps).
jit::Module attention(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "Attention");
    m.register_module("qkv", dense(cu, kDim, 3 * kDim));
    m.register_module("proj", dense(cu, kDim, kDim));
    const std::string h = std::to_string(kHeads), dh = std::to_string(kDim / kHeads), d = std::to_string(kDim);
    m.define("def forward(self, x):\n"
             "    n = x.size(0)\n"
             "    t = x.size(1)\n"
             "    qkv = self.qkv.forward(x).reshape(n, t, 3, " + h + ", " + dh + ").permute(2, 0, 3, 1, 4)\n"
             "    q = qkv[0]\n    k = qkv[1]\n    v = qkv[2]\n"
             "    a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * " +
             std::to_string(1.0 / std::sqrt(double(kDim / kHeads))) + ", -1)\n"
             "    o = torch.matmul(a, v).transpose(1, 2).reshape(n, t, " + d + ")\n"
             "    return self.proj.forward(o)\n");
    return m;
}

jit::Module mlp(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "MLP");
    m.register_module("fc1", dense(cu, kDim, kHidden));
    m.register_module("fc2", dense(cu, kHidden, kDim));
    m.define("def forward(self, x):\n    return self.fc2.forward(torch.gelu(self.fc1.forward(x)))\n");
    return m;
}

jit::Module block(const std::shared_ptr<jit::CompilationUnit>& cu) {
    auto m = make_module(cu, "Block");
    m.register_module("norm1", layer_norm(cu));
    m.register_module("attn", attention(cu));
    m.register_module("norm2", layer_norm(cu));
    m.register_module("mlp", mlp(cu));
    m.define(R"JIT(
def forward(self, x):
    x = x + self.attn.forward(self.norm1.forward(x))
    return x + self.mlp.forward(self.norm2.forward(x))
)JIT");
    return m;
}

jit::Module build_vit_module() {
    auto cu = std::make_shared<jit::CompilationUnit>();
    auto net = make_module(cu, "VisionTransformer");
    auto pe = make_module(cu, "Conv2d");
    {
        const double bound = 1.0 / std::sqrt(double(kPatch * kPatch));
        pe.register_parameter("weight", torch::empty({kDim, 1, kPatch, kPatch}).uniform_(-bound, bound).requires_grad_(true), false);
        pe.register_parameter("bias", torch::zeros({kDim}).requires_grad_(true), false);
        const std::string p = std::to_string(kPatch);
        pe.define("def forward(self, x):\n    return torch.conv2d(x, self.weight, self.bias, [" + p + ", " + p +
                  "], [0, 0], [1, 1], 1)\n");
    }
    net.register_module("patch_embed", pe);
    net.register_parameter("class_token", torch::zeros({1, 1, kDim}).requires_grad_(true), false);
    net.register_parameter("pos_embedding", (torch::randn({1, kGrid * kGrid + 1, kDim}) * 0.02).requires_grad_(true), false);
    auto blocks = make_module(cu, "Blocks");
    for (int64_t i = 0; i < kBlocks; ++i) blocks.register_module(std::to_string(i), block(cu));
    // Submodules named by digits are reached with getattr in TorchScript source.
    std::string seq = "def forward(self, x):\n";
    for (int64_t i = 0; i < kBlocks; ++i) seq += "    x = getattr(self, \"" + std::to_string(i) + "\").forward(x)\n";
    seq += "    return x\n";
    blocks.define(seq);
    net.register_module("blocks", blocks);
    net.register_module("norm", layer_norm(cu));
    net.register_module("head", dense(cu, kDim, 10));
    net.define(R"JIT(
def forward(self, x):
    x = torch.flatten(self.patch_embed.forward(x), 2).transpose(1, 2)
    x = torch.cat([self.class_token.expand(x.size(0), -1, -1), x], 1) + self.pos_embedding
    x = self.norm.forward(self.blocks.forward(x))
    return self.head.forward(x[:, 0])
)JIT");
    return net;
}

ModelMeta vit_meta(const std::string& source) {
    ModelMeta meta;
    meta.input_shape = {1, 28, 28};
    meta.mean = {kFashionMean};
    meta.std = {kFashionStd};
    meta.class_names = fashion_mnist_classes();
    meta.dataset = "fashion-mnist";
    meta.source = meta.classes_source = source;
    return meta;
}

}  // namespace

std::string vit_model_path() { return builtin_model_path("vit-fashion-mnist.pt"); }

Model untrained_vit_model(uint64_t seed) {
    torch::manual_seed(seed);
    auto net = build_vit_module();
    net.eval();
    return Model::from_module(net, vit_meta("the untrained built-in ViT"));
}

TrainResult train_vit_model(const std::string& out_path, const TrainOptions& opts, const ProgressFn& progress) {
    BuiltinTraining how;
    how.build = build_vit_module;
    how.meta = vit_meta("metadata in the model file");
    how.arch = "vit";
    how.weight_decay = 0.05;
    how.max_warmup_steps = 200;
    return train_builtin(how, out_path, opts, progress);
}

Model load_vit_model(const ProgressFn& progress) {
    const std::string path = vit_model_path();
    if (!std::filesystem::exists(path)) {
        TrainOptions o;
        o.epochs = kVitEpochs;
        o.learning_rate = kVitLearningRate;
        train_vit_model(path, o, progress);
    }
    return Model::load(path);
}

}  // namespace convscope
