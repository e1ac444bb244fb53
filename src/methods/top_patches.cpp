// Maximally activating dataset patches: one streaming pass that keeps, per layer and channel,
// bounded top-k / bottom-k lists of per-image maxima, an exact mergeable histogram and a dead
// count; checkpoints, shards and their merge; crops for the pictures.
#include "convscope/methods/top_patches.hpp"

#include <ATen/Parallel.h>

#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/render.hpp"
#include "methods/detail/top_patches_files.hpp"

namespace convscope {

namespace {

using namespace top_patches_detail;

constexpr int kFineShift = 23 - kHistogramMantissaBits;

// --- fine histogram buckets -------------------------------------------------------------------
// A float's bits mapped to an unsigned integer in the float order (negatives shifted by one so
// that every bucket's smallest member has zeroed low bits, i.e. a short decimal).
uint32_t ordered_bits(float f) {
    f += 0.0f;  // -0 -> +0
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    if (u & 0x80000000u) return ~u + 1u;
    return u | 0x80000000u;
}

uint32_t fine_key(float f) { return ordered_bits(f) >> kFineShift; }

// The smallest float in bucket `key`.
float bucket_lower(uint32_t key) {
    const uint32_t o = key << kFineShift;
    uint32_t u;
    if (o & 0x80000000u) u = o & 0x7fffffffu;
    else if (o == 0) return -std::numeric_limits<float>::infinity();
    else u = 0u - o;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// --- ordering ---------------------------------------------------------------------------------
// Higher value first, then lower image index: a total order, so any partition of the data into
// shards gives the same lists.
bool better_top(const PatchEntry& a, const PatchEntry& b) {
    return a.value > b.value || (a.value == b.value && a.image < b.image);
}
bool better_bottom(const PatchEntry& a, const PatchEntry& b) {
    return a.value < b.value || (a.value == b.value && a.image < b.image);
}

// A bounded list kept as a heap whose front is the worst kept entry.
template <class Better>
void offer(std::vector<PatchEntry>& heap, size_t k, const PatchEntry& e, Better better) {
    if (heap.size() < k) {
        heap.push_back(e);
        std::push_heap(heap.begin(), heap.end(), better);
    } else if (better(e, heap.front())) {
        std::pop_heap(heap.begin(), heap.end(), better);
        heap.back() = e;
        std::push_heap(heap.begin(), heap.end(), better);
    }
}

// --- scan state -------------------------------------------------------------------------------
struct ChannelState {
    std::vector<PatchEntry> top, bottom;  // heaps (front = worst)
    int64_t dead = 0;
    int64_t seen = 0;
    float min = 0.f, max = 0.f;
    std::unordered_map<uint32_t, int64_t> fine;
};

struct LayerState {
    std::string name;
    Layout layout;               // token and channels-last outputs are read as maps
    std::vector<int64_t> shape;  // C,H,W or F
    int64_t channels = 0, height = 1, width = 1;
    std::vector<ChannelState> ch;
};

ChannelPatches to_patches(const ChannelState& s) {
    ChannelPatches c;
    c.top = s.top;
    std::sort(c.top.begin(), c.top.end(), better_top);
    c.bottom = s.bottom;
    std::sort(c.bottom.begin(), c.bottom.end(), better_bottom);
    c.dead = s.dead;
    c.min = s.min;
    c.max = s.max;
    c.fine.assign(s.fine.begin(), s.fine.end());
    std::sort(c.fine.begin(), c.fine.end());
    return c;
}

ChannelState from_patches(const ChannelPatches& c, int64_t seen) {
    ChannelState s;
    s.top = c.top;
    std::make_heap(s.top.begin(), s.top.end(), better_top);
    s.bottom = c.bottom;
    std::make_heap(s.bottom.begin(), s.bottom.end(), better_bottom);
    s.dead = c.dead;
    s.seen = seen;
    s.min = c.min;
    s.max = c.max;
    for (const auto& [key, count] : c.fine) s.fine[key] = count;
    return s;
}

// --- identity ---------------------------------------------------------------------------------
std::string model_identity(const Model& model) {
    if (!model.file_hash().empty()) return model.file_hash();
    // A model built in memory: hash its parameters and buffers.
    std::string bytes;
    auto add = [&](const std::string& name, const at::Tensor& t) {
        auto c = t.detach().to(at::kCPU).contiguous();
        bytes += name + ":" + std::string(c10::toString(c.scalar_type())) + ":" +
                 std::to_string(c.numel()) + "\n";
        bytes.append(static_cast<const char*>(c.data_ptr()), c.numel() * c.element_size());
    };
    for (const auto& p : model.module().named_parameters(true)) add(p.name, p.value);
    for (const auto& b : model.module().named_buffers(true)) add(b.name, b.value);
    return "params-" + sha256_hex(bytes);
}

std::string indices_identity(const std::vector<int64_t>& indices) {
    std::string bytes(reinterpret_cast<const char*>(indices.data()), indices.size() * sizeof(int64_t));
    return sha256_hex(bytes);
}

std::string short_hash(const std::string& h) { return h.size() > 16 ? h.substr(0, 16) + "..." : h; }

// Throws if `a` (what was found) and `b` (what this scan or the first shard is) do not belong to
// the same scan. `what` names a, `fix` says what to do.
void check_same_scan(const TopPatchesResult& a, const TopPatchesResult& b, const std::string& what,
                     const std::string& b_name, const std::string& fix) {
    auto fail = [&](const std::string& field, const std::string& va, const std::string& vb) {
        throw Error(what + " is from another " + field + " (" + va + ") than " + b_name + " (" + vb +
                    "): " + fix);
    };
    if (a.model_hash != b.model_hash)
        fail("model", a.model_path + ", sha256 " + short_hash(a.model_hash),
             b.model_path + ", sha256 " + short_hash(b.model_hash));
    if (a.data_hash != b.data_hash)
        fail("dataset", a.data_spec + ", hash " + short_hash(a.data_hash),
             b.data_spec + ", hash " + short_hash(b.data_hash));
    if (a.indices_hash != b.indices_hash || a.num_selected != b.num_selected)
        fail("selection of images", std::to_string(a.num_selected) + " images",
             std::to_string(b.num_selected) + " images");
    std::vector<std::string> la, lb;
    for (const auto& l : a.layers) la.push_back(l.name);
    for (const auto& l : b.layers) lb.push_back(l.name);
    auto join = [](const std::vector<std::string>& v) {
        std::string s;
        for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
        return s;
    };
    if (la != lb) fail("set of layers", join(la), join(lb));
    if (a.k != b.k) fail("k", std::to_string(a.k), std::to_string(b.k));
    if (a.lowest != b.lowest)
        fail("choice of lowest entries", a.lowest ? "with" : "without", b.lowest ? "with" : "without");
    if (a.batch_size != b.batch_size)
        fail("batch size", std::to_string(a.batch_size), std::to_string(b.batch_size));
}

// --- the scan ---------------------------------------------------------------------------------

// Folds one batch's activation of one layer into the state. act: [B,C,H*W] float32 contiguous.
void update_layer(LayerState& L, const at::Tensor& act, const std::vector<int64_t>& image_idx,
                  const std::vector<int64_t>& labels, size_t k, bool lowest) {
    const int64_t B = act.size(0), C = act.size(1), HW = act.size(2);
    // One vectorised reduction over the whole batch; positions are looked up only for the few
    // (image, channel) pairs that make it into a list.
    const at::Tensor maxima = act.amax(2).contiguous();
    const float* m = maxima.data_ptr<float>();
    const float* a = act.data_ptr<float>();
    const int64_t W = L.width;
    // Channels are independent: split them over the intra-op threads.
    at::parallel_for(0, C, 8, [&](int64_t c_begin, int64_t c_end) {
    for (int64_t c = c_begin; c < c_end; ++c) {
        for (int64_t b = 0; b < B; ++b) {
            const float v = m[b * C + c] + 0.0f;
            if (std::isnan(v))
                throw Error("layer '" + L.name + "' channel " + std::to_string(c) +
                            " is NaN on image " + std::to_string(image_idx[size_t(b)]) +
                            ": the model produces NaN on this data; check the model and the data");
            ChannelState& s = L.ch[size_t(c)];
            if (s.seen == 0) s.min = s.max = v;
            else {
                s.min = std::min(s.min, v);
                s.max = std::max(s.max, v);
            }
            ++s.seen;
            if (!(v > 0.f)) ++s.dead;
            ++s.fine[fine_key(v)];

            PatchEntry e;
            e.value = v;
            e.image = image_idx[size_t(b)];
            const bool to_top = s.top.size() < k || better_top(e, s.top.front());
            const bool to_bottom = lowest && (s.bottom.size() < k || better_bottom(e, s.bottom.front()));
            if (!to_top && !to_bottom) continue;
            const float* row = a + (b * C + c) * HW;
            int64_t pos = 0;
            while (pos < HW && !(row[pos] == v)) ++pos;
            if (pos == HW) pos = 0;  // unreachable: the maximum is one of the row's values
            e.y = pos / W;
            e.x = pos % W;
            e.label = labels[size_t(b)];
            if (to_top) offer(s.top, k, e, better_top);
            if (to_bottom) offer(s.bottom, k, e, better_bottom);
        }
    }
    });
}

TopPatchesResult make_result(const std::vector<LayerState>& state, const TopPatchesResult& identity,
                             int64_t images_scanned) {
    TopPatchesResult r = identity;
    r.images_scanned = images_scanned;
    for (size_t i = 0; i < state.size(); ++i) {
        auto& L = r.layers[i];
        L.channels.clear();
        for (const auto& c : state[i].ch) L.channels.push_back(to_patches(c));
    }
    return r;
}

void write_checkpoint(const std::string& path, const std::vector<LayerState>& state,
                      const TopPatchesResult& identity, int64_t position, int64_t images_scanned) {
    nlohmann::json j = top_patches_to_json(make_result(state, identity, images_scanned));
    j["format"] = kCheckpointFormat;
    j["checkpoint_position"] = position;
    write_file_atomic(path, json_text(j) + "\n");
}

// Throws for options that cannot run on n selected images.
void check_options(const TopPatchesOptions& opts, int64_t n, const Preprocess& pre) {
    if (opts.k < 1)
        throw UsageError("k must be at least 1 (got " + std::to_string(opts.k) + "): use --k 9");
    if (opts.batch_size < 1)
        throw UsageError("the batch size must be at least 1 (got " + std::to_string(opts.batch_size) + ")");
    if (opts.histogram_bins < 1)
        throw UsageError("the histogram needs at least 1 bin (got " + std::to_string(opts.histogram_bins) + ")");
    if (opts.shard_count < 1 || opts.shard_index < 0 || opts.shard_index >= opts.shard_count)
        throw UsageError("shard " + std::to_string(opts.shard_index) + "/" + std::to_string(opts.shard_count) +
                         " does not exist: give --shard i/n with 0 <= i < n");
    if (n == 0) throw Error("no images selected: check --indices");
    if (opts.k > n)
        throw Error("k = " + std::to_string(opts.k) + " is larger than the " + std::to_string(n) +
                    " selected images: use --k " + std::to_string(n) + " or less, or select more images");
    const int64_t num_batches = (n + opts.batch_size - 1) / opts.batch_size;
    if (opts.shard_count > num_batches)
        throw UsageError(std::to_string(opts.shard_count) + " shards but only " + std::to_string(num_batches) +
                         " batches of " + std::to_string(opts.batch_size) +
                         " images: use at most " + std::to_string(num_batches) +
                         " shards or a smaller --batch-size");
    if (pre.input_shape.size() != 3) throw Error("the preprocessing has no input shape C,H,W");
}

// What identifies the scan (model, data, selection, options, layers), without results.
TopPatchesResult scan_identity(const Model& model, const Dataset& data, const std::vector<int64_t>& indices,
                               const Preprocess& pre, const TopPatchesOptions& opts) {
    TopPatchesResult id;
    id.model_path = model.path();
    id.model_hash = model_identity(model);
    id.data_spec = data.spec();
    id.data_hash = data.hash();
    id.indices_hash = indices_identity(indices);
    id.num_selected = static_cast<int64_t>(indices.size());
    id.class_names = data.class_names().empty() ? model.meta().class_names : data.class_names();
    id.preprocess = pre;
    id.k = opts.k;
    id.lowest = opts.lowest;
    id.batch_size = opts.batch_size;
    id.histogram_bins = opts.histogram_bins;
    id.shard_index = opts.shard_index;
    id.shard_count = opts.shard_count;
    return id;
}

// The empty state of each layer; adds the layers to the identity. Throws for a layer listed
// twice, an unknown one, or one without maps [C,H,W] or features [F].
std::vector<LayerState> layer_states(const Model& model, const std::vector<std::string>& names,
                                     bool gradient_boxes, TopPatchesResult& id) {
    std::vector<LayerState> state;
    for (size_t i = 0; i < names.size(); ++i) {
        for (size_t j = 0; j < i; ++j)
            if (names[j] == names[i]) throw UsageError("layer '" + names[i] + "' is listed twice");
        const LayerInfo& info = model.layer(names[i]);  // throws for unknown names
        LayerState L;
        L.name = info.name;
        L.layout = info.layout;
        L.shape = info.layout.spatial() ? info.layout.map_shape() : info.output_shape;
        if (L.shape.size() == 3) {
            L.channels = L.shape[0];
            L.height = L.shape[1];
            L.width = L.shape[2];
        } else if (L.shape.size() == 1) {
            L.channels = L.shape[0];
        } else {
            throw Error("layer '" + info.name + "' does not output feature maps [C,H,W] (or channels-last maps, "
                        "or tokens on a grid) or features [F]: choose such layers with --layers (--grid HxW gives "
                        "the grid of token outputs)");
        }
        L.ch.resize(size_t(L.channels));
        state.push_back(std::move(L));
        LayerPatches lp;
        lp.name = info.name;
        lp.output_shape = state.back().shape;
        lp.rf = info.rf;
        lp.crop_rf = info.rf;
        if (info.layout.kind == LayoutKind::Tokens && info.layout.spatial() && info.rf.kind != ReceptiveField::Kind::Exact) {
            // The token's patch: the grid's cell over the input.
            const auto chw = model.input_shape();
            lp.crop_rf = ReceptiveField{};
            lp.crop_rf.stride_y = lp.crop_rf.size_y = std::max<int64_t>(1, chw[1] / info.layout.grid_h);
            lp.crop_rf.stride_x = lp.crop_rf.size_x = std::max<int64_t>(1, chw[2] / info.layout.grid_w);
        }
        lp.gradient_boxes = gradient_boxes || lp.crop_rf.kind == ReceptiveField::Kind::Unknown;
        id.layers.push_back(std::move(lp));
    }
    return state;
}

// Where a scan goes on from.
struct ScanPosition {
    int64_t position = 0;        // batches of the shard done
    int64_t images_scanned = 0;
};

// Loads the checkpoint at path into state when it exists; throws when it is damaged or from
// another scan or shard. total: the shard's batch count.
ScanPosition resume(const std::string& path, const TopPatchesResult& id, int64_t total,
                    std::vector<LayerState>& state) {
    ScanPosition at;
    if (path.empty() || !std::filesystem::exists(path)) return at;
    const std::string what = "checkpoint '" + path + "'";
    nlohmann::json j;
    try {
        j = nlohmann::json::parse(read_file(path));
    } catch (const nlohmann::json::exception&) {
        throw Error(what + " is not valid JSON (truncated or not a checkpoint): delete it to start over");
    }
    if (!j.is_object() || !j.contains("format") || j["format"] != kCheckpointFormat)
        throw Error(what + " is not a top-patches checkpoint: choose another --checkpoint file");
    TopPatchesResult saved = top_patches_from_json(j, what);
    check_same_scan(saved, id, what, "this scan",
                    "use the same model, data and options, or delete the checkpoint to start over");
    if (saved.shard_index != id.shard_index || saved.shard_count != id.shard_count)
        throw Error(what + " is from shard " + std::to_string(saved.shard_index) + "/" +
                    std::to_string(saved.shard_count) + ", not " + std::to_string(id.shard_index) + "/" +
                    std::to_string(id.shard_count) + ": use that shard's checkpoint file");
    try {
        at.position = json_int(j.at("checkpoint_position"));
    } catch (const std::exception&) {
        throw Error(what + " has no valid position: delete it to start over");
    }
    if (at.position < 0 || at.position > total) throw Error(what + " has an invalid position: delete it to start over");
    at.images_scanned = saved.images_scanned;
    for (size_t i = 0; i < state.size(); ++i) {
        if (saved.layers[i].channels.size() != state[i].ch.size())
            throw Error(what + " has another channel count for layer '" + state[i].name +
                        "': delete it to start over");
        for (size_t c = 0; c < state[i].ch.size(); ++c)
            state[i].ch[c] = from_patches(saved.layers[i].channels[c], at.images_scanned);
    }
    return at;
}

// Streams the images through the model and folds each batch into the state, writing the
// checkpoint every checkpoint_every batches, at the end and when cancelled.
void scan(const Model& model, const Dataset& data, std::vector<int64_t> todo, int64_t total, const Preprocess& pre,
          const TopPatchesOptions& opts, const TopPatchesResult& id, const ProgressFn& progress,
          std::vector<LayerState>& state, ScanPosition& at) {
    std::vector<std::string> names;
    for (const auto& L : state) names.push_back(L.name);
    BatchLoader loader(data, std::move(todo), opts.batch_size, pre);
    c10::InferenceMode inference;
    Batch batch;
    const size_t k = static_cast<size_t>(opts.k);
    while (loader.next(batch)) {
        TapResult taps = model.forward_taps(batch.images, names);
        for (auto& L : state) {
            at::Tensor t = taps.taps.at(L.name);
            if (L.layout.spatial() && L.layout.kind != LayoutKind::Nchw) t = as_maps(t, L.layout);
            if (t.scalar_type() != at::kFloat) t = t.to(at::kFloat);
            t = t.reshape({t.size(0), L.channels, -1}).contiguous();
            update_layer(L, t, batch.indices, batch.labels, k, opts.lowest);
        }
        at.images_scanned += static_cast<int64_t>(batch.indices.size());
        ++at.position;
        const bool save = !opts.checkpoint_path.empty() &&
                          (at.position % std::max<int64_t>(1, opts.checkpoint_every) == 0 || at.position == total);
        if (save) write_checkpoint(opts.checkpoint_path, state, id, at.position, at.images_scanned);
        try {
            report_progress(progress, double(at.position) / double(total));
        } catch (const Cancelled&) {
            if (!opts.checkpoint_path.empty() && !save)
                write_checkpoint(opts.checkpoint_path, state, id, at.position, at.images_scanned);
            throw;
        }
    }
}

}  // namespace

TopPatchesResult top_patches(const Model& model, const Dataset& data,
                             const std::vector<int64_t>& indices, const Preprocess& pre,
                             const TopPatchesOptions& opts, const RunContext& context) {
    const ThreadScope threads(context);
    const int64_t n = static_cast<int64_t>(indices.size());
    check_options(opts, n, pre);
    const std::vector<std::string> names = opts.layers.empty() ? model.conv_layer_names() : opts.layers;
    if (names.empty())
        throw Error("model '" + model.path() + "' has no conv layers: choose layers with --layers");
    TopPatchesResult id = scan_identity(model, data, indices, pre, opts);
    std::vector<LayerState> state = layer_states(model, names, opts.gradient_boxes, id);

    // This shard's batches, from where a checkpoint left off.
    const int64_t num_batches = (n + opts.batch_size - 1) / opts.batch_size;
    std::vector<int64_t> shard_batches;
    for (int64_t b = opts.shard_index; b < num_batches; b += opts.shard_count) shard_batches.push_back(b);
    const int64_t total = static_cast<int64_t>(shard_batches.size());
    ScanPosition at = resume(opts.checkpoint_path, id, total, state);
    std::vector<int64_t> todo;
    for (int64_t p = at.position; p < total; ++p) {
        const int64_t b = shard_batches[size_t(p)];
        const int64_t end = std::min(n, (b + 1) * opts.batch_size);
        todo.insert(todo.end(), indices.begin() + b * opts.batch_size, indices.begin() + end);
    }
    if (at.position < total) scan(model, data, std::move(todo), total, pre, opts, id, context.progress, state, at);
    else report_progress(context.progress, 1.0);

    TopPatchesResult r = make_result(state, id, at.images_scanned);
    fill_boxes(model, data, pre, r, opts.batch_size);
    return r;
}

// ------------------------------------------------------------------------------------------------

TopPatchesResult merge_top_patches(const std::vector<TopPatchesResult>& shards) {
    if (shards.empty()) throw UsageError("nothing to merge: give the shards' top_patches.json files");
    const TopPatchesResult& first = shards[0];
    const int64_t n = first.shard_count;
    std::vector<int> seen(size_t(std::max<int64_t>(n, 1)), 0);
    for (size_t i = 0; i < shards.size(); ++i) {
        const auto& s = shards[i];
        const std::string what = "shard " + std::to_string(s.shard_index) + "/" + std::to_string(s.shard_count);
        check_same_scan(s, first, what, "shard " + std::to_string(first.shard_index) + "/" + std::to_string(n),
                        "merge only the shards of one scan");
        if (s.shard_count != n)
            throw Error("shard " + std::to_string(s.shard_index) + "/" + std::to_string(s.shard_count) +
                        " does not fit shard " + std::to_string(first.shard_index) + "/" + std::to_string(n) +
                        ": the shards of one scan all have the same n");
        if (s.histogram_bins != first.histogram_bins)
            throw Error(what + " has " + std::to_string(s.histogram_bins) + " histogram bins, shard " +
                        std::to_string(first.shard_index) + " has " + std::to_string(first.histogram_bins) +
                        ": merge only the shards of one scan");
        for (size_t l = 0; l < s.layers.size(); ++l)
            if (s.layers[l].gradient_boxes != first.layers[l].gradient_boxes ||
                s.layers[l].channels.size() != first.layers[l].channels.size())
                throw Error(what + " differs from shard " + std::to_string(first.shard_index) + " in layer '" +
                            s.layers[l].name + "': merge only the shards of one scan");
        if (++seen[size_t(s.shard_index)] > 1)
            throw Error(what + " is given twice: give each shard's result once");
    }
    for (int64_t i = 0; i < n; ++i)
        if (!seen[size_t(i)])
            throw Error("shard " + std::to_string(i) + "/" + std::to_string(n) +
                        " is missing: give the results of all " + std::to_string(n) + " shards");

    TopPatchesResult r = first;
    r.shard_index = 0;
    r.shard_count = 1;
    r.images_scanned = 0;
    for (const auto& s : shards) r.images_scanned += s.images_scanned;
    if (r.images_scanned != r.num_selected)
        throw Error("the shards hold " + std::to_string(r.images_scanned) + " images but the selection has " +
                    std::to_string(r.num_selected) + ": give the results of finished shards only");
    const size_t k = static_cast<size_t>(r.k);
    for (size_t l = 0; l < r.layers.size(); ++l) {
        for (size_t c = 0; c < r.layers[l].channels.size(); ++c) {
            ChannelPatches out;
            std::unordered_map<uint32_t, int64_t> fine;
            bool any = false;
            for (const auto& s : shards) {
                const auto& sc = s.layers[l].channels[c];
                out.top.insert(out.top.end(), sc.top.begin(), sc.top.end());
                out.bottom.insert(out.bottom.end(), sc.bottom.begin(), sc.bottom.end());
                out.dead += sc.dead;
                for (const auto& [key, count] : sc.fine) fine[key] += count;
                if (s.images_scanned == 0) continue;
                if (!any) {
                    out.min = sc.min;
                    out.max = sc.max;
                    any = true;
                } else {
                    out.min = std::min(out.min, sc.min);
                    out.max = std::max(out.max, sc.max);
                }
            }
            std::sort(out.top.begin(), out.top.end(), better_top);
            if (out.top.size() > k) out.top.resize(k);
            std::sort(out.bottom.begin(), out.bottom.end(), better_bottom);
            if (out.bottom.size() > k) out.bottom.resize(k);
            out.fine.assign(fine.begin(), fine.end());
            std::sort(out.fine.begin(), out.fine.end());
            r.layers[l].channels[c] = std::move(out);
        }
    }
    return r;
}

// ------------------------------------------------------------------------------------------------

Histogram make_histogram(const ChannelPatches& c, int bins) {
    Histogram h;
    if (c.fine.empty() || bins < 1) return h;
    // Nearly equal-width edges, each moved down to the boundary of the fine bucket it falls in.
    std::vector<uint32_t> keys;
    keys.push_back(fine_key(c.min));
    const double lo = c.min, hi = c.max;
    for (int i = 1; i < bins; ++i) {
        const float e = static_cast<float>(lo + (hi - lo) * double(i) / double(bins));
        const uint32_t key = fine_key(e);
        if (key > keys.back()) keys.push_back(key);
    }
    const uint32_t last = fine_key(c.max) + 1;
    if (last > keys.back()) keys.push_back(last);
    if (keys.size() < 2) keys.push_back(keys.back() + 1);  // max below min: one bin (a damaged file)
    for (uint32_t key : keys) h.edges.push_back(bucket_lower(key));
    h.counts.assign(keys.size() - 1, 0);
    for (const auto& [key, count] : c.fine) {
        auto it = std::upper_bound(keys.begin(), keys.end(), key);
        size_t bin = size_t(it - keys.begin());
        bin = bin == 0 ? 0 : std::min(bin - 1, h.counts.size() - 1);
        h.counts[bin] += count;
    }
    return h;
}

std::vector<std::pair<int64_t, int64_t>> dominant_labels(const ChannelPatches& c) {
    std::map<int64_t, int64_t> counts;
    for (const auto& e : c.top) ++counts[e.label];
    std::vector<std::pair<int64_t, int64_t>> out(counts.begin(), counts.end());
    std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    return out;
}

}  // namespace convscope
