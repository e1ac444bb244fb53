// Datasets (Fashion-MNIST, IDX, image folders, .npy, single images), preprocessing, index
// parsing and the prefetching batch loader.
#include "convscope/runtime/dataset.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>
#include <thread>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/pil_resize.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/idx.hpp"
#include "runtime/detail/sha256.hpp"

namespace fs = std::filesystem;

namespace convscope {

const std::vector<std::string>& fashion_mnist_classes() {
    static const std::vector<std::string> names = {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    return names;
}

namespace {

// Where Debian's dataset-fashion-mnist puts the files. CONVSCOPE_FASHION_MNIST_DIR overrides it
// (for machines without the package but with the files elsewhere).
std::string fashion_mnist_dir() {
    if (const char* dir = std::getenv("CONVSCOPE_FASHION_MNIST_DIR"); dir && *dir) return dir;
    return "/usr/share/datasets/fashion-mnist";
}

bool ends_with(const std::string& s, const std::string& suffix) {
    return s.size() >= suffix.size() &&
           s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_image_file(const fs::path& p) {
    static const std::set<std::string> exts = {".png", ".jpg",  ".jpeg", ".bmp", ".webp",
                                               ".tif", ".tiff", ".pgm",  ".ppm"};
    return exts.count(detail::lower(p.extension().string())) > 0;
}

bool is_hidden(const fs::path& p) {
    const std::string name = p.filename().string();
    return !name.empty() && name[0] == '.';
}

// numpy's name for a dtype, as users know it from their arrays.
std::string numpy_name(at::ScalarType t) {
    switch (t) {
        case at::kFloat:
            return "float32";
        case at::kDouble:
            return "float64";
        case at::kLong:
            return "int64";
        case at::kInt:
            return "int32";
        case at::kByte:
            return "uint8";
        case at::kChar:
            return "int8";
        case at::kBool:
            return "bool";
        default:
            return c10::toString(t);
    }
}

// Sorts paths the way torchvision's ImageFolder walks a tree: by folder, then by file name.
void sort_like_os_walk(std::vector<fs::path>& files) {
    std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
        const std::string pa = a.parent_path().string(), pb = b.parent_path().string();
        if (pa != pb) return pa < pb;
        return a.filename().string() < b.filename().string();
    });
}

// All image files below `dir` (recursive), skipping hidden files and folders.
std::vector<fs::path> list_images(const fs::path& dir) {
    std::vector<fs::path> out;
    std::error_code ec;
    fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec);
    if (ec) throw Error("cannot list the folder " + dir.string() + ": " + ec.message());
    for (; it != fs::recursive_directory_iterator(); it.increment(ec)) {
        if (ec) throw Error("cannot list the folder " + dir.string() + ": " + ec.message());
        if (is_hidden(it->path())) {
            if (it->is_directory(ec)) it.disable_recursion_pending();
            continue;
        }
        if (it->is_regular_file(ec) && is_image_file(it->path())) out.push_back(it->path());
    }
    sort_like_os_walk(out);
    return out;
}

// Decodes an image file to float32 [C,H,W] in [0,1], C = 1 (gray) or 3 (RGB); alpha dropped.
at::Tensor decode_image(const std::string& path) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error("cannot read image " + path + ": " + ec.message() + "; check the path");
    if (size == 0) {
        throw Error("cannot read image " + path +
                    ": the file is empty (0 bytes); replace or remove it");
    }
    cv::Mat m = cv::imread(path, cv::IMREAD_UNCHANGED);
    if (m.empty()) {
        throw Error("cannot decode image " + path +
                    ": it is not a readable PNG/JPEG/BMP/WebP/TIFF/PGM/PPM image (corrupt, "
                    "truncated or another format); replace or remove it");
    }
    // Divided after the conversion, as torchvision's ToTensor does (x / 255 in float32, which
    // multiplying by a rounded 1/255 would miss by an ulp for some values).
    float scale = 1.0f;
    switch (m.depth()) {
        case CV_8U:
            scale = 255.0f;
            break;
        case CV_16U:
            scale = 65535.0f;
            break;
        case CV_32F:
        case CV_64F:
            scale = 1.0f;
            break;  // float images (TIFF) are taken as [0,1] already
        default:
            throw Error("cannot use image " + path +
                        ": signed integer pixels are not supported; save it as 8- or 16-bit");
    }
    cv::Mat rgb;
    switch (m.channels()) {
        case 1:
            rgb = m;
            break;
        case 2:
            cv::extractChannel(m, rgb, 0);
            break;  // gray + alpha
        case 3:
            cv::cvtColor(m, rgb, cv::COLOR_BGR2RGB);
            break;
        case 4:
            cv::cvtColor(m, rgb, cv::COLOR_BGRA2RGB);
            break;
        default:
            throw Error("cannot use image " + path + ": it has " + std::to_string(m.channels()) +
                        " channels; 1, 3 or 4 are supported");
    }
    cv::Mat f;
    rgb.convertTo(f, CV_32F);
    if (!f.isContinuous()) f = f.clone();
    const int64_t c = f.channels();
    at::Tensor hwc = torch::from_blob(f.data, {f.rows, f.cols, c}, torch::kFloat);
    // clone, not contiguous(): with one channel the permuted view is already contiguous and
    // would keep pointing into the Mat, which is freed on return.
    at::Tensor chw = hwc.permute({2, 0, 1}).clone(at::MemoryFormat::Contiguous);
    if (scale != 1.0f) chw.div_(scale);
    return chw;
}

