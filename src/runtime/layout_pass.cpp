// The layout pass: how every input-dependent value's dimensions read (graph.hpp, layouts()).
#include <torch/csrc/jit/ir/constants.h>

#include <algorithm>
#include <optional>
#include <set>

#include "convscope/runtime/graph.hpp"

namespace convscope::detail {

namespace jit = torch::jit;

std::optional<std::vector<int64_t>> int_list(jit::Value* v) {
    if (auto iv = jit::toIValue(v)) {
        if (iv->isIntList()) return iv->toIntVector();
        if (iv->isInt()) return std::vector<int64_t>{iv->toInt()};
        return std::nullopt;
    }
    if (v->node()->kind() == c10::prim::ListConstruct) {
        std::vector<int64_t> l;
        for (auto* in : v->node()->inputs()) {
            auto c = jit::toIValue(in);
            if (!c || !c->isInt()) return std::nullopt;
            l.push_back(c->toInt());
        }
        return l;
    }
    return std::nullopt;
}

namespace {

std::optional<int64_t> const_int(jit::Value* v) {
    auto iv = jit::toIValue(v);
    if (iv && iv->isInt()) return iv->toInt();
    return std::nullopt;
}

int64_t wrap_dim(int64_t d, size_t rank) { return d < 0 ? d + static_cast<int64_t>(rank) : d; }

Layout make(LayoutKind kind, int64_t h, int64_t w, int64_t c) {
    Layout l;
    l.kind = kind;
    l.grid_h = h;
    l.grid_w = w;
    l.channels = c;
    return l;
}

bool is_cf_tokens(const Layout& l) { return l.kind == LayoutKind::Other && l.grid_h > 0; }

}  // namespace

std::map<const jit::Value*, Layout> layouts(jit::Graph& graph, const Shapes& shapes) {
    std::map<const jit::Value*, Layout> lay;
    const jit::Value* input = graph.inputs()[1];
    const auto* in_shape = shape_in(shapes, input);
    if (!in_shape || in_shape->size() != 4) return lay;
    lay[input] = make(LayoutKind::Nchw, (*in_shape)[2], (*in_shape)[3], (*in_shape)[1]);
    std::set<const jit::Value*> dependent{input};
    std::vector<Layout> token_layouts;  // every token layout seen, for [N,T,D] values to match
    std::vector<Layout> nhwc_layouts;

    for (jit::Node* n : graph.nodes()) {
        bool dep = false;
        const Layout* first = nullptr;
        const std::vector<int64_t>* first_shape = nullptr;
        for (jit::Value* in : n->inputs()) {
            if (!dependent.count(in)) continue;
            dep = true;
            auto it = lay.find(in);
            if (!first && it != lay.end() && shape_in(shapes, in)) {
                first = &it->second;
                first_shape = shape_in(shapes, in);
            }
        }
        if (!dep) continue;
        for (jit::Value* o : n->outputs()) dependent.insert(o);
        if (n->outputs().size() != 1) continue;
        jit::Value* out = n->output();
        const auto* s = shape_in(shapes, out);
        if (!s || s->empty() || out->type()->kind() != c10::TypeKind::TensorType) continue;
        const auto kind = n->kind();
        const size_t rank = s->size();
        std::optional<Layout> r;

        if (kind == c10::aten::cat && n->input(0)->node()->kind() == c10::prim::ListConstruct) {
            const auto dim = const_int(n->input(1));
            const auto items = n->input(0)->node()->inputs();
            std::optional<Layout> base;
            int64_t before = 0, after = 0;
            bool seen = false, ok = dim.has_value();
            for (jit::Value* item : items) {
                auto it = lay.find(item);
                const auto* is = shape_in(shapes, item);
                if (!is || is->size() != rank) ok = false;
                if (!ok) break;
                if (it != lay.end() && (it->second.spatial() || is_cf_tokens(it->second)) && !base) {
                    base = it->second;
                    seen = true;
                    continue;
                }
                if (it != lay.end() && base && it->second.spatial() && it->second.kind == base->kind &&
                    it->second.grid_h == base->grid_h && it->second.grid_w == base->grid_w)
                    continue;  // another map on the same grid
                if (rank == 3 && dim && wrap_dim(*dim, rank) == 1) (seen ? after : before) += (*is)[1];
                else ok = false;
            }
            if (ok && base) {
                const int64_t d = wrap_dim(*dim, rank);
                if (base->kind == LayoutKind::Tokens && d == 1) {
                    r = *base;
                    r->extra_front += before;
                    r->extra_back += after;
                } else if (base->kind == LayoutKind::Nchw && d == 1 && rank == 4) {
                    r = make(LayoutKind::Nchw, (*s)[2], (*s)[3], (*s)[1]);
                } else if (base->kind == LayoutKind::Nhwc && d == 3 && rank == 4) {
                    r = make(LayoutKind::Nhwc, (*s)[1], (*s)[2], (*s)[3]);
                } else if (base->kind == LayoutKind::Tokens && d == 2 && before == 0 && after == 0) {
                    r = *base;
                    r->channels = (*s)[2];
                }
            }
        } else if (first && first_shape) {
            const Layout& in = *first;
            const auto& is = *first_shape;
            const bool is_permute = kind == c10::aten::permute;
            const bool is_transpose = kind == c10::aten::transpose;
            const bool is_reshape = kind == c10::aten::reshape || kind == c10::aten::view ||
                                    kind == c10::aten::flatten || kind == c10::aten::_unsafe_view;
            if (is_permute || is_transpose) {
                std::vector<int64_t> perm;
                if (is_permute) {
                    if (auto p = int_list(n->input(1))) perm = *p;
                } else if (auto a = const_int(n->input(1)), b = const_int(n->input(2)); a && b) {
                    perm.resize(rank);
                    for (size_t i = 0; i < rank; ++i) perm[i] = static_cast<int64_t>(i);
                    std::swap(perm[static_cast<size_t>(wrap_dim(*a, rank))],
                              perm[static_cast<size_t>(wrap_dim(*b, rank))]);
                }
                for (auto& p : perm) p = wrap_dim(p, rank);
                using V = std::vector<int64_t>;
                if (in.kind == LayoutKind::Nchw && perm == V{0, 2, 3, 1})
                    r = make(LayoutKind::Nhwc, in.grid_h, in.grid_w, in.channels);
                else if (in.kind == LayoutKind::Nhwc && perm == V{0, 3, 1, 2})
                    r = make(LayoutKind::Nchw, in.grid_h, in.grid_w, in.channels);
                else if (is_cf_tokens(in) && perm == V{0, 2, 1})
                    r = make(LayoutKind::Tokens, in.grid_h, in.grid_w, in.channels);
                else if (in.kind == LayoutKind::Tokens && in.extra_front + in.extra_back == 0 && perm == V{0, 2, 1})
                    r = make(LayoutKind::Other, in.grid_h, in.grid_w, in.channels);
            } else if (is_reshape) {
                const int64_t hw = in.grid_h * in.grid_w;
                if (*s == is) {
                    r = in;
                } else if (in.kind == LayoutKind::Nchw && rank == 3 && (*s)[1] == in.channels && (*s)[2] == hw) {
                    r = make(LayoutKind::Other, in.grid_h, in.grid_w, in.channels);
                } else if (in.kind == LayoutKind::Nhwc && rank == 3 && (*s)[1] == hw && (*s)[2] == in.channels) {
                    r = make(LayoutKind::Tokens, in.grid_h, in.grid_w, in.channels);
                } else if (in.kind == LayoutKind::Tokens && in.extra_front + in.extra_back == 0 && rank == 4 &&
                           (*s)[1] == in.grid_h && (*s)[2] == in.grid_w && (*s)[3] == in.channels) {
                    r = make(LayoutKind::Nhwc, in.grid_h, in.grid_w, in.channels);
                } else if (is_cf_tokens(in) && rank == 4 && (*s)[1] == in.channels && (*s)[2] == in.grid_h &&
                           (*s)[3] == in.grid_w) {
                    r = make(LayoutKind::Nchw, in.grid_h, in.grid_w, in.channels);
                } else if (in.kind == LayoutKind::Nchw && rank == 2) {
                    r = make(LayoutKind::Vector, 0, 0, (*s)[1]);
                }
            } else if ((kind == c10::aten::select || kind == c10::aten::slice) && in.kind == LayoutKind::Tokens) {
                const auto dim = const_int(n->input(1));
                if (dim && wrap_dim(*dim, is.size()) == 1) {
                    const int64_t t = is[1];
                    if (kind == c10::aten::select) {
                        if (rank == 2) r = make(LayoutKind::Vector, 0, 0, (*s)[1]);
                    } else {
                        auto start = jit::toIValue(n->input(2)), end = jit::toIValue(n->input(3));
                        auto step = const_int(n->input(4));
                        int64_t a = start && start->isInt() ? start->toInt() : 0;
                        int64_t b = end && end->isInt() ? end->toInt() : t;
                        if (a < 0) a += t;
                        if (b < 0) b += t;
                        b = std::min(b, t);
                        const int64_t grid0 = in.extra_front, grid1 = in.extra_front + in.grid_h * in.grid_w;
                        if (step && *step == 1 && a <= grid0 && b >= grid1) {
                            r = in;
                            r->extra_front = grid0 - a;
                            r->extra_back = b - grid1;
                        }
                    }
                } else if (dim && wrap_dim(*dim, is.size()) == 2 && rank == 3) {
                    r = in;
                    r->channels = (*s)[2];
                }
            } else if ((kind == c10::aten::slice) && in.kind == LayoutKind::Nhwc && rank == 4) {
                // Swin's patch merging: x[..., 0::2, 0::2, :]
                r = make(LayoutKind::Nhwc, (*s)[1], (*s)[2], (*s)[3]);
            } else if (in.kind == LayoutKind::Nchw && rank == 4 && (*s)[0] == is[0]) {
                r = make(LayoutKind::Nchw, (*s)[2], (*s)[3], (*s)[1]);
            } else if ((in.kind == LayoutKind::Nhwc || in.kind == LayoutKind::Tokens) && rank == is.size() &&
                       std::equal(s->begin(), s->end() - 1, is.begin())) {
                r = in;  // norms, linear layers, activations over channels
                r->channels = s->back();
            } else if (is_cf_tokens(in) && *s == is) {
                r = in;
            } else if (in.kind == LayoutKind::Vector && rank == 2) {
                r = make(LayoutKind::Vector, 0, 0, (*s)[1]);
            }
        }
        // Elementwise ops whose layout input is not the first (pos_embedding + x).
        if (!r && kind != c10::aten::cat) {
            for (jit::Value* in : n->inputs()) {
                auto it = lay.find(in);
                const auto* is = shape_in(shapes, in);
                if (it != lay.end() && is && *is == *s && it->second.kind != LayoutKind::Other) {
                    r = it->second;
                    break;
                }
            }
        }
        const int64_t batch = (*in_shape)[0];
        if (!r && rank == 3 && (*s)[0] == batch) {
            for (auto it = token_layouts.rbegin(); it != token_layouts.rend(); ++it)
                if (it->extra_front + it->grid_h * it->grid_w + it->extra_back == (*s)[1]) {
                    r = *it;
                    r->channels = (*s)[2];
                    break;
                }
        }
        if (!r && rank == 4 && (*s)[0] == batch) {
            for (auto it = nhwc_layouts.rbegin(); it != nhwc_layouts.rend(); ++it)
                if (it->grid_h == (*s)[1] && it->grid_w == (*s)[2] && it->channels == (*s)[3]) {
                    r = *it;
                    r->channels = (*s)[3];
                    break;
                }
        }
        if (!r && rank == 2 && (*s)[0] == batch) r = make(LayoutKind::Vector, 0, 0, (*s)[1]);
        if (!r) continue;
        if (r->kind == LayoutKind::Tokens) {
            r->grid_source = "graph";
            token_layouts.push_back(*r);
        }
        if (r->kind == LayoutKind::Nhwc) nhwc_layouts.push_back(*r);
        lay[out] = *r;
    }
    return lay;
}

}  // namespace convscope::detail
