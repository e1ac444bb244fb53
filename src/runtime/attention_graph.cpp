#include "runtime/detail/attention_graph.hpp"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/jit.h>

#include <set>
#include <sstream>

namespace convscope::detail {

namespace jit = torch::jit;

std::string node_module_path(const jit::Node* n) {
    auto cs = n->callstack();
    if (!cs) return "";
    std::string path;
    for (const auto& entry : (*cs)->vec()) {
        const auto& info = std::get<2>(entry);
        if (!info) continue;
        const std::string name = info->instance_name();
        if (name.empty() || name == "SELF") continue;  // method calls on the same module
        path += path.empty() ? name : "." + name;
    }
    return path;
}

namespace {

bool inside(const std::string& path, const std::string& module) {
    return path == module || path.rfind(module + ".", 0) == 0;
}

jit::Node* find_in_blocks(jit::Node* n, c10::Symbol kind) {
    if (n->kind() == kind) return n;
    for (jit::Block* b : n->blocks())
        for (jit::Node* m : b->nodes())
            if (jit::Node* f = find_in_blocks(m, kind)) return f;
    return nullptr;
}

bool defined_at_top(const jit::Value* v, const jit::Graph& g) { return v->node()->owningBlock() == g.block(); }

// The explicit computation, batch first inside; `H` heads.
std::string mha_source(int64_t heads, bool batch_first, bool bias) {
    std::ostringstream s;
    s << "def mha(query: Tensor, key: Tensor, value: Tensor, w: Tensor, b: Tensor, ow: Tensor, ob: Tensor):\n";
    if (!batch_first)
        s << "    query = query.transpose(0, 1)\n    key = key.transpose(0, 1)\n    value = value.transpose(0, 1)\n";
    s << "    n = query.size(0)\n    t = query.size(1)\n    s = key.size(1)\n    d = query.size(2)\n"
      << "    hd = d // " << heads << "\n";
    if (bias)
        s << "    q = torch.linear(query, w.narrow(0, 0, d), b.narrow(0, 0, d))\n"
          << "    k = torch.linear(key, w.narrow(0, d, d), b.narrow(0, d, d))\n"
          << "    v = torch.linear(value, w.narrow(0, 2 * d, d), b.narrow(0, 2 * d, d))\n";
    else
        s << "    q = torch.linear(query, w.narrow(0, 0, d))\n"
          << "    k = torch.linear(key, w.narrow(0, d, d))\n"
          << "    v = torch.linear(value, w.narrow(0, 2 * d, d))\n";
    s << "    q = q.view(n, t, " << heads << ", hd).transpose(1, 2) / (float(hd) ** 0.5)\n"
      << "    k = k.view(n, s, " << heads << ", hd).transpose(1, 2)\n"
      << "    v = v.view(n, s, " << heads << ", hd).transpose(1, 2)\n"
      << "    attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)), -1)\n"
      << "    out = torch.matmul(attn, v).transpose(1, 2).reshape(n, t, d)\n";
    if (bias) s << "    out = torch.linear(out, ow, ob)\n";
    else s << "    out = torch.linear(out, ow)\n";
    if (!batch_first) s << "    out = out.transpose(0, 1)\n";
    s << "    return out\n";
    return s.str();
}

jit::Value* get_attr_path(jit::Graph& g, const std::string& path) {
    jit::Value* v = g.inputs()[0];
    size_t start = 0;
    while (start <= path.size()) {
        const size_t dot = path.find('.', start);
        const std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
        v = g.insertGetAttr(v, part);
        if (dot == std::string::npos) break;
        start = dot + 1;
    }
    return v;
}

}  // namespace

std::vector<std::string> explicit_multihead_attention(jit::Graph& graph, const jit::Module& module) {
    std::vector<std::string> notes;
    for (const auto& item : module.named_modules()) {
        if (item.name.empty()) continue;
        const auto type = item.value.type();
        if (!type->name() || type->name()->name() != "MultiheadAttention") continue;
        const std::string p = item.name;
        std::vector<jit::Node*> nodes;
        for (jit::Node* n : graph.nodes())
            if (n->kind() != c10::prim::Constant && inside(node_module_path(n), p)) nodes.push_back(n);
        if (nodes.empty()) continue;
        const std::set<jit::Node*> own(nodes.begin(), nodes.end());
        // The values the rest of the graph reads.
        std::vector<jit::Value*> used_outside;
        for (jit::Node* n : nodes)
            for (jit::Value* o : n->outputs())
                for (const jit::Use& u : o->uses()) {
                    jit::Node* user = u.user;
                    while (user->owningBlock() != graph.block()) user = user->owningBlock()->owningNode();
                    if (!own.count(user)) {
                        used_outside.push_back(o);
                        break;
                    }
                }
        jit::Node* native = nullptr;
        for (jit::Node* n : nodes)
            if ((native = find_in_blocks(n, c10::Symbol::fromQualString("aten::_native_multi_head_attention"))))
                break;
        auto skip = [&](const std::string& why) { notes.push_back(p + ": " + why); };
        if (!native) {
            skip("its computation was not recognised (no _native_multi_head_attention call)");
            continue;
        }
        // The attention output: the module's tensor, or the first item of its (output, weights)
        // tuple where the weights are not read.
        std::vector<jit::Value*> outputs;
        bool weights_read = used_outside.size() != 1;
        if (!weights_read && used_outside[0]->type()->kind() == c10::TypeKind::TensorType) {
            outputs.push_back(used_outside[0]);
        } else if (!weights_read && used_outside[0]->type()->kind() == c10::TypeKind::TupleType) {
            for (const jit::Use& u : used_outside[0]->uses()) {
                if (u.user->kind() != c10::prim::TupleUnpack || u.user->outputs().size() != 2 ||
                    u.user->output(1)->hasUses())
                    weights_read = true;
                else
                    outputs.push_back(u.user->output(0));
            }
        } else {
            weights_read = true;
        }
        if (weights_read || outputs.empty()) {
            skip("its attention weights are used by the model (need_weights=True)");
            continue;
        }
        jit::Value* q = native->input(0);
        jit::Value* k = native->input(1);
        jit::Value* v = native->input(2);
        if (!defined_at_top(q, graph) || !defined_at_top(k, graph) || !defined_at_top(v, graph)) {
            skip("its inputs are computed inside a branch");
            continue;
        }
        // The mask input (merged_mask) must be None.
        bool masked = false;
        for (size_t i = 9; i < native->inputs().size() && i < 10; ++i) {
            auto iv = jit::toIValue(native->input(i));
            if (!iv || !iv->isNone()) masked = true;
        }
        if (masked) {
            skip("it is called with an attention or padding mask");
            continue;
        }
        const bool same = item.value.attr("_qkv_same_embed_dim").toBool();
        if (!same) {
            skip("its keys and values have their own sizes (kdim, vdim)");
            continue;
        }
        const int64_t heads = item.value.attr("num_heads").toInt();
        const bool batch_first = item.value.attr("batch_first").toBool();
        const bool bias = item.value.attr("in_proj_bias").isTensor();
        auto cu = jit::compile(mha_source(heads, batch_first, bias));
        auto callee = jit::toGraphFunction(cu->get_function("mha")).graph()->copy();
        jit::Inline(*callee);

        // Insert after the module's last node, with the module's call stack.
        jit::WithInsertPoint guard(nodes.back()->next());
        std::vector<jit::Value*> inputs{q, k, v};
        jit::Value* w = get_attr_path(graph, p + ".in_proj_weight");
        jit::Value* ow = get_attr_path(graph, p + ".out_proj.weight");
        jit::Value* b = bias ? get_attr_path(graph, p + ".in_proj_bias") : w;
        jit::Value* ob = bias ? get_attr_path(graph, p + ".out_proj.bias") : ow;
        inputs.insert(inputs.end(), {w, b, ow, ob});
        jit::Node* before_insert = nodes.back();
        auto outs = jit::insertGraph(graph, *callee, inputs);
        c10::optional<jit::InlinedCallStackPtr> cs;
        for (jit::Node* n : nodes)
            if (node_module_path(n) == p && n->callstack()) cs = n->callstack();
        for (jit::Node* n = before_insert->next(); n != outs[0]->node()->next(); n = n->next())
            if (cs) n->setCallStack(*cs);
        for (jit::Value* o : outputs) o->replaceAllUsesWith(outs[0]);
        for (const jit::Use& u : std::vector<jit::Use>(used_outside[0]->uses()))
            if (u.user->kind() == c10::prim::TupleUnpack) u.user->destroy();
        for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
            bool used = false;
            for (jit::Value* o : (*it)->outputs()) used = used || o->hasUses();
            if (!used) (*it)->destroy();
        }
    }
    jit::EliminateDeadCode(graph.block());
    return notes;
}

