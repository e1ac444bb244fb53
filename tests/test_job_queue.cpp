// The explorer's job queue on its own: states, results, errors, cancellation, de-duplication by
// key, the bounded queue and history, and the one exception-to-message rule.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "app/detail/job_queue.hpp"
#include "convscope/app/explorer.hpp"
#include "convscope/runtime/error.hpp"
#include "test_util.hpp"

using convscope::detail::JobQueue;
using convscope::expect_error;
using nlohmann::json;

namespace {
// Polls until the job leaves the queued and running states.
json wait_done(const JobQueue& q, const std::string& id) {
    for (int i = 0; i < 2000; ++i) {
        json s = q.status(id);
        if (s["state"] != "queued" && s["state"] != "running") return s;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    ADD_FAILURE() << "job " << id << " never finished";
    return {};
}
}  // namespace

TEST(JobQueue, ResultsErrorsAndKeys) {
    JobQueue q(2, 64, 256);
    const json a = q.start("k1", "sum", [](const convscope::ProgressFn& p) {
        p(0.5);
        return json{{"sum", 3}};
    });
    EXPECT_EQ(a["kind"], "sum");
    json s = wait_done(q, a["id"]);
    EXPECT_EQ(s["state"], "done");
    EXPECT_EQ(s["progress"], 1.0);
    EXPECT_EQ(s["result"]["sum"], 3);
    // The same key again: the finished job, not a new one.
    EXPECT_EQ(q.start("k1", "sum", [](const convscope::ProgressFn&) { return json(); })["id"], a["id"]);
    // Errors become one-line messages.
    const json e = q.start("k2", "bad", [](const convscope::ProgressFn&) -> json {
        throw convscope::Error("no such layer 'x'");
    });
    s = wait_done(q, e["id"]);
    EXPECT_EQ(s["state"], "error");
    EXPECT_EQ(s["error"], "no such layer 'x'");
    EXPECT_EQ(s["error_kind"], "input");
    const json o = q.start("k3", "oom", [](const convscope::ProgressFn&) -> json { throw std::bad_alloc(); });
    s = wait_done(q, o["id"]);
    EXPECT_EQ(s["error"], "out of memory");
    EXPECT_EQ(s["error_kind"], "out-of-memory");
    const json bug = q.start("k4", "bug", [](const convscope::ProgressFn&) -> json { throw std::logic_error("oops"); });
    EXPECT_EQ(wait_done(q, bug["id"])["error_kind"], "internal");
    // A failed key may run again.
    EXPECT_NE(q.start("k2", "bad", [](const convscope::ProgressFn&) { return json(); })["id"], e["id"]);
    expect_error([&] { q.status("j999"); }, "unknown job 'j999'");
    EXPECT_THROW(q.status("j999"), convscope::NotFoundError);
}

TEST(JobQueue, CancelQueuedAndRunning) {
    JobQueue q(1, 2, 256);
    std::promise<void> started;
    std::atomic<bool> release{false};
    const json running = q.start("run", "slow", [&](const convscope::ProgressFn& p) {
        started.set_value();
        while (!release) {
            convscope::report_progress(p, 0.25);  // throws Cancelled once cancelled
            std::this_thread::sleep_for(std::chrono::milliseconds(2));
        }
        return json();
    });
    started.get_future().wait();
    const json queued = q.start("wait", "slow", [](const convscope::ProgressFn&) { return json(); });
    EXPECT_EQ(q.status(queued["id"])["state"], "queued");
    // The queue holds at most 2 waiting jobs.
    q.start("third", "x", [](const convscope::ProgressFn&) { return json(); });
    expect_error([&] { q.start("fourth", "x", [](const convscope::ProgressFn&) { return json(); }); },
                 "too many queued jobs");
    // A full queue is "busy" (the server's 429 with Retry-After), not a bad request.
    try {
        q.start("fourth", "x", [](const convscope::ProgressFn&) { return json(); });
        ADD_FAILURE() << "a full queue took a job";
    } catch (const convscope::BusyError& e) {
        EXPECT_EQ(e.retry_after_seconds, convscope::detail::kRetryAfterSeconds);
        EXPECT_NE(std::string(e.what()).find("2 waiting"), std::string::npos) << e.what();
    }
    EXPECT_EQ(q.cancel(queued["id"])["state"], "cancelled");
    q.cancel(running["id"]);
    EXPECT_EQ(wait_done(q, running["id"])["state"], "cancelled");
    release = true;
}

TEST(JobQueue, AJobOverTheTimeLimitIsStoppedWithAnError) {
    JobQueue q(1, 4, 16, 0.2);
    std::atomic<int> reports{0};
    const json slow = q.start("slow", "x", [&](const convscope::ProgressFn& p) {
        for (;;) {  // reports progress until stopped
            convscope::report_progress(p, 0.5);
            ++reports;
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return json();
    });
    const json fast = q.start("fast", "x", [](const convscope::ProgressFn& p) {
        convscope::report_progress(p, 1.0);
        return json{{"ok", true}};
    });
    const json st = wait_done(q, slow["id"]);
    EXPECT_EQ(st["state"], "error");
    EXPECT_NE(st["error"].get<std::string>().find("longer than the limit of 0.2 s"), std::string::npos) << st;
    EXPECT_EQ(st["error_kind"], "timeout");
    EXPECT_GT(reports.load(), 5);
    // The limit is per job: the next one runs within its own.
    EXPECT_EQ(wait_done(q, fast["id"])["state"], "done");
}

TEST(JobQueue, KeepsABoundedHistory) {
    JobQueue q(1, 64, 3);
    std::vector<std::string> ids;
    for (int i = 0; i < 6; ++i) {
        ids.push_back(q.start("k" + std::to_string(i), "n", [i](const convscope::ProgressFn&) { return json(i); })["id"]);
        wait_done(q, ids.back());
    }
    EXPECT_THROW(q.status(ids[0]), convscope::NotFoundError);  // forgotten
    EXPECT_EQ(q.status(ids[5])["result"], 5);
}

TEST(ErrorReport, OneRuleForEveryFrontEnd) {
    auto report = [](auto thrower) {
        try {
            thrower();
        } catch (...) {
            return convscope::current_error();
        }
        return convscope::ErrorReport{};
    };
    using convscope::ErrorKind;
    EXPECT_EQ(report([] { throw convscope::UsageError("bad flag"); }).kind, ErrorKind::Usage);
    EXPECT_EQ(report([] { throw convscope::Error("bad file"); }).message, "bad file");
    EXPECT_EQ(report([] { throw convscope::Cancelled(); }).kind, ErrorKind::Cancelled);
    EXPECT_EQ(report([] { throw std::runtime_error("two\nlines"); }).message, "two");
    EXPECT_EQ(report([] { throw 7; }).kind, ErrorKind::Internal);
    const auto t = report([] { TORCH_CHECK(false, "shape mismatch"); });
    EXPECT_EQ(t.kind, ErrorKind::LibTorch);
    EXPECT_NE(t.message.find("shape mismatch"), std::string::npos) << t.message;
}
