// Running the model: forward passes with taps, and gradients with respect to the input and taps
// (with the ReLU backward rules of guided backprop and deconvnet).
#include <torch/script.h>
#include <torch/torch.h>

#include <algorithm>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/finite.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/model_impl.hpp"

namespace convscope {

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

namespace {

// A leaf copy of the input that requires its gradient; channels-last for the channels-last module
// (a clone, so that a one-channel batch gets NHWC strides too).
at::Tensor gradient_input(const at::Tensor& x, bool channels_last) {
    return (channels_last ? x.detach().clone(at::MemoryFormat::ChannelsLast) : x.detach().clone()).requires_grad_(true);
}

// Runs a tap function and returns its outputs (model output, then the taps), turning LibTorch's
// errors into one clear message.
std::vector<c10::IValue> run_tap_function(jit::GraphFunction& fn, jit::Stack& stack, const at::Tensor& x) {
    try {
        fn.run(stack);
    } catch (const std::exception& e) {
        throw Error("the model failed on inputs of shape " + detail::shape_str(x.sizes().vec()) + " (" +
                    first_error_line(e) + "): check --input-shape and the data");
    }
    return stack[0].toTupleRef().elements().vec();
}

void check_layer_names(const Model& m, const std::vector<std::string>& names) {
    for (const auto& n : names) (void)m.layer(n);  // throws with the closest names
}

// What check_input asks of any input, whatever its spatial size.
void check_input_any_size(const Model& model, const at::Tensor& x) {
    check_input(model, x, /*check_size=*/false);
}

// The parameters and then the buffers, the tensors values_key follows.
std::vector<at::Tensor> tensors_of(const jit::Module& m) {
    std::vector<at::Tensor> out;
    for (const auto& p : m.parameters()) out.push_back(p);
    for (const auto& b : m.buffers()) out.push_back(b);
    return out;
}

// Each parameter's and buffer's TensorImpl and version counter (in-place writes count it up):
// a different key means that some value was written or replaced. False for tensors without a
// version counter (made in inference mode).
bool values_key(const jit::Module& m, std::vector<std::pair<const void*, int64_t>>& key) {
    key.clear();
    try {
        for (const auto& t : tensors_of(m)) key.emplace_back(t.unsafeGetTensorImpl(), t._version());
    } catch (const std::exception&) {
        return false;
    }
    return true;
}

// Whether the inference copy's output is the module's own up to float32 rounding in a different
// order of operations (folded BatchNorm, blocked layouts): 1e-4 of the output's largest value.
bool same_output(const at::Tensor& own, const at::Tensor& fast) {
    if (own.sizes() != fast.sizes() || own.scalar_type() != fast.scalar_type()) return false;
    if (!own.is_floating_point()) return own.equal(fast);
    const at::Tensor a = own.to(at::kDouble), b = fast.to(at::kDouble);
    if (!a.isfinite().equal(b.isfinite())) return false;
    const at::Tensor fa = at::where(a.isfinite(), a, at::zeros_like(a));
    const at::Tensor fb = at::where(b.isfinite(), b, at::zeros_like(b));
    const double scale = fa.numel() ? fa.abs().max().item<double>() : 0.0;
    const double diff = fa.numel() ? (fa - fb).abs().max().item<double>() : 0.0;
    return diff <= 1e-4 * scale + 1e-6;
}

}  // namespace

std::pair<std::shared_ptr<jit::Module>, bool> Model::Impl::inference_copy(const std::vector<int64_t>& shape) const {
    std::lock_guard<std::mutex> lock(inference.mutex);
    if (!inference.enabled || !inference.refused.empty()) return {nullptr, false};
    // Freezing needs eval mode; a model being trained runs its own forward.
    if (!module.hasattr("training") || module.is_training()) return {nullptr, false};
    std::vector<std::pair<const void*, int64_t>> key;
    if (!values_key(module, key)) return {nullptr, false};
    if (inference.module && key == inference.key) return {inference.module, !inference.checked.count(shape)};
    inference.module.reset();
    try {
        jit::Module frozen = jit::freeze(module);
        inference.module = std::make_shared<jit::Module>(jit::optimize_for_inference(frozen));
    } catch (const std::exception& e) {
        inference.refused = "it cannot be frozen (" + first_error_line(e) + ")";
        return {nullptr, false};
    }
    inference.key = std::move(key);
    return {inference.module, !inference.checked.count(shape)};
}

std::shared_ptr<jit::Module> Model::Impl::channels_last_module() const {
    std::lock_guard<std::mutex> lock(channels_last.mutex);
    if (!channels_last.enabled || channels_last.failed) return nullptr;
    // A module being trained keeps its BatchNorm statistics itself: gradients run on it.
    if (!module.hasattr("training") || module.is_training()) return nullptr;
    std::vector<std::pair<const void*, int64_t>> key;
    if (!values_key(module, key)) return nullptr;
    if (channels_last.module && key == channels_last.key) return channels_last.module;
    const auto own = tensors_of(module);
    bool any_4d = false;
    for (const auto& t : own) any_4d |= t.dim() == 4 && t.is_floating_point();
    if (!any_4d) return nullptr;
    try {
        torch::NoGradGuard no_grad;
        std::vector<at::Tensor> mine;
        if (channels_last.module) mine = tensors_of(*channels_last.module);
        bool same_shapes = mine.size() == own.size();
        for (size_t i = 0; same_shapes && i < own.size(); ++i)
            same_shapes = own[i].sizes() == mine[i].sizes() && own[i].scalar_type() == mine[i].scalar_type();
        if (!same_shapes) {
            channels_last.module = std::make_shared<jit::Module>(module.deepcopy());
            channels_last.key.clear();
            mine = tensors_of(*channels_last.module);
            for (auto& t : mine)
                if (t.dim() == 4 && t.is_floating_point()) t.set_data(t.contiguous(at::MemoryFormat::ChannelsLast));
        }
        // Only the tensors that changed since the last copy (a randomisation step changes one layer).
        for (size_t i = 0; i < own.size(); ++i)
            if (channels_last.key.size() != key.size() || channels_last.key[i] != key[i]) mine[i].copy_(own[i]);
    } catch (const std::exception&) {
        channels_last.failed = true;
        channels_last.module.reset();
        return nullptr;
    }
    channels_last.key = std::move(key);
    return channels_last.module;
}

std::vector<c10::IValue> Model::Impl::run_for_gradients(
    const std::function<std::vector<c10::IValue>(const c10::IValue&, bool)>& run) const {
    const auto cl = channels_last_module();
    if (!cl) return run(c10::IValue(module._ivalue()), false);
    try {
        return run(c10::IValue(cl->_ivalue()), true);
    } catch (const Error&) {
        // A model that needs its own layout (`x.view(n, -1)` of a channels-last activation
        // fails): the module itself, and from then on. Bad input fails both and throws here.
        auto values = run(c10::IValue(module._ivalue()), false);
        std::lock_guard<std::mutex> lock(channels_last.mutex);
        channels_last.failed = true;
        channels_last.module.reset();
        return values;
    }
}

void Model::Impl::refuse_inference(const std::string& why) const {
    std::lock_guard<std::mutex> lock(inference.mutex);
    inference.refused = why;
    inference.module.reset();
}

void Model::set_inference_copy(bool enabled) {
    {
        std::lock_guard<std::mutex> lock(impl_->inference.mutex);
        impl_->inference.enabled = enabled;
        if (!enabled) impl_->inference.module.reset();
    }
    std::lock_guard<std::mutex> lock(impl_->channels_last.mutex);
    impl_->channels_last.enabled = enabled;
    if (!enabled) impl_->channels_last.module.reset();
}

std::string Model::inference_note() const {
    std::lock_guard<std::mutex> lock(impl_->inference.mutex);
    if (!impl_->inference.enabled) return "its own forward (the inference copy is turned off)";
    if (!impl_->inference.refused.empty()) return "its own forward: " + impl_->inference.refused;
    if (!impl_->inference.checked.empty()) return "the inference copy";
    return "not yet run";
}

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
    check_finite_input(x);
}

