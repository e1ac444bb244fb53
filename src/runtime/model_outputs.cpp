// The model's outputs: forward may return a tensor, a tuple or list of tensors, or a dict of
// tensors (torchvision's segmentation models return {"out": ..., "aux": ...}). One entry is
// chosen; the analysed graph returns that tensor alone, so that taps, gradients, receptive
// fields and the incremental engine see a model with one output.
#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>
#include <set>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/model_impl.hpp"

namespace convscope {

namespace {

bool is_tensor_type(const c10::TypePtr& t) { return t->kind() == c10::TypeKind::TensorType; }

std::optional<std::string> constant_string(jit::Value* v) {
    auto iv = jit::toIValue(v);
    if (!iv || !iv->isString()) return std::nullopt;
    return iv->toStringRef();
}

// The keys a dict output is given in the top-level block, in order: its DictConstruct's and
// those of aten::_set_item with a constant key.
std::vector<std::string> static_dict_keys(jit::Value* dict) {
    std::vector<std::string> keys;
    auto add = [&](jit::Value* k) {
        auto s = constant_string(k);
        if (s && std::find(keys.begin(), keys.end(), *s) == keys.end()) keys.push_back(*s);
    };
    jit::Node* producer = dict->node();
    if (producer->kind() == c10::prim::DictConstruct)
        for (size_t i = 0; i + 1 < producer->inputs().size(); i += 2) add(producer->inputs()[i]);
    for (const jit::Use& u : dict->uses())
        if (u.user->kind() == c10::aten::_set_item && u.offset == 0) add(u.user->inputs()[1]);
    return keys;
}

// The value stored under `key`, when the graph shows it plainly: the dict is built at the top
// level (DictConstruct, or aten::dict() empty) and is only written to by aten::_set_item with constant keys, those
// of `key` in the top-level block (the last one counts; other keys may be set in branches).
// nullptr otherwise.
jit::Value* plain_dict_entry(jit::Graph& g, jit::Value* dict, const std::string& key) {
    jit::Node* producer = dict->node();
    // DictConstruct with entries, or aten::dict() (an empty dict, what OrderedDict() compiles to).
    const bool empty_dict = producer->kind() == c10::aten::dict && producer->inputs().empty();
    if ((producer->kind() != c10::prim::DictConstruct && !empty_dict) || producer->owningBlock() != g.block())
        return nullptr;
    jit::Value* found = nullptr;
    for (size_t i = 0; i + 1 < producer->inputs().size(); i += 2)
        if (constant_string(producer->inputs()[i]) == key) found = producer->inputs()[i + 1];
    std::vector<jit::Node*> sets;
    for (const jit::Use& u : dict->uses()) {
        if (u.user == g.return_node()) continue;
        if (u.user->kind() != c10::aten::_set_item || u.offset != 0) return nullptr;  // read or passed on
        const auto k = constant_string(u.user->inputs()[1]);
        if (!k) return nullptr;
        if (*k != key) continue;
        if (u.user->owningBlock() != g.block()) return nullptr;  // set in a branch
        sets.push_back(u.user);
    }
    std::sort(sets.begin(), sets.end(), [](jit::Node* a, jit::Node* b) { return a->isBefore(b); });
    for (jit::Node* s : sets) found = s->inputs()[2];
    return found;
}

// A branch that only computes and checks (F.interpolate's checks of its input's rank): nothing
// inside but pure ops, exceptions and such branches.
bool is_check(const jit::Node* n) {
    if (n->kind() != c10::prim::If) return false;
    for (const jit::Block* b : n->blocks())
        for (const jit::Node* m : b->nodes()) {
            if (m->kind() == c10::prim::RaiseException || is_check(m)) continue;
            if (m->hasSideEffects() || !m->blocks().empty()) return false;
            if (const auto* schema = m->maybeSchema(); schema && schema->is_mutable()) return false;
        }
    return true;
}

// Dead code elimination that also drops the checks of values nothing else needs (they keep a
// removed output's head alive otherwise): the values the output, the other side effects and the
// in-place writes need are kept; a top-level check that reads none of them goes.
void remove_dead_outputs(const std::shared_ptr<jit::Graph>& graph) {
    jit::Graph& g = *graph;
    std::set<const jit::Value*> needed;
    std::vector<const jit::Value*> todo(g.outputs().begin(), g.outputs().end());
    auto need_node = [&](const jit::Node* n) {
        for (const jit::Value* v : n->inputs()) todo.push_back(v);
        for (const jit::Block* b : n->blocks())
            for (const jit::Node* m : b->nodes())
                for (const jit::Value* v : m->inputs()) todo.push_back(v);
    };
    for (const jit::Node* n : g.nodes())
        if (!is_check(n) && n->hasSideEffects()) need_node(n);
    std::set<const jit::Node*> writers;
    // Writes into a needed value keep the writer: repeat until nothing changes.
    for (bool changed = true; changed;) {
        changed = false;
        while (!todo.empty()) {
            const jit::Value* v = todo.back();
            todo.pop_back();
            if (!needed.insert(v).second) continue;
            need_node(v->node());
        }
        for (const jit::Node* n : g.nodes()) {
            const auto* schema = n->maybeSchema();
            if (!schema || !schema->is_mutable() || n->inputs().empty() || !needed.count(n->inputs()[0]) ||
                !writers.insert(n).second)
                continue;
            need_node(n);
            changed = true;
        }
    }
    // A check goes when it reads nothing needed and nothing reads it: after each round of dead
    // code elimination, the checks that fed only removed nodes.
    for (bool removed = true; removed;) {
        jit::EliminateDeadCode(graph);
        std::vector<jit::Node*> dead;
        for (jit::Node* n : g.nodes())
            if (is_check(n) &&
                std::none_of(n->inputs().begin(), n->inputs().end(), [&](const jit::Value* v) { return needed.count(v) > 0; }) &&
                std::all_of(n->outputs().begin(), n->outputs().end(), [](const jit::Value* v) { return !v->hasUses(); }))
                dead.push_back(n);
        for (jit::Node* n : dead) n->destroy();
        removed = !dead.empty();
    }
}

std::string names_list(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
}

}  // namespace

void Model::Impl::choose_output() {
    jit::Value* out = graph->outputs()[0];
    const c10::TypePtr type = out->type();
    output_names.clear();
    std::string chosen;
    jit::Value* value = nullptr;
    auto unknown = [&](const std::string& what) {
        return Error("model '" + path + "' has no output '" + output_spec + "'" + what + ": its outputs are " +
                     names_list(output_names) + " (run `convscope describe` to see their shapes; pass one to --output)");
    };
    if (is_tensor_type(type)) {
        output_kind = OutputKind::Tensor;
        output_names = {"output"};
        if (!output_spec.empty() && output_spec != "output" && output_spec != "0")
            throw unknown(" (it returns one tensor)");
        output_name = "output";
        return;
    }
    if (type->kind() == c10::TypeKind::TupleType || type->kind() == c10::TypeKind::ListType) {
        const bool tuple = type->kind() == c10::TypeKind::TupleType;
        output_kind = tuple ? OutputKind::Tuple : OutputKind::List;
        std::vector<c10::TypePtr> elements;
        if (tuple) elements = type->expectRef<c10::TupleType>().elements().vec();
        else if (out->node()->kind() == c10::prim::ListConstruct)
            elements.assign(out->node()->inputs().size(), type->expectRef<c10::ListType>().getElementType());
        for (size_t i = 0; i < elements.size(); ++i)
            if (is_tensor_type(elements[i])) output_names.push_back(std::to_string(i));
        if (!tuple && !is_tensor_type(type->expectRef<c10::ListType>().getElementType()))
            throw Error("model '" + path + "' returns a list of " + type->expectRef<c10::ListType>().getElementType()->str() +
                        ": convscope needs a tensor, a tuple, list or dict of tensors");
        int64_t index = 0;
        if (output_spec.empty()) {
            if (output_names.empty())
                throw Error("model '" + path + "' returns " + type->str() + " with no tensor in it: convscope needs a tensor");
            chosen = output_names[0];
        } else {
            if (!detail::parse_int64(output_spec, index) || index < 0 ||
                (!output_names.empty() && std::find(output_names.begin(), output_names.end(), output_spec) == output_names.end()))
                throw unknown(std::string(" (it returns a ") + (tuple ? "tuple" : "list") + ": name an entry by its position)");
            chosen = std::to_string(index);
        }
        index = std::stoll(chosen);
        jit::Node* producer = out->node();
        if ((producer->kind() == c10::prim::TupleConstruct || producer->kind() == c10::prim::ListConstruct) &&
            producer->owningBlock() == graph->block())
            value = producer->inputs()[static_cast<size_t>(index)];
        else if (tuple)
            value = graph->insertNode(graph->createTupleUnpack(out))->outputs()[static_cast<size_t>(index)];
        else
            value = graph->insert(c10::aten::__getitem__, {out, index});
    } else if (type->kind() == c10::TypeKind::DictType) {
        output_kind = OutputKind::Dict;
        const auto& dict = type->expectRef<c10::DictType>();
        if (dict.getKeyType()->kind() != c10::TypeKind::StringType || !is_tensor_type(dict.getValueType()))
            throw Error("model '" + path + "' returns " + type->str() +
                        ": convscope needs a tensor, or a dict from names to tensors");
        output_names = static_dict_keys(out);
        if (output_spec.empty())
            chosen = output_names.empty() || std::find(output_names.begin(), output_names.end(), "out") != output_names.end()
                         ? "out" : output_names[0];
        else if (!output_names.empty() && std::find(output_names.begin(), output_names.end(), output_spec) == output_names.end())
            throw unknown("");
        else
            chosen = output_spec;
        value = plain_dict_entry(*graph, out, chosen);
        if (value) {
            // Dead code elimination keeps writes into a dict: remove them, then the dict.
            std::vector<jit::Node*> sets;
            for (const jit::Use& u : out->uses())
                if (u.user != graph->return_node()) sets.push_back(u.user);
            graph->eraseOutput(0);
            for (jit::Node* n : sets) n->destroy();
            out->node()->destroy();
            graph->registerOutput(value);
            output_name = chosen;
            remove_dead_outputs(graph);
            return;
        }
        value = graph->insert(c10::aten::__getitem__, {out, chosen});
    } else {
        throw Error("model '" + path + "' returns " + type->str() +
                    " from forward: convscope needs a tensor, a tuple or list of tensors, or a dict of tensors");
    }
    output_name = chosen;
    graph->eraseOutput(0);
    graph->registerOutput(value);
    // What only the other outputs need is dead now (an auxiliary head, the dict itself).
    remove_dead_outputs(graph);
}

at::Tensor Model::Impl::output_of(const c10::IValue& v) const {
    auto missing = [&]() {
        return Error("model '" + path + "' returned no output '" + output_name + "' for this input: its outputs are " +
                     names_list(output_names));
    };
    switch (output_kind) {
    case OutputKind::Tensor:
        if (v.isTensor()) return v.toTensor();
        break;
    case OutputKind::Tuple:
    case OutputKind::List: {
        const std::vector<c10::IValue> items = v.isTuple() ? v.toTupleRef().elements().vec()
                                               : v.isList()  ? v.toListRef().vec()
                                                             : std::vector<c10::IValue>{};
        const size_t i = static_cast<size_t>(std::stoll(output_name));
        if (i >= items.size() || !items[i].isTensor()) throw missing();
        return items[i].toTensor();
    }
    case OutputKind::Dict:
        if (v.isGenericDict()) {
            const auto dict = v.toGenericDict();
            auto it = dict.find(c10::IValue(output_name));
            if (it == dict.end() || !it->value().isTensor()) throw missing();
            return it->value().toTensor();
        }
        break;
    }
    throw Error("model '" + path + "' returned " + v.tagKind() + " where its graph promises " +
                graph->outputs()[0]->type()->str());
}

std::vector<OutputInfo> Model::outputs() const {
    const auto shape = input_shape();
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), shape.begin(), shape.end());
    c10::IValue v;
    try {
        torch::NoGradGuard no_grad;
        v = impl_->module.forward({torch::zeros(nchw)});
    } catch (const std::exception& e) {
        throw Error("model '" + impl_->path + "' cannot run on inputs of shape " + detail::dims_str(shape) + " (" +
                    first_error_line(e) + "): pass the right --input-shape C,H,W");
    }
    std::vector<OutputInfo> out;
    auto add = [&](const std::string& name, const c10::IValue& item) {
        if (!item.isTensor()) return;
        OutputInfo info;
        info.name = name;
        const auto sizes = item.toTensor().sizes().vec();
        if (!sizes.empty()) info.shape.assign(sizes.begin() + 1, sizes.end());
        info.chosen = name == impl_->output_name;
        out.push_back(std::move(info));
    };
    if (v.isTensor()) add("output", v);
    else if (v.isTuple() || v.isList()) {
        const auto items = v.isTuple() ? v.toTupleRef().elements().vec() : v.toListRef().vec();
        for (size_t i = 0; i < items.size(); ++i) add(std::to_string(i), items[i]);
    } else if (v.isGenericDict()) {
        for (const auto& kv : v.toGenericDict())
            if (kv.key().isString()) add(kv.key().toStringRef(), kv.value());
    }
    return out;
}

const std::string& Model::output_name() const { return impl_->output_name; }

void Model::select_output(const std::string& name) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (name == impl_->output_spec) return;
    const std::string before = impl_->output_spec;
    impl_->output_spec = name;
    try {
        impl_->analyse();
    } catch (...) {
        impl_->output_spec = before;
        impl_->analyse();
        throw;
    }
    impl_->layers.clear();
    impl_->functions.clear();
    impl_->output_for_shape.clear();
}

}  // namespace convscope