// Feeds a file's name, size and sampled bytes into a hash: whole files up to 128 KiB, else the
// first and last 64 KiB. Cheap, yet sensitive to the usual changes (re-encoding, truncation).
void hash_file(detail::Sha256& h, const fs::path& path, const std::string& name) {
    std::error_code ec;
    const uint64_t size = fs::file_size(path, ec);
    h.update(name);
    h.update("\n" + std::to_string(ec ? 0 : size) + "\n");
    if (ec) return;
    std::ifstream in(path, std::ios::binary);
    const uint64_t block = 64 * 1024;
    std::string buf;
    auto take = [&](uint64_t offset, uint64_t n) {
        buf.resize(size_t(n));
        in.clear();
        in.seekg(std::streamoff(offset));
        in.read(buf.data(), std::streamsize(n));
        buf.resize(size_t(in.gcount()));
        h.update(buf);
    };
    if (size <= 2 * block) {
        take(0, size);
    } else {
        take(0, block);
        take(size - block, block);
    }
}

using detail::trim;

}  // namespace

// --- Preprocess ------------------------------------------------------------------------------

namespace {

// Per-channel values [1,C,1,1] from a list of size C or 1 (empty = fallback).
at::Tensor channel_tensor(const std::vector<double>& v, int64_t c, double fallback) {
    std::vector<float> out(static_cast<size_t>(c), float(fallback));
    for (int64_t i = 0; i < c; ++i) {
        if (v.size() == size_t(c)) out[size_t(i)] = float(v[size_t(i)]);
        else if (v.size() == 1) out[size_t(i)] = float(v[0]);
    }
    return torch::tensor(out).view({1, c, 1, 1});
}

std::string values_text(const std::vector<double>& v) {
    std::string out;
    for (size_t i = 0; i < v.size(); ++i) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%.6g", v[i]);
        out += (i ? "," : "") + std::string(buf);
    }
    return out;
}

}  // namespace

void Preprocess::validate(int64_t channels) const {
    if (as_is) return;
    auto check = [&](const std::vector<double>& v, const char* option) {
        if (!v.empty() && v.size() != 1 && int64_t(v.size()) != channels)
            throw Error(std::string("--") + option + " has " + std::to_string(v.size()) +
                        " values but the model's input has " + std::to_string(channels) +
                        " channels: give one value per channel (or one for all)");
        for (double x : v)
            if (!std::isfinite(x))
                throw Error(std::string("--") + option + " holds a value that is not a finite number");
    };
    check(mean, "mean");
    check(std, "std");
    for (double s : std)
        if (s == 0.0) throw Error("--std holds 0: normalisation would divide by zero; give the std of each channel");
    if (!(pixel_range == 1.0 || pixel_range == 255.0))
        throw Error("the pixel range must be 0-1 or 0-255 (--pixel-range)");
    if (resize < 0) throw Error("--resize must be a positive number of pixels (the shorter side)");
}

at::Tensor Preprocess::normalise(const at::Tensor& pixels) const {
    if (as_is) return pixels;
    const int64_t c = pixels.size(1);
    at::Tensor x = pixels;
    if (bgr && c == 3) x = x.flip({1});
    if (pixel_range != 1.0) x = x * pixel_range;
    if (!mean.empty()) x = x - channel_tensor(mean, c, 0.0);
    if (!std.empty()) x = x / channel_tensor(std, c, 1.0);
    return x;
}

at::Tensor Preprocess::to_display(const at::Tensor& images_nchw) const {
    if (images_nchw.dim() != 4) {
        throw Error("to_display needs images [N,C,H,W]; got " +
                    detail::shape_str(images_nchw.sizes().vec()));
    }
    const int64_t c = images_nchw.size(1);
    if (c != 1 && c != 3) {
        throw Error("cannot show images with " + std::to_string(c) +
                    " channels as pictures: only 1 (gray) or 3 (RGB) channels can be shown");
    }
    at::Tensor x = images_nchw.detach().to(torch::kCPU, torch::kFloat);
    if (as_is) {
        // Inputs of unknown scale: stretch each image's own range to [0,1].
        at::Tensor lo = x.amin({1, 2, 3}, true), hi = x.amax({1, 2, 3}, true);
        at::Tensor range = hi - lo;
        x = torch::where(range > 0, (x - lo) / range.clamp_min(1e-12), torch::zeros_like(x));
    } else {
        if (!std.empty()) x = x * channel_tensor(std, c, 1.0);
        if (!mean.empty()) x = x + channel_tensor(mean, c, 0.0);
        if (pixel_range != 1.0) x = x / pixel_range;
        if (bgr && c == 3) x = x.flip({1});
    }
    x = x.clamp(0.0, 1.0).mul(255.0).round();
    return x.to(torch::kByte).permute({0, 2, 3, 1}).contiguous();
}

std::string Preprocess::describe() const {
    if (as_is) return "none: float32 .npy data is used as is";
    std::vector<std::string> steps;
    if (input_shape.size() == 3) {
        const std::string hw = std::to_string(input_shape[1]) + "x" + std::to_string(input_shape[2]);
        if (resize > 0) {
            steps.push_back("resize the shorter side to " + std::to_string(resize));
            steps.push_back("centre crop " + hw);
        } else {
            steps.push_back("fit to " + hw);
        }
    }
    if (bgr) steps.push_back("BGR channel order");
    if (pixel_range != 1.0) steps.push_back("pixels 0-255");
    if (!mean.empty()) steps.push_back("mean " + values_text(mean));
    if (!std.empty()) steps.push_back("std " + values_text(std));
    if (mean.empty() && std.empty()) steps.push_back("no normalisation");
    std::string out;
    for (size_t i = 0; i < steps.size(); ++i) out += (i ? ", " : "") + steps[i];
    if (!source.empty()) out += " (" + source + ")";
    return out;
}

nlohmann::json to_json(const Preprocess& p) {
    nlohmann::json j = {{"input_shape", p.input_shape},
                        {"resize", p.resize},
                        {"crop", p.input_shape.size() == 3 ? nlohmann::json{p.input_shape[1], p.input_shape[2]}
                                                            : nlohmann::json(nullptr)},
                        {"pixel_range", p.pixel_range},
                        {"bgr", p.bgr},
                        {"mean", p.mean},
                        {"std", p.std},
                        {"as_is", p.as_is},
                        {"source", p.source},
                        {"text", p.describe()}};
    return j;
}

