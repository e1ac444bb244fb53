// Progress callbacks: cancellation and the stderr bar.
#include "convscope/runtime/progress.hpp"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <mutex>

#include "convscope/runtime/error.hpp"
#include "runtime/detail/progress_printer.hpp"

namespace convscope {

void report_progress(const ProgressFn& fn, double fraction) {
    if (fn && !fn(fraction)) throw Cancelled();
}

ProgressFn sub_progress(const ProgressFn& outer, double lo, double hi) {
    if (!outer) return {};
    return [outer, lo, hi](double f) { return outer(lo + (hi - lo) * std::clamp(f, 0.0, 1.0)); };
}

StagedProgress::StagedProgress(ProgressFn outer, std::vector<std::pair<std::string, double>> weights)
    : outer_(std::move(outer)), weights_(std::move(weights)), last_(std::chrono::steady_clock::now()) {
    double total = 0;
    for (const auto& [name, w] : weights_) {
        CONVSCOPE_CHECK(w >= 0, "stage weights are >= 0");
        total += w;
    }
    CONVSCOPE_CHECK(total > 0, "some stage has a weight");
    for (auto& [name, w] : weights_) w /= total;
}

std::pair<double, double> StagedProgress::range(const std::string& stage) const {
    double lo = 0;
    for (const auto& [name, w] : weights_) {
        if (name == stage) return {lo, std::min(1.0, lo + w)};
        lo += w;
    }
    CONVSCOPE_CHECK(false, "a stage of the plan");
    return {0, 0};
}

ProgressFn StagedProgress::part(const std::string& stage, double lo, double hi) const {
    const auto [a, b] = range(stage);
    return sub_progress(outer_, a + (b - a) * lo, a + (b - a) * hi);
}

void StagedProgress::report(const std::string& stage, double f) const {
    const auto [a, b] = range(stage);
    report_progress(outer_, a + (b - a) * std::clamp(f, 0.0, 1.0));
}

void StagedProgress::finish(const std::string& stage) {
    report(stage, 1.0);
    const auto now = std::chrono::steady_clock::now();
    seconds_.emplace_back(stage, std::chrono::duration<double>(now - last_).count());
    last_ = now;
}

namespace detail {

std::string progress_bar_text(const std::string& label, double fraction, int width) {
    const int filled = int(std::floor(fraction * width + 1e-9));
    const int percent = int(std::floor(fraction * 100.0 + 1e-9));
    std::string text = label.empty() ? "[" : label + " [";
    text.append(size_t(filled), '#');
    text.append(size_t(width - filled), ' ');
    text += "] " + std::to_string(percent) + "%";
    return text;
}

ProgressFn make_progress_printer(const std::string& label, double quiet_seconds, bool is_tty,
                                 std::function<void(const std::string&)> write,
                                 std::function<double()> now_seconds) {
    // Shared state: a ProgressFn is copied around and may be called from worker threads.
    struct State {
        std::mutex mutex;
        double start = 0;
        bool drawing = false;   // something is on screen for the current bar
        int last_shown = -1;    // last percent (tty) or decile (plain) printed
        size_t last_width = 0;  // length of the last tty line, to blank leftovers
        bool finished = false;  // 100% was reached; repeated 100% calls print nothing
    };
    auto state = std::make_shared<State>();
    state->start = now_seconds();
    return [=](double fraction) {
        if (std::isnan(fraction)) return true;
        fraction = std::min(1.0, std::max(0.0, fraction));
        std::lock_guard<std::mutex> lock(state->mutex);
        const bool done = fraction >= 1.0;
        if (done && state->finished) return true;
        if (!done) state->finished = false;
        // Quiet period: short work prints nothing at all (also at 100%).
        if (!state->drawing && now_seconds() - state->start < quiet_seconds) {
            if (done) state->finished = true;
            return true;
        }
        const std::string text = progress_bar_text(label, fraction);
        if (is_tty) {
            const int percent = int(std::floor(fraction * 100.0 + 1e-9));
            if (percent != state->last_shown || done) {
                std::string line = "\r" + text;
                if (text.size() < state->last_width)
                    line.append(state->last_width - text.size(), ' ');
                if (done) line += "\n";
                write(line);
                state->last_shown = percent;
                state->last_width = text.size();
                state->drawing = !done;
            }
        } else {
            const int decile = int(std::floor(fraction * 10.0 + 1e-9));
            if (decile != state->last_shown) {
                write(text + "\n");
                state->last_shown = decile;
                state->drawing = !done;
            }
        }
        // After 100% a call below 100% starts a fresh bar (a second phase of work).
        if (done) {
            state->finished = true;
            state->drawing = false;
            state->last_shown = -1;
        }
        return true;
    };
}

}  // namespace detail

ProgressFn stderr_progress(const std::string& label, double quiet_seconds) {
    auto write = [](const std::string& text) {
        std::fputs(text.c_str(), stderr);
        std::fflush(stderr);
    };
    auto now = [] {
        using namespace std::chrono;
        return duration<double>(steady_clock::now().time_since_epoch()).count();
    };
    return detail::make_progress_printer(label, quiet_seconds, ::isatty(2) == 1, write, now);
}

}  // namespace convscope
