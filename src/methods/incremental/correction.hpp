#pragma once
// The first-order correction of projective-field thresholding (approximate mode). What the
// threshold cuts off a convolution's output is not dropped: its first-order effect on the output
// of a few classes per image is added. For a cut convolution: the gradient of the class's logit
// at the clean image pulled back onto the convolution's input, dotted with the input's change,
// minus the gradient at its output dotted with the output's change inside the recomputed box.
// Exact for networks that are linear after the cut; for ReLU networks the cut-off change travels
// through the clean image's ReLU pattern instead of its own.
#include <ATen/core/Tensor.h>

#include <vector>

#include "methods/incremental/kernels.hpp"
#include "methods/incremental/plan.hpp"

namespace convscope::incremental {

// What an engine keeps per step for the images it holds.
struct StepState {
    at::Tensor padded;       // window ops: the clean input, padded [G,Cin,Hp,Wp]
    at::Tensor grad_out;     // corrected steps: per image, position and class, the gradient of
    at::Tensor grad_in;      // the class's logit at the step's output [G,H,W,m,Cout] and pulled
                             // back onto its padded input [G,Hp,Wp,m,Cin]
    at::Tensor weight_bf16;  // bfloat16 convolutions: the weight in bfloat16
};

// Fills grad_out and grad_in of the corrected steps `lin` from the clean output out [G,K] (with
// autograd through the probes added at those steps' outputs) for the classes [G,m]: one backward
// pass per class column, then autograd through each step alone. Throws Error when the output is
// not [G,K].
void correction_gradients(const Plan& plan, const std::vector<size_t>& lin, const at::Tensor& out,
                          const std::vector<at::Tensor>& probes, const at::Tensor& classes,
                          std::vector<StepState>& state);

// Adds to corr[b*m + j] the first-order effect on class j of what thresholding cut from step
// st's output at position b (in and out: the step's incremental input and output, out_clean the
// clean output [G,C,H,W]).
void add_correction(const Step& st, const StepState& state, const at::Tensor& out_clean, int64_t m,
                    const IncValue& in, const IncValue& out, std::vector<double>& corr);

}  // namespace convscope::incremental