// --- Dataset ---------------------------------------------------------------------------------

namespace {

// Everything a dataset knows. Lives outside Dataset::Impl (which is private) so the helpers
// that open each kind of source can fill it in.
struct Source {
    enum class Kind { Idx, Folder, Npy, Image };
    std::string spec;
    std::string kind_name;  // "fashion-mnist", "idx", "folder", "npy", "image" (for the hash)
    Kind kind = Kind::Idx;
    int64_t n = 0;
    std::vector<int64_t> labels;  // empty = no labels
    std::vector<std::string> class_names;
    bool class_folders = false;   // Folder: labels from class subfolders
    Dataset::ClassMatch match{true, "", ""};

    // Idx: uint8 [N,H,W]. Npy: float32 [N,C,H,W] (as_is) or uint8 [N,H,W] / [N,H,W,C].
    at::Tensor data;
    bool float_as_is = false;

    // Folder / Image: the files, with names relative to the root for the hash.
    std::vector<std::string> files;
    std::vector<std::string> file_names;

    // Files that make up the source (for the hash), as (path, name used in the hash).
    std::vector<std::pair<fs::path, std::string>> hashed_files;

    mutable std::once_flag hash_once, shape_once;
    mutable std::string hash;
    mutable std::vector<int64_t> item_shape;

    void check_index(int64_t i) const {
        if (i < 0 || i >= n) {
            throw Error("index " + std::to_string(i) + " is out of range: the data has " +
                        std::to_string(n) + " items" +
                        (n > 0 ? " (0.." + std::to_string(n - 1) + ")" : ""));
        }
    }

    at::Tensor raw(int64_t i) const {
        check_index(i);
        switch (kind) {
            case Kind::Idx:
                return data[i].unsqueeze(0).to(torch::kFloat).div_(255.0);
            case Kind::Npy: {
                if (float_as_is) return data[i].clone();
                at::Tensor item = data[i];
                if (item.dim() == 2) return item.unsqueeze(0).to(torch::kFloat).div_(255.0);
                item = item.permute({2, 0, 1});
                if (item.size(0) == 4) item = item.slice(0, 0, 3);  // drop alpha
                return item.to(torch::kFloat).div_(255.0).contiguous();
            }
            case Kind::Folder:
            case Kind::Image:
                return decode_image(files[size_t(i)]);
        }
        return {};
    }
};

}  // namespace

struct Dataset::Impl : Source {};

Dataset::Dataset() : impl_(std::make_unique<Impl>()) {}
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

namespace {

// Looks for the labels file that belongs to an IDX image file: "...images-idx3..." becomes
// "...labels-idx1..." (or "idx3" becomes "idx1"), with and without ".gz".
std::string find_idx_labels(const fs::path& images) {
    std::string name = images.filename().string();
    std::string candidate = name;
    size_t pos = candidate.find("images-idx3");
    if (pos != std::string::npos) {
        candidate.replace(pos, 11, "labels-idx1");
    } else if ((pos = candidate.find("idx3")) != std::string::npos) {
        candidate.replace(pos, 4, "idx1");
    } else {
        return "";
    }
    std::vector<std::string> names = {candidate};
    if (ends_with(candidate, ".gz"))
        names.push_back(candidate.substr(0, candidate.size() - 3));
    else
        names.push_back(candidate + ".gz");
    for (const auto& n : names) {
        fs::path p = images.parent_path() / n;
        std::error_code ec;
        if (fs::is_regular_file(p, ec)) return p.string();
    }
    return "";
}

std::vector<std::string> numbered_classes(const std::vector<int64_t>& labels) {
    int64_t max_label = -1;
    for (int64_t l : labels) max_label = std::max(max_label, l);
    std::vector<std::string> names;
    for (int64_t k = 0; k <= max_label; ++k) names.push_back(std::to_string(k));
    return names;
}

// Reads labels from an IDX (1-D) file; must match the image count.
std::vector<int64_t> read_idx_labels(const std::string& path, int64_t n,
                                     const std::string& images_path) {
    at::Tensor t = detail::read_idx(path);
    if (t.dim() != 1 || t.size(0) != n) {
        throw Error("labels file " + path + " has shape " + detail::shape_str(t.sizes().vec()) + " but " +
                    images_path + " has " + std::to_string(n) +
                    " images; use the labels file that belongs to these images");
    }
    std::vector<int64_t> labels(static_cast<size_t>(n));
    const uint8_t* p = t.data_ptr<uint8_t>();
    for (int64_t i = 0; i < n; ++i) labels[size_t(i)] = p[i];
    return labels;
}

void open_idx(Source& d, const fs::path& path) {
    d.kind = Source::Kind::Idx;
    at::Tensor images = detail::read_idx(path.string());
    if (images.dim() != 3) {
        throw Error("IDX file " + path.string() + " has shape " + detail::shape_str(images.sizes().vec()) +
                    ": image files must have 3 dimensions (N,H,W); is this a labels file? "
                    "give the *-images-idx3-ubyte file");
    }
    if (images.size(1) < 1 || images.size(2) < 1) {
        throw Error("IDX file " + path.string() + " has images of size 0; the file is damaged");
    }
    d.data = images;
    d.n = images.size(0);
    d.hashed_files.emplace_back(path, path.filename().string());
    const std::string labels_path = find_idx_labels(path);
    if (!labels_path.empty()) {
        d.labels = read_idx_labels(labels_path, d.n, path.string());
        d.hashed_files.emplace_back(labels_path, fs::path(labels_path).filename().string());
    }
}

void open_fashion_mnist(Source& d, const std::string& spec) {
    std::string split = "test";
    if (spec.size() > std::string("fashion-mnist").size()) {
        split = spec.substr(std::string("fashion-mnist:").size());
        if (spec[13] != ':' || (split != "train" && split != "test" && split != "all")) {
            throw UsageError("unknown data '" + spec +
                             "': use fashion-mnist, fashion-mnist:train, fashion-mnist:test or "
                             "fashion-mnist:all");
        }
    }
    const fs::path dir = fashion_mnist_dir();
    auto open_split = [&](Source& s, const std::string& prefix) {
        const fs::path images = dir / (prefix + "-images-idx3-ubyte.gz");
        const fs::path labels = dir / (prefix + "-labels-idx1-ubyte.gz");
        std::error_code ec;
        if (!fs::is_regular_file(images, ec) || !fs::is_regular_file(labels, ec)) {
            throw Error("Fashion-MNIST is not installed (no " + images.string() + " or " +
                        labels.string() + "): run scripts/setup.sh as root, which installs Debian's " +
                        "package (apt-get install dataset-fashion-mnist)");
        }
        open_idx(s, images);
    };
    if (split == "all") {
        // The 60,000 training images (items 0..59999), then the 10,000 test images.
        Source test;
        open_split(d, "train");
        open_split(test, "t10k");
        d.data = torch::cat({d.data, test.data});
        d.n += test.n;
        d.labels.insert(d.labels.end(), test.labels.begin(), test.labels.end());
        d.hashed_files.insert(d.hashed_files.end(), test.hashed_files.begin(), test.hashed_files.end());
    } else {
        open_split(d, split == "train" ? "train" : "t10k");
    }
    d.kind_name = "fashion-mnist:" + split;
    d.class_names = fashion_mnist_classes();
}

void open_folder(Source& d, const fs::path& dir) {
    d.kind = Source::Kind::Folder;
    // ImageFolder when some subfolder holds images; then (as torchvision does) every visible
    // subfolder is a class and images directly in the root are not items.
    std::vector<fs::path> subdirs;
    std::error_code ec;
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
        if (!is_hidden(it->path()) && it->is_directory(ec)) subdirs.push_back(it->path());
    }
    if (ec) throw Error("cannot list the folder " + dir.string() + ": " + ec.message());
    std::sort(subdirs.begin(), subdirs.end());

