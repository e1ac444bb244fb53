// The model runtime: layer discovery through the inlined forward graph, the layer table and the
// tap graphs the forward passes and gradients run (model_run.cpp); loading is in model_load.cpp.
#include "convscope/runtime/model.hpp"

#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/graph.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/attention_graph.hpp"
#include "runtime/detail/model_impl.hpp"
#include "runtime/detail/relu_rules.hpp"

namespace convscope {

namespace {

bool is_tensor(const jit::Value* v) { return v->type()->kind() == c10::TypeKind::TensorType; }

// Short class name: "__torch__.torchvision.models.resnet.BasicBlock" -> "BasicBlock",
// "__torch__.foo.___torch_mangle_3.Conv2d" -> "Conv2d".
std::string short_type_name(const c10::ClassTypePtr& type) {
    if (!type || !type->name()) return "Module";
    return type->name()->name();
}

}  // namespace

void Model::Impl::analyse() {
    module.eval();
    auto forward = module.find_method("forward");
    if (!forward)
        throw Error("model '" + path + "' has no forward method: export an nn.Module with "
                    "torch.jit.script or torch.jit.trace");
    graph = forward->graph()->copy();
    jit::Inline(*graph);
    // Fold branches on constants (F.relu's `inplace` flag, ...) so that every op of the forward
    // pass sits in the top-level block, where taps, receptive fields and ReLU rules see it.
    jit::ConstantPropagation(graph);
    choose_output();
    // Attention made explicit (nn.MultiheadAttention) and given a view that can be tapped.
    attention_notes = detail::explicit_multihead_attention(*graph, module);
    attention.clear();
    for (const auto& site : detail::attention_sites(*graph)) {
        std::string name = site.module.empty() ? "attention_probs" : site.module + ".attention_probs";
        for (int k = 2; std::any_of(attention.begin(), attention.end(), [&](const auto& a) { return a.name == name; }); ++k)
            name = site.module + ".attention_probs_" + std::to_string(k);
        attention.push_back({name, site.module, site.probs, site.queries, site.shift});
    }
    layer_order.clear();
    layer_value.clear();

    // Types and parameter counts from the module tree.
    for (const auto& item : module.named_modules()) {
        if (item.name.empty()) continue;
        layer_types[item.name] = short_type_name(item.value.type());
        int64_t count = 0;
        for (const auto& p : item.value.parameters(/*recurse=*/true)) count += p.numel();
        layer_params[item.name] = count;
    }

    for (jit::Node* n : graph->nodes()) {
        for (const auto& a : attention)
            if (n->outputs().size() == 1 && n->output() == a.probs) {
                layer_order.push_back(a.name);
                layer_value[a.name] = a.probs;
                layer_types[a.name] = "AttentionProbs";
            }
        // Parameter reads and constants say nothing about when a module runs (a traced model
        // reads every parameter first).
        if (n->kind() == c10::prim::GetAttr || n->kind() == c10::prim::Constant) continue;
        const std::string path_of_node = detail::node_module_path(n);
        if (path_of_node.empty()) continue;
        jit::Value* tensor_out = nullptr;
        for (jit::Value* o : n->outputs())
            if (is_tensor(o)) tensor_out = o;
        if (!tensor_out) continue;
        // Every prefix of the path is a module whose computation includes this node.
        size_t pos = 0;
        while (true) {
            pos = path_of_node.find('.', pos);
            const std::string prefix = path_of_node.substr(0, pos);
            if (!layer_value.count(prefix)) layer_order.push_back(prefix);
            layer_value[prefix] = tensor_out;
            if (pos == std::string::npos) break;
            ++pos;
        }
    }
    // A module output that is only a parameter read (GetAttr) is not a layer output.
    std::vector<std::string> kept;
    for (const auto& name : layer_order) {
        if (!layer_value.count(name) || layer_value[name]->node()->kind() == c10::prim::GetAttr) {
            layer_value.erase(name);
            continue;
        }
        kept.push_back(name);
    }
    layer_order = kept;
}

namespace {
// Makes the graph run the function with extra outputs: for every tapped value a copy taken right
// after it is produced (so later in-place ops cannot change it), and for every probed value an
// added zero input `probe`, so that d scalar / d probe = d scalar / d value.
std::shared_ptr<jit::Graph> build_tap_graph(jit::Graph& source,
                                            const std::map<std::string, jit::Value*>& values,
                                            const std::vector<std::string>& taps,
                                            const std::vector<std::string>& probes,
                                            Model::ReluBackward rule, bool with_output) {
    auto g = source.copy();
    // Map values of `source` to values of the copy by position in node order.
    std::unordered_map<const jit::Value*, jit::Value*> remap;
    {
        auto s = source.nodes().begin();
        auto d = g->nodes().begin();
        for (; s != source.nodes().end(); ++s, ++d)
            for (size_t i = 0; i < s->outputs().size(); ++i) remap[s->outputs()[i]] = d->outputs()[i];
        for (size_t i = 0; i < source.inputs().size(); ++i) remap[source.inputs()[i]] = g->inputs()[i];
    }
    if (rule != Model::ReluBackward::Plain)
        detail::rewrite_relus(*g, rule == Model::ReluBackward::Guided, remap);

    std::vector<jit::Value*> outputs;
    if (with_output) outputs.push_back(g->outputs()[0]);
    // Probes first: they change the downstream uses of the value.
    std::map<std::string, jit::Value*> probe_value;
    for (const auto& name : probes) {
        jit::Value* v = remap.at(values.at(name));
        jit::Value* p = g->addInput("probe")->setType(c10::TensorType::get());
        jit::WithInsertPoint guard(v->node()->next());
        jit::Value* added = g->insert(c10::aten::add, {v, p});
        v->replaceAllUsesAfterNodeWith(added->node(), added);
        probe_value[name] = added;
    }
    // A tap needs its own copy only where something later writes to the value or to memory it
    // shares (in-place ReLU, `+=`); otherwise the value itself is returned, which saves a copy
    // of every tapped activation.
    jit::AliasDb alias_db(g);
    for (const auto& name : taps) {
        jit::Value* v = probe_value.count(name) ? probe_value[name] : remap.at(values.at(name));
        if (!alias_db.hasWriters(v)) {
            outputs.push_back(v);
            continue;
        }
        jit::WithInsertPoint guard(v->node()->next());
        outputs.push_back(g->insert(c10::aten::clone, {v}));
    }
    // A graph function returns one value: pack everything into a tuple.
    while (!g->outputs().empty()) g->eraseOutput(0);
    g->registerOutput(g->insertNode(g->createTuple(outputs))->output());
    // Without the model output, what only it needed is dead.
    if (!with_output) jit::EliminateDeadCode(g);
    g->lint();
    return g;
}
}  // namespace

std::shared_ptr<jit::GraphFunction> Model::Impl::function_for(const std::vector<std::string>& taps,
                                                              const std::vector<std::string>& probes,
                                                              ReluBackward rule, bool with_output) const {
    std::string key = std::to_string(static_cast<int>(rule)) + (with_output ? "|" : "u|");
    for (const auto& t : taps) key += t + ",";
    key += "|";
    for (const auto& p : probes) key += p + ",";
    std::lock_guard<std::mutex> lock(mutex);
    auto it = functions.find(key);
    if (it != functions.end()) return it->second;
    auto g = build_tap_graph(*graph, layer_value, taps, probes, rule, with_output);
    auto fn = std::make_shared<jit::GraphFunction>("convscope_forward", g, nullptr);
    functions[key] = fn;
    return fn;
}

namespace {
// LibTorch allocates every activation of every batch anew. glibc serves blocks above its mmap
// threshold (128 KiB at first) with mmap and unmaps them at free, so each batch faults its
// buffers in again and the kernel zeroes every page: a third of a small CNN's inference time.
// Keeping blocks up to 32 MiB (the largest threshold glibc allows) in the heap, and trimming it
// only above 512 MiB of free memory at its top, lets batches reuse the previous one's memory.
void tune_allocator() {
    static std::once_flag once;
    std::call_once(once, [] {
        mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024);
    });
}
}  // namespace

