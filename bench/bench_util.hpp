#pragma once
// Small timing helpers shared by the benchmarks.
#include <algorithm>
#include <chrono>
#include <functional>
#include <vector>

namespace convscope::bench {

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Wall-clock seconds that f takes.
inline double seconds_of(const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return seconds_since(t0);
}

// The median (the mean of the two middle values for an even count); 0 for none.
inline double median(std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Runs each function once per round, in an order rotated from round to round, so that machine
// noise and order effects hit all of them alike; returns every function's time in every round.
inline std::vector<std::vector<double>> interleaved(const std::vector<std::function<void()>>& fns, int rounds) {
    std::vector<std::vector<double>> times(fns.size());
    for (int r = 0; r < rounds; ++r)
        for (size_t k = 0; k < fns.size(); ++k) {
            const size_t i = (k + static_cast<size_t>(r)) % fns.size();
            times[i].push_back(seconds_of(fns[i]));
        }
    return times;
}

// The median over rounds of a / b, each pair measured in the same round.
inline double median_ratio(const std::vector<double>& a, const std::vector<double>& b) {
    std::vector<double> r;
    for (size_t i = 0; i < a.size(); ++i) r.push_back(a[i] / b[i]);
    return median(r);
}

}  // namespace convscope::bench
