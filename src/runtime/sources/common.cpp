// What the data formats share: image files, their order and their decoding.
#include <torch/torch.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <set>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/image_header.hpp"
#include "convscope/runtime/io.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/sources/sources.hpp"

namespace convscope::sources {

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

namespace {
// Sorts paths the way torchvision's ImageFolder walks a tree: by folder, then by file name.
void sort_like_os_walk(std::vector<fs::path>& files) {
    std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
        const std::string pa = a.parent_path().string(), pb = b.parent_path().string();
        if (pa != pb) return pa < pb;
        return a.filename().string() < b.filename().string();
    });
}
}  // namespace

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
    // The size from the header first: a small file can declare a huge image.
    const std::string bytes = read_file(path);
    const std::optional<ImageSize> declared = image_size_from_header(bytes);
    if (declared) check_image_pixels(*declared, "image " + path);
    cv::Mat m;
    if (declared) {
        try {
            m = cv::imdecode(cv::Mat(1, static_cast<int>(bytes.size()), CV_8U, const_cast<char*>(bytes.data())),
                             cv::IMREAD_UNCHANGED);
        } catch (const cv::Exception&) {
            m = cv::Mat();
        }
    }
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


}  // namespace convscope::sources

namespace convscope {
at::Tensor read_image(const std::string& path) { return sources::decode_image(path); }
}  // namespace convscope
