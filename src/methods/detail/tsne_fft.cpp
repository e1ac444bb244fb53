// FFT-accelerated interpolation for t-SNE's repulsive forces (see tsne_fft.hpp).
//
// Per call: spread three charges (1, x, y) to the G x G node grid; convolve all three with
// K2 = 1/(1+d^2)^2 (for the forces) and interpolate back. Z needs only the total of charge 1
// convolved with K1 = 1/(1+d^2), which Parseval's identity gives from the spectra directly:
// sum_a c_a (K1 * c)_a = sum_f |C_f|^2 K1_f / m^2.
// Convolutions are circular on a 2G x 2G grid with the charges zero-padded. Because the charges
// fill only G of the 2G rows and only G rows of the result are needed, the 2-D transforms are
// done as two 1-D passes that skip the empty half: rows (r2c, G of them), then columns (c2c,
// G+1 of them); and back: columns, then only G rows (c2r). The row pass writes its output
// transposed, so that every column transform runs on contiguous memory (strided column
// transforms were 2-3x slower); the transposed rows are padded to avoid cache-set conflicts.
// The kernels' spectra are computed once per grid and kept while the grid still fits the
// embedding.
#include "methods/detail/tsne_fft.hpp"

#include <fftw3.h>

#include <algorithm>
#include "convscope/runtime/error.hpp"
#include <cmath>
#include <cstring>
#include <mutex>
#include <vector>

namespace convscope::detail {

namespace {

// FFTW's planner is not thread-safe: plan creation and destruction take this lock.
std::mutex& planner_mutex() {
    static std::mutex m;
    return m;
}

bool is_7_smooth(int64_t v) {
    for (int64_t f : {2, 3, 5, 7})
        while (v % f == 0) v /= f;
    return v == 1;
}

int64_t round_up(int64_t v, int64_t multiple) { return (v + multiple - 1) / multiple * multiple; }

constexpr int kMaxNodes = 8;  // nodes per interval supported

// FFTW_ESTIMATE: no timing-dependent choices, so the same plan (and bytes) every run.
constexpr unsigned kPlanFlags = FFTW_ESTIMATE;

}  // namespace

// Buffers, plans and kernel spectra for one grid: `boxes` intervals of `width` per side.
struct FftRepulsion::Plan {
    int64_t boxes = 0, g = 0, m = 0;  // g = boxes * p nodes per side, m = 2g padded size
    double width = 0.0;
    int64_t lda = 0;  // real row stride (floats), a multiple of 16 (64 bytes)
    int64_t columns = 0;  // m/2 + 1 frequency columns of the real transform
    int64_t ldt = 0;      // complex stride of the transposed spectra: >= m, an odd multiple of 8
                          // (64 bytes)
    // charge[0..2]: charges 1, x, y (g rows of lda; columns g..lda stay zero).
    // spec[0..2]: spectra of the charges, transposed: `columns` rows of ldt, entry (c, r) =
    // frequency column c of grid row r (or frequency row r after the column pass).
    // out[0..2]: potentials phi_1, phi_x, phi_y (kernel K2), g rows of lda.
    float* charge[3] = {};
    fftwf_complex* spec[3] = {};
    float* out[3] = {};
    std::vector<float> k1_hat, k2_hat;  // real spectra of the kernels, transposed like spec, scaled
    // One set of 1-D plans per thread, each for its share of the rows or columns.
    struct Part {
        fftwf_plan rows_forward = nullptr, columns_forward = nullptr;
        fftwf_plan columns_backward = nullptr, rows_backward = nullptr;
        int64_t row0 = 0, row1 = 0, col0 = 0, col1 = 0;
    };
    std::vector<Part> parts;

