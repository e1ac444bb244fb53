// Nearest neighbours for t-SNE: blocked brute force, hnswlib shards, and a 2-D grid search.
#include "methods/detail/tsne_knn.hpp"

// hnswlib defines non-inline helper functions in its header: include it in this file only.
#include <hnswlib/hnswlib.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "methods/detail/cpu_features.hpp"

namespace convscope::detail {

namespace {

// 8 floats; GCC lowers it to one AVX register or two SSE registers depending on the clone.
typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

// By reference: returning a 32-byte vector would depend on the AVX calling convention.
__attribute__((always_inline)) inline void load8(v8f& v, const float* p) {
    std::memcpy(&v, p, sizeof(v));
}

// Max-heap on (distance, index): the worst kept candidate on top.
inline bool worse(float da, int32_t ia, float db, int32_t ib) {
    return da > db || (da == db && ia > ib);
}

__attribute__((noinline)) void heap_sift_down(float* hd, int32_t* hi, int size, int pos) {
    for (;;) {
        int l = 2 * pos + 1, best = pos;
        if (l < size && worse(hd[l], hi[l], hd[best], hi[best])) best = l;
        if (l + 1 < size && worse(hd[l + 1], hi[l + 1], hd[best], hi[best])) best = l + 1;
        if (best == pos) return;
        std::swap(hd[pos], hd[best]);
        std::swap(hi[pos], hi[best]);
        pos = best;
    }
}

void heap_push(float* hd, int32_t* hi, int& size, int cap, float d, int32_t i) {
    if (size < cap) {
        int pos = size++;
        hd[pos] = d;
        hi[pos] = i;
        while (pos > 0) {
            int parent = (pos - 1) / 2;
            if (!worse(hd[pos], hi[pos], hd[parent], hi[parent])) break;
            std::swap(hd[pos], hd[parent]);
            std::swap(hi[pos], hi[parent]);
            pos = parent;
        }
    } else if (worse(hd[0], hi[0], d, i)) {
        hd[0] = d;
        hi[0] = i;
        heap_sift_down(hd, hi, size, 0);
    }
}

constexpr int kTileQ = 6;   // query rows per register tile
constexpr int kTileB = 16;  // database points per register tile (two 8-float vectors)
// Per-point lists of the `cap` nearest candidates, shared by all threads: a pair's distance is
// computed once and offered to both points. Offers go to a buffer of 2*cap entries per point;
// when it fills, the cap smallest are kept (nth_element) and their largest becomes the point's
// threshold, which rejects most later candidates without taking the lock of the point's stripe.
// Candidates are ordered by (distance, index), so what is kept does not depend on the order of
// the offers, and so not on scheduling.
struct TopK {
    int cap = 0, buffer = 0;
    std::vector<float> dist;
    std::vector<int32_t> index;
    std::vector<int> count;
    std::vector<int32_t> worst_index;
    std::unique_ptr<std::atomic<float>[]> worst;  // [padded n]: +inf until the first compaction
    std::vector<std::mutex> stripes;

    TopK(int64_t n, int64_t padded, int cap_) : cap(cap_), buffer(2 * cap_), stripes(4096) {
        dist.assign(size_t(n) * buffer, 0.0f);
        index.assign(size_t(n) * buffer, 0);
        count.assign(size_t(n), 0);
        worst_index.assign(size_t(n), std::numeric_limits<int32_t>::max());
        worst.reset(new std::atomic<float>[size_t(padded)]);
        for (int64_t i = 0; i < padded; ++i)
            worst[size_t(i)].store(std::numeric_limits<float>::infinity(),
                                   std::memory_order_relaxed);
    }
    float threshold(int64_t row) const {
        return worst[size_t(row)].load(std::memory_order_relaxed);
    }

