#include "detail/incremental.hpp"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <unordered_map>

#include "convscope/error.hpp"
#include "convscope/model.hpp"
#include "detail/graph_rf.hpp"

namespace convscope::detail {

namespace jit = torch::jit;

namespace {

int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) --q;
    return q;
}
int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

bool is_tensor(const jit::Value* v) { return v->type()->kind() == c10::TypeKind::TensorType; }

// Values of g0 -> values of its copy g1 (Graph::copy keeps the node order): graph inputs and the
// outputs of top-level nodes.
std::unordered_map<const jit::Value*, jit::Value*> map_copy(const jit::Graph& g0, jit::Graph& g1) {
    std::unordered_map<const jit::Value*, jit::Value*> m;
    for (size_t i = 0; i < g0.inputs().size(); ++i) m[g0.inputs()[i]] = g1.inputs()[i];
    auto s = g0.nodes().begin();
    auto d = g1.nodes().begin();
    for (; s != g0.nodes().end(); ++s, ++d)
        for (size_t i = 0; i < s->outputs().size(); ++i) m[s->outputs()[i]] = d->outputs()[i];
    return m;
}

// Replaces prim::GetAttr chains that start at the module (graph input 0) by constants holding
// the attributes' values (weights, buffers, flags such as `training`). Module-valued attributes
// are followed, not replaced; attributes that cannot be constants stay as they are.
void attributes_to_constants(jit::Graph& g, const c10::IValue& self) {
    std::unordered_map<const jit::Value*, c10::IValue> objects{{g.inputs()[0], self}};
    std::function<void(jit::Block*)> visit = [&](jit::Block* block) {
        for (jit::Node* n : block->nodes()) {
            if (n->kind() == c10::prim::GetAttr) {
                auto it = objects.find(n->input(0));
                if (it != objects.end() && it->second.isObject()) {
                    c10::IValue v = it->second.toObject()->getAttr(n->s(c10::attr::name));
                    if (v.isObject()) {
                        objects[n->output()] = v;
                    } else {
                        if (v.isTensor() && v.toTensor().defined()) v = v.toTensor().detach();
                        jit::WithInsertPoint guard(g.block()->nodes().front());
                        if (auto c = jit::tryInsertConstant(g, v)) n->output()->replaceAllUsesWith(*c);
                    }
                }
            }
            for (jit::Block* sub : n->blocks()) visit(sub);
        }
    };
    visit(g.block());
}

void simplify(std::shared_ptr<jit::Graph>& g) {
    jit::ConstantPropagation(g);
    jit::EliminateDeadCode(g);
    jit::removeDropout(g);
    jit::RemoveTensorMutation(g);
    jit::ConstantPropagation(g);
    jit::EliminateDeadCode(g);
}

// aten::dim(x) and aten::size(x, d) for a non-batch d are fixed for a fixed input shape: replace
// them by constants (this removes the eval-mode shape checks of batch norm and the like, which
// would otherwise read every feature map). Returns whether anything changed.
bool fold_shape_queries(std::shared_ptr<jit::Graph>& g, const jit::Module& module,
                        const at::Tensor& zeros) {
    std::vector<jit::Node*> queries;
    for (jit::Node* n : g->nodes()) {
        if (n->kind() == c10::aten::dim && n->inputs().size() == 1 && is_tensor(n->input(0)))
            queries.push_back(n);
        else if (n->kind() == c10::aten::size && n->inputs().size() == 2 && is_tensor(n->input(0))) {
            auto d = jit::toIValue(n->input(1));
            if (d && d->isInt()) queries.push_back(n);
        }
    }
    if (queries.empty()) return false;
    auto shapes = record_shapes(*g, module, zeros);
    bool changed = false;
    for (jit::Node* n : queries) {
        auto it = shapes.find(n->input(0));
        if (it == shapes.end()) continue;
        const auto& s = it->second;
        const int64_t rank = static_cast<int64_t>(s.size());
        int64_t value = rank;
        if (n->kind() == c10::aten::size) {
            int64_t d = jit::toIValue(n->input(1))->toInt();
            if (d < 0) d += rank;
            if (d <= 0 || d >= rank) continue;  // the batch size varies; out of range: leave it
            value = s[d];
        }
        jit::WithInsertPoint guard(n);
        n->output()->replaceAllUsesWith(g->insertConstant(value));
        changed = true;
    }
    return changed;
}

// An int pair from an int or an int list of one or two elements.
std::optional<std::array<int64_t, 2>> int_pair(const c10::IValue& v) {
    if (v.isInt()) return std::array<int64_t, 2>{v.toInt(), v.toInt()};
    if (v.isIntList()) {
        auto l = v.toIntVector();
        if (l.size() == 1) return std::array<int64_t, 2>{l[0], l[0]};
        if (l.size() == 2) return std::array<int64_t, 2>{l[0], l[1]};
    }
    return std::nullopt;
}

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