    Plan(int64_t boxes_, int p, double width_, int threads)
        : boxes(boxes_), g(boxes_ * p), m(2 * boxes_ * p), width(width_) {
        lda = round_up(m, 16);
        columns = m / 2 + 1;
        ldt = round_up(m, 8);
        if ((ldt / 8) % 2 == 0) ldt += 8;  // an odd number of cache lines: all sets in use
        std::lock_guard<std::mutex> lock(planner_mutex());
        for (auto& c : charge) {
            c = fftwf_alloc_real(size_t(g * lda));
            std::memset(c, 0, sizeof(float) * size_t(g * lda));
        }
        for (auto& s : spec) {
            s = fftwf_alloc_complex(size_t(columns * ldt));
            std::memset(s, 0, sizeof(fftwf_complex) * size_t(columns * ldt));
        }
        for (auto& o : out) o = fftwf_alloc_real(size_t(g * lda));
        const int n = int(m);
        for (int t = 0; t < threads; ++t) {
            Part part;
            // Row shares are whole bands of box rows, the same bands ThreadPool::for_range
            // gives thread t, so a thread transforms the rows it has just spread.
            part.row0 = int64_t(p) * (boxes * t / threads);
            part.row1 = int64_t(p) * (boxes * (t + 1) / threads);
            // Column shares are runs of transposed rows (each 64-byte aligned).
            part.col0 = columns * t / threads;
            part.col1 = columns * (t + 1) / threads;
            const int rows = int(part.row1 - part.row0), cols = int(part.col1 - part.col0);
            if (rows > 0) {
                part.rows_forward =
                    fftwf_plan_many_dft_r2c(1, &n, rows, charge[0] + part.row0 * lda, nullptr, 1,
                                            int(lda), spec[0] + part.row0, nullptr, int(ldt), 1,
                                            kPlanFlags | FFTW_PRESERVE_INPUT);
                part.rows_backward = fftwf_plan_many_dft_c2r(
                    1, &n, rows, spec[0] + part.row0, nullptr, int(ldt), 1,
                    out[0] + part.row0 * lda, nullptr, 1, int(lda), kPlanFlags);
            }
            if (cols > 0) {
                fftwf_complex* first = spec[0] + part.col0 * ldt;
                part.columns_forward =
                    fftwf_plan_many_dft(1, &n, cols, first, nullptr, 1, int(ldt), first, nullptr, 1,
                                        int(ldt), FFTW_FORWARD, kPlanFlags);
                part.columns_backward =
                    fftwf_plan_many_dft(1, &n, cols, first, nullptr, 1, int(ldt), first, nullptr, 1,
                                        int(ldt), FFTW_BACKWARD, kPlanFlags);
            }
            parts.push_back(part);
        }
    }

    ~Plan() {
        std::lock_guard<std::mutex> lock(planner_mutex());
        for (auto& part : parts)
            for (fftwf_plan pl : {part.rows_forward, part.columns_forward, part.columns_backward,
                                  part.rows_backward})
                if (pl) fftwf_destroy_plan(pl);
        for (auto* c : charge) fftwf_free(c);
        for (auto* s : spec) fftwf_free(s);
        for (auto* o : out) fftwf_free(o);
    }

