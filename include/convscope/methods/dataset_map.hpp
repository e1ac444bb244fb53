#pragma once
// A dataset map made earlier by `convscope embed` (or written by another tool in its format),
// read back for the explorer (`serve --map`) and the report (`report --map`): the 2-D place of
// every point, the dataset item it shows and its label. Maps of a million points and more.
#include <cstdint>
#include <string>
#include <vector>

namespace convscope {

class Dataset;

struct DatasetMap {
    std::vector<float> x, y;        // [N] the t-SNE coordinates
    std::vector<int32_t> items;     // [N] the dataset item each point shows (may repeat)
    std::vector<int32_t> labels;    // [N] its label, -1 unknown
    std::string layer;              // the layer the features came from ("" when unknown)
    std::string source;             // the folder, for messages
    int64_t size() const { return int64_t(x.size()); }
};

// Reads an `embed` output folder: embedding.npy [N,2] float32 (the coordinates),
// embedding.csv (index,label,x,y per row, in the same order) and manifest.json when present.
// `data` is the data the map's items index: Error when the manifest records another data hash,
// when an item is outside the data, or when the files are missing, truncated, disagree about
// N or hold non-finite coordinates, each naming the file and the fix.
DatasetMap read_dataset_map(const std::string& folder, const Dataset& data);

// The points as one little-endian buffer for the web views: float32 x[N], float32 y[N],
// int32 labels[N], int32 items[N] (16 bytes a point).
std::string dataset_map_bytes(const DatasetMap& map);

}  // namespace convscope
