// Tests for datasets: Fashion-MNIST, IDX (plain, gzip, damaged), image folders (ImageFolder
// and flat), .npy data and labels, single images, preprocessing (channels, resize + crop,
// normalisation, display), the content hash, --indices parsing and the batch loader.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <zlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <opencv2/imgcodecs.hpp>
#include <random>
#include <thread>

#include "convscope/runtime/dataset.hpp"
#include "convscope/runtime/error.hpp"
#include "convscope/runtime/io.hpp"

namespace fs = std::filesystem;
using convscope::Dataset;
using convscope::Error;
using convscope::Preprocess;

namespace {

class TempDir {
public:
    TempDir() {
        static std::atomic<int> counter{0};
        std::random_device rd;
        path_ =
            fs::temp_directory_path() / ("convscope_data_" + std::to_string(::getpid()) + "_" +
                                         std::to_string(counter++) + "_" + std::to_string(rd()));
        fs::create_directories(path_);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path_, ec);
    }
    std::string operator/(const std::string& name) const { return (path_ / name).string(); }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
};

void write_bytes(const std::string& path, const std::string& bytes) {
    fs::create_directories(fs::path(path).parent_path());
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), std::streamsize(bytes.size()));
}

void write_gz(const std::string& path, const std::string& bytes) {
    fs::create_directories(fs::path(path).parent_path());
    gzFile f = gzopen(path.c_str(), "wb");
    ASSERT_NE(f, nullptr);
    ASSERT_EQ(gzwrite(f, bytes.data(), unsigned(bytes.size())), int(bytes.size()));
    gzclose(f);
}

// IDX bytes: magic 0x0000 08 ndims, big-endian dims, then the data.
std::string idx_bytes(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& data) {
    std::string s = {0, 0, 8, char(dims.size())};
    for (uint32_t d : dims) {
        s += char(d >> 24);
        s += char(d >> 16);
        s += char(d >> 8);
        s += char(d);
    }
    s.append(data.begin(), data.end());
    return s;
}

// n images of h x w with pixel (i, y, x) = (7 i + 3 y + x) mod 256, and labels i mod 10.
std::vector<uint8_t> idx_pixels(int n, int h, int w) {
    std::vector<uint8_t> px;
    for (int i = 0; i < n; ++i)
        for (int y = 0; y < h; ++y)
            for (int x = 0; x < w; ++x) px.push_back(uint8_t((7 * i + 3 * y + x) % 256));
    return px;
}

std::vector<uint8_t> idx_labels(int n) {
    std::vector<uint8_t> l;
    for (int i = 0; i < n; ++i) l.push_back(uint8_t(i % 10));
    return l;
}

// A gray 8-bit image filled with `value`.
void write_gray(const std::string& path, int h, int w, int value) {
    fs::create_directories(fs::path(path).parent_path());
    ASSERT_TRUE(cv::imwrite(path, cv::Mat(h, w, CV_8UC1, cv::Scalar(value))));
}

#define EXPECT_ERROR_WITH(statement, ...)                                      \
    do {                                                                       \
        try {                                                                  \
            statement;                                                         \
            ADD_FAILURE() << "expected convscope::Error from " #statement;     \
        } catch (const convscope::Error& e) {                                  \
            for (const char* word : {__VA_ARGS__}) {                           \
                EXPECT_NE(std::string(e.what()).find(word), std::string::npos) \
                    << "message lacks '" << word << "': " << e.what();         \
            }                                                                  \
        }                                                                      \
    } while (0)

bool fashion_installed() {
    return fs::exists("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
}

}  // namespace

// --- Fashion-MNIST ---------------------------------------------------------------------------

TEST(DatasetFashion, TestSplitHasTenThousandLabelledItems) {
    ASSERT_TRUE(fashion_installed()) << "run scripts/setup.sh (dataset-fashion-mnist)";
    Dataset ds = Dataset::open("fashion-mnist");
    EXPECT_EQ(ds.spec(), "fashion-mnist");
    ASSERT_EQ(ds.size(), 10000);
    ASSERT_TRUE(ds.has_labels());
    EXPECT_EQ(ds.label(0), 9);
    EXPECT_EQ(ds.class_names()[size_t(ds.label(0))], "Ankle boot");
    EXPECT_EQ(ds.class_names(), convscope::fashion_mnist_classes());
    ASSERT_EQ(ds.class_names().size(), 10u);
    EXPECT_EQ(ds.class_names()[0], "T-shirt/top");
    std::vector<int64_t> per_class(10, 0);
    for (int64_t i = 0; i < ds.size(); ++i) {
        const int64_t l = ds.label(i);
        ASSERT_GE(l, 0);
        ASSERT_LE(l, 9);
        ++per_class[size_t(l)];
    }
    for (int64_t c : per_class) EXPECT_EQ(c, 1000);  // the test split is balanced
    EXPECT_EQ(ds.item_shape(), (std::vector<int64_t>{1, 28, 28}));
    at::Tensor x = ds.raw(0);
    EXPECT_EQ(x.scalar_type(), torch::kFloat);
    EXPECT_EQ(x.sizes(), (std::vector<int64_t>{1, 28, 28}));
    EXPECT_GE(x.min().item<float>(), 0.0f);
    EXPECT_LE(x.max().item<float>(), 1.0f);
    EXPECT_GT(x.max().item<float>(), 0.5f);  // a real picture, not zeros
    EXPECT_EQ(Dataset::open("fashion-mnist:test").hash(), ds.hash());
}

