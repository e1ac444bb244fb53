#include "convscope/methods/embedding.hpp"
#include "convscope/runtime/io.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"

namespace convscope {
namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Replaces values by their rank scaled to [0,1] (ties share their mean rank; one value -> 0.5).
// Spreads dense clusters over the grid, which also keeps the augmenting paths below short.
void rank_unit(std::vector<double>& v) {
    const size_t n = v.size();
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
    std::vector<double> out(n);
    for (size_t s = 0; s < n;) {
        size_t e = s;
        while (e + 1 < n && v[order[e + 1]] == v[order[s]]) ++e;
        const double r = n > 1 ? 0.5 * double(s + e) / double(n - 1) : 0.5;
        for (size_t k = s; k <= e; ++k) out[order[k]] = r;
        s = e + 1;
    }
    v.swap(out);
}

}  // namespace

namespace {
constexpr EnumTable<TokenPool, 4> kPoolNames = {
    {{TokenPool::Auto, "auto"}, {TokenPool::Cls, "cls"}, {TokenPool::Mean, "mean"}, {TokenPool::Flatten, "flatten"}}};
}  // namespace

const char* token_pool_name(TokenPool p) { return enum_name(kPoolNames, p); }
TokenPool parse_token_pool(const std::string& name) { return parse_enum(kPoolNames, name, "token pooling"); }

void put_display_rows(at::Tensor& all, int64_t n, int64_t row, at::Tensor batch) {
    CONVSCOPE_CHECK(batch.dim() == 4 && batch.scalar_type() == torch::kUInt8, "display pictures are [B,H,W,C] uint8");
    if (!all.defined()) {
        std::vector<int64_t> shape = batch.sizes().vec();
        shape[0] = n;
        all = torch::empty(shape, torch::kUInt8);
    }
    if (batch.size(3) != all.size(3)) {
        if (batch.size(3) == 1) batch = batch.expand({-1, -1, -1, 3});
        else all = all.expand({-1, -1, -1, 3}).contiguous();
    }
    all.narrow(0, row, batch.size(0)).copy_(batch);
}

EmbeddingFeatures layer_features(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                                 const LayerFeaturesOptions& options, const RunContext& context) {
    const ThreadScope threads(context);
    const std::string& layer = options.layer;
    const int64_t batch_size = options.batch_size;
    const bool keep_display = options.keep_display;
    const auto t0 = std::chrono::steady_clock::now();
    if (indices.empty()) throw Error("no items selected: give --indices that select at least 2 items");
    if (batch_size < 1)
        throw Error("the batch size must be at least 1, got " + std::to_string(batch_size));
    EmbeddingFeatures r;
    r.layer = layer.empty() ? model.penultimate_layer() : layer;
    if (layer.empty() && r.layer.empty())
        for (const auto& l : model.layers())
            if (l.layout.kind == LayoutKind::Tokens && l.depth == 0) r.layer = l.name;
    const Layout lay = model.layer(r.layer).layout;  // throws for an unknown name, listing close ones
    TokenPool pool = options.pool;
    if (lay.kind != LayoutKind::Tokens) {
        if (pool == TokenPool::Cls || pool == TokenPool::Mean)
            throw Error("--pool " + std::string(token_pool_name(pool)) + " needs a token layer, and '" + r.layer +
                        "' is laid out as " + layout_summary(lay) + ": leave --pool out for this layer");
        pool = TokenPool::Flatten;
    } else if (pool == TokenPool::Auto) {
        pool = lay.extra_front > 0 ? TokenPool::Cls : TokenPool::Mean;
    } else if (pool == TokenPool::Cls && lay.extra_front == 0) {
        throw Error("layer '" + r.layer + "' has no class token (" + layout_summary(lay) +
                    "): use --pool mean");
    }
    r.indices = indices;
    r.labels.reserve(indices.size());

    const Preprocess pre =
        preprocess_for(model, data);
    BatchLoader loader(data, indices, batch_size, pre);
    const int64_t n = int64_t(indices.size());
    const double batches = double(std::max<int64_t>(1, loader.num_batches()));
    const std::vector<std::string> taps = {r.layer};
    torch::NoGradGuard no_grad;
    Batch b;
    int64_t row = 0, done = 0;
    std::unique_ptr<NpyRowWriter> writer;  // features_path: the rows go to disk
    while (loader.next(b)) {
        const TapResult t = model.forward_taps(b.images, taps);
        // Flatten each item's activation ([C,H,W] or [F]) to one row.
        at::Tensor f = t.taps.at(r.layer).to(at::kCPU).to(at::kFloat);
        if (pool == TokenPool::Cls) f = f.select(1, 0);
        else if (pool == TokenPool::Mean) f = as_maps(f, lay).flatten(2).mean(2);
        f = f.reshape({b.images.size(0), -1});
        if (!options.features_path.empty()) {
            if (!writer) writer = std::make_unique<NpyRowWriter>(options.features_path, n, f.size(1));
            writer->write(f);
        } else {
            if (!r.features.defined()) r.features = torch::empty({n, f.size(1)}, torch::kFloat);
            r.features.narrow(0, row, f.size(0)).copy_(f);
        }
        if (keep_display) put_display_rows(r.display, n, row, pre.to_display(b.images));
        r.labels.insert(r.labels.end(), b.labels.begin(), b.labels.end());
        row += f.size(0);
        report_progress(context.progress, double(++done) / batches);
    }
    if (writer) {
        writer->finish();
        r.features = map_npy(options.features_path);
    }
    r.seconds = seconds_since(t0);
    return r;
}

