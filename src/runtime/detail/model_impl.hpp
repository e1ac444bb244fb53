#pragma once
// Model's private state, shared by its files: model.cpp (graph analysis, layers, tap graphs),
// model_load.cpp (reading TorchScript files) and model_run.cpp (forward passes and gradients).
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/csrc/jit/ir/ir.h>

#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "convscope/runtime/model.hpp"
#include "convscope/runtime/preprocess.hpp"

namespace convscope {

namespace jit = torch::jit;

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

    // Attention probabilities as extra layers ("<module>.attention_probs", values
    // [N,windows,heads,Q,K]) and why some nn.MultiheadAttention calls were left as they are.
    struct Attention {
        std::string name, module;
        jit::Value* probs = nullptr;
        jit::Value* queries = nullptr;
        int64_t shift = 0;
    };
    std::vector<Attention> attention;
    std::vector<std::string> attention_notes;
    std::pair<int64_t, int64_t> grid{0, 0};  // --grid (0: inferred)

    mutable std::mutex mutex;
    mutable std::vector<LayerInfo> layers;
    mutable std::vector<int64_t> layers_for_shape;
    mutable std::map<std::string, std::shared_ptr<jit::GraphFunction>> functions;
    mutable std::vector<int64_t> output_shape, output_for_shape;  // Model::output_shape's cache

    // The copy plain forward passes run (model_run.cpp): the module frozen (parameters as
    // constants, BatchNorm folded into the convolutions) and optimised for inference (MKLDNN
    // layouts with prepacked weights). Built at the first forward pass after any parameter or
    // buffer changed (`key`: each one's TensorImpl and version counter); checked against the
    // module's own forward once per input shape (LibTorch 1.13 miscomputes some, e.g.
    // MobileNetV3's); never used again for this model after a failure.
    struct Inference {
        std::mutex mutex;
        bool enabled = true;
        std::set<std::vector<int64_t>> checked;  // input shapes whose outputs were compared
        std::string refused;  // why this model runs its own forward ("" = not refused)
        std::shared_ptr<jit::Module> module;
        std::vector<std::pair<const void*, int64_t>> key;
    };
    mutable Inference inference;
    // The inference copy for the current values (built if needed) and whether it still has to
    // be checked on inputs of this shape; {nullptr, false} when the module's own forward must run.
    std::pair<std::shared_ptr<jit::Module>, bool> inference_copy(const std::vector<int64_t>& shape) const;
    // Stops using the inference copy for this model (the reason is kept for inference_note()).
    void refuse_inference(const std::string& why) const;

    // The module the gradient passes run (model_run.cpp): a deep copy (same class type, so the
    // analysed graphs take it as `self`) whose 4-D float parameters are channels-last, fed a
    // channels-last input, so that MKLDNN's convolutions and their backward run on NHWC without
    // reordering weights and activations. Each tensor is copied again when the module's changed
    // (`key`, as the inference copy's); rebuilt when a tensor was replaced by one of another shape.
    struct ChannelsLast {
        std::mutex mutex;
        bool enabled = true;
        bool failed = false;  // the module could not be copied: gradients run on it directly
        std::shared_ptr<jit::Module> module;
        std::vector<std::pair<const void*, int64_t>> key;
    };
    mutable ChannelsLast channels_last;
    // The channels-last module for the current values, or nullptr when the gradients run on the
    // module itself (turned off, no 4-D parameter, a copy that failed).
    std::shared_ptr<jit::Module> channels_last_module() const;
    // run(self, channels_last) on the channels-last module, or on the module itself when there is
    // none or when the copy fails where the module does not (then for good).
    std::vector<c10::IValue> run_for_gradients(
        const std::function<std::vector<c10::IValue>(const c10::IValue&, bool)>& run) const;

    // The outputs (model_outputs.cpp): what forward returns, the entries known from the graph
    // ("output" for a single tensor, positions for tuples and lists, keys for dicts), the one
    // asked for ("" = the default) and the one chosen.
    enum class OutputKind { Tensor, Tuple, List, Dict };
    OutputKind output_kind = OutputKind::Tensor;
    std::vector<std::string> output_names;
    std::string output_spec, output_name;

    // Builds the graph (with the chosen output) and the layer table's names from the module.
    void analyse();
    // Makes the graph return the chosen entry alone and removes what only the others need.
    // Throws Error listing the outputs for an entry that does not exist.
    void choose_output();
    // The chosen entry of what module.forward returned.
    at::Tensor output_of(const c10::IValue& value) const;
    // A function computing (output, taps..., [tap grads probes as inputs]) for the given plan.
    // with_output = false: the graph ends at the taps (the model output is not computed).
    std::shared_ptr<jit::GraphFunction> function_for(const std::vector<std::string>& taps,
                                                     const std::vector<std::string>& probes,
                                                     ReluBackward rule, bool with_output = true) const;
};

// The message of a LibTorch or TorchScript error without its traceback: the last line that
// names the failure (TorchScript puts the traceback first and the error last).
std::string first_error_line(const std::exception& e);

}  // namespace convscope