    std::vector<std::vector<fs::path>> per_class;
    bool any_in_subdirs = false;
    for (const auto& sub : subdirs) {
        per_class.push_back(list_images(sub));
        any_in_subdirs = any_in_subdirs || !per_class.back().empty();
    }

    std::vector<fs::path> files;
    if (any_in_subdirs) {
        for (size_t k = 0; k < subdirs.size(); ++k) {
            if (per_class[k].empty()) {
                throw Error("class folder " + subdirs[k].string() +
                            " has no images; add images or remove it (class numbers follow " +
                            "the sorted folder names, as in torchvision's ImageFolder)");
            }
            d.class_names.push_back(subdirs[k].filename().string());
            d.class_folders = true;
            for (const auto& f : per_class[k]) {
                files.push_back(f);
                d.labels.push_back(int64_t(k));
            }
        }
    } else {
        files = list_images(dir);
    }
    if (files.empty()) {
        throw Error("the folder " + dir.string() +
                    " holds no images (looked for .png .jpg .jpeg .bmp .webp .tif .tiff .pgm "
                    ".ppm, also in subfolders); give a folder with images");
    }
    for (const auto& f : files) {
        d.files.push_back(f.string());
        d.file_names.push_back(fs::relative(f, dir, ec).generic_string());
        d.hashed_files.emplace_back(f, d.file_names.back());
    }
    d.n = int64_t(files.size());
}

void open_npy(Source& d, const fs::path& path) {
    d.kind = Source::Kind::Npy;
    at::Tensor a = read_npy(path.string());
    const auto shape = a.sizes().vec();
    const std::string supported =
        "; supported: N,C,H,W float32 (used as is) or N,H,W / N,H,W,C uint8 (scaled to [0,1]); "
        "convert with a.astype(numpy.float32) or a.astype(numpy.uint8)";
    if (a.scalar_type() == torch::kFloat && a.dim() == 4) {
        d.float_as_is = true;
    } else if (a.scalar_type() == torch::kByte && a.dim() == 3) {
    } else if (a.scalar_type() == torch::kByte && a.dim() == 4) {
        const int64_t c = a.size(3);
        if (c != 1 && c != 3 && c != 4) {
            throw Error("cannot use " + path.string() + ": uint8 N,H,W,C data has C = " +
                        std::to_string(c) + "; C must be 1, 3 or 4 (RGBA, alpha dropped)");
        }
    } else {
        throw Error("cannot use " + path.string() + ": array of " + numpy_name(a.scalar_type()) +
                    " with shape " + detail::shape_str(shape) + supported);
    }
    if (a.size(0) == 0) throw Error("the array " + path.string() + " holds no items (N = 0)");
    if (a.numel() == 0) throw Error("the array " + path.string() + " has a dimension of size 0");
    d.data = a;
    d.n = a.size(0);
    d.hashed_files.emplace_back(path, path.filename().string());
}

void open_labels_npy(Source& d, const std::string& labels_path) {
    at::Tensor t = read_npy(labels_path);
    const auto st = t.scalar_type();
    if (st != torch::kLong && st != torch::kInt && st != torch::kByte) {
        throw Error("labels " + labels_path + " are " + numpy_name(st) +
                    "; labels must be int64, int32 or uint8 (a.astype(numpy.int64))");
    }
    if (t.dim() != 1 || t.size(0) != d.n) {
        throw Error("labels " + labels_path + " have shape " + detail::shape_str(t.sizes().vec()) +
                    " but the data has " + std::to_string(d.n) +
                    " items; give one label per item (length " + std::to_string(d.n) + ")");
    }
    t = t.to(torch::kLong).contiguous();
    d.labels.assign(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + d.n);
    for (int64_t l : d.labels) {
        if (l < -1) {
            throw Error("labels " + labels_path + " hold " + std::to_string(l) +
                        "; labels must be >= 0 (-1 for unknown)");
        }
    }
    d.class_names = numbered_classes(d.labels);
    d.hashed_files.emplace_back(labels_path, "labels:" + fs::path(labels_path).filename().string());
}

