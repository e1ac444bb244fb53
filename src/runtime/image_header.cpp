// Image sizes from headers, each format through its own library where it has one.
#include "convscope/runtime/image_header.hpp"

#include <jpeglib.h>
#include <png.h>
#include <tiffio.h>
#include <webp/decode.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "convscope/runtime/error.hpp"

namespace convscope {

namespace {

std::atomic<int64_t> g_max_pixels{kDefaultMaxImagePixels};

const unsigned char* bytes_of(const std::string& b) { return reinterpret_cast<const unsigned char*>(b.data()); }

// --- PNG (libpng) ---
struct MemoryReader {
    const unsigned char* data;
    size_t size, pos;
};

void png_read_memory(png_structp png, png_bytep out, size_t length) {
    auto* r = static_cast<MemoryReader*>(png_get_io_ptr(png));
    if (length > r->size - r->pos) png_error(png, "truncated");
    std::memcpy(out, r->data + r->pos, length);
    r->pos += length;
}
[[noreturn]] void png_quiet_error(png_structp png, png_const_charp) { png_longjmp(png, 1); }
void png_quiet_warning(png_structp, png_const_charp) {}

std::optional<ImageSize> png_size(const std::string& b) {
    if (b.size() < 8 || png_sig_cmp(bytes_of(b), 0, 8) != 0) return std::nullopt;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, png_quiet_error, png_quiet_warning);
    if (!png) return std::nullopt;
    png_infop info = png_create_info_struct(png);
    MemoryReader reader{bytes_of(b), b.size(), 0};
    ImageSize size;
    bool ok = false;
    if (info && setjmp(png_jmpbuf(png)) == 0) {
        png_set_read_fn(png, &reader, png_read_memory);
        png_read_info(png, info);
        size.width = png_get_image_width(png, info);
        size.height = png_get_image_height(png, info);
        ok = true;
    }
    png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
    return ok ? std::optional<ImageSize>(size) : std::nullopt;
}

// --- JPEG (libjpeg) ---
struct JpegErrors {
    jpeg_error_mgr mgr;
    std::jmp_buf jump;
};
[[noreturn]] void jpeg_quiet_exit(j_common_ptr c) { std::longjmp(reinterpret_cast<JpegErrors*>(c->err)->jump, 1); }
void jpeg_quiet_message(j_common_ptr, int) {}

std::optional<ImageSize> jpeg_size(const std::string& b) {
    if (b.size() < 3 || bytes_of(b)[0] != 0xFF || bytes_of(b)[1] != 0xD8) return std::nullopt;
    jpeg_decompress_struct cinfo;
    JpegErrors errors;
    cinfo.err = jpeg_std_error(&errors.mgr);
    errors.mgr.error_exit = jpeg_quiet_exit;
    errors.mgr.emit_message = jpeg_quiet_message;
    if (setjmp(errors.jump) != 0) {
        jpeg_destroy_decompress(&cinfo);
        return std::nullopt;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, bytes_of(b), static_cast<unsigned long>(b.size()));
    jpeg_read_header(&cinfo, TRUE);
    const ImageSize size{cinfo.image_width, cinfo.image_height};
    jpeg_destroy_decompress(&cinfo);
    return size;
}

// --- WebP (libwebp) ---
std::optional<ImageSize> webp_size(const std::string& b) {
    if (b.size() < 12 || b.compare(0, 4, "RIFF") != 0 || b.compare(8, 4, "WEBP") != 0) return std::nullopt;
    int w = 0, h = 0;
    if (!WebPGetInfo(bytes_of(b), b.size(), &w, &h)) return std::nullopt;
    return ImageSize{w, h};
}

// --- TIFF (libtiff, from memory) ---
struct TiffMemory {
    const std::string* bytes;
    toff_t pos = 0;
};
tsize_t tiff_read(thandle_t h, tdata_t out, tsize_t n) {
    auto* m = static_cast<TiffMemory*>(h);
    const toff_t size = m->bytes->size();
    if (m->pos >= size || n <= 0) return 0;
    const toff_t k = std::min<toff_t>(static_cast<toff_t>(n), size - m->pos);
    std::memcpy(out, m->bytes->data() + m->pos, k);
    m->pos += k;
    return static_cast<tsize_t>(k);
}
tsize_t tiff_write(thandle_t, tdata_t, tsize_t) { return 0; }
toff_t tiff_seek(thandle_t h, toff_t off, int whence) {
    auto* m = static_cast<TiffMemory*>(h);
    const toff_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->bytes->size() : 0;
    m->pos = base + off;
    return m->pos;
}
int tiff_close(thandle_t) { return 0; }
toff_t tiff_size(thandle_t h) { return static_cast<TiffMemory*>(h)->bytes->size(); }
int tiff_map(thandle_t, tdata_t*, toff_t*) { return 0; }
void tiff_unmap(thandle_t, tdata_t, toff_t) {}

std::optional<ImageSize> tiff_size_of(const std::string& b) {
    if (b.size() < 8 || !(b.compare(0, 4, "II*\0", 4) == 0 || b.compare(0, 4, "MM\0*", 4) == 0 ||
                          b.compare(0, 4, "II+\0", 4) == 0 || b.compare(0, 4, "MM\0+", 4) == 0))
        return std::nullopt;
    // Quiet: the caller reports one message of its own.
    TIFFSetErrorHandler(nullptr);
    TIFFSetWarningHandler(nullptr);
    TiffMemory memory{&b};
    TIFF* tif = TIFFClientOpen("image", "rm", &memory, tiff_read, tiff_write, tiff_seek, tiff_close, tiff_size,
                               tiff_map, tiff_unmap);
    if (!tif) return std::nullopt;
    uint32_t w = 0, h = 0;
    const bool ok = TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &w) == 1 && TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &h) == 1;
    TIFFClose(tif);
    if (!ok) return std::nullopt;
    return ImageSize{w, h};
}

