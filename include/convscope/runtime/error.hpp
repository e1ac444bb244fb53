#pragma once
// Errors that reach the user. A caller's mistake (bad file, unknown layer, wrong shape) throws
// convscope::Error with one message that names the problem and the fix. Front ends catch it at
// the edge: the CLI prints it and exits 1 (2 for UsageError); the server answers 4xx.
#include <stdexcept>
#include <string>

namespace convscope {

class Error : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// A mistake in how a command was called (bad option value, conflicting flags): exit code 2.
class UsageError : public Error {
public:
    using Error::Error;
};

// Raised when a progress callback asks to stop.
class Cancelled : public Error {
public:
    Cancelled() : Error("cancelled") {}
};

// A broken internal invariant: a bug in convscope, not in what the user gave. Always checked,
// also in Release builds (CONVSCOPE_CHECK below); the message names the file and line. Not an
// Error, so front ends report it as an internal error (exit 1, HTTP 500), never as bad input.
class InternalError : public std::logic_error {
public:
    using std::logic_error::logic_error;
};

// What a front end reports for the exception being handled: its kind (which decides the exit
// code or HTTP status) and a one-line message. The one place where exceptions become messages.
enum class ErrorKind {
    Usage,        // UsageError: how the command was called (exit 2, HTTP 400)
    Input,        // Error: what the user gave (exit 1, HTTP 400)
    Cancelled,    // Cancelled: the progress callback stopped the work
    LibTorch,     // c10::Error: LibTorch refused (exit 1, HTTP 500)
    OutOfMemory,  // std::bad_alloc
    Internal,     // anything else, InternalError included: a bug (exit 1, HTTP 500)
};
struct ErrorReport {
    ErrorKind kind = ErrorKind::Internal;
    std::string message;
};
// Call inside a catch block (it rethrows std::current_exception() to classify it).
ErrorReport current_error();

namespace detail {
[[noreturn]] void internal_error(const char* file, int line, const char* condition, const std::string& what);
}

}  // namespace convscope

// Checks an internal invariant in every build: throws convscope::InternalError naming the
// condition, file and line (and `what`, a short explanation) when it does not hold.
#define CONVSCOPE_CHECK(condition, what)                                                   \
    do {                                                                                   \
        if (!(condition)) ::convscope::detail::internal_error(__FILE__, __LINE__, #condition, (what)); \
    } while (0)
