#pragma once
// File helpers shared by io.cpp (plain files, JSON, the output folder) and npy.cpp (NPY arrays).
#include <cstdio>
#include <memory>
#include <string>

namespace convscope::detail {

std::string errno_text();  // strerror(errno)
// Writes all of `size` bytes, retrying short writes and EINTR. Returns false on error (errno set).
bool write_all(int fd, const char* data, size_t size);
// A temporary name beside `path` for an atomic write (rename is only atomic within one file
// system), unique per process and call so concurrent writers never share one.
std::string temp_path_for(const std::string& path);
// Reads exactly `size` bytes at the current position; false if the file ends early.
bool read_exact(std::FILE* f, void* out, size_t size);

struct FileCloser {
    void operator()(std::FILE* f) const {
        if (f) std::fclose(f);
    }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

}  // namespace convscope::detail
