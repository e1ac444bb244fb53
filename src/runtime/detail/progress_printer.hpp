#pragma once
// The engine behind stderr_progress with its terminal check, output and clock injected, so
// tests can check what it draws and when without a terminal or waiting.
#include <functional>
#include <string>

#include "convscope/runtime/progress.hpp"

namespace convscope::detail {

// is_tty: redraw one line with '\r' (else print a line per 10%). write: receives the text to
// print. now_seconds: a monotonic clock in seconds. Nothing is printed until quiet_seconds have
// passed since the call; a bar that was drawn ends with a newline at 100%.
ProgressFn make_progress_printer(const std::string& label, double quiet_seconds, bool is_tty,
                                 std::function<void(const std::string&)> write,
                                 std::function<double()> now_seconds);

// The text of one bar: "label [#####     ] 42%" (no line break).
std::string progress_bar_text(const std::string& label, double fraction, int width = 30);

}  // namespace convscope::detail
