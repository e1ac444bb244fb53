// Encoded images: the header reader, then the loader with its size limit (PNG, JPEG, WebP,
// TIFF, BMP, PNM all go through the same path whatever the file's name says).
#include <cstdint>
#include <string>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/image_header.hpp"
#include "fuzz_util.hpp"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
    convscope::set_max_image_pixels(4'000'000);  // keeps each run's memory small
    return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const std::string bytes(reinterpret_cast<const char*>(data), size);
    (void)convscope::image_size_from_header(bytes);
    const std::string path = convscope::fuzz::as_file(data, size, "input.png");
    try {
        (void)convscope::Dataset::open(path).raw(0);
    } catch (const convscope::Error&) {
    }
    return 0;
}
