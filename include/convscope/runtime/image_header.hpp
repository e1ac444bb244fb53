#pragma once
// Image sizes from the file's header, before any pixel is decoded: a small file can declare a
// huge image (a PNG of zeros compresses about 1000:1), and decoding it first would allocate all
// of it. Every image convscope decodes (data, --image, uploads) passes check_image_pixels first.
#include <cstdint>
#include <optional>
#include <string>

namespace convscope {

struct ImageSize {
    int64_t width = 0, height = 0;
};

// Width and height as the header of encoded image bytes declares them, read by the format's
// own library (libpng, libjpeg, libwebp, libtiff; BMP and PGM/PPM by their fixed headers);
// nullopt for bytes that are none of PNG, JPEG, WebP, TIFF, BMP, PBM/PGM/PPM or whose header
// cannot be read.
std::optional<ImageSize> image_size_from_header(const std::string& bytes);

// The largest image accepted, in pixels (width x height), for the whole process. Default
// kDefaultMaxImagePixels; the CLI's --max-image-pixels sets it.
constexpr int64_t kDefaultMaxImagePixels = 50'000'000;
int64_t max_image_pixels();
void set_max_image_pixels(int64_t pixels);  // UsageError below 1

// Throws Error naming `what` (a file name, "the upload") when size has more than
// max_image_pixels() pixels; the message names the size, the limit and --max-image-pixels.
void check_image_pixels(const ImageSize& size, const std::string& what);

}  // namespace convscope
