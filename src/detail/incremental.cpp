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
#include <array>
#include <cmath>
#include <cstdint>
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
// recorded/ids: the shapes it recorded (if it did) and the recorded values' unique ids.
bool fold_shape_queries(std::shared_ptr<jit::Graph>& g, const jit::Module& module, const at::Tensor& zeros,
                        std::map<const jit::Value*, std::vector<int64_t>>& recorded,
                        std::map<const jit::Value*, size_t>& ids) {
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
    recorded = record_shapes(*g, module, zeros);
    ids.clear();
    for (const auto& kv : recorded) ids[kv.first] = kv.first->unique();
    const auto& shapes = recorded;
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

// Copies n floats; for the short rows of patches a loop beats a memcpy call.
inline void copy_floats(float* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

// Grain for at::parallel_for over planes of `per_plane` values: parallel only when there is
// enough to do to repay waking the other threads.
inline int64_t plane_grain(int64_t per_plane) {
    return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, per_plane));
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

// The part of position b's window (rows [wy, wy + L), columns [wx, wx + Lw), source coordinates)
// that v's patch box, offset by (off_y, off_x), covers: rows [y0, y1) and columns [x0, x1), empty
// when y0 >= y1 or x0 >= x1; (py, px) is where the patch box starts.
struct Overlap {
    int64_t py, px, y0, y1, x0, x1;
};
Overlap overlap(const IncValue& v, int64_t b, int64_t off_y, int64_t off_x, int64_t wy, int64_t wx, int64_t L,
                int64_t Lw) {
    const int64_t py = v.py[b] + off_y, px = v.px[b] + off_x;
    return {py, px, std::max(wy, py), std::min(wy + L, py + v.h), std::max(wx, px), std::min(wx + Lw, px + v.w)};
}

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
    at::parallel_for(0, B * C, plane_grain(L * Lw), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            const float* sc = s + (v.img[b] * C + c) * Hs * Ws;
            const float* pc = p + i * h * w;
            float* dc = d + i * L * Lw;
            const int64_t y0 = wy[b], x0 = wx[b];
            const Overlap o = overlap(v, b, off_y, off_x, y0, x0, L, Lw);
            for (int64_t r = 0; r < L; ++r) {
                const int64_t y = y0 + r;
                float* drow = dc + r * Lw;
                // Rows are short (a few to a few dozen values): plain loops, not memcpy calls.
                copy_floats(drow, sc + y * Ws + x0, Lw);
                if (o.x0 < o.x1 && y >= o.y0 && y < o.y1)
                    copy_floats(drow + (o.x0 - x0), pc + (y - o.py) * w + (o.x0 - o.px), o.x1 - o.x0);
            }
        }
    });
    return dst;
}

// float <-> bfloat16 bits: round to nearest even (finite values), and back. Plain integer
// arithmetic that the compiler vectorises, unlike c10::BFloat16's per-value conversion.
inline uint16_t to_bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float from_bf16_bits(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// The change of v against the clean values on the windows (as gather), in bfloat16: zero outside
// v's patch box.
at::Tensor gather_change(const at::Tensor& clean_padded, const IncValue& v, int64_t off_y, int64_t off_x,
                         const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L,
                         int64_t Lw) {
    const int64_t B = static_cast<int64_t>(wy.size());
    const int64_t C = clean_padded.size(1), Hs = clean_padded.size(2), Ws = clean_padded.size(3);
    at::Tensor dst = at::zeros({B, C, L, Lw}, clean_padded.options().dtype(at::kBFloat16));
    const float* s = clean_padded.data_ptr<float>();
    const float* p = v.patch.data_ptr<float>();
    uint16_t* d = reinterpret_cast<uint16_t*>(dst.data_ptr<c10::BFloat16>());
    const int64_t h = v.h, w = v.w;
    at::parallel_for(0, B * C, plane_grain(h * w), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            const float* sc = s + (v.img[b] * C + c) * Hs * Ws;
            const float* pc = p + i * h * w;
            uint16_t* dc = d + i * L * Lw;
            const Overlap o = overlap(v, b, off_y, off_x, wy[b], wx[b], L, Lw);
            for (int64_t y = o.y0; y < o.y1; ++y) {
                const float* pr = pc + (y - o.py) * w - o.px;
                const float* sr = sc + y * Ws;
                uint16_t* dr = dc + (y - wy[b]) * Lw - wx[b];
                for (int64_t x = o.x0; x < o.x1; ++x) dr[x] = to_bf16_bits(pr[x] - sr[x]);
            }
        }
    });
    return dst;
}

