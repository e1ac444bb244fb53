#include "convscope/runtime/error.hpp"

#include <filesystem>

namespace convscope::detail {

void internal_error(const char* file, int line, const char* condition, const std::string& what) {
    throw InternalError("internal error at " + std::filesystem::path(file).filename().string() + ":" +
                        std::to_string(line) + ": " + what + " (" + condition +
                        " does not hold); please report it with the command that caused it");
}

}  // namespace convscope::detail
