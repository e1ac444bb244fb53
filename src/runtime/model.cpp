// The model runtime: TorchScript loading, layer discovery through the inlined forward graph,
// forward passes with taps, gradients with respect to the input and taps, and ReLU backward
// rules for guided backprop and deconvnet.
#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"


#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/alias_analysis.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>
#include <torch/csrc/jit/serialization/import.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <malloc.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/graph.hpp"
#include "runtime/detail/relu_rules.hpp"
#include "convscope/runtime/strings.hpp"

namespace convscope {

namespace jit = torch::jit;

namespace {

bool is_tensor(const jit::Value* v) { return v->type()->kind() == c10::TypeKind::TensorType; }

// Short class name: "__torch__.torchvision.models.resnet.BasicBlock" -> "BasicBlock",
// "__torch__.foo.___torch_mangle_3.Conv2d" -> "Conv2d".
std::string short_type_name(const c10::ClassTypePtr& type) {
    if (!type || !type->name()) return "Module";
    return type->name()->name();
}

// The dotted module path a node was inlined from ("" for the model's own forward).
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

// Checks the file before handing it to torch::jit::load, so that common mistakes get a message
// that says what the file is and what to do, instead of a deserializer trace.
void precheck_model_file(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(path, ec))
        throw Error("model file '" + path + "' does not exist: check the path given to --model");
    if (fs::is_directory(path, ec))
        throw Error("model path '" + path + "' is a folder: give the TorchScript .pt file itself");
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error("cannot read model file '" + path + "': " + ec.message());
    if (size == 0)
        throw Error("model file '" + path +
                    "' is empty (0 bytes): export the model again with torch.jit.save");
    std::ifstream in(path, std::ios::binary);
    char magic[8] = {0};
    in.read(magic, sizeof magic);
    const std::string head(magic, static_cast<size_t>(in.gcount()));
    if (head.rfind("\x89PNG", 0) == 0 || head.rfind("\xff\xd8\xff", 0) == 0)
        throw Error("model file '" + path +
                    "' is an image, not a TorchScript model: pass the image with --data and the "
                    "model (exported with torch.jit.script or torch.jit.trace) with --model");
    if (head.rfind("PK\x03\x04", 0) != 0) {
        if (!head.empty() && static_cast<unsigned char>(head[0]) == 0x80)
            throw Error("model file '" + path +
                        "' is a legacy pickled PyTorch file, not TorchScript: export the model "
                        "with torch.jit.script(model).save('model.pt')");
        throw Error("model file '" + path +
                    "' is not a TorchScript archive (it is not a zip file): export the model with "
                    "torch.jit.script(model).save('model.pt') or torch.jit.trace");
    }
    std::vector<std::string> records;
    try {
        caffe2::serialize::PyTorchStreamReader reader(path);
        records = reader.getAllRecords();
    } catch (const std::exception&) {
        throw Error("model file '" + path +
                    "' is truncated or corrupt (its zip archive cannot be read): copy or export "
                    "it again");
    }
    bool has_code = false, has_data = false;
    for (const auto& r : records) {
        if (r.rfind("code/", 0) == 0) has_code = true;
        if (r == "data.pkl") has_data = true;
    }
    if (!has_code && has_data)
        throw Error("model file '" + path +
                    "' is a PyTorch checkpoint (torch.save of a state_dict or module), not "
                    "TorchScript: load it in Python and export with "
                    "torch.jit.script(model).save('model.pt')");
    if (!has_code)
        throw Error("model file '" + path +
                    "' is a zip archive without TorchScript code: export the model with "
                    "torch.jit.script(model).save('model.pt')");
}

ModelMeta parse_meta(const std::string& text, const std::string& path) {
    if (text.empty()) return ModelMeta{};
    try {
        ModelMeta meta = model_meta_from_json(text);
        meta.source = "metadata in the model file";
        if (!meta.class_names.empty()) meta.classes_source = "metadata in the model file";
        return meta;
    } catch (const Error& e) {
        throw Error("model file '" + path + "': its convscope.json metadata " + e.what() +
                    "; write it again with `convscope annotate --model " + path + " ... --save M.pt`");
    }
}

// The message of a LibTorch or TorchScript error without its traceback: the last line that
// names the failure (TorchScript puts the traceback first and the error last).
std::string first_error_line(const std::exception& e) {
    std::string what;
    if (const auto* c = dynamic_cast<const c10::Error*>(&e)) what = c->what_without_backtrace();
    else what = e.what();
    std::vector<std::string> lines;
    std::string cur;
    for (char ch : what) {
        if (ch == '\n') {
            if (!cur.empty()) lines.push_back(cur);
            cur.clear();
        } else {
            cur += ch;
        }
    }
    if (!cur.empty()) lines.push_back(cur);
    if (lines.empty()) return "unknown error";
    for (auto it = lines.rbegin(); it != lines.rend(); ++it)
        if (it->find("Error:") != std::string::npos) return it->substr(it->find("Error:") + 7);
    return lines.size() > 1 && lines[0].find("following operation failed") != std::string::npos ? lines.back() : lines[0];
}

std::string join_shape(const std::vector<int64_t>& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) out += (i ? "," : "") + std::to_string(s[i]);
    return out;
}

}  // namespace

