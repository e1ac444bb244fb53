#pragma once
// Progress reporting for long work: a callback that receives the fraction done in [0,1] and
// returns false to cancel. The CLI draws a bar on stderr, the server sends progress events.
#include <chrono>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace convscope {

using ProgressFn = std::function<bool(double fraction)>;

// Calls `fn` (if set) and throws Cancelled when it returns false.
void report_progress(const ProgressFn& fn, double fraction);

// A ProgressFn that draws "label [#####     ] 42%" on stderr: a redrawn bar on a terminal,
// a plain line every 10% otherwise. Silent for work that ends within `quiet_seconds`.
ProgressFn stderr_progress(const std::string& label, double quiet_seconds = 2.0);

// A ProgressFn reporting [lo, hi] of an outer one (none when outer is empty).
ProgressFn sub_progress(const ProgressFn& outer, double lo, double hi);

// Progress of work in named stages of known relative weight: part(stage) is a ProgressFn for
// (a share of) that stage, scaled into the whole; finish(stage) reports the stage's end and
// records its wall seconds. Stages are finished in the order given.
class StagedProgress {
public:
    StagedProgress(ProgressFn outer, std::vector<std::pair<std::string, double>> weights);
    // [lo, hi] of the stage, as fractions of it.
    ProgressFn part(const std::string& stage, double lo = 0.0, double hi = 1.0) const;
    // Reports the fraction f of the stage done (cancellable).
    void report(const std::string& stage, double f) const;
    void finish(const std::string& stage);
    // Seconds per finished stage, in order.
    const std::vector<std::pair<std::string, double>>& seconds() const { return seconds_; }

private:
    std::pair<double, double> range(const std::string& stage) const;
    ProgressFn outer_;
    std::vector<std::pair<std::string, double>> weights_;  // normalised to sum 1
    std::vector<std::pair<std::string, double>> seconds_;
    std::chrono::steady_clock::time_point last_;
};

}  // namespace convscope
