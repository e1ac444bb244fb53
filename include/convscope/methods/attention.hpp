#pragma once
// Attention maps of transformers: the attention probabilities of every attention layer (see
// Model::attention_layers), a query token's attention over the image, attention rollout (Abnar
// & Zuidema 2020) and gradient-weighted attention rollout (Chefer, Gur & Wolf 2021, "Generic
// Attention-model Explainability").
#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "convscope/runtime/layout.hpp"
#include "convscope/runtime/run_context.hpp"

namespace convscope {

class Model;

struct AttentionOptions {
    // Attention layers ("<module>.attention_probs"), their modules, or blocks holding them
    // ("encoder.layers.encoder_layer_3"); empty = every attention layer.
    std::vector<std::string> layers;
    int batch_size = 16;  // images per forward pass
};

struct LayerAttention {
    std::string layer;  // "<module>.attention_probs"
    Layout layout;      // kind Attention: heads, windows, window, shift, the queries' grid
    // Global attention: [N,heads,Q,K]; windowed attention: [N,windows,heads,q,k]. float32, rows
    // sum to 1, as PyTorch computes them (need_weights=True, average_attn_weights=False).
    at::Tensor probs;
};

struct AttentionResult {
    std::vector<LayerAttention> layers;
    at::Tensor output;  // the model's output [N,...]
};

// The attention layers `wanted` names (see AttentionOptions::layers). Throws Error for a model
// without attention (listing what was found, and why some modules have none) and for names
// that hold no attention layer (listing the attention layers).
std::vector<std::string> resolve_attention_layers(const Model& model, const std::vector<std::string>& wanted);

// The attention probabilities of the chosen layers for images_nchw [N,C,H,W] (preprocessed).
AttentionResult attention(const Model& model, const at::Tensor& images_nchw, const AttentionOptions& options,
                          const RunContext& context = {});

// The attention of one query over the queries' grid: [N,heads,h,w] float32. query = {i, j} for
// the grid token in row i, column j; {-1, k} for extra token k (a class token: {-1, 0}).
// Windowed attention places the query's window (after the cyclic shift) on the grid, zero
// elsewhere. Throws Error for a query outside the grid, an extra token that does not exist,
// or a layer whose grid is unknown.
at::Tensor query_attention(const LayerAttention& attention, int64_t i, int64_t j);

enum class HeadFusion { Mean, Max, Min };
const char* head_fusion_name(HeadFusion fusion);
HeadFusion parse_head_fusion(const std::string& name);

struct RolloutOptions {
    HeadFusion fusion = HeadFusion::Mean;
    // Share of each fused attention matrix's smallest entries set to 0 before the residual is
    // added (0 <= ratio < 1); the class token's attention to itself is kept.
    double discard_ratio = 0.0;
};

// Attention rollout over layers' probs [N,heads,T,T] (global attention, in execution order):
// per layer A = fuse_heads(P) (discarding), Â = (A + I) / 2 with rows renormalised, R = Â_L ...
// Â_1. Returns [N,h,w]: the first extra token's row of R (the class token) over the grid
// tokens, or without extra tokens the mean of R's rows; not normalised.
at::Tensor attention_rollout(const std::vector<at::Tensor>& probs, const Layout& layout, const RolloutOptions& options);

// Gradient-weighted rollout: R = I; per layer R += Ā R with Ā = mean over heads of
// (dscore/dP * P)^+ (the positive part before the head mean, as the paper's equation 5).
// grads: dscore/dP per layer, shapes as probs. Returns [N,h,w] as attention_rollout.
at::Tensor attention_gradient_rollout(const std::vector<at::Tensor>& probs, const std::vector<at::Tensor>& grads,
                                      const Layout& layout);

// The attention layers every rollout uses (all of them, in execution order). Throws Error for a
// model without attention or with windowed attention in any layer (Swin: its last stage's
// global attention alone would be a partial rollout; use grad-cam).
std::vector<std::string> rollout_layers(const Model& model);
// Whether rollout_layers succeeds: the model has attention, all of it over all tokens.
bool rollout_applies(const Model& model);

}  // namespace convscope