TEST(DatasetFashion, TrainSplitAndPixelsMatchPython) {
    ASSERT_TRUE(fashion_installed());
    Dataset train = Dataset::open("fashion-mnist:train");
    EXPECT_EQ(train.size(), 60000);
    EXPECT_TRUE(train.has_labels());
    EXPECT_NE(train.hash(), Dataset::open("fashion-mnist:test").hash());
    if (std::system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) return;
    // Reference: Python's gzip reads the same file; compare item 123's pixel sum and label.
    TempDir dir;
    const std::string out = dir / "ref.txt";
    const std::string cmd =
        "/usr/bin/python3 -c \"import gzip,numpy as np;"
        "d=gzip.open('/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz').read();"
        "l=gzip.open('/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz').read();"
        "a=np.frombuffer(d,np.uint8,offset=16).reshape(-1,28,28);"
        "open('" +
        out + "','w').write('%d %d %d' % (a[123].sum(), a[123,14,7], l[8+123]))\"";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
    std::ifstream in(out);
    int64_t sum = 0, pixel = 0, label = 0;
    in >> sum >> pixel >> label;
    at::Tensor x = train.raw(123);
    EXPECT_EQ(x.mul(255).round().sum().item<double>(), double(sum));
    EXPECT_EQ(std::lround(x[0][14][7].item<float>() * 255), pixel);
    EXPECT_EQ(train.label(123), label);
}

TEST(DatasetFashion, AllIsTrainThenTest) {
    ASSERT_TRUE(fashion_installed());
    Dataset all = Dataset::open("fashion-mnist:all");
    Dataset train = Dataset::open("fashion-mnist:train"), test = Dataset::open("fashion-mnist:test");
    ASSERT_EQ(all.size(), 70000);
    for (int64_t i : {int64_t(0), int64_t(59999)}) {
        EXPECT_TRUE(torch::equal(all.raw(i), train.raw(i))) << i;
        EXPECT_EQ(all.label(i), train.label(i));
    }
    for (int64_t i : {int64_t(0), int64_t(9999)}) {
        EXPECT_TRUE(torch::equal(all.raw(60000 + i), test.raw(i))) << i;
        EXPECT_EQ(all.label(60000 + i), test.label(i));
    }
    EXPECT_NE(all.hash(), train.hash());
    EXPECT_NE(all.hash(), test.hash());
}

TEST(DatasetFashion, BadSplitAndMissingPackage) {
    try {
        Dataset::open("fashion-mnist:validation");
        FAIL() << "expected UsageError";
    } catch (const convscope::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("fashion-mnist:train"), std::string::npos);
    }
    ::setenv("CONVSCOPE_FASHION_MNIST_DIR", "/nonexistent/fashion", 1);
    EXPECT_ERROR_WITH(Dataset::open("fashion-mnist"), "scripts/setup.sh", "dataset-fashion-mnist");
    ::unsetenv("CONVSCOPE_FASHION_MNIST_DIR");
}

// --- IDX -------------------------------------------------------------------------------------

TEST(DatasetIdx, PlainAndGzipWithLabelsBeside) {
    TempDir dir;
    const auto px = idx_pixels(5, 4, 3);
    write_bytes(dir / "toy-images-idx3-ubyte", idx_bytes({5, 4, 3}, px));
    write_gz(dir / "toy-labels-idx1-ubyte.gz", idx_bytes({5}, idx_labels(5)));  // gz beside plain
    write_gz(dir / "gz/toy-images-idx3-ubyte.gz", idx_bytes({5, 4, 3}, px));
    write_bytes(dir / "gz/toy-labels-idx1-ubyte", idx_bytes({5}, idx_labels(5)));

    for (const std::string& spec :
         {dir / "toy-images-idx3-ubyte", dir / "gz/toy-images-idx3-ubyte.gz"}) {
        Dataset ds = Dataset::open(spec);
        ASSERT_EQ(ds.size(), 5) << spec;
        ASSERT_TRUE(ds.has_labels()) << spec;
        for (int i = 0; i < 5; ++i) EXPECT_EQ(ds.label(i), i % 10);
        EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"0", "1", "2", "3", "4"}));
        EXPECT_EQ(ds.item_shape(), (std::vector<int64_t>{1, 4, 3}));
        at::Tensor x = ds.raw(2);
        for (int y = 0; y < 4; ++y)
            for (int c = 0; c < 3; ++c)
                EXPECT_FLOAT_EQ(x[0][y][c].item<float>(),
                                float((7 * 2 + 3 * y + c) % 256) / 255.0f);
    }
}

TEST(DatasetIdx, MissingLabelsAreFine) {
    TempDir dir;
    write_bytes(dir / "x-images-idx3-ubyte", idx_bytes({2, 2, 2}, idx_pixels(2, 2, 2)));
    Dataset ds = Dataset::open(dir / "x-images-idx3-ubyte");
    EXPECT_EQ(ds.size(), 2);
    EXPECT_FALSE(ds.has_labels());
    EXPECT_EQ(ds.label(1), -1);
    EXPECT_TRUE(ds.class_names().empty());
}

TEST(DatasetIdx, TruncatedData) {
    TempDir dir;
    auto bytes = idx_bytes({5, 4, 3}, idx_pixels(5, 4, 3));
    write_bytes(dir / "cut-images-idx3-ubyte", bytes.substr(0, bytes.size() - 7));
    EXPECT_ERROR_WITH(Dataset::open(dir / "cut-images-idx3-ubyte"), "truncated",
                      "cut-images-idx3-ubyte");
    write_bytes(dir / "hdr-images-idx3-ubyte", bytes.substr(0, 9));
    EXPECT_ERROR_WITH(Dataset::open(dir / "hdr-images-idx3-ubyte"), "truncated");
}