std::vector<AttentionSite> attention_sites(jit::Graph& graph) {
    std::vector<AttentionSite> sites;
    std::vector<jit::Node*> softmaxes;
    for (jit::Node* n : graph.nodes()) {
        if (n->kind() != c10::aten::softmax) continue;
        auto dim = jit::toIValue(n->input(1));
        if (!dim || !dim->isInt() || dim->toInt() != -1) continue;
        // Read by a matmul, directly or through dropout (the identity at inference).
        bool to_matmul = false;
        std::vector<jit::Value*> readers{n->output()};
        for (size_t i = 0; i < readers.size() && i < 8; ++i)
            for (const jit::Use& u : readers[i]->uses()) {
                const auto k = u.user->kind();
                if (k == c10::aten::matmul || k == c10::aten::bmm) to_matmul = true;
                if (k == c10::aten::dropout || k == c10::aten::feature_dropout || k == c10::aten::dropout_)
                    readers.push_back(u.user->output());
            }
        if (to_matmul) softmaxes.push_back(n);
    }
    const jit::Value* input = graph.inputs()[1];
    for (jit::Node* n : softmaxes) {
        AttentionSite site;
        site.module = node_module_path(n);
        jit::Value* sm = n->output();
        // The queries come from the module's input: the first tensor that a node of the module's
        // run of nodes reads from before the run.
        jit::Node* first = n;
        for (jit::Node* m = n->prev(); m != graph.block()->param_node(); m = m->prev()) {
            if (m->kind() == c10::prim::Constant || m->kind() == c10::prim::GetAttr) continue;
            if (!inside(node_module_path(m), site.module)) break;
            first = m;
        }
        std::set<const jit::Node*> run;
        for (jit::Node* m = first; m != n; m = m->next()) run.insert(m);
        for (jit::Node* m = first; m != n && !site.queries; m = m->next())
            for (jit::Value* in : m->inputs())
                if (in->type()->kind() == c10::TypeKind::TensorType && !run.count(in->node()) &&
                    in->node()->kind() != c10::prim::GetAttr && in->node()->kind() != c10::prim::Constant) {
                    site.queries = in;
                    break;
                }
        // The cyclic shift: a roll inside the same module before the softmax.
        for (jit::Node* m = n; m != graph.block()->param_node(); m = m->prev()) {
            if (m->kind() == c10::prim::Constant || m->kind() == c10::prim::GetAttr) continue;
            if (node_module_path(m) != site.module) break;
            if (m->kind() != c10::aten::roll) continue;
            jit::Value* shifts = m->input(1);
            if (auto iv = jit::toIValue(shifts); iv && iv->isIntList() && !iv->toIntVector().empty()) {
                site.shift = -iv->toIntVector()[0];
            } else if (shifts->node()->kind() == c10::prim::ListConstruct && !shifts->node()->inputs().empty()) {
                if (auto first = jit::toIValue(shifts->node()->input(0)); first && first->isInt())
                    site.shift = -first->toInt();
            }
        }
        // canon = softmax.view(N, -1, heads, Q, K) for [B',heads,Q,K], (N, 1, -1, Q, K) for [B',Q,K];
        // back = canon.view(softmax.size()) replaces the softmax for its readers.
        jit::WithInsertPoint guard(n->next());
        auto c = [&](int64_t x) { return graph.insertConstant(x); };
        jit::Value* nb = graph.insert(c10::aten::size, {const_cast<jit::Value*>(input), c(0)});
        jit::Value* q = graph.insert(c10::aten::size, {sm, c(-2)});
        jit::Value* k = graph.insert(c10::aten::size, {sm, c(-1)});
        jit::Value* dims;
        const auto rank = sm->type()->expectRef<c10::TensorType>().dim();
        if (rank && *rank == 3) {
            dims = graph.insertNode(graph.createList(c10::IntType::get(), {nb, c(1), c(-1), q, k}))->output();
        } else if (rank && *rank == 4) {
            jit::Value* h = graph.insert(c10::aten::size, {sm, c(1)});
            dims = graph.insertNode(graph.createList(c10::IntType::get(), {nb, c(-1), h, q, k}))->output();
        } else {
            // The rank is not in the graph's types (scripted code): decided when the sizes are
            // recorded; a 4-D view of the batch first is valid for both.
            jit::Value* all = graph.insert(c10::aten::size, {sm});
            jit::Value* rank_v = graph.insert(c10::aten::len, {all});
            jit::Value* h = graph.insert(c10::aten::size, {sm, c(-3)});
            jit::Value* four = graph.insert(c10::aten::Int, {graph.insert(c10::aten::eq, {rank_v, c(4)})});
            // 4-D: heads = size(-3), windows inferred; 3-D: heads inferred, one window.
            jit::Value* heads = graph.insert(c10::aten::add, {graph.insert(c10::aten::mul, {h, four}),
                                                              graph.insert(c10::aten::sub, {four, c(1)})});
            jit::Value* windows = graph.insert(c10::aten::sub, {c(1), graph.insert(c10::aten::mul, {four, c(2)})});
            dims = graph.insertNode(graph.createList(c10::IntType::get(), {nb, windows, heads, q, k}))->output();
        }
        jit::Value* canon = graph.insert(c10::aten::view, {sm, dims});
        jit::Value* back = graph.insert(c10::aten::view, {canon, graph.insert(c10::aten::size, {sm})});
        sm->replaceAllUsesAfterNodeWith(back->node(), back);
        site.probs = canon;
        sites.push_back(site);
    }
    return sites;
}

}  // namespace convscope::detail