    // Sorts row's buffer by (distance, index) and keeps the first `keep`.
    void shrink(int64_t row, int keep) {
        float* d = &dist[size_t(row) * buffer];
        int32_t* ix = &index[size_t(row) * buffer];
        int& c = count[size_t(row)];
        thread_local std::vector<std::pair<float, int32_t>> items;
        items.resize(static_cast<size_t>(c));
        for (int t = 0; t < c; ++t) items[size_t(t)] = {d[t], ix[t]};
        if (keep < c) std::nth_element(items.begin(), items.begin() + (keep - 1), items.end());
        c = std::min(c, keep);
        for (int t = 0; t < c; ++t) {
            d[t] = items[size_t(t)].first;
            ix[t] = items[size_t(t)].second;
        }
    }

    void offer(int64_t row, float d, int32_t j) {
        std::lock_guard<std::mutex> lock(stripes[size_t(row) & 4095]);
        const float w = worst[size_t(row)].load(std::memory_order_relaxed);
        if (d > w || (d == w && j >= worst_index[size_t(row)])) return;
        int& c = count[size_t(row)];
        dist[size_t(row) * buffer + size_t(c)] = d;
        index[size_t(row) * buffer + size_t(c)] = j;
        if (++c == buffer) {
            shrink(row, cap);
            // The kept entries' largest is at position cap-1 after nth_element.
            const size_t last = size_t(row) * buffer + size_t(cap - 1);
            worst_index[size_t(row)] = index[last];
            worst[size_t(row)].store(dist[last], std::memory_order_relaxed);
        }
    }
};

// One scan: query rows [q_begin, q_end) against packed database tiles [tile_begin, tile_end).
struct Scan {
    const float* x;       // [n,d] rows
    const float* x_norm;  // [n] squared norms
    int64_t d, q_begin, q_end;
    const float* packed;       // tiles of 16 points laid out [dim][16]
    const float* packed_norm;  // [tiles*16], +inf for padding points
    int64_t tile_begin, tile_end;
    bool symmetric;  // the database points all come after the queries: offer to both
};

// Dot products of the query rows against the tiles, turned into squared distances
// (|q|^2 + |b|^2 - 2 q.b) and offered to the query's list, and with `symmetric` to the
// database point's list too.
__attribute__((always_inline)) inline void scan_chunk_body(const Scan& scan, TopK& heaps) {
    const float* x = scan.x;
    const float* x_norm = scan.x_norm;
    const int64_t d = scan.d, q_begin = scan.q_begin, q_end = scan.q_end;
    const float* packed = scan.packed;
    const float* packed_norm = scan.packed_norm;
    const int64_t tile_begin = scan.tile_begin, tile_end = scan.tile_end;
    const bool symmetric = scan.symmetric;
    for (int64_t q0 = q_begin; q0 < q_end; q0 += kTileQ) {
        const float* rows[kTileQ];
        float qn[kTileQ];
        for (int r = 0; r < kTileQ; ++r) {
            const int64_t q = std::min(q0 + r, q_end - 1);  // pad with the last row
            rows[r] = x + q * d;
            qn[r] = x_norm[q];
        }
        for (int64_t t = tile_begin; t < tile_end; ++t) {
            const float* p = packed + t * d * kTileB;
            v8f acc[kTileQ][2];
#pragma GCC unroll 6
            for (int r = 0; r < kTileQ; ++r) acc[r][0] = acc[r][1] = v8f{};
            for (int64_t k = 0; k < d; ++k) {
                v8f b0, b1;
                load8(b0, p + k * kTileB);
                load8(b1, p + k * kTileB + 8);
#pragma GCC unroll 6
                for (int r = 0; r < kTileQ; ++r) {
                    const float qv = rows[r][k];
                    acc[r][0] += qv * b0;
                    acc[r][1] += qv * b1;
                }
            }
            const int64_t j0 = t * kTileB;
            v8f bn0, bn1, wj0, wj1;
            load8(bn0, packed_norm + j0);
            load8(bn1, packed_norm + j0 + 8);
            if (symmetric) {
                float w[kTileB];
                for (int l = 0; l < kTileB; ++l) w[l] = heaps.threshold(j0 + l);
                load8(wj0, w);
                load8(wj1, w + 8);
            }
            for (int r = 0; r < kTileQ && q0 + r < q_end; ++r) {
                const int64_t q = q0 + r;
                const v8f dist0 = (qn[r] + bn0) - 2.0f * acc[r][0];
                const v8f dist1 = (qn[r] + bn1) - 2.0f * acc[r][1];
                // Non-strict: at an equal distance the smaller index wins (decided in offer()).
                const float wq = heaps.threshold(q);
                v8i to_q[2] = {dist0 <= wq, dist1 <= wq}, to_j[2] = {v8i{}, v8i{}};
                if (symmetric) {
                    to_j[0] = dist0 <= wj0;
                    to_j[1] = dist1 <= wj1;
                }
                // Most tiles hold no candidate once the heaps are full: one vector test.
                const v8i any = to_q[0] | to_q[1] | to_j[0] | to_j[1];
                uint64_t bits[4];
                std::memcpy(bits, &any, sizeof(bits));
                if ((bits[0] | bits[1] | bits[2] | bits[3]) == 0) continue;
                float lanes[kTileB];
                int32_t fq[kTileB], fj[kTileB];
                std::memcpy(lanes, &dist0, sizeof(v8f));
                std::memcpy(lanes + 8, &dist1, sizeof(v8f));
                std::memcpy(fq, &to_q[0], sizeof(v8i));
                std::memcpy(fq + 8, &to_q[1], sizeof(v8i));
                std::memcpy(fj, &to_j[0], sizeof(v8i));
                std::memcpy(fj + 8, &to_j[1], sizeof(v8i));
                for (int l = 0; l < kTileB; ++l) {
                    const int64_t j = j0 + l;
                    if (j == q || std::isinf(lanes[l])) continue;  // self, or a padding point
                    if (fq[l]) heaps.offer(q, lanes[l], int32_t(j));
                    if (fj[l]) heaps.offer(j, lanes[l], int32_t(q));
                }
            }
        }
    }
}

__attribute__((always_inline)) inline float squared_distance_body(const float* a, const float* b,
                                                                  int64_t d) {
    v8f s0{}, s1{};
    int64_t i = 0;
    for (; i + 16 <= d; i += 16) {
        v8f a0, a1, b0, b1;
        load8(a0, a + i);
        load8(a1, a + i + 8);
        load8(b0, b + i);
        load8(b1, b + i + 8);
        const v8f t0 = a0 - b0, t1 = a1 - b1;
        s0 += t0 * t0;
        s1 += t1 * t1;
    }
    s0 += s1;
    float lanes[8];
    std::memcpy(lanes, &s0, sizeof(lanes));
    float r = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) +
              ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
    for (; i < d; ++i) {
        const float t = a[i] - b[i];
        r += t * t;
    }
    return r;
}

// Run-time dispatch: the library is built for the baseline x86-64, but the hot loops are worth
// AVX2+FMA where the CPU has them (the results differ only in rounding between the two).
__attribute__((target("avx2,fma"))) void scan_chunk_avx2(const Scan& scan, TopK& heaps) {
    scan_chunk_body(scan, heaps);
}
void scan_chunk_generic(const Scan& scan, TopK& heaps) { scan_chunk_body(scan, heaps); }
__attribute__((target("avx2,fma"))) float squared_distance_avx2(const float* a, const float* b,
                                                                int64_t d) {
    return squared_distance_body(a, b, d);
}
float squared_distance_generic(const float* a, const float* b, int64_t d) {
    return squared_distance_body(a, b, d);
}

void scan_chunk(const Scan& scan, TopK& heaps) {
    if (cpu_has_avx2_fma())
        scan_chunk_avx2(scan, heaps);
    else
        scan_chunk_generic(scan, heaps);
}

using DistanceFn = float (*)(const float*, const float*, int64_t);
DistanceFn distance_fn() {
    static const DistanceFn fn =
        cpu_has_avx2_fma() ? &squared_distance_avx2 : &squared_distance_generic;
    return fn;
}

inline float squared_distance_impl(const float* a, const float* b, int64_t d) {
    return distance_fn()(a, b, d);
}

// Sorts candidates by (distance, index) and writes the first k into row `i` of `g`.
void write_row(KnnGraph& g, int64_t i, std::vector<std::pair<float, int32_t>>& cand) {
    std::sort(cand.begin(), cand.end());
    for (int j = 0; j < g.k; ++j) {
        g.index[size_t(i) * g.k + j] = cand[size_t(j)].second;
        g.distance2[size_t(i) * g.k + j] = cand[size_t(j)].first;
    }
}

KnnGraph make_graph(int64_t n, int k) {
    KnnGraph g;
    g.n = n;
    g.k = k;
    g.index.assign(size_t(n) * k, 0);
    g.distance2.assign(size_t(n) * k, 0.0f);
    return g;
}

// hnswlib space with our SIMD distance (hnswlib's own only uses AVX when the whole build does).
class L2Space : public hnswlib::SpaceInterface<float> {
public:
    explicit L2Space(size_t d) : dim_(d) {}
    size_t get_data_size() override { return dim_ * sizeof(float); }
    hnswlib::DISTFUNC<float> get_dist_func() override {
        return cpu_has_avx2_fma() ? &distance_avx2 : &distance_generic;
    }
    void* get_dist_func_param() override { return &dim_; }

private:
    __attribute__((target("avx2,fma"))) static float distance_avx2(const void* a, const void* b,
                                                                   const void* param) {
        return squared_distance_body(static_cast<const float*>(a), static_cast<const float*>(b),
                                     int64_t(*static_cast<const size_t*>(param)));
    }
    static float distance_generic(const void* a, const void* b, const void* param) {
        return squared_distance_body(static_cast<const float*>(a), static_cast<const float*>(b),
                                     int64_t(*static_cast<const size_t*>(param)));
    }
    size_t dim_;
};

}  // namespace

