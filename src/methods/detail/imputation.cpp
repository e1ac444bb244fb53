// ROAD's linear imputation of one image. For every removed pixel q,
//   wsum(q) v(q) - sum_{removed r ~ q} w v(r) = sum_{kept r ~ q} w x(r),
// with w = 1/6 for the 4 direct and 1/12 for the 4 diagonal neighbours inside the image and
// wsum(q) their sum. It is symmetric positive definite when a pixel is kept. The iterations solve
// it times 12, whose weights (2, 1 and the integer 12 wsum) are exact in float32 too.
#include "methods/detail/imputation.hpp"

#include <Eigen/Sparse>
#include <Eigen/SparseCholesky>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "methods/detail/cpu_features.hpp"

namespace convscope::detail {
namespace {

constexpr int kDy[8] = {-1, -1, -1, 0, 0, 1, 1, 1}, kDx[8] = {-1, 0, 1, -1, 1, -1, 0, 1};
constexpr double kWt[8] = {1.0 / 12, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 6, 1.0 / 12, 1.0 / 6, 1.0 / 12};

// Exact solve by a sparse LDL^T factorisation, one per image shared by its channels.
void impute_ldlt(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out) {
    const int64_t p = h * w;
    std::vector<int64_t> id(size_t(p), -1);
    std::vector<int64_t> cells;
    for (int64_t q = 0; q < p; ++q)
        if (removed[q]) {
            id[size_t(q)] = int64_t(cells.size());
            cells.push_back(q);
        }
    const int64_t m = int64_t(cells.size());
    if (m == 0) return;
    std::vector<Eigen::Triplet<double>> triplets;
    triplets.reserve(size_t(m) * 9);
    Eigen::MatrixXd rhs = Eigen::MatrixXd::Zero(m, c);
    for (int64_t k = 0; k < m; ++k) {
        const int64_t y = cells[size_t(k)] / w, x = cells[size_t(k)] % w;
        double wsum = 0;
        for (int j = 0; j < 8; ++j) {
            const int64_t yy = y + kDy[j], xx = x + kDx[j];
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            wsum += kWt[j];
            const int64_t r = yy * w + xx;
            if (removed[r])
                triplets.emplace_back(k, id[size_t(r)], -kWt[j]);
            else
                for (int64_t ch = 0; ch < c; ++ch) rhs(k, ch) += kWt[j] * double(img[ch * p + r]);
        }
        triplets.emplace_back(k, k, wsum);
    }
    Eigen::SparseMatrix<double> a(m, m);
    a.setFromTriplets(triplets.begin(), triplets.end());
    Eigen::SimplicialLDLT<Eigen::SparseMatrix<double>> solver(a);
    CONVSCOPE_CHECK(solver.info() == Eigen::Success, "the imputation system is positive definite when a pixel is kept");
    const Eigen::MatrixXd v = solver.solve(rhs);
    for (int64_t k = 0; k < m; ++k)
        for (int64_t ch = 0; ch < c; ++ch) out[ch * p + cells[size_t(k)]] = float(v(k, ch));
}

// The grid's vectors: the image with a border of zeros, H + 2 rows of wp values, wp = W + 2
// rounded up to 16 floats, so that every grid row starts on a 64-byte line: the loads at a pixel
// and at the pixels above and below it are aligned (unaligned ones cost two loads, a line split
// each). The neighbours are read through three row pointers (above, same, below) at offsets -1,
// 0, +1, and the mask is a product (no branch), so that the compiler vectorises the loops with
// few registers. [lo, hi) are whole grid rows that hold every removed pixel.
constexpr int64_t kRowAlign = 16;

struct Stencil {
    int64_t wp;  // the grid's row length
    int64_t mo;  // m = k + mo
};

// out = 12 A v at [lo, hi): k v - m (2 x direct + diagonal neighbours), k = 12 wsum and m = 1 at
// removed pixels, both 0 elsewhere. Returns v . out.
template <typename T>
[[gnu::always_inline]] inline T apply(const Stencil& o, const float* __restrict k, const T* __restrict v,
                                      T* __restrict out, int64_t lo, int64_t hi) {
    const float* __restrict m = k + o.mo;
    const T* __restrict up = v - o.wp;
    const T* __restrict dn = v + o.wp;
    T dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t q = lo; q < hi; ++q) {
        const T sum = T(2) * (up[q] + v[q - 1] + v[q + 1] + dn[q]) + (up[q - 1] + up[q + 1] + dn[q - 1] + dn[q + 1]);
        const T o_q = T(k[q]) * v[q] - T(m[q]) * sum;
        out[q] = o_q;
        dot += v[q] * o_q;
    }
    return dot;
}

// The values one to the left (left) and one to the right (right) of the 16 in cur, from the
// vectors before (prev) and after it (next).
// (GCC 12 warns of uninitialised values inside its own AVX-512 intrinsics, a known false alarm.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define CONVSCOPE_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma"), always_inline)) inline
CONVSCOPE_AVX512 __m512 left(__m512 cur, __m512 prev) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(cur), _mm512_castps_si512(prev), 15));
}
CONVSCOPE_AVX512 __m512 right(__m512 next, __m512 cur) {
    return _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(next), _mm512_castps_si512(cur), 1));
}

