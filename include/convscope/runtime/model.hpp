#pragma once
// The model runtime: loads a TorchScript CNN (torch.jit.script, torch.jit.trace, or convscope's
// own), lists its layers as dotted module paths with shapes and receptive fields, and runs
// forward passes that also return the activations ("taps") of any named layers, and gradients
// of any scalar with respect to the input and to taps. Works on arbitrary graphs (residual
// adds, concatenations, functional ops, in-place ops).
#include <ATen/core/Tensor.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/layout.hpp"
#include "convscope/runtime/receptive_field.hpp"

namespace torch::jit {
struct Module;
struct Graph;
struct Value;
}

namespace convscope {

// What a model expects of its inputs and what its outputs mean, stored inside the model file as
// the extra file `convscope.json` (PyTorch ignores it; `convscope annotate` or
// torch.jit.save(m, path, _extra_files={"convscope.json": ...}) writes it). The JSON keys are
// the field names; every key is optional. For models without it the fields keep their defaults
// and options fill them in (see preprocess.hpp).
struct ModelMeta {
    std::vector<int64_t> input_shape;      // C,H,W the model expects (H,W: the crop); empty if unknown
    std::vector<double> mean, std;         // per-channel normalisation (pixel_range units); empty = none
    int64_t resize = 0;                    // shorter side before the centre crop; 0 = fit directly
    double pixel_range = 1.0;              // pixels span [0,1] or [0,255]
    bool bgr = false;                      // channels in B,G,R order
    std::vector<std::string> class_names;  // one per output class; may be empty
    std::string dataset;                   // the data it was trained on, e.g. "fashion-mnist"
    // For people, not stored: where the preprocessing came from ("metadata in the model file",
    // "--preprocess imagenet", ...; "" = nothing known) and where the class names came from.
    std::string source, classes_source;

    // The preprocessing these fields describe (input_shape, mean, std, resize, range, order).
    Preprocess preprocess() const;
};

struct LayerInfo {
    std::string name;                   // dotted module path: "conv1", "layer1.0.conv2", "layer1.0"
    std::string type;                   // module class: "Conv2d", "BasicBlock", "ReLU", ...
    std::vector<int64_t> output_shape;  // without the batch dimension, e.g. {64,56,56}
    Layout layout;                      // how output_shape reads (nchw, nhwc, tokens, vector, attention)
    int64_t num_params = 0;             // parameters of this module and its children
    int depth = 0;                      // number of dots in the name
    ReceptiveField rf;                  // receptive field of one output unit in input pixels
    bool is_conv = false;               // a Conv2d (has spatial weights)
    bool is_linear = false;             // a Linear
};

// One tensor the model returns. forward may return a tensor, a tuple or list of tensors, or a
// dict from names to tensors (torchvision's segmentation models: {"out": ..., "aux": ...}).
struct OutputInfo {
    std::string name;            // "output" for a single tensor, the position ("0", "1", ...) in a
                                 // tuple or list, the key in a dict
    std::vector<int64_t> shape;  // without the batch dimension, for input_shape()
    bool chosen = false;         // the output every method reads (Model::select_output)
};

// Result of a forward pass with taps. Tensors are float32, batch first.
struct TapResult {
    at::Tensor output;                      // model output, e.g. logits [N,K]
    std::map<std::string, at::Tensor> taps;  // layer name -> activation [N,C,H,W] or [N,F]
};

class Model {
public:
    // Loads a TorchScript file and puts it in eval mode. Throws Error for a missing, empty,
    // truncated or corrupt file and for files that are not TorchScript (a state_dict saved with
    // torch.save, an image), each with a message that says what to do.
    // Metadata (convscope.json) that does not parse is an Error naming the fix; with
    // read_metadata = false it is not read at all (for rewriting it).
    static Model load(const std::string& path, bool read_metadata = true);
    // Wraps an already built TorchScript module (used by `train`).
    static Model from_module(const torch::jit::Module& module, ModelMeta meta,
                             std::string path = "<memory>");

    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;
    ~Model();

    const std::string& path() const;
    const ModelMeta& meta() const;
    // Replaces the metadata (for options that describe the model, see preprocess.hpp); a new
    // input shape takes effect as set_input_shape's.
    void set_meta(ModelMeta meta);
    // The input shape C,H,W: meta().input_shape if known, else the one set by set_input_shape.
    // Throws Error if neither is known (the message asks for --input-shape).
    std::vector<int64_t> input_shape() const;
    void set_input_shape(const std::vector<int64_t>& chw);
    bool has_input_shape() const;

    // All layers (modules at every depth) in the order their computation starts, with output
    // shapes and receptive fields for input_shape(). Computed once (one forward pass of a
    // single zero image) and cached.
    const std::vector<LayerInfo>& layers() const;
    // Layer by name; throws Error naming the closest existing names if there is none.
    const LayerInfo& layer(const std::string& name) const;
    // The patch grid of token outputs [T,D] where the graph does not give it (--grid HxW): the
    // last h*w tokens are the grid, the ones before it extra tokens. A grid that fits no layer's
    // token count is a UsageError when the layers are listed. (0,0) = inferred only.
    void set_grid(int64_t h, int64_t w);
    // The attention layers ("<module>.attention_probs", layout Attention, outputs
    // [N,windows,heads,queries,keys]) in execution order, and why some attention modules have
    // none (masked or customised nn.MultiheadAttention calls).
    std::vector<std::string> attention_layers() const;
    const std::vector<std::string>& attention_notes() const;
    // Names of the layers for which `pred` holds, e.g. all convs.
    std::vector<std::string> conv_layer_names() const;
    // The last layer before the output layer whose output is 1-D (for embeddings), else "".
    std::string penultimate_layer() const;
    // The model's outputs with their shapes for input_shape() (one forward pass of a zero image).
    std::vector<OutputInfo> outputs() const;
    // Chooses the output that forward passes, gradients and every method read: a dict key or a
    // position; "" = the default (the dict entry "out", else the first tensor). The graph is cut
    // to it, so layers only the other outputs need leave the layer table. Throws Error listing
    // the outputs if there is no such one.
    void select_output(const std::string& name);
    // The chosen output's name (see OutputInfo::name).
    const std::string& output_name() const;
    // The chosen output's shape without the batch dimension, for input_shape() (one forward pass
    // of a zero image, once per input shape and output).
    std::vector<int64_t> output_shape() const;
    // Number of output classes: the size of the output's dimension 1 ([N,K] logits, [N,K,H,W]
    // dense scores); 1 for an output [N].
    int64_t num_classes() const;