// The clean values src[img[b]] [G,C,H,W] on the boxes (py[b], px[b], h, w): [B,C,h,w], plus
// add_bf16 ([B,C,h,w] bfloat16 bits) if given.
at::Tensor clean_windows(const at::Tensor& src, const std::vector<int64_t>& img, const std::vector<int64_t>& py,
                         const std::vector<int64_t>& px, int64_t h, int64_t w,
                         const uint16_t* add_bf16 = nullptr) {
    const int64_t B = static_cast<int64_t>(img.size()), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
    at::Tensor dst = at::empty({B, C, h, w}, src.options());
    const float* s = src.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    at::parallel_for(0, B * C, plane_grain(h * w), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            for (int64_t r = 0; r < h; ++r) {
                float* dr = d + (i * h + r) * w;
                const float* sr = s + ((img[b] * C + c) * Hs + py[b] + r) * Ws + px[b];
                if (!add_bf16) {
                    copy_floats(dr, sr, w);
                    continue;
                }
                const uint16_t* ar = add_bf16 + (i * h + r) * w;
                for (int64_t x = 0; x < w; ++x) dr[x] = sr[x] + from_bf16_bits(ar[x]);
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
    int64_t min_cap = 1;                 // thresholding keeps at least this many outputs: the
                                         // occluder's own footprint on this map (plan_linear)
};

// Max pooling, for each position b, of the window rows [wy[b], wy[b]+L) and columns [wx[b],
// wx[b]+Lw) of src[v.img[b]] (the padded clean input [G,C,Hs,Ws]) with v's patch pasted in (at
// offset (off_y, off_x)), to [B,C,oh,ow], reading the rows in place rather than gathering the
// windows first. NaN propagates, as in at::max_pool2d.
at::Tensor max_pool(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                    const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw,
                    const Axis& ay, const Axis& ax, int64_t oh, int64_t ow) {
    const int64_t B = static_cast<int64_t>(wy.size());
    const int64_t C = src.size(1), Hs = src.size(2), Ws = src.size(3);
    at::Tensor out = at::empty({B, C, oh, ow}, src.options());
    const float* s = src.data_ptr<float>();
    const float* p = v.patch.data_ptr<float>();
    float* d = out.data_ptr<float>();
    // The larger of m and x, NaN if either is (as at::max_pool2d); branch-free, so that loops of it
    // vectorise.
    auto nanmax = [](float m, float x) { return (x > m || x != x) ? x : m; };
    const bool pool2x2 = ay.k == 2 && ay.s == 2 && ax.k == 2 && ax.s == 2 && ay.d == 1 && ax.d == 1;
    at::parallel_for(0, B * C, plane_grain(oh * ay.k * Lw), [&](int64_t begin, int64_t end) {
        // Per window row of the current position: where it comes from (the clean row, a row of
        // the patch, or the clean row with the patch's part pasted in) and the offsets, the same
        // for every channel; recomputed when the position changes.
        enum Kind : uint8_t { Clean, Patch, Mixed };
        std::vector<uint8_t> kind(L);
        std::vector<int64_t> coff(L), poff(L);
        std::vector<float> rows(Lw), mixed(2 * Lw);  // mixed rows: slot 0, and slot 1 for 2x2's second row
        int64_t a = 0, e = 0, cur_b = -1;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            if (b != cur_b) {
                cur_b = b;
                const Overlap o = overlap(v, b, off_y, off_x, wy[b], wx[b], L, Lw);
                a = o.x0 - wx[b], e = o.x1 - wx[b];
                for (int64_t r = 0; r < L; ++r) {
                    const int64_t y = wy[b] + r;
                    coff[r] = y * Ws;
                    if (o.x0 >= o.x1 || y < o.y0 || y >= o.y1) {
                        kind[r] = Clean;
                        continue;
                    }
                    poff[r] = (y - o.py) * v.w + (o.x0 - o.px);
                    kind[r] = (a == 0 && e == Lw) ? Patch : Mixed;
                }
            }
            const float* sc = s + (v.img[b] * C + c) * Hs * Ws + wx[b];
            const float* pc = p + i * v.h * v.w;
            // Window row r; a mixed row is assembled in the given slot of mixed.
            auto row = [&](int64_t r, int64_t slot) -> const float* {
                switch (kind[r]) {
                    case Clean: return sc + coff[r];
                    case Patch: return pc + poff[r];
                    default: break;
                }
                float* m = mixed.data() + slot * Lw;
                const float* clean = sc + coff[r];
                copy_floats(m, clean, a);
                copy_floats(m + a, pc + poff[r], e - a);
                copy_floats(m + e, clean + e, Lw - e);
                return m;
            };
            float* dp = d + i * oh * ow;
            float* rs = rows.data();
            if (pool2x2) {
                // 2x2 windows at stride 2 (the usual pooling): the rows' maximum per column, then
                // pairs of columns.
                for (int64_t oy = 0; oy < oh; ++oy) {
                    const float* r0 = row(2 * oy, 0);
                    const float* r1 = row(2 * oy + 1, 1);
                    for (int64_t x = 0; x < 2 * ow; ++x) rs[x] = nanmax(r0[x], r1[x]);
                    for (int64_t ox = 0; ox < ow; ++ox) dp[oy * ow + ox] = nanmax(rs[2 * ox], rs[2 * ox + 1]);
                }
                continue;
            }
            for (int64_t oy = 0; oy < oh; ++oy) {
                // The window rows' maximum per column, then across columns.
                const float* r0 = row(oy * ay.s, 0);
                for (int64_t x = 0; x < Lw; ++x) rs[x] = r0[x];
                for (int64_t ky = 1; ky < ay.k; ++ky) {
                    const float* r = row(oy * ay.s + ky * ay.d, 0);
                    for (int64_t x = 0; x < Lw; ++x) rs[x] = nanmax(rs[x], r[x]);
                }
                for (int64_t ox = 0; ox < ow; ++ox) {
                    const float* cp = rs + ox * ax.s;
                    float m = cp[0];
                    for (int64_t kx = 1; kx < ax.k; ++kx) m = nanmax(m, cp[kx * ax.d]);
                    dp[oy * ow + ox] = m;
                }
            }
        }
    });
    return out;
}

// Whether the CPU multiplies bfloat16 natively (AVX512-BF16): then bfloat16 convolutions run about
// twice as fast as float32 ones; elsewhere they are emulated and slower.
bool cpu_has_bf16() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool yes = __builtin_cpu_supports("avx512bf16");
    return yes;
#else
    return false;
#endif
}

