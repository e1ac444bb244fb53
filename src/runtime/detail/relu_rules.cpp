#include "runtime/detail/relu_rules.hpp"

#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>
#include <torch/torch.h>

namespace convscope::detail {

namespace {

// Guided backprop: the gradient passes where both the input and the incoming gradient are positive.
struct GuidedRelu : public torch::autograd::Function<GuidedRelu> {
    static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x) {
        auto y = torch::relu(x);
        ctx->save_for_backward({x});
        return y;
    }
    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::tensor_list grads) {
        auto x = ctx->get_saved_variables()[0];
        return {grads[0].clamp_min(0) * (x > 0).to(grads[0].scalar_type())};
    }
};

// Deconvnet: the backward pass applies the ReLU to the gradient, ignoring the forward input.
struct DeconvRelu : public torch::autograd::Function<DeconvRelu> {
    static at::Tensor forward(torch::autograd::AutogradContext*, const at::Tensor& x) {
        return torch::relu(x);
    }
    static torch::autograd::tensor_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::tensor_list grads) {
        return {grads[0].clamp_min(0)};
    }
};

at::Tensor relu_guided(const at::Tensor& x) { return GuidedRelu::apply(x); }
at::Tensor relu_deconv(const at::Tensor& x) { return DeconvRelu::apply(x); }

}  // namespace

TORCH_LIBRARY(convscope, m) {
    m.def("relu_guided(Tensor x) -> Tensor", &relu_guided);
    m.def("relu_deconv(Tensor x) -> Tensor", &relu_deconv);
}

int rewrite_relus(torch::jit::Graph& graph, bool guided,
                  std::unordered_map<const torch::jit::Value*, torch::jit::Value*>& remap) {
    namespace jit = torch::jit;
    const auto op = c10::Symbol::fromQualString(guided ? "convscope::relu_guided"
                                                       : "convscope::relu_deconv");
    std::vector<jit::Node*> relus;
    for (jit::Node* n : graph.nodes())
        if (n->kind() == c10::aten::relu || n->kind() == c10::aten::relu_) relus.push_back(n);
    for (jit::Node* n : relus) {
        jit::Value* x = n->input(0);
        jit::Value* y = nullptr;
        {
            jit::WithInsertPoint guard(n);
            y = graph.insert(op, {x});
        }
        const bool in_place = n->kind() == c10::aten::relu_;
        n->output()->replaceAllUsesWith(y);
        // An in-place ReLU changed x itself: later readers of x must see the new value.
        if (in_place) x->replaceAllUsesAfterNodeWith(n, y);
        for (auto& kv : remap)
            if (kv.second == n->output()) kv.second = y;
        n->destroy();
    }
    return static_cast<int>(relus.size());
}

}  // namespace convscope::detail
