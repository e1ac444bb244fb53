#pragma once
// Attention in the inlined forward graph: nn.MultiheadAttention calls rewritten into explicit
// matmul + softmax (so that their probabilities exist, as PyTorch computes them with
// need_weights=True, average_attn_weights=False, and can be tapped and differentiated), and
// every attention softmax given a canonical view [N,windows,heads,queries,keys] that the rest of
// the graph reads back (so that gradients with respect to it reach the model's output).
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <string>
#include <vector>

namespace convscope::detail {

// The dotted module path a node was inlined from ("" for the model's own forward).
std::string node_module_path(const torch::jit::Node* n);

struct AttentionSite {
    std::string module;                    // the module computing it, e.g. "encoder.layers.encoder_layer_0.self_attention"
    torch::jit::Value* probs = nullptr;    // [N,windows,heads,queries,keys]
    torch::jit::Value* queries = nullptr;  // the value the queries come from (its layout gives the grid)
    int64_t shift = 0;                     // a windowed attention's cyclic shift (Swin), in tokens
};

// Rewrites every nn.MultiheadAttention call of the graph into explicit operations (in-projection,
// scaled dot products, softmax, weighted values, out-projection). Calls that cannot be rewritten
// (masks, separate key/value sizes, returned weights) keep PyTorch's code; the returned lines
// say which and why.
std::vector<std::string> explicit_multihead_attention(torch::jit::Graph& graph, const torch::jit::Module& module);

// Finds the attention softmaxes (over the last dimension of a rank >= 3 value that a matmul
// reads) and gives each its canonical view.
std::vector<AttentionSite> attention_sites(torch::jit::Graph& graph);

}  // namespace convscope::detail
