// Benchmark of the t-SNE step of `convscope embed`: time per stage and embedding quality.
//
//   cmake --build build --target bench_tsne
//   build/bench/bench_tsne [features.npy [labels.npy]] [--n 70000] [--threads 2] [--repeat 1]
//                          [--knn auto|exact|hnsw] [--save Y.npy] [--compare OTHER.npy]
//
// A float32 features file is mapped, not read (map_npy). --save writes the embedding; --compare
// scores another tool's embedding of the same points with the same metrics and the same
// feature-space neighbours. --recall S checks the neighbour lists of S evenly spaced points
// against brute force (the share of each point's true k and 10 nearest that its list holds).
// --kernel exponential: FIt-SNE's affinities (AffinityKernel::Exponential).
//
// With a features file (N,D float32) it embeds those (labels.npy, if given, for the kNN
// accuracy). Without one it makes synthetic CNN-like features: 10 Gaussian clusters in a
// 16-dimensional latent space, mapped to 128 dimensions by a random linear map and a ReLU, plus
// a little noise (low intrinsic dimension, as penultimate-layer features have). Default options
// (perplexity 30, the automatic number of iterations unless --iterations is given), so the
// figures match what `embed` does.
#include <ATen/ATen.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/methods/tsne.hpp"

namespace {

at::Tensor synthetic_features(int64_t n, int64_t d, at::Tensor& labels) {
    const int classes = 10, latent = 16;
    std::mt19937 rng(2024);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    std::vector<float> centres(size_t(classes * latent)), w(size_t(latent * d)),
        bias(static_cast<size_t>(d));
    for (auto& v : centres) v = 2.5f * normal(rng);
    for (auto& v : w) v = normal(rng) / std::sqrt(float(latent));
    for (auto& v : bias) v = 0.5f * normal(rng);
    at::Tensor x = at::empty({n, d}, at::kFloat);
    labels = at::empty({n}, at::kLong);
    float* xp = x.data_ptr<float>();
    int64_t* lp = labels.data_ptr<int64_t>();
    std::vector<float> z(static_cast<size_t>(latent));
    for (int64_t i = 0; i < n; ++i) {
        const int c = int(rng() % classes);
        lp[i] = c;
        for (int l = 0; l < latent; ++l)
            z[size_t(l)] = centres[size_t(c * latent + l)] + normal(rng);
        for (int64_t j = 0; j < d; ++j) {
            float v = bias[size_t(j)];
            for (int l = 0; l < latent; ++l) v += w[size_t(l * d + j)] * z[size_t(l)];
            xp[i * d + j] = std::max(0.0f, v) + 0.05f * normal(rng);
        }
    }
    return x;
}

}  // namespace

// The share of the true k (and 10) nearest neighbours of `sample` evenly spaced points (itself
// excluded) that the graph's lists hold, the truth by brute force in blocks of rows.
std::pair<double, double> knn_recall(const at::Tensor& x, const convscope::KnnGraph& g, int64_t sample) {
    const int64_t n = x.size(0), k = g.k;
    const at::Tensor idx = at::arange(0, n, std::max<int64_t>(1, n / sample), at::kLong).slice(0, 0, sample);
    const at::Tensor q = x.index_select(0, idx).to(at::kFloat);
    const at::Tensor qq = q.pow(2).sum(1, true);
    at::Tensor best_d = at::full({q.size(0), k + 1}, INFINITY), best_i = at::zeros({q.size(0), k + 1}, at::kLong);
    for (int64_t r0 = 0; r0 < n; r0 += 65536) {
        const at::Tensor b = x.slice(0, r0, std::min(n, r0 + 65536)).to(at::kFloat);
        const at::Tensor d = qq + b.pow(2).sum(1).unsqueeze(0) - 2 * at::mm(q, b.t());
        const auto [dv, di] = at::topk(at::cat({best_d, d}, 1), k + 1, 1, /*largest=*/false);
        best_i = at::cat({best_i, at::arange(r0, r0 + b.size(0), at::kLong).unsqueeze(0).expand({q.size(0), -1})}, 1)
                     .gather(1, di);
        best_d = dv;
    }
    double hit_k = 0, hit_10 = 0;
    for (int64_t s = 0; s < q.size(0); ++s) {
        const int64_t i = idx[s].item<int64_t>();
        std::vector<int64_t> truth;
        for (int64_t j = 0; j <= k && int64_t(truth.size()) < k; ++j)
            if (best_i[s][j].item<int64_t>() != i) truth.push_back(best_i[s][j].item<int64_t>());
        const int32_t* list = g.index.data() + i * k;
        for (int64_t j = 0; j < k; ++j) {
            const bool found = std::find(list, list + k, int32_t(truth[size_t(j)])) != list + k;
            hit_k += found;
            if (j < 10) hit_10 += std::find(list, list + 10, int32_t(truth[size_t(j)])) != list + 10;
        }
    }
    return {hit_k / double(q.size(0) * k), hit_10 / double(q.size(0) * 10)};
}

