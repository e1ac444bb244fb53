#include "methods/incremental/engine.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/torch.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/graph.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/incremental/correction.hpp"
#include "methods/incremental/kernels.hpp"

namespace convscope::incremental {

namespace {

at::Tensor first_tensor(const c10::IValue& v) {
    if (v.isTensor()) return v.toTensor();
    if (v.isTuple() && !v.toTupleRef().elements().empty() && v.toTupleRef().elements()[0].isTensor())
        return v.toTupleRef().elements()[0].toTensor();
    throw Error("the model's chosen output is not a tensor: choose a tensor output with --output");
}
}  // namespace

struct Engine::Impl {
    const Model& model;
    Plan plan;                       // configured copy
    std::vector<at::Tensor> clean;   // per slot: the clean activation [G,C,H,W]
    std::vector<StepState> state;    // per step
    at::Tensor head_clean;           // [G,O] the head's output for the clean images
    at::Tensor head_bf16;            // the head's weight in bfloat16 (bfloat16 mode)
    std::shared_ptr<jit::GraphFunction> clean_fn;  // output + clean activations of all slots
    std::shared_ptr<jit::GraphFunction> grad_fn;   // the same with a zero probe at each corrected step
    std::shared_ptr<jit::GraphFunction> rest_fn;   // output from the boundary tensors
    // The same graphs run node by node where they have no blocks (no compilation on the first
    // run, which every call of occlusion() would pay: the engine lives for one call).
    std::optional<detail::GraphRunner> clean_runner, rest_runner;
    at::Tensor image;
    at::Tensor clean_out;  // the model's output for the clean images
    at::Tensor classes;    // [G,m] the corrected classes (int64), set with the images
    // set_output_weights: per leaf the pulled-back weights [G,h,w] float64, and the clean sums [G,K].
    std::vector<at::Tensor> leaf_weights;
    at::Tensor clean_sums;

    Impl(const Model& m, const Plan& p, const EngineSettings& s) : model(m), plan(p) {
        configure(plan, s);
        state.resize(plan.steps.size());
        clean_fn = clean_function(plan, {});
        try {
            clean_runner.emplace(clean_fn->graph());
        } catch (const std::exception&) {
            clean_runner.reset();  // blocks, or an op without an operation: the GraphFunction runs it
        }
        auto g = rest_graph(plan);
        try {
            rest_runner.emplace(g);
        } catch (const std::exception&) {
            rest_runner.reset();
        }
        rest_fn = std::make_shared<jit::GraphFunction>("convscope_occlusion_rest", g, nullptr,
                                                       jit::ExecutorExecutionMode::SIMPLE);
    }
    bool delta_bf16() const { return plan.settings.bf16 && cpu_has_bf16(); }
    // Whether this step convolves its change in bfloat16: a convolution in that mode, unless it
    // has few weights per output (a first layer on grey images), where bfloat16's fixed costs
    // outweigh the arithmetic.
    bool bf16_step(const Step& st) const {
        constexpr int64_t kMinBf16Taps = 32;
        return delta_bf16() && st.kind == StepKind::Window && st.op == WindowOp::Conv &&
               st.weight.numel() / st.weight.size(0) >= kMinBf16Taps;
    }
    void clean_pass();
    at::Tensor set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm);
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs, bool weighted);
    at::Tensor run_chunk(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                         const std::vector<int64_t>& xs, bool weighted, int& unplanned_cut) const;
    void set_output_weights(const at::Tensor& weights_ghw);
    at::Tensor weighted_sums(const std::vector<std::optional<IncValue>>& vals, const std::vector<int64_t>& img) const;
    IncValue run_step(size_t i, std::vector<std::optional<IncValue>>& vals, bool& capped) const;
    at::Tensor run_head(const IncValue& v) const;
    IncValue run_resize(const Step& st, const IncValue& in, int64_t H, int64_t W) const;
};

