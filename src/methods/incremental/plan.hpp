#pragma once
// The incremental engine's plan: which ops of the model's graph run incrementally (one Step per
// op, reading and writing Slots), where the rest of the graph takes over with full tensors, and
// the settings the plan is run with. The plan is built once per model and input shape and copied
// into each engine, which configures its copy with its settings.
#include <ATen/core/Tensor.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <array>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "methods/incremental/kernels.hpp"

namespace convscope {
class Model;
}

namespace convscope::incremental {

namespace jit = torch::jit;

// What an engine runs the plan with (the occlusion options it is made from decide them).
struct EngineSettings {
    // Projective-field threshold in (0, 1]: every convolution recomputes at most ceil(tau * size)
    // rows and columns of its output, centred on the change; 1 = exact.
    double tau = 1.0;
    // Convolve changes in bfloat16 (approximate; only where the CPU has AVX512-BF16).
    bool bf16 = false;
    // With tau < 1: the outputs of this many classes per image get the first-order correction
    // for what thresholding cuts. 0: none.
    int64_t corrected_classes = 0;
    // The occluder's size: thresholding never cuts into its footprint, and the correction is
    // planned for windows of this size. 0: the whole input.
    int64_t patch_h = 0, patch_w = 0;
};

enum class StepKind { Window, Pointwise, Binary, Cat, Resize };
enum class WindowOp { Conv, MaxPool, AvgPool };

struct Step {
    StepKind kind = StepKind::Pointwise;
    std::string name;          // op kind, for the note
    std::vector<int> inputs;   // slots read
    int output = -1;           // slot written
    bool in_place = false;     // ReLU that may overwrite its input's patch (sole reader)
    // Window ops.
    WindowOp op = WindowOp::Conv;
    Axis ax[2];
    at::Tensor weight, bias;
    int64_t groups = 1;
    double pad_value = 0;
    c10::optional<int64_t> divisor;
    // Resize ops (bilinear or nearest upsampling): the rows and columns each output reads.
    std::array<ResizeAxis, 2> rz;
    // Pointwise and binary ops: the node's operation with its constant arguments.
    mutable std::optional<jit::Operation> operation;  // called from const run paths (stateless)
    std::vector<c10::IValue> args;
    std::vector<size_t> dyn_args;  // positions of the dynamic arguments
    // Binary add and sub: the coefficient of the second input (alpha; negated for sub).
    double alpha = 1;
    // Set by configure: this convolution may be thresholded and gets the first-order correction.
    bool linear = false;
};

struct Slot {
    std::vector<const jit::Value*> values;  // graph values it stands for (aliases share a slot)
    std::vector<int64_t> shape;             // [1,C,H,W]
    int last_use = -1;                      // last step that reads it
    bool boundary = false;                  // needed as a full tensor by the rest of the graph
};

// flatten(slot) -> linear with constant weights, computed by the engine rather than by the rest
// of the graph (which then starts from its output).
struct Head {
    int slot = -1;                    // the flattened slot ([1,C,H,W]); -1: no head
    const jit::Value* out = nullptr;  // the linear's output in the graph
    at::Tensor weight, bias;          // [O, C*H*W] and [O] (or undefined)
};

struct Plan {
    std::vector<int64_t> chw;            // input shape
    std::shared_ptr<jit::Graph> graph;   // simplified copy of the model's graph
    std::vector<Slot> slots;             // slot 0 is the input
    std::vector<Step> steps;             // in graph order
    std::vector<int> boundary;           // slots passed to the rest of the graph, in order
    std::unordered_map<const jit::Value*, int> slot_of;
    Head head;
    std::string first_rest;  // kind of the first node the rest computes ("": none)
    // When the plan computes the graph's output itself (nothing is left to the rest, no head) and
    // it is a map: its slot, else -1. Then the output is a linear function of some earlier maps,
    // the leaves, through the tail: the resizes and sums at the end of the graph (a segmentation
    // network's upsampled logits plus a skip branch), or the output itself when its last op is
    // not linear (an empty tail, one leaf).
    int output_slot = -1;
    std::vector<char> tail;   // per step: in the tail
    std::vector<int> leaves;  // slots the tail reads and does not compute
    std::string note;        // for people: the incremental ops and where recomputation starts
    EngineSettings settings;  // as configured
};

// Plans incremental inference of the model on inputs of shape chw. Throws Error when the graph
// cannot be prepared.
Plan make_plan(const Model& model, const std::vector<int64_t>& chw);

// One axis of a resize from in to out rows, as ATen computes it (see geometry.cpp).
ResizeAxis resize_axis(bool nearest, bool align, int64_t in, int64_t out, std::optional<double> factor);

// Passes make_plan runs after walking the graph. fuse_steps: an eval-mode batch norm that alone
// reads a convolution's output is folded into the convolution, a ReLU that alone reads its input
// works in place. find_tail: Plan::output_slot, tail and leaves (after boundary and last_use).
void fuse_steps(Plan& plan);
void find_tail(Plan& plan);

// Applies settings to a plan: the occluder's footprint on every map (never cut) and, with
// tau < 1 and corrected classes, which convolutions thresholding can cut (they get the
// correction), over every window position along the rows and the columns.
void configure(Plan& plan, const EngineSettings& settings);

// The outputs [o0, o1) of a window op on one axis that input rows [c0, c1) can change; with
// may_cap and tau < 1, at most max(min_cap, ceil(tau * out)) of them, centred on the change.
// Returns whether the range was cut.
bool window_range(const Axis& a, int64_t c0, int64_t c1, double tau, bool may_cap, int64_t& o0, int64_t& o1);

// The outputs [o0, o1) of a resize axis that input rows [c0, c1) can change (at least one).
void resize_range(const ResizeAxis& a, int64_t c0, int64_t c1, int64_t& o0, int64_t& o1);

// The changed rows (axis 0) or columns (axis 1) of every slot, [begin, end), for a window at
// [start, start + patch) on that axis, propagated through the plan as the engine runs it (the
// axes do not interact); with may_cap, convolutions are thresholded with the plan's tau and
// cut[i] tells whether step i was.
std::vector<std::array<int64_t, 2>> propagate(const Plan& plan, int axis, int64_t start, int64_t patch,
                                              bool may_cap, std::vector<char>& cut);

// The largest share of a convolution's output map (rows and columns both) that a centred
// window of patch_h x patch_w can change: near 1 when the occluder's projective field covers
// whole maps, where exact incremental inference saves nothing.
double field_coverage(const Plan& plan, int64_t patch_h, int64_t patch_w);

// Bytes of clean activations (and the correction's gradients) an engine keeps per image.
int64_t bytes_per_image(const Plan& plan);

// The clean pass: the graph returning one tuple (model output, clean activation of slot 1,
// slot 2, ...). With probed steps, a probe input (a zero tensor) is added to each of their
// outputs: the gradient with respect to a probe is the gradient with respect to that output.
std::shared_ptr<jit::GraphFunction> clean_function(const Plan& plan, const std::vector<size_t>& probed);
// The rest: the graph with the boundary slots (and the head's output) as extra inputs.
std::shared_ptr<jit::Graph> rest_graph(const Plan& plan);

}  // namespace convscope::incremental
