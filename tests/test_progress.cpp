// Tests for progress: cancellation, and what the stderr bar prints on a terminal, in a log, and
// during the quiet period (with an injected clock, so nothing waits).
#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/progress.hpp"
#include "runtime/detail/progress_printer.hpp"

namespace {

// Collects what the printer writes, with a clock the test moves by hand.
struct FakeTerminal {
    std::vector<std::string> writes;
    double now = 100.0;

    convscope::ProgressFn make(const std::string& label, double quiet, bool tty) {
        return convscope::detail::make_progress_printer(
            label, quiet, tty, [this](const std::string& s) { writes.push_back(s); },
            [this] { return now; });
    }
    std::string text() const {
        std::string all;
        for (const auto& w : writes) all += w;
        return all;
    }
};

size_t count(const std::string& s, char c) { return size_t(std::count(s.begin(), s.end(), c)); }

}  // namespace

TEST(ProgressReport, PassesFractionAndCancels) {
    EXPECT_NO_THROW(convscope::report_progress(nullptr, 0.5));
    std::vector<double> seen;
    convscope::ProgressFn keep_going = [&](double f) {
        seen.push_back(f);
        return true;
    };
    convscope::report_progress(keep_going, 0.25);
    convscope::report_progress(keep_going, 1.0);
    EXPECT_EQ(seen, (std::vector<double>{0.25, 1.0}));

    convscope::ProgressFn stop = [](double f) { return f < 0.5; };
    EXPECT_NO_THROW(convscope::report_progress(stop, 0.4));
    EXPECT_THROW(convscope::report_progress(stop, 0.6), convscope::Cancelled);
    // Cancelled is an Error, so the edges that catch Error handle it too.
    try {
        convscope::report_progress(stop, 0.7);
        FAIL() << "expected Cancelled";
    } catch (const convscope::Error& e) {
        EXPECT_STREQ(e.what(), "cancelled");
    }
}

TEST(ProgressBar, TextLayout) {
    using convscope::detail::progress_bar_text;
    EXPECT_EQ(progress_bar_text("load", 0.42, 10), "load [####      ] 42%");
    EXPECT_EQ(progress_bar_text("load", 0.0, 4), "load [    ] 0%");
    EXPECT_EQ(progress_bar_text("load", 1.0, 4), "load [####] 100%");
    EXPECT_EQ(progress_bar_text("", 0.5, 4), "[##  ] 50%");
}

TEST(ProgressBar, PlainLinePerTenPercentWhenNotATerminal) {
    FakeTerminal term;
    auto fn = term.make("occlusion", 0.0, false);
    for (int i = 0; i <= 100; ++i) EXPECT_TRUE(fn(i / 100.0));
    ASSERT_EQ(term.writes.size(), 11u);  // 0%, 10%, ..., 100%
    for (int d = 0; d <= 10; ++d) {
        EXPECT_EQ(term.writes[size_t(d)],
                  convscope::detail::progress_bar_text("occlusion", d / 10.0) + "\n");
    }
    EXPECT_EQ(count(term.text(), '\r'), 0u);
}

TEST(ProgressBar, RedrawnLineOnATerminal) {
    FakeTerminal term;
    auto fn = term.make("tsne", 0.0, true);
    for (int i = 0; i <= 1000; ++i) fn(i / 1000.0);
    // Redrawn once per percent (0..100), not once per call.
    EXPECT_EQ(term.writes.size(), 101u);
    for (const auto& w : term.writes) EXPECT_EQ(w[0], '\r');
    const std::string all = term.text();
    EXPECT_EQ(count(all, '\n'), 1u);  // only the final newline
    EXPECT_EQ(term.writes.back(), "\r" + convscope::detail::progress_bar_text("tsne", 1.0) + "\n");
}

TEST(ProgressBar, SilentDuringQuietPeriod) {
    for (bool tty : {false, true}) {
        FakeTerminal term;
        auto fn = term.make("quick", 2.0, tty);
        for (int i = 0; i <= 10; ++i) {
            term.now += 0.1;  // all within 2 s
            fn(i / 10.0);
        }
        EXPECT_TRUE(term.writes.empty()) << "tty=" << tty << ": " << term.text();
        // A repeated 100% after the quiet period still prints nothing: the work was done.
        term.now += 10;
        fn(1.0);
        EXPECT_TRUE(term.writes.empty());
    }
}

