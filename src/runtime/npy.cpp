// NPY arrays: whole files (write_npy, read_npy), files written row by row (NpyRowWriter) and
// files mapped into memory (map_npy), for dataset-scale features read once and never held twice.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>

#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <filesystem>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/files.hpp"

// NPY stores little-endian data and we copy tensor bytes as they are in memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "convscope's NPY code assumes a little-endian host");

namespace convscope {
namespace {

namespace fs = std::filesystem;
using detail::errno_text;
using detail::FilePtr;
using detail::read_exact;

// --- NPY dtype table -----------------------------------------------------------------------

struct NpyType {
    const char* code;  // type character and size without the byte-order mark, e.g. "f4"
    at::ScalarType scalar;
    size_t itemsize;
};

constexpr NpyType kNpyTypes[] = {
    {"f4", at::kFloat, 4}, {"f8", at::kDouble, 8}, {"i8", at::kLong, 8}, {"i4", at::kInt, 4},
    {"u1", at::kByte, 1},  {"i1", at::kChar, 1},   {"b1", at::kBool, 1},
};

const char* kSupportedNpy = "'<f4', '<f8', '<i8', '<i4', '|u1', '|i1', '|b1'";

// --- NPY header dict parser ------------------------------------------------------------------
// The header is a Python dict literal such as
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
// We parse just that grammar: string keys; string, True/False or int-tuple values; any
// whitespace, either quote style and trailing commas.

struct NpyHeader {
    std::string descr;
    bool fortran_order = false;
    std::vector<int64_t> shape;
    bool has_descr = false, has_order = false, has_shape = false;
};

class HeaderParser {
public:
    HeaderParser(const std::string& text, const std::string& path) : s_(text), path_(path) {}

    NpyHeader parse() {
        NpyHeader h;
        expect('{');
        while (true) {
            skip_space();
            if (peek() == '}') {
                ++pos_;
                break;
            }
            std::string key = parse_string();
            expect(':');
            skip_space();
            if (key == "descr") {
                h.descr = parse_string();
                h.has_descr = true;
            } else if (key == "fortran_order") {
                h.fortran_order = parse_bool();
                h.has_order = true;
            } else if (key == "shape") {
                h.shape = parse_tuple();
                h.has_shape = true;
            } else {
                fail("unexpected key '" + key + "'");
            }
            skip_space();
            if (peek() == ',') {
                ++pos_;
            } else if (peek() != '}') {
                fail("expected ',' or '}'");
            }
        }
        if (!h.has_descr || !h.has_order || !h.has_shape) {
            fail("the header must have 'descr', 'fortran_order' and 'shape'");
        }
        return h;
    }

private:
    char peek() const { return pos_ < s_.size() ? s_[pos_] : '\0'; }
    void skip_space() {
        while (pos_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[pos_]))) ++pos_;
    }
    void expect(char c) {
        skip_space();
        if (peek() != c) fail(std::string("expected '") + c + "'");
        ++pos_;
    }
    std::string parse_string() {
        skip_space();
        char quote = peek();
        if (quote != '\'' && quote != '"') fail("expected a quoted string");
        size_t end = s_.find(quote, pos_ + 1);
        if (end == std::string::npos) fail("unterminated string");
        std::string out = s_.substr(pos_ + 1, end - pos_ - 1);
        pos_ = end + 1;
        return out;
    }
    bool parse_bool() {
        if (s_.compare(pos_, 4, "True") == 0) {
            pos_ += 4;
            return true;
        }
        if (s_.compare(pos_, 5, "False") == 0) {
            pos_ += 5;
            return false;
        }
        fail("expected True or False");
        return false;
    }
    std::vector<int64_t> parse_tuple() {
        std::vector<int64_t> dims;
        expect('(');
        while (true) {
            skip_space();
            if (peek() == ')') {
                ++pos_;
                return dims;
            }
            if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a dimension");
            int64_t v = 0;
            while (std::isdigit(static_cast<unsigned char>(peek()))) {
                int digit = peek() - '0';
                if (v > (INT64_MAX - digit) / 10) fail("dimension too large");
                v = v * 10 + digit;
                ++pos_;
            }
            // Python writes 2-D shapes as (2, 3) but old writers may append an 'L' (long).
            if (peek() == 'L') ++pos_;
            dims.push_back(v);
            skip_space();
            if (peek() == ',') {
                ++pos_;
            } else if (peek() != ')') {
                fail("expected ',' or ')' in shape");
            }
        }
    }
    [[noreturn]] void fail(const std::string& what) const {
        throw Error("cannot read " + path_ + ": bad NPY header (" + what + " at offset " +
                    std::to_string(pos_) + " of '" + s_ + "'); the file is not a valid .npy, " +
                    "re-save it with numpy.save");
    }