    // Spectra of the two kernels in circulant layout, scaled by 1/m^2 so the inverse transform
    // comes out normalised. Even kernels have real spectra: only the real part is kept.
    void compute_kernels(int p, ThreadPool& pool) {
        const double h = width / p;
        float* grid[2];
        fftwf_complex* hat[2];
        fftwf_plan plan;
        {
            std::lock_guard<std::mutex> lock(planner_mutex());
            for (int k = 0; k < 2; ++k) {
                grid[k] = fftwf_alloc_real(size_t(m * m));
                hat[k] = fftwf_alloc_complex(size_t(m * columns));
            }
            plan = fftwf_plan_dft_r2c_2d(int(m), int(m), grid[0], hat[0], kPlanFlags);
        }
        const double scale = 1.0 / double(m * m);
        pool.for_range(m, [&](int64_t r0, int64_t r1) {
            for (int64_t a = r0; a < r1; ++a) {
                const double oy = double(a <= g ? a : m - a) * h;
                float* k1 = grid[0] + a * m;
                float* k2 = grid[1] + a * m;
                for (int64_t b = 0; b <= g; ++b) {
                    const double ox = double(b) * h;
                    const double q = 1.0 / (1.0 + ox * ox + oy * oy);
                    k1[b] = float(q * scale);
                    k2[b] = float(q * q * scale);
                }
                for (int64_t b = g + 1; b < m; ++b) {
                    k1[b] = k1[m - b];
                    k2[b] = k2[m - b];
                }
            }
        });
        pool.for_each_task(2, [&](int64_t k) { fftwf_execute_dft_r2c(plan, grid[k], hat[k]); });
        k1_hat.assign(size_t(columns * ldt), 0.0f);
        k2_hat.assign(size_t(columns * ldt), 0.0f);
        for (int64_t r = 0; r < m; ++r)
            for (int64_t c = 0; c < columns; ++c) {
                k1_hat[size_t(c * ldt + r)] = hat[0][r * columns + c][0];
                k2_hat[size_t(c * ldt + r)] = hat[1][r * columns + c][0];
            }
        std::lock_guard<std::mutex> lock(planner_mutex());
        fftwf_destroy_plan(plan);
        for (int k = 0; k < 2; ++k) {
            fftwf_free(grid[k]);
            fftwf_free(hat[k]);
        }
    }
};

FftRepulsion::FftRepulsion(const FftOptions& options) : options_(options) {
    CONVSCOPE_CHECK(options_.nodes_per_interval >= 1 && options_.nodes_per_interval <= kMaxNodes,
                    "interpolation nodes per interval out of range");
}

FftRepulsion::~FftRepulsion() = default;

double FftRepulsion::repulsion(const double* y, int64_t n, double* rep, ThreadPool& pool) {
    const Frame f = fit_grid(y, n, pool);
    sort_points(y, n, f, pool);
    spread_charges(y, n, f, pool);
    const double z = convolve(pool);
    return z - interpolate(n, f, rep, pool);
}

// The square grid that covers the embedding, the plan (grid and kernel spectra) made again
// only when the grid changes.
FftRepulsion::Frame FftRepulsion::fit_grid(const double* y, int64_t n, ThreadPool& pool) {
    const int p = options_.nodes_per_interval;
    const double max_width = options_.max_interval_width;
    const int64_t min_boxes = options_.min_intervals;

    // Bounding square of the embedding.
    double lo[2] = {y[0], y[1]}, hi[2] = {y[0], y[1]};
    for (int64_t i = 0; i < n; ++i)
        for (int c = 0; c < 2; ++c) {
            lo[c] = std::min(lo[c], y[2 * i + c]);
            hi[c] = std::max(hi[c], y[2 * i + c]);
        }
    double span = std::max(hi[0] - lo[0], hi[1] - lo[1]);
    span = std::max(span, 1e-12 * max_width);
    // Interval width: max_width once the embedding spans min_boxes of them; below that, a value
    // from a geometric ladder (ratio 0.9) so that a grid and its kernel spectra can be reused
    // over many iterations while the embedding grows.
    double width = max_width;
    if (span < double(min_boxes) * max_width) {
        const double s = span / (double(min_boxes) * max_width);
        width = max_width * std::pow(0.9, std::floor(std::log(s) / std::log(0.9)));
    }
    const int64_t needed = std::max<int64_t>(min_boxes, int64_t(std::ceil(span / width)));
    if (!plan_ || plan_->width != width || plan_->boxes < needed ||
        plan_->parts.size() != size_t(pool.size()) ||
        double(plan_->boxes) > 1.15 * double(needed) + 2.0) {
        int64_t boxes = needed;
        while (!is_7_smooth(2 * boxes * p)) ++boxes;  // FFT-friendly sizes
        plan_.reset();                                // free the old buffers first
        plan_ = std::make_unique<Plan>(boxes, p, width, pool.size());
        plan_->compute_kernels(p, pool);
    }
    last_grid_ = plan_->g;
    Frame f;
    f.width = width;
    for (int c = 0; c < 2; ++c) {
        f.centre[c] = 0.5 * (lo[c] + hi[c]);
        f.origin[c] = f.centre[c] - 0.5 * double(plan_->boxes) * width;
    }
    return f;
}

// Box of every point, then the points sorted by box (stable): each box's nodes are then written
// by one thread only, and the per-point data below is read and written in order.
void FftRepulsion::sort_points(const double* y, int64_t n, const Frame& f, ThreadPool& pool) {
    const int64_t boxes = plan_->boxes;
    const double inv_width = 1.0 / f.width;
    auto cell_of = [&](double v, int c) {
        return std::clamp<int64_t>(int64_t(std::floor((v - f.origin[c]) * inv_width)), 0, boxes - 1);
    };
    box_of_.resize(size_t(n));
    pool.for_range(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
            box_of_[size_t(i)] = int32_t(cell_of(y[2 * i + 1], 1) * boxes + cell_of(y[2 * i], 0));
    });
    box_start_.assign(size_t(boxes * boxes + 1), 0);
    for (int64_t i = 0; i < n; ++i) ++box_start_[size_t(box_of_[size_t(i)] + 1)];
    for (int64_t b = 0; b < boxes * boxes; ++b) box_start_[size_t(b + 1)] += box_start_[size_t(b)];
    order_.resize(size_t(n));
    {
        std::vector<int64_t> fill(box_start_.begin(), box_start_.end() - 1);
        for (int64_t i = 0; i < n; ++i)
            order_[size_t(fill[size_t(box_of_[size_t(i)])]++)] = int32_t(i);
    }
}