// Per position, the changed box of a value and the box its patch covers. All patches of a batch
// have the same size h x w; the patch box contains the changed box.
struct IncValue {
    at::Tensor patch;  // [B,C,h,w] contiguous
    int64_t h = 0, w = 0;
    std::vector<int64_t> img;             // image (index into the clean batch) per position
    std::vector<int64_t> py, px;          // patch box start per position
    std::vector<int64_t> y0, y1, x0, x1;  // changed box per position, [y0,y1) x [x0,x1)
};

// Copies, for each position b, the window rows [wy[b], wy[b]+L) and columns [wx[b], wx[b]+Lw)
// of src[v.img[b]] (src [G,C,Hs,Ws]) into dst[b] ([B,C,L,Lw]), taking the values inside v's patch
// box (offset by (off_y, off_x) in src coordinates, e.g. the padding) from v's patch.
at::Tensor gather(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                  const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L,
                  int64_t Lw) {
    const int64_t B = static_cast<int64_t>(wy.size());
    const int64_t C = src.size(1), Hs = src.size(2), Ws = src.size(3);
    at::Tensor dst = at::empty({B, C, L, Lw}, src.options());
    const float* s = src.data_ptr<float>();
    const float* p = v.patch.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    const int64_t h = v.h, w = v.w;
    // Parallel only when there is enough to copy to repay waking the other threads.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, L * Lw));
    at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            const float* sc = s + (v.img[b] * C + c) * Hs * Ws;
            const float* pc = p + i * h * w;
            float* dc = d + i * L * Lw;
            const int64_t y0 = wy[b], x0 = wx[b];
            const int64_t py = v.py[b] + off_y, px = v.px[b] + off_x;
            const int64_t ry0 = std::max(y0, py), ry1 = std::min(y0 + L, py + h);
            const int64_t rx0 = std::max(x0, px), rx1 = std::min(x0 + Lw, px + w);
            const bool cols = rx0 < rx1;
            for (int64_t r = 0; r < L; ++r) {
                const int64_t y = y0 + r;
                float* drow = dc + r * Lw;
                const float* srow = sc + y * Ws + x0;
                if (cols && y >= ry0 && y < ry1) {
                    const float* prow = pc + (y - py) * w;
                    if (rx0 > x0) std::memcpy(drow, srow, (rx0 - x0) * sizeof(float));
                    std::memcpy(drow + (rx0 - x0), prow + (rx0 - px), (rx1 - rx0) * sizeof(float));
                    if (x0 + Lw > rx1)
                        std::memcpy(drow + (rx1 - x0), srow + (rx1 - x0), (x0 + Lw - rx1) * sizeof(float));
                } else {
                    std::memcpy(drow, srow, Lw * sizeof(float));
                }
            }
        }
    });
    return dst;
}

// v's values on the boxes (py, px, h, w) of every position: v's patch itself when the boxes are
// the same, else clean values with v's patch pasted in.
at::Tensor extract(const at::Tensor& clean, const IncValue& v, const std::vector<int64_t>& py,
                   const std::vector<int64_t>& px, int64_t h, int64_t w) {
    if (v.h == h && v.w == w && v.py == py && v.px == px) return v.patch;
    return gather(clean, v, 0, 0, py, px, h, w);
}

// Chooses the common patch size and per-position starts for changed boxes [c0, c1) on an axis of
// length n: the size is the largest box, each start keeps the box inside the axis.
int64_t place(const std::vector<int64_t>& c0, const std::vector<int64_t>& c1, int64_t n,
              std::vector<int64_t>& start) {
    int64_t size = 1;
    for (size_t b = 0; b < c0.size(); ++b) size = std::max(size, c1[b] - c0[b]);
    size = std::min(size, n);
    start.resize(c0.size());
    for (size_t b = 0; b < c0.size(); ++b) start[b] = std::max<int64_t>(0, std::min(c0[b], n - size));
    return size;
}

struct Axis {
    int64_t k = 1, s = 1, p = 0, d = 1;  // kernel, stride, padding before, dilation
    int64_t pad_hi = 0;                  // padding after, enough for every window
    int64_t in = 0, out = 0;             // input and output length
};

