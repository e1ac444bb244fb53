#include "methods/incremental/plan.hpp"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <set>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/model.hpp"
#include "methods/incremental/graph_passes.hpp"

namespace convscope::incremental {

namespace {

const std::set<std::string>& pointwise_kinds() {
    static const std::set<std::string> kinds = {
        "aten::relu",       "aten::relu6",       "aten::sigmoid",    "aten::tanh",
        "aten::hardtanh",   "aten::leaky_relu",  "aten::elu",        "aten::selu",
        "aten::celu",       "aten::gelu",        "aten::silu",       "aten::mish",
        "aten::hardswish",  "aten::hardsigmoid", "aten::softplus",   "aten::clamp",
        "aten::clamp_min",  "aten::clamp_max",   "aten::neg",        "aten::abs",
        "aten::exp",        "aten::square",      "aten::sqrt",       "aten::rsqrt",
        "aten::pow",        "aten::add",         "aten::sub",        "aten::rsub",
        "aten::mul",        "aten::div",         "aten::batch_norm", "aten::clone",
        "aten::prelu",      "aten::threshold",   "aten::log_sigmoid", "aten::erf",
    };
    return kinds;
}

const std::set<std::string>& binary_kinds() {
    static const std::set<std::string> kinds = {"aten::add", "aten::sub", "aten::mul", "aten::div",
                                                "aten::maximum", "aten::minimum"};
    return kinds;
}

// A static tensor argument of a pointwise op is safe when broadcasting it against a feature map
// [N,C,H,W] does not vary along N, H or W (a scalar, or per channel like [C,1,1]).
bool spatially_constant(const at::Tensor& t) {
    const int64_t r = t.dim();
    if (r > 4) return false;
    for (int64_t i = 0; i < r; ++i) {
        const int64_t aligned = i - r;  // -1 = W, -2 = H, -3 = C, -4 = N
        if (aligned != -3 && t.size(i) != 1) return false;
    }
    return true;
}

using Shapes = std::map<const jit::Value*, std::vector<int64_t>>;

// Kernel, stride, padding and dilation of a window op, per axis.
struct Geometry {
    std::array<int64_t, 2> k{1, 1}, s{1, 1}, p{0, 0}, d{1, 1};
};

// Builds a plan node by node: one function per node kind; each returns false (and changes
// nothing) when the node cannot run incrementally.
class Planner {
public:
    Planner(Plan& plan, const Shapes& shapes) : p_(plan), shapes_(shapes) {}

    // Whether node n was planned. lists: channel lists waiting for their aten::cat.
    bool plan_node(jit::Node* n);
    bool plan_head(jit::Node* n);
    bool is_list(const jit::Value* v) const { return lists_.count(v) > 0; }
    const std::vector<int>* list(const jit::Value* v) const {
        auto it = lists_.find(v);
        return it == lists_.end() ? nullptr : &it->second;
    }

private:
    std::vector<int64_t> shape_of(const jit::Value* v) const {
        auto it = shapes_.find(v);
        return it == shapes_.end() ? std::vector<int64_t>{} : it->second;
    }
    // Adds st writing a new slot for n's output.
    void add_step(Step st, jit::Node* n, const std::vector<int64_t>& out_shape) {
        p_.slots.push_back(Slot{{n->output()}, out_shape});
        st.output = static_cast<int>(p_.slots.size()) - 1;
        p_.slot_of[n->output()] = st.output;
        p_.steps.push_back(std::move(st));
    }
    bool plan_list(jit::Node* n);
    bool plan_cat(jit::Node* n, const std::vector<int64_t>& out_shape);
    bool plan_window(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn,
                     const std::vector<int64_t>& out_shape);
    bool plan_resize(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn,
                     const std::vector<int64_t>& out_shape);
    bool plan_alias(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn);
    bool plan_pointwise(jit::Node* n, std::vector<c10::IValue> args, const std::vector<size_t>& dyn,
                        const std::vector<int64_t>& out_shape);

