#pragma once
// Graph analyses on the inlined forward graph: the shape of every tensor value for one input,
// and the receptive field of every value derived from the input.
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <map>
#include <optional>
#include <vector>

#include "convscope/runtime/layout.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace convscope::detail {

// Runs a straight-line graph (no blocks) node by node with each node's operation, without a
// GraphExecutor: nothing is compiled or optimised first (about 1 ms for a small CNN's graph,
// more than running it once). Values are released after their last use. run() may be called
// from several threads at once.
class GraphRunner {
public:
    // Throws c10::Error (or Error) if the graph has blocks or a node without an operation;
    // callers then use a GraphFunction.
    explicit GraphRunner(std::shared_ptr<torch::jit::Graph> graph);
    // The graph's inputs in, its outputs out.
    std::vector<c10::IValue> run(std::vector<c10::IValue> inputs) const;

private:
    struct Step {
        mutable std::optional<torch::jit::Operation> op;  // called from const run (stateless)
        std::vector<int> in, out, release;  // value ids: inputs, outputs, dead after this step
    };
    std::shared_ptr<torch::jit::Graph> graph_;
    std::vector<Step> steps_;
    std::vector<c10::IValue> constants_;  // per value id (none for computed values)
    std::vector<int> inputs_, outputs_;
    int values_ = 0;
};

using Shapes = std::map<const torch::jit::Value*, std::vector<int64_t>>;
// The recorded sizes of v (batch first), or nullptr.
const std::vector<int64_t>* shape_in(const Shapes& shapes, const torch::jit::Value* v);
// The ints of a constant int, int list, or ListConstruct of constants; nullopt for anything else.
std::optional<std::vector<int64_t>> int_list(torch::jit::Value* v);

// Runs the graph once on `input` ([1,C,H,W]) and returns the sizes of every top-level tensor
// value (parameters included).
std::map<const torch::jit::Value*, std::vector<int64_t>> record_shapes(
    torch::jit::Graph& graph, const torch::jit::Module& module, const at::Tensor& input);

// Receptive fields of the values that depend on the graph's input (inputs()[1]), propagated
// node by node: convolutions and pooling compose (r += (k-1)*d*j, j *= s, P += p*j), elementwise
// ops and concatenations take the union of their inputs' fields, ops that leave the spatial
// layout (flatten, linear, global pooling) give Global, anything else that changes the spatial
// size gives Unknown.
// Values on a spatial grid that is not NCHW (nhwc, tokens, channels-first tokens [N,C,h*w])
// carry their field through ops that keep the grid (norms, linear layers on channels,
// reshapes between layouts); token mixing (a matmul of two input-dependent operands) makes the
// field Global, and windowed attention (a batch of windows) widens it by the window: the box
// (2*window-1) tokens wide around a unit holds every window the unit can be in, shifted or not.
std::map<const torch::jit::Value*, ReceptiveField> receptive_fields(
    torch::jit::Graph& graph, const torch::jit::Module& module,
    const std::map<const torch::jit::Value*, std::vector<int64_t>>& shapes,
    const std::map<const torch::jit::Value*, Layout>& layouts = {});

// The layout of every input-dependent tensor value, propagated from the input (NCHW): convs and
// pooling give NCHW, permute(0,2,3,1) NHWC and back, flatten/reshape of a map to [N,C,h*w] and
// its transpose give tokens on the map's grid, concatenation along the token dimension adds
// extra tokens (a class token), slices and selects on it remove them (x[:, 0] is a vector), and
// ops that keep the leading dimensions keep the layout with the new channel count. A [N,T,D]
// value whose layout cannot be followed (an attention block's output) takes the grid of an
// earlier token value with the same T. Channels-first tokens [N,C,h*w] are kind Other with their
// grid set; other values are left out.
std::map<const torch::jit::Value*, Layout> layouts(
    torch::jit::Graph& graph, const std::map<const torch::jit::Value*, std::vector<int64_t>>& shapes);

}  // namespace convscope::detail
