// The explorer's image store on its own: least recently used eviction against a plain reference
// (a list scanned from the front), refresh on get and on a repeated put, and many threads.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <list>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "app/detail/image_store.hpp"

using convscope::detail::ImageStore;

namespace {
at::Tensor tag(int64_t v) { return torch::full({1}, static_cast<float>(v)); }
float value(const at::Tensor& t) { return t.item<float>(); }
}  // namespace

TEST(ImageStore, EvictsTheLeastRecentlyUsedLikeAReferenceList) {
    const int64_t capacity = 5;
    ImageStore store(capacity);
    std::list<std::pair<std::string, int64_t>> ref;  // most recently used first
    std::mt19937 rng(7);
    for (int step = 0; step < 2000; ++step) {
        const std::string id = "u" + std::to_string(rng() % 12);
        const bool put = rng() % 2 == 0;
        auto it = std::find_if(ref.begin(), ref.end(), [&](const auto& e) { return e.first == id; });
        if (put) {
            store.put(id, tag(step));
            if (it != ref.end()) ref.splice(ref.begin(), ref, it);  // keeps its first input
            else ref.emplace_front(id, step);
            if (static_cast<int64_t>(ref.size()) > capacity) ref.pop_back();
        } else {
            const auto got = store.get(id);
            ASSERT_EQ(got.has_value(), it != ref.end()) << "step " << step << " id " << id;
            if (got) {
                EXPECT_EQ(value(*got), static_cast<float>(it->second));
                ref.splice(ref.begin(), ref, it);
            }
        }
        ASSERT_EQ(store.size(), static_cast<int64_t>(ref.size()));
    }
}

TEST(ImageStore, GetRefreshesAndCapacityIsAtLeastOne) {
    ImageStore store(2);
    store.put("a", tag(1));
    store.put("b", tag(2));
    ASSERT_TRUE(store.get("a"));  // a is now the most recent: c evicts b
    store.put("c", tag(3));
    EXPECT_TRUE(store.get("a"));
    EXPECT_FALSE(store.get("b"));
    EXPECT_TRUE(store.get("c"));
    ImageStore tiny(0);
    EXPECT_EQ(tiny.capacity(), 1);
    tiny.put("x", tag(1));
    tiny.put("y", tag(2));
    EXPECT_EQ(tiny.size(), 1);
    EXPECT_FALSE(tiny.get("x"));
}

TEST(ImageStore, ManyThreadsKeepItBounded) {
    ImageStore store(16);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&store, t] {
            for (int i = 0; i < 500; ++i) {
                const std::string id = std::to_string(t) + ":" + std::to_string(i % 40);
                store.put(id, tag(i));
                if (auto got = store.get(id)) EXPECT_GE(value(*got), 0.f);
                EXPECT_LE(store.size(), 16);
            }
        });
    for (auto& th : threads) th.join();
    EXPECT_LE(store.size(), 16);
}
