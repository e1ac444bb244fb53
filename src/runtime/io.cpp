// Files: atomic writes, NPY, JSON, CSV, SHA-256 and the output folder's manifest.
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/json.hpp"
#include "convscope/runtime/receptive_field.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <atomic>
#include "convscope/runtime/error.hpp"
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <opencv2/core/version.hpp>

#include "runtime/detail/npy.hpp"
#include "runtime/detail/sha256.hpp"

#if __has_include(<torch/version.h>)
#include <torch/version.h>
#endif

#ifndef CONVSCOPE_VERSION
#define CONVSCOPE_VERSION "unknown"
#endif

// NPY stores little-endian data and we copy tensor bytes as they are in memory.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "convscope's NPY code assumes a little-endian host");

namespace fs = std::filesystem;

namespace convscope {
namespace {

std::string errno_text() { return std::strerror(errno); }

// Closes a file descriptor on scope exit unless released.
struct FdGuard {
    int fd = -1;
    ~FdGuard() {
        if (fd >= 0) ::close(fd);
    }
};

// Writes all of `size` bytes, retrying short writes and EINTR. Returns false on error (errno set).
bool write_all(int fd, const char* data, size_t size) {
    while (size > 0) {
        ssize_t n = ::write(fd, data, size);
        if (n < 0) {
            if (errno == EINTR) continue;
            return false;
        }
        data += n;
        size -= size_t(n);
    }
    return true;
}

// A temp name in the same folder as `path` (rename is only atomic within one file system),
// unique per process and call so concurrent writers never share one.
std::string temp_name_for(const std::string& path) {
    static std::atomic<uint64_t> counter{0};
    fs::path p(path);
    std::string name = "." + p.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                       std::to_string(counter.fetch_add(1));
    return (p.parent_path() / name).string();
}

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

// Reads exactly `size` bytes at the current position; false if the file ends early.
bool read_exact(std::FILE* f, void* out, size_t size) {
    return std::fread(out, 1, size, f) == size;
}

struct FileCloser {
    void operator()(std::FILE* f) const {
        if (f) std::fclose(f);
    }
};
using FilePtr = std::unique_ptr<std::FILE, FileCloser>;

std::string csv_field(const std::string& field) {
    // RFC 4180: quote fields holding a separator, a quote or a line break; double the quotes.
    if (field.find_first_of(",\"\n\r") == std::string::npos) return field;
    std::string out = "\"";
    for (char c : field) {
        if (c == '"') out += '"';
        out += c;
    }
    return out + "\"";
}

std::string utc_now_iso8601() {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

}  // namespace

namespace detail {
std::string temp_path_for(const std::string& path) { return temp_name_for(path); }
}  // namespace detail

// --- plain files -----------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& content) {
    const std::string tmp = temp_name_for(path);
    FdGuard guard;
    guard.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (guard.fd < 0) {
        std::string why = errno_text();
        fs::path parent = fs::path(path).parent_path();
        std::error_code ec;
        if (!parent.empty() && !fs::is_directory(parent, ec)) {
            throw Error("cannot write " + path + ": the folder " + parent.string() +
                        " does not exist; create it or choose another output path");
        }
        throw Error("cannot write " + path + ": " + why +
                    "; check that the folder is writable and the disk is not full");
    }
    // From here on a failure must not leave the temp file behind.
    auto fail = [&](const std::string& step) {
        std::string why = errno_text();
        ::close(guard.fd);
        guard.fd = -1;
        ::unlink(tmp.c_str());
        throw Error("cannot write " + path + " (" + step + "): " + why +
                    "; check free disk space and permissions");
    };
    if (!write_all(guard.fd, content.data(), content.size())) fail("write");
    // fsync before rename so a crash leaves either the old file or the complete new one.
    if (::fsync(guard.fd) != 0) fail("fsync");
    if (::close(guard.fd) != 0) {
        guard.fd = -1;
        std::string why = errno_text();
        ::unlink(tmp.c_str());
        throw Error("cannot write " + path + " (close): " + why);
    }
    guard.fd = -1;
    if (::rename(tmp.c_str(), path.c_str()) != 0) {
        std::string why = errno_text();
        ::unlink(tmp.c_str());
        throw Error("cannot write " + path + " (rename): " + why +
                    "; if it is a folder, remove it or choose another name");
    }
    // Persist the rename itself; failure here is harmless for correctness, so it is not fatal.
    fs::path parent = fs::path(path).parent_path();
    int dir_fd = ::open(parent.empty() ? "." : parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) {
        ::fsync(dir_fd);
        ::close(dir_fd);
    }
}

std::string read_file(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) {
        throw Error("cannot read " + path + ": it is a folder, not a file");
    }
    FilePtr f(std::fopen(path.c_str(), "rb"));
    if (!f) {
        throw Error("cannot read " + path + ": " + errno_text() + "; check the path");
    }
    std::string out;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) out.append(buf, n);
    if (std::ferror(f.get())) {
        throw Error("cannot read " + path + ": read error (" + errno_text() + ")");
    }
    return out;
}

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