// Spreads the charges (1, x, y) onto the grid nodes with Lagrange weights, then the forward row
// transforms. Thread t owns a band of box rows and so a band of node rows. For each point (in box
// order) its weights and centred coordinates are kept for the way back. Charge coordinates are
// taken from the centre, to keep them small in single precision.
void FftRepulsion::spread_charges(const double* y, int64_t n, const Frame& f, ThreadPool& pool) {
    const int p = options_.nodes_per_interval;
    Plan& P = *plan_;
    const int64_t boxes = P.boxes, g = P.g, lda = P.lda;
    const double* origin = f.origin;
    const double* centre = f.centre;
    const double inv_width = 1.0 / f.width;
    // Lagrange basis on the nodes (k + 0.5)/p of the unit box.
    double node[kMaxNodes], inv_denom[kMaxNodes];
    for (int k = 0; k < p; ++k) node[k] = (k + 0.5) / p;
    for (int k = 0; k < p; ++k) {
        double den = 1.0;
        for (int l = 0; l < p; ++l)
            if (l != k) den *= node[k] - node[l];
        inv_denom[k] = 1.0 / den;
    }
    weights_.resize(size_t(n) * 2 * p);
    coords_.resize(size_t(2 * n));
    pool.run([&](int t) {
        const auto& part = P.parts[size_t(t)];
        const int64_t by0 = part.row0 / p, by1 = part.row1 / p;
        for (int k = 0; k < 3; ++k)
            for (int64_t r = by0 * p; r < by1 * p; ++r)
                std::memset(P.charge[k] + r * lda, 0, sizeof(float) * size_t(g));
        for (int64_t box = by0 * boxes; box < by1 * boxes; ++box) {
            const int64_t bx = box % boxes, by = box / boxes;
            for (int64_t s = box_start_[size_t(box)]; s < box_start_[size_t(box + 1)]; ++s) {
                const int64_t i = order_[size_t(s)];
                // The points are visited out of order: fetch the coordinates a few ahead.
                if (s + 8 < n) __builtin_prefetch(&y[2 * int64_t(order_[size_t(s + 8)])]);
                float* wx = &weights_[size_t(s) * 2 * p];
                float* wy = wx + p;
                const double cell[2] = {double(bx), double(by)};
                for (int c = 0; c < 2; ++c) {
                    const double u = (y[2 * i + c] - origin[c]) * inv_width - cell[c];
                    for (int k = 0; k < p; ++k) {
                        double v = inv_denom[k];
                        for (int l = 0; l < p; ++l)
                            if (l != k) v *= u - node[l];
                        wx[c * p + k] = float(v);
                    }
                }
                const float cx = float(y[2 * i] - centre[0]), cy = float(y[2 * i + 1] - centre[1]);
                coords_[size_t(2 * s)] = y[2 * i] - centre[0];
                coords_[size_t(2 * s + 1)] = y[2 * i + 1] - centre[1];
                for (int l = 0; l < p; ++l) {
                    const int64_t row = (by * p + l) * lda + bx * p;
                    for (int k = 0; k < p; ++k) {
                        const float w = wy[l] * wx[k];
                        P.charge[0][row + k] += w;
                        P.charge[1][row + k] += w * cx;
                        P.charge[2][row + k] += w * cy;
                    }
                }
            }
        }
        // Row transforms of this band (only the g charge rows have any), written transposed.
        if (part.rows_forward)
            for (int k = 0; k < 3; ++k)
                fftwf_execute_dft_r2c(part.rows_forward, P.charge[k] + part.row0 * lda,
                                      P.spec[k] + part.row0);
    });
}