    const std::string& s_;
    const std::string& path_;
    size_t pos_ = 0;
};

std::string shape_text(const std::vector<int64_t>& shape) {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i) {
        if (i) s += ", ";
        s += std::to_string(shape[i]);
    }
    if (shape.size() == 1) s += ",";
    return s + ")";
}


void write_rows(int fd, const char* p, size_t n, const std::string& path) {
    if (!detail::write_all(fd, p, n)) throw Error("cannot write " + path + ": " + errno_text() + "; check the free space");
}

}  // namespace

// --- NPY -----------------------------------------------------------------------------------

namespace detail {

std::string npy_header(at::ScalarType scalar, const std::vector<int64_t>& shape) {
    const NpyType* type = nullptr;
    for (const auto& candidate : kNpyTypes) {
        if (candidate.scalar == scalar) type = &candidate;
    }
    if (!type) {
        throw Error(std::string("cannot write a ") + c10::toString(scalar) +
                    " tensor as NPY: convert it to float32, float64, int64, int32, uint8, int8 "
                    "or bool first");
    }
    const char order = type->itemsize == 1 ? '|' : '<';
    std::string header = std::string("{'descr': '") + order + type->code +
                         "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
    // Pad with spaces so magic (6) + version (2) + length (2) + header + '\n' is a multiple of
    // 64, as numpy does (aligned data for memory mapping).
    const size_t prefix = 10;
    size_t total = prefix + header.size() + 1;
    header.append((64 - total % 64) % 64, ' ');
    header += '\n';
    if (header.size() > 65535) {
        throw Error("cannot write NPY: the shape has too many dimensions for NPY 1.0");
    }
    std::string out;
    out.append("\x93NUMPY", 6);
    out += char(1);
    out += char(0);
    out += char(header.size() & 0xff);
    out += char(header.size() >> 8);
    out += header;
    return out;
}

}  // namespace detail

std::string npy_bytes(const at::Tensor& t_in) {
    at::Tensor t = t_in.detach().to(at::kCPU).contiguous();
    std::string out = detail::npy_header(t.scalar_type(), t.sizes().vec());
    const size_t data_bytes = size_t(t.numel()) * t.element_size();
    out.reserve(out.size() + data_bytes);
    out.append(static_cast<const char*>(t.data_ptr()), data_bytes);
    return out;
}

void write_npy(const std::string& path, const at::Tensor& t) {
    write_file_atomic(path, npy_bytes(t));
}

