// IDX files (plain or gzip) with their labels file beside them, and Fashion-MNIST as Debian
// installs it.
#include <torch/torch.h>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/strings.hpp"
#include "runtime/detail/idx.hpp"
#include "runtime/sources/sources.hpp"

namespace convscope::sources {

namespace {

class IdxSource final : public DataSource {
public:
    std::string kind_name = "idx";
    at::Tensor images;  // uint8 [N,H,W]
    std::vector<int64_t> item_labels;
    std::vector<std::string> names;
    std::vector<std::pair<std::string, std::string>> files;

    std::string kind() const override { return kind_name; }
    int64_t size() const override { return images.size(0); }
    at::Tensor raw(int64_t i) const override { return images[i].unsqueeze(0).to(torch::kFloat).div_(255.0); }
    std::vector<int64_t> labels() const override { return item_labels; }
    std::vector<std::string> class_names() const override { return names; }
    std::vector<int64_t> item_shape() const override { return {1, images.size(1), images.size(2)}; }
    std::vector<std::pair<std::string, std::string>> hashed_files() const override { return files; }
};

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

std::unique_ptr<IdxSource> read_idx_source(const fs::path& path) {
    auto d = std::make_unique<IdxSource>();
    at::Tensor images = detail::read_idx(path.string());
    if (images.dim() != 3) {
        throw Error("IDX file " + path.string() + " has shape " + detail::shape_str(images.sizes().vec()) +
                    ": image files must have 3 dimensions (N,H,W); is this a labels file? "
                    "give the *-images-idx3-ubyte file");
    }
    if (images.size(1) < 1 || images.size(2) < 1) {
        throw Error("IDX file " + path.string() + " has images of size 0; the file is damaged");
    }
    d->images = images;
    d->files.emplace_back(path.string(), path.filename().string());
    const std::string labels_path = find_idx_labels(path);
    if (!labels_path.empty()) {
        d->item_labels = read_idx_labels(labels_path, images.size(0), path.string());
        d->files.emplace_back(labels_path, fs::path(labels_path).filename().string());
    }
    return d;
}

}  // namespace

std::unique_ptr<DataSource> open_idx(const fs::path& path) { return read_idx_source(path); }

std::unique_ptr<DataSource> open_fashion_mnist(const std::string& spec) {
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
    auto open_split = [&](const std::string& prefix) {
        const fs::path images = dir / (prefix + "-images-idx3-ubyte.gz");
        const fs::path labels = dir / (prefix + "-labels-idx1-ubyte.gz");
        std::error_code ec;
        if (!fs::is_regular_file(images, ec) || !fs::is_regular_file(labels, ec)) {
            throw Error("Fashion-MNIST is not installed (no " + images.string() + " or " +
                        labels.string() + "): run scripts/setup.sh as root, which installs Debian's " +
                        "package (apt-get install dataset-fashion-mnist)");
        }
        return read_idx_source(images);
    };
    std::unique_ptr<IdxSource> d;
    if (split == "all") {
        // The 60,000 training images (items 0..59999), then the 10,000 test images.
        d = open_split("train");
        const auto test = open_split("t10k");
        d->images = torch::cat({d->images, test->images});
        d->item_labels.insert(d->item_labels.end(), test->item_labels.begin(), test->item_labels.end());
        d->files.insert(d->files.end(), test->files.begin(), test->files.end());
    } else {
        d = open_split(split == "train" ? "train" : "t10k");
    }
    d->kind_name = "fashion-mnist:" + split;
    d->names = fashion_mnist_classes();
    return d;
}

}  // namespace convscope::sources
