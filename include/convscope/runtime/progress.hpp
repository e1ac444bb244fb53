#pragma once
// Progress reporting for long work: a callback that receives the fraction done in [0,1] and
// returns false to cancel. The CLI draws a bar on stderr, the server sends progress events.
#include <functional>
#include <string>

namespace convscope {

using ProgressFn = std::function<bool(double fraction)>;

// Calls `fn` (if set) and throws Cancelled when it returns false.
void report_progress(const ProgressFn& fn, double fraction);

// A ProgressFn that draws "label [#####     ] 42%" on stderr: a redrawn bar on a terminal,
// a plain line every 10% otherwise. Silent for work that ends within `quiet_seconds`.
ProgressFn stderr_progress(const std::string& label, double quiet_seconds = 2.0);

}  // namespace convscope
