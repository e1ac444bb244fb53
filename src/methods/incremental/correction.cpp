#include "methods/incremental/correction.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/autograd.h>

#include "convscope/runtime/error.hpp"

namespace convscope::incremental {

void correction_gradients(const Plan& plan, const std::vector<size_t>& lin, const at::Tensor& out,
                          const std::vector<at::Tensor>& probes, const at::Tensor& classes,
                          std::vector<StepState>& state) {
    const int64_t G = classes.size(0), m = classes.size(1);
    if (out.dim() != 2 || out.size(0) != G)
        throw Error("the model's output is not [N,K] logits: the approximate occlusion needs them");
    std::vector<std::vector<at::Tensor>> per_class(lin.size());  // [step][class] -> [G,C,H,W]
    for (int64_t j = 0; j < m; ++j) {
        const at::Tensor onehot = at::zeros_like(out).scatter_(1, classes.select(1, j).view({G, 1}), 1.0);
        auto grads = torch::autograd::grad({out}, probes, {onehot}, /*retain_graph=*/j + 1 < m,
                                           /*create_graph=*/false, /*allow_unused=*/true);
        for (size_t k = 0; k < lin.size(); ++k)
            per_class[k].push_back(grads[k].defined() ? grads[k].detach() : at::zeros_like(probes[k]));
    }
    for (size_t k = 0; k < lin.size(); ++k) {
        const Step& st = plan.steps[lin[k]];
        StepState& ss = state[lin[k]];
        // The pull-back through the convolution alone (the gradient of its input), for all classes
        // at once; the convolution of the padded input may give more rows than the output has.
        const int64_t Hp = ss.padded.size(2), Wp = ss.padded.size(3);
        const int64_t nh = (Hp - st.ax[0].d * (st.ax[0].k - 1) - 1) / st.ax[0].s + 1;
        const int64_t nw = (Wp - st.ax[1].d * (st.ax[1].k - 1) - 1) / st.ax[1].s + 1;
        const at::Tensor go = at::constant_pad_nd(at::cat(per_class[k], 0),
                                                  {0, nw - st.ax[1].out, 0, nh - st.ax[0].out}, 0.0);
        const at::Tensor in_shape = at::empty({go.size(0), ss.padded.size(1), Hp, Wp}, ss.padded.options());
        const std::vector<int64_t> stride{st.ax[0].s, st.ax[1].s}, dil{st.ax[0].d, st.ax[1].d}, zero{0, 0};
        const at::Tensor gin = std::get<0>(at::convolution_backward(
            go, in_shape, st.weight, c10::nullopt, stride, zero, dil, false, zero, st.groups, {true, false, false}));
        std::vector<at::Tensor> pulled = gin.split(G, 0);
        // Laid out [G,H,W,m,C]: per position of the map, the m classes' gradients over the channels.
        ss.grad_out = at::stack(per_class[k], 1).permute({0, 3, 4, 1, 2}).contiguous();
        ss.grad_in = at::stack(pulled, 1).permute({0, 3, 4, 1, 2}).contiguous();
    }
}

void add_correction(const Step& st, const StepState& state, const at::Tensor& out_clean, int64_t m,
                    const IncValue& in, const IncValue& out, std::vector<double>& corr) {
    const int64_t B = static_cast<int64_t>(in.py.size());
    // One side: sign * sum over the box (y0, x0, h, w) of the change (patch - clean) dotted with the
    // gradient grad [G,Hs,Ws,m,C] there.
    auto side = [&](int64_t b, const at::Tensor& patch, const at::Tensor& clean, const at::Tensor& grad,
                    int64_t y0, int64_t x0, int64_t h, int64_t w, double sign, std::vector<float>& t,
                    std::vector<double>& part, double* acc) {
        const int64_t C = patch.size(1), Hs = clean.size(2), Ws = clean.size(3), g = in.img[b];
        const float* pp = patch.data_ptr<float>() + b * C * h * w;
        const float* cp = clean.data_ptr<float>() + g * C * Hs * Ws;
        // The change, laid out [h,w,C] as the gradient.
        t.resize(C * h * w);
        for (int64_t c = 0; c < C; ++c)
            for (int64_t r = 0; r < h; ++r) {
                const float* src = pp + (c * h + r) * w;
                const float* cl = cp + (c * Hs + y0 + r) * Ws + x0;
                float* dst = t.data() + r * w * C + c;
                for (int64_t x = 0; x < w; ++x) dst[x * C] = src[x] - cl[x];
            }
        part.assign(m, 0.0);
        const float* gp = grad.data_ptr<float>() + g * Hs * Ws * m * C;
        for (int64_t r = 0; r < h; ++r)
            for (int64_t x = 0; x < w; ++x)
                dots(t.data() + (r * w + x) * C, gp + ((y0 + r) * Ws + x0 + x) * m * C, C, C, m, part.data());
        for (int64_t j = 0; j < m; ++j) acc[j] += sign * part[j];
    };
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> t;
        std::vector<double> part;
        for (int64_t b = begin; b < end; ++b) {
            double* acc = corr.data() + b * m;
            side(b, in.patch, state.padded, state.grad_in, in.py[b] + st.ax[0].p, in.px[b] + st.ax[1].p, in.h, in.w,
                 1.0, t, part, acc);
            side(b, out.patch, out_clean, state.grad_out, out.py[b], out.px[b], out.h, out.w, -1.0, t, part, acc);
        }
    });
}

}  // namespace convscope::incremental