    Plan& p_;
    const Shapes& shapes_;
    std::unordered_map<const jit::Value*, std::vector<int>> lists_;
};

// Channel concatenation: the list is remembered and consumed by its aten::cat.
bool Planner::plan_list(jit::Node* n) {
    if (n->output()->uses().size() != 1) return false;
    const jit::Use& use = n->output()->uses()[0];
    if (use.user->kind() != c10::aten::cat || use.offset != 0) return false;
    std::vector<int> items;
    for (jit::Value* in : n->inputs()) {
        auto it = p_.slot_of.find(in);
        if (it == p_.slot_of.end()) return false;
        items.push_back(it->second);
    }
    lists_[n->output()] = items;
    return true;
}

bool Planner::plan_cat(jit::Node* n, const std::vector<int64_t>& out_shape) {
    auto it = lists_.find(n->input(0));
    auto dim = jit::toIValue(n->input(1));
    if (it == lists_.end() || !dim || !dim->isInt()) return false;
    if (dim->toInt() != 1 && dim->toInt() != -3) return false;
    for (int s : it->second) {
        const auto& sh = p_.slots[s].shape;
        if (sh.size() != 4 || sh[2] != out_shape[2] || sh[3] != out_shape[3]) return false;
    }
    Step st;
    st.kind = StepKind::Cat;
    st.name = "cat";
    st.inputs = it->second;
    add_step(std::move(st), n, out_shape);
    return true;
}

// A convolution's weight, bias, groups and geometry from its arguments (conv2d, or the
// non-transposed _convolution / convolution).
bool conv_geometry(jit::Node* n, const std::vector<c10::IValue>& args, Step& st, Geometry& g) {
    if (!args[1].isTensor() || args[1].toTensor().dim() != 4) return false;
    st.weight = args[1].toTensor();
    if (args[2].isTensor()) st.bias = args[2].toTensor();
    else if (!args[2].isNone()) return false;
    auto sp = int_pair(args[3]);
    auto dp = int_pair(args[5]);
    if (!sp || !dp) return false;
    g.s = *sp;
    g.d = *dp;
    g.k = {st.weight.size(2), st.weight.size(3)};
    if (args[4].isString()) {
        if (args[4].toStringRef() == "valid") g.p = {0, 0};
        else if (args[4].toStringRef() == "same")
            g.p = {g.d[0] * (g.k[0] - 1) / 2, g.d[1] * (g.k[1] - 1) / 2};  // extra padding goes after
        else return false;
    } else {
        auto pp = int_pair(args[4]);
        if (!pp) return false;
        g.p = *pp;
    }
    size_t groups_arg = 6;
    if (n->kind() != c10::aten::conv2d) {
        if (!args[6].isBool() || args[6].toBool()) return false;  // transposed
        groups_arg = 8;
    }
    if (args.size() <= groups_arg || !args[groups_arg].isInt()) return false;
    st.groups = args[groups_arg].toInt();
    st.op = WindowOp::Conv;
    st.pad_value = 0;
    return true;
}

// Max or average pooling's geometry (average pooling: floor-mode windows inside input + padding,
// padding counted as zeros).
bool pool_geometry(bool is_max, const std::vector<c10::IValue>& args, const std::vector<int64_t>& in_shape,
                   const std::vector<int64_t>& out_shape, Step& st, Geometry& g) {
    auto kp = int_pair(args[1]);
    if (!kp) return false;
    g.k = *kp;
    auto sp = int_pair(args[2]);
    g.s = sp ? *sp : g.k;  // an empty stride means stride = kernel
    auto pp = int_pair(args[3]);
    if (!pp) return false;
    g.p = *pp;
    if (is_max) {
        auto dp = int_pair(args[4]);
        if (!dp) return false;
        g.d = *dp;
        st.op = WindowOp::MaxPool;
        st.pad_value = -std::numeric_limits<double>::infinity();
        return true;
    }
    const bool ceil_mode = args[4].toBool();
    const bool count_pad = args[5].toBool();
    if (!count_pad && (g.p[0] > 0 || g.p[1] > 0)) return false;
    if (ceil_mode)
        for (int a = 0; a < 2; ++a)
            if ((in_shape[2 + a] + 2 * g.p[a] - g.k[a]) / g.s[a] + 1 != out_shape[2 + a]) return false;
    if (args[6].isInt()) st.divisor = args[6].toInt();
    st.op = WindowOp::AvgPool;
    st.pad_value = 0;
    return true;
}

bool Planner::plan_window(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn,
                          const std::vector<int64_t>& out_shape) {
    const bool is_conv = n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution ||
                         n->kind() == c10::aten::convolution;
    const bool is_max = n->kind() == c10::aten::max_pool2d;
    if (dyn.size() != 1 || dyn[0] != 0) return false;
    const int in_slot = p_.slot_of.at(n->input(0));
    const auto in_shape = p_.slots[in_slot].shape;
    if (in_shape.size() != 4) return false;
    Step st;
    st.kind = StepKind::Window;
    st.name = is_conv ? "conv" : is_max ? "max_pool2d" : "avg_pool2d";
    Geometry g;
    if (is_conv ? !conv_geometry(n, args, st, g) : !pool_geometry(is_max, args, in_shape, out_shape, st, g))
        return false;
    for (int a = 0; a < 2; ++a) {
        if (g.k[a] < 1 || g.s[a] < 1 || g.d[a] < 1 || g.p[a] < 0) return false;
        Axis& ax = st.ax[a];
        ax.k = g.k[a];
        ax.s = g.s[a];
        ax.p = g.p[a];
        ax.d = g.d[a];
        ax.in = in_shape[2 + a];
        ax.out = out_shape[2 + a];
        ax.pad_hi = std::max<int64_t>(0, (ax.out - 1) * ax.s + (ax.k - 1) * ax.d + 1 - ax.in - ax.p);
    }
    st.inputs = {in_slot};
    add_step(std::move(st), n, out_shape);
    return true;
}

// Bilinear and nearest upsampling (aten::upsample_bilinear2d, aten::upsample_nearest2d and their
// .vec forms, which F.interpolate calls) with constant sizes or scale factors.
bool Planner::plan_resize(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn,
                          const std::vector<int64_t>& out_shape) {
    if (dyn.size() != 1 || dyn[0] != 0) return false;
    const auto schema = n->maybeSchema();
    if (!schema) return false;
    const int in_slot = p_.slot_of.at(n->input(0));
    const auto in_shape = p_.slots[in_slot].shape;
    if (in_shape.size() != 4 || in_shape[1] != out_shape[1]) return false;
    bool align = false;
    std::array<std::optional<double>, 2> factor;
    const auto& params = schema->arguments();
    for (size_t i = 1; i < params.size() && i < args.size(); ++i) {
        const std::string& name = params[i].name();
        const c10::IValue& v = args[i];
        if (name == "align_corners") {
            if (!v.isBool()) return false;
            align = v.toBool();
        } else if (name == "scale_factors") {
            if (v.isNone()) continue;
            if (!v.isDoubleList() || v.toDoubleList().size() != 2) return false;
            factor = {v.toDoubleList()[0], v.toDoubleList()[1]};
        } else if (name == "scales_h" || name == "scales_w") {
            if (v.isNone()) continue;
            if (!v.isDouble()) return false;
            factor[name == "scales_h" ? 0 : 1] = v.toDouble();
        } else if (name != "output_size") {
            return false;
        }
    }
    const bool nearest = n->kind() == c10::aten::upsample_nearest2d;
    Step st;
    st.kind = StepKind::Resize;
    st.name = nearest ? "upsample_nearest2d" : "upsample_bilinear2d";
    for (int a = 0; a < 2; ++a) {
        st.ax[a].in = in_shape[2 + a];
        st.ax[a].out = out_shape[2 + a];
        st.rz[a] = resize_axis(nearest, align, in_shape[2 + a], out_shape[2 + a], factor[a]);
    }
    st.inputs = {in_slot};
    add_step(std::move(st), n, out_shape);
    return true;
}

// Ops that return their input in eval mode: the output shares the input's slot.
bool Planner::plan_alias(jit::Node* n, const std::vector<c10::IValue>& args, const std::vector<size_t>& dyn) {
    if (dyn.size() != 1 || dyn[0] != 0) return false;
    const int s = p_.slot_of.at(n->input(0));
    p_.slots[s].values.push_back(n->output());
    p_.slot_of[n->output()] = s;
    return true;
}

// Elementwise ops of one feature map (with constant scalars or per-channel tensors) or of two.
bool Planner::plan_pointwise(jit::Node* n, std::vector<c10::IValue> args, const std::vector<size_t>& dyn,
                             const std::vector<int64_t>& out_shape) {
    const std::string kind = n->kind().toQualString();
    const bool binary = dyn.size() == 2 && binary_kinds().count(kind);
    if (!binary && (dyn.size() != 1 || !pointwise_kinds().count(kind))) return false;
    // Per-channel parameters of batch norm and PReLU are not broadcast against the input.
    const bool per_channel = n->kind() == c10::aten::batch_norm || n->kind() == c10::aten::prelu;
    for (size_t i = 0; i < args.size(); ++i) {
        if (std::find(dyn.begin(), dyn.end(), i) != dyn.end()) continue;
        if (!per_channel && args[i].isTensor() && args[i].toTensor().defined() &&
            !spatially_constant(args[i].toTensor()))
            return false;
        if ((args[i].isTensorList() || args[i].isList()) && !args[i].isIntList() && !args[i].isDoubleList())
            return false;  // anything unusual
    }
    if (n->kind() == c10::aten::batch_norm && (!args[5].isBool() || args[5].toBool())) return false;
    for (size_t i : dyn)
        if (p_.slots[p_.slot_of.at(n->inputs()[i])].shape != out_shape) return false;
    const auto schema = n->maybeSchema();
    if (!schema || schema->is_mutable()) return false;
    Step st;
    st.kind = binary ? StepKind::Binary : StepKind::Pointwise;
    st.name = kind.substr(6);
    for (size_t i : dyn) st.inputs.push_back(p_.slot_of.at(n->inputs()[i]));
    if (binary && (kind == "aten::add" || kind == "aten::sub") && args.size() == 3 && dyn[0] == 0 && dyn[1] == 1) {
        const double a = args[2].isInt() ? static_cast<double>(args[2].toInt()) : args[2].isDouble() ? args[2].toDouble() : NAN;
        st.alpha = kind == "aten::sub" ? -a : a;
    } else if (binary) {
        st.alpha = NAN;  // not a sum of its inputs
    }
    st.operation = n->getOperation();
    st.args = std::move(args);
    st.dyn_args = dyn;
    add_step(std::move(st), n, out_shape);
    return true;
}

bool Planner::plan_node(jit::Node* n) {
    if (n->kind() == c10::prim::ListConstruct) return plan_list(n);
    const std::string kind = n->kind().toQualString();
    if (n->outputs().size() != 1 || !is_tensor(n->output()) || !n->blocks().empty()) return false;
    if (!kind.empty() && kind.back() == '_') return false;  // in-place ops that could not be removed
    const auto out_shape = shape_of(n->output());
    if (out_shape.size() != 4 || out_shape[0] != 1) return false;
    if (n->kind() == c10::aten::cat) return plan_cat(n, out_shape);

    // Inputs: which are incremental, and the constants.
    std::vector<c10::IValue> args;
    std::vector<size_t> dyn;
    for (size_t i = 0; i < n->inputs().size(); ++i) {
        jit::Value* in = n->inputs()[i];
        if (p_.slot_of.count(in)) {
            dyn.push_back(i);
            args.emplace_back();
            continue;
        }
        auto c = jit::toIValue(in);
        if (!c) return false;  // a computed argument that is not the image: leave it to the rest
        args.push_back(*c);
    }
    if (dyn.empty()) return false;
    if (n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution ||
        n->kind() == c10::aten::convolution || n->kind() == c10::aten::max_pool2d ||
        n->kind() == c10::aten::avg_pool2d)
        return plan_window(n, args, dyn, out_shape);
    if (n->kind() == c10::aten::upsample_bilinear2d || n->kind() == c10::aten::upsample_nearest2d)
        return plan_resize(n, args, dyn, out_shape);
    if (n->kind() == c10::aten::contiguous || n->kind() == c10::aten::detach ||
        ((n->kind() == c10::aten::dropout || n->kind() == c10::aten::feature_dropout) && args.size() == 3 &&
         args[2].isBool() && !args[2].toBool()))
        return plan_alias(n, args, dyn);
    return plan_pointwise(n, std::move(args), dyn, out_shape);
}

// flatten(x, 1) -> linear(., W, b) on a planned slot x [1,C,H,W], the flatten's only reader being
// the linear, with constant float weights: the engine computes the head, and the rest of the
// graph starts from the linear's output (the flatten and the linear become dead code there).
bool Planner::plan_head(jit::Node* n) {
    if (n->kind() != c10::aten::flatten || n->inputs().size() != 3) return false;
    auto it = p_.slot_of.find(n->input(0));
    if (it == p_.slot_of.end()) return false;
    const auto& sh = p_.slots[it->second].shape;
    if (sh.size() != 4) return false;
    const auto start = jit::toIValue(n->input(1)), end = jit::toIValue(n->input(2));
    if (!start || !end || !start->isInt() || !end->isInt() || start->toInt() != 1 ||
        (end->toInt() != -1 && end->toInt() != 3))
        return false;
    if (n->output()->uses().size() != 1) return false;
    jit::Node* u = n->output()->uses()[0].user;
    if (u->kind() != c10::aten::linear || u->inputs().size() != 3 || u->input(0) != n->output() ||
        u->outputs().size() != 1)
        return false;
    const auto w = jit::toIValue(u->input(1)), b = jit::toIValue(u->input(2));
    if (!w || !w->isTensor() || !b || !(b->isNone() || b->isTensor())) return false;
    const at::Tensor weight = w->toTensor();
    if (weight.scalar_type() != at::kFloat || weight.dim() != 2 || weight.size(1) != sh[1] * sh[2] * sh[3])
        return false;
    if (b->isTensor() && (b->toTensor().scalar_type() != at::kFloat || b->toTensor().dim() != 1 ||
                          b->toTensor().size(0) != weight.size(0)))
        return false;
    p_.head.slot = it->second;
    p_.head.out = u->output();
    p_.head.weight = weight.contiguous();
    p_.head.bias = b->isTensor() ? b->toTensor().contiguous() : at::Tensor();
    return true;
}


std::string make_note(const Plan& p) {
    std::map<std::string, int> counts;
    for (const auto& st : p.steps) counts[st.name]++;
    if (p.head.slot >= 0) counts["flatten+linear"]++;
    std::string note = "incremental: " + std::to_string(p.steps.size() + (p.head.slot >= 0 ? 1 : 0)) + " ops";
    if (!counts.empty()) {
        note += " (";
        bool first = true;
        for (const auto& kv : counts) {
            note += (first ? "" : ", ") + kv.first + " x" + std::to_string(kv.second);
            first = false;
        }
        note += ")";
    }
    note += p.first_rest.empty() ? "; no full recomputation" : "; full recomputation from " + p.first_rest;
    return note;
}

// Calls fn on every value node n reads: its inputs and, inside its blocks (If/Loop bodies), the
// inputs of every node and the blocks' outputs.
template <class Fn>
void for_each_use(jit::Node* n, const Fn& fn) {
    for (const jit::Value* in : n->inputs()) fn(in);
    for (jit::Block* b : n->blocks()) {
        for (jit::Node* inner : b->nodes()) for_each_use(inner, fn);
        for (const jit::Value* out : b->outputs()) fn(out);
    }
}

// Walks the nodes: plans the ones that can run incrementally; the others (and everything that
// depends on their results) form the rest of the graph, whose inputs are the boundary slots.
void walk(Plan& p, const Shapes& shapes) {
    Planner planner(p, shapes);
    const jit::Value* input = p.graph->inputs()[1];
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), p.chw.begin(), p.chw.end());
    p.slots.push_back(Slot{{input}, nchw});
    p.slot_of[input] = 0;
    std::set<const jit::Value*> full;  // image-dependent values computed by the rest
    bool open = true;
    auto mark = [&](const jit::Value* in) {
        if (auto it = p.slot_of.find(in); it != p.slot_of.end()) p.slots[it->second].boundary = true;
        if (const auto* l = planner.list(in))
            for (int s : *l) p.slots[s].boundary = true;
    };
    for (jit::Node* n : p.graph->nodes()) {
        bool dynamic = false, any_full = false;
        for_each_use(n, [&](const jit::Value* in) {
            if (p.slot_of.count(in) || planner.is_list(in)) dynamic = true;
            if (full.count(in)) dynamic = any_full = true;
        });
        if (!dynamic) continue;
        if (open && !any_full && n->blocks().empty() && planner.plan_node(n)) continue;
        if (open && !any_full && p.head.slot < 0 && planner.plan_head(n)) {
            full.insert(p.head.out);  // image-dependent, and computed before the rest
            continue;
        }
        if (p.first_rest.empty()) p.first_rest = n->kind().toQualString();
        for (jit::Value* out : n->outputs()) full.insert(out);
        for_each_use(n, mark);
        // After an op that may write to its inputs or has other effects, nothing is incremental
        // any more: later ops must see what it did.
        const auto schema = n->maybeSchema();
        if (!n->blocks().empty() || n->hasSideEffects() || (schema && schema->is_mutable())) open = false;
    }
    for (jit::Value* out : p.graph->outputs()) mark(out);
}

}  // namespace