at::Tensor Model::forward(const at::Tensor& x) const {
    check_input(*this, x);
    return forward_unchecked(x);
}

at::Tensor Model::forward_unchecked(const at::Tensor& x) const {
    torch::NoGradGuard no_grad;
    // The inference copy when there is one; the module's own forward when not, when the copy
    // fails on this input, and beside the copy's first output for each input shape to check it.
    at::Tensor fast;
    std::string copy_failed;
    const auto [copy, check] = impl_->inference_copy(x.sizes().vec());
    if (copy) {
        try {
            fast = impl_->output_of(copy->forward({x}));
        } catch (const std::exception& e) {
            copy_failed = first_error_line(e);
        }
        if (fast.defined() && !check) return fast;
    }
    c10::IValue out;
    try {
        out = impl_->module.forward({x});
    } catch (const std::exception& e) {
        // Bad input fails both: the copy stays.
        throw Error("the model failed on inputs of shape " + detail::shape_str(x.sizes().vec()) + " (" +
                    first_error_line(e) + "): check --input-shape and the data");
    }
    at::Tensor own = impl_->output_of(out);
    if (!copy_failed.empty()) impl_->refuse_inference("its inference copy failed (" + copy_failed + ")");
    if (fast.defined()) {
        // The copy's values even at the check, so that an item's result does not depend on
        // which batch came first (ranks and resumed runs give the same files).
        if (same_output(own, fast)) {
            std::lock_guard<std::mutex> lock(impl_->inference.mutex);
            impl_->inference.checked.insert(x.sizes().vec());
            return fast;
        }
        impl_->refuse_inference("its inference copy computed other outputs");
    }
    return own;
}