float squared_distance(const float* a, const float* b, int64_t d) {
    return squared_distance_impl(a, b, d);
}

KnnGraph knn_exact(const float* x, int64_t n, int64_t d, int k, ThreadPool& pool) {
    CONVSCOPE_CHECK(k >= 1 && k <= n - 1, "neighbour count out of range");
    KnnGraph g = make_graph(n, k);
    // Pack the database in tiles of 16 points, dimension-major, so one tile row is two vectors.
    const int64_t tiles = (n + kTileB - 1) / kTileB;
    std::vector<float> packed(size_t(tiles * kTileB * d), 0.0f);
    std::vector<float> packed_norm(size_t(tiles * kTileB), std::numeric_limits<float>::infinity());
    std::vector<float> norm(static_cast<size_t>(n));
    pool.for_range(n, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
            const float* row = x + i * d;
            double s = 0.0;
            for (int64_t c = 0; c < d; ++c) s += double(row[c]) * row[c];
            norm[size_t(i)] = float(s);
            packed_norm[size_t(i)] = float(s);
            float* tile = &packed[size_t((i / kTileB) * kTileB * d)];
            for (int64_t c = 0; c < d; ++c) tile[c * kTileB + i % kTileB] = row[c];
        }
    });
    // Keep a few spare candidates: the final order uses directly recomputed distances.
    TopK heaps(n, tiles * kTileB, int(std::min<int64_t>(n - 1, k + 8)));
    // Blocks of points small enough that a block of queries and a block of packed points stay
    // in L2 together; only block pairs (I, J) with J >= I are scanned, each pair's distance
    // serving both points (the diagonal blocks are scanned in full, one direction per pair).
    const int64_t block = std::clamp<int64_t>((393216 / (d * 4)) / 48 * 48, 48, 4800);
    const int64_t blocks = (n + block - 1) / block;
    std::vector<std::pair<int64_t, int64_t>> pairs;
    for (int64_t bi = 0; bi < blocks; ++bi)
        for (int64_t bj = bi; bj < blocks; ++bj) pairs.emplace_back(bi, bj);
    pool.for_range(int64_t(pairs.size()), [&](int64_t p0, int64_t p1) {
        for (int64_t pi = p0; pi < p1; ++pi) {
            const auto [bi, bj] = pairs[size_t(pi)];
            const int64_t q_begin = bi * block, q_end = std::min(n, q_begin + block);
            const int64_t t_begin = bj * block / kTileB;
            const int64_t t_end = std::min(tiles, (bj + 1) * block / kTileB);
            Scan scan;
            scan.x = x;
            scan.x_norm = norm.data();
            scan.d = d;
            scan.q_begin = q_begin;
            scan.q_end = q_end;
            scan.packed = packed.data();
            scan.packed_norm = packed_norm.data();
            scan.tile_begin = t_begin;
            scan.tile_end = t_end;
            scan.symmetric = bi != bj;
            scan_chunk(scan, heaps);
        }
    });
    pool.for_range(n, [&](int64_t q_begin, int64_t q_end) {
        std::vector<std::pair<float, int32_t>> cand;
        for (int64_t i = q_begin; i < q_end; ++i) {
            heaps.shrink(i, heaps.cap);
            cand.clear();
            const int32_t* hi = &heaps.index[size_t(i) * heaps.buffer];
            for (int c = 0; c < heaps.count[size_t(i)]; ++c)
                cand.emplace_back(squared_distance_impl(x + i * d, x + int64_t(hi[c]) * d, d),
                                  hi[c]);
            write_row(g, i, cand);
        }
    });
    return g;
}

