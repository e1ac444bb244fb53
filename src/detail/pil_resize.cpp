#include "detail/pil_resize.hpp"

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

// One pass along a dimension of a [C, rows, cols] plane stack: `along_cols` filters each row.
// 8-bit planes (uint8) use fixed point; float planes use the double weights.
at::Tensor pass_u8(const at::Tensor& src, const Coeffs& c, bool along_cols, int64_t out_len) {
    const int64_t ch = src.size(0), rows = src.size(1), cols = src.size(2);
    const std::vector<int32_t> k = fixed_point(c);
    at::Tensor dst = along_cols ? torch::empty({ch, rows, out_len}, torch::kByte)
                                : torch::empty({ch, out_len, cols}, torch::kByte);
    const uint8_t* s = src.data_ptr<uint8_t>();
    uint8_t* d = dst.data_ptr<uint8_t>();
    for (int64_t p = 0; p < ch; ++p) {
        const uint8_t* sp = s + p * rows * cols;
        if (along_cols) {
            uint8_t* dp = d + p * rows * out_len;
            for (int64_t y = 0; y < rows; ++y)
                for (int64_t o = 0; o < out_len; ++o) {
                    const int32_t* kk = &k[size_t(o) * size_t(c.ksize)];
                    const int lo = c.first[size_t(o)];
                    int64_t acc = int64_t(1) << (kPrecisionBits - 1);
                    for (int x = 0; x < c.count[size_t(o)]; ++x) acc += int64_t(sp[y * cols + lo + x]) * kk[x];
                    dp[y * out_len + o] = clip8(acc);
                }
        } else {
            uint8_t* dp = d + p * out_len * cols;
            for (int64_t o = 0; o < out_len; ++o) {
                const int32_t* kk = &k[size_t(o) * size_t(c.ksize)];
                const int lo = c.first[size_t(o)];
                for (int64_t x = 0; x < cols; ++x) {
                    int64_t acc = int64_t(1) << (kPrecisionBits - 1);
                    for (int y = 0; y < c.count[size_t(o)]; ++y) acc += int64_t(sp[(lo + y) * cols + x]) * kk[y];
                    dp[o * cols + x] = clip8(acc);
                }
            }
        }
    }
    return dst;
}

at::Tensor pass_float(const at::Tensor& src, const Coeffs& c, bool along_cols, int64_t out_len) {
    const int64_t ch = src.size(0), rows = src.size(1), cols = src.size(2);
    at::Tensor dst = along_cols ? torch::empty({ch, rows, out_len}, torch::kFloat)
                                : torch::empty({ch, out_len, cols}, torch::kFloat);
    const float* s = src.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    for (int64_t p = 0; p < ch; ++p) {
        const float* sp = s + p * rows * cols;
        if (along_cols) {
            float* dp = d + p * rows * out_len;
            for (int64_t y = 0; y < rows; ++y)
                for (int64_t o = 0; o < out_len; ++o) {
                    const double* kk = &c.weights[size_t(o) * size_t(c.ksize)];
                    const int lo = c.first[size_t(o)];
                    double acc = 0;
                    for (int x = 0; x < c.count[size_t(o)]; ++x) acc += double(sp[y * cols + lo + x]) * kk[x];
                    dp[y * out_len + o] = float(acc);
                }
        } else {
            float* dp = d + p * out_len * cols;
            for (int64_t o = 0; o < out_len; ++o) {
                const double* kk = &c.weights[size_t(o) * size_t(c.ksize)];
                const int lo = c.first[size_t(o)];
                for (int64_t x = 0; x < cols; ++x) {
                    double acc = 0;
                    for (int y = 0; y < c.count[size_t(o)]; ++y) acc += double(sp[(lo + y) * cols + x]) * kk[y];
                    dp[o * cols + x] = float(acc);
                }
            }
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
        x = eight_bit ? pass_u8(x, c, true, out_w) : pass_float(x, c, true, out_w);
    }
    if (h != out_h) {
        const Coeffs c = precompute(int(h), int(out_h));
        x = eight_bit ? pass_u8(x, c, false, out_h) : pass_float(x, c, false, out_h);
    }
    return eight_bit ? x.to(torch::kFloat).div_(255.0f) : x;
}

}  // namespace convscope::detail