    // Plain forward: images_nchw [N,C,H,W] float32 -> output. No autograd.
    at::Tensor forward(const at::Tensor& images_nchw) const;
    // The same without check_input, for callers that checked the images already (occlusion's
    // copies of checked images).
    at::Tensor forward_unchecked(const at::Tensor& images_nchw) const;
    // forward and forward_unchecked run an inference copy of the module (frozen: parameters as
    // constants, BatchNorm folded into convolutions; MKLDNN layouts with prepacked weights),
    // rebuilt at the first forward after a parameter or buffer changed. Its first output for
    // each input shape is checked against the module's own forward (within 1e-4 of the output's
    // largest value); a model that cannot be frozen or fails the check runs its own forward. Taps,
    // edits and gradients run the analysed graph; gradients on a channels-last copy of the module
    // (it follows writes too). set_inference_copy(false) turns both off; inference_note: which forward.
    void set_inference_copy(bool enabled);
    std::string inference_note() const;
    // Forward with one layer's output changed: the rest of the graph reads output + offset
    // (offset: the layer's output shape, batch first) instead of its output. No autograd. For
    // edits inside the model such as replacing a ViT's patch tokens (occlusion's token masking).
    at::Tensor forward_edited(const at::Tensor& images_nchw, const std::string& layer, const at::Tensor& offset) const;
    // Forward that also returns the outputs of the named layers ("taps"). No autograd. A tap
    // holds the layer's output as computed, even if later in-place ops change that tensor.
    TapResult forward_taps(const at::Tensor& images_nchw, const std::vector<std::string>& layers) const;

    // Gradients. `scalar_of` receives the output and the taps of a forward pass (with autograd)
    // and returns the scalar to differentiate (e.g. a sum of logits of target classes). Returns
    // the forward result plus d scalar / d input [N,C,H,W] and d scalar / d tap for each name in
    // `grad_layers` (same shape as the tap). Layers listed only in `tap_layers` are returned as
    // taps without gradients.
    struct GradResult {
        TapResult forward;
        at::Tensor input_grad;
        std::map<std::string, at::Tensor> tap_grads;
    };
    // The graph cut after the named layers: only what they need is computed, TapResult::output
    // stays undefined, and any input size the cut graph accepts may be used (for example a
    // smaller image through the convolutional part). forward_until runs without autograd;
    // gradients_until differentiates scalar_of(taps) with respect to the input
    // (GradResult::input_grad; tap_grads stay empty).
    TapResult forward_until(const at::Tensor& images_nchw, const std::vector<std::string>& layers) const;
    GradResult gradients_until(const at::Tensor& images_nchw,
                               const std::function<at::Tensor(const TapResult&)>& scalar_of,
                               const std::vector<std::string>& layers) const;

    GradResult gradients(const at::Tensor& images_nchw,
                         const std::function<at::Tensor(const TapResult&)>& scalar_of,
                         const std::vector<std::string>& grad_layers = {},
                         const std::vector<std::string>& tap_layers = {}) const;

    // Backward variants for guided backprop / deconvnet: every ReLU of the graph (module,
    // functional or in-place) gets the given backward rule. Plain = the true gradient.
    enum class ReluBackward { Plain, Guided, Deconv };
    GradResult gradients_with_relu_rule(ReluBackward rule, const at::Tensor& images_nchw,
                                        const std::function<at::Tensor(const TapResult&)>& scalar_of,
                                        const std::vector<std::string>& grad_layers = {},
                                        const std::vector<std::string>& tap_layers = {}) const;

    // The TorchScript module (eval mode).
    torch::jit::Module& module() const;
    // Parameter tensor of a layer, e.g. ("conv1", "weight"); throws Error if absent. It shares
    // the model's storage: writing into it (without autograd) changes the model.
    at::Tensor parameter(const std::string& layer, const std::string& name) const;
    // The names of the parameters a layer holds itself, not its children's, e.g. {"weight",
    // "bias"}; throws Error for an unknown layer.
    std::vector<std::string> parameter_names(const std::string& layer) const;
    // A deep copy with its own parameters and buffers, the same metadata, input shape and chosen
    // output: for changing parameters (model randomisation) without touching this model.
    Model copy() const;
    // For methods that work on the graph itself (incremental occlusion): the inlined forward
    // graph (input 0 is the module, input 1 the image batch; do not modify it, copy it) and the
    // graph value each layer's output is.
    std::shared_ptr<torch::jit::Graph> inlined_graph() const;
    const torch::jit::Value* layer_value(const std::string& layer) const;
    // SHA-256 of the model file (hex), "" for models in memory.
    const std::string& file_hash() const;

private:
    Model();
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Checks that a batch fits the model: 4-D float32 with the model's channel count and size, all
// values finite. Throws Error naming the mismatch and the fix. check_size = false: any H,W.
void check_input(const Model& model, const at::Tensor& images_nchw, bool check_size = true);

}  // namespace convscope