KnnGraph knn_hnsw(const float* x, int64_t n, int64_t d, int k, const KnnOptions& options,
                  ThreadPool& pool) {
    CONVSCOPE_CHECK(k >= 1 && k <= n - 1, "neighbour count out of range");
    KnnGraph g = make_graph(n, k);
    // One shard per thread (at most 4, each with more than k points): each is built by a single
    // thread, which makes the graph, and so the result, independent of scheduling.
    int64_t shards = std::min<int64_t>(std::min(pool.size(), 4), n / (int64_t(k) + 1));
    shards = std::max<int64_t>(shards, 1);
    const int ef = options.hnsw_ef > 0 ? options.hnsw_ef : std::max(2 * k, 100);
    L2Space space{size_t(d)};
    std::vector<std::unique_ptr<hnswlib::HierarchicalNSW<float>>> index(
        static_cast<size_t>(shards));
    pool.for_each_task(shards, [&](int64_t s) {
        const int64_t b = n * s / shards, e = n * (s + 1) / shards;
        auto h = std::make_unique<hnswlib::HierarchicalNSW<float>>(
            &space, size_t(e - b), size_t(options.hnsw_m), size_t(options.hnsw_ef_construction),
            size_t(options.seed + uint64_t(s) * 7919u));
        for (int64_t i = b; i < e; ++i) h->addPoint(x + i * d, hnswlib::labeltype(i));
        h->setEf(size_t(ef));
        index[size_t(s)] = std::move(h);
    });
    pool.for_range(n, [&](int64_t q_begin, int64_t q_end) {
        std::vector<std::pair<float, int32_t>> cand;
        for (int64_t i = q_begin; i < q_end; ++i) {
            cand.clear();
            for (auto& h : index) {
                auto found = h->searchKnn(x + i * d, size_t(k) + 1);
                while (!found.empty()) {
                    const auto& top = found.top();
                    if (int64_t(top.second) != i) cand.emplace_back(top.first, int32_t(top.second));
                    found.pop();
                }
            }
            if (int64_t(cand.size()) < k) {
                // The graph search came up short (rare): scan this row exhaustively.
                cand.clear();
                for (int64_t j = 0; j < n; ++j)
                    if (j != i)
                        cand.emplace_back(squared_distance_impl(x + i * d, x + j * d, d),
                                          int32_t(j));
            }
            write_row(g, i, cand);
        }
    });
    return g;
}

