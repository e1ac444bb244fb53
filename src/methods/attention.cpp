#include "convscope/methods/attention.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace {
constexpr EnumTable<HeadFusion, 3> kFusionNames = {
    {{HeadFusion::Mean, "mean"}, {HeadFusion::Max, "max"}, {HeadFusion::Min, "min"}}};

std::string no_attention_message(const Model& model) {
    std::string msg = "the model has no attention layers (no softmax over keys read by a matmul, no "
                      "nn.MultiheadAttention that could be made explicit)";
    for (const auto& note : model.attention_notes()) msg += "; " + note;
    return msg + ": attention maps and rollout need a transformer; use grad-cam, saliency or occlusion instead";
}
}  // namespace

const char* head_fusion_name(HeadFusion f) { return enum_name(kFusionNames, f); }
HeadFusion parse_head_fusion(const std::string& name) { return parse_enum(kFusionNames, name, "head fusion"); }

std::vector<std::string> resolve_attention_layers(const Model& model, const std::vector<std::string>& wanted) {
    const auto all = model.attention_layers();
    if (all.empty()) throw Error(no_attention_message(model));
    if (wanted.empty()) return all;
    std::vector<std::string> out;
    std::set<std::string> seen;
    for (const auto& w : wanted) {
        bool found = false;
        for (const auto& a : all)
            if (a == w || a.rfind(w + ".", 0) == 0) {
                found = true;
                if (seen.insert(a).second) out.push_back(a);
            }
        if (!found)
            throw Error("'" + w + "' holds no attention layer: the attention layers are " + detail::join(all, ", ") +
                        " (a block's or module's name picks the ones inside it)");
    }
    return out;
}

AttentionResult attention(const Model& model, const at::Tensor& images, const AttentionOptions& o,
                          const RunContext& context) {
    check_input(model, images);
    if (o.batch_size < 1) throw UsageError("the batch size must be at least 1");
    const auto names = resolve_attention_layers(model, o.layers);
    AttentionResult r;
    std::map<std::string, std::vector<at::Tensor>> parts;
    std::vector<at::Tensor> outputs;
    const int64_t n = images.size(0);
    for (int64_t first = 0; first < n; first += o.batch_size) {
        const int64_t end = std::min(n, first + o.batch_size);
        auto taps = model.forward_taps(images.slice(0, first, end), names);
        outputs.push_back(taps.output);
        for (const auto& name : names) parts[name].push_back(taps.taps.at(name));
        report_progress(context.progress, double(end) / double(n));
    }
    r.output = torch::cat(outputs, 0);
    for (const auto& name : names) {
        LayerAttention la;
        la.layer = name;
        la.layout = model.layer(name).layout;
        at::Tensor p = torch::cat(parts[name], 0).to(torch::kFloat);
        if (la.layout.windows == 1) p = p.squeeze(1);
        la.probs = p.contiguous();
        r.layers.push_back(std::move(la));
    }
    return r;
}

at::Tensor query_attention(const LayerAttention& a, int64_t i, int64_t j) {
    const Layout& l = a.layout;
    if (l.grid_h <= 0)
        throw Error("the queries of attention layer '" + a.layer +
                    "' are not on a known grid: pass --grid HxW with the patch grid");
    const int64_t n = a.probs.size(0);
    if (i < 0) {
        const int64_t extra = l.extra_front + l.extra_back;
        if (l.window > 0 || j < 0 || j >= extra)
            throw Error("attention layer '" + a.layer + "' has " + std::to_string(l.window > 0 ? 0 : extra) +
                        " extra tokens (such as a class token): ask for a query on the " + std::to_string(l.grid_h) +
                        "x" + std::to_string(l.grid_w) + " grid instead");
    } else if (i >= l.grid_h || j < 0 || j >= l.grid_w) {
        throw Error("query " + std::to_string(i) + "," + std::to_string(j) + " lies outside attention layer '" +
                    a.layer + "''s " + std::to_string(l.grid_h) + "x" + std::to_string(l.grid_w) +
                    " grid: rows 0.." + std::to_string(l.grid_h - 1) + ", columns 0.." + std::to_string(l.grid_w - 1));
    }
    if (l.window == 0) {
        // Global: the query's row over the grid's key columns.
        const int64_t grid = l.grid_h * l.grid_w;
        const int64_t q = i < 0 ? (j < l.extra_front ? j : l.extra_front + grid + (j - l.extra_front))
                                : l.extra_front + i * l.grid_w + j;
        return a.probs.select(2, q).narrow(2, l.extra_front, grid).reshape({n, l.heads, l.grid_h, l.grid_w}).contiguous();
    }
    // Windowed (Swin): the grid is padded to whole windows and shifted by -shift cyclically
    // before it is cut into windows, row by row.
    const int64_t ws = l.window;
    const int64_t ph = (l.grid_h + ws - 1) / ws * ws, pw = (l.grid_w + ws - 1) / ws * ws;
    auto shifted = [&](int64_t y, int64_t x) {
        const int64_t sy = ((y - l.shift) % ph + ph) % ph, sx = ((x - l.shift) % pw + pw) % pw;
        return std::make_pair(sy, sx);
    };
    const auto [qy, qx] = shifted(i, j);
    const int64_t window = (qy / ws) * (pw / ws) + qx / ws;
    const int64_t q = (qy % ws) * ws + qx % ws;
    at::Tensor out = torch::zeros({n, l.heads, l.grid_h, l.grid_w}, torch::kFloat);
    const at::Tensor row = a.probs.select(1, window).select(2, q);  // [N,heads,k]
    for (int64_t y = 0; y < l.grid_h; ++y)
        for (int64_t x = 0; x < l.grid_w; ++x) {
            const auto [ky, kx] = shifted(y, x);
            if (ky / ws != qy / ws || kx / ws != qx / ws) continue;
            out.select(2, y).select(2, x).copy_(row.select(2, (ky % ws) * ws + kx % ws));
        }
    return out;
}