TapResult Model::forward_taps(const at::Tensor& x, const std::vector<std::string>& layers) const {
    check_input(*this, x);
    check_layer_names(*this, layers);
    auto fn = impl_->function_for(layers, {}, ReluBackward::Plain);
    torch::NoGradGuard no_grad;
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), x};
    const auto values = run_tap_function(*fn, stack, x);
    TapResult r;
    r.output = values[0].toTensor();
    for (size_t i = 0; i < layers.size(); ++i) r.taps[layers[i]] = values[i + 1].toTensor();
    return r;
}

at::Tensor Model::forward_edited(const at::Tensor& x, const std::string& layer, const at::Tensor& offset) const {
    check_input(*this, x);
    check_layer_names(*this, {layer});
    auto fn = impl_->function_for({}, {layer}, ReluBackward::Plain);
    torch::NoGradGuard no_grad;
    jit::Stack stack{c10::IValue(impl_->module._ivalue()), x, offset};
    return run_tap_function(*fn, stack, x)[0].toTensor();
}

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
    at::Tensor input;
    const auto values = impl_->run_for_gradients([&](const c10::IValue& self, bool channels_last) {
        input = gradient_input(x, channels_last);
        jit::Stack stack{self, input};
        return run_tap_function(*fn, stack, x);
    });
    GradResult r;
    for (size_t i = 0; i < layers.size(); ++i) r.forward.taps[layers[i]] = values[i].toTensor();
    at::Tensor scalar = scalar_of(r.forward);
    if (!scalar.defined() || scalar.numel() != 1)
        throw Error("the value to differentiate must be a single number");
    auto grads = torch::autograd::grad({scalar.reshape({})}, {input}, {}, false, false, true);
    r.input_grad = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(x);
    for (auto& kv : r.forward.taps) kv.second = kv.second.detach().contiguous();
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
    // Probe shapes come from the layer table (computed for the model's input shape); the batch
    // size is the current one.
    std::vector<std::vector<int64_t>> shapes;
    for (const auto& name : grad_layers) {
        std::vector<int64_t> shape{x.size(0)};
        const auto& os = layer(name).output_shape;
        shape.insert(shape.end(), os.begin(), os.end());
        if (os.empty())
            throw Error("layer '" + name + "' has no tensor output to differentiate");
        shapes.push_back(shape);
    }
    at::Tensor input;
    std::vector<at::Tensor> probes;
    const auto values = impl_->run_for_gradients([&](const c10::IValue& self, bool channels_last) {
        input = gradient_input(x, channels_last);
        jit::Stack stack{self, input};
        probes.clear();
        for (const auto& shape : shapes) {
            const auto format = channels_last && shape.size() == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
            probes.push_back(torch::zeros(shape, at::TensorOptions().memory_format(format)).requires_grad_(true));
            stack.push_back(probes.back());
        }
        return run_tap_function(*fn, stack, x);
    });
    GradResult r;
    r.forward.output = values[0].toTensor();
    for (size_t i = 0; i < taps.size(); ++i) r.forward.taps[taps[i]] = values[i + 1].toTensor();
    at::Tensor scalar = scalar_of(r.forward);
    if (!scalar.defined() || scalar.numel() != 1)
        throw Error("the value to differentiate must be a single number");
    std::vector<at::Tensor> wrt{input};
    wrt.insert(wrt.end(), probes.begin(), probes.end());
    auto grads = torch::autograd::grad({scalar.reshape({})}, wrt, /*grad_outputs=*/{},
                                       /*retain_graph=*/false, /*create_graph=*/false,
                                       /*allow_unused=*/true);
    // Results are plain contiguous tensors, detached from the finished autograd graph.
    r.input_grad = grads[0].defined() ? grads[0].contiguous() : torch::zeros_like(x);
    for (size_t i = 0; i < grad_layers.size(); ++i)
        r.tap_grads[grad_layers[i]] = grads[i + 1].defined() ? grads[i + 1].contiguous() : torch::zeros(probes[i].sizes());
    r.forward.output = r.forward.output.detach().contiguous();
    for (auto& kv : r.forward.taps) kv.second = kv.second.detach().contiguous();
    return r;
}

}  // namespace convscope
