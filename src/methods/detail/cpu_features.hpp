#pragma once
// What the processor runs, asked once per process: the kernels compiled for wider registers
// (__attribute__((target(...)))) are taken only where these say so, the plain build elsewhere.

namespace convscope::detail {

inline bool cpu_has_avx2_fma() {
#if defined(__x86_64__) || defined(__i386__)
    static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return yes;
#else
    return false;
#endif
}

inline bool cpu_has_avx512() {  // AVX-512 F and VL, with AVX2 and FMA
#if defined(__x86_64__) || defined(__i386__)
    static const bool yes = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
    return yes;
#else
    return false;
#endif
}

}  // namespace convscope::detail