int main(int argc, char** argv) {
    std::vector<std::string> paths;
    int64_t n = 70000;
    int threads = 2, repeat = 1;
    std::string knn = "auto", save, compare, kernel = "gaussian";
    double lr = 0.0;
    int iterations = 0;
    double fft_width = 0.0;
    int fft_nodes = 0;
    double momentum = 0.0;
    double max_step = -1.0;  // < 0: the default
    int64_t recall_sample = 0;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--n" && i + 1 < argc) {
            n = std::atoll(argv[++i]);
        } else if (a == "--threads" && i + 1 < argc) {
            threads = std::atoi(argv[++i]);
        } else if (a == "--knn" && i + 1 < argc) {
            knn = argv[++i];
        } else if (a == "--lr" && i + 1 < argc) {
            lr = std::atof(argv[++i]);
        } else if (a == "--momentum" && i + 1 < argc) {
            momentum = std::atof(argv[++i]);
        } else if (a == "--fft-nodes" && i + 1 < argc) {
            fft_nodes = std::atoi(argv[++i]);
        } else if (a == "--fft-width" && i + 1 < argc) {
            fft_width = std::atof(argv[++i]);
        } else if (a == "--kernel" && i + 1 < argc) {
            kernel = argv[++i];
        } else if (a == "--max-step" && i + 1 < argc) {
            max_step = std::atof(argv[++i]);
        } else if (a == "--recall" && i + 1 < argc) {
            recall_sample = std::atoll(argv[++i]);
        } else if (a == "--iterations" && i + 1 < argc) {
            iterations = std::atoi(argv[++i]);
        } else if (a == "--save" && i + 1 < argc) {
            save = argv[++i];
        } else if (a == "--compare" && i + 1 < argc) {
            compare = argv[++i];
        } else if (a == "--repeat" && i + 1 < argc) {
            repeat = std::atoi(argv[++i]);
        } else if (a == "--help" || a == "-h") {
            std::printf(
                "usage: bench_tsne [features.npy [labels.npy]] [--n N] [--threads T] "
                "[--repeat R] [--knn auto|exact|hnsw] [--lr L] [--iterations I] [--fft-width W] [--fft-nodes P] [--momentum M] [--max-step S] [--kernel gaussian|exponential]\n");
            return 0;
        } else {
            paths.push_back(a);
        }
    }
    try {
        at::Tensor features, labels;
        if (!paths.empty()) {
            try {
                features = convscope::map_npy(paths[0]);
            } catch (const convscope::Error&) {
                features = convscope::read_npy(paths[0]).to(at::kFloat).contiguous();
            }
            if (features.dim() != 2) throw convscope::Error(paths[0] + ": expected an (N,D) array");
            if (paths.size() > 1) labels = convscope::read_npy(paths[1]).to(at::kLong).contiguous();
            n = features.size(0);
        } else {
            features = synthetic_features(n, 128, labels);
        }
        std::printf("t-SNE benchmark: N=%lld D=%lld threads=%d (%s)\n", (long long)n,
                    (long long)features.size(1), threads,
                    paths.empty() ? "synthetic clusters" : paths[0].c_str());
        convscope::TsneOptions options;
        convscope::RunContext ctx;
        ctx.threads = threads;
        ctx.seed = 42;
        if (lr > 0) options.learning_rate = lr;
        if (iterations > 0) options.iterations = iterations;
        if (fft_width > 0) options.fft.max_interval_width = fft_width;
        if (fft_nodes > 0) options.fft.nodes_per_interval = fft_nodes;
        if (momentum > 0) options.momentum = momentum;
        if (max_step >= 0) options.max_step = max_step;
        if (kernel == "exponential") options.kernel = convscope::AffinityKernel::Exponential;
        else if (kernel != "gaussian") throw convscope::UsageError("--kernel must be gaussian or exponential");
        if (knn == "exact") options.knn.method = convscope::KnnOptions::Method::Exact;
        if (knn == "hnsw") options.knn.method = convscope::KnnOptions::Method::Hnsw;
        std::vector<double> totals;
        for (int r = 0; r < repeat; ++r) {
            const auto t0 = std::chrono::steady_clock::now();
            const convscope::TsneResult result = convscope::tsne(features, options, ctx);
            const double total =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            totals.push_back(total);
            const auto m0 = std::chrono::steady_clock::now();
            const double accuracy = labels.defined() ? convscope::knn_label_accuracy(
                                                           result.embedding, labels, 10, threads)
                                                     : std::nan("");
            const double preservation = convscope::neighbour_preservation(
                result.knn, result.embedding.data_ptr<float>(), 10, threads);
            const double metrics =
                std::chrono::duration<double>(std::chrono::steady_clock::now() - m0).count();
            std::printf(
                "run %d: total %.2f s = pca/init %.2f + neighbours %.2f + affinities %.2f "
                "+ optimisation %.2f; %s gradient, k=%d, lr=%.1f\n",
                r + 1, total, result.pca_seconds, result.neighbours_seconds,
                result.affinities_seconds, result.optimisation_seconds,
                result.exact ? "exact" : "FFT", result.neighbours, result.learning_rate);
            const at::Tensor lo = std::get<0>(result.embedding.min(0)),
                             hi = std::get<0>(result.embedding.max(0));
            std::printf(
                "        KL %.4f, 10-NN accuracy %.4f, neighbour preservation %.4f "
                "(metrics %.2f s); extent %.1f x %.1f\n",
                result.kl_divergence, accuracy, preservation, metrics,
                (hi[0] - lo[0]).item<double>(), (hi[1] - lo[1]).item<double>());
            if (recall_sample > 0) {
                const auto [at_k, at_10] = knn_recall(features, result.knn, recall_sample);
                std::printf("        neighbour lists against brute force on %lld points: recall@%d %.4f, recall@10 %.4f\n",
                            (long long)recall_sample, result.knn.k, at_k, at_10);
            }
            if (!save.empty()) convscope::write_npy(save, result.embedding);
            if (!compare.empty()) {
                const at::Tensor other = convscope::read_npy(compare).to(at::kFloat).contiguous();
                if (other.size(0) != n || other.size(1) != 2)
                    throw convscope::Error(compare + ": expected an (N,2) embedding of the same points");
                const double oa = labels.defined() ? convscope::knn_label_accuracy(other, labels, 10, threads)
                                                   : std::nan("");
                const double op = convscope::neighbour_preservation(result.knn, other.data_ptr<float>(), 10, threads);
                std::printf("        %s: 10-NN accuracy %.4f, neighbour preservation %.4f (same neighbours)\n",
                            compare.c_str(), oa, op);
            }
        }
        std::sort(totals.begin(), totals.end());
        std::printf("median total %.2f s over %d run(s)\n", totals[totals.size() / 2], repeat);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "bench_tsne: %s\n", e.what());
        return 1;
    }
    return 0;
}