// apply<float> with AVX-512, 16 cells a step ([lo, hi) and the rows are aligned to 16 floats):
// the left and right neighbours come from the aligned vectors by valignd instead of unaligned
// loads, which straddle two lines and cost two loads each. It reads one vector before lo and one
// after hi (inside the margins; only their values next to [lo, hi) count). Called once an
// iteration: a function of its own target cannot be inlined into the shared loop.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) float apply_avx512(
    const Stencil& o, const float* __restrict k, const float* __restrict v, float* __restrict out, int64_t lo,
    int64_t hi) {
    const float* __restrict m = k + o.mo;
    const float* __restrict up = v - o.wp;
    const float* __restrict dn = v + o.wp;
    const __m512 two = _mm512_set1_ps(2.f);
    __m512 dot = _mm512_setzero_ps();
    __m512 u0 = _mm512_load_ps(up + lo - 16), u1 = _mm512_load_ps(up + lo);
    __m512 c0 = _mm512_load_ps(v + lo - 16), c1 = _mm512_load_ps(v + lo);
    __m512 d0 = _mm512_load_ps(dn + lo - 16), d1 = _mm512_load_ps(dn + lo);
    for (int64_t q = lo; q < hi; q += 16) {
        const __m512 u2 = _mm512_load_ps(up + q + 16), c2 = _mm512_load_ps(v + q + 16), d2 = _mm512_load_ps(dn + q + 16);
        const __m512 direct = _mm512_add_ps(_mm512_add_ps(u1, left(c1, c0)), _mm512_add_ps(right(c2, c1), d1));
        const __m512 diagonal =
            _mm512_add_ps(_mm512_add_ps(left(u1, u0), right(u2, u1)), _mm512_add_ps(left(d1, d0), right(d2, d1)));
        const __m512 sum = _mm512_fmadd_ps(two, direct, diagonal);
        const __m512 o_q = _mm512_fmsub_ps(_mm512_load_ps(k + q), c1, _mm512_mul_ps(_mm512_load_ps(m + q), sum));
        _mm512_store_ps(out + q, o_q);
        dot = _mm512_fmadd_ps(c1, o_q, dot);
        u0 = u1;
        u1 = u2;
        c0 = c1;
        c1 = c2;
        d0 = d1;
        d1 = d2;
    }
    return _mm512_reduce_add_ps(dot);
}
#undef CONVSCOPE_AVX512
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif

// r = 12 (b - A x) in float64 (rd) and in float32 (r); returns |r|^2. At removed pixels
// 12 A x = k x - m s (s: all neighbours, the kept ones holding the image).
[[gnu::always_inline]] inline double grid_residual(const Stencil& st, const float* k, const double* x,
                                                   double* __restrict rd, float* __restrict r, int64_t lo, int64_t hi) {
    (void)apply<double>(st, k, x, rd, lo, hi);
    double sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t q = lo; q < hi; ++q) {
        const double res = -rd[q];
        r[q] = float(res);
        sum += res * res;
    }
    return sum;
}