// Dot products of one vector with m others (row j at rows + j * stride), added to acc[j]: the
// inner loop of the first-order correction.
inline void dots_body(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    for (int64_t j = 0; j < m; ++j) {
        const float* r = rows + j * stride;
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; ++k) part[k] += r[i + k] * v[i + k];
        double s = 0;
        for (; i < n; ++i) s += static_cast<double>(r[i]) * v[i];
        for (int k = 0; k < 8; ++k) s += part[k];
        acc[j] += s;
    }
}
__attribute__((target("avx2,fma"))) void dots_avx2(const float* v, const float* rows, int64_t stride, int64_t n,
                                                    int64_t m, double* acc) {
    dots_body(v, rows, stride, n, m, acc);
}
void dots_generic(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    dots_body(v, rows, stride, n, m, acc);
}
void dots(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    if (avx2) dots_avx2(v, rows, stride, n, m, acc);
    else dots_generic(v, rows, stride, n, m, acc);
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
    mutable std::optional<jit::Operation> operation;  // called from const run paths (stateless)
    std::vector<c10::IValue> args;
    std::vector<size_t> dyn_args;  // positions of the dynamic arguments
    // First-order correction of thresholded convolutions (approximate mode): per image and
    // corrected class, the gradient of the class's logit at the clean image with respect to this
    // step's output [G,m,Cout,H,W], and its pull-back through this step onto the padded input
    // [G,m,Cin,Hp,Wp].
    bool linear = false;  // this step may be thresholded and gets the correction
    at::Tensor grad_out, grad_in;
    at::Tensor weight_bf16;  // the weight in bfloat16, for delta_bf16 (made by run)
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
    // The same graphs run node by node where they have no blocks (no compilation on the first
    // run, which every call of occlusion() would pay: the engine lives for one call).
    std::optional<GraphRunner> clean_runner, rest_runner;
    at::Tensor image;
    at::Tensor clean_out;  // the model's output for the clean images
    std::string note;
    int64_t linear_classes = 0;  // classes per image that get the first-order correction
    at::Tensor classes;          // [G,m] those classes (int64), set with the images
    std::shared_ptr<jit::GraphFunction> grad_fn;  // output with a zero probe added at each linear step
    // The fully connected head: flatten(slot) -> linear, computed here rather than by the rest of
    // the graph (which then starts from its output): in bfloat16 mode from the change alone.
    struct Head {
        int slot = -1;                   // the flattened slot ([1,C,H,W]); -1: no head
        const jit::Value* out = nullptr;  // the linear's output in the graph
        at::Tensor weight, bias;          // [O, C*H*W] and [O] (or undefined)
        at::Tensor weight_bf16;           // made by run in bfloat16 mode
        at::Tensor clean;                 // [G,O] its output for the clean images
    } head;
    bool plan_head(jit::Node* n);
    at::Tensor run_head(const IncValue& v) const;

    Impl(const Model& m, std::vector<int64_t> shape, double t) : model(m), chw(std::move(shape)), tau(t) {}
    bool bf16 = false;  // approximate mode: convolve changes in bfloat16 (where the CPU has it)
    bool delta_bf16() const { return bf16 && cpu_has_bf16(); }
    // Whether this step convolves its change in bfloat16: a convolution in that mode, unless it
    // has few weights per output (a first layer on grey images), where bfloat16's fixed costs
    // outweigh the arithmetic.
    bool bf16_step(const Step& st) const {
        constexpr int64_t kMinBf16Taps = 32;
        return delta_bf16() && st.kind == StepKind::Window && st.op == WindowOp::Conv &&
               st.weight.numel() / st.weight.size(0) >= kMinBf16Taps;
    }
    void build();
    bool plan_node(jit::Node* n, const std::map<const jit::Value*, std::vector<int64_t>>& shapes,
                   std::unordered_map<const jit::Value*, std::vector<int>>& lists);
    at::Tensor set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm);
    at::Tensor run(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                   const std::vector<int64_t>& xs);
    at::Tensor run_chunk(const at::Tensor& patches, const std::vector<int64_t>& img, const std::vector<int64_t>& ys,
                         const std::vector<int64_t>& xs, int& unplanned_cut) const;
    IncValue run_step(const Step& st, std::vector<std::optional<IncValue>>& vals, bool& capped) const;
    void fuse_steps();
    bool window_range(const Axis& a, int64_t c0, int64_t c1, int64_t& o0, int64_t& o1, bool may_cap) const;
    void plan_linear(int64_t patch_h, int64_t patch_w, int64_t m);
    double field_coverage(int64_t patch_h, int64_t patch_w) const;
    std::vector<std::array<int64_t, 2>> propagate(int axis, int64_t start, int64_t patch, bool may_cap,
                                                  std::vector<char>& cut) const;
    std::shared_ptr<jit::GraphFunction> make_clean_fn(const std::vector<size_t>& probed) const;
    void clean_pass();
    void add_correction(const Step& st, const IncValue& in, const IncValue& out, std::vector<double>& corr) const;
};

