#include "methods/incremental/kernels.hpp"
#include "methods/detail/cpu_features.hpp"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace convscope::incremental {

namespace {
// Copies n floats; rows of patches are short (a few to a few dozen values), where a loop beats
// a memcpy call.
inline void copy_floats(float* dst, const float* src, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = src[i];
}

}  // namespace

Overlap overlap(const IncValue& v, int64_t b, int64_t off_y, int64_t off_x, int64_t wy, int64_t wx, int64_t L,
                int64_t Lw) {
    const int64_t py = v.py[b] + off_y, px = v.px[b] + off_x;
    return {py, px, std::max(wy, py), std::min(wy + L, py + v.h), std::max(wx, px), std::min(wx + Lw, px + v.w)};
}

namespace {
// Calls fn(i, b, src_plane, patch_plane, overlap) in parallel for every plane i = b * C + c of
// the windows of gather and gather_change: position b, channel c, src[v.img[b]]'s plane c and
// v's patch plane i, and where the patch box meets the window.
template <class Fn>
void for_each_plane(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                    const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw,
                    int64_t grain, Fn fn) {
    const int64_t B = static_cast<int64_t>(wy.size());
    const int64_t C = src.size(1), plane = src.size(2) * src.size(3);
    const float* s = src.data_ptr<float>();
    const float* p = v.patch.data_ptr<float>();
    const int64_t patch_plane = v.h * v.w;
    at::parallel_for(0, B * C, grain, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            fn(i, b, s + (v.img[b] * C + c) * plane, p + i * patch_plane,
               overlap(v, b, off_y, off_x, wy[b], wx[b], L, Lw));
        }
    });
}

}  // namespace

// Copies, for each position b, the window rows [wy[b], wy[b]+L) and columns [wx[b], wx[b]+Lw)
// of src[v.img[b]] (src [G,C,Hs,Ws]) into dst[b] ([B,C,L,Lw]), taking the values inside v's patch
// box (offset by (off_y, off_x) in src coordinates, e.g. the padding) from v's patch.
at::Tensor gather(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                  const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L,
                  int64_t Lw) {
    const int64_t B = static_cast<int64_t>(wy.size()), C = src.size(1), Ws = src.size(3);
    at::Tensor dst = at::empty({B, C, L, Lw}, src.options());
    float* d = dst.data_ptr<float>();
    const int64_t w = v.w;
    for_each_plane(src, v, off_y, off_x, wy, wx, L, Lw, plane_grain(L * Lw),
                   [&](int64_t i, int64_t b, const float* sc, const float* pc, const Overlap& o) {
                       float* dc = d + i * L * Lw;
                       const int64_t y0 = wy[b], x0 = wx[b];
                       for (int64_t r = 0; r < L; ++r) {
                           const int64_t y = y0 + r;
                           float* drow = dc + r * Lw;
                           copy_floats(drow, sc + y * Ws + x0, Lw);
                           if (o.x0 < o.x1 && y >= o.y0 && y < o.y1)
                               copy_floats(drow + (o.x0 - x0), pc + (y - o.py) * w + (o.x0 - o.px),
                                           o.x1 - o.x0);
                       }
                   });
    return dst;
}

namespace {
// float <-> bfloat16 bits: round to nearest even (finite values), and back. Plain integer
// arithmetic that the compiler vectorises, unlike c10::BFloat16's per-value conversion.
inline uint16_t to_bf16_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}
inline float from_bf16_bits(uint16_t b) {
    const uint32_t u = static_cast<uint32_t>(b) << 16;
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

}  // namespace