// Runs the clean images through the model and keeps every slot's activation (and each window
// op's padded input). With corrected classes, the same pass records autograd and the
// correction's gradients are computed from it.
void Engine::Impl::clean_pass() {
    std::vector<size_t> lin;
    if (classes.defined())
        for (size_t i = 0; i < plan.steps.size(); ++i)
            if (plan.steps[i].linear) lin.push_back(i);
    if (!lin.empty() && !grad_fn) grad_fn = clean_function(plan, lin);
    at::AutoGradMode grad_mode(!lin.empty());
    jit::Stack stack{c10::IValue(model.module()._ivalue()), image};
    std::vector<at::Tensor> probes;
    for (size_t i : lin) {
        const auto& sh = plan.slots[plan.steps[i].output].shape;
        probes.push_back(at::zeros({image.size(0), sh[1], sh[2], sh[3]}, image.options()).requires_grad_(true));
        stack.push_back(probes.back());
    }
    if (lin.empty() && clean_runner) stack = clean_runner->run(std::move(stack));
    else (lin.empty() ? clean_fn : grad_fn)->run(stack);
    const auto& outs = stack[0].toTupleRef().elements();
    clean.assign(plan.slots.size(), at::Tensor());
    clean[0] = image;
    for (size_t s = 1; s < plan.slots.size(); ++s) clean[s] = outs[s].toTensor().detach().contiguous();
    for (size_t i = 0; i < plan.steps.size(); ++i) {
        const Step& st = plan.steps[i];
        StepState& ss = state[i];
        ss.grad_out = ss.grad_in = at::Tensor();
        if (st.kind != StepKind::Window) continue;
        ss.padded = at::constant_pad_nd(clean[st.inputs[0]],
                                        {st.ax[1].p, st.ax[1].pad_hi, st.ax[0].p, st.ax[0].pad_hi}, st.pad_value)
                        .contiguous();
    }
    clean_out = first_tensor(outs[0]);
    const Head& head = plan.head;
    if (head.slot >= 0)
        head_clean = at::linear(clean[head.slot].flatten(1), head.weight,
                                head.bias.defined() ? c10::optional<at::Tensor>(head.bias) : c10::nullopt)
                         .contiguous();
    if (lin.empty()) return;
    correction_gradients(plan, lin, clean_out, probes, classes, state);
    clean_out = clean_out.detach();
}