bool IncrementalEngine::Impl::window_range(const Axis& a, int64_t c0, int64_t c1, int64_t& o0,
                                           int64_t& o1, bool may_cap) const {
    // Output o reads input rows [o*s - p, o*s - p + (k-1)*d]; it can change when that range
    // meets the changed rows [c0, c1).
    o0 = std::max<int64_t>(0, ceil_div(c0 + a.p - (a.k - 1) * a.d, a.s));
    o1 = std::min<int64_t>(a.out, floor_div(c1 - 1 + a.p, a.s) + 1);
    if (o1 <= o0) {  // nothing can change (a strided op skips the rows): keep one unit
        o0 = std::min<int64_t>(std::max<int64_t>(o0, 0), a.out - 1);
        o1 = o0 + 1;
    }
    if (tau < 1.0 && may_cap) {
        const int64_t cap = std::max<int64_t>(a.min_cap, static_cast<int64_t>(std::ceil(tau * a.out)));
        if (o1 - o0 > cap) {
            // Keep the cap-sized part centred on the change (projective field thresholding).
            const int64_t mid2 = o0 + o1;  // twice the centre
            int64_t start = (mid2 - cap) / 2;
            start = std::max<int64_t>(0, std::min(start, a.out - cap));
            o0 = start;
            o1 = start + cap;
            return true;
        }
    }
    return false;
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
    std::map<const jit::Value*, std::vector<int64_t>> shapes;
    std::map<const jit::Value*, size_t> ids;
    for (int round = 0; round < 4; ++round) {
        if (!fold_shape_queries(graph, module, zeros, shapes, ids)) break;
        simplify(graph);
    }
    // The last recording still holds if every tensor the graph computes now was recorded (the
    // simplification after it only folds constants and removes dead code; unique ids tell a
    // recorded value from a new one at a reused address); else record again.
    auto recorded = [&](const jit::Value* v) {
        auto it = ids.find(v);
        return it != ids.end() && it->second == v->unique();
    };
    bool complete = recorded(graph->inputs()[1]);
    for (jit::Node* n : graph->nodes())
        for (jit::Value* v : n->outputs())
            if (complete && is_tensor(v) && !recorded(v)) complete = false;
    if (!complete) shapes = record_shapes(*graph, module, zeros);

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
        if (open && !any_full && head.slot < 0 && plan_head(n)) {
            full.insert(head.out);  // image-dependent, and computed before the rest
            continue;
        }
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

    clean_fn = make_clean_fn({});
    try {
        clean_runner.emplace(clean_fn->graph());
    } catch (const std::exception&) {
        clean_runner.reset();  // blocks, or an op without an operation: the GraphFunction runs it
    }
    // The rest: the graph with the boundary values as inputs; what computed them is dead code.
    {
        auto g = graph->copy();
        auto m = map_copy(*graph, *g);
        for (int s : boundary) {
            jit::Value* in = g->addInput("boundary")->setType(c10::TensorType::get());
            for (const jit::Value* v : slots[s].values) m.at(v)->replaceAllUsesWith(in);
        }
        if (head.slot >= 0) {
            jit::Value* in = g->addInput("head")->setType(c10::TensorType::get());
            m.at(head.out)->replaceAllUsesWith(in);
        }
        jit::EliminateDeadCode(g);
        g->lint();
        try {
            rest_runner.emplace(g);
        } catch (const std::exception&) {
            rest_runner.reset();
        }
        rest_fn = std::make_shared<jit::GraphFunction>("convscope_occlusion_rest", g, nullptr,
                                                       jit::ExecutorExecutionMode::SIMPLE);
    }

    std::map<std::string, int> counts;
    for (const auto& st : steps) counts[st.name]++;
    if (head.slot >= 0) counts["flatten+linear"]++;
    note = "incremental: " + std::to_string(steps.size() + (head.slot >= 0 ? 1 : 0)) + " ops";
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

namespace {
at::Tensor first_tensor(const c10::IValue& v) {
    if (v.isTensor()) return v.toTensor();
    if (v.isTuple() && !v.toTupleRef().elements().empty() && v.toTupleRef().elements()[0].isTensor())
        return v.toTupleRef().elements()[0].toTensor();
    throw Error("the model does not return a tensor from forward: occlusion needs a classifier "
                "that returns logits [N,K]");
}
}  // namespace

// The changed rows (axis 0) or columns (axis 1) of every slot, [begin, end), for a window at
// [start, start + patch) on that axis, propagated through the plan as run_step does (the axes do
// not interact); with may_cap, convolutions are thresholded and cut[i] tells whether step i was.
std::vector<std::array<int64_t, 2>> IncrementalEngine::Impl::propagate(int axis, int64_t start, int64_t patch,
                                                                        bool may_cap, std::vector<char>& cut) const {
    std::vector<std::array<int64_t, 2>> box(slots.size());
    box[0] = {start, std::min(chw[1 + axis], start + patch)};
    cut.assign(steps.size(), 0);
    for (size_t i = 0; i < steps.size(); ++i) {
        const Step& st = steps[i];
        std::array<int64_t, 2> b = box[st.inputs[0]];
        if (st.kind == StepKind::Window) {
            const std::array<int64_t, 2> in = b;
            cut[i] = window_range(st.ax[axis], in[0], in[1], b[0], b[1], may_cap && st.op == WindowOp::Conv);
        } else if (st.kind != StepKind::Pointwise) {
            for (int k : st.inputs) {
                b[0] = std::min(b[0], box[k][0]);
                b[1] = std::max(b[1], box[k][1]);
            }
        }
        box[st.output] = b;
    }
    return box;
}

// The largest share of a convolution's output map that a centred window of patch_h x patch_w can
// change (the smaller of the row and column shares; thresholding ignored).
double IncrementalEngine::Impl::field_coverage(int64_t patch_h, int64_t patch_w) const {
    std::vector<char> cut;
    std::array<std::vector<std::array<int64_t, 2>>, 2> box;
    for (int axis = 0; axis < 2; ++axis) {
        const int64_t size = chw[1 + axis], patch = axis == 0 ? patch_h : patch_w;
        box[axis] = propagate(axis, std::max<int64_t>(0, (size - patch) / 2), patch, false, cut);
    }
    double most = 0;
    for (const auto& st : steps)
        if (st.kind == StepKind::Window && st.op == WindowOp::Conv) {
            const auto &y = box[0][st.output], &x = box[1][st.output];
            most = std::max(most, std::min(double(y[1] - y[0]) / double(st.ax[0].out),
                                           double(x[1] - x[0]) / double(st.ax[1].out)));
        }
    return most;
}

// Which convolutions thresholding can cut for a window of patch_h x patch_w: every window
// position along the rows, and likewise the columns.
void IncrementalEngine::Impl::plan_linear(int64_t patch_h, int64_t patch_w, int64_t m) {
    linear_classes = tau < 1.0 ? m : 0;
    for (auto& st : steps) st.linear = false;
    grad_fn.reset();
    // Thresholding never cuts into the occluder's own footprint (the window scaled to the map,
    // plus one for its alignment): there the changes are large and far from linear.
    for (auto& st : steps)
        if (st.kind == StepKind::Window)
            for (int axis = 0; axis < 2; ++axis) {
                const int64_t size = chw[1 + axis], patch = axis == 0 ? patch_h : patch_w;
                st.ax[axis].min_cap = std::min(st.ax[axis].out, ceil_div(patch * st.ax[axis].out, size) + 1);
            }
    if (linear_classes <= 0) return;
    std::vector<char> cut;
    for (int axis = 0; axis < 2; ++axis) {
        const int64_t size = chw[1 + axis], patch = axis == 0 ? patch_h : patch_w;
        for (int64_t start = 0; start + patch <= size; ++start) {
            propagate(axis, start, patch, true, cut);
            for (size_t i = 0; i < steps.size(); ++i) steps[i].linear = steps[i].linear || cut[i];
        }
    }
}

// The clean pass: the graph with a copy of every slot's value as an extra output, one tuple
// (model output, clean activation of slot 1, slot 2, ...). With probed steps, a probe input (a
// zero tensor) is added to each of their outputs: the gradient with respect to a probe is the
// gradient with respect to that output.
std::shared_ptr<jit::GraphFunction> IncrementalEngine::Impl::make_clean_fn(const std::vector<size_t>& probed) const {
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

// Runs the clean images through the model and keeps every slot's activation (and each window
// op's padded input). With corrected classes, the same pass records autograd and adds what the
// correction needs: one backward pass per class column gives the gradients at the linear steps'
// outputs, and autograd through each step alone pulls them back onto its padded input.
void IncrementalEngine::Impl::clean_pass() {
    std::vector<size_t> lin;
    if (classes.defined())
        for (size_t i = 0; i < steps.size(); ++i)
            if (steps[i].linear) lin.push_back(i);
    if (!lin.empty() && !grad_fn) grad_fn = make_clean_fn(lin);
    at::AutoGradMode grad_mode(!lin.empty());
    jit::Stack stack{c10::IValue(model.module()._ivalue()), image};
    std::vector<at::Tensor> probes;
    for (size_t i : lin) {
        const auto& sh = slots[steps[i].output].shape;
        probes.push_back(at::zeros({image.size(0), sh[1], sh[2], sh[3]}, image.options()).requires_grad_(true));
        stack.push_back(probes.back());
    }
    if (lin.empty() && clean_runner) stack = clean_runner->run(std::move(stack));
    else (lin.empty() ? clean_fn : grad_fn)->run(stack);
    const auto& outs = stack[0].toTupleRef().elements();
    slots[0].clean = image;
    for (size_t s = 1; s < slots.size(); ++s) slots[s].clean = outs[s].toTensor().detach().contiguous();
    for (auto& st : steps) {
        st.grad_out = st.grad_in = at::Tensor();
        if (st.kind != StepKind::Window) continue;
        st.padded = at::constant_pad_nd(slots[st.inputs[0]].clean,
                                        {st.ax[1].p, st.ax[1].pad_hi, st.ax[0].p, st.ax[0].pad_hi}, st.pad_value)
                        .contiguous();
    }
    clean_out = first_tensor(outs[0]);
    if (head.slot >= 0)
        head.clean = at::linear(slots[head.slot].clean.flatten(1), head.weight,
                                head.bias.defined() ? c10::optional<at::Tensor>(head.bias) : c10::nullopt)
                         .contiguous();
    if (lin.empty()) return;
    const int64_t G = image.size(0), m = classes.size(1);
    const at::Tensor out = clean_out;
    if (out.dim() != 2 || out.size(0) != G)
        throw Error("the model's output is not [N,K] logits: the approximate occlusion needs them");
    clean_out = out.detach();
    std::vector<std::vector<at::Tensor>> per_class(lin.size());  // [step][class] -> [G,C,H,W]
    for (int64_t j = 0; j < m; ++j) {
        const at::Tensor onehot = at::zeros_like(out).scatter_(1, classes.select(1, j).view({G, 1}), 1.0);
        auto grads = torch::autograd::grad({out}, probes, {onehot}, /*retain_graph=*/j + 1 < m,
                                           /*create_graph=*/false, /*allow_unused=*/true);
        for (size_t k = 0; k < lin.size(); ++k)
            per_class[k].push_back(grads[k].defined() ? grads[k].detach() : at::zeros_like(probes[k]));
    }
    for (size_t k = 0; k < lin.size(); ++k) {
        Step& st = steps[lin[k]];
        // The pull-back through the convolution alone (the gradient of its input), for all classes
        // at once; the convolution of the padded input may give more rows than the output has.
        const int64_t Hp = st.padded.size(2), Wp = st.padded.size(3);
        const int64_t nh = (Hp - st.ax[0].d * (st.ax[0].k - 1) - 1) / st.ax[0].s + 1;
        const int64_t nw = (Wp - st.ax[1].d * (st.ax[1].k - 1) - 1) / st.ax[1].s + 1;
        const at::Tensor go = at::constant_pad_nd(at::cat(per_class[k], 0),
                                                  {0, nw - st.ax[1].out, 0, nh - st.ax[0].out}, 0.0);
        const at::Tensor in_shape = at::empty({go.size(0), st.padded.size(1), Hp, Wp}, st.padded.options());
        const std::vector<int64_t> stride{st.ax[0].s, st.ax[1].s}, dil{st.ax[0].d, st.ax[1].d}, zero{0, 0};
        const at::Tensor gin = std::get<0>(at::convolution_backward(
            go, in_shape, st.weight, c10::nullopt, stride, zero, dil, false, zero, st.groups, {true, false, false}));
        std::vector<at::Tensor> pulled = gin.split(G, 0);
        // Laid out [G,H,W,m,C]: per position of the map, the m classes' gradients over the channels.
        st.grad_out = at::stack(per_class[k], 1).permute({0, 3, 4, 1, 2}).contiguous();
        st.grad_in = at::stack(pulled, 1).permute({0, 3, 4, 1, 2}).contiguous();
    }
}

// Adds to corr[b*m + j] the first-order effect on class j of what thresholding cut from this
// step's output at position b: the change the step's input makes through the whole linear
// step (the pull-back of the gradient dotted with the input change) minus the part of it inside
// the computed output box (the gradient dotted with the output change there).
void IncrementalEngine::Impl::add_correction(const Step& st, const IncValue& in, const IncValue& out,
                                             std::vector<double>& corr) const {
    const int64_t B = static_cast<int64_t>(in.py.size()), m = classes.size(1);
    const at::Tensor& oclean = slots[st.output].clean;
    // One side: sign * sum over the box (y0, x0, h, w) of the change (patch - clean) dotted with the
    // gradient grad [G,Hs,Ws,m,C] there.
    auto side = [&](int64_t b, const at::Tensor& patch, const at::Tensor& clean, const at::Tensor& grad,
                    int64_t y0, int64_t x0, int64_t h, int64_t w, double sign, std::vector<float>& t,
                    std::vector<double>& part, double* acc) {
        const int64_t C = patch.size(1), Hs = clean.size(2), Ws = clean.size(3), g = in.img[b];
        const float* pp = patch.data_ptr<float>() + b * C * h * w;
        const float* cp = clean.data_ptr<float>() + g * C * Hs * Ws;
        // The change, laid out [h,w,C] as the gradient.
        t.resize(C * h * w);
        for (int64_t c = 0; c < C; ++c)
            for (int64_t r = 0; r < h; ++r) {
                const float* src = pp + (c * h + r) * w;
                const float* cl = cp + (c * Hs + y0 + r) * Ws + x0;
                float* dst = t.data() + r * w * C + c;
                for (int64_t x = 0; x < w; ++x) dst[x * C] = src[x] - cl[x];
            }
        part.assign(m, 0.0);
        const float* gp = grad.data_ptr<float>() + g * Hs * Ws * m * C;
        for (int64_t r = 0; r < h; ++r)
            for (int64_t x = 0; x < w; ++x)
                dots(t.data() + (r * w + x) * C, gp + ((y0 + r) * Ws + x0 + x) * m * C, C, C, m, part.data());
        for (int64_t j = 0; j < m; ++j) acc[j] += sign * part[j];
    };
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> t;
        std::vector<double> part;
        for (int64_t b = begin; b < end; ++b) {
            double* acc = corr.data() + b * m;
            side(b, in.patch, st.padded, st.grad_in, in.py[b] + st.ax[0].p, in.px[b] + st.ax[1].p, in.h, in.w,
                 1.0, t, part, acc);
            side(b, out.patch, oclean, st.grad_out, out.py[b], out.px[b], out.h, out.w, -1.0, t, part, acc);
        }
    });
}

