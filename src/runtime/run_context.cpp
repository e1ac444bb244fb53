#include "convscope/runtime/run_context.hpp"

#include <ATen/Parallel.h>

namespace convscope {

ThreadScope::ThreadScope(const RunContext& ctx) : previous_(at::get_num_threads()) {
    if (ctx.threads > 0 && ctx.threads != previous_) at::set_num_threads(ctx.threads);
}

ThreadScope::~ThreadScope() {
    if (at::get_num_threads() != previous_) at::set_num_threads(previous_);
}

}  // namespace convscope
