#pragma once
// What every method call runs with apart from its data and its knobs: progress and
// cancellation, the thread count and the seed. Methods take it as their last argument,
// `Result method(model, images, options, context = {})`.
#include <cstdint>

#include "convscope/runtime/progress.hpp"

namespace convscope {

struct RunContext {
    ProgressFn progress;  // the fraction done in [0,1]; returning false cancels (Cancelled)
    int threads = 0;      // intra-op threads for this call; 0 = the process's setting
    uint64_t seed = 0;    // random choices (noise, initialisation, sampling): same seed, same bytes
};

// The threads a call runs with: ctx.threads, or LibTorch's intra-op count when it is 0.
int thread_count(const RunContext& ctx);

// Which allocator serves this process's memory: "tcmalloc" when gperftools' tcmalloc is linked
// into the executable (convscope's own executables, unless built with the sanitizers), else
// "the C library's malloc".
const char* memory_allocator();

// Runs the enclosing scope with ctx.threads intra-op threads (when > 0) and restores the
// previous count when it ends.
class ThreadScope {
public:
    explicit ThreadScope(const RunContext& ctx);
    ~ThreadScope();
    ThreadScope(const ThreadScope&) = delete;
    ThreadScope& operator=(const ThreadScope&) = delete;

private:
    int previous_ = 0;
};

}  // namespace convscope