namespace detail {

// Where an NPY file's data lies, after every check read_npy makes (magic, version, header,
// dtype, byte order, C order, a body as long as the header says). Throws Error naming the file.
struct NpyLayout {
    std::vector<int64_t> shape;
    at::ScalarType scalar = at::kFloat;  // kBool for '|b1'
    uint64_t data_offset = 0;
    size_t bytes = 0;
};
NpyLayout npy_layout(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw Error("cannot read " + path + ": it is a folder");
    FilePtr f(std::fopen(path.c_str(), "rb"));
    if (!f) throw Error("cannot read " + path + ": " + errno_text() + "; check the path");
    const uint64_t file_size = fs::file_size(path, ec);
    if (ec) throw Error("cannot read " + path + ": " + ec.message());

    const std::string not_npy =
        "cannot read " + path + ": not an NPY file (bad magic); save arrays with numpy.save";
    unsigned char prefix[8];
    if (!read_exact(f.get(), prefix, 8)) throw Error(not_npy);
    if (std::memcmp(prefix, "\x93NUMPY", 6) != 0) throw Error(not_npy);
    const int major = prefix[6];
    // Versions 2 and 3 differ from 1 only in a 4-byte header length (3: UTF-8 header).
    uint64_t header_len = 0;
    size_t len_bytes = major == 1 ? 2 : 4;
    if (major < 1 || major > 3) {
        throw Error("cannot read " + path + ": NPY format version " + std::to_string(major) +
                    " is not supported; re-save it with numpy.save");
    }
    unsigned char len_buf[4];
    if (!read_exact(f.get(), len_buf, len_bytes)) throw Error(not_npy);
    for (size_t i = 0; i < len_bytes; ++i) header_len |= uint64_t(len_buf[i]) << (8 * i);
    const uint64_t data_offset = 8 + len_bytes + header_len;
    if (data_offset > file_size) {
        throw Error("cannot read " + path + ": the NPY header is truncated (the file has " +
                    std::to_string(file_size) + " bytes); the file is damaged, write it again");
    }
    std::string header(header_len, '\0');
    if (!read_exact(f.get(), header.data(), header_len)) {
        throw Error("cannot read " + path + ": the NPY header is truncated");
    }
    NpyHeader h = HeaderParser(header, path).parse();

    if (h.fortran_order) {
        throw Error("cannot read " + path +
                    ": the array is in Fortran order; save it in C order "
                    "(numpy.save(path, numpy.ascontiguousarray(a)))");
    }
    // descr = byte-order mark + type code, e.g. '<f4'.
    const char byte_order = h.descr.empty() ? '\0' : h.descr[0];
    const std::string code = h.descr.empty() ? "" : h.descr.substr(1);
    const NpyType* type = nullptr;
    for (const auto& candidate : kNpyTypes) {
        if (code == candidate.code) type = &candidate;
    }
    if (!type) {
        throw Error("cannot read " + path + ": NPY dtype '" + h.descr +
                    "' is not supported; supported: " + kSupportedNpy +
                    " (convert with a.astype(numpy.float32))");
    }
    // Byte order does not matter for one-byte types; for others only little-endian is read.
    if (type->itemsize > 1 && byte_order != '<' && byte_order != '=') {
        throw Error("cannot read " + path + ": NPY dtype '" + h.descr +
                    "' is big-endian or has no byte order; save it little-endian "
                    "(a.astype(a.dtype.newbyteorder('<')))");
    }
    if (type->itemsize == 1 && byte_order != '|' && byte_order != '<' && byte_order != '>' &&
        byte_order != '=') {
        throw Error("cannot read " + path + ": NPY dtype '" + h.descr + "' is not supported; " +
                    "supported: " + kSupportedNpy);
    }

    // The byte count the header claims, with overflow checks: a lying header must not make us
    // allocate more than the file holds.
    uint64_t numel = 1;
    for (int64_t d : h.shape) {
        if (d != 0 && numel > UINT64_MAX / uint64_t(d))
            numel = UINT64_MAX;
        else
            numel *= uint64_t(d);
    }
    const uint64_t available = file_size - data_offset;
    const bool too_big = numel > available / type->itemsize;
    if (too_big) {
        throw Error("cannot read " + path + ": the file is truncated: its header says shape " +
                    shape_text(h.shape) + " of '" + h.descr + "' but only " +
                    std::to_string(available) + " data bytes follow; the file is damaged or " +
                    "was not fully written, save it again");
    }
    // Even an empty array needs its strides, the products of the other sizes (numpy allows 32
    // dimensions at most).
    uint64_t strides = type->itemsize;
    for (int64_t d : h.shape)
        if (d != 0 && __builtin_mul_overflow(strides, uint64_t(d), &strides)) strides = UINT64_MAX;
    if (h.shape.size() > 32 || strides > uint64_t(INT64_MAX))
        throw Error("cannot read " + path + ": its header says shape " + shape_text(h.shape) +
                    ", which no array can have; the file is damaged, save it again");
    NpyLayout out;
    out.shape = h.shape;
    out.scalar = type->scalar;
    out.data_offset = data_offset;
    out.bytes = size_t(numel) * type->itemsize;
    return out;
}

}  // namespace detail

at::Tensor read_npy(const std::string& path) {
    const detail::NpyLayout layout = detail::npy_layout(path);
    FilePtr f(std::fopen(path.c_str(), "rb"));
    if (!f) throw Error("cannot read " + path + ": " + errno_text() + "; check the path");
    if (std::fseek(f.get(), long(layout.data_offset), SEEK_SET) != 0)
        throw Error("cannot read " + path + ": " + errno_text());
    const size_t bytes = layout.bytes;

    // Bools are read as bytes and normalised, since a bool tensor must hold only 0 or 1.
    at::ScalarType read_as = layout.scalar == at::kBool ? at::kByte : layout.scalar;
    at::Tensor t = torch::empty(layout.shape, torch::TensorOptions().dtype(read_as));
    if (bytes > 0 && !read_exact(f.get(), t.data_ptr(), bytes)) {
        throw Error("cannot read " + path + ": the file is truncated (read error in the data)");
    }
    if (layout.scalar == at::kBool) t = t.ne(0);
    return t;
}

NpyRowWriter::NpyRowWriter(std::string path, int64_t rows, int64_t cols)
    : path_(std::move(path)), rows_(rows), cols_(cols) {
    if (rows < 0 || cols < 0) throw Error("cannot write " + path_ + ": a negative shape");
    tmp_ = detail::temp_path_for(path_);
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw Error("cannot write " + path_ + ": " + errno_text() + "; check the folder");
    const std::string header = detail::npy_header(at::kFloat, {rows, cols});
    write_rows(fd_, header.data(), header.size(), path_);
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
    write_rows(fd_, static_cast<const char*>(t.data_ptr()), size_t(t.numel()) * sizeof(float), path_);
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