// Recognises IDX / NPY files by their first bytes when the name does not tell.
std::string sniff(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    unsigned char b[6] = {0, 0, 0, 0, 0, 0};
    in.read(reinterpret_cast<char*>(b), 6);
    if (in.gcount() >= 6 && std::memcmp(b, "\x93NUMPY", 6) == 0) return "npy";
    if (in.gcount() >= 4 && b[0] == 0 && b[1] == 0 && b[2] == 0x08 && b[3] >= 1 && b[3] <= 4) {
        return "idx";
    }
    if (in.gcount() >= 2 && b[0] == 0x1f && b[1] == 0x8b)
        return "idx";  // gzip: IDX is the one we read
    return "";
}

}  // namespace

Dataset Dataset::open(const std::string& spec, const DatasetOptions& opts) {
    Dataset ds;
    Impl& d = *ds.impl_;
    d.spec = spec;
    if (spec.empty()) {
        throw UsageError(
            "no data given: use --data fashion-mnist, an IDX file, a folder of "
            "images, a .npy file or an image file");
    }
    std::error_code ec;
    const fs::path path(spec);
    if (spec.rfind("fashion-mnist", 0) == 0 && !fs::exists(path, ec)) {
        open_fashion_mnist(d, spec);
    } else if (fs::is_directory(path, ec)) {
        open_folder(d, path);
        d.kind_name = "folder";
    } else if (fs::is_regular_file(path, ec)) {
        const std::string name = detail::lower(path.filename().string());
        std::string type;
        if (ends_with(name, ".npy"))
            type = "npy";
        else if (is_image_file(path))
            type = "image";
        else if (name.find("idx") != std::string::npos || ends_with(name, "-ubyte") ||
                 ends_with(name, "-ubyte.gz"))
            type = "idx";
        else
            type = sniff(path);

        if (type == "npy") {
            open_npy(d, path);
        } else if (type == "image") {
            d.kind = Impl::Kind::Image;
            d.files = {path.string()};
            d.file_names = {path.filename().string()};
            d.hashed_files.emplace_back(path, path.filename().string());
            d.n = 1;
        } else if (type == "idx") {
            open_idx(d, path);
            // The IDX files of the installed Fashion-MNIST get its class names.
            fs::path parent = fs::weakly_canonical(path.parent_path(), ec);
            if (!ec && parent == fs::weakly_canonical(fashion_mnist_dir(), ec) && !ec) {
                d.class_names = fashion_mnist_classes();
            }
        } else {
            throw Error("cannot tell what kind of data " + spec +
                        " is: give an image (.png, .jpg, ...), a .npy array, an IDX file "
                        "(*-idx3-ubyte[.gz]) or a folder of images");
        }
        if (d.kind_name.empty()) d.kind_name = type;
    } else {
        throw Error("no data at '" + spec +
                    "': give fashion-mnist[:train|:test], an IDX file, a folder of images, a "
                    ".npy file or an image file");
    }
    if (!opts.labels_path.empty()) {
        d.labels.clear();
        open_labels_npy(d, opts.labels_path);
    }
    if (d.class_names.empty() && !d.labels.empty()) d.class_names = numbered_classes(d.labels);
    if (d.n == 0) throw Error("the data " + spec + " holds no items; give non-empty data");
    return ds;
}

const std::string& Dataset::spec() const { return impl_->spec; }
int64_t Dataset::size() const { return impl_->n; }
bool Dataset::has_labels() const { return !impl_->labels.empty(); }

int64_t Dataset::label(int64_t i) const {
    impl_->check_index(i);
    return impl_->labels.empty() ? -1 : impl_->labels[size_t(i)];
}

const std::vector<std::string>& Dataset::class_names() const { return impl_->class_names; }

std::vector<int64_t> Dataset::item_shape() const {
    const Impl& d = *impl_;
    std::call_once(d.shape_once, [&] {
        switch (d.kind) {
            case Impl::Kind::Idx:
                d.item_shape = {1, d.data.size(1), d.data.size(2)};
                break;
            case Impl::Kind::Npy:
            case Impl::Kind::Folder:
            case Impl::Kind::Image:
                // Decoding item 0 is the reliable way to learn channels after alpha/gray rules.
                d.item_shape = d.raw(0).sizes().vec();
                break;
        }
    });
    return d.item_shape;
}

const std::string& Dataset::hash() const {
    const Impl& d = *impl_;
    std::call_once(d.hash_once, [&] {
        detail::Sha256 h;
        h.update("convscope-dataset-v1\n" + d.kind_name + "\n" + std::to_string(d.n) + "\n");
        for (const auto& [path, name] : d.hashed_files) hash_file(h, path, name);
        d.hash = h.hex_digest();
    });
    return d.hash;
}

at::Tensor Dataset::raw(int64_t i) const { return impl_->raw(i); }