IncValue IncrementalEngine::Impl::run_step(const Step& st, std::vector<std::optional<IncValue>>& vals,
                                           bool& capped) const {
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
        // Only convolutions are thresholded: their cut-off changes get the first-order correction.
        const bool may_cap = st.op == WindowOp::Conv;
        for (size_t b = 0; b < B; ++b) {
            capped |= window_range(st.ax[0], in.y0[b], in.y1[b], out.y0[b], out.y1[b], may_cap);
            capped |= window_range(st.ax[1], in.x0[b], in.x1[b], out.x0[b], out.x1[b], may_cap);
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
            const at::Tensor change = gather_change(st.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw);
            const at::Tensor delta =
                at::conv2d(change, st.weight_bf16, at::Tensor(), stride, zero, dil, st.groups).contiguous();
            out.patch = clean_windows(os.clean, out.img, out.py, out.px, out.h, out.w,
                                      reinterpret_cast<const uint16_t*>(delta.data_ptr<c10::BFloat16>()));
            return out;
        }
        if (st.op == WindowOp::MaxPool) {
            out.patch = max_pool(st.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw, st.ax[0], st.ax[1], out.h, out.w);
            return out;
        }
        const at::Tensor win = gather(st.padded, in, st.ax[0].p, st.ax[1].p, wy, wx, L, Lw);
        out.patch = (st.op == WindowOp::Conv ? at::conv2d(win, st.weight, st.bias, stride, zero, dil, st.groups)
                                             : at::avg_pool2d(win, kernel, stride, zero, false, true, st.divisor))
                        .contiguous();
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
            const auto& out = impl_->slots[st.output].shape;
            const int64_t padded = in[1] * (in[2] + st.ax[0].p + st.ax[0].pad_hi) * (in[3] + st.ax[1].p + st.ax[1].pad_hi);
            n += padded;
            if (st.linear) n += impl_->linear_classes * (padded + out[1] * out[2] * out[3]);
        }
    return n * static_cast<int64_t>(sizeof(float));
}

