// Files: atomic writes, JSON, CSV, SHA-256 and the output folder's manifest (NPY: npy.cpp).
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

#include "runtime/detail/files.hpp"
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

namespace detail {

std::string errno_text() { return std::strerror(errno); }

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

std::string temp_path_for(const std::string& path) {
    static std::atomic<uint64_t> counter{0};
    fs::path p(path);
    std::string name = "." + p.filename().string() + ".tmp." + std::to_string(::getpid()) + "." +
                       std::to_string(counter.fetch_add(1));
    return (p.parent_path() / name).string();
}

bool read_exact(std::FILE* f, void* out, size_t size) {
    return std::fread(out, 1, size, f) == size;
}

}  // namespace detail

namespace {

using detail::errno_text;
using detail::FilePtr;
using detail::read_exact;
using detail::write_all;


// Closes a file descriptor on scope exit unless released.
struct FdGuard {
    int fd = -1;
    ~FdGuard() {
        if (fd >= 0) ::close(fd);
    }
};





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


// --- plain files -----------------------------------------------------------------------------

void write_file_atomic(const std::string& path, const std::string& content) {
    const std::string tmp = detail::temp_path_for(path);
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