KnnGraph knn_grid_2d(const float* y, int64_t n, int k, ThreadPool& pool) {
    CONVSCOPE_CHECK(k >= 1 && k <= n - 1, "neighbour count out of range");
    KnnGraph g = make_graph(n, k);
    double lo[2] = {y[0], y[1]}, hi[2] = {y[0], y[1]};
    for (int64_t i = 0; i < n; ++i)
        for (int c = 0; c < 2; ++c) {
            lo[c] = std::min(lo[c], double(y[2 * i + c]));
            hi[c] = std::max(hi[c], double(y[2 * i + c]));
        }
    // About two points per cell on average.
    const int64_t side = std::max<int64_t>(1, int64_t(std::sqrt(double(n) / 2.0)));
    double cell[2];
    for (int c = 0; c < 2; ++c) {
        const double span = hi[c] - lo[c];
        cell[c] = span > 0 ? span / double(side) : 1.0;
    }
    auto cell_of = [&](double v, int c) {
        const int64_t id = int64_t((v - lo[c]) / cell[c]);
        return std::clamp<int64_t>(id, 0, side - 1);
    };
    // Counting sort of the points by cell (stable: by index inside a cell).
    std::vector<int64_t> start(size_t(side * side + 1), 0);
    std::vector<int64_t> cell_id(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
        cell_id[size_t(i)] = cell_of(y[2 * i + 1], 1) * side + cell_of(y[2 * i], 0);
        ++start[size_t(cell_id[size_t(i)] + 1)];
    }
    for (int64_t c = 0; c < side * side; ++c) start[size_t(c + 1)] += start[size_t(c)];
    std::vector<int32_t> order(static_cast<size_t>(n));
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < n; ++i)
            order[size_t(fill[size_t(cell_id[size_t(i)])]++)] = int32_t(i);
    }
    pool.for_range(n, [&](int64_t q_begin, int64_t q_end) {
        std::vector<float> hd(static_cast<size_t>(k));
        std::vector<int32_t> hi_(static_cast<size_t>(k));
        std::vector<std::pair<float, int32_t>> cand;
        for (int64_t i = q_begin; i < q_end; ++i) {
            const double px = y[2 * i], py = y[2 * i + 1];
            const int64_t cx = cell_of(px, 0), cy = cell_of(py, 1);
            int size = 0;
            auto visit = [&](int64_t gx, int64_t gy) {
                if (gx < 0 || gy < 0 || gx >= side || gy >= side) return;
                const int64_t c = gy * side + gx;
                for (int64_t s = start[size_t(c)]; s < start[size_t(c + 1)]; ++s) {
                    const int32_t j = order[size_t(s)];
                    if (j == i) continue;
                    const double dx = px - y[2 * int64_t(j)], dy = py - y[2 * int64_t(j) + 1];
                    heap_push(hd.data(), hi_.data(), size, k, float(dx * dx + dy * dy), j);
                }
            };
            for (int64_t r = 0;; ++r) {
                if (r == 0) {
                    visit(cx, cy);
                } else {
                    for (int64_t t = -r; t <= r; ++t) {
                        visit(cx + t, cy - r);
                        visit(cx + t, cy + r);
                    }
                    for (int64_t t = -r + 1; t <= r - 1; ++t) {
                        visit(cx - r, cy + t);
                        visit(cx + r, cy + t);
                    }
                }
                const bool all =
                    cx - r <= 0 && cy - r <= 0 && cx + r >= side - 1 && cy + r >= side - 1;
                if (all) break;
                if (size == k) {
                    // Distance from the point to the nearest cell not yet visited.
                    const double inf = std::numeric_limits<double>::infinity();
                    double bound = inf;
                    if (cx - r > 0)
                        bound = std::min(bound, px - (lo[0] + double(cx - r) * cell[0]));
                    if (cx + r < side - 1)
                        bound = std::min(bound, lo[0] + double(cx + r + 1) * cell[0] - px);
                    if (cy - r > 0)
                        bound = std::min(bound, py - (lo[1] + double(cy - r) * cell[1]));
                    if (cy + r < side - 1)
                        bound = std::min(bound, lo[1] + double(cy + r + 1) * cell[1] - py);
                    bound = std::max(bound, 0.0);
                    if (double(hd[0]) <= bound * bound) break;
                }
            }
            cand.clear();
            for (int c = 0; c < size; ++c) cand.emplace_back(hd[size_t(c)], hi_[size_t(c)]);
            write_row(g, i, cand);
        }
    });
    return g;
}

}  // namespace convscope::detail