// Max pooling of win [B,C,L,Lw] (already padded) to [B,C,oh,ow]: a plain loop over small
// patches, single-threaded unless the batch is large. NaN propagates, as in at::max_pool2d.
at::Tensor max_pool(const at::Tensor& win, const Axis& ay, const Axis& ax, int64_t oh, int64_t ow) {
    const int64_t B = win.size(0), C = win.size(1), L = win.size(2), Lw = win.size(3);
    at::Tensor out = at::empty({B, C, oh, ow}, win.options());
    const float* s = win.data_ptr<float>();
    float* d = out.data_ptr<float>();
    // Parallel only when there is enough work to repay waking the other threads.
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 20) / std::max<int64_t>(1, L * Lw));
    at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const float* sp = s + i * L * Lw;
            float* dp = d + i * oh * ow;
            for (int64_t oy = 0; oy < oh; ++oy)
                for (int64_t ox = 0; ox < ow; ++ox) {
                    float m = -std::numeric_limits<float>::infinity();
                    for (int64_t ky = 0; ky < ay.k; ++ky) {
                        const float* row = sp + (oy * ay.s + ky * ay.d) * Lw + ox * ax.s;
                        for (int64_t kx = 0; kx < ax.k; ++kx) {
                            const float v = row[kx * ax.d];
                            if (v > m || std::isnan(v)) m = v;  // a NaN stays
                        }
                    }
                    dp[oy * ow + ox] = m;
                }
        }
    });
    return out;
}

enum class StepKind { Window, Pointwise, Binary, Cat };
enum class WindowOp { Conv, MaxPool, AvgPool };

struct Step {
    StepKind kind = StepKind::Pointwise;
    std::string name;          // op kind, for the note
    std::vector<int> inputs;   // slots read
    int output = -1;           // slot written
    bool in_place = false;     // pointwise op that may overwrite its input's patch (sole reader)
    // Window ops.
    WindowOp op = WindowOp::Conv;
    Axis ax[2];
    at::Tensor weight, bias;
    int64_t groups = 1;
    double pad_value = 0;
    c10::optional<int64_t> divisor;
    at::Tensor padded;  // the clean input, padded (per image)
    // Pointwise and binary ops: the node's operation with its constant arguments.
    std::optional<jit::Operation> operation;
    std::vector<c10::IValue> args;
    std::vector<size_t> dyn_args;  // positions of the dynamic arguments
};

struct Slot {
    std::vector<const jit::Value*> values;  // graph values it stands for (aliases share a slot)
    std::vector<int64_t> shape;             // [1,C,H,W]
    at::Tensor clean;                       // clean activation (per image), contiguous
    int last_use = -1;                      // last step that reads it
    bool boundary = false;                  // needed as a full tensor by the rest of the graph
};

}  // namespace

struct IncrementalEngine::Impl {
    const Model& model;
    std::vector<int64_t> chw;
    double tau = 1.0;
    std::shared_ptr<jit::Graph> graph;  // simplified copy of the model's graph
    std::vector<Slot> slots;
    std::vector<Step> steps;
    std::vector<int> boundary;  // slots passed to the rest function, in order
    std::unordered_map<const jit::Value*, int> slot_of;
    std::shared_ptr<jit::GraphFunction> clean_fn;  // output + clean activations of all slots
    std::shared_ptr<jit::GraphFunction> rest_fn;   // output from the boundary tensors
    at::Tensor image;
    std::string note;

    Impl(const Model& m, std::vector<int64_t> shape, double t) : model(m), chw(std::move(shape)), tau(t) {}
    void build();
    bool plan_node(jit::Node* n, const std::map<const jit::Value*, std::vector<int64_t>>& shapes,
                   std::unordered_map<const jit::Value*, std::vector<int>>& lists);
    at::Tensor set_images(const at::Tensor& images_gchw);
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs);
    IncValue run_step(Step& st, std::vector<std::optional<IncValue>>& vals);
    void fuse_steps();
    void window_range(const Axis& a, int64_t c0, int64_t c1, int64_t& o0, int64_t& o1) const;
};

void IncrementalEngine::Impl::window_range(const Axis& a, int64_t c0, int64_t c1, int64_t& o0,
                                           int64_t& o1) const {
    // Output o reads input rows [o*s - p, o*s - p + (k-1)*d]; it can change when that range
    // meets the changed rows [c0, c1).
    o0 = std::max<int64_t>(0, ceil_div(c0 + a.p - (a.k - 1) * a.d, a.s));
    o1 = std::min<int64_t>(a.out, floor_div(c1 - 1 + a.p, a.s) + 1);
    if (o1 <= o0) {  // nothing can change (a strided op skips the rows): keep one unit
        o0 = std::min<int64_t>(std::max<int64_t>(o0, 0), a.out - 1);
        o1 = o0 + 1;
    }
    if (tau < 1.0) {
        const int64_t cap = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(tau * a.out)));
        if (o1 - o0 > cap) {
            // Keep the cap-sized part centred on the change (projective field thresholding).
            const int64_t mid2 = o0 + o1;  // twice the centre
            int64_t start = (mid2 - cap) / 2;
            start = std::max<int64_t>(0, std::min(start, a.out - cap));
            o0 = start;
            o1 = start + cap;
        }
    }
}