// ------------------------------------------------------------------------------------------
struct Model::Impl {
    jit::Module module;
    ModelMeta meta;
    std::string path;
    std::string hash;
    std::vector<int64_t> input_shape;  // override when the model has no metadata

    // The inlined forward graph and, for every module path that computes something, the last
    // tensor value produced inside it (its output).
    std::shared_ptr<jit::Graph> graph;
    std::vector<std::string> layer_order;
    std::map<std::string, jit::Value*> layer_value;
    std::map<std::string, std::string> layer_types;
    std::map<std::string, int64_t> layer_params;

    mutable std::mutex mutex;
    mutable std::vector<LayerInfo> layers;
    mutable std::vector<int64_t> layers_for_shape;
    mutable std::map<std::string, std::shared_ptr<jit::GraphFunction>> functions;

    void analyse();
    // A function computing (output, taps..., [tap grads probes as inputs]) for the given plan.
    // with_output = false: the graph ends at the taps (the model output is not computed).
    std::shared_ptr<jit::GraphFunction> function_for(const std::vector<std::string>& taps,
                                                     const std::vector<std::string>& probes,
                                                     ReluBackward rule, bool with_output = true) const;
};

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

    // Types and parameter counts from the module tree.
    for (const auto& item : module.named_modules()) {
        if (item.name.empty()) continue;
        layer_types[item.name] = short_type_name(item.value.type());
        int64_t count = 0;
        for (const auto& p : item.value.parameters(/*recurse=*/true)) count += p.numel();
        layer_params[item.name] = count;
    }

    for (jit::Node* n : graph->nodes()) {
        const std::string path_of_node = node_module_path(n);
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
        if (layer_value[name]->node()->kind() == c10::prim::GetAttr) {
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

Model Model::load(const std::string& path, bool read_metadata) {
    precheck_model_file(path);
    Model m;
    jit::ExtraFilesMap extra{{"convscope.json", ""}};
    try {
        m.impl_->module = jit::load(path, c10::kCPU, extra);
    } catch (const c10::Error& e) {
        std::string what = e.what_without_backtrace();
        what = what.substr(0, what.find('\n'));
        throw Error("model file '" + path + "' cannot be loaded as TorchScript (" + what +
                    "): the file is corrupt or was written by an incompatible PyTorch; export it "
                    "again with torch.jit.save");
    } catch (const std::exception& e) {
        throw Error("model file '" + path + "' cannot be loaded (" + std::string(e.what()) +
                    "): export it again with torch.jit.save");
    }
    m.impl_->path = path;
    if (read_metadata) m.impl_->meta = parse_meta(extra["convscope.json"], path);
    m.impl_->hash = sha256_file(path);
    m.impl_->analyse();
    return m;
}

Model Model::from_module(const jit::Module& module, ModelMeta meta, std::string path) {
    Model m;
    m.impl_->module = module.clone();
    m.impl_->meta = std::move(meta);
    m.impl_->path = std::move(path);
    m.impl_->analyse();
    return m;
}

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
                         join_shape(chw) + "'");
    std::lock_guard<std::mutex> lock(impl_->mutex);
    if (impl_->input_shape != chw) impl_->layers.clear();
    impl_->input_shape = chw;
}

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
                    join_shape(shape) + " (" + first_error_line(e) +
                    "): pass the right --input-shape C,H,W");
    }
    auto rfs = detail::receptive_fields(*impl_->graph, impl_->module, shapes);

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
        info.is_conv = info.type.find("Conv") != std::string::npos && info.output_shape.size() == 3;
        info.is_linear = info.type == "Linear";
        out.push_back(std::move(info));
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

