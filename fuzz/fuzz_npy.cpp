// NPY header and body through the .npy data source and read_npy. Bad files must throw
// convscope::Error; anything else (a crash, a sanitizer report, another exception) is a finding.
#include <cstdint>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string path = convscope::fuzz::as_file(data, size, "input.npy");
    try {
        (void)convscope::read_npy(path);
    } catch (const convscope::Error&) {
    }
    try {
        convscope::Dataset d = convscope::Dataset::open(path);
        for (int64_t i = 0; i < std::min<int64_t>(d.size(), 2); ++i) (void)d.raw(i);
    } catch (const convscope::Error&) {
    }
    return 0;
}
