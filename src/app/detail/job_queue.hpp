#pragma once
// Background jobs of the explorer, apart from what they compute and from HTTP: a bounded queue,
// worker threads, states, progress, cancellation, de-duplication by key and a bounded history
// of finished jobs for late pollers.
#include <nlohmann/json.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "convscope/runtime/progress.hpp"

namespace convscope::detail {

enum class JobState { Queued, Running, Done, Error, Cancelled };
// "queued", "running", "done", "error", "cancelled" (the page reads them).
const char* job_state_name(JobState s);

// What a full queue asks clients to wait before they try again.
constexpr int kRetryAfterSeconds = 2;

class JobQueue {
public:
    // What a job computes: its result as JSON, reporting progress (which may cancel it).
    using Work = std::function<nlohmann::json(const ProgressFn&)>;

    // max_seconds > 0: a job still running after that long is stopped at its next progress
    // report and ends in the error state with a message that names the limit.
    JobQueue(int workers, size_t max_queued, size_t keep_finished, double max_seconds = 0);
    ~JobQueue();  // cancels what is left and joins the workers
    JobQueue(const JobQueue&) = delete;
    JobQueue& operator=(const JobQueue&) = delete;

    // Queues `work` under `key`, unless a job with that key is queued, running or done: then its
    // status. Throws BusyError when max_queued jobs wait already, Error when shutting down.
    nlohmann::json start(const std::string& key, const std::string& kind, Work work);
    // {"id", "kind", "state", "progress"} and "result" (done) or "error" and "error_kind"
    // (error: "input", "timeout", "libtorch", "out-of-memory", "internal"). Throws
    // NotFoundError for an unknown (or forgotten) id.
    nlohmann::json status(const std::string& id) const;
    // Asks the job to stop (a queued one never starts); its status.
    nlohmann::json cancel(const std::string& id);

private:
    struct Job {
        std::string id, key, kind;
        Work work;
        std::atomic<double> progress{0.0};
        std::atomic<bool> cancel{false};
        std::atomic<bool> timed_out{false};
        JobState state = JobState::Queued;  // guarded by mutex_
        nlohmann::json result;
        std::string error;
        std::string error_kind;  // "input", "timeout", "libtorch", "out-of-memory" or "internal"
    };
    nlohmann::json status_of(const Job& job) const;  // mutex_ held
    const std::shared_ptr<Job>& find(const std::string& id) const;  // mutex_ held
    void worker_loop();

    const size_t max_queued_, keep_finished_;
    const double max_seconds_;
    mutable std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::map<std::string, std::shared_ptr<Job>> jobs_, by_key_;
    std::deque<std::string> finished_;  // ids, oldest first
    int64_t next_ = 1;
    bool stopping_ = false;
    std::vector<std::thread> workers_;
};

}  // namespace convscope::detail
