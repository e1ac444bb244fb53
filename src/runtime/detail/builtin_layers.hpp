#pragma once
// The layers the built-in models are made of, as TorchScript modules built in C++ (so saved
// files are ordinary TorchScript archives), and the atomic save both models use. Defined in
// default_model.cpp.
#include <torch/script.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "convscope/runtime/default_model.hpp"
#include "convscope/runtime/model.hpp"

namespace convscope::detail {

// A module of class __torch__.convscope.<cls> (mangled per instance) with a `training` flag.
torch::jit::Module make_module(const std::shared_ptr<torch::jit::CompilationUnit>& cu, const std::string& cls);
// kernel x kernel convolution, stride 1, padding dilation * (kernel / 2) (the size is kept).
torch::jit::Module conv2d(const std::shared_ptr<torch::jit::CompilationUnit>& cu, int64_t in, int64_t out,
                          int64_t kernel = 3, int64_t dilation = 1);
torch::jit::Module batch_norm(const std::shared_ptr<torch::jit::CompilationUnit>& cu, int64_t channels);
torch::jit::Module relu(const std::shared_ptr<torch::jit::CompilationUnit>& cu);
torch::jit::Module max_pool(const std::shared_ptr<torch::jit::CompilationUnit>& cu);  // 2x2, stride 2

// Writes the module with `metadata_json` as its convscope.json to a temporary name beside
// out_path, then renames it: never a half-written model. Throws Error naming the path.
void save_module_atomic(torch::jit::Module& net, const std::string& out_path, const std::string& metadata_json);

// How a built-in Fashion-MNIST classifier is trained: Adam (AdamW where weight_decay > 0), the
// learning rate decayed to 0 on a cosine over all steps after an optional linear warm-up.
struct BuiltinTraining {
    std::function<torch::jit::Module()> build;  // the untrained module, built after the seed is set
    ModelMeta meta;                             // saved with the model
    std::string arch;                           // recorded in the metadata when not empty
    double weight_decay = 0;
    int64_t max_warmup_steps = 0;               // warm-up over min(this, steps / 10 + 1) steps; 0 = none
};

// Trains on fashion-mnist:train, measures the test accuracy, writes the model atomically to
// out_path with its metadata.
TrainResult train_builtin(const BuiltinTraining& how, const std::string& out_path, const TrainOptions& opts,
                          const ProgressFn& progress);

}  // namespace convscope::detail