int64_t IncrementalEngine::incremental_ops() const {
    return static_cast<int64_t>(impl_->steps.size()) + (impl_->head.slot >= 0 ? 1 : 0);
}
const std::string& IncrementalEngine::note() const { return impl_->note; }

namespace {
Error engine_error(const c10::Error& e) {
    const std::string what = e.what_without_backtrace();
    return Error("incremental occlusion failed on this model (" + what.substr(0, what.find('\n')) +
                 "): use --mode full");
}
}  // namespace

double IncrementalEngine::field_coverage(int64_t patch_h, int64_t patch_w) const {
    return impl_->field_coverage(patch_h, patch_w);
}

void IncrementalEngine::set_tau(double tau) {
    impl_->tau = tau;
    impl_->grad_fn.reset();
    for (auto& st : impl_->steps) st.linear = false;
    impl_->linear_classes = 0;
}

bool IncrementalEngine::set_bf16(bool on) {
    impl_->bf16 = on;
    return impl_->delta_bf16();
}

void IncrementalEngine::plan_linear(int64_t patch_h, int64_t patch_w, int64_t classes_per_image) {
    impl_->plan_linear(patch_h, patch_w, classes_per_image);
}

at::Tensor IncrementalEngine::set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm) {
    try {
        return impl_->set_images(images_gchw, classes_gm);
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

at::Tensor IncrementalEngine::Impl::set_images(const at::Tensor& images_gchw, const at::Tensor& classes_gm) {
    torch::NoGradGuard no_grad;
    image = images_gchw.contiguous();
    classes = at::Tensor();
    if (linear_classes > 0 && classes_gm.defined()) {
        if (classes_gm.dim() != 2 || classes_gm.size(0) != image.size(0))
            throw Error("internal error: occlusion classes do not match the images");
        classes = classes_gm.to(at::kLong).contiguous();
    }
    clean_pass();
    return clean_out;
}

at::Tensor IncrementalEngine::Impl::run(const at::Tensor& patches, const std::vector<int64_t>& img,
                                        const std::vector<int64_t>& ys, const std::vector<int64_t>& xs) {
    torch::NoGradGuard no_grad;
    const int64_t B = static_cast<int64_t>(ys.size());
    const int64_t G = image.size(0);
    for (int64_t g : img) {
        if (g < 0 || g >= G) throw Error("internal error: occlusion image index out of range");
    }
    for (auto& st : steps)
        if (bf16_step(st) && !st.weight_bf16.defined()) st.weight_bf16 = st.weight.to(at::kBFloat16).contiguous();
    if (head.slot >= 0 && delta_bf16() && !head.weight_bf16.defined())
        head.weight_bf16 = head.weight.to(at::kBFloat16).contiguous();
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
            outs[c] = run_chunk(chunks == 1 ? all : all.slice(0, b0, b1), part(img), part(ys), part(xs), unplanned[c]);
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
                steps[u].linear = true;
                replan = true;
            }
        if (!replan) return chunks == 1 ? outs[0] : at::cat(outs, 0);
        grad_fn.reset();
        clean_pass();
    }
}