// p rounded up to the next 64-byte boundary.
template <typename T>
T* align64(T* p) {
    return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// Conjugate gradients on the image grid, channel by channel, without building the matrix, in
// float32 with reliable updates: whenever the float32 residual has fallen 10^4-fold, the
// correction is added to the float64 solution and the residual recomputed from it in float64,
// keeping the search direction. The vectors are half the size (they stay in the cache) and a
// SIMD register holds twice as many, at the iterations of a float64 solve. It stops at a residual
// of 1e-8 of the right-hand side's norm (or of the first residual's, when larger). The removed
// pixels start at the mean of the kept ones (the fill of a large hole tends to its border's
// mean; a multi-level fill of the holes from their borders saved 4% of the iterations and cost
// more than that). Returns false when a channel has not converged after 8 (4 (H + W) + 100)
// iterations (the caller then solves exactly).
template <bool kAvx512>
[[gnu::always_inline]] inline bool impute_cg_body(const float* img, const bool* removed_mask, int64_t c, int64_t h,
                                                 int64_t w, float* out) {
    const auto* removed = reinterpret_cast<const uint8_t*>(removed_mask);  // 0 or 1
    const int64_t wp = (w + 2 + kRowAlign - 1) / kRowAlign * kRowAlign, pp = (h + 2) * wp;
    // Each vector has a margin of kRowAlign values on both sides (the reads one row and one value
    // beyond [lo, hi)) and starts on a line.
    const int64_t stride = pp + 2 * kRowAlign;
    const Stencil st{wp, 5 * stride};
    // The buffers are zeroed when the image size changes; afterwards only the interior is written
    // (the borders stay 0) and d is zeroed where it is read outside [lo, hi).
    thread_local std::vector<double> dbuf;
    thread_local std::vector<float> fbuf, hbuf;
    thread_local int64_t have_h = -1, have_w = -1;
    if (have_h != h || have_w != w) {
        dbuf.assign(size_t(stride) * 2 + 8, 0.0);
        fbuf.assign(size_t(stride) * 6 + 16, 0.f);
        hbuf.resize(size_t(w));
        for (int64_t xx = 0; xx < w; ++xx) hbuf[size_t(xx)] = float((xx > 0) + (xx + 1 < w));
        have_h = h;
        have_w = w;
    }
    double* x = align64(dbuf.data()) + kRowAlign;  // the solution (removed pixels) and the image (kept ones)
    double* rd = x + stride;                        // the residual in float64
    float* k = align64(fbuf.data()) + kRowAlign;   // 12 wsum at removed pixels, 0 elsewhere (exact integers)
    float* e = k + stride;                          // the float32 correction since the last update
    float* r = e + stride;
    float* d = r + stride;
    float* ad = d + stride;
    float* m = k + st.mo;  // 1 at removed pixels
    // 12 wsum = 2 (vertical + horizontal neighbours) + their product (the diagonal ones); hx: the
    // horizontal neighbours of each column.
    const float* __restrict hx = hbuf.data();
    int64_t ymin = h, ymax = -1;
    for (int64_t y = 0; y < h; ++y) {
        const float vy = float((y > 0) + (y + 1 < h));
        const uint8_t* __restrict rrow = removed + y * w;
        float* __restrict krow = k + (y + 1) * wp + 1;
        float* __restrict mrow = m + (y + 1) * wp + 1;
#pragma omp simd
        for (int64_t xx = 0; xx < w; ++xx) {
            const float rm = float(rrow[xx]);
            krow[xx] = rm * (2.f * (vy + hx[xx]) + vy * hx[xx]);
            mrow[xx] = rm;
        }
        if (std::memchr(rrow, 1, size_t(w))) {
            ymin = std::min(ymin, y);
            ymax = y;
        }
    }
    if (ymax < 0) return true;
    const auto n_removed = std::count(removed + ymin * w, removed + (ymax + 1) * w, uint8_t(1));
    const int64_t lo = (ymin + 1) * wp, hi = (ymax + 2) * wp;
    std::fill(d + lo - wp - 1, d + lo, 0.f);
    std::fill(d + hi, d + hi + wp + 1, 0.f);
    const int64_t max_iter = 8 * (4 * (h + w) + 100);
    for (int64_t ch = 0; ch < c; ++ch) {
        const float* src = img + ch * h * w;
        // The image into the grid, the removed pixels at 0; then the kept pixels' sum over whole
        // grid rows (short rows' reductions cost more than their work).
        for (int64_t y = 0; y < h; ++y) {
            const float* __restrict srow = src + y * w;
            const float* __restrict mrow = m + (y + 1) * wp + 1;
            double* __restrict xrow = x + (y + 1) * wp + 1;
#pragma omp simd
            for (int64_t xx = 0; xx < w; ++xx) xrow[xx] = (1.0 - double(mrow[xx])) * double(srow[xx]);
        }
        double kept_sum = 0;
        {
            const double* __restrict xv = x;
#pragma omp simd reduction(+ : kept_sum)
            for (int64_t q = wp; q < (h + 1) * wp; ++q) kept_sum += xv[q];
        }
        const double kept = double(h * w - n_removed);
        // With the removed pixels at 0 the residual is 12 b, for the tolerance.
        const double bb = grid_residual(st, k, x, rd, r, lo, hi);
        const double start = kept_sum / std::max(kept, 1.0);
#pragma omp simd
        for (int64_t q = lo; q < hi; ++q) x[q] += double(m[q]) * start;
        double rr = grid_residual(st, k, x, rd, r, lo, hi);
        // Relative to the larger of b and the first residual: b alone is 0 where every kept
        // neighbour is black.
        const double tol2 = 1e-16 * std::max({bb, rr, 1e-300});
        bool done = !(rr > tol2);
        std::fill(e + lo, e + hi, 0.f);
        std::copy(r + lo, r + hi, d + lo);
        double rr_ref = rr;
        float rf = float(rr);
        for (int64_t it = 0; it < max_iter && !done; ++it) {
            float dad;
            if constexpr (kAvx512)
                dad = apply_avx512(st, k, d, ad, lo, hi);
            else
                dad = apply<float>(st, k, d, ad, lo, hi);
            if (!(dad > 0)) break;
            const float alpha = rf / dad;
            float rr_new = 0;
            {
                float* __restrict ev = e;
                float* __restrict rv = r;
                const float* __restrict dv = d;
                const float* __restrict av = ad;
#pragma omp simd reduction(+ : rr_new)
                for (int64_t q = lo; q < hi; ++q) {
                    ev[q] += alpha * dv[q];
                    rv[q] -= alpha * av[q];
                    rr_new += rv[q] * rv[q];
                }
            }
            if (double(rr_new) <= 1e-8 * rr_ref || double(rr_new) <= 0.25 * tol2) {
                // The reliable update: the correction into x, the residual recomputed from it.
#pragma omp simd
                for (int64_t q = lo; q < hi; ++q) x[q] += double(e[q]);
                std::fill(e + lo, e + hi, 0.f);
                rr = grid_residual(st, k, x, rd, r, lo, hi);
                if (!(rr > tol2)) {
                    done = true;
                    break;
                }
                rr_ref = rr;
                rr_new = float(rr);
            }
            const float beta = rr_new / rf;
            rf = rr_new;
            float* __restrict dv = d;
            const float* __restrict rv = r;
#pragma omp simd
            for (int64_t q = lo; q < hi; ++q) dv[q] = rv[q] + beta * dv[q];
        }
        if (!done) return false;
        float* dst = out + ch * h * w;
        for (int64_t y = 0; y < h; ++y) {
            const double* __restrict xrow = x + (y + 1) * wp + 1;
            float* __restrict drow = dst + y * w;
#pragma omp simd
            for (int64_t xx = 0; xx < w; ++xx) drow[xx] = float(xrow[xx]);
        }
    }
    return true;
}

// The iterations compiled for AVX-512 and for AVX2 with FMA too (sixteen or eight floats a
// register instead of SSE's four), taken where the processor has them.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) bool impute_cg_avx512(const float* img, const bool* removed,
                                                                            int64_t c, int64_t h, int64_t w, float* out) {
    return impute_cg_body<true>(img, removed, c, h, w, out);
}

