#pragma once
// Files: NPY arrays, JSON, text, all written to a temporary name and renamed (no half-written
// results), and the output folder with its manifest.json.
#include <ATen/core/Tensor.h>

#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

namespace convscope {

// Writes `content` to `path` atomically (temp file in the same folder, fsync, rename).
void write_file_atomic(const std::string& path, const std::string& content);
// Reads a whole file; throws Error naming the file if it cannot.
std::string read_file(const std::string& path);

// NPY (format 1.0, little-endian, C order). Writes float32, float64, int64, int32, uint8 tensors.
void write_npy(const std::string& path, const at::Tensor& t);
// The bytes write_npy would write.
std::string npy_bytes(const at::Tensor& t);
// Reads an NPY file into a tensor (dtypes: f4, f8, i8, i4, u1, i1, b1 little-endian, C order).
// Throws Error for a bad header, an unsupported dtype, Fortran order or a truncated body.
at::Tensor read_npy(const std::string& path);

// A float32 [rows, cols] NPY file written row block by row block as results come, so that a
// large array is never held in memory: the header first, the rows in order, the file under a
// temporary name beside `path` until finish() renames it into place (never a half-written file;
// the destructor removes an unfinished one). Throws Error naming the path when it cannot write.
class NpyRowWriter {
public:
    NpyRowWriter(std::string path, int64_t rows, int64_t cols);
    ~NpyRowWriter();
    NpyRowWriter(const NpyRowWriter&) = delete;
    NpyRowWriter& operator=(const NpyRowWriter&) = delete;
    void write(const at::Tensor& block);  // [k, cols], any floating dtype (stored as float32)
    int64_t rows_written() const { return written_; }
    void finish();  // Error when fewer or more rows came than announced

private:
    std::string path_, tmp_;
    int64_t rows_, cols_, written_ = 0;
    int fd_ = -1;
};

// A 2-D float32 C-order NPY file (numpy.save's and NpyRowWriter's) mapped into memory: the
// tensor [rows, cols] reads the file's pages as they are touched, nothing is copied, and the
// pages can be dropped and read again under memory pressure; the mapping lives as long as the
// tensor's storage. Writes to the tensor stay private (copy-on-write): the file never changes.
// Throws Error for what read_npy refuses (a truncated file: its header promises more rows than
// it holds) and for another dtype or rank.
at::Tensor map_npy(const std::string& path);

void write_json(const std::string& path, const nlohmann::json& j);
void write_csv(const std::string& path, const std::vector<std::string>& header,
               const std::vector<std::vector<std::string>>& rows);

// SHA-256 (hex) of a file's bytes, and of a string.
std::string sha256_file(const std::string& path);
std::string sha256_hex(const std::string& data);

// An output folder: creates it, records each written file with its meaning, and writes
// manifest.json (command line, options, model file hash, library versions, files).
class OutputDir {
public:
    explicit OutputDir(const std::string& dir);
    const std::string& dir() const { return dir_; }
    // Full path of a file in the folder (creates subfolders); records it with its meaning.
    std::string file(const std::string& relative, const std::string& meaning);
    void set_command(const std::string& command_line, const nlohmann::json& options,
                     const std::string& model_path, const std::string& model_hash);
    // What was done to the inputs (to_json(Preprocess)), recorded as the manifest's "preprocess".
    void set_preprocess(const nlohmann::json& preprocess);
    // Writes manifest.json (atomically). Call after all files are written.
    void write_manifest() const;

private:
    std::string dir_;
    std::string command_line_, model_path_, model_hash_;
    std::string options_json_, preprocess_json_;
    std::vector<std::pair<std::string, std::string>> files_;
};

}  // namespace convscope
