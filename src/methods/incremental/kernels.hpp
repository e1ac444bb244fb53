#pragma once
// The incremental engine's patch kernels: for B occluder positions at once, gather the input
// windows an op needs (clean values with the position's changed patch pasted in), the change
// alone in bfloat16, clean windows plus a change, and max pooling read in place. All tensors are
// float32 and contiguous; coordinates are rows/columns of the (padded) source.
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace convscope::incremental {

inline int64_t floor_div(int64_t a, int64_t b) {
    int64_t q = a / b;
    if (a % b != 0 && ((a < 0) != (b < 0))) --q;
    return q;
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// Grain for at::parallel_for over planes of `per_plane` values: parallel only when there is
// enough to do to repay waking the other threads.
inline int64_t plane_grain(int64_t per_plane) {
    return std::max<int64_t>(1, (int64_t{1} << 18) / std::max<int64_t>(1, per_plane));
}

// One axis of a window op (convolution or pooling).
struct Axis {
    int64_t k = 1, s = 1, p = 0, d = 1;  // kernel, stride, padding before, dilation
    int64_t pad_hi = 0;                  // padding after, enough for every window
    int64_t in = 0, out = 0;             // input and output length
    int64_t min_cap = 1;                 // thresholding keeps at least this many outputs: the
                                         // occluder's own footprint on this map
};

// One axis of a resize (upsampling or nearest-neighbour resampling): output o reads input rows
// i0[o] and i1[o] (i1 >= i0, both non-decreasing in o) weighted 1 - l1[o] and l1[o]; nearest
// neighbours read i0 alone.
struct ResizeAxis {
    std::vector<int64_t> i0, i1;
    std::vector<float> l1;
    bool nearest = false;
};

// A value of the graph for B positions: per position, the changed box and the box its patch
// covers. All patches of a batch have the same size h x w; the patch box contains the changed
// box.
struct IncValue {
    at::Tensor patch;  // [B,C,h,w] contiguous
    int64_t h = 0, w = 0;
    std::vector<int64_t> img;             // image (index into the clean batch) per position
    std::vector<int64_t> py, px;          // patch box start per position
    std::vector<int64_t> y0, y1, x0, x1;  // changed box per position, [y0,y1) x [x0,x1)
};

// The part of position b's window (rows [wy, wy + L), columns [wx, wx + Lw), source coordinates)
// that v's patch box, offset by (off_y, off_x), covers: rows [y0, y1) and columns [x0, x1), empty
// when y0 >= y1 or x0 >= x1; (py, px) is where the patch box starts.
struct Overlap {
    int64_t py, px, y0, y1, x0, x1;
};
Overlap overlap(const IncValue& v, int64_t b, int64_t off_y, int64_t off_x, int64_t wy, int64_t wx, int64_t L,
                int64_t Lw);

// For each position b, the window rows [wy[b], wy[b]+L) and columns [wx[b], wx[b]+Lw) of
// src[v.img[b]] (src [G,C,Hs,Ws]) as dst[b] ([B,C,L,Lw]), the values inside v's patch box (offset
// by (off_y, off_x) in src coordinates, e.g. the padding) taken from v's patch.
at::Tensor gather(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                  const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw);

// The change of v against the clean values on the windows (as gather), in bfloat16 [B,C,L,Lw]:
// zero outside v's patch box.
at::Tensor gather_change(const at::Tensor& clean_padded, const IncValue& v, int64_t off_y, int64_t off_x,
                         const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw);

// The clean values src[img[b]] ([G,C,H,W]) on the boxes (py[b], px[b], h, w): [B,C,h,w], plus
// add_bf16 ([B,C,h,w] bfloat16 bits) where given.
at::Tensor clean_windows(const at::Tensor& src, const std::vector<int64_t>& img, const std::vector<int64_t>& py,
                         const std::vector<int64_t>& px, int64_t h, int64_t w, const uint16_t* add_bf16 = nullptr);

// v's values on the boxes (py, px, h, w) of every position: v's patch itself when the boxes are
// the same, else clean values with v's patch pasted in.
at::Tensor extract(const at::Tensor& clean, const IncValue& v, const std::vector<int64_t>& py,
                   const std::vector<int64_t>& px, int64_t h, int64_t w);

// The common patch size and per-position starts for changed boxes [c0, c1) on an axis of length
// n: the size is the largest box, each start keeps the box inside the axis.
int64_t place(const std::vector<int64_t>& c0, const std::vector<int64_t>& c1, int64_t n,
              std::vector<int64_t>& start);

// Max pooling, for each position b, of the window rows [wy[b], wy[b]+L) and columns [wx[b],
// wx[b]+Lw) of src[v.img[b]] (the padded clean input [G,C,Hs,Ws]) with v's patch pasted in (at
// offset (off_y, off_x)), to [B,C,oh,ow], reading the rows in place rather than gathering the
// windows first. NaN propagates, as in at::max_pool2d.
at::Tensor max_pool(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                    const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw,
                    const Axis& ay, const Axis& ax, int64_t oh, int64_t ow);

// The resize of windows win [B,C,L,Lw] (rows [wy[b], wy[b]+L) and columns [wx[b], wx[b]+Lw) of
// the input) to the output boxes at (py[b], px[b]) of h x w: [B,C,h,w]. Every input row and
// column the boxes read must lie in the windows.
at::Tensor resize(const at::Tensor& win, const std::vector<int64_t>& wy, const std::vector<int64_t>& wx,
                  const ResizeAxis& ay, const ResizeAxis& ax, const std::vector<int64_t>& py,
                  const std::vector<int64_t>& px, int64_t h, int64_t w);

// Whether the CPU multiplies bfloat16 natively (AVX512-BF16): elsewhere bfloat16 convolutions are
// emulated and slower than float32 ones.
bool cpu_has_bf16();

// Dot products of v (n values) with m rows (row j at rows + j * stride), added to acc[j]: the
// inner loop of the first-order correction.
void dots(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc);

}  // namespace convscope::incremental