// --- JSON, CSV -------------------------------------------------------------------------------

void write_json(const std::string& path, const nlohmann::json& j) {
    write_file_atomic(path, json_text(j, 2) + "\n");
}

void write_csv(const std::string& path, const std::vector<std::string>& header,
               const std::vector<std::vector<std::string>>& rows) {
    std::string out;
    auto add_line = [&out](const std::vector<std::string>& fields) {
        for (size_t i = 0; i < fields.size(); ++i) {
            if (i) out += ',';
            out += csv_field(fields[i]);
        }
        out += '\n';
    };
    add_line(header);
    for (const auto& row : rows) {
        CONVSCOPE_CHECK(row.size() == header.size(), "a CSV row has another number of cells than the header");
        add_line(row);
    }
    write_file_atomic(path, out);
}

// --- SHA-256 ---------------------------------------------------------------------------------

std::string sha256_hex(const std::string& data) {
    detail::Sha256 h;
    h.update(data);
    return h.hex_digest();
}

std::string sha256_file(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) throw Error("cannot hash " + path + ": it is a folder");
    FilePtr f(std::fopen(path.c_str(), "rb"));
    if (!f) throw Error("cannot read " + path + ": " + errno_text() + "; check the path");
    detail::Sha256 h;
    std::vector<char> buf(1 << 20);
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) h.update(buf.data(), n);
    if (std::ferror(f.get())) throw Error("cannot read " + path + ": read error");
    return h.hex_digest();
}

// --- OutputDir -------------------------------------------------------------------------------

OutputDir::OutputDir(const std::string& dir) : dir_(dir) {
    std::error_code ec;
    if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) {
        throw Error("cannot use " + dir +
                    " as the output folder: it is a file; choose another --out");
    }
    fs::create_directories(dir, ec);
    if (ec) {
        throw Error("cannot create the output folder " + dir + ": " + ec.message() +
                    "; choose another --out");
    }
}

std::string OutputDir::file(const std::string& relative, const std::string& meaning) {
    fs::path rel(relative);
    // Files must stay inside the folder, or the manifest would describe files elsewhere.
    if (relative.empty() || rel.is_absolute()) {
        throw Error("output file name '" + relative + "' must be a relative path inside " + dir_);
    }
    for (const auto& part : rel) {
        if (part == "..") {
            throw Error("output file name '" + relative + "' must not contain '..'");
        }
    }
    fs::path full = fs::path(dir_) / rel;
    if (rel.has_parent_path()) {
        std::error_code ec;
        fs::create_directories(full.parent_path(), ec);
        if (ec) {
            throw Error("cannot create the folder " + full.parent_path().string() + ": " +
                        ec.message());
        }
    }
    const std::string key = rel.lexically_normal().generic_string();
    bool found = false;
    for (auto& entry : files_) {
        if (entry.first == key) {
            entry.second = meaning;  // written again: keep one entry, latest meaning
            found = true;
        }
    }
    if (!found) files_.emplace_back(key, meaning);
    return full.string();
}

void OutputDir::set_command(const std::string& command_line, const nlohmann::json& options,
                            const std::string& model_path, const std::string& model_hash) {
    command_line_ = command_line;
    options_json_ = json_text(options);
    model_path_ = model_path;
    model_hash_ = model_hash;
}

void OutputDir::set_preprocess(const nlohmann::json& preprocess) { preprocess_json_ = json_text(preprocess); }

void OutputDir::write_manifest() const {
    nlohmann::json m;
    m["command"] = command_line_;
    m["options"] =
        options_json_.empty() ? nlohmann::json::object() : nlohmann::json::parse(options_json_);
    m["model"] = {{"path", model_path_}, {"sha256", model_hash_}};
    if (!preprocess_json_.empty()) m["preprocess"] = nlohmann::json::parse(preprocess_json_);
#ifdef TORCH_VERSION
    const std::string torch_version = TORCH_VERSION;
#else
    const std::string torch_version = "unknown";
#endif
    m["versions"] = {
        {"convscope", CONVSCOPE_VERSION}, {"libtorch", torch_version}, {"opencv", CV_VERSION}};
    nlohmann::json files = nlohmann::json::array();
    for (const auto& [path, meaning] : files_)
        files.push_back({{"path", path}, {"meaning", meaning}});
    m["files"] = files;
    m["created"] = utc_now_iso8601();
    write_json((fs::path(dir_) / "manifest.json").string(), m);
}

}  // namespace convscope
