#include "convscope/runtime/graph.hpp"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/torch.h>

#include <cmath>
#include <optional>
#include <set>
#include <unordered_map>

namespace convscope::detail {

namespace jit = torch::jit;
using Kind = ReceptiveField::Kind;

std::map<const jit::Value*, std::vector<int64_t>> record_shapes(jit::Graph& graph,
                                                                const jit::Module& module,
                                                                const at::Tensor& input) {
    auto g = graph.copy();
    std::vector<const jit::Value*> src_values;
    std::vector<jit::Value*> dst_values;
    auto s = graph.nodes().begin();
    auto d = g->nodes().begin();
    for (; s != graph.nodes().end(); ++s, ++d) {
        // A placeholder for values only a failing branch would set (F.interpolate's checks).
        if (s->kind() == c10::prim::Uninitialized) continue;
        for (size_t i = 0; i < s->outputs().size(); ++i) {
            if (s->outputs()[i]->type()->kind() != c10::TypeKind::TensorType) continue;
            src_values.push_back(s->outputs()[i]);
            dst_values.push_back(d->outputs()[i]);
        }
    }
    while (!g->outputs().empty()) g->eraseOutput(0);
    g->registerOutput(g->insertNode(g->createTuple(dst_values))->output());
    torch::NoGradGuard no_grad;
    jit::Stack stack;
    std::optional<GraphRunner> runner;
    try {
        runner.emplace(g);
    } catch (const std::exception&) {
        runner.reset();  // blocks or an op without an operation
    }
    if (runner) {
        stack = runner->run({c10::IValue(module._ivalue()), input});
    } else {
        // The simple executor: the graph runs once, too few times to repay profiling.
        jit::GraphFunction fn("convscope_shapes", g, nullptr, jit::ExecutorExecutionMode::SIMPLE);
        stack = {c10::IValue(module._ivalue()), input};
        fn.run(stack);
    }
    std::map<const jit::Value*, std::vector<int64_t>> out;
    const auto values = stack[0].toTupleRef().elements();
    for (size_t i = 0; i < src_values.size(); ++i)
        if (values[i].isTensor()) out[src_values[i]] = values[i].toTensor().sizes().vec();
    out[graph.inputs()[1]] = input.sizes().vec();
    return out;
}

GraphRunner::GraphRunner(std::shared_ptr<jit::Graph> graph) : graph_(std::move(graph)) {
    std::unordered_map<const jit::Value*, int> id;
    auto id_of = [&](const jit::Value* v) {
        auto it = id.find(v);
        if (it != id.end()) return it->second;
        id[v] = values_;
        constants_.emplace_back();
        return values_++;
    };
    for (const jit::Value* v : graph_->inputs()) inputs_.push_back(id_of(v));
    std::vector<int> last_use;
    for (jit::Node* n : graph_->nodes()) {
        TORCH_CHECK(n->blocks().empty(), "GraphRunner: the graph has blocks");
        if (n->kind() == c10::prim::Constant) {
            const int v = id_of(n->output());
            constants_[v] = *jit::toIValue(n->output());
            continue;
        }
        Step st;
        // Tuples and lists are instructions of the interpreter, not operators.
        const size_t n_in = n->inputs().size(), n_out = n->outputs().size();
        if (n->kind() == c10::prim::TupleConstruct) {
            st.op.emplace([n_in](jit::Stack& stack) {
                std::vector<c10::IValue> items(stack.end() - n_in, stack.end());
                stack.resize(stack.size() - n_in);
                stack.emplace_back(c10::ivalue::Tuple::create(std::move(items)));
            });
        } else if (n->kind() == c10::prim::ListConstruct) {
            const c10::TypePtr element = n->output()->type()->expectRef<c10::ListType>().getElementType();
            st.op.emplace([n_in, element](jit::Stack& stack) {
                c10::impl::GenericList list(element);
                list.reserve(n_in);
                for (size_t i = stack.size() - n_in; i < stack.size(); ++i) list.push_back(stack[i]);
                stack.resize(stack.size() - n_in);
                stack.emplace_back(std::move(list));
            });
        } else if (n->kind() == c10::prim::TupleUnpack || n->kind() == c10::prim::ListUnpack) {
            const bool tuple = n->kind() == c10::prim::TupleUnpack;
            st.op.emplace([tuple, n_out](jit::Stack& stack) {
                const c10::IValue v = std::move(stack.back());
                stack.pop_back();
                std::vector<c10::IValue> items =
                    tuple ? v.toTupleRef().elements().vec() : v.toListRef().vec();
                TORCH_CHECK(items.size() == n_out, "unpacking ", items.size(), " values into ", n_out);
                for (auto& item : items) stack.push_back(std::move(item));
            });
        } else {
            st.op.emplace(n->getOperation());
        }
        for (const jit::Value* v : n->inputs()) st.in.push_back(id_of(v));
        for (const jit::Value* v : n->outputs()) st.out.push_back(id_of(v));
        steps_.push_back(std::move(st));
    }
    for (const jit::Value* v : graph_->outputs()) outputs_.push_back(id_of(v));
    // Release each computed value after the last step that reads it (never graph outputs).
    last_use.assign(values_, -1);
    for (size_t i = 0; i < steps_.size(); ++i)
        for (int v : steps_[i].in) last_use[v] = static_cast<int>(i);
    for (int v : outputs_) last_use[v] = -1;
    for (int v = 0; v < values_; ++v)
        if (last_use[v] >= 0) steps_[last_use[v]].release.push_back(v);
}

std::vector<c10::IValue> GraphRunner::run(std::vector<c10::IValue> inputs) const {
    TORCH_CHECK(inputs.size() == inputs_.size(), "GraphRunner: wrong number of inputs");
    std::vector<c10::IValue> vals = constants_;
    for (size_t i = 0; i < inputs.size(); ++i) vals[inputs_[i]] = std::move(inputs[i]);
    jit::Stack stack;
    for (const Step& st : steps_) {
        stack.clear();
        for (int v : st.in) stack.push_back(vals[v]);
        (*st.op)(stack);
        for (size_t k = 0; k < st.out.size(); ++k) vals[st.out[k]] = std::move(stack[k]);
        for (int v : st.release) vals[v] = c10::IValue();
    }
    std::vector<c10::IValue> out;
    for (int v : outputs_) out.push_back(vals[v]);
    return out;
}

const std::vector<int64_t>* shape_in(const Shapes& shapes, const jit::Value* v) {
    auto it = shapes.find(v);
    return it == shapes.end() ? nullptr : &it->second;
}

namespace {

// A pair of ints from a constant int, int list, or list of constants: the last two values (one
// value: twice).
std::optional<std::pair<int64_t, int64_t>> int_pair(jit::Value* v) {
    const auto l = int_list(v);
    if (!l || l->empty()) return std::nullopt;
    if (l->size() == 1) return std::make_pair((*l)[0], (*l)[0]);
    return std::make_pair((*l)[l->size() - 2], (*l)[l->size() - 1]);
}

ReceptiveField compose(const ReceptiveField& in, int64_t ky, int64_t kx, int64_t sy, int64_t sx,
                       int64_t py, int64_t px, int64_t dy, int64_t dx) {
    if (in.kind != Kind::Exact) return in;
    ReceptiveField r;
    r.size_y = in.size_y + (ky - 1) * dy * in.stride_y;
    r.size_x = in.size_x + (kx - 1) * dx * in.stride_x;
    r.pad_y = in.pad_y + py * in.stride_y;
    r.pad_x = in.pad_x + px * in.stride_x;
    r.stride_y = in.stride_y * sy;
    r.stride_x = in.stride_x * sx;
    return r;
}

// Union of the fields of several paths into one value (residual add, concatenation).
ReceptiveField merge(const std::vector<ReceptiveField>& rfs) {
    ReceptiveField out = rfs[0];
    for (size_t i = 1; i < rfs.size(); ++i) {
        const auto& b = rfs[i];
        if (out.kind == Kind::Unknown || b.kind == Kind::Unknown) {
            out.kind = Kind::Unknown;
            continue;
        }
        if (out.kind == Kind::Global || b.kind == Kind::Global) {
            out.kind = Kind::Global;
            continue;
        }
        if (out.stride_y != b.stride_y || out.stride_x != b.stride_x) {
            out.kind = Kind::Unknown;  // paths on different grids: no single box formula
            continue;
        }
        auto unite = [](int64_t& size, int64_t& pad, int64_t size_b, int64_t pad_b) {
            const int64_t start = std::min(-pad, -pad_b);
            const int64_t end = std::max(-pad + size - 1, -pad_b + size_b - 1);
            pad = -start;
            size = end - start + 1;
        };
        unite(out.size_y, out.pad_y, b.size_y, b.pad_y);
        unite(out.size_x, out.pad_x, b.size_x, b.pad_x);
    }
    return out;
}

using Fields = std::map<const jit::Value*, ReceptiveField>;

// A list of feature maps (the input of torch.cat): the union, or Unknown if the maps are on
// different grids.
ReceptiveField list_field(const jit::Node* n, const std::vector<ReceptiveField>& ins, const Fields& rf,
                          const Shapes& shapes) {
    bool same_grid = true;
    const std::vector<int64_t>* first = nullptr;
    for (const jit::Value* in : n->inputs()) {
        if (!rf.count(in)) continue;
        const auto* s = shape_in(shapes, in);
        if (!s || s->size() != 4) continue;
        if (!first) first = s;
        else if ((*s)[2] != (*first)[2] || (*s)[3] != (*first)[3]) same_grid = false;
    }
    ReceptiveField r = merge(ins);
    if (!same_grid && r.kind == Kind::Exact) r.kind = Kind::Unknown;
    return r;
}

// Convolutions (conv2d, _convolution, convolution): Unknown when transposed or when a size is
// not constant.
ReceptiveField conv_field(const jit::Node* n, const ReceptiveField& in, const Shapes& shapes) {
    const auto* w = shape_in(shapes, n->input(1));
    auto stride = int_pair(n->input(3));
    auto dilation = int_pair(n->input(5));
    std::optional<std::pair<int64_t, int64_t>> padding;
    bool transposed = false;
    if (n->kind() != c10::aten::conv2d) {
        auto t = jit::toIValue(n->input(6));
        transposed = t && t->isBool() && t->toBool();
    }
    if (w && w->size() == 4 && dilation) {
        if (auto pv = jit::toIValue(n->input(4)); pv && pv->isString()) {
            if (pv->toStringRef() == "valid") padding = std::make_pair(0L, 0L);
            else padding = std::make_pair((*w)[2] / 2 * dilation->first, (*w)[3] / 2 * dilation->second);
        } else {
            padding = int_pair(n->input(4));
        }
    }
    ReceptiveField r;
    if (w && w->size() == 4 && stride && padding && dilation && !transposed)
        r = compose(in, (*w)[2], (*w)[3], stride->first, stride->second, padding->first, padding->second,
                    dilation->first, dilation->second);
    else r.kind = Kind::Unknown;
    return r;
}

// max_pool2d (with indices) and avg_pool2d.
ReceptiveField pool_field(const jit::Node* n, const ReceptiveField& in) {
    auto k = int_pair(n->input(1));
    auto s = int_pair(n->input(2));
    if (!s) s = k;  // stride [] means stride = kernel
    auto p = int_pair(n->input(3));
    // Dilation: max pooling's fifth input; average pooling has none.
    std::pair<int64_t, int64_t> d{1, 1};
    bool d_known = true;
    if (n->kind() != c10::aten::avg_pool2d) {
        const auto given = int_pair(n->input(4));
        d_known = given.has_value();
        if (given) d = *given;
    }
    ReceptiveField r;
    if (k && s && p && d_known)
        r = compose(in, k->first, k->second, s->first, s->second, p->first, p->second, d.first, d.second);
    else r.kind = Kind::Unknown;
    return r;
}

// Adaptive pooling: global to 1x1, a plain pooling where the sizes divide, else Unknown.
ReceptiveField adaptive_field(const ReceptiveField& in, const std::vector<int64_t>& in_shape,
                              const std::vector<int64_t>& out_shape) {
    const int64_t ih = in_shape[2], iw = in_shape[3], oh = out_shape[2], ow = out_shape[3];
    ReceptiveField r;
    if (oh == 1 && ow == 1) r.kind = Kind::Global;
    else if (ih % oh == 0 && iw % ow == 0) r = compose(in, ih / oh, iw / ow, ih / oh, iw / ow, 0, 0, 1, 1);
    else r.kind = Kind::Unknown;
    return r;
}

// Elementwise or concatenation: the union where every spatial input is on the output's grid.
ReceptiveField pointwise_field(const jit::Node* n, const std::vector<ReceptiveField>& ins, const Fields& rf,
                               const Shapes& shapes, const std::vector<int64_t>& out_shape) {
    bool same_grid = true;
    for (const jit::Value* in : n->inputs()) {
        if (!rf.count(in)) continue;
        if (in->type()->kind() != c10::TypeKind::TensorType) continue;  // a list: checked by list_field
        const auto* s = shape_in(shapes, in);
        if (!s || s->size() != 4 || (*s)[2] != out_shape[2] || (*s)[3] != out_shape[3]) same_grid = false;
    }
    if (same_grid) return merge(ins);
    ReceptiveField r;
    r.kind = Kind::Unknown;
    for (const auto& i : ins)
        if (i.kind == Kind::Global) r.kind = Kind::Global;
    return r;
}

// The field of a value where layouts are known and the value is not an NCHW map made from NCHW
// maps (those keep the rules above); nullopt = use those rules.
std::optional<ReceptiveField> token_field(const jit::Node* n, const std::vector<ReceptiveField>& ins,
                                          const Fields& rf, const Shapes& shapes, const Layout* lay,
                                          bool nchw_inputs, const jit::Value* input) {
    const auto* out_shape = shape_in(shapes, n->output());
    const auto* in_shape = shape_in(shapes, input);
    const int64_t batch = in_shape ? (*in_shape)[0] : 1;
    const auto kind = n->kind();
    if (kind == c10::aten::softmax && out_shape && out_shape->size() >= 3 && (!lay || lay->kind != LayoutKind::Nchw)) {
        // Attention probabilities: windowed ([windows*N, heads, q, k]) or global.
        const auto dim = jit::toIValue(n->input(1));
        const int64_t rank = static_cast<int64_t>(out_shape->size());
        if (dim && dim->isInt() && (dim->toInt() == -1 || dim->toInt() == rank - 1)) {
            ReceptiveField r;
            r.kind = Kind::Global;
            const int64_t q = (*out_shape)[static_cast<size_t>(rank - 2)];
            const auto ws = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(q))));
            if (rank == 4 && (*out_shape)[0] > batch && ws * ws == q) {
                r = merge(ins);
                r = compose(r, 2 * ws - 1, 2 * ws - 1, 1, 1, ws - 1, ws - 1, 1, 1);
            }
            return r;
        }
    }
    if (lay && lay->kind == LayoutKind::Nchw && nchw_inputs) return std::nullopt;
    if (lay && lay->kind == LayoutKind::Nchw && !out_shape) return std::nullopt;
    if ((kind == c10::aten::slice) && lay && (lay->kind == LayoutKind::Nhwc || lay->kind == LayoutKind::Nchw) &&
        rf.count(n->input(0))) {
        // A strided slice of a map's rows or columns (Swin's patch merging: x[..., 0::2, 0::2, :]).
        const auto dim = jit::toIValue(n->input(1));
        const auto start = jit::toIValue(n->input(2));
        const auto step = jit::toIValue(n->input(4));
        const int64_t rank = out_shape ? static_cast<int64_t>(out_shape->size()) : 0;
        if (dim && dim->isInt() && step && step->isInt() && rank == 4) {
            int64_t d = dim->toInt() < 0 ? dim->toInt() + rank : dim->toInt();
            const int64_t a = start && start->isInt() ? start->toInt() : 0;
            const int64_t row = lay->kind == LayoutKind::Nhwc ? 1 : 2;
            const ReceptiveField& in = rf.at(n->input(0));
            if (d == row) return compose(in, 1, 1, step->toInt(), 1, -a, 0, 1, 1);
            if (d == row + 1) return compose(in, 1, 1, 1, step->toInt(), 0, -a, 1, 1);
            return in;
        }
    }
    if (lay && lay->grid_h > 0) return merge(ins);  // the grid is kept
    if (!out_shape || out_shape->size() <= 2 || (lay && lay->kind == LayoutKind::Vector)) {
        ReceptiveField r;  // flatten, linear heads, pooling over tokens
        r.kind = Kind::Global;
        for (const auto& i : ins)
            if (i.kind == Kind::Unknown) r.kind = Kind::Unknown;
        return r;
    }
    return merge(ins);  // inside attention: carried until the grid comes back
}

}  // namespace

