#include "methods/incremental/graph_passes.hpp"

#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/remove_dropout.h>
#include <torch/csrc/jit/passes/remove_mutation.h>
#include <torch/torch.h>

#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <optional>

#include "convscope/runtime/graph.hpp"
#include "convscope/runtime/model.hpp"

namespace convscope::incremental {

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

namespace {
std::optional<std::string> constant_key(const jit::Value* v) {
    auto iv = jit::toIValue(v);
    if (!iv || !iv->isString()) return std::nullopt;
    return iv->toStringRef();
}

// Dicts used as named slots (torchvision's IntermediateLayerGetter collects a backbone's
// features in one): built at the top level, written by aten::_set_item and read by
// aten::__getitem__ with constant keys at the top level, and used for nothing else. Each read is
// replaced by the value last written under its key, and the dict goes: its writes would
// otherwise end the incremental part of the graph. Returns whether any dict went.
bool forward_plain_dicts(jit::Graph& g) {
    bool changed = false;
    std::vector<jit::Node*> dicts;
    for (jit::Node* d : g.nodes())
        if (d->kind() == c10::prim::DictConstruct || (d->kind() == c10::aten::dict && d->inputs().empty()))
            dicts.push_back(d);
    for (jit::Node* d : dicts) {
        jit::Value* dict = d->output();
        std::vector<jit::Node*> users;
        bool plain = true;
        for (const jit::Use& u : dict->uses()) {
            const bool set = u.user->kind() == c10::aten::_set_item, get = u.user->kind() == c10::aten::__getitem__;
            plain = plain && (set || get) && u.offset == 0 && u.user->owningBlock() == g.block() &&
                    constant_key(u.user->inputs()[1]).has_value();
            users.push_back(u.user);
        }
        if (!plain || users.empty()) continue;
        std::sort(users.begin(), users.end(), [](jit::Node* a, jit::Node* b) { return a->isBefore(b); });
        std::map<std::string, jit::Value*> value;
        for (size_t i = 0; i + 1 < d->inputs().size(); i += 2) {
            const auto k = constant_key(d->inputs()[i]);
            if (!k) plain = false;
            else value[*k] = d->inputs()[i + 1];
        }
        for (jit::Node* u : users) {
            const std::string k = *constant_key(u->inputs()[1]);
            if (u->kind() == c10::aten::_set_item) value[k] = u->inputs()[2];
            else if (!value.count(k)) plain = false;  // a read of a missing key raises: leave it
        }
        if (!plain) continue;
        value.clear();
        for (size_t i = 0; i + 1 < d->inputs().size(); i += 2) value[*constant_key(d->inputs()[i])] = d->inputs()[i + 1];
        for (jit::Node* u : users) {
            const std::string k = *constant_key(u->inputs()[1]);
            if (u->kind() == c10::aten::_set_item) value[k] = u->inputs()[2];
            else u->output()->replaceAllUsesWith(value.at(k));
        }
        for (jit::Node* u : users) u->destroy();
        d->destroy();
        changed = true;
    }
    return changed;
}
}  // namespace

void simplify(std::shared_ptr<jit::Graph>& g) {
    forward_plain_dicts(*g);
    jit::ConstantPropagation(g);
    jit::EliminateDeadCode(g);
    jit::removeDropout(g);
    jit::RemoveTensorMutation(g);
    jit::ConstantPropagation(g);
    jit::EliminateDeadCode(g);
}

namespace {

// x.shape[start:end:step] (aten::slice of aten::size(x)) with constant bounds that leave out the
// batch dimension: replaced by the constant list of those sizes. Returns whether it was.
bool fold_shape_slice(jit::Graph& g, jit::Node* n, const std::map<const jit::Value*, std::vector<int64_t>>& shapes) {
    auto it = shapes.find(n->input(0)->node()->input(0));
    if (it == shapes.end()) return false;
    const auto& s = it->second;
    const int64_t rank = static_cast<int64_t>(s.size());
    auto bound = [&](size_t i, int64_t none) -> std::optional<int64_t> {
        auto v = jit::toIValue(n->input(i));
        if (!v) return std::nullopt;
        if (v->isNone()) return none;
        if (!v->isInt()) return std::nullopt;
        int64_t b = v->toInt();
        if (b < 0) b += rank;
        return std::clamp<int64_t>(b, 0, rank);
    };
    const auto start = bound(1, 0), end = bound(2, rank);
    const auto step = jit::toIValue(n->input(3));
    if (!start || !end || !step || !step->isInt() || step->toInt() < 1 || *start < 1) return false;
    std::vector<int64_t> dims;
    for (int64_t d = *start; d < *end; d += step->toInt()) dims.push_back(s[d]);
    jit::WithInsertPoint guard(n);
    n->output()->replaceAllUsesWith(g.insertConstant(dims));
    return true;
}

// aten::dim(x) and aten::size(x, d) for a non-batch d are fixed for a fixed input shape: replace
// them by constants. Returns whether anything changed. recorded/ids: the shapes it recorded (if
// it did) and the recorded values' unique ids.
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
        } else if (n->kind() == c10::aten::slice && n->inputs().size() == 4 &&
                   n->input(0)->node()->kind() == c10::aten::size && n->input(0)->node()->inputs().size() == 1 &&
                   is_tensor(n->input(0)->node()->input(0))) {
            queries.push_back(n);  // x.shape[a:b]: constant where it leaves out the batch size
        }
    }
    if (queries.empty()) return false;
    recorded = detail::record_shapes(*g, module, zeros);
    ids.clear();
    for (const auto& kv : recorded) ids[kv.first] = kv.first->unique();
    const auto& shapes = recorded;
    bool changed = false;
    for (jit::Node* n : queries) {
        if (n->kind() == c10::aten::slice) {
            changed = fold_shape_slice(*g, n, shapes) || changed;
            continue;
        }
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

}  // namespace

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

PreparedGraph prepare_graph(const Model& model, const std::vector<int64_t>& chw) {
    torch::NoGradGuard no_grad;
    const jit::Module& module = model.module();
    PreparedGraph out;
    auto& graph = out.graph;
    graph = model.inlined_graph()->copy();
    attributes_to_constants(*graph, module._ivalue());
    simplify(graph);
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), chw.begin(), chw.end());
    const at::Tensor zeros = torch::zeros(nchw);
    auto& shapes = out.shapes;
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
    if (!complete) shapes = detail::record_shapes(*graph, module, zeros);

    return out;
}

}  // namespace convscope::incremental