Plan make_plan(const Model& model, const std::vector<int64_t>& chw) {
    try {
        Plan p;
        p.chw = chw;
        PreparedGraph prepared = prepare_graph(model, chw);
        p.graph = prepared.graph;
        walk(p, prepared.shapes);
        fuse_steps(p);
        for (size_t i = 0; i < p.steps.size(); ++i)
            for (int s : p.steps[i].inputs)
                p.slots[s].last_use = std::max(p.slots[s].last_use, static_cast<int>(i));
        for (size_t s = 0; s < p.slots.size(); ++s)
            if (p.slots[s].boundary) p.boundary.push_back(static_cast<int>(s));
        find_tail(p);
        p.note = make_note(p);
        return p;
    } catch (const c10::Error& e) {
        std::string what = e.what_without_backtrace();
        throw Error("cannot prepare the model for incremental occlusion (" + what.substr(0, what.find('\n')) +
                    "): use --mode full");
    }
}

std::shared_ptr<jit::GraphFunction> clean_function(const Plan& plan, const std::vector<size_t>& probed) {
    const auto& graph = plan.graph;
    const auto& slots = plan.slots;
    const auto& steps = plan.steps;
    auto g = graph->copy();
    auto m = map_copy(*graph, *g);
    std::vector<jit::Value*> outs{g->outputs()[0]};
    for (size_t s = 1; s < slots.size(); ++s) {
        jit::Value* v = m.at(slots[s].values[0]);
        jit::WithInsertPoint guard(v->node()->next());
        outs.push_back(g->insert(c10::aten::clone, {v}));
    }
    for (size_t i : probed) {
        jit::Value* v = m.at(slots[steps[i].output].values[0]);
        jit::Value* probe = g->addInput("probe")->setType(c10::TensorType::get());
        jit::Value* sum = nullptr;
        {
            jit::WithInsertPoint guard(v->node()->next());
            sum = g->insert(c10::aten::add, {v, probe});
        }
        v->replaceAllUsesAfterNodeWith(sum->node(), sum);
    }
    while (!g->outputs().empty()) g->eraseOutput(0);
    g->registerOutput(g->insertNode(g->createTuple(outs))->output());
    jit::EliminateDeadCode(g);
    g->lint();
    // The simple executor: these graphs run a few times per call, too few to repay profiling.
    return std::make_shared<jit::GraphFunction>(probed.empty() ? "convscope_occlusion_clean"
                                                               : "convscope_occlusion_grad",
                                                g, nullptr, jit::ExecutorExecutionMode::SIMPLE);
}

std::shared_ptr<jit::Graph> rest_graph(const Plan& plan) {
    // What computed the boundary values is dead code there.
    auto g = plan.graph->copy();
    auto m = map_copy(*plan.graph, *g);
    for (int s : plan.boundary) {
        jit::Value* in = g->addInput("boundary")->setType(c10::TensorType::get());
        for (const jit::Value* v : plan.slots[s].values) m.at(v)->replaceAllUsesWith(in);
    }
    if (plan.head.slot >= 0) {
        jit::Value* in = g->addInput("head")->setType(c10::TensorType::get());
        m.at(plan.head.out)->replaceAllUsesWith(in);
    }
    jit::EliminateDeadCode(g);
    g->lint();
    return g;
}

}  // namespace convscope::incremental
