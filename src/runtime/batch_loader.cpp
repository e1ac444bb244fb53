// The prefetching batch loader: decodes and preprocesses the next batches on a worker thread
// while the caller runs the model on the current one.
#include <torch/torch.h>

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"

namespace convscope {

struct BatchLoader::Impl {
    const Dataset* data = nullptr;
    std::vector<int64_t> indices;
    int64_t batch_size = 1;
    Preprocess pre;
    size_t prefetch = 2;
    int64_t num_batches = 0;

    std::mutex mutex;
    std::condition_variable changed;  // queue, stop or done changed
    std::deque<Batch> queue;
    bool stop = false;         // the consumer is gone: the worker should end
    bool worker_done = false;  // no more batches will come
    std::exception_ptr error;  // what stopped the worker, rethrown by next()
    std::thread worker;

    Batch make_batch(int64_t b) const {
        Batch batch;
        const int64_t begin = b * batch_size;
        const int64_t end = std::min<int64_t>(begin + batch_size, int64_t(indices.size()));
        batch.indices.assign(indices.begin() + begin, indices.begin() + end);
        batch.images = data->batch(batch.indices, pre);
        for (int64_t i : batch.indices) batch.labels.push_back(data->label(i));
        return batch;
    }

    void run() {
        for (int64_t b = 0; b < num_batches; ++b) {
            {
                std::unique_lock<std::mutex> lock(mutex);
                changed.wait(lock, [&] { return stop || queue.size() < prefetch; });
                if (stop) break;
            }
            // Decode outside the lock so the consumer can take finished batches meanwhile.
            Batch batch;
            try {
                batch = make_batch(b);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                error = std::current_exception();
                break;
            }
            std::lock_guard<std::mutex> lock(mutex);
            queue.push_back(std::move(batch));
            changed.notify_all();
        }
        std::lock_guard<std::mutex> lock(mutex);
        worker_done = true;
        changed.notify_all();
    }
};

BatchLoader::BatchLoader(const Dataset& data, std::vector<int64_t> indices, int64_t batch_size,
                         Preprocess pre, int prefetch)
    : impl_(std::make_unique<Impl>()) {
    if (batch_size < 1) {
        throw UsageError("the batch size must be at least 1 (got " + std::to_string(batch_size) +
                         ")");
    }
    // Check indices here so a bad one fails at once, not on a later next().
    for (int64_t i : indices) {
        if (i < 0 || i >= data.size()) {
            throw Error("index " + std::to_string(i) + " is out of range: the data has " +
                        std::to_string(data.size()) + " items (0.." +
                        std::to_string(data.size() - 1) + ")");
        }
    }
    Impl& d = *impl_;
    d.data = &data;
    d.indices = std::move(indices);
    d.batch_size = batch_size;
    d.pre = std::move(pre);
    d.prefetch = size_t(std::max(1, prefetch));
    d.num_batches = (int64_t(d.indices.size()) + batch_size - 1) / batch_size;
    d.worker = std::thread([&d] { d.run(); });
}

BatchLoader::~BatchLoader() {
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        impl_->stop = true;
    }
    impl_->changed.notify_all();
    // The worker finishes at most the batch it is making, then sees `stop`.
    if (impl_->worker.joinable()) impl_->worker.join();
}

bool BatchLoader::next(Batch& out) {
    std::unique_lock<std::mutex> lock(impl_->mutex);
    impl_->changed.wait(lock, [&] { return !impl_->queue.empty() || impl_->worker_done; });
    if (!impl_->queue.empty()) {
        out = std::move(impl_->queue.front());
        impl_->queue.pop_front();
        impl_->changed.notify_all();
        return true;
    }
    if (impl_->error) std::rethrow_exception(impl_->error);
    return false;
}

int64_t BatchLoader::num_batches() const { return impl_->num_batches; }

}  // namespace convscope