Model::Model() : impl_(std::make_unique<Impl>()) { tune_allocator(); }
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

const std::string& Model::path() const { return impl_->path; }
std::shared_ptr<jit::Graph> Model::inlined_graph() const { return impl_->graph; }
const jit::Value* Model::layer_value(const std::string& name) const {
    (void)layer(name);  // throws with the closest names
    return impl_->layer_value.at(name);
}
const ModelMeta& Model::meta() const { return impl_->meta; }

void Model::set_meta(ModelMeta meta) {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (meta.input_shape != impl_->meta.input_shape) impl_->layers.clear();
    impl_->meta = std::move(meta);
}

Preprocess ModelMeta::preprocess() const {
    Preprocess p;
    p.input_shape = input_shape;
    p.mean = mean;
    p.std = std;
    p.resize = resize;
    p.pixel_range = pixel_range;
    p.bgr = bgr;
    p.source = source;
    return p;
}
const std::string& Model::file_hash() const { return impl_->hash; }
jit::Module& Model::module() const { return impl_->module; }

bool Model::has_input_shape() const {
    return !impl_->input_shape.empty() || !impl_->meta.input_shape.empty();
}

std::vector<int64_t> Model::input_shape() const {
    if (!impl_->input_shape.empty()) return impl_->input_shape;
    if (!impl_->meta.input_shape.empty()) return impl_->meta.input_shape;
    throw UsageError("the input shape of model '" + impl_->path +
                     "' is unknown: pass --input-shape C,H,W (for example 3,224,224)");
}

