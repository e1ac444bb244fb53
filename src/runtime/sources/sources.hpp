#pragma once
// The data formats (one source file each) and what they share: which files are images, how
// an image file is decoded. Private to the runtime; Dataset::open uses them.
#include <ATen/core/Tensor.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "convscope/runtime/data_source.hpp"

namespace convscope::sources {

namespace fs = std::filesystem;

// Where Debian's dataset-fashion-mnist puts the files (CONVSCOPE_FASHION_MNIST_DIR overrides).
std::string fashion_mnist_dir();
bool ends_with(const std::string& s, const std::string& suffix);
// .png .jpg .jpeg .bmp .webp .tif .tiff .pgm .ppm (any case).
bool is_image_file(const fs::path& p);
bool is_hidden(const fs::path& p);
// numpy's name for a dtype, as users know it from their arrays.
std::string numpy_name(at::ScalarType t);
// All image files below `dir` (recursive, hidden entries skipped) in ImageFolder's order.
std::vector<fs::path> list_images(const fs::path& dir);
// An image file as float32 [C,H,W] in [0,1] (C = 1 or 3); Error for unreadable files.
at::Tensor decode_image(const std::string& path);

// The formats. Each throws Error naming the problem and the fix.
std::unique_ptr<DataSource> open_idx(const fs::path& images);             // sources/idx.cpp
std::unique_ptr<DataSource> open_fashion_mnist(const std::string& spec);  // sources/idx.cpp
std::unique_ptr<DataSource> open_scenes();  // sources/scenes.cpp: "fashion-mnist-scenes"
std::unique_ptr<DataSource> open_folder(const fs::path& dir);             // sources/folder.cpp
std::unique_ptr<DataSource> open_image(const fs::path& file);             // sources/folder.cpp
std::unique_ptr<DataSource> open_npy(const fs::path& array);              // sources/npy.cpp

}  // namespace convscope::sources
