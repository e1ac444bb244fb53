// NPY files written row by row (NpyRowWriter) and mapped into memory (map_npy): the dataset
// map's features at any size, read once and never held twice.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cerrno>
#include <cstring>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/npy.hpp"

namespace convscope {
namespace {

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const char* p, size_t n, const std::string& path) {
    while (n > 0) {
        const ssize_t w = ::write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            throw Error("cannot write " + path + ": " + errno_text() + "; check the free space");
        }
        p += w;
        n -= size_t(w);
    }
}

}  // namespace

NpyRowWriter::NpyRowWriter(std::string path, int64_t rows, int64_t cols)
    : path_(std::move(path)), rows_(rows), cols_(cols) {
    if (rows < 0 || cols < 0) throw Error("cannot write " + path_ + ": a negative shape");
    tmp_ = detail::temp_path_for(path_);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error("cannot write " + path_ + ": " + errno_text() + "; check the folder");
    const std::string header = detail::npy_header(at::kFloat, {rows, cols});
    write_all(fd_, header.data(), header.size(), path_);
}

NpyRowWriter::~NpyRowWriter() {
    if (fd_ >= 0) {
        ::close(fd_);
        ::unlink(tmp_.c_str());
    }
}

void NpyRowWriter::write(const at::Tensor& block) {
    if (fd_ < 0) throw Error("cannot write " + path_ + ": it is finished");
    if (block.dim() != 2 || block.size(1) != cols_)
        throw Error("cannot write " + path_ + ": rows of " + std::to_string(cols_) + " values expected");
    if (written_ + block.size(0) > rows_)
        throw Error("cannot write " + path_ + ": more than the " + std::to_string(rows_) + " announced rows");
    const at::Tensor t = block.detach().to(at::kCPU).to(at::kFloat).contiguous();
    write_all(fd_, static_cast<const char*>(t.data_ptr()), size_t(t.numel()) * sizeof(float), path_);
    written_ += t.size(0);
}

void NpyRowWriter::finish() {
    if (fd_ < 0) throw Error("cannot write " + path_ + ": it is finished");
    if (written_ != rows_)
        throw Error("cannot write " + path_ + ": " + std::to_string(written_) + " of " + std::to_string(rows_) +
                    " rows came");
    // fsync before the rename: a crash leaves the old file or the complete new one.
    if (::fsync(fd_) != 0 || ::close(fd_) != 0) {
        const std::string why = errno_text();
        fd_ = -1;
        ::unlink(tmp_.c_str());
        throw Error("cannot write " + path_ + ": " + why + "; check the free space");
    }
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
        const std::string why = errno_text();
        ::unlink(tmp_.c_str());
        throw Error("cannot write " + path_ + " (rename): " + why);
    }
}

at::Tensor map_npy(const std::string& path) {
    const detail::NpyLayout layout = detail::npy_layout(path);  // refuses truncated and damaged files
    if (layout.scalar != at::kFloat || layout.shape.size() != 2)
        throw Error("cannot map " + path + ": a 2-D float32 array [N,D] is expected, got " +
                    std::to_string(layout.shape.size()) + "-D " + std::string(c10::toString(layout.scalar)) +
                    " (numpy.save(path, a.astype(numpy.float32)))");
    if (layout.bytes == 0) return torch::empty(layout.shape, torch::kFloat);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw Error("cannot read " + path + ": " + errno_text() + "; check the path");
    const size_t length = size_t(layout.data_offset) + layout.bytes;
    void* base = ::mmap(nullptr, length, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    const int err = errno;
    ::close(fd);  // the mapping keeps the file
    if (base == MAP_FAILED) throw Error("cannot map " + path + ": " + std::strerror(err));
    ::madvise(base, length, MADV_SEQUENTIAL);
    char* data = static_cast<char*>(base) + layout.data_offset;
    return torch::from_blob(
        data, layout.shape, [base, length](void*) { ::munmap(base, length); }, torch::kFloat);
}

}  // namespace convscope
