// Folders of images (class subfolders as in torchvision's ImageFolder, or flat) and single
// image files.
#include <algorithm>

#include "convscope/runtime/error.hpp"
#include "runtime/sources/sources.hpp"

namespace convscope::sources {

namespace {

class ImageFiles final : public DataSource {
public:
    std::string kind_name;
    std::vector<std::string> files;
    std::vector<int64_t> item_labels;
    std::vector<std::string> names;
    bool from_class_folders = false;
    std::vector<std::pair<std::string, std::string>> hashed;

    std::string kind() const override { return kind_name; }
    int64_t size() const override { return static_cast<int64_t>(files.size()); }
    at::Tensor raw(int64_t i) const override { return decode_image(files[static_cast<size_t>(i)]); }
    std::vector<int64_t> labels() const override { return item_labels; }
    std::vector<std::string> class_names() const override { return names; }
    bool class_folders() const override { return from_class_folders; }
    std::vector<std::pair<std::string, std::string>> hashed_files() const override { return hashed; }
};

}  // namespace

std::unique_ptr<DataSource> open_folder(const fs::path& dir) {
    auto d = std::make_unique<ImageFiles>();
    d->kind_name = "folder";
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
            d->names.push_back(subdirs[k].filename().string());
            d->from_class_folders = true;
            for (const auto& f : per_class[k]) {
                files.push_back(f);
                d->item_labels.push_back(int64_t(k));
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
        d->files.push_back(f.string());
        d->hashed.emplace_back(f.string(), fs::relative(f, dir, ec).generic_string());
    }
    return d;
}

std::unique_ptr<DataSource> open_image(const fs::path& path) {
    auto d = std::make_unique<ImageFiles>();
    d->kind_name = "image";
    d->files = {path.string()};
    d->hashed.emplace_back(path.string(), path.filename().string());
    return d;
}

}  // namespace convscope::sources
