// Pillow-style antialiased bilinear resizing against a plain implementation of its definition:
// output pixel (y, x) is the triangle-filter weighted mean of the input, the filter centred at
// the output pixel's centre mapped into the input and widened by the downscale factor, its
// weights normalised over the input pixels it covers (Pillow's and torchvision's antialias).
// That Pillow's own bytes come out is checked end to end against torchvision (tests/e2e/own_model.sh).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "runtime/detail/pil_resize.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

// Weights of one axis by the definition, in double, from scratch.
std::vector<std::vector<double>> axis_weights(int in, int out) {
    const double scale = double(in) / out, support = std::max(scale, 1.0);
    std::vector<std::vector<double>> w(size_t(out), std::vector<double>(size_t(in), 0.0));
    for (int o = 0; o < out; ++o) {
        const double centre = (o + 0.5) * scale;
        // Input pixels whose centre lies within the support (Pillow rounds the bounds).
        const int lo = std::max(0, int(centre - support + 0.5));
        const int hi = std::min(in, int(centre + support + 0.5));
        double total = 0;
        for (int i = lo; i < hi; ++i) {
            const double t = std::abs((i + 0.5 - centre) / support);
            w[size_t(o)][size_t(i)] = t < 1 ? 1 - t : 0;
            total += w[size_t(o)][size_t(i)];
        }
        for (int i = lo; i < hi; ++i) w[size_t(o)][size_t(i)] /= total;
    }
    return w;
}

at::Tensor reference(const at::Tensor& chw, int oh, int ow) {
    const auto wy = axis_weights(int(chw.size(1)), oh), wx = axis_weights(int(chw.size(2)), ow);
    auto to = [](const std::vector<std::vector<double>>& w) {
        at::Tensor t = torch::zeros({int64_t(w.size()), int64_t(w[0].size())}, torch::kDouble);
        for (size_t i = 0; i < w.size(); ++i)
            for (size_t j = 0; j < w[i].size(); ++j) t[int64_t(i)][int64_t(j)] = w[i][j];
        return t;
    };
    // out[c] = Wy x[c] Wx^T: the separable filter as two matrix products.
    return torch::matmul(torch::matmul(to(wy), chw.to(torch::kDouble)), to(wx).t()).to(torch::kFloat);
}

}  // namespace

TEST(PilResize, FloatPathEqualsTheDefinition) {
    torch::manual_seed(3);
    const at::Tensor x = torch::rand({3, 37, 53});
    for (auto [oh, ow] : {std::pair{20, 29}, std::pair{37, 80}, std::pair{90, 17}, std::pair{5, 5}}) {
        const at::Tensor got = convscope::detail::pil_resize_bilinear(x, oh, ow, /*eight_bit=*/false);
        expect_close(got, reference(x, oh, ow), 1e-5, "resize to " + std::to_string(oh) + "x" + std::to_string(ow));
    }
}

TEST(PilResize, EightBitPathRoundsEachPassToBytes) {
    torch::manual_seed(4);
    const at::Tensor x = torch::randint(0, 256, {3, 41, 30}).to(torch::kFloat) / 255.0;
    ASSERT_TRUE(convscope::detail::is_eight_bit(x));
    EXPECT_FALSE(convscope::detail::is_eight_bit(x + 0.001));
    const at::Tensor got = convscope::detail::pil_resize_bilinear(x, 17, 64, true);
    // Every value is a byte, and within a byte of each pass of the exact filter (two passes).
    EXPECT_TRUE(convscope::detail::is_eight_bit(got));
    const double err = (got - reference(x, 17, 64)).abs().max().item<double>() * 255.0;
    EXPECT_LE(err, 1.0 + 1e-6);
    // Same size: unchanged.
    EXPECT_TRUE(at::equal(convscope::detail::pil_resize_bilinear(x, 41, 30, true), x));
    // A constant picture stays constant through both passes.
    const at::Tensor flat = torch::full({1, 33, 47}, 77.0f / 255.0f);
    EXPECT_TRUE(at::allclose(convscope::detail::pil_resize_bilinear(flat, 12, 90, true), torch::full({1, 12, 90}, 77.0f / 255.0f)));
}