__attribute__((target("avx2,fma"))) bool impute_cg_avx2(const float* img, const bool* removed, int64_t c, int64_t h,
                                                        int64_t w, float* out) {
    return impute_cg_body<false>(img, removed, c, h, w, out);
}

bool impute_cg(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out) {
    if (cpu_has_avx512()) return impute_cg_avx512(img, removed, c, h, w, out);
    if (cpu_has_avx2_fma()) return impute_cg_avx2(img, removed, c, h, w, out);
    return impute_cg_body<false>(img, removed, c, h, w, out);
}

// Whether conjugate gradients should beat the factorisation. Their iterations grow with the
// widest hole (D: the largest chessboard distance of a removed pixel to a kept one, by a
// two-pass distance transform) and cost the rows that hold removed pixels; the factorisation
// costs about m^1.5 for m removed pixels of a 2-D grid. The constants are fitted to timings of
// both on holes of every kind (`bench_evaluation --imputation`); small images always take the
// iterations, whose grid stays in cache.
bool prefer_cg(const bool* removed, int64_t h, int64_t w) {
    if (h * w <= 4096) return true;
    std::vector<int32_t> dist(size_t(h * w));
    const int32_t far = int32_t(h + w);
    int64_t m = 0, ymin = h, ymax = -1;
    for (int64_t y = 0; y < h; ++y)
        for (int64_t x = 0; x < w; ++x) {
            const int64_t q = y * w + x;
            int32_t d = removed[q] ? far : 0;
            if (removed[q]) {
                ++m;
                ymin = std::min(ymin, y);
                ymax = std::max(ymax, y);
                if (y > 0) {
                    d = std::min(d, dist[size_t(q - w)] + 1);
                    if (x > 0) d = std::min(d, dist[size_t(q - w - 1)] + 1);
                    if (x + 1 < w) d = std::min(d, dist[size_t(q - w + 1)] + 1);
                }
                if (x > 0) d = std::min(d, dist[size_t(q - 1)] + 1);
            }
            dist[size_t(q)] = d;
        }
    int32_t widest = 0;
    for (int64_t y = h - 1; y >= 0; --y)
        for (int64_t x = w - 1; x >= 0; --x) {
            const int64_t q = y * w + x;
            int32_t d = dist[size_t(q)];
            if (d == 0) continue;
            if (y + 1 < h) {
                d = std::min(d, dist[size_t(q + w)] + 1);
                if (x > 0) d = std::min(d, dist[size_t(q + w - 1)] + 1);
                if (x + 1 < w) d = std::min(d, dist[size_t(q + w + 1)] + 1);
            }
            if (x + 1 < w) d = std::min(d, dist[size_t(q + 1)] + 1);
            dist[size_t(q)] = d;
            widest = std::max(widest, d);
        }
    if (m == 0) return true;
    const double rows = double(ymax - ymin + 1) * double(w);
    return double(widest + 4) * rows < 3.0 * std::pow(double(m), 1.5);
}

}  // namespace