int64_t Model::num_classes() const {
    const auto shape = input_shape();
    std::vector<int64_t> nchw{1};
    nchw.insert(nchw.end(), shape.begin(), shape.end());
    auto out = forward(torch::zeros(nchw));
    return out.size(-1);
}

namespace {
at::Tensor output_tensor(const c10::IValue& v, const std::string& path) {
    if (v.isTensor()) return v.toTensor();
    if (v.isTuple() && !v.toTupleRef().elements().empty() && v.toTupleRef().elements()[0].isTensor())
        return v.toTupleRef().elements()[0].toTensor();
    throw Error("model '" + path + "' does not return a tensor from forward: convscope needs a "
                "classifier that returns logits [N,K]");
}

}  // namespace

void check_input(const Model& model, const at::Tensor& x, bool check_size) {
    if (!x.defined() || x.dim() != 4)
        throw Error("model input must be a batch [N,C,H,W]; got " +
                    std::string(x.defined() ? std::to_string(x.dim()) + " dimensions" : "nothing"));
    if (x.scalar_type() != at::kFloat)
        throw Error("model input must be float32, got " + std::string(c10::toString(x.scalar_type())));
    if (model.has_input_shape()) {
        auto want = model.input_shape();
        if (x.size(1) != want[0])
            throw Error("the data has " + std::to_string(x.size(1)) + " channels but the model expects " +
                        std::to_string(want[0]) + ": use data with " + std::to_string(want[0]) +
                        " channels or a model made for " + std::to_string(x.size(1)));
        if (check_size && (x.size(2) != want[1] || x.size(3) != want[2]))
            throw Error("the data is " + std::to_string(x.size(2)) + "x" + std::to_string(x.size(3)) +
                        " but the model expects " + std::to_string(want[1]) + "x" +
                        std::to_string(want[2]) + ": resize the data or pass --input-shape");
    }
    if (!torch::isfinite(x).all().item<bool>())
        throw Error("the input holds NaN or Inf values: clean the data (convscope needs finite inputs)");
}

at::Tensor Model::forward(const at::Tensor& x) const {
    check_input(*this, x);
    torch::NoGradGuard no_grad;
    try {
        return output_tensor(impl_->module.forward({x}), impl_->path);
    } catch (const std::exception& e) {
        throw Error("the model failed on inputs of shape [" + join_shape(x.sizes().vec()) + "] (" +
                    first_error_line(e) + "): check --input-shape and the data");
    }
}

namespace {
// Runs a tap function and returns its outputs (model output, then the taps), turning LibTorch's
// errors into one clear message.
std::vector<c10::IValue> run_tap_function(jit::GraphFunction& fn, jit::Stack& stack, const at::Tensor& x) {
    try {
        fn.run(stack);
    } catch (const std::exception& e) {
        throw Error("the model failed on inputs of shape [" + join_shape(x.sizes().vec()) + "] (" +
                    first_error_line(e) + "): check --input-shape and the data");
    }
    return stack[0].toTupleRef().elements().vec();
}

void check_layer_names(const Model& m, const std::vector<std::string>& names) {
    for (const auto& n : names) (void)m.layer(n);  // throws with the closest names
}
}  // namespace

TapResult Model::forward_taps(const at::Tensor& x, const std::vector<std::string>& layers) const {
    check_input(*this, x);
    check_layer_names(*this, layers);
    auto fn = impl_->function_for(layers, {}, ReluBackward::Plain);
    torch::NoGradGuard no_grad;
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), x};
    const auto values = run_tap_function(*fn, stack, x);
    TapResult r;
    r.output = output_tensor(values[0], impl_->path);
    for (size_t i = 0; i < layers.size(); ++i) r.taps[layers[i]] = values[i + 1].toTensor();
    return r;
}

namespace {
// What check_input asks of any input, whatever its spatial size.
void check_input_any_size(const Model& model, const at::Tensor& x) {
    check_input(model, x, /*check_size=*/false);
}
}  // namespace

TapResult Model::forward_until(const at::Tensor& x, const std::vector<std::string>& layers) const {
    check_input_any_size(*this, x);
    check_layer_names(*this, layers);
    if (layers.empty()) throw Error("forward_until needs at least one layer");
    auto fn = impl_->function_for(layers, {}, ReluBackward::Plain, false);
    torch::NoGradGuard no_grad;
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), x};
    const auto values = run_tap_function(*fn, stack, x);
    TapResult r;
    for (size_t i = 0; i < layers.size(); ++i) r.taps[layers[i]] = values[i].toTensor();
    return r;
}