namespace {

// Resizes [C,H,W] so both sides cover the target (the shorter side matches for a square
// target), then crops the centre. INTER_AREA avoids aliasing when shrinking.
at::Tensor resize_and_crop(const at::Tensor& chw, int64_t th, int64_t tw) {
    const int64_t c = chw.size(0), h = chw.size(1), w = chw.size(2);
    at::Tensor x = chw;
    if (h != th || w != tw) {
        const double s = std::max(double(th) / double(h), double(tw) / double(w));
        const int64_t nh = std::max<int64_t>(th, int64_t(std::lround(double(h) * s)));
        const int64_t nw = std::max<int64_t>(tw, int64_t(std::lround(double(w) * s)));
        if (nh != h || nw != w) {
            at::Tensor hwc = x.permute({1, 2, 0}).contiguous();
            cv::Mat src(int(h), int(w), CV_32FC(int(c)), hwc.data_ptr<float>());
            cv::Mat dst;
            cv::resize(src, dst, cv::Size(int(nw), int(nh)), 0, 0,
                       s < 1.0 ? cv::INTER_AREA : cv::INTER_LINEAR);
            if (!dst.isContinuous()) dst = dst.clone();
            x = torch::from_blob(dst.data, {nh, nw, c}, torch::kFloat)
                    .permute({2, 0, 1})
                    .clone(at::MemoryFormat::Contiguous);  // own the data: dst is freed
        }
        const int64_t top = (nh - th) / 2, left = (nw - tw) / 2;
        x = x.slice(1, top, top + th).slice(2, left, left + tw);
    }
    return x;
}

// torchvision's Resize(shorter) then CenterCrop(th, tw) on a PIL image: the shorter side
// becomes `shorter` and the longer int(shorter * long / short), by Pillow's antialiased
// bilinear filter; the crop's offsets are round((size - crop) / 2) with Python's rounding
// (halves to even). A crop larger than the resized image is an error (torchvision would pad).
at::Tensor resize_short_side_and_crop(const at::Tensor& chw, int64_t shorter, int64_t th, int64_t tw,
                                      int64_t index) {
    const int64_t h = chw.size(1), w = chw.size(2);
    int64_t nh = h, nw = w;
    if (w <= h) {
        nw = shorter;
        nh = int64_t(double(shorter) * double(h) / double(w));
    } else {
        nh = shorter;
        nw = int64_t(double(shorter) * double(w) / double(h));
    }
    if (th > nh || tw > nw)
        throw Error("the centre crop " + std::to_string(th) + "x" + std::to_string(tw) +
                    " is larger than item " + std::to_string(index) + " after resizing (" +
                    std::to_string(nh) + "x" + std::to_string(nw) +
                    "): give a --resize of at least " + std::to_string(std::max(th, tw)) +
                    " or a smaller --crop");
    at::Tensor x = detail::pil_resize_bilinear(chw, nh, nw, detail::is_eight_bit(chw));
    auto offset = [](int64_t size, int64_t crop) {
        const int64_t d = size - crop;  // round(d / 2), halves to even
        if (d % 2 == 0) return d / 2;
        const int64_t k = d / 2;
        return k % 2 == 0 ? k : k + 1;
    };
    const int64_t top = offset(nh, th), left = offset(nw, tw);
    return x.slice(1, top, top + th).slice(2, left, left + tw);
}

at::Tensor convert_channels(const at::Tensor& chw, int64_t target_c, int64_t index) {
    const int64_t c = chw.size(0);
    if (c == target_c) return chw;
    if (c == 1 && target_c == 3) return chw.expand({3, chw.size(1), chw.size(2)});
    if (c == 3 && target_c == 1) {
        // A gray picture stored as RGB keeps its exact values.
        if (at::equal(chw[0], chw[1]) && at::equal(chw[0], chw[2])) return chw.slice(0, 0, 1);
        // ITU-R BT.601 luma, as PIL's convert("L") uses.
        return (chw[0] * 0.299 + chw[1] * 0.587 + chw[2] * 0.114).unsqueeze(0);
    }
    throw Error("item " + std::to_string(index) + " has " + std::to_string(c) +
                " channels but the model expects " + std::to_string(target_c) +
                "; only 1 -> 3 and 3 -> 1 channel conversions are supported, convert the data");
}

}  // namespace

at::Tensor Dataset::batch(const std::vector<int64_t>& indices, const Preprocess& pre) const {
    torch::NoGradGuard no_grad;
    if (!pre.input_shape.empty() && pre.input_shape.size() != 3) {
        throw Error("the input shape " + detail::shape_str(pre.input_shape) + " must be C,H,W");
    }
    for (int64_t i : indices) impl_->check_index(i);
    std::vector<int64_t> shape = pre.input_shape;
    at::Tensor out;
    std::vector<float> mean, stdev;
    for (size_t k = 0; k < indices.size(); ++k) {
        const int64_t i = indices[k];
        at::Tensor x = impl_->raw(i);
        if (pre.as_is) {
            if (!shape.empty() && x.sizes().vec() != shape) {
                throw Error("item " + std::to_string(i) + " has shape " +
                            detail::shape_str(x.sizes().vec()) + " but the model expects " +
                            detail::shape_str(shape) + "; float32 .npy data is used as is, so save it " +
                            "in the model's input shape");
            }
        } else if (!pre.input_shape.empty()) {
            x = convert_channels(x, shape[0], i);
            x = pre.resize > 0 ? resize_short_side_and_crop(x, pre.resize, shape[1], shape[2], i)
                               : resize_and_crop(x, shape[1], shape[2]);
        }
        if (shape.empty()) {
            shape = x.sizes().vec();  // no model shape: every item must match the first
        } else if (x.sizes().vec() != shape) {
            throw Error("item " + std::to_string(i) + " has shape " + detail::shape_str(x.sizes().vec()) +
                        " but item " + std::to_string(indices[0]) + " has " + detail::shape_str(shape) +
                        "; give the model's input shape (--input-shape) so items are resized");
        }
        if (!out.defined()) {
            out = torch::empty({int64_t(indices.size()), shape[0], shape[1], shape[2]},
                               torch::kFloat);
            pre.validate(shape[0]);
        }
        out[int64_t(k)].copy_(x);
    }
    if (out.defined() && out.size(0) > 0) {
        // One normalisation for the whole batch (the same float operations as item by item).
        if (!pre.as_is && (!pre.mean.empty() || !pre.std.empty() || pre.pixel_range != 1.0 || pre.bgr))
            out = pre.normalise(out).contiguous();
        if (!torch::isfinite(out).all().item<bool>()) {
            const at::Tensor where = (~torch::isfinite(out)).nonzero()[0];
            const int64_t k = where[0].item<int64_t>();
            throw Error("item " + std::to_string(indices[size_t(k)]) + " holds NaN or Inf values (channel " +
                        std::to_string(where[1].item<int64_t>()) + ", row " + std::to_string(where[2].item<int64_t>()) +
                        ", column " + std::to_string(where[3].item<int64_t>()) +
                        "); clean the data (numpy.nan_to_num) first");
        }
    }
    if (!out.defined()) {
        // An empty selection: a [0,C,H,W] batch when the shape is known.
        std::vector<int64_t> s = {0};
        for (int64_t v : shape.empty() ? item_shape() : shape) s.push_back(v);
        out = torch::empty(s, torch::kFloat);
    }
    return out;
}

