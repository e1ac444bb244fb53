#include "app/detail/job_queue.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>

#include "convscope/app/explorer.hpp"
#include "convscope/runtime/enum_names.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope::detail {

namespace {
constexpr EnumTable<JobState, 5> kStateNames = {{{JobState::Queued, "queued"},
                                                 {JobState::Running, "running"},
                                                 {JobState::Done, "done"},
                                                 {JobState::Error, "error"},
                                                 {JobState::Cancelled, "cancelled"}}};

// What the page and clients read in a failed job's "error_kind".
const char* error_kind_name(ErrorKind k) {
    switch (k) {
    case ErrorKind::Usage:
    case ErrorKind::Input: return "input";
    case ErrorKind::Cancelled: return "cancelled";
    case ErrorKind::LibTorch: return "libtorch";
    case ErrorKind::OutOfMemory: return "out-of-memory";
    case ErrorKind::Internal: break;
    }
    return "internal";
}
}  // namespace

const char* job_state_name(JobState s) { return enum_name(kStateNames, s); }

JobQueue::JobQueue(int workers, size_t max_queued, size_t keep_finished, double max_seconds)
    : max_queued_(max_queued), keep_finished_(keep_finished), max_seconds_(max_seconds) {
    CONVSCOPE_CHECK(workers >= 1, "a job queue needs a worker");
    for (int i = 0; i < workers; ++i) workers_.emplace_back([this] { worker_loop(); });
}

JobQueue::~JobQueue() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stopping_ = true;
        for (auto& [id, job] : jobs_) job->cancel = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
}

nlohmann::json JobQueue::status_of(const Job& job) const {
    nlohmann::json j = {{"id", job.id},
                        {"kind", job.kind},
                        {"state", job_state_name(job.state)},
                        {"progress", job.state == JobState::Done ? 1.0 : job.progress.load()}};
    if (job.state == JobState::Done) j["result"] = job.result;
    if (job.state == JobState::Error) {
        j["error"] = job.error;
        j["error_kind"] = job.error_kind;
    }
    return j;
}

const std::shared_ptr<JobQueue::Job>& JobQueue::find(const std::string& id) const {
    auto it = jobs_.find(id);
    if (it == jobs_.end()) throw NotFoundError("unknown job '" + id + "'");
    return it->second;
}

nlohmann::json JobQueue::start(const std::string& key, const std::string& kind, Work work) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stopping_) throw Error("the explorer is shutting down");
    auto same = by_key_.find(key);
    if (same != by_key_.end()) {
        const JobState st = same->second->state;
        if (st == JobState::Queued || st == JobState::Running || st == JobState::Done)
            return status_of(*same->second);
    }
    if (queue_.size() >= max_queued_)
        throw BusyError("too many queued jobs (" + std::to_string(queue_.size()) +
                            " waiting): try again in a few seconds, or start the server with a larger --max-jobs",
                        kRetryAfterSeconds);
    auto job = std::make_shared<Job>();
    job->id = "j" + std::to_string(next_++);
    job->key = key;
    job->kind = kind;
    job->work = std::move(work);
    jobs_[job->id] = job;
    by_key_[key] = job;
    queue_.push_back(job);
    cv_.notify_one();
    return status_of(*job);
}

nlohmann::json JobQueue::status(const std::string& id) const {
    std::lock_guard<std::mutex> lock(mutex_);
    return status_of(*find(id));
}

nlohmann::json JobQueue::cancel(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    const auto& job = find(id);
    job->cancel = true;
    if (job->state == JobState::Queued) job->state = JobState::Cancelled;
    return status_of(*job);
}

void JobQueue::worker_loop() {
    while (true) {
        std::shared_ptr<Job> job;
        {
            std::unique_lock<std::mutex> lock(mutex_);
            cv_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
            if (stopping_) return;
            job = queue_.front();
            queue_.pop_front();
            if (job->cancel) {
                job->state = JobState::Cancelled;
                continue;
            }
            job->state = JobState::Running;
        }
        JobState state = JobState::Done;
        std::string error, error_kind;
        nlohmann::json result;
        try {
            Job* raw = job.get();
            const auto start = std::chrono::steady_clock::now();
            const double limit = max_seconds_;
            const ProgressFn progress = [raw, start, limit](double f) {
                raw->progress = std::clamp(f, 0.0, 1.0);
                if (limit > 0 && std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() > limit)
                    raw->timed_out = true;
                return !raw->cancel.load() && !raw->timed_out.load();
            };
            result = job->work(progress);
        } catch (...) {
            const ErrorReport e = current_error();
            state = e.kind == ErrorKind::Cancelled ? JobState::Cancelled : JobState::Error;
            error = e.message;
            error_kind = error_kind_name(e.kind);
            if (job->timed_out && !job->cancel) {
                error_kind = "timeout";
                state = JobState::Error;
                char limit[32];
                std::snprintf(limit, sizeof limit, "%g", max_seconds_);
                error = std::string("the job ran longer than the limit of ") + limit +
                        " s and was stopped: ask for less (fewer items, a larger stride) or start the server with a "
                        "larger --max-job-seconds";
            }
        }
        std::lock_guard<std::mutex> lock(mutex_);
        job->state = state;
        job->result = std::move(result);
        job->error = error;
        job->error_kind = error_kind;
        job->work = nullptr;  // what it captured (inputs) is no longer needed
        finished_.push_back(job->id);
        while (finished_.size() > keep_finished_) {
            auto it = jobs_.find(finished_.front());
            if (it != jobs_.end()) {
                auto k = by_key_.find(it->second->key);
                if (k != by_key_.end() && k->second == it->second) by_key_.erase(k);
                jobs_.erase(it);
            }
            finished_.pop_front();
        }
    }
}

}  // namespace convscope::detail
