#include "app/detail/image_store.hpp"

#include <algorithm>

namespace convscope::detail {

ImageStore::ImageStore(int64_t capacity) : capacity_(std::max<int64_t>(1, capacity)) {}

void ImageStore::put(const std::string& id, at::Tensor input) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = images_.find(id);
    if (it != images_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second.pos);
        return;
    }
    lru_.push_front(id);
    images_[id] = Stored{std::move(input), lru_.begin()};
    while (static_cast<int64_t>(images_.size()) > capacity_) {
        images_.erase(lru_.back());
        lru_.pop_back();
    }
}

std::optional<at::Tensor> ImageStore::get(const std::string& id) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = images_.find(id);
    if (it == images_.end()) return std::nullopt;
    lru_.splice(lru_.begin(), lru_, it->second.pos);
    return it->second.input;
}

int64_t ImageStore::size() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return static_cast<int64_t>(images_.size());
}

}  // namespace convscope::detail
