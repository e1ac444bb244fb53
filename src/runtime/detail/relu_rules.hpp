#pragma once
// ReLU backward rules for guided backprop (Springenberg et al. 2015) and deconvnet (Zeiler &
// Fergus 2014): two operators `convscope::relu_guided` and `convscope::relu_deconv` whose forward
// is ReLU and whose backward is the rule, and a graph pass that puts them in place of every ReLU.
#include <torch/csrc/jit/ir/ir.h>

#include <unordered_map>

namespace convscope::detail {

// Replaces aten::relu and aten::relu_ nodes (module, functional or in-place ReLUs after
// inlining) by the rule's operator. `remap` values that pointed at a replaced output are updated.
// Returns the number of ReLUs replaced.
int rewrite_relus(torch::jit::Graph& graph, bool guided,
                  std::unordered_map<const torch::jit::Value*, torch::jit::Value*>& remap);

}  // namespace convscope::detail