Preprocess Dataset::preprocess_for(const std::vector<int64_t>& model_input_chw,
                                   const std::vector<double>& mean,
                                   const std::vector<double>& std) const {
    Preprocess pre;
    pre.input_shape = model_input_chw.empty() ? item_shape() : model_input_chw;
    if (impl_->kind == Impl::Kind::Npy && impl_->float_as_is) {
        // The user's floats are already model inputs: no resizing and no normalisation.
        pre.as_is = true;
        return pre;
    }
    pre.mean = mean;
    pre.std = std;
    return pre;
}

Preprocess Dataset::preprocess_for(const std::vector<int64_t>& model_input_chw,
                                   const Preprocess& wanted) const {
    Preprocess pre = preprocess_for(model_input_chw, wanted.mean, wanted.std);
    if (pre.as_is) return pre;
    pre.resize = wanted.resize;
    pre.pixel_range = wanted.pixel_range;
    pre.bgr = wanted.bgr;
    pre.source = wanted.source;
    return pre;
}

namespace {
std::string class_key(const std::string& name) {
    std::string out;
    for (char ch : name) {
        const unsigned char c = static_cast<unsigned char>(ch);
        if (c == ' ' || c == '_' || c == '-') continue;
        out += char(std::tolower(c));
    }
    return out;
}
}  // namespace

Dataset::ClassMatch Dataset::match_classes(const std::vector<std::string>& model_classes,
                                           int64_t num_classes) {
    Impl& d = *impl_;
    ClassMatch m{true, "", ""};
    if (d.labels.empty()) {
        m = {false, "the data has no labels", ""};
    } else if (d.class_folders && !model_classes.empty()) {
        // Subfolder names -> the model's class numbers.
        std::vector<int64_t> to_model(d.class_names.size(), -1);
        std::vector<std::string> missing;
        for (size_t k = 0; k < d.class_names.size(); ++k) {
            for (size_t c = 0; c < model_classes.size(); ++c)
                if (class_key(model_classes[c]) == class_key(d.class_names[k])) {
                    to_model[k] = int64_t(c);
                    break;
                }
            if (to_model[k] < 0) missing.push_back("'" + d.class_names[k] + "'");
        }
        if (missing.empty()) {
            for (auto& l : d.labels) l = to_model[size_t(l)];
            d.class_names = model_classes;
            d.class_folders = false;  // labels are the model's now
            m.note = "class folders matched to the model's class names";
        } else {
            std::string list;
            for (size_t i = 0; i < missing.size() && i < 5; ++i) list += (i ? ", " : "") + missing[i];
            if (missing.size() > 5) list += " and " + std::to_string(missing.size() - 5) + " more";
            m = {false, "the class folder(s) " + list +
                            " are not among the model's class names, so the labels cannot be "
                            "compared with its predictions: name the subfolders after the model's "
                            "classes, or give the names with --classes FILE"};
        }
    } else if (d.class_folders && int64_t(d.class_names.size()) != num_classes) {
        m = {false, "the folder has " + std::to_string(d.class_names.size()) +
                        " class subfolders but the model has " + std::to_string(num_classes) +
                        " outputs and no class names to match them by: give --classes FILE (one "
                        "name per line) so subfolders are matched by name"};
    } else if (d.class_folders) {
        m.note = "the model has no class names: class folders taken in sorted order as class 0, 1, ... "
                 "(as torchvision's ImageFolder numbers them); give --classes FILE to match them by name";
    } else {
        for (int64_t l : d.labels)
            if (l >= num_classes) {
                m = {false, "label " + std::to_string(l) + " is not a class of the model, which has " +
                                std::to_string(num_classes) + " outputs"};
                break;
            }
    }
    d.match = m;
    return m;
}

const Dataset::ClassMatch& Dataset::class_match() const { return impl_->match; }

// --- parse_indices ---------------------------------------------------------------------------