IncValue Engine::Impl::run_step(size_t i, std::vector<std::optional<IncValue>>& vals, bool& capped) const {
    const Step& st = plan.steps[i];
    const StepState& ss = state[i];
    IncValue out;
    const auto& os = plan.slots[st.output].shape;
    const int64_t H = os[2], W = os[3];
    if (st.in_place) {
        out = std::move(*vals[st.inputs[0]]);
        vals[st.inputs[0]].reset();
        at::relu_(out.patch);
        return out;
    }
    if (st.kind == StepKind::Pointwise) {
        const IncValue& in = *vals[st.inputs[0]];
        jit::Stack stack(st.args.begin(), st.args.end());
        stack[st.dyn_args[0]] = in.patch;
        (*st.operation)(stack);
        out = in;
        out.patch = stack.back().toTensor().contiguous();
        return out;
    }
    const size_t B = vals[st.inputs[0]]->py.size();
    if (st.kind == StepKind::Window) {
        const IncValue& in = *vals[st.inputs[0]];
        out.img = in.img;
        out.y0.resize(B), out.y1.resize(B), out.x0.resize(B), out.x1.resize(B);
        // Only convolutions are thresholded: their cut-off changes get the first-order correction.
        const bool may_cap = st.op == WindowOp::Conv;
        const double tau = plan.settings.tau;
        for (size_t b = 0; b < B; ++b) {
            capped |= window_range(st.ax[0], in.y0[b], in.y1[b], tau, may_cap, out.y0[b], out.y1[b]);
            capped |= window_range(st.ax[1], in.x0[b], in.x1[b], tau, may_cap, out.x0[b], out.x1[b]);
        }
        out.h = place(out.y0, out.y1, H, out.py);
        out.w = place(out.x0, out.x1, W, out.px);
        std::vector<int64_t> wy(B), wx(B);
        for (size_t b = 0; b < B; ++b) {
            wy[b] = out.py[b] * st.ax[0].s;  // in padded coordinates
            wx[b] = out.px[b] * st.ax[1].s;
        }
        const int64_t L = (out.h - 1) * st.ax[0].s + (st.ax[0].k - 1) * st.ax[0].d + 1;
        const int64_t Lw = (out.w - 1) * st.ax[1].s + (st.ax[1].k - 1) * st.ax[1].d + 1;
        const std::vector<int64_t> stride{st.ax[0].s, st.ax[1].s};
        const std::vector<int64_t> dil{st.ax[0].d, st.ax[1].d};
        const std::vector<int64_t> kernel{st.ax[0].k, st.ax[1].k};
        const std::vector<int64_t> zero{0, 0};
        if (bf16_step(st)) {
            // Approximate mode: the convolution of the change (linear, no bias) in bfloat16, added
            // to the clean output; rounding errors scale with the change, not the activations.
            const at::Tensor change = gather_change(ss.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw);
            const at::Tensor delta =
                at::conv2d(change, ss.weight_bf16, at::Tensor(), stride, zero, dil, st.groups).contiguous();
            out.patch = clean_windows(clean[st.output], out.img, out.py, out.px, out.h, out.w,
                                      reinterpret_cast<const uint16_t*>(delta.data_ptr<c10::BFloat16>()));
            return out;
        }
        if (st.op == WindowOp::MaxPool) {
            out.patch = max_pool(ss.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw, st.ax[0], st.ax[1], out.h, out.w);
            return out;
        }
        const at::Tensor win = gather(ss.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw);
        out.patch = (st.op == WindowOp::Conv ? at::conv2d(win, st.weight, st.bias, stride, zero, dil, st.groups)
                                             : at::avg_pool2d(win, kernel, stride, zero, false, true, st.divisor))
                        .contiguous();
        return out;
    }
    if (st.kind == StepKind::Resize) return run_resize(st, *vals[st.inputs[0]], H, W);
    // Binary ops and concatenation: the union of the inputs' changes.
    out.img = vals[st.inputs[0]]->img;
    out.y0.assign(B, std::numeric_limits<int64_t>::max());
    out.x0.assign(B, std::numeric_limits<int64_t>::max());
    out.y1.assign(B, std::numeric_limits<int64_t>::min());
    out.x1.assign(B, std::numeric_limits<int64_t>::min());
    for (int s : st.inputs) {
        const IncValue& in = *vals[s];
        for (size_t b = 0; b < B; ++b) {
            out.y0[b] = std::min(out.y0[b], in.y0[b]);
            out.y1[b] = std::max(out.y1[b], in.y1[b]);
            out.x0[b] = std::min(out.x0[b], in.x0[b]);
            out.x1[b] = std::max(out.x1[b], in.x1[b]);
        }
    }
    out.h = place(out.y0, out.y1, H, out.py);
    out.w = place(out.x0, out.x1, W, out.px);
    std::vector<at::Tensor> parts;
    for (int s : st.inputs) parts.push_back(extract(clean[s], *vals[s], out.py, out.px, out.h, out.w));
    if (st.kind == StepKind::Cat) {
        out.patch = at::cat(parts, 1);
    } else {
        jit::Stack stack(st.args.begin(), st.args.end());
        stack[st.dyn_args[0]] = parts[0];
        stack[st.dyn_args[1]] = parts[1];
        (*st.operation)(stack);
        out.patch = stack.back().toTensor();
    }
    out.patch = out.patch.contiguous();
    return out;
}

