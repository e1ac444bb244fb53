// Dataset maps read back from an `embed` output folder (serve --map, report --map): the points,
// items and labels as written, the binary layout the web views read, and one clear error for
// each way a folder can be wrong.
#include "convscope/methods/dataset_map.hpp"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/io.hpp"
#include "test_util.hpp"

namespace convscope {
namespace {

// A .npy dataset of `n` items and a map folder of `points` points showing items i % n.
struct MapFolder {
    TempDir dir;
    std::string data_path, folder;
    at::Tensor xy;
    MapFolder(int64_t n, int64_t points) {
        data_path = dir / "x.npy";
        write_npy(data_path, torch::rand({n, 1, 8, 8}));
        folder = dir / "map";
        std::filesystem::create_directories(folder);
        torch::manual_seed(3);
        xy = torch::randn({points, 2});
        write_npy(folder + "/embedding.npy", xy);
        std::ofstream csv(folder + "/embedding.csv");
        csv << "index,label,x,y\n";
        for (int64_t i = 0; i < points; ++i)
            csv << (i % n) << "," << (i % 3 == 0 ? -1 : i % 5) << "," << xy[i][0].item<float>() << ","
                << xy[i][1].item<float>() << "\n";
    }
    Dataset data() const { return Dataset::open(data_path); }
    void manifest(const std::string& text) const { std::ofstream(folder + "/manifest.json") << text; }
    void csv(const std::string& text) const { std::ofstream(folder + "/embedding.csv") << text; }
};

TEST(DatasetMap, ReadsPointsItemsAndLabelsAsWritten) {
    const MapFolder f(7, 50);
    const Dataset data = f.data();
    f.manifest(R"({"options": {"layer": "fc1", "data_sha256": ")" + data.hash() + R"("}})");
    const DatasetMap m = read_dataset_map(f.folder, data);
    ASSERT_EQ(m.size(), 50);
    EXPECT_EQ(m.layer, "fc1");
    for (int64_t i = 0; i < 50; ++i) {
        EXPECT_EQ(m.x[size_t(i)], f.xy[i][0].item<float>());
        EXPECT_EQ(m.y[size_t(i)], f.xy[i][1].item<float>());
        EXPECT_EQ(m.items[size_t(i)], i % 7);
        EXPECT_EQ(m.labels[size_t(i)], i % 3 == 0 ? -1 : i % 5);
    }
    // The web views' layout: x[N], y[N] float32, labels[N], items[N] int32.
    const std::string b = dataset_map_bytes(m);
    ASSERT_EQ(b.size(), 16u * 50);
    for (size_t i = 0; i < 50; ++i) {
        float x, y;
        int32_t label, item;
        std::memcpy(&x, b.data() + 4 * i, 4);
        std::memcpy(&y, b.data() + 200 + 4 * i, 4);
        std::memcpy(&label, b.data() + 400 + 4 * i, 4);
        std::memcpy(&item, b.data() + 600 + 4 * i, 4);
        EXPECT_EQ(x, m.x[i]);
        EXPECT_EQ(y, m.y[i]);
        EXPECT_EQ(label, m.labels[i]);
        EXPECT_EQ(item, m.items[i]);
    }
}

TEST(DatasetMap, WithoutAManifestTheItemsAreTakenAsTheDatas) {
    const MapFolder f(7, 9);
    EXPECT_EQ(read_dataset_map(f.folder, f.data()).size(), 9);
}

TEST(DatasetMap, RefusesFoldersThatDoNotFit) {
    const MapFolder f(7, 20);
    const Dataset data = f.data();
    expect_error([&] { read_dataset_map(f.dir / "nowhere", data); }, "does not exist: pass the --out folder of convscope embed");

    // Made from other data (the manifest's hash).
    f.manifest(R"({"options": {"data": "fashion-mnist:train", "data_sha256": "0123"}})");
    expect_error([&] { read_dataset_map(f.folder, data); }, "was made from other data (fashion-mnist:train)");
    f.manifest("{not json");
    expect_error([&] { read_dataset_map(f.folder, data); }, "manifest.json is not valid JSON");
    f.manifest("{}");

    // Items beyond the data: a map of a larger dataset served with a smaller one.
    const MapFolder big(40, 20);
    expect_error([&] { read_dataset_map(big.folder, data); }, "row 8: item 7 is outside the data given");

    // A truncated table, one with more rows than points, a header from elsewhere, a bad number.
    f.csv("index,label,x,y\n0,1,0,0\n1,1,0,0\n");
    expect_error([&] { read_dataset_map(f.folder, data); }, "has 2 rows but embedding.npy has 20 points");
    std::string more = "index,label,x,y\n";
    for (int i = 0; i < 21; ++i) more += "0,0,0,0\n";
    f.csv(more);
    expect_error([&] { read_dataset_map(f.folder, data); }, "has more rows than embedding.npy's 20 points");
    f.csv("a,b\n0,0\n");
    expect_error([&] { read_dataset_map(f.folder, data); }, "does not start with the header index,label,x,y");
    f.csv("index,label,x,y\n0,x,0,0\n");
    expect_error([&] { read_dataset_map(f.folder, data); }, "row 1: expected an integer");
    f.csv("index,label,x,y\n-1,0,0,0\n");
    expect_error([&] { read_dataset_map(f.folder, data); }, "item -1 is outside the data given");

    // Coordinates: not [N,2], not finite, a truncated file, or missing.
    const MapFolder g(7, 4);
    write_npy(g.folder + "/embedding.npy", torch::zeros({4, 3}));
    expect_error([&] { read_dataset_map(g.folder, data); }, "must hold [N,2] coordinates, got [4,3]");
    at::Tensor nan = torch::zeros({4, 2});
    nan[2][1] = std::numeric_limits<float>::quiet_NaN();
    write_npy(g.folder + "/embedding.npy", nan);
    expect_error([&] { read_dataset_map(g.folder, data); }, "point 2 has a non-finite coordinate");
    write_npy(g.folder + "/embedding.npy", torch::zeros({4, 2}));
    std::filesystem::resize_file(g.folder + "/embedding.npy", std::filesystem::file_size(g.folder + "/embedding.npy") - 8);
    expect_error([&] { read_dataset_map(g.folder, data); }, "truncated");
    std::filesystem::remove(g.folder + "/embedding.npy");
    expect_error([&] { read_dataset_map(g.folder, data); }, "has no embedding.npy: it is not a convscope embed output");
}

}  // namespace
}  // namespace convscope