// The forward column transforms, Z, the products with the kernel's spectrum and the backward
// column transforms; returns Z including the self terms.
double FftRepulsion::convolve(ThreadPool& pool) {
    Plan& P = *plan_;
    const int64_t g = P.g, m = P.m, ldt = P.ldt;
    // Column transforms over all m rows, per column share, after clearing the padding half that
    // the in-place transforms overwrote last time.
    pool.run([&](int t) {
        const auto& part = P.parts[size_t(t)];
        if (!part.columns_forward) return;
        for (int k = 0; k < 3; ++k) {
            for (int64_t c = part.col0; c < part.col1; ++c)
                std::memset(P.spec[k] + c * ldt + g, 0, sizeof(fftwf_complex) * size_t(m - g));
            fftwf_execute_dft(part.columns_forward, P.spec[k] + part.col0 * ldt,
                              P.spec[k] + part.col0 * ldt);
        }
    });
    // Z from the spectrum of charge 1 (Parseval; with a real input, the columns 1..m/2-1 of the
    // half spectrum stand for two columns each), then the products with K2's spectrum and the
    // backward column pass, per column share.
    std::vector<double> z_part(P.parts.size(), 0.0);
    pool.run([&](int t) {
        const auto& part = P.parts[size_t(t)];
        if (!part.columns_backward) return;
        double z = 0.0;
        for (int64_t c = part.col0; c < part.col1; ++c) {
            const float* k1 = &P.k1_hat[size_t(c * ldt)];
            const float* k2 = &P.k2_hat[size_t(c * ldt)];
            fftwf_complex* s0 = P.spec[0] + c * ldt;
            fftwf_complex* s1 = P.spec[1] + c * ldt;
            fftwf_complex* s2 = P.spec[2] + c * ldt;
            double column = 0.0;
            for (int64_t r = 0; r < m; ++r) {
                const double power = double(s0[r][0]) * s0[r][0] + double(s0[r][1]) * s0[r][1];
                column += power * k1[r];
                s0[r][0] *= k2[r];
                s0[r][1] *= k2[r];
                s1[r][0] *= k2[r];
                s1[r][1] *= k2[r];
                s2[r][0] *= k2[r];
                s2[r][1] *= k2[r];
            }
            z += (c == 0 || c == m / 2 ? 1.0 : 2.0) * column;
        }
        z_part[size_t(t)] = z;
        for (int k = 0; k < 3; ++k)
            fftwf_execute_dft(part.columns_backward, P.spec[k] + part.col0 * ldt,
                              P.spec[k] + part.col0 * ldt);
    });
    double z_total = 0.0;
    for (double z : z_part) z_total += z;  // in share order
    return z_total;
}