// Found by fuzz_idx (a leak of the read buffer): a header with a size of 0 holds no data.
TEST(DatasetIdx, ZeroSizedDimensionIsAnError) {
    TempDir dir;
    write_bytes(dir / "z-images-idx1-ubyte", std::string("\0\0\x08\x01\0\0\0\0\0\0\x03\x04", 12));
    EXPECT_ERROR_WITH(Dataset::open(dir / "z-images-idx1-ubyte"), "dimension 1 a size of 0, so it holds no data");
    write_bytes(dir / "y-images-idx3-ubyte", idx_bytes({2, 0, 3}, {}));
    EXPECT_ERROR_WITH(Dataset::open(dir / "y-images-idx3-ubyte"), "dimension 2 a size of 0");
}

TEST(DatasetIdx, LyingHeaderOnTinyFile) {
    TempDir dir;
    // Claims 4e9 x 60000 x 60000 bytes (overflowing 64 bits) and 60000 x 60000 x 60000 bytes;
    // holds 12. Must fail fast, without allocating what the header says.
    write_bytes(dir / "a-images-idx3-ubyte",
                idx_bytes({4000000000u, 60000, 60000}, idx_pixels(1, 3, 4)));
    EXPECT_ERROR_WITH(Dataset::open(dir / "a-images-idx3-ubyte"), "truncated");
    write_gz(dir / "b-images-idx3-ubyte.gz", idx_bytes({60000, 60000, 60000}, idx_pixels(1, 3, 4)));
    EXPECT_ERROR_WITH(Dataset::open(dir / "b-images-idx3-ubyte.gz"), "truncated",
                      "60000x60000x60000");
}

TEST(DatasetIdx, TruncatedGzip) {
    TempDir dir;
    write_gz(dir / "full.gz", idx_bytes({50, 28, 28}, idx_pixels(50, 28, 28)));
    const std::string gz = convscope::read_file(dir / "full.gz");
    write_bytes(dir / "half-images-idx3-ubyte.gz", gz.substr(0, gz.size() / 2));
    EXPECT_ERROR_WITH(Dataset::open(dir / "half-images-idx3-ubyte.gz"), "truncated",
                      "half-images-idx3-ubyte.gz");
    // Only the 8-byte gzip trailer (CRC, size) missing: the data is all there but damaged.
    write_bytes(dir / "tail-images-idx3-ubyte.gz", gz.substr(0, gz.size() - 6));
    EXPECT_ERROR_WITH(Dataset::open(dir / "tail-images-idx3-ubyte.gz"), "truncated");
}

TEST(DatasetIdx, WrongLabelsAndBadMagic) {
    TempDir dir;
    write_bytes(dir / "w-images-idx3-ubyte", idx_bytes({5, 2, 2}, idx_pixels(5, 2, 2)));
    write_bytes(dir / "w-labels-idx1-ubyte", idx_bytes({4}, idx_labels(4)));
    EXPECT_ERROR_WITH(Dataset::open(dir / "w-images-idx3-ubyte"), "w-labels-idx1-ubyte",
                      "5 images");
    write_bytes(dir / "bad-images-idx3-ubyte", "PNG not idx at all");
    EXPECT_ERROR_WITH(Dataset::open(dir / "bad-images-idx3-ubyte"), "not an IDX file");
    write_bytes(dir / "l-idx1-ubyte", idx_bytes({4}, idx_labels(4)));
    EXPECT_ERROR_WITH(Dataset::open(dir / "l-idx1-ubyte"), "3 dimensions");
}

// --- folders of images -----------------------------------------------------------------------

TEST(DatasetFolder, ImageFolderClassesAndOrder) {
    TempDir dir;
    // Value = position in the expected order, so the order can be read from the pixels.
    write_gray(dir / "tree/dog/x.png", 4, 4, 40);
    write_gray(dir / "tree/cat/b.png", 4, 4, 30);
    write_gray(dir / "tree/cat/a.png", 4, 4, 20);
    write_gray(dir / "tree/ant/sub/deep.png", 4, 4, 10);
    write_gray(dir / "tree/cat/C.PNG", 4, 4, 15);  // upper-case extension; 'C' < 'a'
    write_gray(dir / "tree/.hidden/skip.png", 4, 4, 99);
    write_gray(dir / "tree/root_level.png", 4, 4, 99);  // not in a class: ignored, as torchvision
    write_bytes(dir / "tree/cat/notes.txt", "not an image");

    Dataset ds = Dataset::open(dir / "tree");
    EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"ant", "cat", "dog"}));
    ASSERT_EQ(ds.size(), 5);
    ASSERT_TRUE(ds.has_labels());
    const std::vector<int64_t> labels = {0, 1, 1, 1, 2};
    const std::vector<int> values = {10, 15, 20, 30, 40};
    for (int64_t i = 0; i < 5; ++i) {
        EXPECT_EQ(ds.label(i), labels[size_t(i)]);
        EXPECT_FLOAT_EQ(ds.raw(i).mean().item<float>(), values[size_t(i)] / 255.0f);
    }
}

TEST(DatasetFolder, FlatFolderHasNoLabels) {
    TempDir dir;
    write_gray(dir / "flat/b.png", 3, 3, 200);
    write_gray(dir / "flat/a.bmp", 3, 3, 100);
    Dataset ds = Dataset::open(dir / "flat");
    ASSERT_EQ(ds.size(), 2);
    EXPECT_FALSE(ds.has_labels());
    EXPECT_EQ(ds.label(0), -1);
    EXPECT_TRUE(ds.class_names().empty());
    EXPECT_FLOAT_EQ(ds.raw(0).mean().item<float>(), 100 / 255.0f);  // a.bmp sorts first
    EXPECT_FLOAT_EQ(ds.raw(1).mean().item<float>(), 200 / 255.0f);
}

