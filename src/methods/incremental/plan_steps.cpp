// Passes over a planned graph's steps: batch norms folded into convolutions and in-place ReLUs
// (fuse_steps), the output's linear tail and its leaves (find_tail).
#include <algorithm>
#include <cmath>
#include <set>
#include <vector>

#include <ATen/ATen.h>

#include "methods/incremental/plan.hpp"

namespace convscope::incremental {

// Cheaper patches, same values up to rounding: an eval-mode batch norm that alone reads a
// convolution's output is folded into the convolution's weights and bias, and a ReLU that alone
// reads its input works in place.
void fuse_steps(Plan& plan) {
    auto& slots = plan.slots;
    auto& steps = plan.steps;
    std::vector<int> readers(slots.size(), 0);
    for (const auto& st : steps)
        for (int s : st.inputs) ++readers[s];
    std::vector<char> removed(steps.size(), 0);
    for (size_t j = 0; j < steps.size(); ++j) {
        Step& bn = steps[j];
        if (bn.kind != StepKind::Pointwise || bn.name != "batch_norm") continue;
        const int s = bn.inputs[0];
        if (readers[s] != 1 || slots[s].boundary || slots[s].values.size() != 1 || bn.dyn_args[0] != 0)
            continue;
        Step* conv = nullptr;
        for (size_t i = 0; i < j; ++i)
            if (!removed[i] && steps[i].output == s && steps[i].kind == StepKind::Window &&
                steps[i].op == WindowOp::Conv)
                conv = &steps[i];
        if (!conv) continue;
        const auto& a = bn.args;  // input, weight, bias, mean, var, training, momentum, eps, cudnn
        if (!a[3].isTensor() || !a[4].isTensor() || !a[7].isDouble()) continue;
        const at::Tensor var = a[4].toTensor().to(at::kDouble), mean = a[3].toTensor().to(at::kDouble);
        const int64_t c = var.numel();
        if (c != conv->weight.size(0)) continue;
        const at::Tensor gamma = a[1].isTensor() ? a[1].toTensor().to(at::kDouble) : at::ones({c}, at::kDouble);
        const at::Tensor beta = a[2].isTensor() ? a[2].toTensor().to(at::kDouble) : at::zeros({c}, at::kDouble);
        const at::Tensor scale = gamma / at::sqrt(var + a[7].toDouble());
        const at::Tensor bias = conv->bias.defined() ? conv->bias.to(at::kDouble) : at::zeros({c}, at::kDouble);
        conv->weight = (conv->weight.to(at::kDouble) * scale.view({-1, 1, 1, 1})).to(conv->weight.scalar_type());
        conv->bias = ((bias - mean) * scale + beta).to(conv->weight.scalar_type());
        conv->output = bn.output;
        conv->name = "conv+batch_norm";
        removed[j] = 1;
    }
    std::vector<Step> kept;
    for (size_t i = 0; i < steps.size(); ++i)
        if (!removed[i]) kept.push_back(std::move(steps[i]));
    steps = std::move(kept);
    std::fill(readers.begin(), readers.end(), 0);
    for (const auto& st : steps)
        for (int s : st.inputs) ++readers[s];
    for (auto& st : steps) {
        const int s = st.inputs.empty() ? -1 : st.inputs[0];
        st.in_place = st.kind == StepKind::Pointwise && st.name == "relu" && s > 0 && readers[s] == 1 &&
                      !slots[s].boundary && slots[s].values.size() == 1;
    }
}


// The output slot, the tail and its leaves (see Plan::output_slot). A step is in the tail when it
// is a resize or a sum and the output, or only tail steps, read what it writes.
void find_tail(Plan& p) {
    p.tail.assign(p.steps.size(), 0);
    p.leaves.clear();
    p.output_slot = -1;
    if (!p.first_rest.empty() || p.head.slot >= 0 || p.graph->outputs().size() != 1) return;
    const auto it = p.slot_of.find(p.graph->outputs()[0]);
    if (it == p.slot_of.end() || p.slots[it->second].shape.size() != 4) return;
    p.output_slot = it->second;
    std::vector<std::vector<int>> readers(p.slots.size());
    for (size_t i = 0; i < p.steps.size(); ++i)
        for (int s : p.steps[i].inputs) readers[s].push_back(static_cast<int>(i));
    for (size_t j = p.steps.size(); j-- > 0;) {
        const Step& st = p.steps[j];
        const bool linear = st.kind == StepKind::Resize || (st.kind == StepKind::Binary && std::isfinite(st.alpha));
        const auto& r = readers[st.output];
        const bool only_tail = std::all_of(r.begin(), r.end(), [&](int i) { return p.tail[i] != 0; });
        const bool feeds = st.output == p.output_slot ? r.empty() : !r.empty() && only_tail && !p.slots[st.output].boundary;
        p.tail[j] = linear && feeds;
    }
    std::set<int> leaves;
    bool any = false;
    for (size_t j = 0; j < p.steps.size(); ++j) {
        if (!p.tail[j]) continue;
        any = true;
        for (int s : p.steps[j].inputs) {
            const bool computed_by_tail = std::any_of(p.steps.begin(), p.steps.end(), [&](const Step& t) {
                return t.output == s && p.tail[&t - p.steps.data()];
            });
            if (!computed_by_tail) leaves.insert(s);
        }
    }
    if (!any) leaves.insert(p.output_slot);
    p.leaves.assign(leaves.begin(), leaves.end());
}

}  // namespace convscope::incremental
