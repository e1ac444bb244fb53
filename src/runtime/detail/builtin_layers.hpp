#pragma once
// The layers the built-in models are made of, as TorchScript modules built in C++ (so saved
// files are ordinary TorchScript archives), and the atomic save both models use. Defined in
// default_model.cpp.
#include <torch/script.h>

#include <cstdint>
#include <memory>
#include <string>

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

}  // namespace convscope::detail
