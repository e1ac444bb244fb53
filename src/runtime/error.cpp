#include "convscope/runtime/error.hpp"

#include <c10/util/Exception.h>

#include <exception>
#include <filesystem>
#include <new>

namespace convscope {

namespace {
std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace

ErrorReport current_error() {
    try {
        throw;
    } catch (const Cancelled&) {
        return {ErrorKind::Cancelled, "cancelled"};
    } catch (const UsageError& e) {
        return {ErrorKind::Usage, e.what()};
    } catch (const Error& e) {
        return {ErrorKind::Input, e.what()};
    } catch (const c10::Error& e) {
        return {ErrorKind::LibTorch, "LibTorch error: " + first_line(e.what_without_backtrace())};
    } catch (const std::bad_alloc&) {
        return {ErrorKind::OutOfMemory, "out of memory"};
    } catch (const std::exception& e) {
        return {ErrorKind::Internal, first_line(e.what())};
    } catch (...) {
        return {ErrorKind::Internal, "internal error"};
    }
}

}  // namespace convscope

namespace convscope::detail {

void internal_error(const char* file, int line, const char* condition, const std::string& what) {
    throw InternalError("internal error at " + std::filesystem::path(file).filename().string() + ":" +
                        std::to_string(line) + ": " + what + " (" + condition +
                        " does not hold); please report it with the command that caused it");
}

}  // namespace convscope::detail