// The change of v against the clean values on the windows (as gather), in bfloat16: zero outside
// v's patch box.
at::Tensor gather_change(const at::Tensor& clean_padded, const IncValue& v, int64_t off_y, int64_t off_x,
                         const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L,
                         int64_t Lw) {
    const int64_t B = static_cast<int64_t>(wy.size()), C = clean_padded.size(1), Ws = clean_padded.size(3);
    at::Tensor dst = at::zeros({B, C, L, Lw}, clean_padded.options().dtype(at::kBFloat16));
    uint16_t* d = reinterpret_cast<uint16_t*>(dst.data_ptr<c10::BFloat16>());
    const int64_t w = v.w;
    for_each_plane(clean_padded, v, off_y, off_x, wy, wx, L, Lw, plane_grain(v.h * w),
                   [&](int64_t i, int64_t b, const float* sc, const float* pc, const Overlap& o) {
                       uint16_t* dc = d + i * L * Lw;
                       for (int64_t y = o.y0; y < o.y1; ++y) {
                           const float* pr = pc + (y - o.py) * w - o.px;
                           const float* sr = sc + y * Ws;
                           uint16_t* dr = dc + (y - wy[b]) * Lw - wx[b];
                           for (int64_t x = o.x0; x < o.x1; ++x) dr[x] = to_bf16_bits(pr[x] - sr[x]);
                       }
                   });
    return dst;
}

// The clean values src[img[b]] [G,C,H,W] on the boxes (py[b], px[b], h, w): [B,C,h,w], plus
// add_bf16 ([B,C,h,w] bfloat16 bits) if given.
at::Tensor clean_windows(const at::Tensor& src, const std::vector<int64_t>& img, const std::vector<int64_t>& py,
                         const std::vector<int64_t>& px, int64_t h, int64_t w,
                         const uint16_t* add_bf16) {
    const int64_t B = static_cast<int64_t>(img.size()), C = src.size(1), Hs = src.size(2), Ws = src.size(3);
    at::Tensor dst = at::empty({B, C, h, w}, src.options());
    const float* s = src.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    at::parallel_for(0, B * C, plane_grain(h * w), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            for (int64_t r = 0; r < h; ++r) {
                float* dr = d + (i * h + r) * w;
                const float* sr = s + ((img[b] * C + c) * Hs + py[b] + r) * Ws + px[b];
                if (!add_bf16) {
                    copy_floats(dr, sr, w);
                    continue;
                }
                const uint16_t* ar = add_bf16 + (i * h + r) * w;
                for (int64_t x = 0; x < w; ++x) dr[x] = sr[x] + from_bf16_bits(ar[x]);
            }
        }
    });
    return dst;
}

// v's values on the boxes (py, px, h, w) of every position: v's patch itself when the boxes are
// the same, else clean values with v's patch pasted in.
at::Tensor extract(const at::Tensor& clean, const IncValue& v, const std::vector<int64_t>& py,
                   const std::vector<int64_t>& px, int64_t h, int64_t w) {
    if (v.h == h && v.w == w && v.py == py && v.px == px) return v.patch;
    return gather(clean, v, 0, 0, py, px, h, w);
}

// Chooses the common patch size and per-position starts for changed boxes [c0, c1) on an axis of
// length n: the size is the largest box, each start keeps the box inside the axis.
int64_t place(const std::vector<int64_t>& c0, const std::vector<int64_t>& c1, int64_t n,
              std::vector<int64_t>& start) {
    int64_t size = 1;
    for (size_t b = 0; b < c0.size(); ++b) size = std::max(size, c1[b] - c0[b]);
    size = std::min(size, n);
    start.resize(c0.size());
    for (size_t b = 0; b < c0.size(); ++b) start[b] = std::max<int64_t>(0, std::min(c0[b], n - size));
    return size;
}

