// IDX reading through zlib's gz* functions, which read plain files as they are.
#include "runtime/detail/idx.hpp"

#include <torch/torch.h>
#include <zlib.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "convscope/runtime/error.hpp"

namespace convscope::detail {
namespace {

struct GzCloser {
    void operator()(gzFile_s* f) const {
        if (f) gzclose(f);
    }
};

// How many data bytes the file can plausibly hold: the file size for a plain file, for gzip
// the size its trailer records (capped by deflate's maximum ratio, since a trailer can lie too).
// Only used to size the first allocation, never trusted for correctness.
uint64_t size_hint(const std::string& path, uint64_t file_size) {
    std::ifstream in(path, std::ios::binary);
    unsigned char magic[2] = {0, 0};
    in.read(reinterpret_cast<char*>(magic), 2);
    if (!(magic[0] == 0x1f && magic[1] == 0x8b)) return file_size;
    if (file_size < 18) return 0;
    unsigned char trailer[4];
    in.seekg(std::streamoff(file_size - 4));
    in.read(reinterpret_cast<char*>(trailer), 4);
    if (!in) return 0;
    uint64_t isize = uint64_t(trailer[0]) | uint64_t(trailer[1]) << 8 | uint64_t(trailer[2]) << 16 |
                     uint64_t(trailer[3]) << 24;
    return std::min(isize, file_size * 1032);
}

// The zlib error text for a short read, or "" for a clean end of file.
std::string gz_problem(gzFile f) {
    int errnum = Z_OK;
    const char* msg = gzerror(f, &errnum);
    if (errnum == Z_OK) return "";
    return msg ? msg : "unknown zlib error";
}

// Heap storage handed to a tensor without a copy.
struct ByteBuffer {
    std::vector<uint8_t> bytes;
};

}  // namespace

at::Tensor read_idx(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) {
        throw Error("cannot read IDX file " + path + ": no such file; check the path");
    }
    const uint64_t file_size = fs::file_size(path, ec);
    std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path.c_str(), "rb"));
    if (!f) throw Error("cannot open IDX file " + path + ": check its permissions");
    gzbuffer(f.get(), 1 << 17);

    const std::string damaged = "; the file is damaged or incomplete, download or copy it again";
    auto read_some = [&](void* out, unsigned size) -> unsigned {
        int n = gzread(f.get(), out, size);
        if (n < 0) {
            throw Error("cannot read IDX file " + path + ": corrupt or truncated gzip data (" +
                        gz_problem(f.get()) + ")" + damaged);
        }
        return unsigned(n);
    };

    unsigned char magic[4];
    if (read_some(magic, 4) != 4) {
        std::string zproblem = gz_problem(f.get());
        throw Error("cannot read IDX file " + path + ": truncated before the end of the header" +
                    (zproblem.empty() ? "" : " (" + zproblem + ")") + damaged);
    }
    if (magic[0] != 0 || magic[1] != 0) {
        throw Error("cannot read " + path + ": not an IDX file (bad magic number); give an " +
                    "*-idx3-ubyte[.gz] file as in MNIST / Fashion-MNIST");
    }
    if (magic[2] != 0x08) {
        char code[8];
        std::snprintf(code, sizeof code, "0x%02x", magic[2]);
        throw Error("cannot read IDX file " + path + ": data type " + code +
                    " is not supported; only unsigned bytes (0x08) are");
    }
    const int ndims = magic[3];
    if (ndims < 1 || ndims > 4) {
        throw Error("cannot read IDX file " + path + ": it has " + std::to_string(ndims) +
                    " dimensions; 1 to 4 are supported");
    }
    std::vector<int64_t> dims(static_cast<size_t>(ndims));
    uint64_t total = 1;
    bool overflow = false;
    for (int d = 0; d < ndims; ++d) {
        unsigned char b[4];
        if (read_some(b, 4) != 4) {
            throw Error("cannot read IDX file " + path +
                        ": truncated before the end of the header" + damaged);
        }
        dims[size_t(d)] = int64_t(uint32_t(b[0]) << 24 | uint32_t(b[1]) << 16 |
                                  uint32_t(b[2]) << 8 | uint32_t(b[3]));
        if (!overflow && __builtin_mul_overflow(total, uint64_t(dims[size_t(d)]), &total)) {
            overflow = true;
        }
        if (dims[size_t(d)] == 0)
            throw Error("cannot read IDX file " + path + ": its header gives dimension " + std::to_string(d + 1) +
                        " a size of 0, so it holds no data" + damaged);
    }

    // Read in chunks: the header's sizes are only believed as far as the data goes.
    auto buffer = std::make_unique<ByteBuffer>();
    const uint64_t hint = size_hint(path, file_size);
    buffer->bytes.reserve(size_t(std::min(overflow ? hint : total, hint)));
    const unsigned chunk = 1u << 20;
    while (overflow || buffer->bytes.size() < total) {
        uint64_t want = overflow ? chunk : std::min<uint64_t>(chunk, total - buffer->bytes.size());
        size_t old_size = buffer->bytes.size();
        buffer->bytes.resize(old_size + want);
        unsigned got = read_some(buffer->bytes.data() + old_size, unsigned(want));
        buffer->bytes.resize(old_size + got);
        if (got < want) break;
    }
    if (overflow || buffer->bytes.size() < total) {
        std::string shape;
        for (int64_t d : dims) shape += (shape.empty() ? "" : "x") + std::to_string(d);
        std::string zproblem = gz_problem(f.get());
        throw Error("cannot read IDX file " + path + ": truncated: the header says " + shape +
                    (overflow ? "" : " = " + std::to_string(total)) +
                    " bytes but the data ends after " + std::to_string(buffer->bytes.size()) +
                    " bytes" + (zproblem.empty() ? "" : " (" + zproblem + ")") + damaged);
    }
    // One more read makes zlib check the rest of the stream (a cut gzip trailer shows up here).
    unsigned char extra;
    read_some(&extra, 1);
    std::string zproblem = gz_problem(f.get());
    if (!zproblem.empty()) {
        throw Error("cannot read IDX file " + path + ": truncated or corrupt gzip data (" +
                    zproblem + ")" + damaged);
    }

    // Hand the bytes to a tensor without copying; the deleter frees them with the tensor.
    // The buffer is released only once the tensor owns it (from_blob may throw).
    ByteBuffer* raw = buffer.get();
    at::Tensor t = torch::from_blob(
        raw->bytes.data(), dims, [raw](void*) { delete raw; },
        torch::TensorOptions().dtype(torch::kByte));
    buffer.release();
    return t;
}

}  // namespace convscope::detail