Model::GradResult Model::gradients_until(const at::Tensor& x,
                                         const std::function<at::Tensor(const TapResult&)>& scalar_of,
                                         const std::vector<std::string>& layers) const {
    check_input_any_size(*this, x);
    check_layer_names(*this, layers);
    if (layers.empty()) throw Error("gradients_until needs at least one layer");
    auto fn = impl_->function_for(layers, {}, ReluBackward::Plain, false);
    torch::AutoGradMode grad_mode(true);
    auto input = x.detach().clone().requires_grad_(true);
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), input};
    const auto values = run_tap_function(*fn, stack, x);
    GradResult r;
    for (size_t i = 0; i < layers.size(); ++i) r.forward.taps[layers[i]] = values[i].toTensor();
    at::Tensor scalar = scalar_of(r.forward);
    if (!scalar.defined() || scalar.numel() != 1)
        throw Error("the value to differentiate must be a single number");
    auto grads = torch::autograd::grad({scalar.reshape({})}, {input}, {}, false, false, true);
    r.input_grad = grads[0].defined() ? grads[0] : torch::zeros_like(x);
    for (auto& kv : r.forward.taps) kv.second = kv.second.detach();
    return r;
}

Model::GradResult Model::gradients(const at::Tensor& x,
                                   const std::function<at::Tensor(const TapResult&)>& scalar_of,
                                   const std::vector<std::string>& grad_layers,
                                   const std::vector<std::string>& tap_layers) const {
    return gradients_with_relu_rule(ReluBackward::Plain, x, scalar_of, grad_layers, tap_layers);
}

Model::GradResult Model::gradients_with_relu_rule(
    ReluBackward rule, const at::Tensor& x,
    const std::function<at::Tensor(const TapResult&)>& scalar_of,
    const std::vector<std::string>& grad_layers, const std::vector<std::string>& tap_layers) const {
    check_input(*this, x);
    check_layer_names(*this, grad_layers);
    check_layer_names(*this, tap_layers);
    std::vector<std::string> taps = grad_layers;
    for (const auto& t : tap_layers)
        if (std::find(taps.begin(), taps.end(), t) == taps.end()) taps.push_back(t);
    auto fn = impl_->function_for(taps, grad_layers, rule);

    torch::AutoGradMode grad_mode(true);
    auto input = x.detach().clone().requires_grad_(true);
    // Probe shapes come from the layer table (computed for the model's input shape); the batch
    // size is the current one.
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), input};
    std::vector<at::Tensor> probes;
    for (const auto& name : grad_layers) {
        std::vector<int64_t> shape{x.size(0)};
        const auto& os = layer(name).output_shape;
        shape.insert(shape.end(), os.begin(), os.end());
        if (os.empty())
            throw Error("layer '" + name + "' has no tensor output to differentiate");
        auto p = torch::zeros(shape).requires_grad_(true);
        probes.push_back(p);
        stack.push_back(p);
    }
    const auto values = run_tap_function(*fn, stack, x);
    GradResult r;
    r.forward.output = output_tensor(values[0], impl_->path);
    for (size_t i = 0; i < taps.size(); ++i) r.forward.taps[taps[i]] = values[i + 1].toTensor();
    at::Tensor scalar = scalar_of(r.forward);
    if (!scalar.defined() || scalar.numel() != 1)
        throw Error("the value to differentiate must be a single number");
    std::vector<at::Tensor> wrt{input};
    wrt.insert(wrt.end(), probes.begin(), probes.end());
    auto grads = torch::autograd::grad({scalar.reshape({})}, wrt, /*grad_outputs=*/{},
                                       /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    r.input_grad = grads[0].defined() ? grads[0] : torch::zeros_like(x);
    for (size_t i = 0; i < grad_layers.size(); ++i)
        r.tap_grads[grad_layers[i]] = grads[i + 1].defined() ? grads[i + 1] : torch::zeros_like(probes[i]);
    // Results are plain tensors: detach them from the finished autograd graph.
    r.forward.output = r.forward.output.detach();
    for (auto& kv : r.forward.taps) kv.second = kv.second.detach();
    return r;
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

}  // namespace convscope
