#pragma once
// Dataset maps (Karpathy's "t-SNE of CNN codes"): the features a layer computes for every image,
// their t-SNE embedding (tsne.hpp) with quality metrics, and the grid view that gives every image
// its own cell of an R x C grid so that neighbours in the map stay neighbours in the grid.
// Used by `convscope embed`.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "convscope/runtime/run_context.hpp"
#include "convscope/methods/tsne.hpp"

namespace convscope {

class Model;
class Dataset;

// Features of one layer for a list of dataset items.
struct EmbeddingFeatures {
    at::Tensor features;           // [N,D] float32: item i's tap flattened (C*H*W or F values)
    std::vector<int64_t> indices;  // [N] dataset indices of the rows, as given
    std::vector<int64_t> labels;   // [N] labels, -1 where the data has none
    std::string layer;             // the layer used
    // [N,H,W,C] uint8 pictures of the items (preprocessing undone, C = 1 or 3), only when asked
    // for with keep_display; else undefined.
    at::Tensor display;
    double seconds = 0.0;          // wall-clock time of the whole pass
};

// How a token layer's output [T,D] becomes one row: the class token (the first extra token), the
// mean of the grid's patch tokens, or every value flattened. Auto: cls where the layer has an
// extra token in front, else mean (other layouts are always flattened).
enum class TokenPool { Auto, Cls, Mean, Flatten };
const char* token_pool_name(TokenPool pool);
TokenPool parse_token_pool(const std::string& name);

struct LayerFeaturesOptions {
    // "" = model.penultimate_layer(), or for transformers whose head reads a token directly
    // (no 1-D layer before it) the last token layer.
    std::string layer;
    int64_t batch_size = 256;   // items per forward pass (>= 1)
    bool keep_display = false;  // also keep the items' pictures (EmbeddingFeatures::display)
    TokenPool pool = TokenPool::Auto;  // token layers only
    // When set, the rows go to this float32 NPY file as the batches finish (NpyRowWriter) and
    // `features` is that file mapped into memory (map_npy): a dataset's features are never held
    // in memory, only read from disk as they are used.
    std::string features_path;
};

// Runs the model over data[indices] in batches (decoding on a worker thread, BatchLoader) and
// keeps the output of the layer for every item, flattened to one row. The data is preprocessed
// for the model (Dataset::preprocess_for with the model's input shape and normalisation).
// Throws Error for an unknown layer (naming close names), no indices, or a batch size < 1.
// The context's progress gets the fraction of batches done and may cancel (Cancelled).
// Cost: one forward pass per item; memory N*D*4 bytes (none with features_path; + N*H*W*C for
// keep_display).
EmbeddingFeatures layer_features(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                                 const LayerFeaturesOptions& options = {}, const RunContext& context = {});

// Copies a batch's pictures [B,H,W,C] uint8 into rows [row, row + B) of `all` [n,H,W,C],
// allocating `all` at the first batch. A batch with non-finite pixels comes back in colour
// (C = 3): then every picture is, so gray rows are widened on either side.
void put_display_rows(at::Tensor& all, int64_t n, int64_t row, at::Tensor batch);

// Karpathy's grid view. Places points of xy [N,2] (any floating dtype, finite) into the cells of
// a rows x cols grid, each cell holding at most one point, so that the total squared distance
// between points and their cells is minimal. Both are first brought to [0,1]^2: each point
// coordinate is replaced by its rank along that axis divided by K-1 (ties share their mean rank,
// so a regular grid stays regular; ranks spread dense clusters evenly over the grid), and cell
// (r, c) has centre ((c + 0.5) / cols, 1 - (r + 0.5) / rows) (row 0 is the top, as in a picture
// of the map with y up). The linear assignment is then solved exactly (shortest augmenting paths
// with potentials: the Hungarian method in Jonker-Volgenant form). A point set that already is
// a grid of the same shape maps to itself.
// When N > rows*cols, the points i*N/(rows*cols) for i = 0..rows*cols-1 (an even subsample)
// are placed and the others are not.
// Returns [rows*cols], row-major: the index (into xy) of the point in each cell, or -1 for an
// empty cell (when N < rows*cols). Every point index appears at most once.
// Throws Error for a wrong shape, non-finite values, rows or cols < 1, or N < 1.
// Cost: O(K^2 * rows*cols) time worst case with K = min(N, rows*cols), deterministic; about
// 1-2 s for a 32x32 grid, 20 s for 48x48 (grows as K^3). Memory O(rows*cols).
std::vector<int64_t> grid_assignment(const at::Tensor& xy, int rows, int cols);

// The rows and columns of a near-square grid for n items: cols = ceil(sqrt(n)),
// rows = ceil(n / cols). n >= 1.
std::pair<int, int> near_square_grid(int64_t n);

// A t-SNE embedding of features with the figures of metrics.json.
struct EmbeddingResult {
    TsneResult tsne;                     // embedding [N,2] float32, KL divergence, stage times
    int metric_k = 10;                   // neighbours used by the metrics (min(10, N-1))
    // Leave-one-out metric_k-NN label accuracy in 2-D; NaN when labels are absent or any is -1.
    double knn_accuracy = 0.0;
    // Mean share of each point's metric_k nearest neighbours in feature space (the given
    // features, before any PCA) that are also among its metric_k nearest in 2-D.
    double neighbour_preservation = 0.0;
    double metrics_seconds = 0.0;
};

// Embeds features_nd [N,D] (floating, CPU) with t-SNE and measures the result. labels: empty or
// N values (-1 = unknown). Throws Error when labels has another length than N (naming both), and
// whatever tsne() throws (N < 2, NaN/Inf in the features, a perplexity too large for N, ...).
// Deterministic for the same seed and thread count. Cost: tsne() plus, for PCA-reduced or
// exact-gradient runs, one more k-NN search in feature space.
EmbeddingResult embed_features(const at::Tensor& features_nd, const std::vector<int64_t>& labels,
                               const TsneOptions& options = {}, const RunContext& context = {});

}  // namespace convscope