namespace {

void check_rollout_inputs(const std::vector<at::Tensor>& probs, const Layout& l) {
    CONVSCOPE_CHECK(!probs.empty(), "rollout has layers");
    for (const auto& p : probs)
        CONVSCOPE_CHECK(p.dim() == 4 && p.size(2) == p.size(3) && p.size(2) == probs[0].size(2),
                        "rollout takes square global attention of one token count");
    if (l.grid_h <= 0 || l.extra_front + l.grid_h * l.grid_w + l.extra_back != probs[0].size(2))
        throw Error("the attention's " + std::to_string(probs[0].size(2)) +
                    " tokens are not on a known grid: pass --grid HxW with the patch grid");
}

// [N,T,T] -> the map [N,h,w] from the class token's row (or the mean row).
at::Tensor grid_map(const at::Tensor& r, const Layout& l) {
    const int64_t n = r.size(0), grid = l.grid_h * l.grid_w;
    const at::Tensor row = l.extra_front > 0 ? r.select(1, 0)
                           : l.extra_back > 0 ? r.select(1, l.extra_front + grid)
                                              : r.mean(1);
    return row.narrow(1, l.extra_front, grid).reshape({n, l.grid_h, l.grid_w}).contiguous();
}

}  // namespace

at::Tensor attention_rollout(const std::vector<at::Tensor>& probs, const Layout& l, const RolloutOptions& o) {
    if (!(o.discard_ratio >= 0.0 && o.discard_ratio < 1.0))
        throw UsageError("--discard-ratio must be at least 0 and below 1");
    check_rollout_inputs(probs, l);
    torch::NoGradGuard no_grad;
    const int64_t n = probs[0].size(0), t = probs[0].size(2);
    const at::Tensor eye = torch::eye(t, torch::kDouble).expand({n, t, t});
    at::Tensor r = eye.clone();
    for (const auto& p : probs) {
        at::Tensor a = p.to(torch::kDouble);
        a = o.fusion == HeadFusion::Mean ? a.mean(1) : o.fusion == HeadFusion::Max ? std::get<0>(a.max(1))
                                                                                    : std::get<0>(a.min(1));
        if (o.discard_ratio > 0) {
            // The smallest entries of each image's matrix, the (0,0) entry kept.
            a = a.clone();
            const auto k = static_cast<int64_t>(static_cast<double>(t * t) * o.discard_ratio);
            at::Tensor flat = a.view({n, t * t});
            if (k > 0) {
                const at::Tensor idx = std::get<1>(flat.topk(k, 1, /*largest=*/false, /*sorted=*/true));
                const at::Tensor keep0 = idx != 0;
                flat.scatter_(1, idx, torch::where(keep0, torch::zeros_like(idx, torch::kDouble),
                                                   flat.gather(1, idx)));
            }
        }
        a = (a + eye) / 2.0;
        a = a / a.sum(-1, true);
        r = torch::bmm(a, r);
    }
    return grid_map(r, l).to(torch::kFloat);
}

at::Tensor attention_gradient_rollout(const std::vector<at::Tensor>& probs, const std::vector<at::Tensor>& grads,
                                      const Layout& l) {
    check_rollout_inputs(probs, l);
    CONVSCOPE_CHECK(grads.size() == probs.size(), "one gradient per attention layer");
    torch::NoGradGuard no_grad;
    const int64_t n = probs[0].size(0), t = probs[0].size(2);
    at::Tensor r = torch::eye(t, torch::kDouble).expand({n, t, t}).clone();
    for (size_t i = 0; i < probs.size(); ++i) {
        const at::Tensor a = (grads[i].to(torch::kDouble) * probs[i].to(torch::kDouble)).clamp_min(0).mean(1);
        r = r + torch::bmm(a, r);
    }
    return grid_map(r, l).to(torch::kFloat);
}

std::vector<std::string> rollout_layers(const Model& model) {
    const auto all = model.attention_layers();
    if (all.empty()) throw Error(no_attention_message(model));
    for (const auto& name : all)
        if (model.layer(name).layout.windows != 1)
            throw Error("the model's attention is windowed (" + name + ": " + layout_summary(model.layer(name).layout) +
                        "): rollout needs attention over all tokens in every layer; use grad-cam (on the last "
                        "block's norm) or `convscope attention` for the windows");
    return all;
}

bool rollout_applies(const Model& model) {
    const auto all = model.attention_layers();
    if (all.empty()) return false;
    for (const auto& name : all)
        if (model.layer(name).layout.windows != 1) return false;
    return true;
}

}  // namespace convscope