// run() for one share of the positions, on the calling thread's ops. Sets unplanned_cut to a step
// that thresholding cut without a planned correction (and returns nothing): run() replans.
// flatten(x, 1) -> linear(., W, b) on a planned slot x [1,C,H,W], the flatten's only reader being
// the linear, with constant float weights: the head is computed by run_head, and the rest of the
// graph starts from the linear's output (the flatten and the linear become dead code there).
bool IncrementalEngine::Impl::plan_head(jit::Node* n) {
    if (n->kind() != c10::aten::flatten || n->inputs().size() != 3) return false;
    auto it = slot_of.find(n->input(0));
    if (it == slot_of.end()) return false;
    const auto& sh = slots[it->second].shape;
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
    head.slot = it->second;
    head.out = u->output();
    head.weight = weight.contiguous();
    head.bias = b->isTensor() ? b->toTensor().contiguous() : at::Tensor();
    return true;
}

// The head's output [B,O] for the positions of v (the flattened slot's incremental value). In
// bfloat16 mode: the clean output plus the weight times the change (zero outside the changed
// box) in bfloat16, whose rounding scales with the change as in the convolutions; else the linear
// of the occluded activations in float32.
at::Tensor IncrementalEngine::Impl::run_head(const IncValue& v) const {
    const Slot& sl = slots[head.slot];
    const int64_t B = v.patch.size(0), C = sl.shape[1], H = sl.shape[2], W = sl.shape[3];
    const std::vector<int64_t> zero(B, 0);
    if (!delta_bf16()) {
        const at::Tensor full = extract(sl.clean, v, zero, zero, H, W);
        return at::linear(full.reshape({B, C * H * W}), head.weight,
                          head.bias.defined() ? c10::optional<at::Tensor>(head.bias) : c10::nullopt);
    }
    // The change on the whole map, in bfloat16 (zero outside the patch box).
    const at::Tensor delta = gather_change(sl.clean, v, 0, 0, zero, zero, H, W);
    const at::Tensor change = at::linear(delta.view({B, C * H * W}), head.weight_bf16);
    return head.clean.index_select(0, torch::tensor(v.img, at::kLong)) + change.to(at::kFloat);
}