void Model::set_input_shape(const std::vector<int64_t>& chw) {
    if (chw.size() != 3 || chw[0] <= 0 || chw[1] <= 0 || chw[2] <= 0)
        throw UsageError("input shape must be three positive numbers C,H,W, got '" +
                         detail::dims_str(chw) + "'");
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->input_shape != chw) impl_->layers.clear();
    impl_->input_shape = chw;
}

namespace {
std::string join_ints(const std::vector<int64_t>& v) {
    std::string s;
    for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
    return s;
}

// The layout of attention probabilities [windows,heads,Q,K]: the queries' grid from the layout of
// the attention module's input.
Layout attention_layout(const std::vector<int64_t>& shape, const jit::Value* queries, int64_t shift,
                        const std::map<const jit::Value*, Layout>& lays) {
    Layout l;
    l.kind = LayoutKind::Attention;
    if (shape.size() != 4) return l;
    l.windows = shape[0];
    l.heads = shape[1];
    l.shift = shift;
    const int64_t q = shape[2];
    const Layout* in = nullptr;
    if (queries)
        if (auto it = lays.find(queries); it != lays.end()) in = &it->second;
    if (l.windows == 1) {
        if (in && in->spatial() && in->extra_front + in->grid_h * in->grid_w + in->extra_back == q) {
            l.grid_h = in->grid_h;
            l.grid_w = in->grid_w;
            l.extra_front = in->extra_front;
            l.extra_back = in->extra_back;
        }
    } else {
        const auto ws = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(q))));
        if (ws * ws == q) l.window = ws;
        if (in && in->spatial() && l.window > 0) {
            const int64_t wh = (in->grid_h + ws - 1) / ws, ww = (in->grid_w + ws - 1) / ws;
            if (wh * ww == l.windows) {
                l.grid_h = in->grid_h;
                l.grid_w = in->grid_w;
            }
        }
    }
    l.channels = shape[3];
    return l;
}
}  // namespace

void Model::set_grid(int64_t h, int64_t w) {
    if (h < 0 || w < 0 || (h == 0) != (w == 0)) throw UsageError("--grid needs two positive numbers HxW");
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->grid != std::make_pair(h, w)) impl_->layers.clear();
    impl_->grid = {h, w};
}