// The backward row transforms and the potentials interpolated back to the points: writes rep and
// returns the sum of the points' self terms.
double FftRepulsion::interpolate(int64_t n, const Frame& f, double* rep, ThreadPool& pool) {
    const int p = options_.nodes_per_interval;
    Plan& P = *plan_;
    const int64_t boxes = P.boxes, lda = P.lda;
    const double h = f.width / p;  // node spacing
    // Kernel 1/(1+d^2) between two nodes of one box, by node offset (|dx|, |dy|) < p: used to
    // remove each point's interaction with itself as the interpolation sees it (not exactly 1,
    // which matters when Z is not much larger than N).
    double k_local[kMaxNodes][kMaxNodes];
    for (int a = 0; a < p; ++a)
        for (int b = 0; b < p; ++b) k_local[a][b] = 1.0 / (1.0 + (a * a + b * b) * h * h);

    // Per band: the backward row transforms of its node rows, then the interpolation of the
    // potentials back to its points (in box order), and the band's sum of self terms.
    std::vector<double> self_part(P.parts.size(), 0.0);
    pool.run([&](int t) {
        const auto& part = P.parts[size_t(t)];
        if (part.rows_backward)
            for (int k = 0; k < 3; ++k)
                fftwf_execute_dft_c2r(part.rows_backward, P.spec[k] + part.row0,
                                      P.out[k] + part.row0 * lda);
        const int64_t by0 = part.row0 / p, by1 = part.row1 / p;
        double self_sum = 0.0;
        for (int64_t box = by0 * boxes; box < by1 * boxes; ++box) {
            const int64_t bx = box % boxes, by = box / boxes;
            for (int64_t s = box_start_[size_t(box)]; s < box_start_[size_t(box + 1)]; ++s) {
                const int64_t i = order_[size_t(s)];
                if (s + 8 < n) __builtin_prefetch(&rep[2 * int64_t(order_[size_t(s + 8)])], 1);
                const float* wx = &weights_[size_t(s) * 2 * p];
                const float* wy = wx + p;
                double acc[3] = {0, 0, 0};
                for (int l = 0; l < p; ++l) {
                    const int64_t row = (by * p + l) * lda + bx * p;
                    for (int k = 0; k < p; ++k) {
                        const double w = double(wy[l]) * wx[k];
                        for (int c = 0; c < 3; ++c) acc[c] += w * P.out[c][row + k];
                    }
                }
                rep[2 * i] = coords_[size_t(2 * s)] * acc[0] - acc[1];
                rep[2 * i + 1] = coords_[size_t(2 * s + 1)] * acc[0] - acc[2];
                // Self term sum_{a,b} w_a K(a - b) w_b over node pairs, through the weights'
                // autocorrelations along x and y (offsets +t and -t counted together).
                double corr[2][kMaxNodes];
                for (int c = 0; c < 2; ++c) {
                    const float* w = wx + c * p;
                    for (int o = 0; o < p; ++o) {
                        double v = 0.0;
                        for (int a = 0; a + o < p; ++a) v += double(w[a]) * w[a + o];
                        corr[c][o] = o == 0 ? v : 2.0 * v;
                    }
                }
                double self = 0.0;
                for (int a = 0; a < p; ++a) {
                    double row = 0.0;
                    for (int b = 0; b < p; ++b) row += k_local[a][b] * corr[1][b];
                    self += corr[0][a] * row;
                }
                self_sum += self;
            }
        }
        self_part[size_t(t)] = self_sum;
    });
    double self_total = 0.0;
    for (double v : self_part) self_total += v;  // in band order
    return self_total;
}

}  // namespace convscope::detail