at::Tensor IncrementalEngine::Impl::run_chunk(const at::Tensor& patches, const std::vector<int64_t>& img,
                                              const std::vector<int64_t>& ys, const std::vector<int64_t>& xs,
                                              int& unplanned_cut) const {
    const auto& I = *this;
    const size_t B = ys.size();
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
    const int64_t m = I.classes.defined() ? I.classes.size(1) : 0;
    std::vector<double> corr(B * m, 0.0);
    for (size_t i = 0; i < I.steps.size(); ++i) {
        const Step& st = I.steps[i];
        bool capped = false;
        vals[st.output] = I.run_step(st, vals, capped);
        if (m > 0 && capped) {
            if (!st.linear) {
                unplanned_cut = static_cast<int>(i);
                return {};
            }
            I.add_correction(st, *vals[st.inputs[0]], *vals[st.output], corr);
        }
        for (int s : st.inputs)
            if (I.slots[s].last_use == static_cast<int>(i) && !I.slots[s].boundary && s != I.head.slot)
                vals[s].reset();
    }
    jit::Stack stack{c10::IValue(I.model.module()._ivalue()), I.image};
    for (int s : I.boundary) {
        const auto& sh = I.slots[s].shape;
        const std::vector<int64_t> zero(B, 0);
        stack.push_back(extract(I.slots[s].clean, *vals[s], zero, zero, sh[2], sh[3]));
    }
    if (I.head.slot >= 0) stack.push_back(I.run_head(*vals[I.head.slot]));
    vals.clear();
    if (I.rest_runner) stack = I.rest_runner->run(std::move(stack));
    else I.rest_fn->run(stack);
    at::Tensor out = first_tensor(stack[0]);
    if (m > 0) {
        out = out.to(at::kFloat).clone();
        if (out.dim() != 2 || out.size(0) != static_cast<int64_t>(B))
            throw Error("the model's output is not [N,K] logits: the approximate occlusion needs them");
        auto o = out.accessor<float, 2>();
        auto c = I.classes.accessor<int64_t, 2>();
        for (size_t b = 0; b < B; ++b)
            for (int64_t j = 0; j < m; ++j) o[b][c[img[b]][j]] += static_cast<float>(corr[b * m + j]);
    }
    return out;
}

}  // namespace convscope::detail
