#pragma once
// The incremental engine's graph passes: a simplified copy of the model's inlined forward graph
// for one input shape, with the shape of every tensor value.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <array>
#include <map>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

namespace convscope {
class Model;
}

namespace convscope::incremental {

namespace jit = torch::jit;

bool is_tensor(const jit::Value* v);

// Values of g0 -> values of its copy g1 (Graph::copy keeps the node order): graph inputs and the
// outputs of top-level nodes.
std::unordered_map<const jit::Value*, jit::Value*> map_copy(const jit::Graph& g0, jit::Graph& g1);

// Replaces prim::GetAttr chains that start at the module (graph input 0) by constants holding
// the attributes' values (weights, buffers, flags such as `training`). Module-valued attributes
// are followed, not replaced; attributes that cannot be constants stay as they are.
void attributes_to_constants(jit::Graph& g, const c10::IValue& self);

// Constant propagation, dead code, dropout and removable mutation gone.
void simplify(std::shared_ptr<jit::Graph>& g);

// An int pair from an int or an int list of one or two elements.
std::optional<std::array<int64_t, 2>> int_pair(const c10::IValue& v);

struct PreparedGraph {
    std::shared_ptr<jit::Graph> graph;                               // the simplified copy
    std::map<const jit::Value*, std::vector<int64_t>> shapes;        // sizes of its tensor values
};

// The model's graph with attributes as constants, simplified, and aten::dim / aten::size of a
// non-batch dimension folded to constants for inputs [1,C,H,W] of chw (this removes the
// eval-mode shape checks of batch norm and the like, which would otherwise read every feature
// map); shapes recorded on zeros of that shape.
PreparedGraph prepare_graph(const Model& model, const std::vector<int64_t>& chw);

}  // namespace convscope::incremental
