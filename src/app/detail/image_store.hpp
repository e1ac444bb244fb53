#pragma once
// The explorer's uploaded inputs, by id: a bounded store that forgets the least recently used
// input first. Thread-safe; ids are chosen by the caller (the explorer uses a content hash).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <list>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>

namespace convscope::detail {

class ImageStore {
public:
    // capacity: the most inputs kept (>= 1).
    explicit ImageStore(int64_t capacity);

    // Keeps input under id, the most recently used; an id already stored keeps its first input
    // (ids name contents) and only becomes the most recently used. Evicts beyond the capacity.
    void put(const std::string& id, at::Tensor input);
    // The input stored under id, which becomes the most recently used; nullopt if it was never
    // stored or has been evicted.
    std::optional<at::Tensor> get(const std::string& id);
    int64_t size() const;
    int64_t capacity() const { return capacity_; }

private:
    struct Stored {
        at::Tensor input;
        std::list<std::string>::iterator pos;  // in lru_
    };
    const int64_t capacity_;
    mutable std::mutex mutex_;
    std::list<std::string> lru_;  // most recently used first
    std::unordered_map<std::string, Stored> images_;
};

}  // namespace convscope::detail
