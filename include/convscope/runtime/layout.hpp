#pragma once
// How a layer's output dimensions read, and the one view that turns spatial outputs of every
// layout into maps [N,C,h,w]: convolutional maps (NCHW), channels-last maps (NHWC, Swin's
// stages), tokens (N,T,D: an h x w grid of patch tokens plus extra tokens such as a class token
// or register tokens), vectors (N,F) and attention probabilities.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace convscope {

enum class LayoutKind {
    Nchw,       // [C,h,w] maps
    Nhwc,       // [h,w,C] maps, channels last
    Tokens,     // [T,D], T = extra_front + h*w + extra_back
    Vector,     // [F]
    Attention,  // attention probabilities [heads,Q,K] (global) or [windows,heads,q,k] (windowed)
    Other       // anything else (shape kept as is)
};

const char* layout_kind_name(LayoutKind kind);

struct Layout {
    LayoutKind kind = LayoutKind::Other;
    int64_t grid_h = 0, grid_w = 0;  // the spatial grid (maps and tokens), 0 if none
    int64_t channels = 0;            // C (maps), D (tokens), F (vectors)
    int64_t extra_front = 0;         // tokens before the grid (a class token: 1)
    int64_t extra_back = 0;          // tokens after the grid
    // Where the grid came from for tokens: "graph" (inferred from the patch embedding's geometry
    // and the token count) or "--grid" (given); "" otherwise.
    std::string grid_source;
    // Attention: heads and the query/key token counts, windows (1 for global attention) and the
    // window size in tokens (0 for global attention).
    // For windowed attention the cyclic shift (Swin's shifted windows) in tokens.
    int64_t heads = 0, windows = 0, window = 0, shift = 0;

    // Maps [C,h,w] of some layout (nchw, nhwc, tokens).
    bool spatial() const {
        return (kind == LayoutKind::Nchw || kind == LayoutKind::Nhwc || kind == LayoutKind::Tokens) &&
               grid_h > 0 && grid_w > 0;
    }
    // The shape of one item as maps: {C,h,w} for spatial layouts, {F} for vectors, else {}.
    std::vector<int64_t> map_shape() const;
};

// One short line for tables: "nchw", "tokens 7x7+1", "nhwc 8x8", "attention 4 heads",
// "attention 2 heads, 2x2 windows shifted 1".
std::string layout_summary(const Layout& layout);

// The maps of a batch of outputs of this layout: out [N,...] (the raw output, batch first) ->
// [N,C,h,w] float32, extra tokens dropped. Throws Error naming the layout if it is not spatial
// or the sizes do not fit.
at::Tensor as_maps(const at::Tensor& out, const Layout& layout);
// The extra tokens of a token layout: [N,extra_front+extra_back,D] (front ones first); an empty
// [N,0,D] tensor if there are none.
at::Tensor extra_tokens(const at::Tensor& out, const Layout& layout);
// The inverse of as_maps for gradients and masks: maps [N,C,h,w] -> the layout's shape, with
// zeros for extra tokens.
at::Tensor from_maps(const at::Tensor& maps_nchw, const Layout& layout);

// Parses "HxW" (e.g. "14x14") for --grid; throws UsageError for anything else.
std::pair<int64_t, int64_t> parse_grid(const std::string& text);

}  // namespace convscope
