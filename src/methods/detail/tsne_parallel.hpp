#pragma once
// A small fixed-size thread pool with static chunking, used by the t-SNE code. Work is split into
// contiguous chunks decided only by the problem size and the thread count, never by timing, so
// results are reproducible; reductions are done per fixed-size block and summed in block order.
#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace convscope::detail {

// Number of worker threads for a `threads` option: 0 means all hardware threads.
inline int resolve_threads(int threads) {
    if (threads > 0) return threads;
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : int(hw);
}

class ThreadPool {
public:
    explicit ThreadPool(int threads) : size_(std::max(1, resolve_threads(threads))) {
        for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { worker_loop(t); });
    }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    ~ThreadPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
    }

    int size() const { return size_; }

    // Runs fn(t) for every t in [0, size()), t == 0 on the calling thread, and waits for all.
    // The first exception thrown by any task is rethrown here.
    void run(const std::function<void(int)>& fn) {
        if (size_ == 1) {
            fn(0);
            return;
        }
        {
            std::lock_guard<std::mutex> lock(mutex_);
            task_ = &fn;
            pending_ = size_ - 1;
            error_ = nullptr;
            ++generation_;
        }
        wake_.notify_all();
        std::exception_ptr mine;
        try {
            fn(0);
        } catch (...) {
            mine = std::current_exception();
        }
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [this] { return pending_ == 0; });
        task_ = nullptr;
        if (mine) std::rethrow_exception(mine);
        if (error_) std::rethrow_exception(error_);
    }

    // Splits [0, n) into size() contiguous chunks and runs fn(begin, end) on each.
    template <class F>
    void for_range(int64_t n, F&& fn) {
        const int64_t parts = size_;
        run([&](int t) {
            const int64_t begin = n * t / parts, end = n * (t + 1) / parts;
            if (begin < end) fn(begin, end);
        });
    }

    // Runs fn(i) for i in [0, count) with item i on thread i % size(): for a few large,
    // independent tasks (FFTs, index shards).
    template <class F>
    void for_each_task(int64_t count, F&& fn) {
        run([&](int t) {
            for (int64_t i = t; i < count; i += size_) fn(i);
        });
    }

    // Deterministic sum over [0, n): fn(begin, end) returns the partial sum of a block; blocks
    // have a fixed size (independent of the thread count) and are added in order.
    template <class F>
    double sum_blocks(int64_t n, F&& fn, int64_t block = 4096) {
        const int64_t blocks = (n + block - 1) / block;
        std::vector<double> partial(size_t(std::max<int64_t>(blocks, 0)), 0.0);
        for_range(blocks, [&](int64_t b0, int64_t b1) {
            for (int64_t b = b0; b < b1; ++b)
                partial[size_t(b)] = fn(b * block, std::min(n, (b + 1) * block));
        });
        double total = 0.0;
        for (double p : partial) total += p;
        return total;
    }

private:
    void worker_loop(int t) {
        uint64_t seen = 0;
        for (;;) {
            const std::function<void(int)>* task = nullptr;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
                if (stop_) return;
                seen = generation_;
                task = task_;
            }
            std::exception_ptr err;
            try {
                (*task)(t);
            } catch (...) {
                err = std::current_exception();
            }
            {
                std::lock_guard<std::mutex> lock(mutex_);
                if (err && !error_) error_ = err;
                if (--pending_ == 0) done_.notify_one();
            }
        }
    }

    int size_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(int)>* task_ = nullptr;
    uint64_t generation_ = 0;
    int pending_ = 0;
    bool stop_ = false;
    std::exception_ptr error_;
};

}  // namespace convscope::detail
