#include "runtime/detail/pil_resize.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace convscope::detail {

namespace {

// Pillow's fixed-point precision for 8-bit images (32 bits minus 8 for the pixel, 2 of headroom).
constexpr int kPrecisionBits = 32 - 8 - 2;

// For each output position the first source index, the number of taps and the normalised
// weights of a triangle filter (support 1) widened by the downscale factor.
struct Coeffs {
    int ksize = 0;
    std::vector<int> first, count;
    std::vector<double> weights;  // [out][ksize]
};

Coeffs precompute(int in_size, int out_size) {
    Coeffs c;
    const double scale = double(in_size) / double(out_size);
    const double filterscale = std::max(scale, 1.0);
    const double support = 1.0 * filterscale;
    c.ksize = int(std::ceil(support)) * 2 + 1;
    c.first.resize(size_t(out_size));
    c.count.resize(size_t(out_size));
    c.weights.assign(size_t(out_size) * size_t(c.ksize), 0.0);
    for (int o = 0; o < out_size; ++o) {
        const double center = (o + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int lo = int(center - support + 0.5);  // truncation, as Pillow rounds here
        if (lo < 0) lo = 0;
        int hi = int(center + support + 0.5);
        if (hi > in_size) hi = in_size;
        const int n = hi - lo;
        double* k = &c.weights[size_t(o) * size_t(c.ksize)];
        double total = 0.0;
        for (int x = 0; x < n; ++x) {
            const double t = std::abs((x + lo - center + 0.5) * ss);
            const double w = t < 1.0 ? 1.0 - t : 0.0;
            k[x] = w;
            total += w;
        }
        if (total != 0.0)
            for (int x = 0; x < n; ++x) k[x] /= total;
        c.first[size_t(o)] = lo;
        c.count[size_t(o)] = n;
    }
    return c;
}

std::vector<int32_t> fixed_point(const Coeffs& c) {
    std::vector<int32_t> out(c.weights.size());
    for (size_t i = 0; i < c.weights.size(); ++i) {
        const double v = c.weights[i] * double(1 << kPrecisionBits);
        out[i] = int32_t(v < 0 ? std::trunc(-0.5 + v) : std::trunc(0.5 + v));
    }
    return out;
}

inline uint8_t clip8(int64_t v) {
    v >>= kPrecisionBits;
    return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// The two ways of summing taps: Pillow's 8-bit fixed point (rounding, clipping to a byte), and
// double weights for float pictures.
struct FixedPoint {
    using Pixel = uint8_t;
    std::vector<int32_t> k;
    explicit FixedPoint(const Coeffs& c) : k(fixed_point(c)) {}
    int64_t start() const { return int64_t(1) << (kPrecisionBits - 1); }
    int64_t weight(size_t i) const { return k[i]; }
    static uint8_t finish(int64_t acc) { return clip8(acc); }
};
struct Float {
    using Pixel = float;
    const std::vector<double>& k;
    explicit Float(const Coeffs& c) : k(c.weights) {}
    double start() const { return 0.0; }
    double weight(size_t i) const { return k[i]; }
    static float finish(double acc) { return float(acc); }
};

// One pass along a dimension of a [C, rows, cols] plane stack: `along_cols` filters each row,
// else each column.
template <class Sum>
at::Tensor pass(const at::Tensor& src, const Coeffs& c, bool along_cols, int64_t out_len) {
    using P = typename Sum::Pixel;
    const Sum sum(c);
    const int64_t ch = src.size(0), rows = src.size(1), cols = src.size(2);
    at::Tensor dst = torch::empty(along_cols ? std::vector<int64_t>{ch, rows, out_len}
                                             : std::vector<int64_t>{ch, out_len, cols},
                                  src.options());
    const P* s = src.data_ptr<P>();
    P* d = dst.data_ptr<P>();
    // Output (line, o) reads count[o] inputs from first[o] along the filtered dimension.
    const int64_t lines = along_cols ? rows : cols, in_step = along_cols ? 1 : cols,
                  line_step = along_cols ? cols : 1, out_line = along_cols ? out_len : 1,
                  out_step = along_cols ? 1 : cols;
    for (int64_t p = 0; p < ch; ++p) {
        const P* sp = s + p * rows * cols;
        P* dp = d + p * dst.size(1) * dst.size(2);
        for (int64_t line = 0; line < lines; ++line)
            for (int64_t o = 0; o < out_len; ++o) {
                const size_t k0 = size_t(o) * size_t(c.ksize);
                const P* in = sp + line * line_step + int64_t(c.first[size_t(o)]) * in_step;
                auto acc = sum.start();
                for (int x = 0; x < c.count[size_t(o)]; ++x) acc += decltype(acc)(in[x * in_step]) * sum.weight(k0 + size_t(x));
                dp[line * out_line + o * out_step] = Sum::finish(acc);
            }
    }
    return dst;
}

}  // namespace

bool is_eight_bit(const at::Tensor& x) {
    const at::Tensor scaled = x.to(torch::kFloat) * 255.0f;
    return (scaled - scaled.round()).abs().max().item<float>() < 1e-3f;
}

at::Tensor pil_resize_bilinear(const at::Tensor& chw, int64_t out_h, int64_t out_w, bool eight_bit) {
    torch::NoGradGuard no_grad;
    const int64_t h = chw.size(1), w = chw.size(2);
    if (h == out_h && w == out_w) return chw;
    at::Tensor x = eight_bit ? chw.mul(255.0f).round().clamp(0, 255).to(torch::kByte).contiguous()
                             : chw.to(torch::kFloat).contiguous();
    // Horizontal pass first, then vertical, each only where the size changes (as Pillow).
    if (w != out_w) {
        const Coeffs c = precompute(int(w), int(out_w));
        x = eight_bit ? pass<FixedPoint>(x, c, true, out_w) : pass<Float>(x, c, true, out_w);
    }
    if (h != out_h) {
        const Coeffs c = precompute(int(h), int(out_h));
        x = eight_bit ? pass<FixedPoint>(x, c, false, out_h) : pass<Float>(x, c, false, out_h);
    }
    return eight_bit ? x.to(torch::kFloat).div_(255.0f) : x;
}

}  // namespace convscope::detail