// A resize: the outputs the changed rows and columns reach, from windows of the input that hold
// every row and column they read.
IncValue Engine::Impl::run_resize(const Step& st, const IncValue& in, int64_t H, int64_t W) const {
    const size_t B = in.py.size();
    IncValue out;
    out.img = in.img;
    out.y0.resize(B), out.y1.resize(B), out.x0.resize(B), out.x1.resize(B);
    for (size_t b = 0; b < B; ++b) {
        resize_range(st.rz[0], in.y0[b], in.y1[b], out.y0[b], out.y1[b]);
        resize_range(st.rz[1], in.x0[b], in.x1[b], out.x0[b], out.x1[b]);
    }
    out.h = place(out.y0, out.y1, H, out.py);
    out.w = place(out.x0, out.x1, W, out.px);
    // The input rows [a, e) the box reads, per position; one window length for all, shifted inside.
    auto windows = [&](const ResizeAxis& r, const std::vector<int64_t>& start, int64_t len, int64_t n,
                       std::vector<int64_t>& w) {
        int64_t L = 1;
        for (size_t b = 0; b < B; ++b) L = std::max(L, r.i1[start[b] + len - 1] + 1 - r.i0[start[b]]);
        L = std::min(L, n);
        w.resize(B);
        for (size_t b = 0; b < B; ++b) w[b] = std::min(r.i0[start[b]], n - L);
        return L;
    };
    const auto& is = plan.slots[st.inputs[0]].shape;
    std::vector<int64_t> wy, wx;
    const int64_t L = windows(st.rz[0], out.py, out.h, is[2], wy);
    const int64_t Lw = windows(st.rz[1], out.px, out.w, is[3], wx);
    const at::Tensor win = gather(clean[st.inputs[0]], in, 0, 0, wy, wx, L, Lw);
    out.patch = resize(win, wy, wx, st.rz[0], st.rz[1], out.py, out.px, out.h, out.w);
    return out;
}

at::Tensor Engine::Impl::set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm) {
    torch::NoGradGuard no_grad;
    image = images_gchw.contiguous();
    classes = at::Tensor();
    leaf_weights.clear();  // weights belong to the images they were set for
    clean_sums = at::Tensor();
    if (plan.settings.corrected_classes > 0 && classes_gm.defined()) {
        CONVSCOPE_CHECK(classes_gm.dim() == 2 && classes_gm.size(0) == image.size(0),
                        "occlusion classes do not match the images");
        classes = classes_gm.to(at::kLong).contiguous();
    }
    clean_pass();
    return clean_out;
}

at::Tensor Engine::Impl::run(const at::Tensor& patches, const std::vector<int64_t>& img,
                                        const std::vector<int64_t>& ys, const std::vector<int64_t>& xs, bool weighted) {
    torch::NoGradGuard no_grad;
    const int64_t B = static_cast<int64_t>(ys.size());
    const int64_t G = image.size(0);
    for (int64_t g : img) CONVSCOPE_CHECK(g >= 0 && g < G, "occlusion image index out of range");
    for (size_t i = 0; i < plan.steps.size(); ++i)
        if (bf16_step(plan.steps[i]) && !state[i].weight_bf16.defined())
            state[i].weight_bf16 = plan.steps[i].weight.to(at::kBFloat16).contiguous();
    if (plan.head.slot >= 0 && delta_bf16() && !head_bf16.defined())
        head_bf16 = plan.head.weight.to(at::kBFloat16).contiguous();
    const at::Tensor all = patches.contiguous();
    // The positions are split among the threads, each running its share through every op alone:
    // the per-position patches are small, and waking threads for each small op costs more than
    // it gains (with two threads, op-level parallelism gave no speed-up at all on a 28x28 model).
    // Even a handful of positions is split: a batch of 6 took 1.3-2.3 ms in one share (each op
    // waking the other thread) and 0.5 ms in two.
    constexpr int64_t kMinChunk = 2;
    const int64_t chunks =
        at::in_parallel_region() ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), B / kMinChunk));
    for (;;) {
        std::vector<at::Tensor> outs(chunks);
        std::vector<int> unplanned(chunks, -1);
        auto one = [&](int64_t c) {
            const int64_t b0 = B * c / chunks, b1 = B * (c + 1) / chunks;
            auto part = [&](const std::vector<int64_t>& v) {
                return std::vector<int64_t>(v.begin() + b0, v.begin() + b1);
            };
            outs[c] = run_chunk(chunks == 1 ? all : all.slice(0, b0, b1), part(img), part(ys), part(xs), weighted,
                                unplanned[c]);
        };
        if (chunks == 1) {
            one(0);
        } else {
            at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
                torch::NoGradGuard worker_no_grad;  // grad mode is per thread
                for (int64_t c = begin; c < end; ++c) one(c);
            });
        }
        bool replan = false;
        for (int u : unplanned)
            if (u >= 0) {  // a cut the plan did not foresee: add the step to the corrected ones
                plan.steps[u].linear = true;
                replan = true;
            }
        if (!replan) return chunks == 1 ? outs[0] : at::cat(outs, 0);
        grad_fn.reset();
        clean_pass();
    }
}

