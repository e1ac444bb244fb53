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

namespace convscope {

namespace {

constexpr const char* kFormat = "convscope-top-patches-1";
constexpr const char* kCheckpointFormat = "convscope-top-patches-checkpoint-1";
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

// --- JSON helpers -----------------------------------------------------------------------------
// The double whose shortest decimal is the float's shortest decimal, so files show 0.1, not
// 0.10000000149011612, and reading back gives the same float.
double json_float(float f) {
    if (!std::isfinite(f)) return static_cast<double>(f);
    char buf[32];
    auto res = std::to_chars(buf, buf + sizeof buf, f);
    double d = std::strtod(std::string(buf, res.ptr).c_str(), nullptr);
    return static_cast<float>(d) == f ? d : static_cast<double>(f);
}


ReceptiveField rf_from_json(const nlohmann::json& j) {
    ReceptiveField rf;
    const std::string kind = j.at("kind").get<std::string>();
    if (kind == "global") rf.kind = ReceptiveField::Kind::Global;
    else if (kind == "unknown") rf.kind = ReceptiveField::Kind::Unknown;
    else {
        rf.kind = ReceptiveField::Kind::Exact;
        rf.size_y = j.at("size")[0];
        rf.size_x = j.at("size")[1];
        rf.stride_y = j.at("stride")[0];
        rf.stride_x = j.at("stride")[1];
        rf.pad_y = j.at("padding")[0];
        rf.pad_x = j.at("padding")[1];
    }
    return rf;
}

nlohmann::json entry_json(const PatchEntry& e) {
    return {{"image", e.image},
            {"label", e.label},
            {"value", json_float(e.value)},
            {"y", e.y},
            {"x", e.x},
            {"box", {e.box.y0, e.box.x0, e.box.y1, e.box.x1}}};
}

PatchEntry entry_from_json(const nlohmann::json& j) {
    PatchEntry e;
    e.image = j.at("image");
    e.label = j.at("label");
    e.value = static_cast<float>(j.at("value").get<double>());
    e.y = j.at("y");
    e.x = j.at("x");
    const auto& b = j.at("box");
    e.box = Box{b.at(0), b.at(1), b.at(2), b.at(3)};
    return e;
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
    write_file_atomic(path, j.dump() + "\n");
}

// Fills every entry's box: the analytic receptive field, or the gradient-derived region.
void fill_boxes(const Model& model, const Dataset& data, const Preprocess& pre,
                TopPatchesResult& r, int64_t chunk) {
    const int64_t H = pre.input_shape.at(1), W = pre.input_shape.at(2);
    for (auto& L : r.layers) {
        if (!L.gradient_boxes) {
            for (auto& c : L.channels) {
                for (auto* list : {&c.top, &c.bottom})
                    for (auto& e : *list) e.box = unit_box(L.rf, e.y, e.x, H, W);
            }
            continue;
        }
        // Entries sorted by image, so each chunk loads a run of images once.
        std::vector<std::pair<PatchEntry*, int64_t>> todo;  // entry, channel
        for (size_t ci = 0; ci < L.channels.size(); ++ci)
            for (auto* list : {&L.channels[ci].top, &L.channels[ci].bottom})
                for (auto& e : *list) todo.emplace_back(&e, int64_t(ci));
        std::stable_sort(todo.begin(), todo.end(),
                         [](const auto& a, const auto& b) { return a.first->image < b.first->image; });
        for (size_t start = 0; start < todo.size(); start += size_t(chunk)) {
            const size_t end = std::min(todo.size(), start + size_t(chunk));
            std::vector<int64_t> idx;
            std::vector<std::array<int64_t, 3>> units;
            for (size_t i = start; i < end; ++i) {
                idx.push_back(todo[i].first->image);
                units.push_back({todo[i].second, todo[i].first->y, todo[i].first->x});
            }
            const auto boxes = gradient_boxes(model, L.name, data.batch(idx, pre), units);
            for (size_t i = start; i < end; ++i) todo[i].first->box = boxes[i - start];
        }
    }
}

}  // namespace

// ------------------------------------------------------------------------------------------------

TopPatchesResult top_patches(const Model& model, const Dataset& data,
                             const std::vector<int64_t>& indices, const Preprocess& pre,
                             const TopPatchesOptions& opts, const RunContext& context) {
    const ThreadScope threads(context);
    if (opts.k < 1)
        throw UsageError("k must be at least 1 (got " + std::to_string(opts.k) + "): use --k 9");
    if (opts.batch_size < 1)
        throw UsageError("the batch size must be at least 1 (got " + std::to_string(opts.batch_size) + ")");
    if (opts.histogram_bins < 1)
        throw UsageError("the histogram needs at least 1 bin (got " + std::to_string(opts.histogram_bins) + ")");
    if (opts.shard_count < 1 || opts.shard_index < 0 || opts.shard_index >= opts.shard_count)
        throw UsageError("shard " + std::to_string(opts.shard_index) + "/" + std::to_string(opts.shard_count) +
                         " does not exist: give --shard i/n with 0 <= i < n");
    const int64_t n = static_cast<int64_t>(indices.size());
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

    // Layers and their shapes.
    const std::vector<std::string> names = opts.layers.empty() ? model.conv_layer_names() : opts.layers;
    if (names.empty())
        throw Error("model '" + model.path() + "' has no conv layers: choose layers with --layers");
    TopPatchesResult id;
    id.model_path = model.path();
    id.model_hash = model_identity(model);
    id.data_spec = data.spec();
    id.data_hash = data.hash();
    id.indices_hash = indices_identity(indices);
    id.num_selected = n;
    id.class_names = data.class_names().empty() ? model.meta().class_names : data.class_names();
    id.preprocess = pre;
    id.k = opts.k;
    id.lowest = opts.lowest;
    id.batch_size = opts.batch_size;
    id.histogram_bins = opts.histogram_bins;
    id.shard_index = opts.shard_index;
    id.shard_count = opts.shard_count;
    std::vector<LayerState> state;
    for (size_t i = 0; i < names.size(); ++i) {
        for (size_t j = 0; j < i; ++j)
            if (names[j] == names[i]) throw UsageError("layer '" + names[i] + "' is listed twice");
        const LayerInfo& info = model.layer(names[i]);  // throws for unknown names
        LayerState L;
        L.name = info.name;
        L.shape = info.output_shape;
        if (L.shape.size() == 3) {
            L.channels = L.shape[0];
            L.height = L.shape[1];
            L.width = L.shape[2];
        } else if (L.shape.size() == 1) {
            L.channels = L.shape[0];
        } else {
            throw Error("layer '" + info.name + "' does not output feature maps [C,H,W] or features [F]: "
                        "choose conv layers or 1-D layers with --layers");
        }
        L.ch.resize(size_t(L.channels));
        state.push_back(std::move(L));
        LayerPatches lp;
        lp.name = info.name;
        lp.output_shape = info.output_shape;
        lp.rf = info.rf;
        lp.gradient_boxes = opts.gradient_boxes || info.rf.kind == ReceptiveField::Kind::Unknown;
        id.layers.push_back(std::move(lp));
    }

    // This shard's batches.
    std::vector<int64_t> shard_batches;
    for (int64_t b = opts.shard_index; b < num_batches; b += opts.shard_count) shard_batches.push_back(b);
    const int64_t total = static_cast<int64_t>(shard_batches.size());

    // Resume.
    int64_t position = 0, images_scanned = 0;
    if (!opts.checkpoint_path.empty() && std::filesystem::exists(opts.checkpoint_path)) {
        const std::string what = "checkpoint '" + opts.checkpoint_path + "'";
        nlohmann::json j;
        try {
            j = nlohmann::json::parse(read_file(opts.checkpoint_path));
        } catch (const nlohmann::json::exception&) {
            throw Error(what + " is not valid JSON (truncated or not a checkpoint): delete it to start over");
        }
        if (!j.is_object() || j.value("format", "") != kCheckpointFormat)
            throw Error(what + " is not a top-patches checkpoint: choose another --checkpoint file");
        TopPatchesResult saved = top_patches_from_json(j, what);
        check_same_scan(saved, id, what, "this scan",
                        "use the same model, data and options, or delete the checkpoint to start over");
        if (saved.shard_index != id.shard_index || saved.shard_count != id.shard_count)
            throw Error(what + " is from shard " + std::to_string(saved.shard_index) + "/" +
                        std::to_string(saved.shard_count) + ", not " + std::to_string(id.shard_index) + "/" +
                        std::to_string(id.shard_count) + ": use that shard's checkpoint file");
        position = j.at("checkpoint_position").get<int64_t>();
        if (position < 0 || position > total) throw Error(what + " has an invalid position: delete it to start over");
        images_scanned = saved.images_scanned;
        for (size_t i = 0; i < state.size(); ++i) {
            if (saved.layers[i].channels.size() != state[i].ch.size())
                throw Error(what + " has another channel count for layer '" + state[i].name +
                            "': delete it to start over");
            for (size_t c = 0; c < state[i].ch.size(); ++c)
                state[i].ch[c] = from_patches(saved.layers[i].channels[c], images_scanned);
        }
    }

    // Stream the remaining batches.
    std::vector<int64_t> todo_indices;
    for (int64_t p = position; p < total; ++p) {
        const int64_t b = shard_batches[size_t(p)];
        const int64_t end = std::min(n, (b + 1) * opts.batch_size);
        todo_indices.insert(todo_indices.end(), indices.begin() + b * opts.batch_size, indices.begin() + end);
    }
    if (position < total) {
        BatchLoader loader(data, std::move(todo_indices), opts.batch_size, pre);
        c10::InferenceMode inference;
        Batch batch;
        const size_t k = static_cast<size_t>(opts.k);
        while (loader.next(batch)) {
            TapResult taps = model.forward_taps(batch.images, names);
            for (auto& L : state) {
                at::Tensor t = taps.taps.at(L.name);
                if (t.scalar_type() != at::kFloat) t = t.to(at::kFloat);
                t = t.reshape({t.size(0), L.channels, -1}).contiguous();
                update_layer(L, t, batch.indices, batch.labels, k, opts.lowest);
            }
            images_scanned += static_cast<int64_t>(batch.indices.size());
            ++position;
            const bool save = !opts.checkpoint_path.empty() &&
                              (position % std::max<int64_t>(1, opts.checkpoint_every) == 0 || position == total);
            if (save) write_checkpoint(opts.checkpoint_path, state, id, position, images_scanned);
            try {
                report_progress(context.progress, double(position) / double(total));
            } catch (const Cancelled&) {
                if (!opts.checkpoint_path.empty() && !save)
                    write_checkpoint(opts.checkpoint_path, state, id, position, images_scanned);
                throw;
            }
        }
    } else {
        report_progress(context.progress, 1.0);
    }

    TopPatchesResult r = make_result(state, id, images_scanned);
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

nlohmann::json top_patches_to_json(const TopPatchesResult& r) {
    nlohmann::json j;
    j["format"] = kFormat;
    j["model"] = {{"path", r.model_path}, {"sha256", r.model_hash}};
    j["data"] = {{"spec", r.data_spec},
                 {"hash", r.data_hash},
                 {"labels", r.data_labels},
                 {"selected", r.num_selected},
                 {"indices_sha256", r.indices_hash},
                 {"class_names", r.class_names}};
    j["preprocess"] = {{"input_shape", r.preprocess.input_shape},
                       {"mean", r.preprocess.mean},
                       {"std", r.preprocess.std},
                       {"resize", r.preprocess.resize},
                       {"pixel_range", r.preprocess.pixel_range},
                       {"bgr", r.preprocess.bgr},
                       {"as_is", r.preprocess.as_is}};
    j["options"] = {{"k", r.k}, {"lowest", r.lowest}, {"batch_size", r.batch_size},
                    {"histogram_bins", r.histogram_bins}, {"histogram_mantissa_bits", kHistogramMantissaBits}};
    j["shard"] = {{"index", r.shard_index}, {"count", r.shard_count}};
    j["images_scanned"] = r.images_scanned;
    auto& layers = j["layers"] = nlohmann::json::array();
    for (const auto& L : r.layers) {
        nlohmann::json lj;
        lj["name"] = L.name;
        lj["output_shape"] = L.output_shape;
        lj["receptive_field"] = to_json(L.rf);
        lj["box_source"] = L.gradient_boxes ? "gradient" : "receptive_field";
        auto& chans = lj["channels"] = nlohmann::json::array();
        for (size_t c = 0; c < L.channels.size(); ++c) {
            const auto& ch = L.channels[c];
            nlohmann::json cj;
            cj["channel"] = c;
            auto& top = cj["top"] = nlohmann::json::array();
            for (const auto& e : ch.top) top.push_back(entry_json(e));
            auto& bottom = cj["bottom"] = nlohmann::json::array();
            for (const auto& e : ch.bottom) bottom.push_back(entry_json(e));
            auto& dom = cj["dominant_labels"] = nlohmann::json::array();
            for (const auto& [label, count] : dominant_labels(ch))
                dom.push_back({{"label", label}, {"name", class_name(r.class_names, label)}, {"count", count}});
            cj["dead_count"] = ch.dead;
            cj["dead_fraction"] = r.images_scanned > 0 ? double(ch.dead) / double(r.images_scanned) : 0.0;
            const Histogram h = make_histogram(ch, r.histogram_bins);
            nlohmann::json edges = nlohmann::json::array();
            for (float e : h.edges) edges.push_back(json_float(e));
            cj["histogram"] = {{"min", json_float(ch.min)}, {"max", json_float(ch.max)},
                               {"edges", edges}, {"counts", h.counts}};
            // The mergeable state: counts per fine bucket (see kHistogramMantissaBits).
            std::vector<uint32_t> keys;
            std::vector<int64_t> counts;
            for (const auto& [key, count] : ch.fine) {
                keys.push_back(key);
                counts.push_back(count);
            }
            cj["fine_histogram"] = {{"keys", keys}, {"counts", counts}};
            chans.push_back(std::move(cj));
        }
        layers.push_back(std::move(lj));
    }
    return j;
}

TopPatchesResult top_patches_from_json(const nlohmann::json& j, const std::string& what) {
    const std::string format = j.is_object() ? j.value("format", "") : "";
    if (format != kFormat && format != kCheckpointFormat)
        throw Error(what + " is not a top_patches.json written by convscope top-patches");
    TopPatchesResult r;
    try {
        r.model_path = j.at("model").at("path").get<std::string>();
        r.model_hash = j.at("model").at("sha256").get<std::string>();
        const auto& d = j.at("data");
        r.data_spec = d.at("spec").get<std::string>();
        r.data_hash = d.at("hash").get<std::string>();
        r.data_labels = d.at("labels").get<std::string>();
        r.num_selected = d.at("selected");
        r.indices_hash = d.at("indices_sha256").get<std::string>();
        r.class_names = d.at("class_names").get<std::vector<std::string>>();
        const auto& p = j.at("preprocess");
        r.preprocess.input_shape = p.at("input_shape").get<std::vector<int64_t>>();
        r.preprocess.mean = p.at("mean").get<std::vector<double>>();
        r.preprocess.std = p.at("std").get<std::vector<double>>();
        r.preprocess.as_is = p.at("as_is").get<bool>();
        r.preprocess.resize = p.value("resize", int64_t(0));
        r.preprocess.pixel_range = p.value("pixel_range", 1.0);
        r.preprocess.bgr = p.value("bgr", false);
        const auto& o = j.at("options");
        r.k = o.at("k");
        r.lowest = o.at("lowest").get<bool>();
        r.batch_size = o.at("batch_size");
        r.histogram_bins = o.at("histogram_bins");
        if (o.at("histogram_mantissa_bits").get<int>() != kHistogramMantissaBits)
            throw Error(what + " uses another histogram resolution: it was written by another convscope version");
        r.shard_index = j.at("shard").at("index");
        r.shard_count = j.at("shard").at("count");
        r.images_scanned = j.at("images_scanned");
        for (const auto& lj : j.at("layers")) {
            LayerPatches L;
            L.name = lj.at("name").get<std::string>();
            L.output_shape = lj.at("output_shape").get<std::vector<int64_t>>();
            L.rf = rf_from_json(lj.at("receptive_field"));
            L.gradient_boxes = lj.at("box_source").get<std::string>() == "gradient";
            for (const auto& cj : lj.at("channels")) {
                ChannelPatches c;
                for (const auto& e : cj.at("top")) c.top.push_back(entry_from_json(e));
                for (const auto& e : cj.at("bottom")) c.bottom.push_back(entry_from_json(e));
                c.dead = cj.at("dead_count");
                c.min = static_cast<float>(cj.at("histogram").at("min").get<double>());
                c.max = static_cast<float>(cj.at("histogram").at("max").get<double>());
                const auto keys = cj.at("fine_histogram").at("keys").get<std::vector<uint32_t>>();
                const auto counts = cj.at("fine_histogram").at("counts").get<std::vector<int64_t>>();
                if (keys.size() != counts.size()) throw Error(what + " has a damaged histogram");
                for (size_t i = 0; i < keys.size(); ++i) c.fine.emplace_back(keys[i], counts[i]);
                L.channels.push_back(std::move(c));
            }
            r.layers.push_back(std::move(L));
        }
    } catch (const nlohmann::json::exception& e) {
        throw Error(what + " is incomplete or damaged (" + std::string(e.what()) +
                    "): use the top_patches.json that convscope top-patches wrote");
    }
    if (r.shard_count < 1 || r.shard_index < 0 || r.shard_index >= r.shard_count || r.k < 1)
        throw Error(what + " has an invalid shard or k: use the top_patches.json that convscope top-patches wrote");
    return r;
}

// ------------------------------------------------------------------------------------------------

std::vector<Box> gradient_boxes(const Model& model, const std::string& layer,
                                const at::Tensor& images_nchw,
                                const std::vector<std::array<int64_t, 3>>& units) {
    const int64_t N = images_nchw.size(0);
    if (static_cast<int64_t>(units.size()) != N)
        throw Error("gradient_boxes needs one unit per image (" + std::to_string(N) + " images, " +
                    std::to_string(units.size()) + " units)");
    std::vector<Box> boxes;
    if (N == 0) return boxes;
    std::vector<int64_t> ch(static_cast<size_t>(N)), ys(static_cast<size_t>(N)), xs(static_cast<size_t>(N));
    for (int64_t i = 0; i < N; ++i) {
        ch[size_t(i)] = units[size_t(i)][0];
        ys[size_t(i)] = units[size_t(i)][1];
        xs[size_t(i)] = units[size_t(i)][2];
    }
    const auto opt = torch::TensorOptions().dtype(torch::kLong);
    const at::Tensor rows = torch::arange(N, opt);
    const at::Tensor c_t = torch::tensor(ch, opt), y_t = torch::tensor(ys, opt), x_t = torch::tensor(xs, opt);
    // Images of a batch are independent in eval mode, so the sum of the units (one per image)
    // gives each image the gradient of its own unit.
    auto scalar_of = [&](const TapResult& r) {
        const at::Tensor& t = r.taps.at(layer);
        if (t.dim() == 4) return t.index({rows, c_t, y_t, x_t}).sum();
        if (t.dim() == 2) return t.index({rows, c_t}).sum();
        throw Error("layer '" + layer + "' has no [C,H,W] or [F] output");
    };
    const auto g = model.gradients(images_nchw, scalar_of, {}, {layer});
    const at::Tensor mag = g.input_grad.abs().sum(1).ne(0).to(torch::kCPU).contiguous();  // [N,H,W] bool
    const int64_t H = mag.size(1), W = mag.size(2);
    const bool* p = mag.data_ptr<bool>();
    for (int64_t i = 0; i < N; ++i) {
        Box b{H, W, 0, 0};
        for (int64_t y = 0; y < H; ++y)
            for (int64_t x = 0; x < W; ++x)
                if (p[(i * H + y) * W + x]) {
                    b.y0 = std::min(b.y0, y);
                    b.x0 = std::min(b.x0, x);
                    b.y1 = std::max(b.y1, y + 1);
                    b.x1 = std::max(b.x1, x + 1);
                }
        if (b.y1 <= b.y0) b = Box{0, 0, H, W};  // no gradient at all: the unit is flat here
        boxes.push_back(b);
    }
    return boxes;
}

std::vector<std::vector<cv::Mat>> patch_crops(const Dataset& data, const Preprocess& pre,
                                              const std::vector<std::vector<PatchEntry>>& entries,
                                              int size_px) {
    std::vector<std::vector<cv::Mat>> out(entries.size());
    std::vector<std::pair<int64_t, std::pair<size_t, size_t>>> todo;  // image, (list, slot)
    for (size_t i = 0; i < entries.size(); ++i) {
        out[i].resize(entries[i].size());
        for (size_t j = 0; j < entries[i].size(); ++j) todo.push_back({entries[i][j].image, {i, j}});
    }
    std::sort(todo.begin(), todo.end());
    constexpr size_t kChunk = 64;  // images decoded at a time
    size_t t = 0;
    while (t < todo.size()) {
        std::vector<int64_t> images;
        size_t end = t;
        while (end < todo.size() && (images.size() < kChunk || todo[end].first == images.back())) {
            if (images.empty() || images.back() != todo[end].first) images.push_back(todo[end].first);
            ++end;
        }
        const at::Tensor shown = pre.to_display(data.batch(images, pre));  // [n,H,W,C] uint8
        const int64_t H = shown.size(1), W = shown.size(2);
        size_t row = 0;
        for (size_t i = t; i < end; ++i) {
            while (images[row] != todo[i].first) ++row;
            const auto [li, slot] = todo[i].second;
            const Box& b = entries[li][slot].box;
            const int64_t y0 = std::clamp<int64_t>(b.y0, 0, H - 1), x0 = std::clamp<int64_t>(b.x0, 0, W - 1);
            const int64_t y1 = std::clamp<int64_t>(b.y1, y0 + 1, H), x1 = std::clamp<int64_t>(b.x1, x0 + 1, W);
            const at::Tensor crop = shown[int64_t(row)].slice(0, y0, y1).slice(1, x0, x1).contiguous();
            out[li][slot] = resize_to_fit(image_from_hwc_uint8(crop), size_px);
        }
        t = end;
    }
    return out;
}

}  // namespace convscope