bool IncrementalEngine::Impl::plan_node(jit::Node* n,
                                        const std::map<const jit::Value*, std::vector<int64_t>>& shapes,
                                        std::unordered_map<const jit::Value*, std::vector<int>>& lists) {
    const std::string kind = n->kind().toQualString();
    auto shape_of = [&](const jit::Value* v) -> std::vector<int64_t> {
        auto it = shapes.find(v);
        return it == shapes.end() ? std::vector<int64_t>{} : it->second;
    };
    // Channel concatenation: the list is remembered and consumed by its aten::cat.
    if (n->kind() == c10::prim::ListConstruct) {
        if (n->output()->uses().size() != 1) return false;
        const jit::Use& use = n->output()->uses()[0];
        if (use.user->kind() != c10::aten::cat || use.offset != 0) return false;
        std::vector<int> items;
        for (jit::Value* in : n->inputs()) {
            auto it = slot_of.find(in);
            if (it == slot_of.end()) return false;
            items.push_back(it->second);
        }
        lists[n->output()] = items;
        return true;
    }
    if (n->outputs().size() != 1 || !is_tensor(n->output()) || !n->blocks().empty()) return false;
    if (!kind.empty() && kind.back() == '_') return false;  // in-place ops that could not be removed
    const auto out_shape = shape_of(n->output());
    if (out_shape.size() != 4 || out_shape[0] != 1) return false;

    if (n->kind() == c10::aten::cat) {
        auto it = lists.find(n->input(0));
        auto dim = jit::toIValue(n->input(1));
        if (it == lists.end() || !dim || !dim->isInt()) return false;
        if (dim->toInt() != 1 && dim->toInt() != -3) return false;
        for (int s : it->second) {
            const auto& sh = slots[s].shape;
            if (sh.size() != 4 || sh[2] != out_shape[2] || sh[3] != out_shape[3]) return false;
        }
        Step st;
        st.kind = StepKind::Cat;
        st.name = "cat";
        st.inputs = it->second;
        slots.push_back(Slot{{n->output()}, out_shape});
        st.output = static_cast<int>(slots.size()) - 1;
        slot_of[n->output()] = st.output;
        steps.push_back(std::move(st));
        return true;
    }

    // Inputs: which are incremental, and the constants.
    std::vector<c10::IValue> args;
    std::vector<size_t> dyn;
    for (size_t i = 0; i < n->inputs().size(); ++i) {
        jit::Value* in = n->inputs()[i];
        if (slot_of.count(in)) {
            dyn.push_back(i);
            args.emplace_back();
            continue;
        }
        auto c = jit::toIValue(in);
        if (!c) return false;  // a computed argument that is not the image: leave it to the rest
        args.push_back(*c);
    }
    if (dyn.empty()) return false;

    const bool is_conv = n->kind() == c10::aten::conv2d || n->kind() == c10::aten::_convolution ||
                         n->kind() == c10::aten::convolution;
    const bool is_max = n->kind() == c10::aten::max_pool2d;
    const bool is_avg = n->kind() == c10::aten::avg_pool2d;
    if (is_conv || is_max || is_avg) {
        if (dyn.size() != 1 || dyn[0] != 0) return false;
        const int in_slot = slot_of.at(n->input(0));
        const auto in_shape = slots[in_slot].shape;
        if (in_shape.size() != 4) return false;
        Step st;
        st.kind = StepKind::Window;
        st.name = is_conv ? "conv" : is_max ? "max_pool2d" : "avg_pool2d";
        std::array<int64_t, 2> k{1, 1}, s{1, 1}, p{0, 0}, d{1, 1};
        if (is_conv) {
            if (!args[1].isTensor() || args[1].toTensor().dim() != 4) return false;
            st.weight = args[1].toTensor();
            if (args[2].isTensor()) st.bias = args[2].toTensor();
            else if (!args[2].isNone()) return false;
            auto sp = int_pair(args[3]);
            auto dp = int_pair(args[5]);
            if (!sp || !dp) return false;
            s = *sp;
            d = *dp;
            k = {st.weight.size(2), st.weight.size(3)};
            if (args[4].isString()) {
                if (args[4].toStringRef() == "valid") p = {0, 0};
                else if (args[4].toStringRef() == "same")
                    p = {d[0] * (k[0] - 1) / 2, d[1] * (k[1] - 1) / 2};  // extra padding goes after
                else return false;
            } else {
                auto pp = int_pair(args[4]);
                if (!pp) return false;
                p = *pp;
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
        } else {
            auto kp = int_pair(args[1]);
            if (!kp) return false;
            k = *kp;
            auto sp = int_pair(args[2]);
            s = sp ? *sp : k;  // an empty stride means stride = kernel
            auto pp = int_pair(args[3]);
            if (!pp) return false;
            p = *pp;
            if (is_max) {
                auto dp = int_pair(args[4]);
                if (!dp) return false;
                d = *dp;
                st.op = WindowOp::MaxPool;
                st.pad_value = -std::numeric_limits<double>::infinity();
            } else {
                // Supported: windows that never leave input + padding (floor mode) and padding that
                // counts as zeros.
                const bool ceil_mode = args[4].toBool();
                const bool count_pad = args[5].toBool();
                if (!count_pad && (p[0] > 0 || p[1] > 0)) return false;
                if (ceil_mode)
                    for (int a = 0; a < 2; ++a)
                        if ((in_shape[2 + a] + 2 * p[a] - k[a]) / s[a] + 1 != out_shape[2 + a]) return false;
                if (args[6].isInt()) st.divisor = args[6].toInt();
                st.op = WindowOp::AvgPool;
                st.pad_value = 0;
            }
        }
        for (int a = 0; a < 2; ++a) {
            if (k[a] < 1 || s[a] < 1 || d[a] < 1 || p[a] < 0) return false;
            Axis& ax = st.ax[a];
            ax.k = k[a];
            ax.s = s[a];
            ax.p = p[a];
            ax.d = d[a];
            ax.in = in_shape[2 + a];
            ax.out = out_shape[2 + a];
            ax.pad_hi = std::max<int64_t>(0, (ax.out - 1) * ax.s + (ax.k - 1) * ax.d + 1 - ax.in - ax.p);
        }
        st.inputs = {in_slot};
        slots.push_back(Slot{{n->output()}, out_shape});
        st.output = static_cast<int>(slots.size()) - 1;
        slot_of[n->output()] = st.output;
        steps.push_back(std::move(st));
        return true;
    }

    // Ops that return their input in eval mode.
    if (n->kind() == c10::aten::contiguous || n->kind() == c10::aten::detach ||
        ((n->kind() == c10::aten::dropout || n->kind() == c10::aten::feature_dropout) &&
         args.size() == 3 && args[2].isBool() && !args[2].toBool())) {
        if (dyn.size() != 1 || dyn[0] != 0) return false;
        const int s = slot_of.at(n->input(0));
        slots[s].values.push_back(n->output());
        slot_of[n->output()] = s;
        return true;
    }

    const bool binary = dyn.size() == 2 && binary_kinds().count(kind);
    if (!binary && (dyn.size() != 1 || !pointwise_kinds().count(kind))) return false;
    for (size_t i = 0; i < args.size(); ++i) {
        if (std::find(dyn.begin(), dyn.end(), i) != dyn.end()) continue;
        // Per-channel parameters of batch norm and PReLU are not broadcast against the input.
        const bool per_channel = n->kind() == c10::aten::batch_norm || n->kind() == c10::aten::prelu;
        if (!per_channel && args[i].isTensor() && args[i].toTensor().defined() &&
            !spatially_constant(args[i].toTensor()))
            return false;
        if (args[i].isTensorList() || args[i].isList()) {
            // e.g. clamp's optional tensors as lists never occur; reject anything unusual
            if (!args[i].isIntList() && !args[i].isDoubleList()) return false;
        }
    }
    if (n->kind() == c10::aten::batch_norm && (!args[5].isBool() || args[5].toBool())) return false;
    for (size_t i : dyn) {
        if (slots[slot_of.at(n->inputs()[i])].shape != out_shape) return false;
    }
    const auto schema = n->maybeSchema();
    if (!schema || schema->is_mutable()) return false;
    Step st;
    st.kind = binary ? StepKind::Binary : StepKind::Pointwise;
    st.name = kind.substr(6);
    for (size_t i : dyn) st.inputs.push_back(slot_of.at(n->inputs()[i]));
    st.operation = n->getOperation();
    st.args = std::move(args);
    st.dyn_args = dyn;
    slots.push_back(Slot{{n->output()}, out_shape});
    st.output = static_cast<int>(slots.size()) - 1;
    slot_of[n->output()] = st.output;
    steps.push_back(std::move(st));
    return true;
}

// Cheaper patches, same values up to rounding: an eval-mode batch norm that alone reads a
// convolution's output is folded into the convolution's weights and bias, and a ReLU that alone
// reads its input works in place.
void IncrementalEngine::Impl::fuse_steps() {
    std::vector<int> readers(slots.size(), 0);
    for (const auto& st : steps)
        for (int s : st.inputs) ++readers[s];
    std::vector<char> removed(steps.size(), 0);
    for (size_t j = 0; j < steps.size(); ++j) {
        Step& bn = steps[j];
        if (bn.kind != StepKind::Pointwise || bn.name != "batch_norm") continue;
        const int s = bn.inputs[0];
        if (readers[s] != 1 || slots[s].boundary || slots[s].values.size() != 1 || bn.dyn_args[0] != 0)
            continue;
        Step* conv = nullptr;
        for (size_t i = 0; i < j; ++i)
            if (!removed[i] && steps[i].output == s && steps[i].kind == StepKind::Window &&
                steps[i].op == WindowOp::Conv)
                conv = &steps[i];
        if (!conv) continue;
        const auto& a = bn.args;  // input, weight, bias, mean, var, training, momentum, eps, cudnn
        if (!a[3].isTensor() || !a[4].isTensor() || !a[7].isDouble()) continue;
        const at::Tensor var = a[4].toTensor().to(at::kDouble), mean = a[3].toTensor().to(at::kDouble);
        const int64_t c = var.numel();
        if (c != conv->weight.size(0)) continue;
        const at::Tensor gamma = a[1].isTensor() ? a[1].toTensor().to(at::kDouble) : at::ones({c}, at::kDouble);
        const at::Tensor beta = a[2].isTensor() ? a[2].toTensor().to(at::kDouble) : at::zeros({c}, at::kDouble);
        const at::Tensor scale = gamma / at::sqrt(var + a[7].toDouble());
        const at::Tensor bias = conv->bias.defined() ? conv->bias.to(at::kDouble) : at::zeros({c}, at::kDouble);
        conv->weight = (conv->weight.to(at::kDouble) * scale.view({-1, 1, 1, 1})).to(conv->weight.scalar_type());
        conv->bias = ((bias - mean) * scale + beta).to(conv->weight.scalar_type());
        conv->output = bn.output;
        conv->name = "conv+batch_norm";
        removed[j] = 1;
    }
    std::vector<Step> kept;
    for (size_t i = 0; i < steps.size(); ++i)
        if (!removed[i]) kept.push_back(std::move(steps[i]));
    steps = std::move(kept);
    std::fill(readers.begin(), readers.end(), 0);
    for (const auto& st : steps)
        for (int s : st.inputs) ++readers[s];
    for (auto& st : steps) {
        const int s = st.inputs.empty() ? -1 : st.inputs[0];
        st.in_place = st.kind == StepKind::Pointwise && st.name == "relu" && s > 0 && readers[s] == 1 &&
                      !slots[s].boundary && slots[s].values.size() == 1;
    }
}

void IncrementalEngine::Impl::build() {
    torch::NoGradGuard no_grad;
    const jit::Module& module = model.module();
    graph = model.inlined_graph()->copy();
    attributes_to_constants(*graph, module._ivalue());
    simplify(graph);
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), chw.begin(), chw.end());
    const at::Tensor zeros = torch::zeros(nchw);
    for (int round = 0; round < 4; ++round) {
        if (!fold_shape_queries(graph, module, zeros)) break;
        simplify(graph);
    }
    const auto shapes = record_shapes(*graph, module, zeros);

    // Walk the nodes: plan the ones that can run incrementally; the others (and everything that
    // depends on their results) form the rest of the graph.
    const jit::Value* input = graph->inputs()[1];
    slots.push_back(Slot{{input}, nchw});
    slot_of[input] = 0;
    std::unordered_map<const jit::Value*, std::vector<int>> lists;
    std::set<const jit::Value*> full;  // image-dependent values computed by the rest
    bool open = true;
    std::string first_rest;
    for (jit::Node* n : graph->nodes()) {
        bool dynamic = false, any_full = false;
        for (jit::Value* in : n->inputs()) {
            if (slot_of.count(in) || lists.count(in)) dynamic = true;
            if (full.count(in)) dynamic = any_full = true;
        }
        // Image-dependent values inside blocks (If/Loop bodies) count as uses of the block node.
        std::function<void(jit::Block*)> scan = [&](jit::Block* b) {
            for (jit::Node* inner : b->nodes()) {
                for (jit::Value* in : inner->inputs()) {
                    if (slot_of.count(in) || lists.count(in)) dynamic = true;
                    if (full.count(in)) dynamic = any_full = true;
                }
                for (jit::Block* sub : inner->blocks()) scan(sub);
            }
        };
        for (jit::Block* b : n->blocks()) scan(b);
        if (!dynamic) continue;
        if (open && !any_full && n->blocks().empty() && plan_node(n, shapes, lists)) continue;
        if (first_rest.empty()) first_rest = n->kind().toQualString();
        for (jit::Value* out : n->outputs()) full.insert(out);
        auto mark = [&](jit::Value* in) {
            if (auto it = slot_of.find(in); it != slot_of.end()) slots[it->second].boundary = true;
            if (auto it = lists.find(in); it != lists.end())
                for (int s : it->second) slots[s].boundary = true;
        };
        for (jit::Value* in : n->inputs()) mark(in);
        std::function<void(jit::Block*)> mark_block = [&](jit::Block* b) {
            for (jit::Node* inner : b->nodes()) {
                for (jit::Value* in : inner->inputs()) mark(in);
                for (jit::Block* sub : inner->blocks()) mark_block(sub);
            }
            for (jit::Value* in : b->outputs()) mark(in);
        };
        for (jit::Block* b : n->blocks()) mark_block(b);
        // After an op that may write to its inputs or has other effects, nothing is incremental
        // any more: later ops must see what it did.
        const auto schema = n->maybeSchema();
        if (!n->blocks().empty() || n->hasSideEffects() || (schema && schema->is_mutable()))
            open = false;
    }
    for (jit::Value* out : graph->outputs()) {
        if (auto it = slot_of.find(out); it != slot_of.end()) slots[it->second].boundary = true;
        if (auto it = lists.find(out); it != lists.end())
            for (int s : it->second) slots[s].boundary = true;
    }
    fuse_steps();
    for (size_t i = 0; i < steps.size(); ++i)
        for (int s : steps[i].inputs) slots[s].last_use = std::max(slots[s].last_use, static_cast<int>(i));
    for (size_t s = 0; s < slots.size(); ++s)
        if (slots[s].boundary) boundary.push_back(static_cast<int>(s));

    // The clean pass: the graph with a copy of every slot's value as an extra output.
    {
        auto g = graph->copy();
        auto m = map_copy(*graph, *g);
        // One tuple output: (model output, clean activation of slot 1, slot 2, ...).
        std::vector<jit::Value*> outs{g->outputs()[0]};
        for (size_t s = 1; s < slots.size(); ++s) {
            jit::Value* v = m.at(slots[s].values[0]);
            jit::WithInsertPoint guard(v->node()->next());
            outs.push_back(g->insert(c10::aten::clone, {v}));
        }
        while (!g->outputs().empty()) g->eraseOutput(0);
        g->registerOutput(g->insertNode(g->createTuple(outs))->output());
        jit::EliminateDeadCode(g);
        // The simple executor: these graphs run a few times per call, too few to repay profiling.
        clean_fn = std::make_shared<jit::GraphFunction>("convscope_occlusion_clean", g, nullptr,
                                                        jit::ExecutorExecutionMode::SIMPLE);
    }
    // The rest: the graph with the boundary values as inputs; what computed them is dead code.
    {
        auto g = graph->copy();
        auto m = map_copy(*graph, *g);
        for (int s : boundary) {
            jit::Value* in = g->addInput("boundary")->setType(c10::TensorType::get());
            for (const jit::Value* v : slots[s].values) m.at(v)->replaceAllUsesWith(in);
        }
        jit::EliminateDeadCode(g);
        g->lint();
        rest_fn = std::make_shared<jit::GraphFunction>("convscope_occlusion_rest", g, nullptr,
                                                       jit::ExecutorExecutionMode::SIMPLE);
    }

    std::map<std::string, int> counts;
    for (const auto& st : steps) counts[st.name]++;
    note = "incremental: " + std::to_string(steps.size()) + " ops";
    if (!counts.empty()) {
        note += " (";
        bool first = true;
        for (const auto& kv : counts) {
            note += (first ? "" : ", ") + kv.first + " x" + std::to_string(kv.second);
            first = false;
        }
        note += ")";
    }
    note += first_rest.empty() ? "; no full recomputation"
                                : "; full recomputation from " + first_rest;
}

