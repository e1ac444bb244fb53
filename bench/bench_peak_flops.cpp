// The processor's float32 peak: independent fused multiply-adds in the widest registers it has
// (AVX-512, else AVX2), on 1 thread and on all, in GFLOP/s. The bound against which the forward
// passes' speed is read (bench/RESULTS.md, "The memory allocator").
// Usage: bench_peak_flops [--threads T]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr long kRounds = 100000000;
constexpr int kChains = 12;  // more independent chains than FMA latency x units, so none waits

typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));

// The chains in vectors of type V; a * b + c becomes one fused multiply-add where the caller's
// target has them.
template <class V>
__attribute__((always_inline)) inline float chains() {
    V a[kChains];
    V b = V{} + 1.0000001f, c = V{} + 1e-7f;
    for (int i = 0; i < kChains; ++i) a[i] = V{} + float(i);
    for (long k = 0; k < kRounds; ++k)
#pragma GCC unroll 12
        for (int i = 0; i < kChains; ++i) a[i] = a[i] * b + c;
    float s = 0;
    for (int i = 0; i < kChains; ++i)
        for (size_t l = 0; l < sizeof(V) / sizeof(float); ++l) s += a[i][l];
    return s;
}

__attribute__((target("avx512f"))) float chains_avx512() { return chains<V16>(); }
__attribute__((target("avx2,fma"))) float chains_avx2() { return chains<V8>(); }

// GFLOP/s of `threads` threads each running the chains once.
double gflops(int threads, bool avx512) {
    std::vector<std::thread> pool;
    std::vector<float> sink(threads);
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
        pool.emplace_back([&, t] { sink[t] = avx512 ? chains_avx512() : chains_avx2(); });
    for (auto& th : pool) th.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double lanes = avx512 ? 16 : 8;
    volatile float keep = sink[0];
    (void)keep;
    return 2.0 * lanes * kChains * double(kRounds) * threads / s / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
    int threads = int(std::thread::hardware_concurrency());
    for (int i = 1; i + 1 < argc; ++i)
        if (std::string(argv[i]) == "--threads") threads = std::atoi(argv[i + 1]);
    if (threads < 1) threads = 1;
    const bool avx512 = __builtin_cpu_supports("avx512f");
    if (!avx512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        std::fprintf(stderr, "bench_peak_flops: this processor has neither AVX-512 nor AVX2 with FMA\n");
        return 1;
    }
    const double one = gflops(1, avx512);
    const double all = gflops(threads, avx512);
    std::printf("float32 peak (%s FMA): 1 thread %.1f GFLOP/s, %d threads %.1f GFLOP/s\n",
                avx512 ? "AVX-512" : "AVX2", one, threads, all);
    return 0;
}