// Max pooling, for each position b, of the window rows [wy[b], wy[b]+L) and columns [wx[b],
// wx[b]+Lw) of src[v.img[b]] (the padded clean input [G,C,Hs,Ws]) with v's patch pasted in (at
// offset (off_y, off_x)), to [B,C,oh,ow], reading the rows in place rather than gathering the
// windows first. NaN propagates, as in at::max_pool2d.
at::Tensor max_pool(const at::Tensor& src, const IncValue& v, int64_t off_y, int64_t off_x,
                    const std::vector<int64_t>& wy, const std::vector<int64_t>& wx, int64_t L, int64_t Lw,
                    const Axis& ay, const Axis& ax, int64_t oh, int64_t ow) {
    const int64_t B = static_cast<int64_t>(wy.size());
    const int64_t C = src.size(1), Hs = src.size(2), Ws = src.size(3);
    at::Tensor out = at::empty({B, C, oh, ow}, src.options());
    const float* s = src.data_ptr<float>();
    const float* p = v.patch.data_ptr<float>();
    float* d = out.data_ptr<float>();
    // The larger of m and x, NaN if either is (as at::max_pool2d); branch-free, so that loops of it
    // vectorise.
    auto nanmax = [](float m, float x) { return (x > m || x != x) ? x : m; };
    const bool pool2x2 = ay.k == 2 && ay.s == 2 && ax.k == 2 && ax.s == 2 && ay.d == 1 && ax.d == 1;
    at::parallel_for(0, B * C, plane_grain(oh * ay.k * Lw), [&](int64_t begin, int64_t end) {
        // Per window row of the current position: where it comes from (the clean row, a row of
        // the patch, or the clean row with the patch's part pasted in) and the offsets, the same
        // for every channel; recomputed when the position changes.
        enum Kind : uint8_t { Clean, Patch, Mixed };
        std::vector<uint8_t> kind(L);
        std::vector<int64_t> coff(L), poff(L);
        std::vector<float> rows(Lw), mixed(2 * Lw);  // mixed rows: slot 0, and slot 1 for 2x2's second row
        int64_t a = 0, e = 0, cur_b = -1;
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C, c = i % C;
            if (b != cur_b) {
                cur_b = b;
                const Overlap o = overlap(v, b, off_y, off_x, wy[b], wx[b], L, Lw);
                a = o.x0 - wx[b], e = o.x1 - wx[b];
                for (int64_t r = 0; r < L; ++r) {
                    const int64_t y = wy[b] + r;
                    coff[r] = y * Ws;
                    if (o.x0 >= o.x1 || y < o.y0 || y >= o.y1) {
                        kind[r] = Clean;
                        continue;
                    }
                    poff[r] = (y - o.py) * v.w + (o.x0 - o.px);
                    kind[r] = (a == 0 && e == Lw) ? Patch : Mixed;
                }
            }
            const float* sc = s + (v.img[b] * C + c) * Hs * Ws + wx[b];
            const float* pc = p + i * v.h * v.w;
            // Window row r; a mixed row is assembled in the given slot of mixed.
            auto row = [&](int64_t r, int64_t slot) -> const float* {
                switch (kind[r]) {
                    case Clean: return sc + coff[r];
                    case Patch: return pc + poff[r];
                    default: break;
                }
                float* m = mixed.data() + slot * Lw;
                const float* clean = sc + coff[r];
                copy_floats(m, clean, a);
                copy_floats(m + a, pc + poff[r], e - a);
                copy_floats(m + e, clean + e, Lw - e);
                return m;
            };
            float* dp = d + i * oh * ow;
            float* rs = rows.data();
            if (pool2x2) {
                // 2x2 windows at stride 2 (the usual pooling): the rows' maximum per column, then
                // pairs of columns.
                for (int64_t oy = 0; oy < oh; ++oy) {
                    const float* r0 = row(2 * oy, 0);
                    const float* r1 = row(2 * oy + 1, 1);
                    for (int64_t x = 0; x < 2 * ow; ++x) rs[x] = nanmax(r0[x], r1[x]);
                    for (int64_t ox = 0; ox < ow; ++ox) dp[oy * ow + ox] = nanmax(rs[2 * ox], rs[2 * ox + 1]);
                }
                continue;
            }
            for (int64_t oy = 0; oy < oh; ++oy) {
                // The window rows' maximum per column, then across columns.
                const float* r0 = row(oy * ay.s, 0);
                for (int64_t x = 0; x < Lw; ++x) rs[x] = r0[x];
                for (int64_t ky = 1; ky < ay.k; ++ky) {
                    const float* r = row(oy * ay.s + ky * ay.d, 0);
                    for (int64_t x = 0; x < Lw; ++x) rs[x] = nanmax(rs[x], r[x]);
                }
                for (int64_t ox = 0; ox < ow; ++ox) {
                    const float* cp = rs + ox * ax.s;
                    float m = cp[0];
                    for (int64_t kx = 1; kx < ax.k; ++kx) m = nanmax(m, cp[kx * ax.d]);
                    dp[oy * ow + ox] = m;
                }
            }
        }
    });
    return out;
}

