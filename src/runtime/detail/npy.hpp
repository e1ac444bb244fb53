#pragma once
// NPY internals shared by io.cpp (whole arrays) and npy_stream.cpp (rows written as they come,
// files mapped into memory).
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace convscope::detail {

// The NPY 1.0 prefix (magic, version, header length, the header dict padded to 64 bytes) of
// an array of this dtype and shape. Throws Error for a dtype NPY files here do not hold.
std::string npy_header(at::ScalarType scalar, const std::vector<int64_t>& shape);

// Where an NPY file's data lies, after every check read_npy makes (magic, version, header,
// dtype, byte order, C order, a body as long as the header says). Throws Error naming the file.
struct NpyLayout {
    std::vector<int64_t> shape;
    at::ScalarType scalar = at::kFloat;  // kBool for '|b1'
    uint64_t data_offset = 0;
    size_t bytes = 0;
};
NpyLayout npy_layout(const std::string& path);

// A temporary name beside `path` for an atomic write (renamed into place when complete).
std::string temp_path_for(const std::string& path);

}  // namespace convscope::detail
