// IDX files, plain and gzip-compressed (by the first bytes), through the IDX data source.
#include <cstdint>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const bool gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
    const std::string path = convscope::fuzz::as_file(data, size, gz ? "x-images-idx3-ubyte.gz" : "x-images-idx3-ubyte");
    try {
        convscope::Dataset d = convscope::Dataset::open(path);
        for (int64_t i = 0; i < std::min<int64_t>(d.size(), 2); ++i) (void)d.raw(i);
    } catch (const convscope::Error&) {
    }
    return 0;
}