// Whether the CPU multiplies bfloat16 natively (AVX512-BF16): then bfloat16 convolutions run about
// twice as fast as float32 ones; elsewhere they are emulated and slower.
at::Tensor resize(const at::Tensor& win, const std::vector<int64_t>& wy, const std::vector<int64_t>& wx,
                  const ResizeAxis& ay, const ResizeAxis& ax, const std::vector<int64_t>& py,
                  const std::vector<int64_t>& px, int64_t h, int64_t w) {
    const int64_t B = win.size(0), C = win.size(1), L = win.size(2), Lw = win.size(3);
    at::Tensor dst = at::empty({B, C, h, w}, win.options());
    const float* s = win.data_ptr<float>();
    float* d = dst.data_ptr<float>();
    at::parallel_for(0, B * C, plane_grain(h * w), [&](int64_t begin, int64_t end) {
        std::vector<int64_t> c0(static_cast<size_t>(w)), c1(static_cast<size_t>(w));
        for (int64_t i = begin; i < end; ++i) {
            const int64_t b = i / C;
            for (int64_t q = 0; q < w; ++q) {
                c0[q] = ax.i0[px[b] + q] - wx[b];
                c1[q] = ax.i1[px[b] + q] - wx[b];
            }
            const float* sp = s + i * L * Lw;
            float* dp = d + i * h * w;
            for (int64_t r = 0; r < h; ++r) {
                const int64_t o = py[b] + r;
                const float* r0 = sp + (ay.i0[o] - wy[b]) * Lw;
                float* drow = dp + r * w;
                if (ay.nearest) {
                    for (int64_t q = 0; q < w; ++q) drow[q] = r0[c0[q]];
                    continue;
                }
                const float* r1 = sp + (ay.i1[o] - wy[b]) * Lw;
                const float ly = ay.l1[o];
                for (int64_t q = 0; q < w; ++q) {
                    const float lx = ax.l1[px[b] + q];
                    drow[q] = (1 - ly) * ((1 - lx) * r0[c0[q]] + lx * r0[c1[q]]) +
                              ly * ((1 - lx) * r1[c0[q]] + lx * r1[c1[q]]);
                }
            }
        }
    });
    return dst;
}

bool cpu_has_bf16() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool yes = __builtin_cpu_supports("avx512bf16");
    return yes;
#else
    return false;
#endif
}

namespace {
// Dot products of one vector with m others (row j at rows + j * stride), added to acc[j]: the
// inner loop of the first-order correction.
inline void dots_body(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    for (int64_t j = 0; j < m; ++j) {
        const float* r = rows + j * stride;
        float part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t i = 0;
        for (; i + 8 <= n; i += 8)
            for (int k = 0; k < 8; ++k) part[k] += r[i + k] * v[i + k];
        double s = 0;
        for (; i < n; ++i) s += static_cast<double>(r[i]) * v[i];
        for (int k = 0; k < 8; ++k) s += part[k];
        acc[j] += s;
    }
}
__attribute__((target("avx2,fma"))) void dots_avx2(const float* v, const float* rows, int64_t stride, int64_t n,
                                                    int64_t m, double* acc) {
    dots_body(v, rows, stride, n, m, acc);
}
void dots_generic(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    dots_body(v, rows, stride, n, m, acc);
}
}  // namespace

void dots(const float* v, const float* rows, int64_t stride, int64_t n, int64_t m, double* acc) {
    if (convscope::detail::cpu_has_avx2_fma()) dots_avx2(v, rows, stride, n, m, acc);
    else dots_generic(v, rows, stride, n, m, acc);
}

}  // namespace convscope::incremental
