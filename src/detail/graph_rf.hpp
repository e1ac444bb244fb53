#pragma once
// Graph analyses on the inlined forward graph: the shape of every tensor value for one input,
// and the receptive field of every value derived from the input.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <map>
#include <vector>

#include "convscope/receptive_field.hpp"

namespace convscope::detail {

// Runs the graph once on `input` ([1,C,H,W]) and returns the sizes of every top-level tensor
// value (parameters included).
std::map<const torch::jit::Value*, std::vector<int64_t>> record_shapes(
    torch::jit::Graph& graph, const torch::jit::Module& module, const at::Tensor& input);

// Receptive fields of the values that depend on the graph's input (inputs()[1]), propagated
// node by node: convolutions and pooling compose (r += (k-1)*d*j, j *= s, P += p*j), elementwise
// ops and concatenations take the union of their inputs' fields, ops that leave the spatial
// layout (flatten, linear, global pooling) give Global, anything else that changes the spatial
// size gives Unknown.
std::map<const torch::jit::Value*, ReceptiveField> receptive_fields(
    torch::jit::Graph& graph, const torch::jit::Module& module,
    const std::map<const torch::jit::Value*, std::vector<int64_t>>& shapes);

}  // namespace convscope::detail