IncValue IncrementalEngine::Impl::run_step(Step& st, std::vector<std::optional<IncValue>>& vals) {
    IncValue out;
    const Slot& os = slots[st.output];
    const int64_t H = os.shape[2], W = os.shape[3];
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
        for (size_t b = 0; b < B; ++b) {
            window_range(st.ax[0], in.y0[b], in.y1[b], out.y0[b], out.y1[b]);
            window_range(st.ax[1], in.x0[b], in.x1[b], out.x0[b], out.x1[b]);
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
        at::Tensor win = gather(st.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw);
        const std::vector<int64_t> stride{st.ax[0].s, st.ax[1].s};
        const std::vector<int64_t> dil{st.ax[0].d, st.ax[1].d};
        const std::vector<int64_t> kernel{st.ax[0].k, st.ax[1].k};
        const std::vector<int64_t> zero{0, 0};
        switch (st.op) {
        case WindowOp::Conv:
            out.patch = at::conv2d(win, st.weight, st.bias, stride, zero, dil, st.groups);
            break;
        case WindowOp::MaxPool:
            out.patch = max_pool(win, st.ax[0], st.ax[1], out.h, out.w);
            break;
        case WindowOp::AvgPool:
            out.patch = at::avg_pool2d(win, kernel, stride, zero, false, true, st.divisor);
            break;
        }
        out.patch = out.patch.contiguous();
        return out;
    }
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
    for (int s : st.inputs) parts.push_back(extract(slots[s].clean, *vals[s], out.py, out.px, out.h, out.w));
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

namespace {
at::Tensor first_tensor(const c10::IValue& v) {
    if (v.isTensor()) return v.toTensor();
    if (v.isTuple() && !v.toTupleRef().elements().empty() && v.toTupleRef().elements()[0].isTensor())
        return v.toTupleRef().elements()[0].toTensor();
    throw Error("the model does not return a tensor from forward: occlusion needs a classifier "
                "that returns logits [N,K]");
}
}  // namespace

IncrementalEngine::IncrementalEngine(const Model& model, const std::vector<int64_t>& chw, double tau)
    : impl_(std::make_unique<Impl>(model, chw, tau)) {
    try {
        impl_->build();
    } catch (const c10::Error& e) {
        std::string what = e.what_without_backtrace();
        throw Error("cannot prepare the model for incremental occlusion (" +
                    what.substr(0, what.find('\n')) + "): use --mode full");
    }
}

IncrementalEngine::~IncrementalEngine() = default;

int64_t IncrementalEngine::bytes_per_image() const {
    int64_t n = 0;
    for (const auto& s : impl_->slots) {
        int64_t e = 1;
        for (size_t i = 1; i < s.shape.size(); ++i) e *= s.shape[i];
        n += e;
    }
    for (const auto& st : impl_->steps)
        if (st.kind == StepKind::Window) {
            const auto& in = impl_->slots[st.inputs[0]].shape;
            n += in[1] * (in[2] + st.ax[0].p + st.ax[0].pad_hi) * (in[3] + st.ax[1].p + st.ax[1].pad_hi);
        }
    return n * static_cast<int64_t>(sizeof(float));
}

int64_t IncrementalEngine::incremental_ops() const { return static_cast<int64_t>(impl_->steps.size()); }
const std::string& IncrementalEngine::note() const { return impl_->note; }

namespace {
Error engine_error(const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    return Error("incremental occlusion failed on this model (" + what.substr(0, what.find('\n')) +
                 "): use --mode full");
}
}  // namespace

at::Tensor IncrementalEngine::set_images(const at::Tensor& images_gchw) {
    try {
        return impl_->set_images(images_gchw);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

at::Tensor IncrementalEngine::run(const at::Tensor& patches, const std::vector<int64_t>& img,
                                  const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) {
    try {
        return impl_->run(patches, img, ys, xs);
    } catch (const c10::Error& e) {
        throw engine_error(e);
    }
}

at::Tensor IncrementalEngine::Impl::set_images(const at::Tensor& images_gchw) {
    torch::NoGradGuard no_grad;
    auto& I = *this;
    I.image = images_gchw.contiguous();
    jit::Stack stack{c10::IValue(I.model.module()._ivalue()), I.image};
    I.clean_fn->run(stack);
    const auto& outs = stack[0].toTupleRef().elements();
    I.slots[0].clean = I.image;
    for (size_t s = 1; s < I.slots.size(); ++s) I.slots[s].clean = outs[s].toTensor().contiguous();
    for (auto& st : I.steps) {
        if (st.kind != StepKind::Window) continue;
        st.padded = at::constant_pad_nd(I.slots[st.inputs[0]].clean,
                                        {st.ax[1].p, st.ax[1].pad_hi, st.ax[0].p, st.ax[0].pad_hi},
                                        st.pad_value)
                        .contiguous();
    }
    return first_tensor(outs[0]);
}

at::Tensor IncrementalEngine::Impl::run(const at::Tensor& patches, const std::vector<int64_t>& img,
                                        const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) {
    torch::NoGradGuard no_grad;
    auto& I = *this;
    const size_t B = ys.size();
    const int64_t G = I.image.size(0);
    for (int64_t g : img) {
        if (g < 0 || g >= G) throw Error("internal error: occlusion image index out of range");
    }
    std::vector<std::optional<IncValue>> vals(I.slots.size());
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
    for (size_t i = 0; i < I.steps.size(); ++i) {
        Step& st = I.steps[i];
        vals[st.output] = I.run_step(st, vals);
        for (int s : st.inputs)
            if (I.slots[s].last_use == static_cast<int>(i) && !I.slots[s].boundary) vals[s].reset();
    }
    jit::Stack stack{c10::IValue(I.model.module()._ivalue()), I.image};
    for (int s : I.boundary) {
        const auto& sh = I.slots[s].shape;
        const std::vector<int64_t> zero(B, 0);
        stack.push_back(extract(I.slots[s].clean, *vals[s], zero, zero, sh[2], sh[3]));
    }
    vals.clear();
    I.rest_fn->run(stack);
    return first_tensor(stack[0]);
}

}  // namespace convscope::detail