std::vector<std::string> Model::attention_layers() const {
    std::vector<std::string> out;
    for (const auto& l : layers())
        if (l.layout.kind == LayoutKind::Attention) out.push_back(l.name);
    return out;
}

const std::vector<std::string>& Model::attention_notes() const { return impl_->attention_notes; }

const std::vector<LayerInfo>& Model::layers() const {
    const auto shape = input_shape();
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        if (!impl_->layers.empty() && impl_->layers_for_shape == shape) return impl_->layers;
    }
    // One forward pass of a zero image records the shape of every tensor value.
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), shape.begin(), shape.end());
    auto zeros = torch::zeros(nchw);
    std::map<const jit::Value*, std::vector<int64_t>> shapes;
    try {
        shapes = detail::record_shapes(*impl_->graph, impl_->module, zeros);
    } catch (const std::exception& e) {
        throw Error("model '" + impl_->path + "' cannot run on inputs of shape " +
                    detail::dims_str(shape) + " (" + first_error_line(e) +
                    "): pass the right --input-shape C,H,W");
    }
    auto lays = detail::layouts(*impl_->graph, shapes);
    auto rfs = detail::receptive_fields(*impl_->graph, impl_->module, shapes, lays);
    const auto grid = impl_->grid;
    int64_t grid_fits = 0;
    std::vector<int64_t> token_counts;

    std::vector<LayerInfo> out;
    for (const auto& name : impl_->layer_order) {
        LayerInfo info;
        info.name = name;
        auto t = impl_->layer_types.find(name);
        info.type = t != impl_->layer_types.end() ? t->second : "Module";
        auto p = impl_->layer_params.find(name);
        info.num_params = p != impl_->layer_params.end() ? p->second : 0;
        info.depth = static_cast<int>(std::count(name.begin(), name.end(), '.'));
        const jit::Value* v = impl_->layer_value.at(name);
        auto s = shapes.find(v);
        if (s != shapes.end() && !s->second.empty())
            info.output_shape.assign(s->second.begin() + 1, s->second.end());
        auto r = rfs.find(v);
        if (r != rfs.end()) info.rf = r->second;
        else info.rf.kind = ReceptiveField::Kind::Unknown;
        if (auto l = lays.find(v); l != lays.end()) info.layout = l->second;
        else if (info.output_shape.size() == 1) info.layout.kind = LayoutKind::Vector, info.layout.channels = info.output_shape[0];
        if (info.layout.kind == LayoutKind::Other) info.layout = Layout{};  // channels-first tokens: not shown as such
        for (const auto& a : impl_->attention)
            if (a.name == name) info.layout = attention_layout(info.output_shape, a.queries, a.shift, lays);
        // --grid: token outputs [T,D] whose grid the graph does not give (or gives otherwise).
        if (grid.first > 0 && info.output_shape.size() == 2 && info.layout.kind != LayoutKind::Attention) {
            token_counts.push_back(info.output_shape[0]);
            if (grid.first * grid.second <= info.output_shape[0]) {
                Layout t;
                t.kind = LayoutKind::Tokens;
                t.grid_h = grid.first;
                t.grid_w = grid.second;
                t.channels = info.output_shape[1];
                t.extra_front = info.layout.kind == LayoutKind::Tokens && info.layout.grid_h * info.layout.grid_w == grid.first * grid.second
                                    ? info.layout.extra_front
                                    : info.output_shape[0] - grid.first * grid.second;
                t.extra_back = info.output_shape[0] - grid.first * grid.second - t.extra_front;
                t.grid_source = "--grid";
                info.layout = t;
                ++grid_fits;
            }
        }
        if (info.layout.kind == LayoutKind::Tokens && info.layout.grid_source == "graph" &&
            info.rf.kind == ReceptiveField::Kind::Unknown)
            info.rf.kind = ReceptiveField::Kind::Global;
        info.is_conv = info.type.find("Conv") != std::string::npos && info.output_shape.size() == 3;
        info.is_linear = info.type == "Linear";
        out.push_back(std::move(info));
    }
    if (grid.first > 0 && grid_fits == 0) {
        std::sort(token_counts.begin(), token_counts.end());
        token_counts.erase(std::unique(token_counts.begin(), token_counts.end()), token_counts.end());
        throw UsageError("--grid " + std::to_string(grid.first) + "x" + std::to_string(grid.second) + " (" +
                         std::to_string(grid.first * grid.second) + " tokens) does not fit " +
                         (token_counts.empty() ? std::string("any layer: the model has no token outputs [T,D]")
                                               : "the token count of any layer (" + join_ints(token_counts) +
                                                     " tokens)") +
                         ": pass the patch grid, e.g. 14x14 for 197 tokens with a class token");
    }
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->layers = std::move(out);
    impl_->layers_for_shape = shape;
    return impl_->layers;
}

