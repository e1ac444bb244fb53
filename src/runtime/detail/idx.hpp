#pragma once
// Reader for IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

namespace convscope::detail {

// Reads an unsigned-byte IDX file (magic 0x00000801 / 0x00000803 / ...), gzipped or not, into a
// uint8 tensor with the file's dimensions. The header may lie: data is read in chunks and never
// more memory is used than the file really holds; an early end throws Error ("truncated").
// Throws Error naming the file for a bad magic, an unsupported data type or a corrupt gzip.
at::Tensor read_idx(const std::string& path);

}  // namespace convscope::detail