void impute_image(const float* img, const bool* removed, int64_t c, int64_t h, int64_t w, float* out,
                  ImputationSolver solver) {
    std::copy(img, img + c * h * w, out);
    const bool cg = solver == ImputationSolver::Iterative ||
                    (solver == ImputationSolver::Auto && prefer_cg(removed, h, w));
    if (!cg) {
        impute_ldlt(img, removed, c, h, w, out);
        return;
    }
    if (!impute_cg(img, removed, c, h, w, out)) {
        std::copy(img, img + c * h * w, out);
        impute_ldlt(img, removed, c, h, w, out);
    }
}

// The ziggurat's tables for the half-normal f(x) = exp(-x^2 / 2): layer i (1..127) spans
// [0, x_i) with x_i = w[i] 2^24, and its part [0, x_{i-1}) lies under f; layer 0 is the base
// strip (width v / f(r), the part beyond r taken from the tail).
namespace {
constexpr double kZigR = 3.442619855899, kZigV = 9.91256303526217e-3, kZigScale = 16777216.0;  // 2^24
}  // namespace

const NormalStream::Tables& NormalStream::tables() {
    static const Tables t = [] {
        Tables z{};
        const double q = kZigV / std::exp(-0.5 * kZigR * kZigR);
        z.k[0] = uint32_t((kZigR / q) * kZigScale);
        z.k[1] = 0;
        z.w[0] = float(q / kZigScale);
        z.w[127] = float(kZigR / kZigScale);
        z.f[0] = 1.f;
        z.f[127] = float(std::exp(-0.5 * kZigR * kZigR));
        double dn = kZigR, tn = kZigR;
        for (int i = 126; i >= 1; --i) {
            dn = std::sqrt(-2.0 * std::log(kZigV / dn + std::exp(-0.5 * dn * dn)));
            z.k[i + 1] = uint32_t((dn / tn) * kZigScale);
            tn = dn;
            z.f[i] = float(std::exp(-0.5 * dn * dn));
            z.w[i] = float(dn / kZigScale);
        }
        return z;
    }();
    return t;
}

float NormalStream::edge(uint64_t b) {
    // A uniform in (0, 1) from a fresh draw's top 24 bits.
    const auto uniform = [this] { return (float(bits() >> 40) + 0.5f) * (1.f / 16777216.f); };
    for (;;) {
        const int i = int(b & 127);
        const float sign = (b >> 7) & 1 ? -1.f : 1.f;
        const uint32_t u = uint32_t(b >> 40);
        const float x = float(u) * t_.w[i];
        if (u < t_.k[i]) return sign * x;
        if (i == 0) {  // the tail beyond r (Marsaglia's method for it)
            float a, c;
            do {
                a = -std::log(uniform()) / float(kZigR);
                c = -std::log(uniform());
            } while (c + c < a * a);
            return sign * (float(kZigR) + a);
        }
        if (t_.f[i] + uniform() * (t_.f[i - 1] - t_.f[i]) < std::exp(-0.5f * x * x)) return sign * x;
        b = bits();
    }
}

}  // namespace convscope::detail