std::map<const jit::Value*, ReceptiveField> receptive_fields(
    jit::Graph& graph, const jit::Module& module,
    const std::map<const jit::Value*, std::vector<int64_t>>& shapes,
    const std::map<const jit::Value*, Layout>& layouts) {
    Fields rf;
    rf[graph.inputs()[1]] = ReceptiveField{};
    for (jit::Node* n : graph.nodes()) {
        std::vector<ReceptiveField> ins;
        const std::vector<int64_t>* in_shape = nullptr;
        for (jit::Value* in : n->inputs()) {
            auto it = rf.find(in);
            if (it == rf.end()) continue;
            ins.push_back(it->second);
            if (!in_shape) in_shape = shape_in(shapes, in);
        }
        if (ins.empty()) continue;
        const auto kind = n->kind();
        // New tensors that take only the input's sizes (Swin's attention mask) see no pixels.
        if (kind == c10::aten::new_zeros || kind == c10::aten::new_ones || kind == c10::aten::new_full ||
            kind == c10::aten::new_empty || kind == c10::aten::zeros_like || kind == c10::aten::ones_like ||
            kind == c10::aten::full_like || kind == c10::aten::empty_like)
            continue;
        if (kind == c10::prim::ListConstruct || kind == c10::prim::TupleConstruct) {
            rf[n->output()] = list_field(n, ins, rf, shapes);
            continue;
        }
        const bool is_conv =
            kind == c10::aten::conv2d || kind == c10::aten::_convolution || kind == c10::aten::convolution;
        const bool is_pool = kind == c10::aten::max_pool2d || kind == c10::aten::max_pool2d_with_indices ||
                             kind == c10::aten::avg_pool2d;
        const bool is_adaptive = kind == c10::aten::adaptive_avg_pool2d || kind == c10::aten::adaptive_max_pool2d;
        for (jit::Value* out : n->outputs()) {
            if (out->type()->kind() != c10::TypeKind::TensorType) continue;
            const auto* out_shape = shape_in(shapes, out);
            ReceptiveField r;
            if (!layouts.empty()) {
                auto found = layouts.find(out);
                const Layout* lay = found == layouts.end() ? nullptr : &found->second;
                bool nchw_inputs = true;
                for (jit::Value* in : n->inputs()) {
                    auto it = layouts.find(in);
                    if (rf.count(in) && in->type()->kind() == c10::TypeKind::TensorType &&
                        (it == layouts.end() || it->second.kind != LayoutKind::Nchw))
                        nchw_inputs = false;
                }
                if (auto f = token_field(n, ins, rf, shapes, lay, nchw_inputs, graph.inputs()[1])) {
                    rf[out] = *f;
                    continue;
                }
            }
            if (!out_shape || out_shape->size() != 4) {  // not spatial
                r.kind = Kind::Global;
                for (const auto& i : ins)
                    if (i.kind == Kind::Unknown) r.kind = Kind::Unknown;
            } else if (is_conv && rf.count(n->input(0))) {
                r = conv_field(n, rf.at(n->input(0)), shapes);
            } else if (is_pool && rf.count(n->input(0))) {
                r = pool_field(n, rf.at(n->input(0)));
            } else if (is_adaptive && in_shape && in_shape->size() == 4) {
                r = adaptive_field(rf.at(n->input(0)), *in_shape, *out_shape);
            } else {
                r = pointwise_field(n, ins, rf, shapes, *out_shape);
            }
            rf[out] = r;
        }
    }
    (void)module;
    return rf;
}

}  // namespace convscope::detail
