// Datasets over their sources (one file per format in sources/), preprocessing, index parsing
// and the prefetching batch loader.
#include "convscope/runtime/dataset.hpp"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <opencv2/imgproc.hpp>

#include "convscope/runtime/error.hpp"
#include "convscope/runtime/finite.hpp"
#include "convscope/runtime/io.hpp"
#include "runtime/detail/pil_resize.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/idx.hpp"
#include "runtime/detail/sha256.hpp"
#include "runtime/sources/sources.hpp"

namespace fs = std::filesystem;

namespace convscope {

const std::vector<std::string>& fashion_mnist_classes() {
    static const std::vector<std::string> names = {
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    return names;
}

namespace {









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

// --- Dataset ---------------------------------------------------------------------------------

// Everything a dataset knows: its source (the format) and the labels and class names in use
// (the source's, or those given apart).
struct Dataset::Impl {
    std::string spec;
    std::unique_ptr<DataSource> source;
    int64_t n = 0;
    std::vector<int64_t> labels;  // empty = no labels
    std::vector<std::string> class_names;
    bool class_folders = false;   // labels from class subfolders (until matched to the model)
    Dataset::ClassMatch match{true, "", ""};
    // Files of the content hash beyond the source's (a labels .npy), as (path, name).
    std::vector<std::pair<std::string, std::string>> extra_hashed;

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
        return source->raw(i);
    }
};

Dataset::Dataset() : impl_(std::make_unique<Impl>()) {}
Dataset::Dataset(Dataset&&) noexcept = default;
Dataset& Dataset::operator=(Dataset&&) noexcept = default;
Dataset::~Dataset() = default;

namespace {

std::vector<std::string> numbered_classes(const std::vector<int64_t>& labels) {
    int64_t max_label = -1;
    for (int64_t l : labels) max_label = std::max(max_label, l);
    std::vector<std::string> names;
    for (int64_t k = 0; k <= max_label; ++k) names.push_back(std::to_string(k));
    return names;
}

// Labels given apart from the data (--labels L.npy) replace the source's.
std::vector<int64_t> read_labels_npy(const std::string& labels_path, int64_t n) {
    at::Tensor t = read_npy(labels_path);
    const auto st = t.scalar_type();
    if (st != torch::kLong && st != torch::kInt && st != torch::kByte) {
        throw Error("labels " + labels_path + " are " + sources::numpy_name(st) +
                    "; labels must be int64, int32 or uint8 (a.astype(numpy.int64))");
    }
    if (t.dim() != 1 || t.size(0) != n) {
        throw Error("labels " + labels_path + " have shape " + detail::shape_str(t.sizes().vec()) +
                    " but the data has " + std::to_string(n) +
                    " items; give one label per item (length " + std::to_string(n) + ")");
    }
    t = t.to(torch::kLong).contiguous();
    std::vector<int64_t> labels(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + n);
    for (int64_t l : labels) {
        if (l < -1) {
            throw Error("labels " + labels_path + " hold " + std::to_string(l) +
                        "; labels must be >= 0 (-1 for unknown)");
        }
    }
    return labels;
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
    bool installed_idx = false;
    if (spec == "fashion-mnist-scenes" && !fs::exists(path, ec)) {
        d.source = sources::open_scenes();
    } else if (spec.rfind("fashion-mnist", 0) == 0 && !fs::exists(path, ec)) {
        d.source = sources::open_fashion_mnist(spec);
    } else if (fs::is_directory(path, ec)) {
        d.source = sources::open_folder(path);
    } else if (fs::is_regular_file(path, ec)) {
        const std::string name = detail::lower(path.filename().string());
        std::string type;
        if (sources::ends_with(name, ".npy"))
            type = "npy";
        else if (sources::is_image_file(path))
            type = "image";
        else if (name.find("idx") != std::string::npos || sources::ends_with(name, "-ubyte") ||
                 sources::ends_with(name, "-ubyte.gz"))
            type = "idx";
        else
            type = sniff(path);

        if (type == "npy") {
            d.source = sources::open_npy(path);
        } else if (type == "image") {
            d.source = sources::open_image(path);
        } else if (type == "idx") {
            d.source = sources::open_idx(path);
            // The IDX files of the installed Fashion-MNIST get its class names.
            fs::path parent = fs::weakly_canonical(path.parent_path(), ec);
            installed_idx = !ec && parent == fs::weakly_canonical(sources::fashion_mnist_dir(), ec) && !ec;
        } else {
            throw Error("cannot tell what kind of data " + spec +
                        " is: give an image (.png, .jpg, ...), a .npy array, an IDX file "
                        "(*-idx3-ubyte[.gz]) or a folder of images");
        }
    } else {
        throw Error("no data at '" + spec +
                    "': give fashion-mnist[:train|:test], an IDX file, a folder of images, a "
                    ".npy file or an image file");
    }
    d.n = d.source->size();
    d.labels = d.source->labels();
    d.class_names = installed_idx ? fashion_mnist_classes() : d.source->class_names();
    d.class_folders = d.source->class_folders();
    if (!opts.labels_path.empty()) {
        d.labels = read_labels_npy(opts.labels_path, d.n);
        d.class_names = numbered_classes(d.labels);
        d.class_folders = false;
        d.extra_hashed.emplace_back(opts.labels_path, "labels:" + fs::path(opts.labels_path).filename().string());
    }
    if (d.class_names.empty() && !d.labels.empty()) d.class_names = numbered_classes(d.labels);
    if (d.n == 0) throw Error("the data " + spec + " holds no items; give non-empty data");
    return ds;
}

Dataset Dataset::from_source(std::unique_ptr<DataSource> source, const std::string& spec) {
    if (!source || source->size() < 1) throw Error("the data " + spec + " holds no items; give non-empty data");
    Dataset ds;
    Impl& d = *ds.impl_;
    d.spec = spec;
    d.source = std::move(source);
    d.n = d.source->size();
    d.labels = d.source->labels();
    if (!d.labels.empty() && static_cast<int64_t>(d.labels.size()) != d.n)
        throw Error("the data " + spec + " has " + std::to_string(d.labels.size()) + " labels for " +
                    std::to_string(d.n) + " items; give one label per item (or none)");
    d.class_names = d.source->class_names();
    if (d.class_names.empty() && !d.labels.empty()) d.class_names = numbered_classes(d.labels);
    d.class_folders = d.source->class_folders();
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
    std::call_once(d.shape_once, [&] { d.item_shape = d.source->item_shape(); });
    return d.item_shape;
}

const std::string& Dataset::hash() const {
    const Impl& d = *impl_;
    std::call_once(d.hash_once, [&] {
        detail::Sha256 h;
        h.update("convscope-dataset-v1\n" + d.source->kind() + "\n" + std::to_string(d.n) + "\n");
        for (const auto& [path, name] : d.source->hashed_files()) hash_file(h, path, name);
        for (const auto& [path, name] : d.extra_hashed) hash_file(h, path, name);
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
        check_finite_input(out, &indices);
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
    if (impl_->source->as_is()) {
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

}  // namespace convscope
