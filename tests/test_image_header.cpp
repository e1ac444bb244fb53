// Image sizes from headers against the encoders that wrote them (OpenCV's writers for every
// format convscope reads), damaged and truncated bytes, and images that declare more pixels
// than the limit: refused before any pixel is decoded.
#include <gtest/gtest.h>
#include <zlib.h>

#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <random>
#include <string>
#include <vector>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/image_header.hpp"
#include "convscope/runtime/io.hpp"
#include "test_util.hpp"

using namespace convscope;

namespace {

std::string encode(const std::string& ext, const cv::Mat& img) {
    std::vector<uchar> buf;
    EXPECT_TRUE(cv::imencode(ext, img, buf)) << ext;
    return std::string(buf.begin(), buf.end());
}

cv::Mat noise(int h, int w, int type, uint32_t seed) {
    cv::Mat m(h, w, type);
    cv::RNG rng(seed);
    rng.fill(m, cv::RNG::UNIFORM, 0, 255);
    return m;
}

void put_be32(std::string& s, uint32_t v) {
    for (int k = 3; k >= 0; --k) s.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}

// A PNG that declares width x height 8-bit gray pixels and holds one short compressed row: the
// header is valid (its CRC too), the data is far too short for the size it declares.
std::string png_declaring(uint32_t width, uint32_t height) {
    std::string png("\x89PNG\r\n\x1a\n", 8);
    auto chunk = [&](const char* type, const std::string& data) {
        put_be32(png, static_cast<uint32_t>(data.size()));
        const std::string body = std::string(type, 4) + data;
        png += body;
        put_be32(png, static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(body.data()), body.size())));
    };
    std::string ihdr;
    put_be32(ihdr, width);
    put_be32(ihdr, height);
    ihdr += std::string("\x08\x00\x00\x00\x00", 5);  // depth 8, gray, deflate, filter 0, no interlace
    chunk("IHDR", ihdr);
    const std::string row(1 + 64, '\0');
    std::vector<Bytef> z(compressBound(row.size()));
    uLongf zn = z.size();
    compress(z.data(), &zn, reinterpret_cast<const Bytef*>(row.data()), row.size());
    chunk("IDAT", std::string(reinterpret_cast<char*>(z.data()), zn));
    chunk("IEND", "");
    return png;
}

}  // namespace

TEST(ImageHeader, SizesEqualWhatTheEncodersWrote) {
    const std::vector<std::pair<int, int>> sizes = {{1, 1}, {23, 37}, {7, 300}, {128, 96}};
    const std::vector<std::pair<std::string, int>> formats = {
        {".png", CV_8UC3}, {".png", CV_8UC1}, {".png", CV_16UC1}, {".jpg", CV_8UC3}, {".jpg", CV_8UC1},
        {".bmp", CV_8UC3}, {".bmp", CV_8UC1}, {".webp", CV_8UC3}, {".tiff", CV_8UC3}, {".tiff", CV_16UC1},
        {".pgm", CV_8UC1}, {".ppm", CV_8UC3}};
    uint32_t seed = 1;
    for (const auto& [h, w] : sizes)
        for (const auto& [ext, type] : formats) {
            const std::string bytes = encode(ext, noise(h, w, type, seed++));
            const auto got = image_size_from_header(bytes);
            ASSERT_TRUE(got.has_value()) << ext << " " << w << "x" << h;
            EXPECT_EQ(got->width, w) << ext;
            EXPECT_EQ(got->height, h) << ext;
        }
}

TEST(ImageHeader, TopDownBmpAndPnmCommentsAndAsciiForms) {
    std::string bmp = encode(".bmp", noise(5, 9, CV_8UC3, 3));
    // A negative height is a top-down bitmap of the same size.
    const int32_t neg = -5;
    std::memcpy(&bmp[22], &neg, 4);
    auto got = image_size_from_header(bmp);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->width, 9);
    EXPECT_EQ(got->height, 5);
    got = image_size_from_header("P2\n# made by hand\n 4 3\n255\n0 0 0 0 0 0 0 0 0 0 0 0\n");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->width, 4);
    EXPECT_EQ(got->height, 3);
    got = image_size_from_header("P4 16#c\n 2 \n\xff\xff\xff\xff");
    ASSERT_TRUE(got);
    EXPECT_EQ(got->width, 16);
    EXPECT_EQ(got->height, 2);
}

TEST(ImageHeader, DamagedBytesGiveNothingOrTheTrueSize) {
    std::mt19937 rng(5);
    for (const std::string ext : {".png", ".jpg", ".bmp", ".webp", ".tiff", ".pgm"}) {
        const int type = ext == ".pgm" ? CV_8UC1 : CV_8UC3;
        const std::string bytes = encode(ext, noise(20, 30, type, 9));
        for (size_t n = 0; n < std::min<size_t>(bytes.size(), 200); ++n) {  // every short prefix
            const auto got = image_size_from_header(bytes.substr(0, n));
            if (got) EXPECT_TRUE(got->width == 30 && got->height == 20) << ext << " prefix " << n;
        }
        for (int k = 0; k < 200; ++k) {  // a flipped byte in the first 64
            std::string b = bytes;
            b[rng() % std::min<size_t>(64, b.size())] ^= static_cast<char>(1 + rng() % 255);
            (void)image_size_from_header(b);  // no crash, no hang, no output
        }
    }
    EXPECT_FALSE(image_size_from_header(""));
    EXPECT_FALSE(image_size_from_header("hello, not an image"));
    EXPECT_FALSE(image_size_from_header("P5 0 7 255\n"));
    EXPECT_FALSE(image_size_from_header("P5 99999999999 7 255\n"));
}

TEST(ImageHeader, DecompressionBombIsRefusedFromItsHeader) {
    const std::string bomb = png_declaring(30000, 30000);
    ASSERT_LT(bomb.size(), 200u);
    const auto got = image_size_from_header(bomb);
    ASSERT_TRUE(got);
    EXPECT_EQ(got->width, 30000);
    EXPECT_EQ(got->height, 30000);
    TempDir tmp;
    write_file_atomic(tmp / "bomb.png", bomb);
    expect_error([&] { (void)Dataset::open(tmp / "bomb.png").raw(0); },
                 "declares 30000x30000 pixels, more than the limit of 50000000");
    // The same for a PGM whose header lies about its size.
    write_file_atomic(tmp / "lie.pgm", std::string("P5\n30000 30000\n255\n") + std::string(16, '\0'));
    expect_error([&] { (void)Dataset::open(tmp / "lie.pgm").raw(0); }, "--max-image-pixels");
}

TEST(ImageHeader, TheLimitCanBeRaisedAndLowered) {
    TempDir tmp;
    write_file_atomic(tmp / "a.png", encode(".png", noise(50, 40, CV_8UC1, 2)));  // 2000 pixels
    const int64_t before = max_image_pixels();
    set_max_image_pixels(1999);
    expect_error([&] { (void)Dataset::open(tmp / "a.png").raw(0); }, "40x50 pixels, more than the limit of 1999");
    set_max_image_pixels(2000);
    EXPECT_EQ(Dataset::open(tmp / "a.png").raw(0).size(1), 50);
    set_max_image_pixels(before);
    EXPECT_THROW(set_max_image_pixels(0), UsageError);
    EXPECT_EQ(max_image_pixels(), before);
    check_image_pixels({7000, 7000}, "x");  // 49 million: within the default
    expect_error([] { check_image_pixels({int64_t(1) << 32, 1}, "a strip"); }, "a strip declares");
}