namespace {

[[noreturn]] void bad_indices(const std::string& spec) {
    throw UsageError("bad --indices '" + spec +
                     "': use a Python slice (0:50, :10, -5:, 0:100:10), one index (7, -1) or a "
                     "comma list (1,5,9)");
}

void append_part(const std::string& part, const std::string& spec, int64_t n,
                 std::vector<int64_t>& out) {
    const std::string p = trim(part);
    if (p.empty()) bad_indices(spec);
    if (p.find(':') == std::string::npos) {
        int64_t i = 0;
        if (!detail::parse_int64(p, i)) bad_indices(spec);
        const int64_t resolved = i < 0 ? i + n : i;
        if (resolved < 0 || resolved >= n) {
            throw Error("index " + std::to_string(i) + " is out of range: the data has " +
                        std::to_string(n) + " items" +
                        (n > 0 ? " (0.." + std::to_string(n - 1) + ")" : ""));
        }
        out.push_back(resolved);
        return;
    }
    // Slice a:b or a:b:s with Python's clipping rules (slice.indices).
    std::vector<std::string> fields;
    size_t start = 0;
    while (true) {
        size_t colon = p.find(':', start);
        fields.push_back(trim(p.substr(start, colon == std::string::npos ? colon : colon - start)));
        if (colon == std::string::npos) break;
        start = colon + 1;
    }
    if (fields.size() > 3) bad_indices(spec);
    int64_t step = 1;
    if (fields.size() == 3 && !fields[2].empty()) {
        if (!detail::parse_int64(fields[2], step)) bad_indices(spec);
        if (step == 0) {
            throw UsageError("bad --indices '" + spec + "': the slice step must not be 0");
        }
    }
    auto bound = [&](const std::string& f, int64_t fallback, int64_t lo, int64_t hi) {
        if (f.empty()) return fallback;
        int64_t v = 0;
        if (!detail::parse_int64(f, v)) bad_indices(spec);
        if (v < 0) v += n;  // cannot overflow: v >= INT64_MIN and n >= 0
        return std::min(std::max(v, lo), hi);
    };
    // A step longer than the data selects one item; clamping it keeps i + step from overflowing.
    step = std::min(std::max(step, -(n + 1)), n + 1);
    if (step > 0) {
        const int64_t a = bound(fields[0], 0, 0, n);
        const int64_t b = bound(fields[1], n, 0, n);
        for (int64_t i = a; i < b; i += step) out.push_back(i);
    } else {
        const int64_t a = bound(fields[0], n - 1, -1, n - 1);
        const int64_t b = bound(fields[1], -1, -1, n - 1);
        for (int64_t i = a; i > b; i += step) out.push_back(i);
    }
}

}  // namespace

std::vector<int64_t> parse_indices(const std::string& spec, int64_t n) {
    const std::string s = trim(spec);
    if (s.empty()) bad_indices(spec);
    std::vector<int64_t> out;
    size_t start = 0;
    while (true) {
        size_t comma = s.find(',', start);
        append_part(s.substr(start, comma == std::string::npos ? comma : comma - start), spec, n,
                    out);
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    if (out.empty()) {
        throw Error("--indices '" + spec + "' selects no items: the data has " + std::to_string(n) +
                    " items" + (n > 0 ? " (0.." + std::to_string(n - 1) + ")" : ""));
    }
    return out;
}

// --- BatchLoader -----------------------------------------------------------------------------

struct BatchLoader::Impl {
    const Dataset* data = nullptr;
    std::vector<int64_t> indices;
    int64_t batch_size = 1;
    Preprocess pre;
    size_t prefetch = 2;
    int64_t num_batches = 0;

    std::mutex mutex;
    std::condition_variable changed;  // queue, stop or done changed
    std::deque<Batch> queue;
    bool stop = false;         // the consumer is gone: the worker should end
    bool worker_done = false;  // no more batches will come
    std::exception_ptr error;  // what stopped the worker, rethrown by next()
    std::thread worker;

    Batch make_batch(int64_t b) const {
        Batch batch;
        const int64_t begin = b * batch_size;
        const int64_t end = std::min<int64_t>(begin + batch_size, int64_t(indices.size()));
        batch.indices.assign(indices.begin() + begin, indices.begin() + end);
        batch.images = data->batch(batch.indices, pre);
        for (int64_t i : batch.indices) batch.labels.push_back(data->label(i));
        return batch;
    }

    void run() {
        for (int64_t b = 0; b < num_batches; ++b) {
            {
                std::unique_lock<std::mutex> lock(mutex);
                changed.wait(lock, [&] { return stop || queue.size() < prefetch; });
                if (stop) break;
            }
            // Decode outside the lock so the consumer can take finished batches meanwhile.
            Batch batch;
            try {
                batch = make_batch(b);
            } catch (...) {
                std::lock_guard<std::mutex> lock(mutex);
                error = std::current_exception();
                break;
            }
            std::lock_guard<std::mutex> lock(mutex);
            queue.push_back(std::move(batch));
            changed.notify_all();
        }
        std::lock_guard<std::mutex> lock(mutex);
        worker_done = true;
        changed.notify_all();
    }
};

BatchLoader::BatchLoader(const Dataset& data, std::vector<int64_t> indices, int64_t batch_size,
                         Preprocess pre, int prefetch)
    : impl_(std::make_unique<Impl>()) {
    if (batch_size < 1) {
        throw UsageError("the batch size must be at least 1 (got " + std::to_string(batch_size) +
                         ")");
    }
    // Check indices here so a bad one fails at once, not on a later next().
    for (int64_t i : indices) {
        if (i < 0 || i >= data.size()) {
            throw Error("index " + std::to_string(i) + " is out of range: the data has " +
                        std::to_string(data.size()) + " items (0.." +
                        std::to_string(data.size() - 1) + ")");
        }
    }
    Impl& d = *impl_;
    d.data = &data;
    d.indices = std::move(indices);
    d.batch_size = batch_size;
    d.pre = std::move(pre);
    d.prefetch = size_t(std::max(1, prefetch));
    d.num_batches = (int64_t(d.indices.size()) + batch_size - 1) / batch_size;
    d.worker = std::thread([&d] { d.run(); });
}

BatchLoader::~BatchLoader() {
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        impl_->stop = true;
    }
    impl_->changed.notify_all();
    // The worker finishes at most the batch it is making, then sees `stop`.
    if (impl_->worker.joinable()) impl_->worker.join();
}

bool BatchLoader::next(Batch& out) {
    std::unique_lock<std::mutex> lock(impl_->mutex);
    impl_->changed.wait(lock, [&] { return !impl_->queue.empty() || impl_->worker_done; });
    if (!impl_->queue.empty()) {
        out = std::move(impl_->queue.front());
        impl_->queue.pop_front();
        impl_->changed.notify_all();
        return true;
    }
    if (impl_->error) std::rethrow_exception(impl_->error);
    return false;
}

int64_t BatchLoader::num_batches() const { return impl_->num_batches; }

}  // namespace convscope
