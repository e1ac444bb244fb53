#include "convscope/runtime/run_context.hpp"

#include <ATen/Parallel.h>
#include <dlfcn.h>

namespace convscope {

int thread_count(const RunContext& ctx) { return ctx.threads > 0 ? ctx.threads : at::get_num_threads(); }

ThreadScope::ThreadScope(const RunContext& ctx) : previous_(at::get_num_threads()) {
    if (ctx.threads > 0 && ctx.threads != previous_) at::set_num_threads(ctx.threads);
}

ThreadScope::~ThreadScope() {
    if (at::get_num_threads() != previous_) at::set_num_threads(previous_);
}

const char* memory_allocator() {
    // A function of tcmalloc's C interface, looked up by name: the library does not link it.
    static const bool tcmalloc = dlsym(RTLD_DEFAULT, "MallocExtension_GetNumericProperty") != nullptr;
    return tcmalloc ? "tcmalloc" : "the C library's malloc";
}

}  // namespace convscope
