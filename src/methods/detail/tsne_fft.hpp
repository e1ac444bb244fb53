#pragma once
// FFT-accelerated interpolation for the repulsive forces of t-SNE (Linderman, Rachh, Hoskins,
// Steinerberger & Kluger, "Fast interpolation-based t-SNE for improved visualization of
// single-cell RNA-seq data", Nature Methods 2019), written for convscope.
//
// The embedding's bounding square is cut into B x B boxes, each holding p x p equispaced nodes,
// so all nodes form one uniform G x G grid (G = B p). Each point's charges are spread to the
// nodes of its box with Lagrange weights; the node potentials are the charges convolved with the
// kernel on the grid, a Toeplitz product done by zero-padded FFTs of size 2G x 2G; the potentials
// are interpolated back to the points with the same weights. Cost O(N p^2 + G^2 log G).
// Plans and kernel spectra are kept between calls while the grid still fits the embedding.
#include <cstdint>
#include <memory>
#include <vector>

#include "convscope/methods/tsne.hpp"
#include "methods/detail/tsne_parallel.hpp"

namespace convscope::detail {

class FftRepulsion {
public:
    explicit FftRepulsion(const FftOptions& options);
    ~FftRepulsion();
    FftRepulsion(const FftRepulsion&) = delete;
    FftRepulsion& operator=(const FftRepulsion&) = delete;

    // y [n,2] float64. Writes rep [n,2] = sum_j q_ij^2 (y_i - y_j) with q_ij = 1/(1+|y_i-y_j|^2)
    // and returns Z = sum_{i != j} q_ij.
    double repulsion(const double* y, int64_t n, double* rep, ThreadPool& pool);

    // Grid nodes per side used by the last call (for benchmarks).
    int64_t last_grid() const { return last_grid_; }

private:
    struct Plan;
    // Where the grid lies: its lower corner, the embedding's centre, the interval width.
    struct Frame {
        double origin[2] = {0, 0}, centre[2] = {0, 0};
        double width = 1;
    };
    // The steps of repulsion(), in order.
    Frame fit_grid(const double* y, int64_t n, ThreadPool& pool);
    void sort_points(const double* y, int64_t n, const Frame& f, ThreadPool& pool);
    void spread_charges(const double* y, int64_t n, const Frame& f, ThreadPool& pool);
    double convolve(ThreadPool& pool);
    double interpolate(int64_t n, const Frame& f, double* rep, ThreadPool& pool);
    FftOptions options_;
    std::unique_ptr<Plan> plan_;
    int64_t last_grid_ = 0;
    // Per-point scratch kept between calls; weights_ and coords_ are in box order.
    std::vector<int32_t> box_of_, order_;
    std::vector<int64_t> box_start_;
    std::vector<float> weights_;
    std::vector<double> coords_;
};

}  // namespace convscope::detail