// run() for one share of the positions, on the calling thread's ops. Sets unplanned_cut to a step
// that thresholding cut without a planned correction (and returns nothing): run() replans.
at::Tensor Engine::Impl::run_chunk(const at::Tensor& patches, const std::vector<int64_t>& img,
                                              const std::vector<int64_t>& ys, const std::vector<int64_t>& xs,
                                              bool weighted, int& unplanned_cut) const {
    const auto& P = plan;
    const size_t B = ys.size();
    std::vector<std::optional<IncValue>> vals(P.slots.size());
    IncValue in;
    in.patch = patches.contiguous();
    in.h = patches.size(2);
    in.w = patches.size(3);
    in.img = img;
    in.py = ys;
    in.px = xs;
    in.y0 = ys;
    in.x0 = xs;
    in.y1.resize(B);
    in.x1.resize(B);
    for (size_t b = 0; b < B; ++b) {
        in.y1[b] = ys[b] + in.h;
        in.x1[b] = xs[b] + in.w;
    }
    vals[0] = std::move(in);
    const int64_t m = classes.defined() ? classes.size(1) : 0;
    std::vector<double> corr(B * m, 0.0);
    for (size_t i = 0; i < P.steps.size(); ++i) {
        const Step& st = P.steps[i];
        if (weighted && P.tail[i]) continue;  // pulled back onto the leaves
        bool capped = false;
        vals[st.output] = run_step(i, vals, capped);
        if (m > 0 && capped) {
            if (!st.linear) {
                unplanned_cut = static_cast<int>(i);
                return {};
            }
            add_correction(st, state[i], clean[st.output], m, *vals[st.inputs[0]], *vals[st.output], corr);
        }
        for (int s : st.inputs)
            if (P.slots[s].last_use == static_cast<int>(i) && !P.slots[s].boundary && s != P.head.slot &&
                !(weighted && std::count(P.leaves.begin(), P.leaves.end(), s)))
                vals[s].reset();
    }
    if (weighted) return weighted_sums(vals, img);
    jit::Stack stack{c10::IValue(model.module()._ivalue()), image};
    for (int s : P.boundary) {
        const auto& sh = P.slots[s].shape;
        const std::vector<int64_t> zero(B, 0);
        stack.push_back(extract(clean[s], *vals[s], zero, zero, sh[2], sh[3]));
    }
    if (P.head.slot >= 0) stack.push_back(run_head(*vals[P.head.slot]));
    vals.clear();
    if (rest_runner) stack = rest_runner->run(std::move(stack));
    else rest_fn->run(stack);
    at::Tensor out = first_tensor(stack[0]);
    if (m > 0) {
        out = out.to(at::kFloat).clone();
        if (out.dim() != 2 || out.size(0) != static_cast<int64_t>(B))
            throw Error("the model's output is not [N,K] logits: the approximate occlusion needs them");
        auto o = out.accessor<float, 2>();
        auto c = classes.accessor<int64_t, 2>();
        for (size_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < m; ++j) o[b][c[img[b]][j]] += static_cast<float>(corr[b * m + j]);
    }
    return out;
}