// --- BMP: the BITMAPINFOHEADER's (or the older BITMAPCOREHEADER's) width and height ---
uint32_t le32(const unsigned char* p) { return p[0] | (p[1] << 8) | (p[2] << 16) | (uint32_t(p[3]) << 24); }
uint16_t le16(const unsigned char* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

std::optional<ImageSize> bmp_size(const std::string& b) {
    if (b.size() < 26 || b[0] != 'B' || b[1] != 'M') return std::nullopt;
    const unsigned char* p = bytes_of(b);
    const uint32_t header = le32(p + 14);
    if (header == 12) return ImageSize{le16(p + 18), le16(p + 20)};
    if (header < 40) return std::nullopt;
    const int64_t w = static_cast<int32_t>(le32(p + 18)), h = static_cast<int32_t>(le32(p + 22));
    if (w <= 0 || h == 0) return std::nullopt;
    return ImageSize{w, h < 0 ? -h : h};  // a negative height is a top-down image
}

// --- PBM/PGM/PPM (P1..P6): "P<n>", then width and height as decimal text, comments from '#' ---
std::optional<ImageSize> pnm_size(const std::string& b) {
    if (b.size() < 3 || b[0] != 'P' || b[1] < '1' || b[1] > '6') return std::nullopt;
    size_t i = 2;
    int64_t v[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
        for (;;) {  // whitespace and comments
            while (i < b.size() && std::isspace(static_cast<unsigned char>(b[i]))) ++i;
            if (i < b.size() && b[i] == '#') {
                while (i < b.size() && b[i] != '\n') ++i;
                continue;
            }
            break;
        }
        size_t digits = 0;
        while (i < b.size() && b[i] >= '0' && b[i] <= '9' && digits < 10) {
            v[k] = v[k] * 10 + (b[i] - '0');
            ++i;
            ++digits;
        }
        // A number ends at whitespace or a comment; the end of the bytes may have cut it short.
        if (digits == 0 || digits == 10 || i >= b.size() || !(std::isspace(static_cast<unsigned char>(b[i])) || b[i] == '#'))
            return std::nullopt;
    }
    if (v[0] < 1 || v[1] < 1) return std::nullopt;
    return ImageSize{v[0], v[1]};
}

}  // namespace

std::optional<ImageSize> image_size_from_header(const std::string& bytes) {
    for (auto* reader : {png_size, jpeg_size, webp_size, tiff_size_of, bmp_size, pnm_size})
        if (auto size = reader(bytes)) return size;
    return std::nullopt;
}

int64_t max_image_pixels() { return g_max_pixels.load(); }

void set_max_image_pixels(int64_t pixels) {
    if (pixels < 1) throw UsageError("the image size limit must be at least 1 pixel, got " + std::to_string(pixels));
    g_max_pixels.store(pixels);
}

void check_image_pixels(const ImageSize& size, const std::string& what) {
    const int64_t limit = max_image_pixels();
    // Each side is at most 2^32, so the product fits.
    if (size.width > limit || size.height > limit || size.width * size.height > limit)
        throw Error(what + " declares " + std::to_string(size.width) + "x" + std::to_string(size.height) +
                    " pixels, more than the limit of " + std::to_string(limit) +
                    ": use a smaller image, or raise the limit with --max-image-pixels N if it is real");
}

}  // namespace convscope