TEST(DatasetFolder, EmptyFolders) {
    TempDir dir;
    fs::create_directories(dir.path() / "empty");
    EXPECT_ERROR_WITH(Dataset::open(dir / "empty"), "no images", "empty");
    write_bytes(dir / "texts/readme.txt", "hello");
    EXPECT_ERROR_WITH(Dataset::open(dir / "texts"), "no images");
    // ImageFolder with an empty class folder: class numbers would shift, so it is an error.
    write_gray(dir / "classes/a/1.png", 2, 2, 1);
    fs::create_directories(dir.path() / "classes/b");
    EXPECT_ERROR_WITH(Dataset::open(dir / "classes"), "has no images", "classes/b");
}

TEST(DatasetFolder, BrokenImagesFailOnDecodeNamingTheFile) {
    TempDir dir;
    write_gray(dir / "set/a.png", 2, 2, 1);
    write_bytes(dir / "set/b.png", "");
    write_bytes(dir / "set/c.png", "this is text with a png name");
    Dataset ds = Dataset::open(dir / "set");  // decoding is lazy
    ASSERT_EQ(ds.size(), 3);
    EXPECT_NO_THROW(ds.raw(0));
    EXPECT_ERROR_WITH(ds.raw(1), "b.png", "empty");
    EXPECT_ERROR_WITH(ds.raw(2), "c.png", "cannot decode");
    Preprocess pre;
    pre.input_shape = {1, 2, 2};
    EXPECT_ERROR_WITH(ds.batch({0, 2}, pre), "c.png");
}

TEST(DatasetImage, DecodesGrayColourAlphaAndSixteenBit) {
    TempDir dir;
    // One BGR pixel row: blue, green, red.
    cv::Mat bgr(1, 3, CV_8UC3);
    bgr.at<cv::Vec3b>(0, 0) = {255, 0, 0};
    bgr.at<cv::Vec3b>(0, 1) = {0, 255, 0};
    bgr.at<cv::Vec3b>(0, 2) = {0, 0, 255};
    ASSERT_TRUE(cv::imwrite(dir / "rgb.png", bgr));
    Dataset rgb = Dataset::open(dir / "rgb.png");
    ASSERT_EQ(rgb.size(), 1);
    at::Tensor x = rgb.raw(0);
    ASSERT_EQ(x.sizes(), (std::vector<int64_t>{3, 1, 3}));
    // RGB order: channel 2 (blue) lit at column 0, channel 0 (red) at column 2.
    EXPECT_TRUE(torch::equal(x[2][0], torch::tensor({1.0f, 0.0f, 0.0f})));
    EXPECT_TRUE(torch::equal(x[1][0], torch::tensor({0.0f, 1.0f, 0.0f})));
    EXPECT_TRUE(torch::equal(x[0][0], torch::tensor({0.0f, 0.0f, 1.0f})));

    cv::Mat bgra(2, 2, CV_8UC4, cv::Scalar(51, 102, 153, 7));
    ASSERT_TRUE(cv::imwrite(dir / "alpha.png", bgra));
    at::Tensor a = Dataset::open(dir / "alpha.png").raw(0);
    ASSERT_EQ(a.sizes(), (std::vector<int64_t>{3, 2, 2}));
    EXPECT_FLOAT_EQ(a[0][0][0].item<float>(), 153 / 255.0f);
    EXPECT_FLOAT_EQ(a[2][1][1].item<float>(), 51 / 255.0f);

    cv::Mat deep(2, 3, CV_16UC1, cv::Scalar(32768));
    ASSERT_TRUE(cv::imwrite(dir / "deep.png", deep));
    at::Tensor d = Dataset::open(dir / "deep.png").raw(0);
    ASSERT_EQ(d.sizes(), (std::vector<int64_t>{1, 2, 3}));
    EXPECT_FLOAT_EQ(d[0][1][2].item<float>(), 32768 / 65535.0f);

    write_gray(dir / "g.pgm", 2, 5, 51);
    Dataset g = Dataset::open(dir / "g.pgm");
    EXPECT_EQ(g.item_shape(), (std::vector<int64_t>{1, 2, 5}));
    EXPECT_FLOAT_EQ(g.raw(0).max().item<float>(), 0.2f);
    EXPECT_ERROR_WITH(g.raw(1), "index 1 is out of range");
    EXPECT_ERROR_WITH(g.label(-1), "out of range");
}

TEST(DatasetOpen, UnknownSpecs) {
    TempDir dir;
    EXPECT_ERROR_WITH(Dataset::open(dir / "nothing_here"), "no data at", "nothing_here");
    write_bytes(dir / "notes.txt", "plain text");
    EXPECT_ERROR_WITH(Dataset::open(dir / "notes.txt"), "cannot tell", "notes.txt");
    EXPECT_THROW(Dataset::open(""), convscope::UsageError);
}

// --- preprocessing ---------------------------------------------------------------------------