namespace {
// The resize's adjoint: weights on its output [G,Ho,Wo] float64 to the weights on its input
// [G,Hi,Wi] that give the same weighted sums.
at::Tensor resize_adjoint(const at::Tensor& g, const std::array<ResizeAxis, 2>& rz, int64_t hi, int64_t wi) {
    auto matrix = [](const ResizeAxis& a, int64_t in) {
        const int64_t out = static_cast<int64_t>(a.i0.size());
        at::Tensor m = at::zeros({out, in}, at::kDouble);
        auto acc = m.accessor<double, 2>();
        for (int64_t o = 0; o < out; ++o) {
            if (a.nearest) {
                acc[o][a.i0[o]] += 1.0;
                continue;
            }
            acc[o][a.i0[o]] += 1.0 - static_cast<double>(a.l1[o]);
            acc[o][a.i1[o]] += static_cast<double>(a.l1[o]);
        }
        return m;
    };
    return at::matmul(at::matmul(matrix(rz[0], hi).t(), g), matrix(rz[1], wi));
}
}  // namespace

// Pulls the weights back through the tail, from the output to the leaves, and sums the clean
// outputs with them.
void Engine::Impl::set_output_weights(const at::Tensor& weights_ghw) {
    CONVSCOPE_CHECK(plan.output_slot >= 0, "weighted outputs need a plan that computes the output");
    const at::Tensor& out = clean[plan.output_slot];
    CONVSCOPE_CHECK(weights_ghw.dim() == 3 && weights_ghw.size(0) == out.size(0) && weights_ghw.size(1) == out.size(2) &&
                        weights_ghw.size(2) == out.size(3),
                    "output weights [G,H,W] for the images set");
    const at::Tensor w = weights_ghw.to(at::kDouble).contiguous();
    std::vector<at::Tensor> g(plan.slots.size());
    g[plan.output_slot] = w;
    auto add = [&](int s, const at::Tensor& t) { g[s] = g[s].defined() ? g[s] + t : t; };
    for (size_t j = plan.steps.size(); j-- > 0;) {
        const Step& st = plan.steps[j];
        if (!plan.tail[j] || !g[st.output].defined()) continue;
        const at::Tensor& go = g[st.output];
        if (st.kind == StepKind::Resize) {
            const auto& in = plan.slots[st.inputs[0]].shape;
            add(st.inputs[0], resize_adjoint(go, st.rz, in[2], in[3]));
        } else {
            add(st.inputs[0], go);
            add(st.inputs[1], go * st.alpha);
        }
    }
    leaf_weights.clear();
    for (int s : plan.leaves)
        leaf_weights.push_back(g[s].defined() ? g[s].contiguous() : at::Tensor());  // undefined: no weight reaches it
    clean_sums = (out.to(at::kDouble) * w.unsqueeze(1)).sum({2, 3}).contiguous();
}