const LayerInfo& Model::layer(const std::string& name) const {
    for (const auto& l : layers())
        if (l.name == name) return l;
    std::vector<std::string> names;
    for (const auto& l : layers()) names.push_back(l.name);
    throw Error("unknown layer '" + name + "'" + detail::closest_names_hint(name, names) +
                " (run `convscope describe` to list all layers)");
}

std::vector<std::string> Model::conv_layer_names() const {
    std::vector<std::string> out;
    for (const auto& l : layers())
        if (l.is_conv) out.push_back(l.name);
    return out;
}

std::string Model::penultimate_layer() const {
    // The embedding layer: what the output layer reads, i.e. the last whole layer before the
    // output (after its activation, as Karpathy's "CNN codes"), passing over dropout, which is
    // the identity at inference: fc1 -> relu5 -> dropout -> fc2 gives relu5; a ResNet's global
    // pooling; a LeNet's fc2 when its ReLUs are functions, not layers.
    const jit::Value* model_out = impl_->graph->outputs()[0];
    std::string last;
    for (const auto& l : layers()) {
        if (impl_->layer_value.at(l.name) == model_out) continue;
        if (l.depth > 0 && l.output_shape.size() != 1) continue;  // inner parts of blocks
        if (l.type.rfind("Dropout", 0) == 0 || l.type == "Identity") continue;
        last = l.name;
    }
    return last;
}

std::vector<int64_t> Model::output_shape() const {
    const auto shape = input_shape();
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        if (impl_->output_for_shape == shape) return impl_->output_shape;
    }
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), shape.begin(), shape.end());
    const at::Tensor out = forward(torch::zeros(nchw));
    std::vector<int64_t> sizes = out.sizes().vec();
    sizes.erase(sizes.begin());
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->output_shape = sizes;
    impl_->output_for_shape = shape;
    return sizes;
}

int64_t Model::num_classes() const {
    const std::vector<int64_t> s = output_shape();
    return s.empty() ? 1 : s[0];
}

at::Tensor Model::parameter(const std::string& layer_name, const std::string& name) const {
    for (const auto& item : impl_->module.named_modules()) {
        if (item.name != layer_name) continue;
        for (const auto& p : item.value.named_parameters(/*recurse=*/false))
            if (p.name == name) return p.value.detach();
        throw Error("layer '" + layer_name + "' has no parameter '" + name + "'");
    }
    std::vector<std::string> names;
    for (const auto& item : impl_->module.named_modules())
        if (!item.name.empty()) names.push_back(item.name);
    throw Error("unknown layer '" + layer_name + "'" + detail::closest_names_hint(layer_name, names));
}

std::vector<std::string> Model::parameter_names(const std::string& layer_name) const {
    for (const auto& item : impl_->module.named_modules()) {
        if (item.name != layer_name) continue;
        std::vector<std::string> names;
        for (const auto& p : item.value.named_parameters(/*recurse=*/false)) names.push_back(p.name);
        return names;
    }
    if (impl_->layer_value.count(layer_name)) return {};  // a layer that is no module (attention probabilities)
    parameter(layer_name, "");  // throws the unknown-layer error with its hint
    return {};
}

}  // namespace convscope
