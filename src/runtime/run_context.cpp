#include "convscope/runtime/run_context.hpp"

#include <ATen/Parallel.h>

namespace convscope {

int thread_count(const RunContext& ctx) { return ctx.threads > 0 ? ctx.threads : at::get_num_threads(); }

ThreadScope::ThreadScope(const RunContext& ctx) : previous_(at::get_num_threads()) {
    if (ctx.threads > 0 && ctx.threads != previous_) at::set_num_threads(ctx.threads);
}

ThreadScope::~ThreadScope() {
    if (at::get_num_threads() != previous_) at::set_num_threads(previous_);
}

}  // namespace convscope