TEST(DatasetPreprocess, ShrinkThenCentreCropMatchesAreaAverage) {
    TempDir dir;
    // 4 x 8 image with pixel (y, x) = 10 x + y. Target 2 x 2: scale 1/2 (the shorter side, 4,
    // becomes 2), INTER_AREA averages 2x2 blocks, then columns 1..2 of the 2 x 4 result remain.
    cv::Mat m(4, 8, CV_8UC1);
    for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 8; ++x) m.at<uint8_t>(y, x) = uint8_t(10 * x + y);
    ASSERT_TRUE(cv::imwrite(dir / "grad.png", m));
    Dataset ds = Dataset::open(dir / "grad.png");
    Preprocess pre = ds.preprocess_for({1, 2, 2}, {}, {});
    EXPECT_FALSE(pre.as_is);
    at::Tensor b = ds.batch({0}, pre);
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{1, 1, 2, 2}));
    // Block (r, j) averages rows 2r, 2r+1 and columns 2j, 2j+1: 20 j + 5 + 2 r + 0.5.
    const float expect[2][2] = {{25.5f, 45.5f}, {27.5f, 47.5f}};
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c)
            EXPECT_NEAR(b[0][0][r][c].item<float>(), expect[r][c] / 255.0f, 1e-6) << r << "," << c;
}

TEST(DatasetPreprocess, GrowReplicateChannelsAndNormalise) {
    TempDir dir;
    write_gray(dir / "small.png", 3, 5, 51);  // 0.2
    Dataset ds = Dataset::open(dir / "small.png");
    Preprocess pre = ds.preprocess_for({3, 6, 6}, {0.5, 0.4, 0.3}, {0.25, 0.5, 1.0});
    at::Tensor b = ds.batch({0}, pre);
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{1, 3, 6, 6}));
    EXPECT_TRUE(b.is_contiguous());
    // A constant image stays constant through resizing; then (0.2 - mean) / std per channel.
    EXPECT_NEAR(b[0][0].min().item<float>(), (0.2 - 0.5) / 0.25, 1e-5);
    EXPECT_NEAR(b[0][0].max().item<float>(), (0.2 - 0.5) / 0.25, 1e-5);
    EXPECT_NEAR(b[0][1].mean().item<float>(), (0.2 - 0.4) / 0.5, 1e-5);
    EXPECT_NEAR(b[0][2].mean().item<float>(), (0.2 - 0.3) / 1.0, 1e-5);
    // to_display undoes it: back to the stored byte.
    at::Tensor shown = pre.to_display(b);
    ASSERT_EQ(shown.sizes(), (std::vector<int64_t>{1, 6, 6, 3}));
    EXPECT_EQ(shown.scalar_type(), torch::kByte);
    EXPECT_EQ(shown.min().item<int>(), 51);
    EXPECT_EQ(shown.max().item<int>(), 51);
}