std::pair<int, int> near_square_grid(int64_t n) {
    if (n < 1) throw Error("a grid needs at least one item");
    const int cols = int(std::ceil(std::sqrt(double(n)) - 1e-9));
    const int rows = int((n + cols - 1) / cols);
    return {rows, cols};
}

std::vector<int64_t> grid_assignment(const at::Tensor& xy, int rows, int cols) {
    if (!xy.defined() || xy.dim() != 2 || xy.size(1) != 2)
        throw Error("grid assignment needs points [N,2]");
    if (rows < 1 || cols < 1)
        throw Error("the grid needs at least one row and one column, got " + std::to_string(rows) +
                    "x" + std::to_string(cols));
    const int64_t total = xy.size(0);
    if (total < 1) throw Error("grid assignment needs at least one point");
    const int64_t m = int64_t(rows) * cols;
    const int64_t n = std::min(total, m);
    at::Tensor p = xy.to(at::kCPU).to(at::kDouble).contiguous();
    const double* pp = p.data_ptr<double>();

    // The points placed: all, or an even subsample when there are more than cells.
    std::vector<int64_t> chosen(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) chosen[size_t(i)] = n == total ? i : i * total / m;
    std::vector<double> px(static_cast<size_t>(n)), py(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        px[size_t(i)] = pp[chosen[size_t(i)] * 2];
        py[size_t(i)] = pp[chosen[size_t(i)] * 2 + 1];
        if (!std::isfinite(px[size_t(i)]) || !std::isfinite(py[size_t(i)]))
            throw Error("grid assignment: point " + std::to_string(chosen[size_t(i)]) +
                        " is not finite");
    }
    rank_unit(px);
    rank_unit(py);
    std::vector<double> cx(static_cast<size_t>(m)), cy(static_cast<size_t>(m));
    for (int r = 0; r < rows; ++r)
        for (int c = 0; c < cols; ++c) {
            cx[size_t(r * cols + c)] = (c + 0.5) / cols;
            cy[size_t(r * cols + c)] = 1.0 - (r + 0.5) / rows;
        }
    auto cost = [&](int64_t i, int64_t j) {
        const double dx = px[size_t(i)] - cx[size_t(j)], dy = py[size_t(i)] - cy[size_t(j)];
        return dx * dx + dy * dy;
    };

    // Shortest augmenting paths with potentials (Hungarian method in the Jonker-Volgenant
    // form) for n rows (points) and m >= n columns (cells). 1-based with column 0 as the root
    // of each search. u, v: dual potentials; owner[j]: the row in column j; via[j]: the previous
    // column on the shortest path to j.
    const double inf = std::numeric_limits<double>::infinity();
    std::vector<double> u(size_t(n + 1), 0.0), v(size_t(m + 1), 0.0), minv(size_t(m + 1));
    std::vector<int64_t> owner(size_t(m + 1), 0), via(size_t(m + 1), 0);
    std::vector<int64_t> open_cols, tree_cols;  // columns off / on the current search tree
    open_cols.reserve(size_t(m));
    tree_cols.reserve(size_t(m + 1));
    for (int64_t i = 1; i <= n; ++i) {
        owner[0] = i;
        int64_t j0 = 0;
        open_cols.resize(size_t(m));
        std::iota(open_cols.begin(), open_cols.end(), int64_t(1));
        tree_cols.clear();
        std::fill(minv.begin(), minv.end(), inf);
        do {
            tree_cols.push_back(j0);
            const int64_t i0 = owner[size_t(j0)];
            const double ui = u[size_t(i0)];
            double delta = inf;
            size_t best = 0;
            for (size_t k = 0; k < open_cols.size(); ++k) {
                const int64_t j = open_cols[k];
                const double cur = cost(i0 - 1, j - 1) - ui - v[size_t(j)];
                if (cur < minv[size_t(j)]) {
                    minv[size_t(j)] = cur;
                    via[size_t(j)] = j0;
                }
                if (minv[size_t(j)] < delta) {
                    delta = minv[size_t(j)];
                    best = k;
                }
            }
            const int64_t j1 = open_cols[best];
            for (int64_t j : tree_cols) {
                u[size_t(owner[size_t(j)])] += delta;
                v[size_t(j)] -= delta;
            }
            for (int64_t j : open_cols) minv[size_t(j)] -= delta;
            open_cols[best] = open_cols.back();  // order does not matter, only determinism
            open_cols.pop_back();
            j0 = j1;
        } while (owner[size_t(j0)] != 0);
        // Flip the path back to the root.
        do {
            const int64_t j1 = via[size_t(j0)];
            owner[size_t(j0)] = owner[size_t(j1)];
            j0 = j1;
        } while (j0 != 0);
    }

    std::vector<int64_t> cell_point(size_t(m), -1);
    for (int64_t j = 1; j <= m; ++j)
        if (owner[size_t(j)] != 0) cell_point[size_t(j - 1)] = chosen[size_t(owner[size_t(j)] - 1)];
    return cell_point;
}