// [B,K]: the clean sums plus, on each leaf's patch box, the pulled-back weights times the change.
at::Tensor Engine::Impl::weighted_sums(const std::vector<std::optional<IncValue>>& vals,
                                       const std::vector<int64_t>& img) const {
    const int64_t B = static_cast<int64_t>(img.size()), K = clean_sums.size(1);
    at::Tensor sums = at::empty({B, K}, at::kDouble);
    double* o = sums.data_ptr<double>();
    const double* base = clean_sums.data_ptr<double>();
    for (int64_t b = 0; b < B; ++b)
        for (int64_t k = 0; k < K; ++k) o[b * K + k] = base[img[b] * K + k];
    for (size_t l = 0; l < plan.leaves.size(); ++l) {
        const IncValue& v = *vals[plan.leaves[l]];
        const at::Tensor& c = clean[plan.leaves[l]];
        const int64_t H = c.size(2), W = c.size(3);
        const at::Tensor& gw = leaf_weights[l];
        if (!gw.defined()) continue;
        const double* g = gw.data_ptr<double>();
        const float* cp = c.data_ptr<float>();
        const float* pp = v.patch.data_ptr<float>();
        for (int64_t b = 0; b < B; ++b)
            for (int64_t k = 0; k < K; ++k) {
                double acc = 0;
                const float* pk = pp + (b * K + k) * v.h * v.w;
                const float* ck = cp + (v.img[b] * K + k) * H * W;
                const double* gb = g + v.img[b] * H * W;
                for (int64_t r = 0; r < v.h; ++r) {
                    const int64_t row = (v.py[b] + r) * W + v.px[b];
                    for (int64_t q = 0; q < v.w; ++q)
                        acc += gb[row + q] * static_cast<double>(pk[r * v.w + q] - ck[row + q]);
                }
                o[b * K + k] += acc;
            }
    }
    return sums.to(at::kFloat);
}

// The head's output [B,O] for the positions of v (the flattened slot's incremental value). In
// bfloat16 mode: the clean output plus the weight times the change (zero outside the changed
// box) in bfloat16, whose rounding scales with the change as in the convolutions; else the linear
// of the occluded activations in float32.
at::Tensor Engine::Impl::run_head(const IncValue& v) const {
    const Head& head = plan.head;
    const auto& sh = plan.slots[head.slot].shape;
    const int64_t B = v.patch.size(0), C = sh[1], H = sh[2], W = sh[3];
    const std::vector<int64_t> zero(B, 0);
    if (!delta_bf16()) {
        const at::Tensor full = extract(clean[head.slot], v, zero, zero, H, W);
        return at::linear(full.reshape({B, C * H * W}), head.weight,
                          head.bias.defined() ? c10::optional<at::Tensor>(head.bias) : c10::nullopt);
    }
    // The change on the whole map, in bfloat16 (zero outside the patch box).
    const at::Tensor delta = gather_change(clean[head.slot], v, 0, 0, zero, zero, H, W);
    const at::Tensor change = at::linear(delta.view({B, C * H * W}), head_bf16);
    return head_clean.index_select(0, torch::tensor(v.img, at::kLong)) + change.to(at::kFloat);
}

namespace {
Error engine_error(const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    return Error("incremental occlusion failed on this model (" + what.substr(0, what.find('\n')) +
                 "): use --mode full");
}
}  // namespace

Engine::Engine(const Model& model, const Plan& plan, const EngineSettings& settings) {
    try {
        impl_ = std::make_unique<Impl>(model, plan, settings);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

Engine::~Engine() = default;

bool Engine::bf16() const { return impl_->delta_bf16(); }
int64_t Engine::bytes_per_image() const { return incremental::bytes_per_image(impl_->plan); }
const Plan& Engine::plan() const { return impl_->plan; }
const at::Tensor& Engine::clean(int slot) const { return impl_->clean.at(static_cast<size_t>(slot)); }

at::Tensor Engine::set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm) {
    try {
        return impl_->set_images(images_gchw, classes_gm);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

at::Tensor Engine::run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                       const std::vector<int64_t>& xs) {
    try {
        return impl_->run(patches, img, ys, xs, false);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

// Exact runs only: thresholding's corrections and bfloat16 changes are not in the weighted sums.
bool Engine::weighted_output() const {
    return impl_->plan.output_slot >= 0 && impl_->plan.settings.tau >= 1.0 && !impl_->delta_bf16();
}

void Engine::set_output_weights(const at::Tensor& weights_ghw) {
    try {
        impl_->set_output_weights(weights_ghw);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

at::Tensor Engine::run_weighted(const at::Tensor& patches, const std::vector<int64_t>& img,
                                const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) {
    CONVSCOPE_CHECK(impl_->clean_sums.defined(), "set_output_weights before run_weighted");
    try {
        return impl_->run(patches, img, ys, xs, true);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

}  // namespace convscope::incremental
