#pragma once
// One format of data: what a Dataset reads its items from. Each format is one source file in
// src/runtime/sources/ (IDX and Fashion-MNIST, image folders, single images, .npy arrays);
// Dataset::open picks one from the spec, and labels given apart (--labels) override the
// source's.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace convscope {

class DataSource {
public:
    virtual ~DataSource() = default;
    // The format's name as it enters the content hash: "idx", "fashion-mnist:test", "folder",
    // "npy", "image".
    virtual std::string kind() const = 0;
    // Number of items (>= 1 for an opened source).
    virtual int64_t size() const = 0;
    // Item i, 0 <= i < size() (checked by Dataset), as [C,H,W] float32: pixels in [0,1], or
    // model inputs where as_is().
    virtual at::Tensor raw(int64_t i) const = 0;
    // Every item's label (empty: none; -1: this item has none), and class names by label.
    virtual std::vector<int64_t> labels() const { return {}; }
    virtual std::vector<std::string> class_names() const { return {}; }
    // The labels number class folders by sorted name (matched to the model's class names).
    virtual bool class_folders() const { return false; }
    // The items are model inputs already (float32 N,C,H,W arrays): no preprocessing applies.
    virtual bool as_is() const { return false; }
    // [C,H,W] of the items; by default item 0's.
    virtual std::vector<int64_t> item_shape() const { return raw(0).sizes().vec(); }
    // The files whose bytes make up the data, each with the name it has in the content hash.
    virtual std::vector<std::pair<std::string, std::string>> hashed_files() const = 0;
};

}  // namespace convscope
