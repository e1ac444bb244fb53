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

}  // namespace convscope