TEST(DatasetPreprocess, ColourToGrayUsesLuminance) {
    TempDir dir;
    ASSERT_TRUE(
        cv::imwrite(dir / "c.png", cv::Mat(2, 2, CV_8UC3, cv::Scalar(50, 100, 200))));  // BGR
    Dataset ds = Dataset::open(dir / "c.png");
    at::Tensor b = ds.batch({0}, ds.preprocess_for({1, 2, 2}, {}, {}));
    EXPECT_NEAR(b[0][0][1][1].item<float>(), (0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255.0,
                1e-6);
}

TEST(DatasetPreprocess, ToDisplayRoundTripsPixelsAndStretchesAsIs) {
    TempDir dir;
    cv::Mat m(3, 4, CV_8UC3);
    cv::randu(m, 0, 256);
    ASSERT_TRUE(cv::imwrite(dir / "r.png", m));
    Dataset ds = Dataset::open(dir / "r.png");
    Preprocess pre = ds.preprocess_for({3, 3, 4}, {0.485, 0.456, 0.406}, {0.229, 0.224, 0.225});
    at::Tensor shown = pre.to_display(ds.batch({0}, pre));
    cv::Mat rgb;
    cv::cvtColor(m, rgb, cv::COLOR_BGR2RGB);
    at::Tensor expect = torch::from_blob(rgb.data, {1, 3, 4, 3}, torch::kByte);
    EXPECT_TRUE(torch::equal(shown, expect));

    Preprocess as_is;
    as_is.as_is = true;
    at::Tensor x = torch::tensor({-1.0f, 0.0f, 1.0f, 3.0f}).reshape({1, 1, 2, 2});
    at::Tensor s = as_is.to_display(torch::cat({x, torch::zeros_like(x)}));  // 2nd: constant
    EXPECT_TRUE(torch::equal(s[0].flatten(), torch::tensor({0, 64, 128, 255}, torch::kByte)));
    EXPECT_EQ(s[1].max().item<int>(), 0);
    EXPECT_ERROR_WITH(as_is.to_display(torch::zeros({1, 2, 3, 3})), "channels");
}

TEST(DatasetPreprocess, ChannelMismatchAndEmptyShape) {
    TempDir dir;
    write_gray(dir / "a/1.png", 2, 2, 1);
    write_gray(dir / "a/2.png", 3, 3, 1);
    Dataset ds = Dataset::open(dir / "a");
    Preprocess none;  // no model shape: items must agree
    EXPECT_EQ(ds.batch({0}, none).sizes(), (std::vector<int64_t>{1, 1, 2, 2}));
    EXPECT_ERROR_WITH(ds.batch({0, 1}, none), "[1,3,3]", "[1,2,2]");
    Preprocess two;
    two.input_shape = {2, 2, 2};
    EXPECT_ERROR_WITH(ds.batch({0}, two), "1 channels", "expects 2");
}

// --- .npy ------------------------------------------------------------------------------------

TEST(DatasetNpy, FloatUsedAsIsAndChecked) {
    TempDir dir;
    at::Tensor data = torch::randn({4, 2, 3, 3});
    convscope::write_npy(dir / "x.npy", data);
    Dataset ds = Dataset::open(dir / "x.npy");
    ASSERT_EQ(ds.size(), 4);
    EXPECT_FALSE(ds.has_labels());
    EXPECT_EQ(ds.item_shape(), (std::vector<int64_t>{2, 3, 3}));
    Preprocess pre = ds.preprocess_for({2, 3, 3}, {0.5, 0.5}, {0.1, 0.1});
    EXPECT_TRUE(pre.as_is);
    EXPECT_TRUE(pre.mean.empty());  // already model inputs: no second normalisation
    EXPECT_TRUE(torch::equal(ds.batch({3, 1}, pre), torch::stack({data[3], data[1]})));
    EXPECT_TRUE(torch::equal(ds.raw(2), data[2]));

    Preprocess wrong = pre;
    wrong.input_shape = {2, 4, 4};
    EXPECT_ERROR_WITH(ds.batch({0}, wrong), "[2,3,3]", "[2,4,4]");

    data[1][0][1][2] = std::nanf("");
    convscope::write_npy(dir / "nan.npy", data);
    Dataset bad = Dataset::open(dir / "nan.npy");
    EXPECT_NO_THROW(bad.batch({0, 2}, pre));
    EXPECT_ERROR_WITH(bad.batch({0, 1}, pre), "item 1", "NaN");
    EXPECT_ERROR_WITH(bad.batch({2, 1}, pre), "item 1 holds NaN or Inf values (channel 0, row 1, column 2)");
}

TEST(DatasetNpy, Uint8ScaledToUnitRange) {
    TempDir dir;
    at::Tensor nhw =
        torch::arange(2 * 3 * 4, torch::kLong).reshape({2, 3, 4}).mul(10).to(torch::kByte);
    convscope::write_npy(dir / "g.npy", nhw);
    Dataset g = Dataset::open(dir / "g.npy");
    EXPECT_EQ(g.item_shape(), (std::vector<int64_t>{1, 3, 4}));
    EXPECT_TRUE(torch::allclose(g.raw(1), nhw[1].unsqueeze(0).to(torch::kFloat) / 255.0));
    EXPECT_FALSE(g.preprocess_for({1, 3, 4}, {}, {}).as_is);

    at::Tensor nhwc = torch::randint(0, 256, {3, 2, 2, 3}, torch::kLong).to(torch::kByte);
    convscope::write_npy(dir / "c.npy", nhwc);
    Dataset c = Dataset::open(dir / "c.npy");
    EXPECT_EQ(c.item_shape(), (std::vector<int64_t>{3, 2, 2}));
    EXPECT_TRUE(torch::allclose(c.raw(2), nhwc[2].permute({2, 0, 1}).to(torch::kFloat) / 255.0));
}

TEST(DatasetNpy, UnsupportedArrays) {
    TempDir dir;
    convscope::write_npy(dir / "d.npy", torch::zeros({2, 1, 3, 3}, torch::kDouble));
    EXPECT_ERROR_WITH(Dataset::open(dir / "d.npy"), "supported", "float32", "uint8");
    convscope::write_npy(dir / "r.npy", torch::zeros({2, 3}, torch::kFloat));
    EXPECT_ERROR_WITH(Dataset::open(dir / "r.npy"), "N,C,H,W");
    convscope::write_npy(dir / "c5.npy", torch::zeros({2, 3, 3, 5}, torch::kByte));
    EXPECT_ERROR_WITH(Dataset::open(dir / "c5.npy"), "C must be 1, 3 or 4");
    const std::string bytes = convscope::npy_bytes(torch::zeros({2, 1, 3, 3}));
    write_bytes(dir / "cut.npy", bytes.substr(0, bytes.size() - 4));
    EXPECT_ERROR_WITH(Dataset::open(dir / "cut.npy"), "truncated", "cut.npy");
}

TEST(DatasetNpy, LabelsFile) {
    TempDir dir;
    convscope::write_npy(dir / "x.npy", torch::zeros({4, 5, 5}, torch::kByte));
    convscope::write_npy(dir / "y.npy", torch::tensor({2, 0, 1, 2}, torch::kInt));
    convscope::DatasetOptions opts;
    opts.labels_path = dir / "y.npy";
    Dataset ds = Dataset::open(dir / "x.npy", opts);
    ASSERT_TRUE(ds.has_labels());
    EXPECT_EQ(ds.label(0), 2);
    EXPECT_EQ(ds.label(3), 2);
    EXPECT_EQ(ds.class_names(), (std::vector<std::string>{"0", "1", "2"}));

    convscope::write_npy(dir / "short.npy", torch::tensor({1, 2, 3}, torch::kLong));
    opts.labels_path = dir / "short.npy";
    EXPECT_ERROR_WITH(Dataset::open(dir / "x.npy", opts), "short.npy", "4 items");
    convscope::write_npy(dir / "float.npy", torch::zeros({4}));
    opts.labels_path = dir / "float.npy";
    EXPECT_ERROR_WITH(Dataset::open(dir / "x.npy", opts), "int64");
}

// --- hash ------------------------------------------------------------------------------------

TEST(DatasetHash, StableAndContentSensitive) {
    TempDir dir;
    write_gray(dir / "h/a.png", 8, 8, 10);
    write_gray(dir / "h/b.png", 8, 8, 20);
    const std::string h1 = Dataset::open(dir / "h").hash();
    EXPECT_EQ(h1.size(), 64u);
    EXPECT_EQ(Dataset::open(dir / "h").hash(), h1);
    write_gray(dir / "h/b.png", 8, 8, 21);  // same size on disk, other pixels
    const std::string h2 = Dataset::open(dir / "h").hash();
    EXPECT_NE(h2, h1);
    fs::rename(dir.path() / "h/b.png", dir.path() / "h/c.png");
    EXPECT_NE(Dataset::open(dir / "h").hash(), h2);

    // Large files: a change in the middle is not sampled, a change at the end is.
    at::Tensor big = torch::zeros({1, 1, 400, 400});
    convscope::write_npy(dir / "big.npy", big);
    const std::string hb = Dataset::open(dir / "big.npy").hash();
    big[0][0][399][399] = 1.0f;
    convscope::write_npy(dir / "big.npy", big);
    EXPECT_NE(Dataset::open(dir / "big.npy").hash(), hb);
}

// --- parse_indices ---------------------------------------------------------------------------

TEST(ParseIndices, PythonSliceSemantics) {
    using convscope::parse_indices;
    using V = std::vector<int64_t>;
    EXPECT_EQ(parse_indices("2:5", 10), (V{2, 3, 4}));
    EXPECT_EQ(parse_indices(":3", 10), (V{0, 1, 2}));
    EXPECT_EQ(parse_indices("-3:", 10), (V{7, 8, 9}));
    EXPECT_EQ(parse_indices("::4", 10), (V{0, 4, 8}));
    EXPECT_EQ(parse_indices("8:2:-2", 10), (V{8, 6, 4}));
    EXPECT_EQ(parse_indices("::-3", 10), (V{9, 6, 3, 0}));
    EXPECT_EQ(parse_indices("0:100", 4), (V{0, 1, 2, 3}));
    EXPECT_EQ(parse_indices("5", 10), (V{5}));
    EXPECT_EQ(parse_indices("-1", 10), (V{9}));
    EXPECT_EQ(parse_indices("1,5,9", 10), (V{1, 5, 9}));
    EXPECT_EQ(parse_indices(" 1, -1 ,0:2", 10), (V{1, 9, 0, 1}));
    EXPECT_EQ(parse_indices("::9223372036854775807", 5), (V{0}));

    // Cross-check a table of slices against Python itself.
    const std::vector<std::string> specs = {
        "3:",     ":-2",     "-100:100", "100:",  "-4:-1",    "::2", "1::3", "::-1", "5::-2",
        "-2::-4", ":-20:-1", "7:2",      "2:7:2", "-1:-8:-3", "0:0", ":",    "::"};
    if (std::system("/usr/bin/python3 -c 'pass' 2>/dev/null") != 0) return;
    TempDir dir;
    std::string code = "import sys\nspecs=[";
    for (const auto& s : specs) code += "'" + s + "',";
    code += "]\nout=open(r'" + dir / "ref.txt" +
            "','w')\n"
            "for s in specs:\n"
            "    parts=[int(p) if p else None for p in s.split(':')]\n"
            "    r=list(range(11))[slice(*parts)]\n"
            "    out.write(' '.join(map(str,r))+'\\n')\n";
    write_bytes(dir / "ref.py", code);
    ASSERT_EQ(std::system(("/usr/bin/python3 " + dir / "ref.py").c_str()), 0);
    std::ifstream ref(dir / "ref.txt");
    for (const auto& s : specs) {
        std::string line;
        std::getline(ref, line);
        std::istringstream in(line);
        V expect;
        for (int64_t v; in >> v;) expect.push_back(v);
        if (expect.empty()) {
            EXPECT_ERROR_WITH(parse_indices(s, 11), "selects no items");
        } else {
            EXPECT_EQ(parse_indices(s, 11), expect) << "slice " << s;
        }
    }
}

TEST(ParseIndices, Errors) {
    using convscope::parse_indices;
    try {
        parse_indices("12", 10);
        FAIL() << "expected Error";
    } catch (const convscope::UsageError&) {
        FAIL() << "out of range is a data error, not a usage error";
    } catch (const Error& e) {
        EXPECT_STREQ(e.what(), "index 12 is out of range: the data has 10 items (0..9)");
    }
    EXPECT_ERROR_WITH(parse_indices("-11", 10), "index -11 is out of range", "(0..9)");
    EXPECT_ERROR_WITH(parse_indices("1,10", 10), "index 10 is out of range");
    EXPECT_ERROR_WITH(parse_indices("20:30", 10), "selects no items");
    for (const std::string bad : {"", "a:b", "1:2:3:4", "1,,2", "1.5", "0x3", "3-", "1:2:x", ","}) {
        EXPECT_THROW(parse_indices(bad, 10), convscope::UsageError) << "'" << bad << "'";
    }
    try {
        parse_indices("1:5:0", 10);
        FAIL() << "expected UsageError";
    } catch (const convscope::UsageError& e) {
        EXPECT_NE(std::string(e.what()).find("step"), std::string::npos);
    }
}

// --- BatchLoader -----------------------------------------------------------------------------

TEST(BatchLoader, YieldsAllBatchesInOrder) {
    TempDir dir;
    const int n = 23;
    write_bytes(dir / "l-images-idx3-ubyte", idx_bytes({n, 6, 5}, idx_pixels(n, 6, 5)));
    write_bytes(dir / "l-labels-idx1-ubyte", idx_bytes({n}, idx_labels(n)));
    Dataset ds = Dataset::open(dir / "l-images-idx3-ubyte");
    Preprocess pre = ds.preprocess_for({3, 4, 4}, {0.5}, {0.5});
    std::vector<int64_t> indices;
    for (int i = n - 1; i >= 0; i -= 1) indices.push_back(i);  // any order is kept
    convscope::BatchLoader loader(ds, indices, 5, pre, 2);
    EXPECT_EQ(loader.num_batches(), 5);
    convscope::Batch b;
    size_t pos = 0;
    int batches = 0;
    while (loader.next(b)) {
        ++batches;
        const size_t expect_rows = std::min<size_t>(5, indices.size() - pos);
        std::vector<int64_t> expect_idx(indices.begin() + long(pos),
                                        indices.begin() + long(pos + expect_rows));
        ASSERT_EQ(b.indices, expect_idx);
        EXPECT_TRUE(torch::equal(b.images, ds.batch(expect_idx, pre)));
        ASSERT_EQ(b.labels.size(), expect_rows);
        for (size_t k = 0; k < expect_rows; ++k) EXPECT_EQ(b.labels[k], expect_idx[k] % 10);
        pos += expect_rows;
    }
    EXPECT_EQ(batches, 5);
    EXPECT_EQ(pos, indices.size());
    EXPECT_FALSE(loader.next(b));  // stays finished

    convscope::BatchLoader empty(ds, {}, 4, pre);
    EXPECT_EQ(empty.num_batches(), 0);
    EXPECT_FALSE(empty.next(b));
}

TEST(BatchLoader, RethrowsWorkerErrorsAfterGoodBatches) {
    TempDir dir;
    write_gray(dir / "s/a.png", 2, 2, 1);
    write_gray(dir / "s/b.png", 2, 2, 2);
    write_bytes(dir / "s/c.png", "");
    write_gray(dir / "s/d.png", 2, 2, 4);
    Dataset ds = Dataset::open(dir / "s");
    convscope::BatchLoader loader(ds, {0, 1, 2, 3}, 2, ds.preprocess_for({1, 2, 2}, {}, {}));
    convscope::Batch b;
    ASSERT_TRUE(loader.next(b));
    EXPECT_EQ(b.indices, (std::vector<int64_t>{0, 1}));
    EXPECT_ERROR_WITH(loader.next(b), "c.png");
    EXPECT_ERROR_WITH(convscope::BatchLoader(ds, {0, 9}, 2, Preprocess{}),
                      "index 9 is out of range");
    EXPECT_THROW(convscope::BatchLoader(ds, {0}, 0, Preprocess{}), convscope::UsageError);
}

TEST(BatchLoader, DestroyedEarlyDoesNotHang) {
    ASSERT_TRUE(fashion_installed());
    Dataset ds = Dataset::open("fashion-mnist");
    std::vector<int64_t> all(size_t(ds.size()));
    for (size_t i = 0; i < all.size(); ++i) all[i] = int64_t(i);
    Preprocess pre = ds.preprocess_for({3, 32, 32}, {}, {});

    // Run the early stop on a helper thread so a hang fails the test instead of blocking it.
    std::mutex m;
    std::condition_variable cv;
    bool done = false;
    int64_t first_rows = 0;
    std::thread t([&] {
        {
            convscope::BatchLoader loader(ds, all, 16, pre, 3);
            convscope::Batch b;
            if (loader.next(b)) first_rows = b.images.size(0);
            // Let the worker fill its queue and block on it before the loader goes away.
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
        { convscope::BatchLoader never_read(ds, all, 16, pre, 2); }
        std::lock_guard<std::mutex> lock(m);
        done = true;
        cv.notify_all();
    });
    std::unique_lock<std::mutex> lock(m);
    const bool finished = cv.wait_for(lock, std::chrono::seconds(60), [&] { return done; });
    lock.unlock();
    if (finished) {
        t.join();
    } else {
        t.detach();
        FAIL() << "BatchLoader destructor hung";
    }
    EXPECT_EQ(first_rows, 16);
}

// A format of one's own through the DataSource interface: items, labels and class names as the
// source gives them, index checks and batching as for the built-in formats.
TEST(DataSource, OwnFormatWorksLikeTheBuiltInOnes) {
    struct Ramp final : convscope::DataSource {
        std::string kind() const override { return "ramp"; }
        int64_t size() const override { return 5; }
        at::Tensor raw(int64_t i) const override { return torch::full({1, 4, 6}, double(i) / 10.0); }
        std::vector<int64_t> labels() const override { return {0, 1, 0, 1, -1}; }
        std::vector<std::pair<std::string, std::string>> hashed_files() const override { return {}; }
    };
    convscope::Dataset d = convscope::Dataset::from_source(std::make_unique<Ramp>(), "ramp");
    EXPECT_EQ(d.size(), 5);
    EXPECT_EQ(d.spec(), "ramp");
    EXPECT_TRUE(d.has_labels());
    EXPECT_EQ(d.label(3), 1);
    EXPECT_EQ(d.label(4), -1);
    EXPECT_EQ(d.class_names(), (std::vector<std::string>{"0", "1"}));
    EXPECT_EQ(d.item_shape(), (std::vector<int64_t>{1, 4, 6}));
    EXPECT_THROW(d.raw(5), convscope::Error);
    const at::Tensor b = d.batch({2, 3}, d.preprocess_for({1, 4, 6}, {}, {}));
    ASSERT_EQ(b.sizes(), (std::vector<int64_t>{2, 1, 4, 6}));
    EXPECT_NEAR(b[1].mean().item<double>(), 0.3, 1e-6);
    EXPECT_EQ(d.hash().size(), 64u);
    EXPECT_THROW(convscope::Dataset::from_source(nullptr, "none"), convscope::Error);
}