EmbeddingResult embed_features(const at::Tensor& features_nd, const std::vector<int64_t>& labels,
                               const TsneOptions& options, const RunContext& context) {
    if (!features_nd.defined() || features_nd.dim() != 2)
        throw Error("features must be a matrix [N,D] (one row per item)");
    const int64_t n = features_nd.size(0);
    if (!labels.empty() && int64_t(labels.size()) != n)
        throw Error("the features have " + std::to_string(n) + " rows but there are " +
                    std::to_string(labels.size()) +
                    " labels: give one label per feature row (or no labels)");
    EmbeddingResult r;
    r.tsne = tsne(features_nd, options, context);
    const int threads = thread_count(context);

    const auto t0 = std::chrono::steady_clock::now();
    r.metric_k = int(std::min<int64_t>(10, n - 1));
    const at::Tensor e = r.tsne.embedding.contiguous();
    const bool all_labelled =
        !labels.empty() && std::all_of(labels.begin(), labels.end(), [](int64_t l) { return l >= 0; });
    r.knn_accuracy = all_labelled ? knn_label_accuracy(e.data_ptr<float>(), labels.data(), n,
                                                       r.metric_k, threads)
                                  : std::numeric_limits<double>::quiet_NaN();
    // t-SNE's own neighbour lists are in feature space unless PCA reduced the features first.
    const bool reduced = options.pca_dims > 0 && options.pca_dims < features_nd.size(1);
    if (!reduced && r.tsne.knn.n == n && r.tsne.knn.k >= r.metric_k)
        r.neighbour_preservation =
            neighbour_preservation(r.tsne.knn, e.data_ptr<float>(), r.metric_k, threads);
    else
        r.neighbour_preservation =
            neighbour_preservation(features_nd, e, r.metric_k, threads);
    r.metrics_seconds = seconds_since(t0);
    return r;
}

}  // namespace convscope