TEST(ProgressBar, StartsDrawingAfterQuietPeriod) {
    FakeTerminal term;
    auto fn = term.make("slow", 2.0, false);
    term.now += 0.5;
    fn(0.1);
    EXPECT_TRUE(term.writes.empty());
    term.now += 2.0;  // 2.5 s in
    fn(0.35);
    ASSERT_EQ(term.writes.size(), 1u);
    EXPECT_EQ(term.writes[0], convscope::detail::progress_bar_text("slow", 0.35) + "\n");
    fn(0.38);  // same decile: nothing new
    EXPECT_EQ(term.writes.size(), 1u);
    fn(1.0);
    fn(1.0);  // repeated: printed once
    ASSERT_EQ(term.writes.size(), 2u);
    EXPECT_EQ(term.writes[1], convscope::detail::progress_bar_text("slow", 1.0) + "\n");
}

TEST(ProgressBar, TerminalBarEndsWithNewlineOnlyIfDrawn) {
    FakeTerminal term;
    auto fn = term.make("x", 1.0, true);
    fn(0.2);
    term.now += 5;
    fn(0.6);
    fn(1.0);
    ASSERT_EQ(term.writes.size(), 2u);
    EXPECT_EQ(term.writes[0], "\r" + convscope::detail::progress_bar_text("x", 0.6));
    EXPECT_EQ(term.writes[1], "\r" + convscope::detail::progress_bar_text("x", 1.0) + "\n");
    // A second phase after 100% draws a fresh bar.
    fn(0.5);
    EXPECT_EQ(term.writes.size(), 3u);
}

TEST(ProgressBar, StderrProgressWritesPlainLinesWhenRedirected) {
    // CaptureStderr points fd 2 at a file, so stderr is not a terminal.
    testing::internal::CaptureStderr();
    auto fn = convscope::stderr_progress("job", 0.0);
    fn(0.5);
    fn(1.0);
    const std::string out = testing::internal::GetCapturedStderr();
    EXPECT_EQ(out, convscope::detail::progress_bar_text("job", 0.5) + "\n" +
                       convscope::detail::progress_bar_text("job", 1.0) + "\n");
    testing::internal::CaptureStderr();
    auto quiet = convscope::stderr_progress("job");  // default 2 s quiet period
    quiet(0.5);
    quiet(1.0);
    EXPECT_EQ(testing::internal::GetCapturedStderr(), "");
}

TEST(StagedProgress, StagesGetTheirShareInOrder) {
    using convscope::Cancelled;
    using convscope::ProgressFn;
    using convscope::StagedProgress;
    std::vector<double> seen;
    StagedProgress stages([&](double f) { return seen.push_back(f), true; }, {{"a", 1.0}, {"b", 0.0}, {"c", 3.0}});
    stages.report("a", 0.5);
    EXPECT_DOUBLE_EQ(seen.back(), 0.125);
    stages.finish("a");
    EXPECT_DOUBLE_EQ(seen.back(), 0.25);
    stages.finish("b");  // no weight: no progress, still timed
    EXPECT_DOUBLE_EQ(seen.back(), 0.25);
    const ProgressFn half = stages.part("c", 0.5, 1.0);
    half(0.0);
    EXPECT_DOUBLE_EQ(seen.back(), 0.25 + 0.75 * 0.5);
    half(2.0);  // clamped to the part's end
    EXPECT_DOUBLE_EQ(seen.back(), 1.0);
    stages.finish("c");
    ASSERT_EQ(stages.seconds().size(), 3u);
    EXPECT_EQ(stages.seconds()[1].first, "b");
    for (const auto& [name, s] : stages.seconds()) EXPECT_GE(s, 0.0) << name;
    // Cancelling through the outer callback.
    StagedProgress cancel([](double f) { return f < 0.5; }, {{"x", 1.0}});
    EXPECT_NO_THROW(cancel.report("x", 0.25));
    EXPECT_THROW(cancel.report("x", 0.75), Cancelled);
    // Without a callback nothing is reported; parts are empty.
    StagedProgress none({}, {{"x", 1.0}});
    EXPECT_FALSE(static_cast<bool>(none.part("x")));
    EXPECT_NO_THROW(none.finish("x"));
}
