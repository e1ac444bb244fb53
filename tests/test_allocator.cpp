// Tests for the memory allocator the executables link: under tcmalloc a large tensor freed and
// made again reuses its pages; under the C library's malloc each one is a fresh mapping whose
// every page faults in again (zeroed by the kernel), which made large batches 2x slower.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <cstring>

#include "convscope/runtime/run_context.hpp"

namespace {

long minor_faults() {
    rusage u{};
    getrusage(RUSAGE_SELF, &u);
    return u.ru_minflt;
}

// Minor page faults of `rounds` rounds of making, writing and freeing a tensor of `bytes`, after
// one round that may map the memory for the first time.
long faults_of_rounds(int64_t bytes, int rounds) {
    auto round = [&] {
        at::Tensor t = at::empty({bytes / 4}, at::kFloat);
        t.fill_(1.0f);
        return t[bytes / 8].item<float>();
    };
    EXPECT_EQ(round(), 1.0f);
    const long before = minor_faults();
    for (int r = 0; r < rounds; ++r) EXPECT_EQ(round(), 1.0f);
    return minor_faults() - before;
}

}  // namespace

TEST(Allocator, TheExecutablesNameTheirAllocator) {
#ifdef CONVSCOPE_TCMALLOC
    EXPECT_STREQ(convscope::memory_allocator(), "tcmalloc");
#else
    EXPECT_STREQ(convscope::memory_allocator(), "the C library's malloc");
#endif
}

TEST(Allocator, LargeTensorsMadeAgainReuseTheirPages) {
    // 96 MiB: above the C library's largest mmap threshold (32 MiB), so under it each of the
    // rounds faults in all 24,576 pages again.
    if (std::strcmp(convscope::memory_allocator(), "tcmalloc") != 0)
        GTEST_SKIP() << "built without tcmalloc (the sanitizer build)";
    const int64_t bytes = int64_t(96) << 20;
    const int rounds = 5;
    const long faults = faults_of_rounds(bytes, rounds);
    const long pages = rounds * bytes / 4096;
    EXPECT_LT(faults, pages / 100) << faults << " page faults for " << rounds << " rounds of " << bytes / 4096
                                   << " pages";
}
